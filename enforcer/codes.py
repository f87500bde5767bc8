"""Device codes (VP1xxx) for `vaultpolicy explain`: why a plan was refused or a vault left as it is.

Each code stands for one stable `reason` word the enforcer records in a condition or prints;
`code_for(reason)` gives the code the CLI shows next to it. VP10xx plan refusals, VP11xx vault
problems the enforcer will not fix by itself, VP12xx unlock and lock outcomes.
"""

from __future__ import annotations

# A leaf module: the device imports it for `code_for`. Its codes reach the catalogue `vaultpolicy explain`
# reads through `policy_lang.codes.all_codes`, which registers `CODES`: importing policy_lang here loaded
# lark and the parser into every device command.
CODES: list[tuple[str, str, str, str]] = []  # (code, title, explanation, example)
_BY_REASON: dict[str, str] = {}


def _code(code: str, reason: str, title: str, explanation: str, example: str) -> str:
    _BY_REASON[reason] = code
    CODES.append((code, title, explanation, example))
    return code


def code_for(reason: str) -> str | None:
    return _BY_REASON.get(reason)


# --- VP10xx: plan refusals (nothing changes; the applied plan stays in force) --------------------
_code("VP1001", "bad-signature", "plan signature does not verify",
      "A signature in the envelope does not verify against the trusted key it names: the plan bytes were "
      "changed after signing, or another key signed them. The device keeps enforcing its applied plan.",
      "vaultpolicy device apply plan.signed --trust controller.pub   # error: plan refused (bad-signature)")
_code("VP1002", "threshold-not-met", "too few distinct trusted keys signed the plan",
      "The trust root needs M distinct public keys to sign. The same key under two ids counts once (S13).",
      "trust root threshold 2, plan signed by one key twice   # refused")
_code("VP1003", "rollback", "plan version is not above the applied one",
      "Plan versions only go up per device (S14). Re-applying the exact bytes of the applied plan is allowed "
      "(it reconciles); any other plan at or below the applied version is a rollback or a replay.",
      "applied version 5; apply version 4   # refused")
_code("VP1004", "expired", "plan has expired",
      "A plan carries `expires`; the device compares it with one clock reading taken when apply starts.",
      "expires 2026-01-01T00:00:00Z, device clock 2026-02-01   # refused")
_code("VP1005", "future-dated", "plan is issued in the future",
      "`issued_at` is further ahead of the device clock than the 5-minute slack: the device clock or the "
      "controller clock is wrong, and a plan from the future could outlive its intended lifetime.",
      "issued_at one day ahead of the device clock   # refused")
_code("VP1006", "wrong-target", "plan targets other devices",
      "The plan lists device ids or `class:NAME` targets and this device (`--device-id`) is not among them.",
      "targets [\"gw-2\"], vaultpolicy device apply ... --device-id gw-1   # refused")
_code("VP1007", "unknown-schema", "plan schema is not one this device knows",
      "The signed payload is not a plan of a schema major version this enforcer understands, or a field "
      "is malformed. Update the enforcer before applying plans of a newer schema.",
      "schema_version \"2.0\" on a 1.x device   # refused")
_code("VP1008", "destroys-protected", "plan would destroy a protected vault",
      "The device records which vaults are protected. A plan that drops such a vault with `destroy`, or "
      "changes its encryption, is refused even if the policy no longer says `protected` (S16).",
      "vault config { protected } removed from the policy with on_remove destroy   # refused")
_code("VP1009", "trust-root-changed", "--trust is not the device's trust root",
      "The first `device apply` records its trust root; later commands use it. A different `--trust` is taken "
      "only by `device apply`, and only as a trust root envelope with version + 1 signed by a threshold of the "
      "recorded root (`vaultpolicy trust rotate`). A PEM key never replaces a recorded root.",
      "vaultpolicy device apply plan.signed --trust other.pub   # refused (trust-root-changed)")
_code("VP1010", "applied-plan-changed", "the stored applied plan is not the one that was applied",
      "At boot the applied plan's stored bytes are verified again and compared with the digest recorded when "
      "it was applied. Different bytes mean the state dir was tampered with; nothing trusts that plan.",
      "state/applied/plan.signed replaced by another signed plan   # unlock refused")
_code("VP1011", "malformed-envelope", "the signed plan is not a valid envelope",
      "The file is not the JSON envelope `vaultpolicy sign` writes (payload type, base64 payload, signatures).",
      "vaultpolicy device apply plan.json   # the unsigned plan, not the envelope")
_code("VP1012", "unsigned", "the envelope carries no signatures",
      "An envelope without signatures is never trusted, whatever its payload says.",
      "an envelope whose `signatures` list is empty   # refused")
