"""The compiler's diagnostic codes (VP01xx-VP06xx), each with an explanation for `vaultpolicy explain`.

Ranges follow `policy_lang.codes`: VP01xx names, VP02xx paths, VP03xx coverage, VP04xx capacity,
VP05xx PCRs and attestation, VP06xx keys, rotation and data handling.
"""

from __future__ import annotations

from policy_lang.codes import register

# --- VP01xx names -------------------------------------------------------------------------------
UNKNOWN_VAULT = register(
    "VP0101",
    "unknown vault",
    "An app names a vault that no `vault` block declares and that is not a built-in vault "
    "(`config`, `images`). The app would start with nowhere to keep its data.",
    'vault images { limit 4GiB }\napp historian { vault imagess }   # error: did you mean `images`?',
)
DUPLICATE_VAULT = register(
    "VP0102",
    "duplicate vault",
    "Two `vault` blocks share a name. Names identify vaults on the device and in diffs, so each "
    "must be unique across the policy and every file it includes.",
    'vault scratch { limit 1GiB }\nvault scratch { limit 2GiB }   # error: already declared',
)
UNKNOWN_ATTESTATION = register(
    "VP0103",
    "unknown attestation",
    "A `seal NAME` setting names an attestation that no `attestation` block declares, so the "
    "compiler cannot tell which PCRs the vault key is sealed to.",
    'attestation boot { pcrs 0, 4, 7 }\nvault data { seal bot }   # error: did you mean `boot`?',
)
DUPLICATE_ATTESTATION = register(
    "VP0104",
    "duplicate attestation",
    "Two `attestation` blocks share a name; a `seal NAME` could not say which one it means.",
    "attestation boot { pcrs 0, 4, 7 }\nattestation boot { pcrs 0, 7 }   # error",
)
DUPLICATE_APP = register(
    "VP0105",
    "duplicate app",
    "Two `app` blocks share a name; the device binds apps to vaults by name, so each must be unique.",
    "app historian { vault images }\napp historian { vault scratch }   # error",
)
DUPLICATE_COMPONENT = register(
    "VP0106",
    "duplicate component",
    "Two `component` blocks share a name; list every directory of one component in one block.",
    'component nim { stores "/persist/status" }\ncomponent nim { stores "/persist/nim" }   # error',
)
OPT_OUT_NOT_BUILTIN = register(
    "VP0107",
    "opt-out of a vault that is not built in",
    "Only the built-in vaults `config` and `images` exist without being declared, so only they can "
    "be opted out of with a reason. Any other vault exists only when declared: delete its block instead.",
    'vault scratch { disabled "not needed" }   # error: `scratch` is not a built-in vault',
)
DUPLICATE_BLOCK = register(
    "VP0108",
    "duplicate device or defaults block",
    "A policy has at most one `device` block and one `defaults` block; settings spread over two "
    "would silently override each other.",
    'device { persist "/persist" }\ndevice { capacity 64GiB }   # error: merge them into one block',
)

# --- VP02xx paths -------------------------------------------------------------------------------
PATH_NOT_ABSOLUTE = register(
    "VP0201",
    "path is not absolute",
    "Vault paths, the persist root, `holds` directories and component `stores` directories are "
    "absolute: a relative path would depend on the enforcer's working directory.",
    'vault scratch { path "persist/scratch" }   # error: write "/persist/scratch"',
)
PATH_NOT_NORMALIZED = register(
    "VP0202",
    "path is not normalized",
    "Paths may not contain `..`, `.`, empty components (`//`) or a trailing `/`. `..` in particular "
    "could lead a vault out of the persist partition; the enforcer also refuses symlinked components.",
    'vault scratch { path "/persist/vault/../clear" }   # error: write "/persist/clear"',
)
PATH_OUTSIDE_PERSIST = register(
    "VP0203",
    "vault path not below the persist root",
    "Every vault lies on the device's persist partition (`device { persist \"…\" }`, by default "
    "`/persist`): that is the filesystem prepared for fscrypt and kept across updates. A vault is a "
    "directory below the root, never the root itself, which would put every other vault inside it.",
    'device { persist "/persist" }\nvault logs { path "/var/log/app" }   # error',
)
PATHS_OVERLAP = register(
    "VP0204",
    "vault paths nested or equal",
    "A vault may not lie inside another vault or share its directory: one directory has exactly one "
    "fscrypt policy and one key, so nested vaults cannot have separate keys or lifecycles.",
    'vault images { path "/persist/vault/images" }\nvault thumbs { path "/persist/vault/images/thumbs" }   # error',
)
HOLDS_OUTSIDE_VAULT = register(
    "VP0205",
    "`holds` directory outside its vault",
    "`holds` lists directories the vault contains; each must lie inside the vault's own path.",
    'vault config { path "/persist/vault/config"  holds "/persist/status" }   # error',
)
DEFAULT_PATH_COLLISION = register(
    "VP0206",
    "built-in vault path taken",
    "A built-in vault (`config`, `images`) or a vault without a `path` lives at "
    "`<persist>/vault/<name>`; another vault already uses or contains that directory.",
    'vault other { path "/persist/vault/config" }   # error: that is where the built-in `config` vault lives',
)

