"""Controller state in one embedded SQLite file: issued nonces, enrolled devices, escrow records,
verified quotes, the newest drift report accepted from each device.

Every check-then-write runs in one write transaction (`Store.transaction`, BEGIN IMMEDIATE): a second
controller process sharing the file waits for it (up to `BUSY_TIMEOUT_SECONDS`) instead of reading
what the first is about to change. A public method that writes is one transaction, or part of the
caller's. Every SQLite failure (read-only file, full disk, a file that is no store) is a `StoreError`
naming the file; a failed write changes nothing (SQLite rolls the transaction back).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.errors import StoreError
from vaultpolicy.errors import InputError

DEFAULT_STORE = "controller.db"

# PRAGMA user_version. 0: a store from before versioning (brought up to date when opened); a store of
# a later version is refused: this code cannot know what its tables mean.
SCHEMA_VERSION = 3  # 2: nonces name their attestation requirement; 3: table `reports`

BUSY_TIMEOUT_SECONDS = 10

# A blob is never replaced: a second, different blob for the same key is kept beside the first.
_ESCROW_TABLE = """CREATE TABLE IF NOT EXISTS escrow (
    device_id TEXT NOT NULL,
    vault TEXT NOT NULL,
    key_identifier TEXT NOT NULL,     -- hex
    blob BLOB NOT NULL,
    blob_sha256 TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, vault, key_identifier, blob_sha256)
)"""

_TABLES = (
    """CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,           -- hex
    device_id TEXT NOT NULL,
    attestation TEXT,                 -- the attestation requirement it was issued for
    issued_at INTEGER NOT NULL,       -- unix seconds
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT,                     -- sha256 of the quote whose verification used it
    outcome TEXT                      -- how that verification ended: `verified` or `<reason>: <message>`
)""",
    """CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    ak_public_pem TEXT NOT NULL,
    ak_name TEXT NOT NULL UNIQUE,
    storage_public BLOB,              -- TPM2B_PUBLIC releases are wrapped to; NULL: enrolled before it existed
    enrolled_at INTEGER NOT NULL,
    reset_count INTEGER,              -- last TPM counters seen in a verified quote
    restart_count INTEGER,
    clock INTEGER
)""",
    _ESCROW_TABLE,
    """CREATE TABLE IF NOT EXISTS verified_quotes (
    quote_sha256 TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    verified_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    released_at INTEGER,
    attestation TEXT,                 -- the attestation requirement the quote satisfied
    bank TEXT,                        -- its bank and the quoted values, JSON {"<index>": hex}
    pcrs TEXT,
    sealed_to TEXT                    -- JSON {vault: attestation or null}: the plan's sealed vaults
)""",
    """CREATE TABLE IF NOT EXISTS reports (
    device_id TEXT PRIMARY KEY,       -- the newest drift report accepted from the device:
    quote_sha256 TEXT NOT NULL,       -- its quote,
    reset_count INTEGER NOT NULL,     -- and the TPM counters when it was signed
    restart_count INTEGER NOT NULL,
    clock INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL
)""",
)


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
    attestation: str | None  # the attestation requirement it was issued for (None: by an earlier controller)
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


@dataclass(frozen=True)
class ReportRecord:
    quote_sha256: str
    counters: tuple[int, int, int]  # reset count, restart count, clock
    accepted_at: int


# Columns added after the first release; a store made before them gains them when opened.
_ADDED_COLUMNS = {
    "nonces": ("used_by TEXT", "outcome TEXT", "attestation TEXT"),
    "devices": ("storage_public BLOB",),
    "verified_quotes": ("attestation TEXT", "bank TEXT", "pcrs TEXT", "sealed_to TEXT"),
}


# The ECDH release key of the first releases; its devices must enrol again (storage_public is NULL).
_DROPPED_COLUMNS = {"devices": ("release_public_pem",)}


_WHY = {
    sqlite3.SQLITE_BUSY: f"another controller process kept it locked for more than {BUSY_TIMEOUT_SECONDS}s; nothing was changed",
    sqlite3.SQLITE_READONLY: "it is read-only, and the controller records every nonce, verification and release in it",
    sqlite3.SQLITE_FULL: "the disk is full; nothing was written",
    sqlite3.SQLITE_NOTADB: "it is not an SQLite database",
}


def _sqlite_errors(method):
    """The method's SQLite failures as a `StoreError` naming the store file."""

    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    return translated


