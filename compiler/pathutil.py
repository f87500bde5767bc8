"""Path helpers shared by the rules and the plan builder (POSIX paths, as on the device)."""

from __future__ import annotations

import posixpath


def is_normalized(path: str) -> bool:
    """Absolute or not, no `..`, `.`, empty components or trailing `/` (the root `/` itself is fine)."""
    if path == "/":
        return True
    parts = path.split("/")
    body = parts[1:] if path.startswith("/") else parts
    return all(part not in ("", ".", "..") for part in body)


def is_inside(path: str, root: str) -> bool:
    """True when `path` is `root` or below it (both normalized and absolute)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def ancestors(path: str):
    """`path` and each directory above it, deepest first: `/a/b` -> `/a/b`, `/a`, `/`."""
    while True:
        yield path
        if path in ("/", ""):
            return
        path = posixpath.dirname(path)


def containing(index: dict[str, str], path: str) -> str | None:
    """The value for the deepest key of `index` (path -> name) that contains `path`: O(depth)."""
    for candidate in ancestors(path):
        if candidate in index:
            return index[candidate]
    return None
