"""reconcile() is pure: Plan x Observed -> steps and problems. No fakes needed: Observed is data."""

from __future__ import annotations

from dataclasses import replace

from enforcer.fscrypt import EncryptionPolicy, KeyStatus
from enforcer.observe import Observed, ObservedSeal, ObservedVault, PathState
from enforcer.reconcile import Action, escrow_steps, reconcile
from enforcer.state import VaultRecord
from vp_helpers import make_plan, vault

KEY_ID = bytes(range(16))
POLICY = EncryptionPolicy(2, "aes-256-xts", "aes-256-cts", 3, KEY_ID)
SEAL = ObservedSeal(KEY_ID, "sha256", (0, 7), True, ())


def seen(name="config", **values) -> ObservedVault:
    return ObservedVault(name=name, path=f"/r/persist/vault/{name}", **({"path_state": PathState.MISSING} | values))


def converged(name="config", limit=0) -> ObservedVault:
    return seen(name, path_state=PathState.DIRECTORY, mounted=limit > 0, image_bytes=limit or None,
                policy=POLICY, key_status=KeyStatus.PRESENT, seal=SEAL)


def record(name="config", **values) -> VaultRecord:
    return VaultRecord(**({"name": name, "path": f"/persist/vault/{name}", "encryption": "aes-256-xts",
                          "on_remove": "retain", "protected": False, "limit_bytes": 0} | values))


def actions(plan, *vaults, records=()):
    result = reconcile(plan, Observed({v.name: v for v in vaults}, {r.name: r for r in records}))
    return [s.action for s in result.steps], [p.reason for p in result.problems]


def test_new_vault_without_limit():
    assert actions(make_plan([vault("config")]), seen()) == (
        [Action.CREATE_DIRECTORY, Action.CREATE_KEY, Action.SET_POLICY], [])


def test_new_vault_with_limit():
    assert actions(make_plan([vault("config", limit=1 << 20)]), seen()) == (
        [Action.CREATE_STORAGE, Action.CREATE_KEY, Action.SET_POLICY], [])


def test_converged_vault_needs_nothing():
    plan = make_plan([vault("config", limit=1 << 20), vault("img")])
    assert actions(plan, converged("config", 1 << 20), converged("img"), records=[record("config"), record("img")]) == ([], [])


def test_plaintext_directory_is_staged_and_migrated():
    plaintext = seen(path_state=PathState.DIRECTORY, empty=False)
    assert actions(make_plan([vault("config", limit=1 << 20)]), plaintext) == (
        [Action.STAGE_PLAINTEXT, Action.CREATE_STORAGE, Action.CREATE_KEY, Action.SET_POLICY, Action.MIGRATE], [])
    # After a crash once the vault exists: only the migration remains.
    resumed = replace(converged(limit=1 << 20), staged_plaintext=True)
    assert actions(make_plan([vault("config", limit=1 << 20)]), resumed, records=[record()]) == ([Action.MIGRATE], [])


def test_unencrypted_vault_without_limit_keeps_its_files_in_place():
    plain = seen("scratch", path_state=PathState.DIRECTORY, empty=False)
    assert actions(make_plan([vault("scratch", encryption="none")]), plain) == ([], [])


def test_after_reboot_storage_is_mounted_and_key_unlocked():
    rebooted = seen(path_state=PathState.DIRECTORY, image_bytes=1 << 20, empty=True, seal=SEAL, key_status=KeyStatus.ABSENT)
    steps, problems = actions(make_plan([vault("config", limit=1 << 20)]), rebooted, records=[record()])
    assert steps[:2] == [Action.MOUNT_STORAGE, Action.UNLOCK] and problems == []


def test_limit_rise_grows_and_fall_is_a_problem():
    assert actions(make_plan([vault("config", limit=2 << 20)]), converged(limit=1 << 20), records=[record()]) == (
        [Action.GROW_STORAGE], [])
    assert actions(make_plan([vault("config", limit=1 << 19)]), converged(limit=1 << 20), records=[record()]) == (
        [], ["limit-below-size"])


