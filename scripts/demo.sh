#!/usr/bin/env bash
# The main job, end to end, on real components: a loop-mounted ext4 image (with the `encrypt`
# feature) plays the device's persist partition, a swtpm plays its TPM, and this script plays the
# firmware that measures the boot into PCRs. Then the attestation story (docs/attestation.md): a
# firmware update locks the vaults, the controller verifies a fresh quote against a policy that
# allows the new measurement, releases the escrowed keys, and after a reboot the device unlocks
# locally again. Everything lives under a temporary work dir and is cleaned up on exit, whatever happens.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/vaultpolicy-demo.XXXXXX)
root="$work/root"          # --root: the plan's absolute paths live under it
state="$work/state"        # --state-dir: sealed blobs, applied plan, journal
swtpm_state="$work/swtpm"
mkdir -p "$root/persist" "$state" "$swtpm_state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# run_expecting CODE COMMAND...: the command must exit with CODE (1 refused, 3 drift)
run_expecting() {
  local expected=$1; shift
  printf '$ %s\n' "$*"
  local code=0
  "$@" || code=$?
  if [ "$code" -ne "$expected" ]; then echo "FAIL: exit $code, expected $expected" >&2; exit 1; fi
}

cleanup() {
  set +e
  vaultpolicy device lock --state-dir "$state" --root "$root" >/dev/null 2>&1
  # Every mount under the work dir (vault bind mounts, per-vault images, the persist partition),
  # deepest first; loop devices detach with their last unmount.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do umount "$m"; done
  stop_swtpm
  # the lock file our connections to it made in /run/vaultpolicy: its ports, so its TCTI, never come again
  [ -z "${tcti:-}" ] || python3 -c 'import sys; from enforcer.tcti import remove_tpm_lock; remove_tpm_lock(sys.argv[1])' "$tcti"
  rm -rf "$work"
}
trap cleanup EXIT

# swtpm's TCTI talks to PORT for commands and PORT+1 for control: find two free neighbours.
free_port_pair() {
  python3 - <<'PY'
import socket
for _ in range(100):
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        print(port); break
PY
}

start_swtpm() {
  swtpm socket --tpm2 --tpmstate dir="$swtpm_state" --server type=tcp,port="$port" \
    --ctrl type=tcp,port="$((port + 1))" --flags not-need-init,startup-clear --pid file="$swtpm_state/pid" --daemon
}

stop_swtpm() {
  [ -f "$swtpm_state/pid" ] || return 0
  local pid; pid=$(cat "$swtpm_state/pid")
  kill "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$swtpm_state/pid"
}

measure() {  # measure PCR TEXT: extend PCR $1 with the SHA-256 of $2, as firmware would
  run env TPM2TOOLS_TCTI="$tcti" tpm2_pcrextend "$1:sha256=$(printf '%s' "$2" | sha256sum | cut -d' ' -f1)"
}

boot_measurements() {
  # What firmware and the boot loader would measure: fixed blobs into PCRs 0, 2, 4 and 7.
  for pcr in 0 2 4 7; do measure "$pcr" "demo firmware component $pcr"; done
}

new_firmware_measurement() {
  # The updated firmware measures something else into PCR 7 (secure boot state).
  measure 7 "new firmware"
}

pcr_value() {  # the current sha256 value of PCR $1, lower-case hex
  TPM2TOOLS_TCTI="$tcti" tpm2_pcrread "sha256:$1" | awk '/0x/ { print tolower(substr($3, 3)) }'
}

step "device: a 256 MiB ext4 persist partition with the encrypt feature, loop-mounted"
truncate -s 256M "$work/persist.img"
mkfs.ext4 -q -O encrypt "$work/persist.img"
mount -o loop "$work/persist.img" "$root/persist"
findmnt -n -o SOURCE,TARGET,FSTYPE "$root/persist"

step "device: a TPM (swtpm) and a measured boot"
port=$(free_port_pair)
start_swtpm
tcti="swtpm:host=127.0.0.1,port=$port"
boot_measurements
run env TPM2TOOLS_TCTI="$tcti" tpm2_pcrread sha256:0,2,4,7

step "controller: an escrow key, and examples/gateway.vpol requiring escrow and allowing this boot"
ctl=(--store "$work/controller.db")
run vaultpolicy controller escrow-keygen -o "$work/escrow.key"
for pcr in 0 4 7; do pcr_value "$pcr" > "$work/pcr$pcr.allowed"; done
# The policy's file references (escrow key, allowed values) are relative to the policy: work on a copy.
sed -e '/^  tpm required$/a\  escrow_key "escrow.key.pub"' \
    -e '/^  on_failure keep_locked, deny_release$/i\  allow pcr 0 from "pcr0.allowed"\n  allow pcr 4 from "pcr4.allowed"\n  allow pcr 7 from "pcr7.allowed"\n  escrow required' \
    "$here/examples/gateway.vpol" > "$work/gateway.vpol"
echo "the demo's copy of examples/gateway.vpol adds:"
diff -u "$here/examples/gateway.vpol" "$work/gateway.vpol" | tail -n +3 | grep '^[+-]' || true

step "controller: check, compile and sign the policy"
run vaultpolicy check "$work/gateway.vpol"
run vaultpolicy keygen -o "$work/controller.key"
run vaultpolicy compile "$work/gateway.vpol" --plan-version 1 -o "$work/plan.json"
run vaultpolicy sign "$work/plan.json" --key "$work/controller.key" -o "$work/plan.signed"
run vaultpolicy plan show "$work/plan.json"