class Store:
    @_sqlite_errors
    def __init__(self, path: str | Path, create: bool = True):
        """`create=False`: a missing file is an error, not a new empty store (a mistyped --store would
        otherwise answer that no device is enrolled, and leave a stray store behind)."""
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"controller store `{self.path}` does not exist",
                             hint="`vaultpolicy controller enroll` creates it; check --store (default ./controller.db)")
        self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
        try:
            self._bring_up_to_date()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _error(self, exc: sqlite3.Error) -> StoreError:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code of an extended one
        if code == sqlite3.SQLITE_CANTOPEN and self.path.is_dir():
            why = "it is a directory"
        elif code == sqlite3.SQLITE_CANTOPEN and not self.path.parent.is_dir():
            why = f"its directory `{self.path.parent}` does not exist"
        else:
            why = _WHY.get(code, str(exc))
        return StoreError(f"controller store `{self.path}`: {why}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction for everything inside, joined by the store's methods; committed when
        the block ends, rolled back when it raises. BEGIN IMMEDIATE takes the write lock first, so no
        other process can write between this one's check and its write."""
        if self._db.in_transaction:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield
            self._db.commit()
        except BaseException as exc:
            self._db.rollback()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from None
            raise

    def _bring_up_to_date(self) -> None:
        """Create the tables or bring a store from an earlier version up to date, in one transaction,
        checked again inside it: two processes opening an old store at once upgrade it once."""
        if self._version() == SCHEMA_VERSION:
            return  # nothing to write: a read-only store opens, and says so only when written to
        with self.transaction():
            version = self._version()
            if version > SCHEMA_VERSION:
                raise StoreError(f"controller store `{self.path}`: made by a later vaultpolicy (schema version "
                                 f"{version}; this one knows up to {SCHEMA_VERSION})",
                                 hint="use the vaultpolicy that wrote it, or a later one")
            if version == SCHEMA_VERSION:
                return
            for table in _TABLES:
                self._db.execute(table)
            self._add_missing_columns()
            self._keep_every_escrow_blob()
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

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
        self._db.execute("ALTER TABLE escrow RENAME TO escrow_by_key")
        self._db.execute(_ESCROW_TABLE)
        self._db.execute("INSERT INTO escrow SELECT device_id, vault, key_identifier, blob, blob_sha256, received_at"
                         " FROM escrow_by_key")
        self._db.execute("DROP TABLE escrow_by_key")

    def _write(self, sql: str, params: tuple) -> int:
        with self.transaction():
            return self._db.execute(sql, params).rowcount

    # --- nonces ---

    @_sqlite_errors
    def add_nonce(self, nonce: bytes, device_id: str, attestation: str, issued_at: int, expires_at: int) -> None:
        self._write(
            "INSERT INTO nonces (nonce, device_id, attestation, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (nonce.hex(), device_id, attestation, issued_at, expires_at),
        )

    @_sqlite_errors
    def get_nonce(self, nonce: bytes) -> Nonce | None:
        row = self._db.execute(
            "SELECT nonce, device_id, attestation, issued_at, expires_at, used_at, used_by, outcome FROM nonces WHERE nonce = ?",
            (nonce.hex(),),
        ).fetchone()
        return Nonce(bytes.fromhex(row[0]), *row[1:]) if row else None

    @_sqlite_errors
    def mark_nonce_used(self, nonce: bytes, now: int, used_by: str) -> bool:
        """True when this call used the nonce (for the quote whose sha256 is `used_by`); False when it
        was already used."""
        return self._write(
            "UPDATE nonces SET used_at = ?, used_by = ? WHERE nonce = ? AND used_at IS NULL", (now, used_by, nonce.hex())
        ) == 1

    @_sqlite_errors
    def record_nonce_outcome(self, nonce: bytes, outcome: str) -> None:
        self._write("UPDATE nonces SET outcome = ? WHERE nonce = ?", (outcome, nonce.hex()))

    # --- devices ---

    @_sqlite_errors
    def enroll(self, device_id: str, ak_public_pem: str, ak_name: str, storage_public: bytes, now: int) -> None:
        with self.transaction():  # the check and the write it decides, as one
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

    @_sqlite_errors
    def device(self, device_id: str) -> Device | None:
        row = self._db.execute(
            "SELECT device_id, ak_public_pem, ak_name, storage_public, reset_count, restart_count, clock"
            " FROM devices WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        return Device(*row) if row else None

    @_sqlite_errors
    def record_counters(self, device_id: str, reset_count: int, restart_count: int, clock: int) -> None:
        self._write(
            "UPDATE devices SET reset_count = ?, restart_count = ?, clock = ? WHERE device_id = ?",
            (reset_count, restart_count, clock, device_id),
        )

    # --- escrow ---

    @_sqlite_errors
    def add_escrow(self, device_id: str, vault: str, key_identifier: bytes, blob: bytes, blob_sha256: str,
                   now: int) -> EscrowOutcome:
        """Keep a deposited blob. An existing one is never replaced: the same blob again is `held`; a
        different blob for the same key identifier is `kept-beside` it (release opens whichever holds the
        key); a blob for a key identifier not seen yet is `stored`."""
        with self.transaction():
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

    @_sqlite_errors
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

    @_sqlite_errors
    def escrowed_vaults(self, device_id: str) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT vault FROM escrow WHERE device_id = ? ORDER BY vault", (device_id,))
        return [row[0] for row in rows]

    # --- verified quotes ---

    @_sqlite_errors
    def add_verified_quote(self, quote_sha256: str, device_id: str, verified_at: int, expires_at: int, attestation: str,
                           bank: str, pcrs: dict[int, bytes], sealed_to: dict[str, str | None]) -> None:
        self._write(
            "INSERT INTO verified_quotes (quote_sha256, device_id, verified_at, expires_at, attestation, bank, pcrs, sealed_to)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (quote_sha256, device_id, verified_at, expires_at, attestation, bank,
             json.dumps({str(i): v.hex() for i, v in sorted(pcrs.items())}), json.dumps(sealed_to, sort_keys=True)),
        )

    @_sqlite_errors
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

    @_sqlite_errors
    def mark_released(self, quote_sha256: str, now: int) -> bool:
        return (
            self._write(
                "UPDATE verified_quotes SET released_at = ? WHERE quote_sha256 = ? AND released_at IS NULL",
                (now, quote_sha256),
            )
            == 1
        )

    # --- drift reports ---

    @_sqlite_errors
    def newest_report(self, device_id: str) -> ReportRecord | None:
        row = self._db.execute(
            "SELECT quote_sha256, reset_count, restart_count, clock, accepted_at FROM reports WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        return ReportRecord(row[0], tuple(row[1:4]), row[4]) if row else None

    @_sqlite_errors
    def record_newest_report(self, device_id: str, quote_sha256: str, counters: tuple[int, int, int], now: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO reports (device_id, quote_sha256, reset_count, restart_count, clock, accepted_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (device_id, quote_sha256, *counters, now),
        )
