"""Human spellings of sizes and durations, the way the policy language writes them."""

from __future__ import annotations


def format_size(size: int | None) -> str:
    if size is None:
        return "none"
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_measured(size: int) -> str:
    """A measured size (free space, usage, what a copy needs), with one decimal in MiB, GiB above
    1 GiB, TiB above 1 TiB. It is rarely a whole unit, where `format_size`'s exact spelling would
    fall back to bytes."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30)):
        if round(size / factor, 1) >= 1:  # after rounding: just under 1 GiB reads 1.0 GiB, not 1024.0 MiB
            return f"{size / factor:.1f} {unit}"
    return f"{size / (1 << 20):.1f} MiB"


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, factor in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds // factor}{unit}"
    return f"{seconds}s"