# VP0207, a character that does not show in a path, is the language's (`policy_lang.syntax_codes`):
# it is decided where a string is decoded, which knows where the character is written.
STORED_TWICE = register(
    "VP0208",
    "directory stored twice by a component",
    "A component lists the same directory in two `stores`. Each directory is stored once, sensitive "
    "or not: with `sensitive` on one line only, a reader cannot tell which was meant, and the plan "
    "would list the directory twice.",
    'component agent {\n  stores "/persist/vault/config/agent" sensitive\n  stores "/persist/vault/config/agent"   # error\n}',
)
PERSIST_IS_ROOT = register(
    "VP0209",
    "persist root is `/`",
    "The persist root (`device { persist \"…\" }`) is the mount point of the partition that vaults "
    "live on and that is kept across updates, a directory below `/` such as `/persist`. `/` itself is "
    "the whole filesystem: the vaults would lie among the system's own files, and the device refuses "
    "a plan whose persist root is `/`.",
    'device { persist "/" }   # error: write the mount point, e.g. "/persist"',
)

# --- VP03xx coverage ----------------------------------------------------------------------------
SENSITIVE_NOT_ENCRYPTED = register(
    "VP0301",
    "sensitive directory outside an encrypted vault",
    "A component marks a directory `sensitive`, but no vault with encryption contains it, so its "
    "data would rest in plain text. Move the directory into a vault or extend a vault to cover it.",
    'component zedagent { stores "/persist/config" sensitive }   # error unless a vault covers /persist/config',
)
END_TO_END_UNENCRYPTED = register(
    "VP0302",
    "end-to-end app without an encrypted vault",
    "`protection end_to_end` promises that the app's data is encrypted at rest with a key the TPM "
    "releases only to a measured boot; that needs a vault with encryption.",
    'vault scratch { encryption none }\napp camera { vault scratch  protection end_to_end }   # error',
)
END_TO_END_NOT_ATTESTED = register(
    "VP0303",
    "end-to-end app whose vault is not sealed to an attestation",
    "`protection end_to_end` needs the vault key sealed to an `attestation` (so a controller can "
    "verify the device's boot before escrow release), not only to raw PCRs.",
    'vault data { seal pcrs 0, 4, 7 }\napp camera { vault data  protection end_to_end }   # error: seal `data` to an attestation',
)
BUILTIN_UNENCRYPTED = register(
    "VP0304",
    "built-in vault without encryption",
    "The built-in vaults `config` (device configuration) and `images` (mutated app images) are "
    "encrypted on every device unless the policy opts out of one with a reason reviewers can read. "
    "`encryption none` on one of them, or in `defaults` where it reaches them, would drop that "
    "protection silently. Opt out with `disabled \"reason\"` instead, or keep the encryption.",
    'vault images { encryption none }   # error: write `vault images { disabled "no apps on this device" }`',
)

# --- VP04xx capacity ----------------------------------------------------------------------------
OVER_CAPACITY = register(
    "VP0401",
    "vault limits exceed the device capacity",
    "The limits of all vaults plus the reserve the device block states must fit the stated capacity; "
    "otherwise a vault can fill the partition and starve the others or the system.",
    'device { capacity 8GiB reserve 1GiB }\nvault images { limit 8GiB }   # error: 8GiB + 1GiB > 8GiB',
)
NO_LIMIT = register(
    "VP0402",
    "vault without a limit on a device with a capacity",
    "The device states a capacity but this vault has no `limit`, so the capacity check cannot "
    "account for it. Give it a limit. The built-in `config` and `images` vaults count too: when the "
    "policy does not declare them, the warning points at the capacity.",
    'device { capacity 64GiB }\nvault logs { path "/persist/logs" }   # warning: no limit',
)
LIMIT_TOO_SMALL = register(
    "VP0403",
    "vault limit below the device's minimum",
    "A vault with a limit gets its own ext4 filesystem image on the device, and an image smaller "
    "than 8 MiB leaves almost no room once the journal is laid out, so the device refuses to make "
    "it and the vault stays in drift. Give the vault at least 8MiB, or no limit at all.",
    'vault scratch { path "/persist/clear/scratch"; encryption none; limit 4MiB }   # error: at least 8MiB',
)

