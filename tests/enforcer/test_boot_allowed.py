"""A key is sealed only to a boot its vault's attestation allows (real swtpm and fscrypt). `device rotate`
in a boot the policy did not allow sealed the new key to it: the vault then unlocked in that boot and
stayed locked after a reboot into the one the policy trusts."""

from __future__ import annotations

import pytest

from compiler.plan import Attestation, Seal
from enforcer.state import StateDir
from enforcer.tpm import Tpm
from vp_helpers import make_plan, tree, vault

pytestmark = pytest.mark.device

DAY = 86400


def attested_plan(allowed: dict[int, bytes], version: int = 1):
    """Vault `config` sealed to attestation `boot` over PCRs 0 and 7, with `allowed` as its allow lists."""
    boot = Attestation(name="boot", bank="sha256", pcrs=(0, 7), nonce_bytes=32, nonce_lifetime_seconds=300,
                       allowed={str(i): (v.hex(),) for i, v in allowed.items()})
    config = vault("config").model_copy(update={"seal": Seal(bank="sha256", pcrs=(0, 7), attestation="boot"),
                                                "rotate_seconds": 90 * DAY})
    return make_plan([config], version=version).model_copy(update={"attestations": (boot,)})


def pcr_values(device) -> dict[int, bytes]:
    with Tpm(device.tcti) as tpm:
        return tpm.read_pcrs("sha256", [0, 7])


def extend_pcr7(device) -> None:
    with Tpm(device.tcti) as tpm:
        tpm.extend_pcr(7, "sha256", b"a boot the policy does not allow")


def test_apply_in_a_boot_the_attestation_does_not_allow_is_refused_whole(device):
    booted = pcr_values(device)
    other = {0: booted[0], 7: bytes(32)}  # PCR 7 pinned to a value this boot does not have
    refused = device.apply(attested_plan(other))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "(boot-not-allowed, VP1024), nothing was changed" in refused.stderr, refused.stderr
    assert "the key of vault `config` cannot be sealed: this boot is not one attestation `boot` allows: " \
        f"PCR 7 = {booted[7].hex()} is not an allowed value" in refused.stderr
    assert "add its values to the attestation's `allow` lists in a new plan" in refused.stderr
    assert not device.path("/persist/vault/config").exists() and StateDir(device.state).sealed("config") is None

    # a PCR the attestation lists no value for takes any: only PCR 0 pinned, to this boot's value
    assert device.apply(attested_plan({0: booted[0]}, version=2)).returncode == 0


def test_rotate_in_a_boot_the_attestation_does_not_allow_is_refused_and_changes_nothing(device):
    assert device.apply(attested_plan(pcr_values(device))).returncode == 0
    path = device.path("/persist/vault/config")
    (path / "settings").write_text("kept")
    sealed, files = StateDir(device.state).sealed("config"), tree(path)

    extend_pcr7(device)  # the vault stays unlocked: a running device measured something else
    refused = device.cli("device", "rotate", "config")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "vault config: failed (boot-not-allowed, VP1024): the new key cannot be sealed: this boot is not one " \
        "attestation `boot` allows: PCR 7 = " in refused.stdout, refused.stdout
    assert StateDir(device.state).sealed("config") == sealed and tree(path) == files
    assert (path / "settings").read_text() == "kept"


def test_a_vault_sealed_to_the_same_pcrs_without_the_attestation_does_not_hide_the_check(device):
    """The check is made per selection and attestation: a vault with its own PCRs 0 and 7, checked first,
    must not stand in for the attested vault on the same PCRs."""
    booted = pcr_values(device)
    plan = attested_plan({0: booted[0], 7: bytes(32)})
    plan = plan.model_copy(update={"vaults": (vault("aaa", pcrs=(0, 7)), *plan.vaults)})
    refused = device.apply(plan)
    assert refused.returncode == 1 and "(boot-not-allowed, VP1024), nothing was changed" in refused.stderr, refused.stderr
    assert "the key of vault `config` cannot be sealed" in refused.stderr


def test_a_reseal_to_an_attestation_that_does_not_allow_this_boot_is_refused(device):
    """A vault sealed to its own PCRs, then a plan that seals it to an attestation over others (a reseal)."""
    assert device.apply(make_plan([vault("config", pcrs=(0, 4))])).returncode == 0
    sealed = StateDir(device.state).sealed("config")
    booted = pcr_values(device)
    refused = device.apply(attested_plan({0: booted[0], 7: bytes(32)}, version=2))
    assert refused.returncode == 1 and "(boot-not-allowed, VP1024), nothing was changed" in refused.stderr, refused.stderr
    assert StateDir(device.state).sealed("config") == sealed
    assert device.apply(attested_plan(booted, version=3)).returncode == 0
    assert StateDir(device.state).sealed("config")["blob"] != sealed["blob"], "resealed to the attestation"
