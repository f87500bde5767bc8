"""Paths: absolute, normalized, below the persist root, and vaults neither nested nor shared."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from policy_lang.diagnostics import Diagnostic, error

from .. import codes
from ..model import Located, Model, Store, Vault
from ..pathutil import is_inside, is_normalized
from ..resolve import default_vault_path


def shape_errors(what: str, path: Located[str], under: str = "/") -> list[Diagnostic]:
    """Absolute and normalized, or the diagnostics saying why not; a relative path is suggested as
    the normalized path below `under`, the directory it was most likely meant in. (That every
    character shows is checked where the string is decoded, VP0207.)"""
    found = []
    if not path.value.startswith("/"):  # its help gives the normalized form: one error, not two
        meant = posixpath.normpath("/" + path.value)  # `persist/data`: only the leading `/` is missing
        if not is_inside(meant, under):
            meant = posixpath.normpath(posixpath.join(under, path.value))
        found.append(
            error(codes.PATH_NOT_ABSOLUTE, f"{what} `{path.value}` is not absolute", path.span,
                  f"write `{meant}`" if meant != under else f"write an absolute path below `{under}`")
        )
    elif not is_normalized(path.value):
        found.append(
            error(
                codes.PATH_NOT_NORMALIZED,
                f"{what} `{path.value}` is not normalized",
                path.span,
                "remove `..`, `.`, doubled `/` and any trailing `/`",
            )
        )
    return found


def well_formed(path: Located[str]) -> bool:
    """Absolute and normalized: only such paths are compared with others."""
    return path.value.startswith("/") and is_normalized(path.value)


def _under_persist(persist: Located[str]) -> str:
    return persist.value if well_formed(persist) else "/"


def persist_root(model: Model) -> Iterator[Diagnostic]:
    persist = model.device.persist
    yield from shape_errors("persist root", persist)
    if persist.value == "/":  # every vault would lie beside the system's own files, and the device refuses it
        yield error(
            codes.PERSIST_IS_ROOT,
            "the persist root is `/`, the whole filesystem",
            persist.span,
            "write the persist partition's mount point, a directory below `/` such as `/persist`",
        )


def vault_paths(model: Model) -> Iterator[Diagnostic]:
    persist = model.device.persist
    for vault in model.vaults.values():
        if vault.path.value != default_vault_path(persist.value, vault.name.value):  # else the persist root's fault
            yield from shape_errors(f"path of vault `{vault.name.value}`", vault.path, _under_persist(persist))
        if not (well_formed(vault.path) and well_formed(persist)):
            continue
        if vault.path.value == persist.value:  # one key for the whole partition, every other vault inside it
            yield error(
                codes.PATH_OUTSIDE_PERSIST,
                f"vault `{vault.name.value}` at `{vault.path.value}` is the persist root itself",
                vault.path.span,
                f"give it a directory below `{persist.value}`, e.g. `{default_vault_path(persist.value, vault.name.value)}`",
            )
        elif not is_inside(vault.path.value, persist.value):
            yield error(
                codes.PATH_OUTSIDE_PERSIST,
                f"vault `{vault.name.value}` at `{vault.path.value}` is outside the persist root `{persist.value}`",
                vault.path.span,
                f"move it under `{persist.value}`, or change `device {{ persist \"…\" }}`",
            )


def _overlap(inner: Vault, outer: Vault) -> Diagnostic:
    relation = "shares the directory of" if inner.path.value == outer.path.value else "lies inside"
    if inner.path_written:
        at, code = inner.path.span, codes.PATHS_OVERLAP if outer.path_written else codes.DEFAULT_PATH_COLLISION
        message = f"vault `{inner.name.value}` at `{inner.path.value}` {relation} vault `{outer.name.value}` (`{outer.path.value}`)"
    else:  # the inner one sits at its default path: point at the path written that covers it
        at, code = outer.path.span or inner.path.span, codes.DEFAULT_PATH_COLLISION
        message = f"vault `{outer.name.value}` at `{outer.path.value}` covers `{inner.path.value}`, where vault `{inner.name.value}` lives"
    return error(code, message, at, "give each vault its own directory, not inside another vault")


def overlaps(model: Model) -> Iterator[Diagnostic]:
    """Sorted by path components, a nested path follows its ancestor: one pass with a stack, O(n log n)."""
    candidates = [v for v in model.vaults.values() if well_formed(v.path)]
    candidates.sort(key=lambda v: (tuple(v.path.value.split("/")[1:]), v.path_written, v.name.value))
    stack: list[Vault] = []
    for vault in candidates:
        while stack and not is_inside(vault.path.value, stack[-1].path.value):
            stack.pop()
        if stack:
            yield _overlap(vault, stack[-1])
        stack.append(vault)


def holds(model: Model) -> Iterator[Diagnostic]:
    for vault in model.vaults.values():
        for held in vault.holds:
            found = shape_errors(f"directory `holds` of vault `{vault.name.value}`", held,
                                 vault.path.value if well_formed(vault.path) else "/")
            yield from found
            if not found and well_formed(vault.path) and not is_inside(held.value, vault.path.value):
                yield error(
                    codes.HOLDS_OUTSIDE_VAULT,
                    f"vault `{vault.name.value}` holds `{held.value}`, which is outside its path `{vault.path.value}`",
                    held.span,
                    f"list only directories under `{vault.path.value}`",
                )


def stores(model: Model) -> Iterator[Diagnostic]:
    for component in model.components.values():
        first: dict[str, Store] = {}
        for store in component.stores:
            yield from shape_errors(f"directory of component `{component.name.value}`", store.path,
                                    _under_persist(model.device.persist))
            earlier = first.setdefault(store.path.value, store)
            if earlier is not store:
                yield error(
                    codes.STORED_TWICE,
                    f"component `{component.name.value}` stores `{store.path.value}` twice",
                    store.path.span,
                    "list each directory once, marked `sensitive` if it holds data that must be encrypted at rest",
                    notes=[f"first stored at line {earlier.path.span.line}"] if earlier.path.span else [],
                )


RULES = (persist_root, vault_paths, overlaps, holds, stores)
