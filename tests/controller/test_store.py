"""Controller store rules that need no TPM: enrolment conflicts and single use under SQLite."""

from __future__ import annotations

import pytest

from controller.store import Store
from vaultpolicy.errors import InputError


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
        first.add_nonce(bytes(16), "gw-1", 0, 60)
        assert first.mark_nonce_used(bytes(16), 1, "ab" * 32) is True
        assert second.mark_nonce_used(bytes(16), 2, "cd" * 32) is False
        assert second.get_nonce(bytes(16)).used_by == "ab" * 32
        first.add_verified_quote("ab" * 32, "gw-1", 0, 60, "boot", "sha256", {7: bytes(32)}, {"config": "boot"})
        assert second.mark_released("ab" * 32, 1) is True
        assert first.mark_released("ab" * 32, 2) is False


def test_not_a_database_is_an_input_error(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(InputError, match="not a usable controller store"):
        Store(tmp_path / "junk.db")


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
