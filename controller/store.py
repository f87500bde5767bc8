"""Controller state in one embedded SQLite file: issued nonces, enrolled devices, escrow records,
verified quotes.

Each public method is one transaction. Single-use rules (a nonce consumed once, a verified quote
released once) are enforced with a conditional UPDATE whose row count says whether this caller won,
so two controllers sharing the file cannot both use the same nonce.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vaultpolicy.errors import InputError

DEFAULT_STORE = "controller.db"

# A blob is never replaced: a second, different blob for the same key is kept beside the first.
_ESCROW_TABLE = """CREATE TABLE IF NOT EXISTS escrow (
    device_id TEXT NOT NULL,
    vault TEXT NOT NULL,
    key_identifier TEXT NOT NULL,     -- hex
    blob BLOB NOT NULL,
    blob_sha256 TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, vault, key_identifier, blob_sha256)
);"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,           -- hex
    device_id TEXT NOT NULL,
    issued_at INTEGER NOT NULL,       -- unix seconds
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT,                     -- sha256 of the quote whose verification used it
    outcome TEXT                      -- how that verification ended: `verified` or `<reason>: <message>`
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    ak_public_pem TEXT NOT NULL,
    ak_name TEXT NOT NULL UNIQUE,
    storage_public BLOB,              -- TPM2B_PUBLIC releases are wrapped to; NULL: enrolled before it existed
    enrolled_at INTEGER NOT NULL,
    reset_count INTEGER,              -- last TPM counters seen in a verified quote
    restart_count INTEGER,
    clock INTEGER
);
""" + _ESCROW_TABLE + """
CREATE TABLE IF NOT EXISTS verified_quotes (
    quote_sha256 TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    verified_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    released_at INTEGER,
    attestation TEXT,                 -- the attestation requirement the quote satisfied
    bank TEXT,                        -- its bank and the quoted values, JSON {"<index>": hex}
    pcrs TEXT,
    sealed_to TEXT                    -- JSON {vault: attestation or null}: the plan's sealed vaults
);
"""


EscrowOutcome = Literal["stored", "held", "kept-beside"]


@dataclass(frozen=True)
class Device:
    device_id: str
    ak_public_pem: str
    ak_name: str
    storage_public: bytes | None
    reset_count: int | None
    restart_count: int | None
    clock: int | None


@dataclass(frozen=True)
class Nonce:
    nonce: bytes
    device_id: str
    issued_at: int
    expires_at: int
    used_at: int | None
    used_by: str | None
    outcome: str | None  # None while (or if) the verification that used it never finished


@dataclass(frozen=True)
class VerifiedQuoteRecord:
    device_id: str
    verified_at: int
    expires_at: int
    released_at: int | None
    attestation: str | None  # None: verified by a controller that did not record it (verify again)
    bank: str | None
    pcrs: dict[int, bytes]
    sealed_to: dict[str, str | None]  # vault -> the attestation its key is sealed to (None: explicit PCRs)


# Columns added after the first release; a store made before them gains them when opened.
_ADDED_COLUMNS = {
    "nonces": ("used_by TEXT", "outcome TEXT"),
    "devices": ("storage_public BLOB",),
    "verified_quotes": ("attestation TEXT", "bank TEXT", "pcrs TEXT", "sealed_to TEXT"),
}


# The ECDH release key of the first releases; its devices must enrol again (storage_public is NULL).
_DROPPED_COLUMNS = {"devices": ("release_public_pem",)}


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            self._keep_every_escrow_blob()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a usable controller store ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            for column in _DROPPED_COLUMNS.get(table, ()):
                if column in present:
                    self._db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")

    def _keep_every_escrow_blob(self) -> None:
        """A store made when a deposit replaced the blob held for its key identifier (one row per key)
        gets the escrow table keyed by the blob's digest too, rows kept."""
        if any(row[1] == "blob_sha256" and row[5] for row in self._db.execute("PRAGMA table_info(escrow)")):
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ALTER TABLE escrow RENAME TO escrow_by_key")
            self._db.execute(_ESCROW_TABLE)
            self._db.execute("INSERT INTO escrow SELECT device_id, vault, key_identifier, blob, blob_sha256, received_at"
                             " FROM escrow_by_key")
            self._db.execute("DROP TABLE escrow_by_key")

    def _write(self, sql: str, params: tuple) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._db.execute(sql, params).rowcount

    # --- nonces ---

    def add_nonce(self, nonce: bytes, device_id: str, issued_at: int, expires_at: int) -> None:
        self._write(
            "INSERT INTO nonces (nonce, device_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
            (nonce.hex(), device_id, issued_at, expires_at),
        )

    def get_nonce(self, nonce: bytes) -> Nonce | None:
        row = self._db.execute(
            "SELECT nonce, device_id, issued_at, expires_at, used_at, used_by, outcome FROM nonces WHERE nonce = ?",
            (nonce.hex(),),
        ).fetchone()
        return Nonce(bytes.fromhex(row[0]), *row[1:]) if row else None

    def mark_nonce_used(self, nonce: bytes, now: int, used_by: str) -> bool:
        """True when this call used the nonce (for the quote whose sha256 is `used_by`); False when it
        was already used."""
        return self._write(
            "UPDATE nonces SET used_at = ?, used_by = ? WHERE nonce = ? AND used_at IS NULL", (now, used_by, nonce.hex())
        ) == 1

    def record_nonce_outcome(self, nonce: bytes, outcome: str) -> None:
        self._write("UPDATE nonces SET outcome = ? WHERE nonce = ?", (outcome, nonce.hex()))

    # --- devices ---

    def enroll(self, device_id: str, ak_public_pem: str, ak_name: str, storage_public: bytes, now: int) -> None:
        existing = self.device(device_id)
        if existing and (existing.ak_name, existing.storage_public) == (ak_name, storage_public):
            return  # enrolling the same identity again changes nothing
        if existing and existing.ak_name == ak_name and existing.storage_public is None:
            # enrolled before releases were wrapped to the storage key: the same AK vouches for its TPM
            self._write("UPDATE devices SET storage_public = ? WHERE device_id = ?", (storage_public, device_id))
            return
        if existing:
            raise InputError(
                f"device `{device_id}` is already enrolled with a different attestation key",
                hint="a new TPM means a new enrolment: remove the old record deliberately first",
            )
        try:
            self._write(
                "INSERT INTO devices (device_id, ak_public_pem, ak_name, storage_public, enrolled_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (device_id, ak_public_pem, ak_name, storage_public, now),
            )
        except sqlite3.IntegrityError:
            raise InputError(f"attestation key `{ak_name}` is already enrolled for another device") from None

    def device(self, device_id: str) -> Device | None:
        row = self._db.execute(
            "SELECT device_id, ak_public_pem, ak_name, storage_public, reset_count, restart_count, clock"
            " FROM devices WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        return Device(*row) if row else None

    def record_counters(self, device_id: str, reset_count: int, restart_count: int, clock: int) -> None:
        self._write(
            "UPDATE devices SET reset_count = ?, restart_count = ?, clock = ? WHERE device_id = ?",
            (reset_count, restart_count, clock, device_id),
        )

    # --- escrow ---

    def add_escrow(self, device_id: str, vault: str, key_identifier: bytes, blob: bytes, blob_sha256: str,
                   now: int) -> EscrowOutcome:
        """Keep a deposited blob. An existing one is never replaced: the same blob again is `held`; a
        different blob for the same key identifier is `kept-beside` it (release opens whichever holds the
        key); a blob for a key identifier not seen yet is `stored`."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            held = {row[0] for row in self._db.execute(
                "SELECT blob_sha256 FROM escrow WHERE device_id = ? AND vault = ? AND key_identifier = ?",
                (device_id, vault, key_identifier.hex()))}
            if blob_sha256 in held:
                return "held"
            self._db.execute(
                "INSERT INTO escrow (device_id, vault, key_identifier, blob, blob_sha256, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, vault, key_identifier.hex(), blob, blob_sha256, now),
            )
            return "kept-beside" if held else "stored"

    def escrow_blobs(self, device_id: str, vault: str) -> list[bytes]:
        """The blobs of the vault's most recently received key identifier (a rotated key replaces the
        older one), the most recent first."""
        rows = self._db.execute(
            "SELECT blob FROM escrow WHERE device_id = ? AND vault = ? AND key_identifier = (SELECT key_identifier"
            " FROM escrow WHERE device_id = ? AND vault = ? ORDER BY received_at DESC, rowid DESC LIMIT 1)"
            " ORDER BY received_at DESC, rowid DESC",
            (device_id, vault, device_id, vault),
        )
        return [row[0] for row in rows]

    def escrowed_vaults(self, device_id: str) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT vault FROM escrow WHERE device_id = ? ORDER BY vault", (device_id,))
        return [row[0] for row in rows]

    # --- verified quotes ---

    def add_verified_quote(self, quote_sha256: str, device_id: str, verified_at: int, expires_at: int, attestation: str,
                           bank: str, pcrs: dict[int, bytes], sealed_to: dict[str, str | None]) -> None:
        self._write(
            "INSERT INTO verified_quotes (quote_sha256, device_id, verified_at, expires_at, attestation, bank, pcrs, sealed_to)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (quote_sha256, device_id, verified_at, expires_at, attestation, bank,
             json.dumps({str(i): v.hex() for i, v in sorted(pcrs.items())}), json.dumps(sealed_to, sort_keys=True)),
        )

    def verified_quote(self, quote_sha256: str) -> VerifiedQuoteRecord | None:
        row = self._db.execute(
            "SELECT device_id, verified_at, expires_at, released_at, attestation, bank, pcrs, sealed_to"
            " FROM verified_quotes WHERE quote_sha256 = ?",
            (quote_sha256,),
        ).fetchone()
        if row is None:
            return None
        pcrs = {int(i): bytes.fromhex(v) for i, v in json.loads(row[6] or "{}").items()}
        return VerifiedQuoteRecord(*row[:6], pcrs, json.loads(row[7] or "{}"))

    def mark_released(self, quote_sha256: str, now: int) -> bool:
        return (
            self._write(
                "UPDATE verified_quotes SET released_at = ? WHERE quote_sha256 = ? AND released_at IS NULL",
                (now, quote_sha256),
            )
            == 1
        )
