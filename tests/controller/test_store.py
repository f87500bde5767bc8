"""Controller store rules: enrolment conflicts, single use under SQLite, and the store's failures (a
file that is no store, a later schema, a read-only file, a full disk, processes racing to open it):
each an error naming the file, never an internal error, and nothing half written."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from compiler.plan import encode_plan
from controller.errors import StoreError
from controller.store import SCHEMA_VERSION, Store
from enforcer import escrow, fscrypt
from enforcer.attest import AttestationTpm
from vaultpolicy.errors import InputError

from .conftest import ESCROWED_PCRS, at_once, escrowed_plan, run_cli


def test_enrolment_conflicts_are_refused(store):
    store.enroll("gw-1", "AK-PEM-1", "name-1", "REL-PEM-1", 1)
    store.enroll("gw-1", "AK-PEM-1", "name-1", "REL-PEM-1", 2)  # the same identity again is fine
    with pytest.raises(InputError, match="already enrolled with a different attestation key"):
        store.enroll("gw-1", "AK-PEM-2", "name-2", "REL-PEM-2", 3)
    with pytest.raises(InputError, match="already enrolled for another device"):
        store.enroll("gw-2", "AK-PEM-1", "name-1", "REL-PEM-1", 4)
    assert store.device("gw-2") is None


def test_nonce_and_release_are_single_use_across_connections(tmp_path):
    with Store(tmp_path / "c.db") as first, Store(tmp_path / "c.db") as second:
        first.add_nonce(bytes(16), "gw-1", "boot", 0, 60)
        assert first.mark_nonce_used(bytes(16), 1, "ab" * 32) is True
        assert second.mark_nonce_used(bytes(16), 2, "cd" * 32) is False
        assert second.get_nonce(bytes(16)).used_by == "ab" * 32
        first.add_verified_quote("ab" * 32, "gw-1", 0, 60, "boot", "sha256", {7: bytes(32)}, {"config": "boot"})
        assert second.mark_released("ab" * 32, 1) is True
        assert first.mark_released("ab" * 32, 2) is False


def test_a_file_that_is_no_store_is_named(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match=f"controller store `{tmp_path}/junk.db`: it is not an SQLite database"):
        Store(tmp_path / "junk.db")
    with pytest.raises(StoreError, match=f"controller store `{tmp_path}`: it is a directory"):
        Store(tmp_path)
    with pytest.raises(StoreError, match=f"its directory `{tmp_path}/nowhere` does not exist"):
        Store(tmp_path / "nowhere" / "c.db")


def test_only_enroll_creates_a_store(tmp_path):
    """Any other command with a mistyped --store answered "device `gw-1` is not enrolled" from a new empty
    store, left behind."""
    (tmp_path / "plan.json").write_bytes(encode_plan(escrowed_plan({i: "00" * 32 for i in ESCROWED_PCRS}, "", "/persist")))
    typo = tmp_path / "controler.db"
    code, out, err = run_cli(["controller", "nonce", "--device-id", "gw-1", "--plan", str(tmp_path / "plan.json"), "--store", str(typo)])
    assert (code, out) == (1, "") and not typo.exists()
    assert err == (f"error: controller store `{typo}` does not exist\n"
                   "  = help: `vaultpolicy controller enroll` creates it; check --store (default ./controller.db)\n")


def test_the_files_a_command_names_are_read_before_its_store_is_opened(tmp_path):
    """`enroll` of a bad identity file created an empty store, and `nonce` with a broken plan said the
    store did not exist: the file at fault is named first, and nothing is created."""
    (tmp_path / "identity.json").write_text("{")
    store = tmp_path / "c.db"
    code, _, err = run_cli(["controller", "enroll", str(tmp_path / "identity.json"), "--store", str(store)])
    assert code == 1 and f"{tmp_path / 'identity.json'}" in err and not store.exists(), err
    (tmp_path / "plan.json").write_text("{")
    code, _, err = run_cli(["controller", "nonce", "--device-id", "gw-1", "--plan", str(tmp_path / "plan.json"),
                            "--store", str(store)])
    assert code == 1 and f"{tmp_path / 'plan.json'}" in err and "controller store" not in err, err


def test_a_store_of_a_later_schema_is_refused_and_left_alone(tmp_path):
    Store(tmp_path / "c.db").close()
    with sqlite3.connect(tmp_path / "c.db") as later:
        later.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = (tmp_path / "c.db").read_bytes()
    with pytest.raises(StoreError, match=f"made by a later vaultpolicy \\(schema version {SCHEMA_VERSION + 1}; this one"):
        Store(tmp_path / "c.db")
    assert (tmp_path / "c.db").read_bytes() == before


def test_a_read_only_store_is_an_error_naming_it(read_only_dir, tmp_path):
    writable, read_only = read_only_dir
    with Store(writable / "c.db") as store:
        store.enroll("gw-1", "AK-PEM", "name-1", b"STORAGE", 1)
    (tmp_path / "plan.json").write_bytes(encode_plan(escrowed_plan({i: "00" * 32 for i in ESCROWED_PCRS}, "", "/persist")))
    code, out, err = run_cli(["controller", "nonce", "--device-id", "gw-1", "--plan", str(tmp_path / "plan.json"),
                              "--store", str(read_only / "c.db")])
    assert (code, out) == (1, "")
    assert err.startswith(f"error: controller store `{read_only}/c.db`: it is read-only, and the controller records")


def test_a_full_disk_stores_nothing_of_a_deposit_and_loses_no_blob(make_tpm, small_disk, tmp_path):
    """A deposit is stored whole or not at all; the blob held before (after a firmware update, the only
    copy of that key) is still there, and the same deposit goes in once there is room."""
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
    db = small_disk.path / "c.db"
    with Store(db) as store:
        store.enroll("gw-1", identity.ak_public_pem, identity.ak_name, identity.storage_public, 1)
    controller_key = escrow.generate_escrow_key()
    blobs = [escrow.wrap_key(controller_key.public_key(), "gw-1", vault, fscrypt.key_identifier(raw), raw).to_bytes()
             for vault, raw in (("config", bytes(64)), ("notes", bytes(range(64))))]
    for name, deposited in (("first.json", blobs[:1]), ("both.json", blobs)):
        (tmp_path / name).write_bytes(escrow.sign_deposit(tpm.tcti, "gw-1", deposited, "sha256", ESCROWED_PCRS))
    escrow_command = ["controller", "escrow", "--ack-dir", str(tmp_path / "acks"), "--store", str(db)]
    assert run_cli([*escrow_command, str(tmp_path / "first.json")])[0] == 0

    small_disk.fill()
    code, out, err = run_cli([*escrow_command, str(tmp_path / "both.json")])
    assert (code, out, err) == (1, "", f"error: controller store `{db}`: the disk is full; nothing was written\n")
    assert sorted(p.name for p in (tmp_path / "acks").iterdir()) == ["gw-1.config.ack.json"]
    with Store(db) as store:
        assert store.escrowed_vaults("gw-1") == ["config"] and store.escrow_blobs("gw-1", "config") == blobs[:1]

    small_disk.free()
    code, out, _ = run_cli([*escrow_command, str(tmp_path / "both.json")])
    assert code == 0 and "vault `config` already held" in out and "vault `notes` stored" in out


def test_an_old_store_that_cannot_be_brought_up_to_date_on_a_full_disk_keeps_its_blobs(small_disk):
    """Rebuilding the escrow table (rename, create, copy, drop) is one transaction: on a full disk the
    store is refused as it was, byte for byte, and opens once there is room, every blob kept."""
    path = small_disk.path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as old, old:
        old.execute("CREATE TABLE escrow (device_id TEXT NOT NULL, vault TEXT NOT NULL, key_identifier TEXT NOT NULL,"
                    " blob BLOB NOT NULL, blob_sha256 TEXT NOT NULL, received_at INTEGER NOT NULL,"
                    " PRIMARY KEY (device_id, vault, key_identifier))")
        old.executemany("INSERT INTO escrow VALUES ('gw-1', ?, ?, ?, ?, 5)",
                        [(f"vault{i}", bytes([i] * 16).hex(), bytes([i]) * 4000, f"{i:064x}") for i in range(20)])
    before = path.read_bytes()
    small_disk.fill()
    with pytest.raises(StoreError, match=f"controller store `{path}`: the disk is full; nothing was written"):
        Store(path)
    assert path.read_bytes() == before
    small_disk.free()
    with Store(path) as store:
        assert [store.escrow_blobs("gw-1", f"vault{i}") for i in range(20)] == [[bytes([i]) * 4000] for i in range(20)]


def _open_and_issue(path, index: int) -> str:
    with Store(path) as store:
        store.add_nonce(index.to_bytes(16, "big"), "gw-1", "boot", 0, 60)
    return "issued"


def test_processes_opening_an_old_store_at_once_bring_it_up_to_date_once(tmp_path):
    """Each process used to check for a missing column, then add it: all but the first failed
    ("duplicate column name")."""
    for round_ in range(5):
        path = tmp_path / f"old{round_}.db"
        with sqlite3.connect(path) as old:
            old.execute("CREATE TABLE nonces (nonce TEXT PRIMARY KEY, device_id TEXT NOT NULL, issued_at INTEGER NOT NULL,"
                        " expires_at INTEGER NOT NULL, used_at INTEGER)")
        assert at_once(_open_and_issue, [(path, i) for i in range(6)]) == ["issued"] * 6
        with Store(path) as store:
            assert all(store.get_nonce(i.to_bytes(16, "big")).outcome is None for i in range(6))


def test_a_store_from_before_nonce_outcomes_gains_the_columns(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as old:
        old.execute("CREATE TABLE nonces (nonce TEXT PRIMARY KEY, device_id TEXT NOT NULL, issued_at INTEGER NOT NULL,"
                    " expires_at INTEGER NOT NULL, used_at INTEGER)")
        old.execute("INSERT INTO nonces VALUES (?, 'gw-1', 0, 60, NULL)", (bytes(16).hex(),))
    with Store(tmp_path / "old.db") as store:
        assert store.mark_nonce_used(bytes(16), 1, "ab" * 32)
        store.record_nonce_outcome(bytes(16), "verified")
        assert (store.get_nonce(bytes(16)).used_by, store.get_nonce(bytes(16)).outcome) == ("ab" * 32, "verified")


def test_a_store_from_before_storage_keys_and_kept_blobs_is_brought_up_to_date(tmp_path):
    """Its escrow table kept one blob per key identifier (a deposit replaced it): rebuilt keyed by the
    blob's digest too, rows kept. Its devices held the ECDH release key: that column goes, and the same
    attestation key enrolling again gains the storage key."""
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as old:
        old.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, ak_public_pem TEXT NOT NULL, ak_name TEXT NOT NULL"
                    " UNIQUE, release_public_pem TEXT NOT NULL, enrolled_at INTEGER NOT NULL, reset_count INTEGER,"
                    " restart_count INTEGER, clock INTEGER)")
        old.execute("INSERT INTO devices VALUES ('gw-1', 'AK-PEM', 'name-1', 'REL-PEM', 0, NULL, NULL, NULL)")
        old.execute("CREATE TABLE escrow (device_id TEXT NOT NULL, vault TEXT NOT NULL, key_identifier TEXT NOT NULL,"
                    " blob BLOB NOT NULL, blob_sha256 TEXT NOT NULL, received_at INTEGER NOT NULL,"
                    " PRIMARY KEY (device_id, vault, key_identifier))")
        old.execute("INSERT INTO escrow VALUES ('gw-1', 'config', ?, X'01', 'aa', 5)", (bytes(16).hex(),))
    with Store(tmp_path / "old.db") as store:
        assert store.device("gw-1").storage_public is None
        store.enroll("gw-1", "AK-PEM", "name-1", b"STORAGE", 1)
        assert store.device("gw-1").storage_public == b"STORAGE"
        assert store.add_escrow("gw-1", "config", bytes(16), b"\x02", "bb", 6) == "kept-beside"
        assert store.add_escrow("gw-1", "config", bytes(16), b"\x01", "aa", 7) == "held"
        assert store.escrow_blobs("gw-1", "config") == [b"\x02", b"\x01"]
    with Store(tmp_path / "old.db") as store:  # opening it again changes nothing
        assert store.escrow_blobs("gw-1", "config") == [b"\x02", b"\x01"]