_code("VP1013", "unknown-key", "signed only by keys the trust root does not list",
      "Every signature names a key id the device's trust root does not hold: the plan comes from another "
      "controller, or the trust root is out of date.",
      "a plan signed by a test key, trust root of the production controller   # refused")
_code("VP1014", "wrong-payload-type", "the envelope holds something other than a plan",
      "Envelopes carry a payload type; a trust root, report or release envelope is not a plan.",
      "vaultpolicy device apply trust-root.signed   # refused")
_code("VP1015", "malformed-trust-root", "the trust root is not valid",
      "A trust root envelope must hold a version, a threshold no larger than its key count and PEM Ed25519 keys.",
      "a trust root with threshold 3 and two keys   # refused")
_code("VP1016", "trust-root-version", "a new trust root must have the next version",
      "A trust root rotation replaces version N by version N + 1 only, so an old root cannot be replayed.",
      "recorded root version 2, offered rotation to version 2   # refused")
_code("VP1017", "malformed-key", "a key file is not an Ed25519 PEM key",
      "Signing and trust need Ed25519 keys in PEM form (`vaultpolicy keygen`).",
      "--trust id_rsa.pub   # refused")
_code("VP1018", "plan-inconsistent", "the plan contradicts itself",
      "The signed plan has the schema's shape but breaks a rule the device relies on (`compiler.plan."
      "inconsistencies`): a name given twice, an app or seal naming a vault or attestation the plan lacks, an "
      "encrypted vault without a seal, PCR 5 sealed, a path outside the persist root. The compiler never writes "
      "such a plan: it was made or edited elsewhere. Compile and sign it again from the policy.",
      "a signed plan listing vault `config` twice   # refused (plan-inconsistent)")
_code("VP1023", "not-canonical", "the signed plan is not in its canonical encoding",
      "A plan is signed as the exact bytes `vaultpolicy compile` writes (RFC 8785 JSON on one line), so one plan "
      "has one encoding and one digest (the version floor and `prev_plan_sha256` compare digests). A plan "
      "reformatted after compile (indented, keys reordered) and then signed is refused, though its signature is "
      "good. `vaultpolicy sign` refuses to sign one. Compile and sign it again.",
      "jq . plan.json > pretty.json; (signed by other tooling)   # refused (not-canonical)")

# --- VP11xx: vault problems left for a person (never fixed by destroying data) -------------------
_code("VP1101", "unsafe-path", "vault path is or passes through a symlink",
      "A symlink on the way to a vault could redirect its files elsewhere; the vault is not created there. A "
      "vault that left the plan with `destroy` is not destroyed through one either (removing there would delete "
      "what the link leads to): its key and files are kept until the symlink is gone, and the next apply destroys it.",
      "/persist/vault -> /tmp   # the vault under it is not created, or not destroyed")
_code("VP1102", "key-lost", "encrypted directory without a sealed key",
      "The directory carries an fscrypt policy but the state dir has no sealed key for it. The enforcer never "
      "re-creates such a vault (its data would be lost, S20); restore the sealed blob or release an escrowed key.",
      "state/sealed/config.json deleted   # reported, nothing re-created")
_code("VP1103", "replace-unsupported", "vault encryption changed (older enforcers)",
      "Enforcers before re-encryption refused every encryption change and kept the vault as it was. This one "
      "re-encrypts instead (the `re-encrypt` step); the code stays so that older logs can be explained.",
      "encryption aes-256-xts -> none   # older enforcers: reported, unchanged")
_code("VP1104", "limit-below-size", "vault limit lowered below its filesystem size",
      "A vault's own ext4 image cannot shrink while in use; the vault keeps its size.",
      "limit 64MiB -> 16MiB   # reported, unchanged")
_code("VP1105", "policy-mismatch", "vault directory is encrypted differently",
      "The directory's fscrypt policy names another key or cipher than the plan and the sealed key. `device "
      "unlock` reports such a vault locked when the kernel lacks the key its directory names, even though the "
      "sealed key unsealed and went in.",
      "the directory was encrypted by hand with another key   # reported")
_code("VP1106", "staging-conflict", "plaintext found both in the vault path and staged beside it",
      "A migration was interrupted and new plaintext appeared at the vault path; resolve by hand.",
      "/persist/vault/.config.vp-plaintext and a non-empty /persist/vault/config   # reported")
_code("VP1107", "vault-locked", "vault must be unlocked to copy its files",
      "Rotating a key, re-encrypting (a new cipher) or decrypting (`encryption none`) copies the vault's files, "
      "so they must be readable: its key must be in the kernel. Nothing changes until `vaultpolicy device "
      "unlock` has unlocked it (the boot unlock does so too); the next `device apply` or `rotate` then runs.",
      "device lock; device apply plan-with-adiantum.signed   # config not changed (vault-locked)")
