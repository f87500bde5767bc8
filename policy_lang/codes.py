"""The catalogue of diagnostic codes, read by `vaultpolicy explain`.

Each phase registers its own codes in its own module (`policy_lang.syntax_codes`, `compiler.codes`,
`enforcer.codes`); `all_codes()` imports them so the catalogue is complete. `enforcer.codes`, which
every device command imports, lists its codes in `CODES` for `all_codes()` to register: importing this
package would load lark and the parser on the device. Ranges:
VP00xx syntax, VP01xx names, VP02xx paths, VP03xx coverage, VP04xx capacity, VP05xx PCRs and
attestation, VP06xx keys, rotation and data handling, VP07xx-VP09xx reserved, VP1xxx device.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeInfo:
    code: str
    title: str
    explanation: str
    example: str


_REGISTRY: dict[str, CodeInfo] = {}

_CATALOGUE_MODULES = ("policy_lang.syntax_codes", "compiler.codes", "enforcer.codes")


def register(code: str, title: str, explanation: str, example: str) -> str:
    """Register a code once and return it, so modules can write `UNKNOWN_VAULT = register(...)`."""
    if code in _REGISTRY and _REGISTRY[code].title != title:
        raise ValueError(f"diagnostic code {code} registered twice")
    _REGISTRY[code] = CodeInfo(code, title, explanation, example)
    return code


def all_codes() -> dict[str, CodeInfo]:
    for module in _CATALOGUE_MODULES:
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        for entry in getattr(imported, "CODES", ()):  # a leaf's table (enforcer.codes imports nothing of ours)
            register(*entry)
    return dict(sorted(_REGISTRY.items()))