def test_encrypted_directory_without_sealed_key_is_never_recreated():
    lost = seen(path_state=PathState.DIRECTORY, policy=POLICY)
    assert actions(make_plan([vault("config")]), lost, records=[record()]) == ([], ["key-lost"])


def test_an_unmounted_encrypted_image_without_sealed_key_is_key_lost_not_re_keyed():
    """After a reboot an image vault's path is an empty mount point: whether its directory is encrypted
    is read from the image (`image_encrypted`). One that is has lost its key (S20); one that is not is
    a vault whose key was never made (a crash before create-key)."""
    plan = make_plan([vault("config", limit=8 << 20)])
    rebooted = seen(path_state=PathState.DIRECTORY, image_bytes=8 << 20, empty=True, image_encrypted=True)
    assert actions(plan, rebooted, records=[record()]) == ([], ["key-lost"])
    never_keyed = replace(rebooted, image_encrypted=False)
    assert actions(plan, never_keyed, records=[record()]) == (
        [Action.MOUNT_STORAGE, Action.CREATE_KEY, Action.SET_POLICY], [])


def test_a_filesystem_smaller_than_its_limit_grows_and_a_migration_finishes_its_erase():
    short = converged(limit=16 << 20)  # a resize cut short: the filesystem's own size is what is observed
    assert actions(make_plan([vault("config", limit=16 << 20)]), replace(short, image_bytes=8 << 20),
                   records=[record()]) == ([Action.GROW_STORAGE], [])
    assert actions(make_plan([vault("config")]), replace(converged(), erasing_plaintext=True), records=[record()]) == (
        [Action.MIGRATE], [])


def test_symlinks_are_refused():
    for state in (PathState.SYMLINK, PathState.SYMLINK_IN_PATH, PathState.NOT_DIRECTORY):
        assert actions(make_plan([vault("config")]), seen(path_state=state)) == ([], ["unsafe-path"])


def test_reseal_when_pcrs_change():
    plan = make_plan([vault("config", pcrs=(0, 4, 7))])
    assert actions(plan, converged(), records=[record()]) == ([Action.RESEAL], [])


def test_removed_vaults_retain_and_destroy():
    plan = make_plan([])
    assert actions(plan, converged(), records=[record()]) == ([Action.ORPHAN], [])
    orphaned_locked = seen(path_state=PathState.DIRECTORY, policy=POLICY, seal=SEAL, key_status=KeyStatus.ABSENT)
    assert actions(plan, orphaned_locked, records=[record(orphaned=True)]) == ([], [])
    assert actions(plan, converged(), records=[record(on_remove="destroy")]) == ([Action.DESTROY], [])


def test_a_vault_leaving_the_plan_at_or_behind_a_symlink_is_a_problem_not_a_destroy_or_orphan():
    """Removing there would delete whatever the link leads to and leave the vault's own files; retaining
    would unmount and lock through the link (orphan had no check)."""
    to_destroy = [record(on_remove="destroy")]
    for state in (PathState.SYMLINK, PathState.SYMLINK_IN_PATH):
        assert actions(make_plan([]), seen(path_state=state), records=to_destroy) == ([], ["unsafe-path"])
        assert actions(make_plan([]), seen(path_state=state), records=[record()]) == ([], ["unsafe-path"])
    for state in (PathState.MISSING, PathState.NOT_DIRECTORY):  # nothing is followed: its key is erased all the same
        assert actions(make_plan([]), seen(path_state=state), records=to_destroy) == ([Action.DESTROY], [])


def test_every_encryption_change_is_a_re_encryption():
    for old, new in (("aes-256-xts", "adiantum"), ("aes-256-xts", "none"), ("adiantum", "aes-256-xts")):
        plan = make_plan([vault("config", encryption=new)])
        assert actions(plan, converged(), records=[record(encryption=old)]) == ([Action.RE_ENCRYPT], []), (old, new)
    plaintext = seen(path_state=PathState.DIRECTORY, empty=False)
    assert actions(make_plan([vault("config")]), plaintext, records=[record(encryption="none")]) == (
        [Action.RE_ENCRYPT], [])


