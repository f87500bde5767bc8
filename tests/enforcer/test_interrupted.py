"""What read-only commands say about an apply or a rotation that did not finish (second-round audit, on
swtpm and loop-mounted ext4): what the vault is, never a state it would be in had the run finished."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timezone

import pytest

from compiler.plan import Seal
from enforcer.state import StateDir
from vp_helpers import make_plan, tree, vault

pytestmark = pytest.mark.device

FILES = 1200


def status(device) -> tuple[int, dict[str, dict]]:
    result = device.cli("device", "status", "--json")
    return result.returncode, {v["vault"]: v for v in json.loads(result.stdout)["vaults"]}


def drift_condition(device, plan, name: str) -> tuple[str, str, str]:
    from enforcer.observe import observe
    from enforcer.report import build_report
    from enforcer.tpm import Tpm

    state = StateDir(device.state)
    with Tpm(device.tcti) as tpm:
        observed = observe(plan, state, device.root, tpm)
    report = {v.name: v for v in build_report("gw-1", plan, None, observed, state, datetime.now(timezone.utc)).vaults}
    return report[name].condition, report[name].reason, report[name].message


def test_a_vault_of_an_interrupted_apply_is_described_as_such_with_its_staged_plaintext(device):
    """An apply adding `bulk4`, whose 1200 plaintext files migrate into it, stopped mid-copy: status said
    `orphaned, DRIFT — the vault left the plan with on_remove retain` (bulk4 was never in the applied
    plan), said nothing of the staged plaintext or the partial copy, and the report said retained-unlocked."""
    first = make_plan([vault("config")])
    assert device.apply(first).returncode == 0
    bulk4 = device.path("/persist/vault/bulk4")
    bulk4.mkdir()
    for index in range(FILES):
        (bulk4 / f"record-{index:04}.csv").write_text(f"row {index}\n" * 20)
    expected = tree(bulk4)
    second = make_plan([vault("config"), vault("bulk4")], version=2)

    # killed at its 8th crash point: after the intents of stage-plaintext, create-directory, create-key (and
    # its key sealed, not saved), set-policy (and its cipher probe) and migrate, the first file of the copy
    # (docs/enforcer.md)
    killed = device.apply(second, env={"VAULTPOLICY_CRASH_AT": "8"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    staging = device.path("/persist/vault/.bulk4.vp-plaintext")
    assert staging.is_dir() and len(list(bulk4.iterdir())) == 1, "stopped after the copy's first file"

    rc, vaults = status(device)
    assert rc == 3 and vaults["config"]["matches"]
    seen = vaults["bulk4"]
    assert seen["state"] == "apply-interrupted" and not seen["matches"], seen
    assert not any("left the plan" in reason for reason in seen["reasons"]), seen["reasons"]
    assert seen["reasons"][0].startswith(f"PLAINTEXT: its files wait, unencrypted, in `{staging}` to move into the "
                                         "vault; the vault holds a partial copy"), seen["reasons"]
    assert "the applied plan (version 1) does not have it yet; run `vaultpolicy device apply` with the plan that " \
           "adds it again" in seen["reasons"][1]
    condition, reason, message = drift_condition(device, first, "bulk4")
    assert (condition, reason) == ("Disabled", "apply-interrupted") and str(staging) in message

    # a plan refused before it changes anything leaves the interrupted apply as it was: it removed the
    # journal first, so status then called bulk4 orphaned again and the next apply did not say it resumed
    unmeasured = vault("new").model_copy(update={"seal": Seal(bank="sha384", pcrs=(0, 7))})  # sha384: all zero
    refused = device.apply(make_plan([vault("config"), vault("bulk4"), unmeasured], version=3))
    assert refused.returncode == 1 and "(unmeasured-boot, VP1021), nothing was changed" in refused.stderr, refused.stderr
    assert status(device)[1]["bulk4"]["state"] == "apply-interrupted"

    finished = device.apply(second)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resumed after an interrupted apply" in finished.stdout
    assert tree(bulk4) == expected and not staging.exists()
    assert status(device)[0] == 0 and drift_condition(device, second, "bulk4")[:2] == ("Ready", "ready")


def test_status_shows_a_rotation_that_did_not_finish(device):
    """`device rotate` killed after the new key was sealed and recorded as pending: status said `matches`."""
    plan = make_plan([vault("config")])
    assert device.apply(plan).returncode == 0
    killed = device.cli("device", "rotate", env={"VAULTPOLICY_CRASH_AT": "2"})  # at the intent of rotate-copy
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (device.state / "rotating" / "config.json").exists()

    rc, vaults = status(device)
    assert rc == 3 and not vaults["config"]["matches"], vaults
    assert "a key rotation or re-encryption of this vault is under way or was interrupted: `vaultpolicy device " \
           "apply`, `device rotate` or `device unlock` finishes or undoes it" in vaults["config"]["reasons"]
    assert device.cli("device", "rotate").returncode == 0
    rc, vaults = status(device)
    assert rc == 0 and vaults["config"]["matches"], vaults


def test_status_after_a_killed_first_apply_says_an_apply_did_not_finish(device):
    """A first apply killed mid-migration: status said only "no plan has been applied", while the files
    it was moving waited unencrypted beside the vault path."""
    data = device.path("/persist/vault/data")
    data.mkdir(parents=True)
    (data / "record.csv").write_text("row\n")
    killed = device.apply(make_plan([vault("data")]), env={"VAULTPOLICY_CRASH_AT": "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    said = device.cli("device", "status")
    assert said.returncode == 1 and "no plan has been applied" in said.stderr, said.stderr
    assert "an apply did not finish (its journal is there): run that `device apply` again" in said.stderr
    assert "`.<vault>.vp-plaintext`" in said.stderr
    assert device.apply(make_plan([vault("data")])).returncode == 0
    assert (data / "record.csv").read_text() == "row\n"


def test_a_plan_without_the_vault_a_killed_migration_was_filling_reports_its_staged_files(device):
    """Killed mid-copy, then a plan without that vault: apply said "nothing to do: the device matches the
    plan" (its vault counted as one of an unfinished apply), the files still unencrypted beside the path."""
    first = make_plan([vault("config")])
    assert device.apply(first).returncode == 0
    bulk = device.path("/persist/vault/bulk")
    bulk.mkdir()
    for index in range(20):
        (bulk / f"record-{index:02}.csv").write_text(f"row {index}\n")
    expected = tree(bulk)
    killed = device.apply(make_plan([vault("config"), vault("bulk")], version=2), env={"VAULTPOLICY_CRASH_AT": "8"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    staging = device.path("/persist/vault/.bulk.vp-plaintext")
    assert staging.is_dir()

    without = device.apply(make_plan([vault("config")], version=3))
    assert without.returncode == 1, without.stdout + without.stderr
    assert "plaintext-staged" in without.stdout and f"they wait, unencrypted, in `{staging}`" in without.stdout
    assert tree(staging) == expected, "the staged files are their one whole copy: kept as they are"
    rc, vaults = status(device)
    assert rc == 3 and vaults["bulk"]["state"] == "plaintext" and not vaults["bulk"]["matches"], vaults["bulk"]
