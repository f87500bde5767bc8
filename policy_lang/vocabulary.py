"""The words and units the language takes as values: read by the parser, for its "expected …" help,
and by to_ast, which checks each literal against them."""

from __future__ import annotations

SIZE_UNITS = {
    "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Words people write for a duration unit, and the unit each means.
DURATION_WORDS = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m", "mins": "m", "minute": "m",
    "minutes": "m", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "day": "d", "days": "d",
    "week": "w", "weeks": "w",
}
# Calendar units the language has not (their length varies), and the days one stands for in a hint.
# `M` is ISO 8601's month: never read as minutes, where `6M` would rotate a key every six minutes.
CALENDAR_DAYS = {"M": 30, "mo": 30, "mos": 30, "mon": 30, "month": 30, "months": 30,
                 "y": 365, "yr": 365, "yrs": 365, "year": 365, "years": 365}
ENCRYPTIONS = ("aes-256-xts", "adiantum", "none")
ON_REMOVE = ("retain", "destroy")
ON_FAILURE = ("keep_locked", "deny_release")
TPM_MODES = ("required", "optional")
BANKS = ("sha1", "sha256", "sha384", "sha512")
PROTECTIONS = ("end_to_end",)

# The setting keyword before a word of a fixed set, and that set.
CHOICES = {
    "encryption": ENCRYPTIONS, "on_remove": ON_REMOVE, "on_failure": ON_FAILURE, "tpm": TPM_MODES,
    "bank": BANKS, "protection": PROTECTIONS,
}
# The keywords a size or a duration follows.
SIZE_KEYWORDS = frozenset({"limit", "capacity", "reserve"})
DURATION_KEYWORDS = frozenset({"every", "valid"})


def size_unit_meant(unit: str) -> str | None:
    """The size unit `unit` stands for: itself, or the one with the same letters (`Mib`, `gib`)."""
    return unit if unit in SIZE_UNITS else next((u for u in SIZE_UNITS if u.lower() == unit.lower()), None)


def calendar_unit_days(unit: str) -> int | None:
    """About how many days the calendar unit `unit` (`mo`, `months`, `M`, `y`) is, else None."""
    return CALENDAR_DAYS.get(unit) or (None if unit.lower() == "m" else CALENDAR_DAYS.get(unit.lower()))


def calendar_unit_help(number: int, days: int) -> str:
    """The help for `number` of a calendar unit of about `days` days (`4mo`, `4 months`)."""
    return ("months and years are not duration units (their length varies): write days or weeks, for example "
            f"`{number * days}d`")


def duration_unit_meant(unit: str) -> str | None:
    """The duration unit `unit` stands for: itself, in another case (`D`), or as a word (`days`);
    never one for a calendar unit (`M`, `months`: `calendar_unit_days`)."""
    if unit in DURATION_UNITS:
        return unit
    if calendar_unit_days(unit) is not None:
        return None
    lower = unit.lower()
    return lower if lower in DURATION_UNITS else DURATION_WORDS.get(lower)