_code("VP1108", "path-change-unsupported", "the plan moves a vault",
      "The device does not move a vault's files to a new path. The vault stays managed at its recorded path "
      "(unlocked, locked, rotated there) and the new path is not created, so no data is left unmanaged. Move it "
      "by hand (or give the new place a new vault name and copy the files), then record the move.",
      "path /persist/vault/config -> /persist/cfg   # reported, files stay at /persist/vault/config")
_code("VP1109", "not-created", "vault has no key yet",
      "The vault was never created by `device apply` (no sealed key): there is nothing to rotate, unlock or lock.",
      "vaultpolicy device rotate config   # before the first apply")
_code("VP1110", "not-encrypted", "vault is not encrypted under its sealed key",
      "A rotation needs the vault's directory encrypted under the key the state dir has sealed for it, and "
      "`device unlock` reports a vault with a sealed key whose directory has no policy failed. Run `device "
      "apply`, which creates or repairs it, or read `device status` for the reason.",
      "a vault directory whose policy names another key   # rotation refused")
_code("VP1111", "vault-busy", "files are open in the vault",
      "A vault with its own image is unmounted from its path while its files are copied (rotation, "
      "re-encryption), so no app writes meanwhile; open files refuse that. Stop its apps (`device gate`).",
      "a process holds a file open in /persist/vault/config during `device rotate`   # refused")
_code("VP1112", "no-room", "no room for the re-encrypted copy",
      "Rotation and re-encryption copy every file beside the original before the swap, so the vault's "
      "filesystem needs free blocks and inodes for a full copy. Nothing is changed.",
      "a 16 MiB vault holding 12 MiB   # rotation refused; raise the limit")
_code("VP1113", "cipher-unsupported", "the kernel lacks the plan's cipher",
      "A kernel built without a cipher (often Adiantum) accepts the policy but refuses every new file (ENOPKG). "
      "The enforcer makes one file under the mode first, before setting a new vault's policy or re-encrypting, "
      "and changes nothing when the kernel refuses it.",
      "encryption aes-256-xts -> adiantum on a kernel without CONFIG_CRYPTO_ADIANTUM   # refused")
_code("VP1114", "step-failed", "an apply step failed",
      "A filesystem, TPM or kernel call of one step failed; the message names the step and the cause. That "
      "vault's later steps wait for the next apply; the other vaults went on.",
      "create-storage failed: no space left on the persist partition")
_code("VP1115", "rotate-failed", "a rotation failed",
      "A rotation failed for another reason than a refusal (a filesystem or TPM error); it was undone and the "
      "vault keeps its key.",
      "an I/O error while copying   # rotation undone")
_code("VP1119", "uncopyable-file", "a file the copy cannot carry",
      "Migration, rotation and re-encryption copy every file of a vault. One that a copy cannot carry as it is "
      "refuses the whole copy before anything changes, naming the file and why: a device node (what is written "
      "through it goes to the device, never encrypted), a file with another name outside the directory (a hard "
      "link: that name would keep the plaintext, and no longer show the vault's file), an immutable or "
      "append-only entry (`chattr +i`, `+a`: once copied, the original could not be removed). Remove or "
      "change what the message names and run the command again.",
      "ln /persist/vault/config/db /persist/db-link; vaultpolicy device apply plan.signed   # config refused")
_code("VP1120", "changed-during-copy", "files changed while they were copied",
      "After migration, rotation or re-encryption copies a vault's files it looks at the originals again. One "
      "that changed, appeared or went away meanwhile means an app is still writing: the copy is not used (a "
      "migration would have erased, a rotation swapped out, what the app wrote), and the originals stay as the "
      "app left them. Stop the vault's apps (`device gate` keeps them stopped) and run the command again.",
      "an app appends to its log during `vaultpolicy device rotate`   # refused, nothing lost")

# --- VP12xx: unlock and lock outcomes ------------------------------------------------------------
_code("VP1201", "pcr-mismatch", "vault stays locked: bound PCRs changed",
      "The TPM refused to unseal the vault key because PCRs it is sealed to differ from their values at seal "
      "time (new firmware, boot loader or configuration). The other vaults unlock. The controller can release "
      "an escrowed key after a verified quote.",
      "tpm2_pcrextend 7:sha256=... ; vaultpolicy device unlock   # config stays locked, names PCR 7")
