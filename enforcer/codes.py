"""Device codes (VP1xxx) for `vaultpolicy explain`: why a plan was refused or a vault left as it is.

Each code stands for one stable `reason` word the enforcer records in a condition or prints;
`code_for(reason)` gives the code the CLI shows next to it. VP10xx plan refusals, VP11xx vault
problems the enforcer will not fix by itself, VP12xx unlock and lock outcomes.
"""

from __future__ import annotations

from policy_lang.codes import register

_BY_REASON: dict[str, str] = {}


def _code(code: str, reason: str, title: str, explanation: str, example: str) -> str:
    _BY_REASON[reason] = register(code, title, explanation, example)
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

# --- VP11xx: vault problems left for a person (never fixed by destroying data) -------------------
_code("VP1101", "unsafe-path", "vault path is or passes through a symlink",
      "A symlink on the way to a vault could redirect its files elsewhere; the vault is not created there.",
      "/persist/vault -> /tmp   # the vault under it is not created")
_code("VP1102", "key-lost", "encrypted directory without a sealed key",
      "The directory carries an fscrypt policy but the state dir has no sealed key for it. The enforcer never "
      "re-creates such a vault (its data would be lost, S20); restore the sealed blob or release an escrowed key.",
      "state/sealed/config.json deleted   # reported, nothing re-created")
_code("VP1103", "replace-unsupported", "vault encryption changed",
      "Changing a vault's encryption would mean re-creating it. The enforcer keeps the vault as it is.",
      "encryption aes-256-xts -> none   # reported, unchanged")
_code("VP1104", "limit-below-size", "vault limit lowered below its filesystem size",
      "A vault's own ext4 image cannot shrink while in use; the vault keeps its size.",
      "limit 64MiB -> 16MiB   # reported, unchanged")
_code("VP1105", "policy-mismatch", "vault directory is encrypted differently",
      "The directory's fscrypt policy names another key or cipher than the plan and the sealed key.",
      "the directory was encrypted by hand with another key   # reported")
_code("VP1106", "staging-conflict", "plaintext found both in the vault path and staged beside it",
      "A migration was interrupted and new plaintext appeared at the vault path; resolve by hand.",
      "/persist/vault/.config.vp-plaintext and a non-empty /persist/vault/config   # reported")

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
