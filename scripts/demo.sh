#!/usr/bin/env bash
# The main job, end to end, on real components: a loop-mounted ext4 image (with the `encrypt`
# feature) plays the device's persist partition, a swtpm plays its TPM, and this script plays the
# firmware that measures the boot into PCRs. Everything lives under a temporary work dir and is
# cleaned up on exit, whatever happens.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/vaultpolicy-demo.XXXXXX)
root="$work/root"          # --root: the plan's absolute paths live under it
state="$work/state"        # --state-dir: sealed blobs, applied plan, journal
swtpm_state="$work/swtpm"
mkdir -p "$root/persist" "$state" "$swtpm_state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  set +e
  vaultpolicy device lock --state-dir "$state" --root "$root" >/dev/null 2>&1
  # Every mount under the work dir (vault bind mounts, per-vault images, the persist partition),
  # deepest first; loop devices detach with their last unmount.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do umount "$m"; done
  [ -f "$swtpm_state/pid" ] && kill "$(cat "$swtpm_state/pid")" 2>/dev/null
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

boot_measurements() {
  # What firmware and the boot loader would measure: fixed blobs into PCRs 0, 2, 4 and 7.
  for pcr in 0 2 4 7; do
    TPM2TOOLS_TCTI="$tcti" tpm2_pcrextend "$pcr:sha256=$(printf 'demo firmware component %s' "$pcr" | sha256sum | cut -d' ' -f1)"
  done
}

step "device: a 256 MiB ext4 persist partition with the encrypt feature, loop-mounted"
truncate -s 256M "$work/persist.img"
mkfs.ext4 -q -O encrypt "$work/persist.img"
mount -o loop "$work/persist.img" "$root/persist"
findmnt -n -o SOURCE,TARGET,FSTYPE "$root/persist"

step "device: a TPM (swtpm) and a measured boot"
port=$(free_port_pair); ctrl=$((port + 1))
swtpm socket --tpm2 --tpmstate dir="$swtpm_state" --server type=tcp,port="$port" \
  --ctrl type=tcp,port="$ctrl" --flags not-need-init,startup-clear --pid file="$swtpm_state/pid" --daemon
tcti="swtpm:host=127.0.0.1,port=$port"
boot_measurements
TPM2TOOLS_TCTI="$tcti" tpm2_pcrread sha256:0,4,7

step "controller: check, compile and sign examples/gateway.vpol"
run vaultpolicy check "$here/examples/gateway.vpol"
run vaultpolicy keygen -o "$work/controller.key"
run vaultpolicy compile "$here/examples/gateway.vpol" --plan-version 1 -o "$work/plan.json"
run vaultpolicy sign "$work/plan.json" --key "$work/controller.key" -o "$work/plan.signed"
run vaultpolicy plan show "$work/plan.json"

step "device: verify and apply the signed plan"
dev=(--state-dir "$state" --root "$root")
tpm=(--tpm "$tcti")
run vaultpolicy device apply "$work/plan.signed" --trust "$work/controller.key.pub" "${dev[@]}" "${tpm[@]}"
run vaultpolicy device status "${dev[@]}" "${tpm[@]}"

config_dir="$root/persist/vault/config"
step "an app writes a secret into the config vault"
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
TPM2TOOLS_TCTI="$tcti" tpm2_pcrextend "7:sha256=$(printf 'new firmware' | sha256sum | cut -d' ' -f1)"
if vaultpolicy device unlock "${dev[@]}" "${tpm[@]}"; then echo "FAIL: unlock succeeded after a PCR change" >&2; exit 1; fi
echo "unlock refused, as it must be"
vaultpolicy device status "${dev[@]}" "${tpm[@]}" || true

step "done: the demo cleans up after itself"