step "device: verify and apply the signed plan (creates and seals the keys, wraps a copy of each for escrow)"
dev=(--state-dir "$state" --root "$root")
tpm=(--tpm "$tcti")
run vaultpolicy device apply "$work/plan.signed" --trust "$work/controller.key.pub" --device-id gw-1 "${dev[@]}" "${tpm[@]}"
run vaultpolicy device status "${dev[@]}" "${tpm[@]}"

step "provisioning: device identity, enrolment, escrow deposit and acknowledgement"
run vaultpolicy device identity --device-id gw-1 --state-dir "$state" "${tpm[@]}" -o "$work/identity.json"
run vaultpolicy controller enroll "$work/identity.json" "${ctl[@]}"
run vaultpolicy device escrow-deposit --state-dir "$state" "${tpm[@]}" -o "$work/deposit.json"   # blobs signed by the TPM
run vaultpolicy controller escrow "$work/deposit.json" --ack-dir "$work/acks" "${ctl[@]}"
run vaultpolicy device escrow-ack "$work"/acks/gw-1.*.ack.json --state-dir "$state"

config_dir="$root/persist/vault/config"
step "an app writes a secret into the config vault"
echo "\$ echo 's3 credentials: AKIA-DEMO-SECRET' > $config_dir/credentials.txt"
echo "s3 credentials: AKIA-DEMO-SECRET" > "$config_dir/credentials.txt"
run cat "$config_dir/credentials.txt"

step "reboot: the kernel forgets the keys (lock)"
run vaultpolicy device lock "${dev[@]}"
echo "listing of the locked vault (encrypted names):"
ls "$config_dir"
if cat "$config_dir"/* >/dev/null 2>&1; then echo "FAIL: a locked file was readable" >&2; exit 1; fi
echo "reading a file fails while locked: ok"

step "boot service: unlock through the TPM"
run vaultpolicy device unlock "${dev[@]}" "${tpm[@]}"
run cat "$config_dir/credentials.txt"

step "firmware update: PCR 7 changes, so the TPM refuses to unseal"
run vaultpolicy device lock "${dev[@]}"
new_firmware_measurement
run_expecting 1 vaultpolicy device unlock "${dev[@]}" "${tpm[@]}"
echo "unlock refused, as it must be"
run_expecting 3 vaultpolicy device status "${dev[@]}" "${tpm[@]}"

step "device report: the drift, signed with the TPM's attestation key, names PCR 7"
echo "\$ vaultpolicy controller nonce --device-id gw-1 --plan $work/plan.json ${ctl[*]}"
nonce=$(vaultpolicy controller nonce --device-id gw-1 --plan "$work/plan.json" "${ctl[@]}")
echo "controller nonce for gw-1, so the report is fresh: $nonce"
run_expecting 3 vaultpolicy device report --nonce "$nonce" "${dev[@]}" "${tpm[@]}" -o "$work/report.json"
run_expecting 3 vaultpolicy controller drift "$work/report.json" "${ctl[@]}"

step "controller: the policy gains the new PCR 7 value (plan version 2)"
pcr_value 7 >> "$work/pcr7.allowed"
run cat "$work/pcr7.allowed"
run vaultpolicy compile "$work/gateway.vpol" --prev "$work/plan.json" -o "$work/plan2.json"
run vaultpolicy sign "$work/plan2.json" --key "$work/controller.key" -o "$work/plan2.signed"
run_expecting 2 vaultpolicy diff --exit-code "$work/plan.json" "$work/plan2.json"

step "controller: challenge the device, verify its quote, release the escrowed keys"
echo "\$ vaultpolicy controller nonce --device-id gw-1 --plan $work/plan2.json ${ctl[*]}"
nonce=$(vaultpolicy controller nonce --device-id gw-1 --plan "$work/plan2.json" "${ctl[@]}")
echo "controller nonce for gw-1 (single use, valid 5 minutes): $nonce"
run vaultpolicy device quote --nonce "$nonce" --state-dir "$state" "${tpm[@]}" -o "$work/quote.json"
run vaultpolicy controller verify-quote "$work/quote.json" --plan "$work/plan2.json" "${ctl[@]}"
run vaultpolicy controller release "$work/quote.json" --escrow-key "$work/escrow.key" -o "$work/release.json" "${ctl[@]}"

step "device: unlock with the released keys, re-sealed to the new PCR 7"
run vaultpolicy device unlock --release "$work/release.json" "${dev[@]}" "${tpm[@]}"
run cat "$config_dir/credentials.txt"

step "reboot into the new firmware: swtpm restarts (PCRs reset), the boot measurements replay"
run vaultpolicy device lock "${dev[@]}"
stop_swtpm
echo "swtpm stopped (power off)"
start_swtpm
echo "swtpm started: every PCR is zero again"
run env TPM2TOOLS_TCTI="$tcti" tpm2_pcrread sha256:7
boot_measurements
new_firmware_measurement
run env TPM2TOOLS_TCTI="$tcti" tpm2_pcrread sha256:0,2,4,7

step "boot service: the re-sealed keys unlock locally, no controller involved"
run vaultpolicy device unlock "${dev[@]}" "${tpm[@]}"
run cat "$config_dir/credentials.txt"

step "device: plan version 2 applies like any plan (nothing to change on the device)"
run vaultpolicy device apply "$work/plan2.signed" --trust "$work/controller.key.pub" "${dev[@]}" "${tpm[@]}"
run vaultpolicy device status "${dev[@]}" "${tpm[@]}"

step "done: the demo cleans up after itself"
