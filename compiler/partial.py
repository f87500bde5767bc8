"""Which compiler diagnostics still hold when some blocks of a policy are broken (S18).

`check` runs the rules on the blocks that parsed. A broken block either did not parse at all (it
is missing from the model) or lost some settings to errors (`Block.damaged`: the resolver filled
defaults in their place). A diagnostic is kept when it does not depend on what is missing: the
rules run again on two variants of the policy in which each missing part takes other values, one
that keeps it apart from everything (a path inside nothing, no limit, a built-in vault opted out)
and one that covers everything (the path `/`, encrypted, sealed to an attestation, every PCR but
5, a limit), and only what both variants still report, at the same place and in the same words, is kept. So a typo in one
setting hides nothing that the block's other settings or other blocks decide.

An include that could not be read may declare anything: the codes that depend on the whole policy
are dropped. `compile` never gets here: it refuses any policy with an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from policy_lang import ANY_SETTING, Block, ast
from policy_lang.diagnostics import Diagnostic, Diagnostics, Span

from . import codes
from .plan import MIN_VAULT_LIMIT_BYTES
from .resolve import BUILTIN_VAULTS

# Codes whose every instance may depend on what an unreadable include declared.
_NEEDS_ALL_BLOCKS = frozenset({
    codes.UNKNOWN_VAULT, codes.UNKNOWN_ATTESTATION, codes.SENSITIVE_NOT_ENCRYPTED, codes.END_TO_END_UNENCRYPTED,
    codes.END_TO_END_NOT_ATTESTED, codes.PATH_OUTSIDE_PERSIST, codes.DEFAULT_PATH_COLLISION,
    codes.HOLDS_OUTSIDE_VAULT, codes.ESCROW_WITHOUT_KEY, codes.PRESENCE_ONLY,
})
# A name, path or file no policy can write (strings may not hold NUL): it matches nothing declared,
# and as a path it is not absolute, so it lies inside no vault and no vault lies inside it.
_UNKNOWN = "\0unknown"
_ALL_PCRS_BUT_5 = tuple(i for i in range(24) if i != 5)
_A_ROTATION_SECONDS = 90 * 86400


class _Spread(Enum):
    APART = "apart"
    COVER = "cover"


def independent(diagnostics: Iterable[Diagnostic], policy: ast.Policy, broken: Iterable[Block]) -> Diagnostics:
    """The diagnostics of `policy` that do not depend on what the broken blocks would have said."""
    from . import analyze  # not at the top: the package imports this module before defining it

    broken = list(broken)
    kept = list(diagnostics)
    if any(block.kind == "include" for block in broken):
        kept = [d for d in kept if d.code not in _NEEDS_ALL_BLOCKS]
    if any(_varies(block) for block in broken):
        for spread in _Spread:
            _, found = analyze(_variant(policy, broken, spread))
            still = {_what(d) for d in found}
            kept = [d for d in kept if _what(d) in still]
    return Diagnostics(kept)


def _what(d: Diagnostic) -> tuple:
    """A diagnostic without its advice, which may name a stand-in (`did you mean …`)."""
    return d.code, d.span, d.message


def _varies(block: Block) -> bool:
    """Whether a broken block is stood in for: an include is handled by code, and a block whose
    header cannot be read could have declared anything or nothing."""
    return block.kind != "include" and (block.kind is not None or block.name is not None)


def _variant(policy: ast.Policy, broken: list[Block], spread: _Spread) -> ast.Policy:
    items = list(policy.items)
    for block in filter(_varies, broken):
        at = next((n for n, item in enumerate(items) if _produced(item, block)), None) if block.parsed else None
        if at is not None:
            items[at] = _vary(items[at], block.damaged, spread)
            continue
        # Not parsed: a stand-in with every setting missing, where the block was (the first of
        # two `device` blocks or two vaults of one name is the one that counts).
        for kind in [block.kind] if block.kind else ["vault", "attestation"]:
            stand_in = _stand_in(kind, block)
            if stand_in is not None:
                items.insert(_position(items, block), _vary(stand_in, frozenset({ANY_SETTING}), spread))
    return policy.model_copy(update={"items": tuple(items)})


def _produced(item: ast.Item, block: Block) -> bool:
    return item.span.file == block.file and item.span.start_pos == block.start_pos


def _position(items: list[ast.Item], block: Block) -> int:
    same_file = [n for n, item in enumerate(items) if item.span.file == block.file]
    after = [n for n in same_file if items[n].span.start_pos > block.start_pos]
    return after[0] if after else (same_file[-1] + 1 if same_file else len(items))


def _stand_in(kind: str, block: Block) -> ast.Item | None:
    """An empty item of `kind` named as the block was. A missing app or component can only hide
    diagnostics of its own: none is made for them."""
    span = Span(file=block.file, line=1, column=1, end_line=1, end_column=1, start_pos=block.start_pos,
                end_pos=block.end_pos)
    name = ast.Name(value=block.name if block.name is not None else _UNKNOWN, span=span)
    if kind == "vault":
        return ast.VaultDecl(name=name, settings=ast.VaultSettings(span=span), span=span)
    if kind == "attestation":
        return ast.AttestationDecl(name=name, span=span)
    if kind == "device":
        return ast.DeviceDecl(span=span)
    if kind == "defaults":
        return ast.DefaultsDecl(settings=ast.VaultSettings(span=span), span=span)
    return None


def _vary(item: ast.Item, damaged: frozenset[str], spread: _Spread) -> ast.Item:
    """`item` with each damaged setting set to the value `spread` stands for."""
    def hit(keyword: str) -> bool:
        return keyword in damaged or ANY_SETTING in damaged

    span = item.span
    update: dict = {}
    if isinstance(item, ast.VaultDecl) and spread is _Spread.APART:
        if hit("path"):
            update["path"] = ast.StringLit(value=_UNKNOWN, span=span)
        if hit("limit"):
            update["limit"] = None
        if hit("disabled") and item.name.value in BUILTIN_VAULTS:
            update["opt_out_reason"] = ast.StringLit(value=_UNKNOWN, span=span)
    elif isinstance(item, ast.VaultDecl):
        if hit("path"):
            update["path"] = ast.StringLit(value="/", span=span)
        if hit("limit") and item.limit is None:
            update["limit"] = ast.SizeLit(bytes=MIN_VAULT_LIMIT_BYTES, text="8MiB", span=span)
        update["settings"] = _covering_settings(item.settings, hit)
    elif isinstance(item, ast.DefaultsDecl) and spread is _Spread.COVER:
        update["settings"] = _covering_settings(item.settings, hit)
    elif isinstance(item, ast.AttestationDecl) and spread is _Spread.COVER:
        if hit("pcrs"):
            update["pcrs"] = _every_pcr_but_5(item.pcrs, span)
        if hit("bank"):  # a bank without a known digest size: no allowed value is judged by its length
            update["bank"] = ast.Name(value=_UNKNOWN, span=span)
    elif isinstance(item, ast.DeviceDecl) and spread is _Spread.COVER:
        if hit("persist"):
            update["persist"] = ast.StringLit(value="/", span=span)
        if hit("capacity"):
            update["capacity"] = None
        if hit("escrow_key"):
            update["escrow_key"] = ast.StringLit(value=_UNKNOWN, span=span)
        if hit("bank"):
            update["bank"] = ast.Name(value=_UNKNOWN, span=span)
    elif isinstance(item, ast.AppDecl) and spread is _Spread.COVER and hit("vault"):
        update["vault"] = ast.Name(value=_UNKNOWN, span=span)  # bound elsewhere than `images`
    return item.model_copy(update=update)


def _covering_settings(settings: ast.VaultSettings, hit) -> ast.VaultSettings:
    span = settings.span
    update: dict = {}
    if hit("encryption"):
        update["encryption"] = ast.EncryptionSetting(mode="aes-256-xts", span=span)
    if hit("seal"):
        seal = settings.seal
        if seal is not None and seal.attestation is None:  # `seal pcrs …` that lost some indexes
            update["seal"] = seal.model_copy(update={"pcrs": _every_pcr_but_5(seal.pcrs, span)})
        else:
            update["seal"] = ast.SealSetting(attestation=ast.Name(value=_UNKNOWN, span=span), span=span)
    if hit("rotate"):
        every = ast.DurationLit(seconds=_A_ROTATION_SECONDS, text="90d", span=span)
        update["rotate"] = ast.RotateSetting(every=every, span=span)
    if hit("on_remove"):
        update["on_remove"] = ast.OnRemoveSetting(action="retain", span=span)
    return settings.model_copy(update=update)


def _every_pcr_but_5(kept: tuple[ast.PcrIndex, ...], span: Span) -> tuple[ast.PcrIndex, ...]:
    """What the author wrote, plus every other PCR an unreadable index might have been, but 5."""
    present = {p.index for p in kept}
    return kept + tuple(ast.PcrIndex(index=i, span=span) for i in _ALL_PCRS_BUT_5 if i not in present)
