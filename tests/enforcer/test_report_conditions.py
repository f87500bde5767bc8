"""The drift report's condition while an encryption change waits (a locked vault, an unsupported cipher):
the files as the kernel has them, never the plan's wish. vault_condition is pure: Observed is data."""

from __future__ import annotations

from enforcer.fscrypt import EncryptionPolicy, KeyStatus
from enforcer.observe import ObservedSeal, ObservedVault, PathState
from enforcer.report import vault_condition
from vp_helpers import vault

KEY = bytes(range(16))


def encrypted(contents: str = "aes-256-xts") -> ObservedVault:
    names = {"aes-256-xts": "aes-256-cts", "adiantum": "adiantum"}[contents]
    return ObservedVault(name="config", path="/r/persist/vault/config", path_state=PathState.DIRECTORY,
                         policy=EncryptionPolicy(2, contents, names, 2, KEY), key_status=KeyStatus.PRESENT,
                         seal=ObservedSeal(KEY, "sha256", (0, 7), True, ()))


def test_a_pending_encryption_change_is_drift_not_ready():
    assert vault_condition(vault("config"), encrypted(), managed=True)[:2] == ("Ready", "ready")
    for wanted in (vault("config", encryption="none"), vault("config", encryption="adiantum")):
        condition, reason, message = vault_condition(wanted, encrypted(), managed=True)
        assert (condition, reason) == ("Drifted", "encryption-change-pending"), wanted.encryption
        assert "aes-256-xts" in message or "still encrypted" in message