def test_re_encryption_of_an_image_vault_mounts_and_grows_it_first():
    rebooted_plain = seen(path_state=PathState.DIRECTORY, image_bytes=1 << 20, empty=True)
    plan = make_plan([vault("config", limit=2 << 20)])
    assert actions(plan, rebooted_plain, records=[record(encryption="none", limit_bytes=1 << 20)]) == (
        [Action.MOUNT_STORAGE, Action.GROW_STORAGE, Action.RE_ENCRYPT], [])


def test_re_encryption_of_a_locked_vault_waits_for_its_key():
    locked = replace(converged(), key_status=KeyStatus.ABSENT)
    plan = make_plan([vault("config", encryption="adiantum")])
    assert actions(plan, locked, records=[record()]) == ([], ["vault-locked"])
    assert actions(make_plan([vault("config", encryption="none")]), locked, records=[record()]) == ([], ["vault-locked"])


def test_a_moved_vault_is_a_problem_and_stays_managed_where_its_files_are():
    plan = make_plan([vault("config", path="/persist/elsewhere/config")])
    assert actions(plan, converged(), records=[record()]) == ([], ["path-change-unsupported"])
    locked = replace(converged(), key_status=KeyStatus.ABSENT)
    assert actions(plan, locked, records=[record()]) == ([Action.UNLOCK], ["path-change-unsupported"])


# --- properties over every observation ------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

ORDER = [Action.STAGE_PLAINTEXT, Action.CREATE_DIRECTORY, Action.CREATE_STORAGE, Action.MOUNT_STORAGE,
         Action.GROW_STORAGE, Action.RE_ENCRYPT, Action.CREATE_KEY, Action.RESEAL, Action.UNLOCK, Action.SET_POLICY, Action.MIGRATE]

ENCRYPTIONS = ["aes-256-xts", "adiantum", "none"]
observations = st.builds(
    ObservedVault,
    name=st.just("config"),
    path=st.just("/r/persist/vault/config"),
    path_state=st.sampled_from(list(PathState)),
    mounted=st.booleans(),
    image_bytes=st.one_of(st.none(), st.sampled_from([8 << 20, 16 << 20, 32 << 20])),
    empty=st.one_of(st.none(), st.booleans()),
    staged_plaintext=st.booleans(),
    policy=st.one_of(st.none(), st.just(POLICY)),
    key_status=st.one_of(st.none(), st.sampled_from(list(KeyStatus))),
    seal=st.one_of(st.none(), st.just(SEAL)),
)


@settings(max_examples=300, deadline=None)
@given(seen_vault=observations, limit=st.sampled_from([0, 16 << 20]), encryption=st.sampled_from(ENCRYPTIONS),
       recorded=st.one_of(st.none(), st.sampled_from(ENCRYPTIONS)))
def test_reconcile_never_destroys_and_orders_steps(seen_vault, limit, encryption, recorded):
    plan = make_plan([vault("config", limit=limit, encryption=encryption)])
    records = [record(encryption=recorded)] if recorded else []
    observed = Observed({"config": seen_vault}, {r.name: r for r in records})
    result = reconcile(plan, observed)
    assert result == reconcile(plan, observed)  # a function of its inputs only
    steps = [s.action for s in result.steps]
    assert Action.DESTROY not in steps and Action.ORPHAN not in steps  # the vault is in the plan
    assert [ORDER.index(a) for a in steps] == sorted(ORDER.index(a) for a in steps)
    assert len(steps) == len(set(steps))
    if Action.MIGRATE in steps:
        assert seen_vault.staged_plaintext or Action.STAGE_PLAINTEXT in steps
    if seen_vault.seal is not None:
        assert Action.CREATE_KEY not in steps  # an existing sealed key is never replaced
    if encryption == "none":
        assert not {Action.CREATE_KEY, Action.SET_POLICY, Action.UNLOCK, Action.RESEAL} & set(steps)
    if recorded not in (None, encryption):  # the files change encryption only by being copied, never in place
        assert not {Action.CREATE_KEY, Action.SET_POLICY, Action.UNLOCK, Action.RESEAL, Action.STAGE_PLAINTEXT,
                    Action.MIGRATE, Action.CREATE_DIRECTORY} & set(steps)
    else:
        assert Action.RE_ENCRYPT not in steps
    if result.problems:
        assert {p.vault for p in result.problems} == {"config"}