# --- VP05xx PCRs and attestation ----------------------------------------------------------------
PCR5_SEALED = register(
    "VP0503",
    "PCR 5 is never sealed to",
    "PCR 5 measures the GPT partition table, which flips on every A/B update: a key sealed to it "
    "locks the device out after the first update.",
    "vault data { seal pcrs 0, 4, 5, 7 }   # error: drop 5",
)
PCR1_VOLATILE = register(
    "VP0504",
    "PCR 1 is volatile",
    "PCR 1 measures platform configuration, which changes when a bootable USB stick is plugged in or "
    "a BIOS setting changes; a key sealed to it may stay locked after such harmless events.",
    "vault data { seal pcrs 0, 1, 4, 7 }   # warning",
)
PCR_PHASE_VOLATILE = register(
    "VP0505",
    "PCR 11 or 12 changes during boot",
    "PCR 11 is extended by systemd-stub and systemd-pcrphase at each boot phase, and PCR 12 measures "
    "the kernel command line and credentials; their values depend on when the key is unsealed.",
    "vault data { seal pcrs 0, 4, 7, 11 }   # warning",
)
PRESENCE_ONLY = register(
    "VP0506",
    "presence-only binding",
    "The vault is sealed but to no PCRs: any boot of this TPM, including an attacker's, could unseal "
    "the key. Seal to an attestation with PCRs, or to explicit PCRs such as 0, 4, 7.",
    "attestation boot { bank sha256 }\nvault data { seal boot }   # error: `boot` lists no PCRs",
)
MISSING_FIRMWARE_ANCHOR = register(
    "VP0507",
    "firmware PCRs 0 and 4 not both sealed to",
    "PCR 0 measures the firmware and PCR 4 the boot loader; without them a modified firmware or boot "
    "loader can boot and unseal the key.",
    "vault data { seal pcrs 7 }   # warning: add 0 and 4",
)
MISSING_SECURE_BOOT_PCR = register(
    "VP0508",
    "secure boot PCR 7 not sealed to",
    "PCR 7 measures the secure boot state and its keys; without it, disabling secure boot does not "
    "change what the key is bound to.",
    "vault data { seal pcrs 0, 4 }   # warning: add 7",
)
ALLOW_UNSEALED_PCR = register(
    "VP0510",
    "allowed values for a PCR the attestation does not cover",
    "An `allow pcr N` rule constrains a PCR that is not in the attestation's `pcrs`, so a quote "
    "would never include it and the rule would never be checked.",
    'attestation boot { pcrs 0, 7  allow pcr 4 = "ab…" }   # error: add 4 to pcrs',
)
ALLOW_BAD_DIGEST = register(
    "VP0511",
    "allowed PCR value is not a digest of the bank",
    "Allowed values are hexadecimal digests as long as the bank's hash (64 hex digits for sha256).",
    'attestation boot { bank sha256  pcrs 0  allow pcr 0 = "abc" }   # error',
)
PCR_REPEATED = register(
    "VP0513",
    "PCR listed twice",
    "A PCR selection names the same PCR more than once. The plan seals to each PCR once, so the "
    "repeat changes nothing; it is usually a typo for another index. Index ranges, banks and nonce "
    "values are checked where they are written (VP0011-VP0014).",
    "vault data { seal pcrs 0, 4, 7, 7 }   # warning: 7 is listed twice",
)

PCR_UPDATE_VOLATILE = register(
    "VP0514",
    "PCR 8 or 9 changes with boot loader and kernel updates",
    "GRUB measures the commands it runs into PCR 8 and the files it loads (kernel, initrd) into PCR 9, "
    "so every kernel or boot loader update changes them: a key sealed to them stays locked after the "
    "next update until the plan is re-issued with the new values.",
    "vault data { seal pcrs 0, 4, 7, 9 }   # warning",
)
PCR_RUNTIME_VOLATILE = register(
    "VP0515",
    "PCR 10 changes while the system runs",
    "PCR 10 is the Linux IMA log: the kernel extends it with every file it measures after boot, so its "
    "value depends on what has run and when. A key sealed to it may not unseal at the next boot.",
    "vault data { seal pcrs 0, 4, 7, 10 }   # warning",
)
PCR_RESETTABLE = register(
    "VP0516",
    "PCR 16 or 23 is resettable",
    "PCR 16 (debug) and PCR 23 (application support) can be reset by any program with access to the TPM "
    "and extended to any value, so sealing to them, or quoting them, binds the key to nothing about the "
    "boot. Use the boot PCRs 0, 2, 4 and 7.",
    "vault data { seal pcrs 0, 4, 7, 16 }   # error",
)
NONCE_LIFETIME_LONG = register(
    "VP0517",
    "nonce valid for longer than a few minutes",
    "The controller's nonce is a freshness proof: a quote over it shows the device's PCRs as they are "
    "now, not as they were when someone recorded a quote. The longer a nonce stays valid, the longer a "
    "quote captured in that window can be replayed after the device has changed. Minutes are enough for "
    "a device to answer.",
    "attestation boot { pcrs 0, 4, 7  nonce 32 bytes, valid 52w }   # warning",
)