_code("VP1202", "unlock-failed", "vault could not be unlocked",
      "Unsealing or adding the key failed for another reason than changed PCRs (TPM failure, a damaged "
      "sealed blob, a key identifier that does not match the recorded one).",
      "a corrupted state/sealed/config.json   # config stays locked")
_code("VP1203", "files-busy", "vault incompletely locked: files still open",
      "The key was removed from the kernel but open files keep their contents readable until they close (S7).",
      "a process holds a file open in the vault during `vaultpolicy device lock`")
_code("VP1204", "lock-failed", "vault could not be locked",
      "Removing the key from the kernel failed (the vault's filesystem cannot be reached, an ioctl failed). "
      "Its files may still be readable.",
      "the vault's image unmounted behind the tool's back   # lock failed")
_code("VP1205", "path-not-found", "vault path not found",
      "`device lock` reaches a vault's key through its path. When the path is not there (a wrong or missing "
      "`--root`, or the directory was removed) the key cannot be removed through it, so the vault is not "
      "reported locked, unless it has its own image (mounted in the state dir) and the kernel says none of its "
      "keys is in. `device unlock` reports such a vault failed: there are no files to unlock. Run it again "
      "with the --root and --state-dir that `device apply` used.",
      "vaultpolicy device lock --state-dir /var/lib/vaultpolicy --root /wrong   # failed (path-not-found)")
_code("VP1206", "state-damaged", "a state file of the vault is damaged",
      "The vault's sealed key record (`STATE/sealed/<vault>.json`) or vault record (`STATE/vaults/<vault>.json`) "
      "is not readable. `device unlock` and `device lock` go on with every other vault and report this one "
      "failed, naming the file; `lock` still removes the key the vault's directory is encrypted under. Restore "
      "the file from a backup, or have the controller release the escrowed key (`device unlock --release`). "
      "So is the record of an interrupted rotation (`STATE/rotating/<vault>.json`): `unlock`, `apply` and "
      "`rotate` leave that vault, its partial copy and the record as they are and go on with every other vault.",
      "echo '{' > /var/lib/vaultpolicy/sealed/notes.json; vaultpolicy device unlock   # notes failed")
_code("VP1207", "recovery-failed", "an interrupted rotation could be neither finished nor undone",
      "`device unlock`, `apply` and `rotate` first finish or undo a rotation or re-encryption a crash cut "
      "short. When that fails for a vault (its new key no longer unseals: a PCR changed since the crash), the "
      "vault is left as it is, with its pending record (`STATE/rotating/<vault>.json`) and partial copy, and "
      "reported failed; every other vault goes on. Boot the state the new key was sealed in, or recover by "
      "hand, and run the command again.",
      "device rotate killed, then a firmware update changes PCR 7; device unlock   # the vault failed, others unlocked")

# --- VP1019-VP1022 and VP1024: plans the host cannot carry out, refused before anything changes (enforcer/preflight.py)
_code("VP1019", "persist-missing", "the persist partition is not there",
      "`device apply` checks that the plan's persist directory exists under --root before it makes any vault, "
      "so a missing mount or a wrong --root does not create vaults on the host's root filesystem.",
      "vaultpolicy device apply plan.signed   # on a host without /persist: refused, nothing created")
_code("VP1020", "no-fscrypt", "a vault's filesystem has no fscrypt",
      "An encrypted vault without a limit is a directory on the persist filesystem, which must support fscrypt "
      "(ext4 made with `-O encrypt`). Checked before anything changes; a vault with a limit gets its own image.",
      "persist on an ext4 made without -O encrypt   # refused, nothing created")
_code("VP1021", "unmeasured-boot", "PCR 0 or 4 is all zero",
      "Nothing measured the boot into the TPM, so a key sealed to its PCRs would bind nothing. `device apply` "
      "refuses before it changes anything unless the policy's device block says `allow_unmeasured_boot` "
      "(simulators and development only).",
      "vaultpolicy device apply plan.signed   # on a fresh swtpm: refused (unmeasured-boot)")
_code("VP1022", "bank-not-allocated", "the TPM lacks the plan's PCR bank",
      "A vault is sealed to a PCR bank the TPM has not allocated, or that does not cover its PCRs. Choose an "
      "allocated bank in the policy or allocate it (tpm2_pcrallocate). Nothing changes.",
      "bank sha384 on a TPM with only sha256 allocated   # refused")