# --- project quotas: which backing, and the steps of a quota vault ---------------------------------
MiB = 1 << 20
PROJECT = 0x7650_0000


def quota_vault(limit=8 * MiB, used=MiB, **values) -> ObservedVault:
    from enforcer.quota import ProjectQuota, limits_for

    counted = ProjectQuota(PROJECT, used, 10, *limits_for(limit))
    return seen(**({"path_state": PathState.DIRECTORY, "quota_enforced": True, "project_id": PROJECT,
                    "project_inherit": True, "quota": counted, "used_bytes": used, "capacity_bytes": limit,
                    "policy": POLICY, "key_status": KeyStatus.PRESENT, "seal": SEAL} | values))


def quota_record(limit=8 * MiB) -> VaultRecord:
    return record(limit_bytes=limit, backing="project-quota", project_id=PROJECT)


def test_a_new_vault_with_a_limit_gets_a_project_quota_where_the_filesystem_enforces_them():
    plan = make_plan([vault("config", limit=8 * MiB)])
    assert actions(plan, seen(quota_enforced=True)) == ([Action.CREATE_PROJECT, Action.CREATE_KEY, Action.SET_POLICY], [])
    plaintext = seen(path_state=PathState.DIRECTORY, empty=False, quota_enforced=True)
    assert actions(plan, plaintext)[0] == [Action.STAGE_PLAINTEXT, Action.CREATE_PROJECT, Action.CREATE_KEY,
                                           Action.SET_POLICY, Action.MIGRATE]
    assert actions(plan, quota_vault(), records=[quota_record()]) == ([], [])


def test_a_vault_keeps_its_backing_for_life():
    """An image vault stays on its image when quotas appear (its record says so, or an older record with a
    limit, or its image is there); a quota vault stays a quota vault when they go (reported, not moved)."""
    plan = make_plan([vault("config", limit=MiB)])
    image_vault = replace(converged(limit=MiB), quota_enforced=True)
    assert actions(plan, image_vault, records=[record(limit_bytes=MiB, backing="image")]) == ([], [])
    assert actions(plan, image_vault, records=[record(limit_bytes=MiB)]) == ([], [])
    assert actions(plan, replace(seen(quota_enforced=True), image_bytes=MiB), records=[]) [0][0] is Action.MOUNT_STORAGE
    gone = quota_vault(quota_enforced=False, quota=None)
    assert actions(make_plan([vault("config", limit=8 * MiB)]), gone, records=[quota_record()]) == (
        [], ["quota-not-enforced"])


def test_a_quota_limit_rises_and_falls_but_not_below_usage():
    rise = make_plan([vault("config", limit=32 * MiB)])
    assert actions(rise, quota_vault(), records=[quota_record()]) == ([Action.SET_QUOTA], [])
    fall = make_plan([vault("config", limit=4 * MiB)])
    assert actions(fall, quota_vault(used=MiB), records=[quota_record()]) == ([Action.SET_QUOTA], [])
    assert actions(fall, quota_vault(used=5 * MiB), records=[quota_record()]) == ([], ["limit-below-usage"])


def test_a_measured_size_reads_with_one_decimal_in_the_unit_that_fits():
    """A 4 TiB image's room read "4194320.0 MiB"."""
    from compiler.units import format_measured

    assert [format_measured(size) for size in (0, 5 * MiB + 123, 1 << 30, 4194320 * MiB, 3 << 40, (1 << 30) - 1,
                                               (1 << 40) - MiB)] == \
        ["0.0 MiB", "5.0 MiB", "1.0 GiB", "4.0 TiB", "3.0 TiB", "1.0 GiB", "1.0 TiB"]


