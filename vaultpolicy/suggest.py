"""Did-you-mean for every misspelt name: commands and options, keywords, vaults, apps. A leaf module,
like `errors`, so the device can suggest without loading the policy language."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a misspelt word most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A `help:` text suggesting the closest candidate, or None when nothing is close."""
    meant = closest(word, candidates)
    return f"did you mean `{meant}`?" if meant else None