_code("VP1024", "boot-not-allowed", "this boot is not one the vault's attestation allows",
      "A key is sealed to the PCR values of the boot the device is in. For a vault sealed to an attestation, "
      "`device apply` (a new key, a re-seal, a re-encryption) and `device rotate` first compare them with the "
      "attestation's `allow` lists: a key sealed to a boot the policy does not allow would unlock in that boot "
      "and stay locked after a reboot into one it does. Nothing changes. Boot into an allowed state, or add the "
      "values to the `allow` lists in a new plan (a PCR without a list takes any value). A key the controller "
      "releases (`device unlock --release`) is re-sealed without this check: the controller verified that boot.",
      "allow pcr 4 = \"e20c…\" while PCR 4 holds another value   # rotate: refused (boot-not-allowed)")

# --- VP1116-VP1118: a vault's own image (enforcer/blockdev.py), refused or left alone, never made anew
_code("VP1116", "storage-no-room", "the state filesystem has no room for a vault's image",
      "A vault with a limit lives on its own image under the state dir, allocated in full when it is made or "
      "grown (a sparse image would take its blocks only as the vault is written, and a full state filesystem "
      "then fails writes under the limit and loses data). `device apply` sums the images a plan makes or grows "
      "per filesystem before it changes anything; a plan whose images do not fit, keeping 1 MiB free for the "
      "state files, is refused whole. Free space there, move the state dir to a larger filesystem, or lower "
      "the limits.",
      "two 16 MiB vaults with the state dir on a 24 MiB filesystem   # the plan refused, nothing made")
_code("VP1117", "storage-damaged", "a vault's image cannot be read",
      "The vault's own image (`STATE/images/<vault>.img`) is not a readable ext4 filesystem. That vault is left "
      "as it is: `apply` refuses it, `unlock` fails it, `status` names the image; every other vault goes on. "
      "Repair the image by hand (`e2fsck`) or restore it from a backup.",
      "the superblock of a.img overwritten   # vault a failed, b and c unlocked")
_code("VP1118", "storage-lost", "a vault's image is missing",
      "The device made the vault with its own image and sealed its key, but the image file is gone: its files "
      "were in it. No empty filesystem is made in its place (that would hide the loss behind an empty vault), "
      "and no key is added for it. Restore the image from a backup.",
      "rm STATE/images/g.img; reboot   # vault g failed (storage-lost), never re-created")
_code("VP1121", "limit-below-usage", "vault limit lowered below what the vault holds",
      "A vault whose limit is a project quota can have its limit lowered, but not below the bytes or files it "
      "holds now (the kernel would keep the files and refuse every write). Its quota stays as it is until files "
      "are removed or the limit is raised again. A vault with its own image cannot shrink at all "
      "(`limit-below-size`).",
      "limit 64MiB -> 16MiB with 20 MiB in the vault   # reported, quota unchanged")
_code("VP1122", "quota-not-enforced", "the persist filesystem no longer enforces a vault's project quota",
      "The vault's limit is a project quota, and the filesystem it is on accounts or enforces project quotas no "
      "more (mounted without `prjquota`, or quotas turned off): nothing stops writes past the limit. A vault "
      "keeps its backing for life, so it is not moved to an image; mount the filesystem with `prjquota` (or "
      "`quotaon -P`) again.",
      "mount /dev/sda3 /persist   # without prjquota: vault logs reported, its limit not applied")
_code("VP1123", "escrow-unsealable", "a vault's existing key cannot be escrowed now",
      "A plan with an escrow key escrows the keys of existing vaults too (a plan that adds escrow, or a new "
      "escrow key): `device apply` unseals each key and wraps it for the controller. The TPM unseals a key only "
      "while the PCRs it is sealed to hold the values it was sealed with; one that changed (a firmware update) "
      "leaves that key unescrowed, and its escrow as it was (the drift report says `escrow-missing`). Apply "
      "again once the device runs in the state the key is sealed to; if the new state is legitimate and the "
      "vault is unlocked, `device rotate` gives it a new key sealed to the PCRs as they are now, and escrows it "
      "(for a vault sealed to an attestation, once a plan whose `allow` lists take the new values is applied: "
      "rotate refuses to seal to a boot they do not allow, VP1024).",
      "escrow_key added; PCR 7 extended since the key was sealed   # vault config: escrow-key FAILED")
_code("VP1124", "plaintext-staged", "a removed vault's files wait unencrypted beside it",
      "An apply that moved a plaintext directory into a vault was interrupted while the files waited, "
      "unencrypted, in `.<name>.vp-plaintext` beside the vault path, and the plan applied since no longer has the "
      "vault. The files are not moved into a vault the plan dropped, nor deleted: that copy is their one whole "
      "copy. The vault is neither retained nor destroyed until they are gone; status and the drift report say so. "
      "Move the files where they belong, or apply a plan that has the vault again (it finishes the migration).",
      "a migration into vault data killed, then a plan without data applied   # reported, nothing removed")