def test_a_measured_usage_reads_in_mib_and_a_limit_as_written():
    """Usage is rarely a whole unit: in the policy's exact spelling 5 MiB and 123 bytes read as 5243003B."""
    fall = make_plan([vault("config", limit=4 * MiB)])
    result = reconcile(fall, Observed({"config": quota_vault(used=5 * MiB + 123)}, {"config": quota_record()}))
    message = result.problems[0].message
    assert "the limit fell to 4MiB" in message and "the vault holds 5.0 MiB in 10 files" in message, message


def test_a_directory_without_the_vaults_project_gets_it_again_and_is_no_plaintext():
    plan = make_plan([vault("config", limit=8 * MiB)])
    for lost in (quota_vault(project_id=None, quota=None), quota_vault(project_inherit=False),
                 quota_vault(project_id=PROJECT + 1)):
        assert actions(plan, lost, records=[quota_record()]) == ([Action.SET_QUOTA], [])
    unencrypted = make_plan([vault("config", limit=8 * MiB, encryption="none")])
    files = quota_vault(policy=None, seal=None, key_status=None, empty=False)
    assert actions(unencrypted, files, records=[replace(quota_record(), encryption="none")]) == ([], [])


def test_a_quota_vault_without_its_image_is_not_storage_lost():
    plan = make_plan([vault("config", limit=8 * MiB)])
    empty = quota_vault(policy=None, key_status=KeyStatus.ABSENT, empty=True)
    steps, problems = actions(plan, empty, records=[quota_record()])
    assert "storage-lost" not in problems and Action.SET_POLICY in steps


def test_escrow_steps_escrow_each_sealed_key_the_device_holds_no_blob_of_for_the_plans_escrow_key():
    from enforcer import escrow

    controller, other = escrow.generate_escrow_key(), escrow.generate_escrow_key()
    plan = make_plan([vault("config")], escrow_public_key=escrow.escrow_public_text(controller))

    def blob(key=controller, identifier=KEY_ID, named=True):
        made = escrow.wrap_key(key.public_key(), "gw-1", "config", identifier, bytes(64))
        return made if named else replace(made, recipient=None)  # as blobs were before they named their escrow key

    def steps(observed, for_plan=plan):
        return [(s.action, s.reason) for s in escrow_steps(for_plan, Observed({"config": observed}))]

    assert steps(converged(), make_plan([vault("config")])) == []  # no escrow key: nothing to escrow
    assert steps(replace(converged(), escrow=blob())) == []  # escrowed for the plan's key: nothing to do
    for held, why in ((None, "the key is not escrowed"),
                      (blob(identifier=bytes(16)), "its escrow blob is of an earlier key"),
                      (blob(named=False), "its escrow blob does not name the escrow key it is wrapped for"),
                      (blob(other), "the key is escrowed for another escrow key than the plan's")):
        [(action, reason)] = steps(replace(converged(), escrow=held))
        assert action is Action.ESCROW_KEY and reason.startswith(why) and "wrapped for the plan's escrow key" in reason
    # an image not mounted yet (a reboot) shows no policy: the step checks it once the image is mounted
    assert [a for a, _ in steps(replace(converged(limit=1 << 20), mounted=False, policy=None))] == [Action.ESCROW_KEY]
    # never: no key yet (create-key escrows it), files under another key (its blob may be its only copy, S20),
    # a plan that decrypts the vault, a path that is no directory
    assert steps(replace(converged(), seal=None)) == []
    assert steps(replace(converged(), policy=replace(POLICY, key_identifier=bytes(16)))) == []
    assert steps(replace(converged(), policy=None)) == []
    assert steps(converged(), make_plan([vault("config", encryption="none")],
                                        escrow_public_key=escrow.escrow_public_text(controller))) == []
    assert steps(replace(converged(), path_state=PathState.SYMLINK, policy=None)) == []