BANK_NOT_MEASURED = register(
    "VP0518",
    "PCR bank other than the device's",
    "The device's `bank` says which PCR bank its firmware extends. An attestation or a `seal … bank` "
    "over another bank reads PCRs that may never be extended on that device: they read as zero or as "
    "nothing, so the binding says nothing about the boot. The device refuses to seal when PCRs 0 and 4 "
    "of the bank read zero; state the bank once, in `device`, unless the firmware extends both.",
    "device { bank sha256 }\nattestation boot { bank sha384  pcrs 0, 4, 7 }   # warning",
)
BANK_SHA1 = register(
    "VP0519",
    "SHA-1 PCR bank",
    "SHA-1 has practical collision attacks, and firmware vendors are dropping the SHA-1 bank (TCG "
    "recommends SHA-256). A measurement that collides under SHA-1 gives a changed boot the PCR values "
    "of a trusted one. Use `bank sha256` where the TPM has it.",
    "device { bank sha1 }   # warning",
)

# --- VP06xx keys, rotation, data handling -------------------------------------------------------
ROTATION_TOO_SHORT = register(
    "VP0601",
    "rotation period shorter than one day",
    "Each rotation re-wraps the vault and re-seals in the TPM; more than once a day wears the TPM's "
    "NV storage and gains nothing. Rotate every 1d or longer.",
    "vault data { rotate every 12h }   # error",
)
DESTROY_PROTECTED = register(
    "VP0602",
    "`on_remove destroy` on a protected vault",
    "A protected vault's data may never be destroyed by a plan, so `destroy` contradicts `protected`. "
    "The built-in `config` vault is protected. Protection is sticky, as on the device: a vault the "
    "previous plan protected (`compile --prev`) stays protected when the policy drops `protected`.",
    "vault config { protected  on_remove destroy }   # error",
)
ESCROW_WITHOUT_KEY = register(
    "VP0603",
    "escrow required but no escrow key configured",
    "An attestation with `escrow required` makes the device escrow each vault key to the controller, "
    "which needs the controller's escrow public key in `device { escrow_key \"file\" }`.",
    'attestation boot { pcrs 0, 4, 7  escrow required }\ndevice { persist "/persist" }   # error: no escrow_key',
)
ESCROW_KEY_UNREADABLE = register(
    "VP0604",
    "escrow key file unreadable",
    "The file named by `escrow_key` (relative to the policy file) must exist and hold the "
    "controller's X25519 public key (PEM, or 32 raw bytes in base64).",
    'device { escrow_key "escrow.pub" }   # error when escrow.pub is missing or not an X25519 key',
)
ALLOW_FILE_UNREADABLE = register(
    "VP0605",
    "allowed PCR values file unreadable",
    "`allow pcr N from \"file\"` reads one hexadecimal digest a line (`#` comments allowed) from a "
    "file relative to the policy file; the file must exist and hold at least one digest, and each "
    "digest is as long as the attestation bank's hash (64 hexadecimal digits for sha256).",
    'attestation boot { pcrs 0  allow pcr 0 from "missing.txt" }   # error',
)
PROTECTED_ENCRYPTION_CHANGED = register(
    "VP0606",
    "encryption changed on a protected vault",
    "Changing a vault's encryption migrates its data into a new encrypted directory, which puts a "
    "protected vault's data at risk, so the device refuses a plan that does it. Protection is sticky, "
    "as on the device: a vault the previous plan protected (`compile --prev`), such as the built-in "
    "`config`, keeps the encryption that plan gave it, even when the policy drops `protected`.",
    "(compile --prev PLAN, where PLAN's `config` is aes-256-xts)\nvault config { encryption adiantum }   # error",
)
