"""Which compiler diagnostics still hold when some blocks of a policy are broken (S18).

`check` runs the rules on the blocks that parsed. A broken block either did not parse at all (it
is missing from the model) or lost a setting to an error (the resolver filled the default in its
place). A diagnostic that could come from such a gap — a name the missing block declares, a path or
seal the dropped setting would have set — is dropped; every other one is an independent error and
is kept. `compile` never gets here: it refuses any policy with an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from policy_lang import ast
from policy_lang.diagnostics import Diagnostic, Diagnostics, Span
from policy_lang import Block

from . import codes
from .model import Model
from .resolve import BUILTIN_VAULTS

_DECLS = {"device": ast.DeviceDecl, "defaults": ast.DefaultsDecl, "attestation": ast.AttestationDecl,
          "vault": ast.VaultDecl, "component": ast.ComponentDecl, "app": ast.AppDecl}

# Codes whose every instance may depend on what an unreadable include declared.
_NEEDS_ALL_BLOCKS = frozenset({
    codes.UNKNOWN_VAULT, codes.UNKNOWN_ATTESTATION, codes.SENSITIVE_NOT_ENCRYPTED, codes.END_TO_END_UNENCRYPTED,
    codes.END_TO_END_NOT_ATTESTED, codes.PATH_OUTSIDE_PERSIST, codes.DEFAULT_PATH_COLLISION,
    codes.HOLDS_OUTSIDE_VAULT, codes.ESCROW_WITHOUT_KEY, codes.PRESENCE_ONLY,
})
_END_TO_END = (codes.END_TO_END_UNENCRYPTED, codes.END_TO_END_NOT_ATTESTED)


@dataclass
class _Gaps:
    anywhere: set[str] = field(default_factory=set)  # codes dropped wherever they point
    at: set[tuple[str, Span]] = field(default_factory=set)  # codes dropped at one span
    within: list[tuple[str, Block]] = field(default_factory=list)  # codes dropped inside a block

    def covers(self, d: Diagnostic) -> bool:
        if d.code in self.anywhere or (d.code, d.span) in self.at:
            return True
        return d.span is not None and any(
            code == d.code and block.file == d.span.file and block.start_pos <= d.span.start_pos < block.end_pos
            for code, block in self.within
        )


def independent(diagnostics: Iterable[Diagnostic], model: Model, policy: ast.Policy,
                broken: Iterable[Block]) -> Diagnostics:
    """The diagnostics that do not depend on what the broken blocks would have said."""
    gaps = _gaps(model, policy, list(broken))
    return Diagnostics(d for d in diagnostics if not gaps.covers(d))


def _cut_short(policy: ast.Policy, block: Block):
    """The AST item a broken block still produced, or None when it produced none."""
    kind = _DECLS.get(block.kind or "")
    if not block.parsed or kind is None:
        return None
    return next((item for item in policy.items if isinstance(item, kind) and item.span.file == block.file
                 and item.span.start_pos == block.start_pos), None)


def _gaps(model: Model, policy: ast.Policy, broken: list[Block]) -> _Gaps:
    gaps = _Gaps()
    lost: dict[str, set[str]] = {}  # kind -> names declared by blocks that are missing from the model
    for block in broken:
        item = _cut_short(policy, block)
        if item is None:
            if block.kind is None and block.name is None:
                continue  # nothing readable: no telling what it declared
            if block.kind == "include":
                gaps.anywhere |= _NEEDS_ALL_BLOCKS
            for kind in [block.kind] if block.kind else ("attestation", "vault", "component", "app"):
                lost.setdefault(kind, set()).add(block.name)
            _lost_block(block.kind, block.name, gaps)
        else:
            _cut_block(item, block, gaps)

    gaps.at |= {(codes.UNKNOWN_VAULT, app.vault.span) for app in model.apps.values()
                if app.vault is not None and app.vault.value in lost.get("vault", ())}
    gaps.at |= {(codes.UNKNOWN_ATTESTATION, name.span) for _, name in model.unknown_seals
                if name.value in lost.get("attestation", ())}
    return gaps


def _lost_block(kind: str | None, name: str | None, gaps: _Gaps) -> None:
    if kind in (None, "vault"):  # its path might have covered a sensitive directory
        gaps.anywhere.add(codes.SENSITIVE_NOT_ENCRYPTED)
    if kind in (None, "vault") and name in BUILTIN_VAULTS:  # the model holds the built-in's defaults instead
        gaps.anywhere |= {codes.PATHS_OVERLAP, codes.DEFAULT_PATH_COLLISION, *_END_TO_END}
    if kind == "device":
        gaps.anywhere |= {codes.PATH_OUTSIDE_PERSIST, codes.DEFAULT_PATH_COLLISION, codes.SENSITIVE_NOT_ENCRYPTED,
                          codes.HOLDS_OUTSIDE_VAULT, codes.ESCROW_WITHOUT_KEY}
    if kind in (None, "defaults", "attestation"):  # the seal every vault inherits may differ
        gaps.anywhere.update(_END_TO_END)


def _cut_block(item, block: Block, gaps: _Gaps) -> None:
    """A block that lost settings: each setting it lacks may be the one that was dropped."""
    if isinstance(item, ast.DeviceDecl):
        if item.persist is None:
            _lost_block("device", None, gaps)
        elif item.escrow_key is None:
            gaps.anywhere.add(codes.ESCROW_WITHOUT_KEY)
    elif isinstance(item, ast.VaultDecl):
        if item.path is None:  # checked at its default path instead
            gaps.anywhere |= {codes.SENSITIVE_NOT_ENCRYPTED, codes.PATHS_OVERLAP, codes.DEFAULT_PATH_COLLISION}
            gaps.within.append((codes.HOLDS_OUTSIDE_VAULT, block))
        if item.limit is None:
            gaps.within.append((codes.NO_LIMIT, block))
        if item.settings.seal is None or item.settings.encryption is None:
            gaps.anywhere.update(_END_TO_END)
    elif isinstance(item, ast.DefaultsDecl):
        if item.settings.seal is None or item.settings.encryption is None:
            gaps.anywhere.update(_END_TO_END)
    elif isinstance(item, ast.AttestationDecl):
        if not item.pcrs:  # vaults sealed through it would look sealed to nothing
            gaps.anywhere.add(codes.PRESENCE_ONLY)
            gaps.within.append((codes.ALLOW_UNSEALED_PCR, block))
    elif isinstance(item, ast.AppDecl) and item.vault is None:  # bound to `images` by default instead
        gaps.anywhere.update(_END_TO_END)
