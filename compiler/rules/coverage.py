"""Coverage: sensitive directories lie in encrypted vaults; end-to-end apps have attested, encrypted vaults;
built-in vaults stay encrypted unless opted out with a reason."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import replace

from policy_lang.diagnostics import Diagnostic, Span, error

from .. import codes
from ..model import Model
from ..pathutil import containing, is_inside
from .paths import well_formed


def vault_path_index(model: Model) -> dict[str, str]:
    """Vault path -> vault name, for `pathutil.containing` lookups."""
    return {v.path.value: name for name, v in model.vaults.items()}


def sensitive_stores(model: Model) -> Iterator[Diagnostic]:
    index = vault_path_index(model)
    # a vault whose path is reported as wrong (VP0201) may be the one meant to hold the directory: no
    # follow-on error for a directory inside what that path reads as (made absolute, or under persist),
    # when that is a directory below the persist root (`"."` reads as `/`, `"persist"` as the root itself)
    persist = model.device.persist.value
    meant = [meant_path for v in model.vaults.values() if not well_formed(v.path)
             for meant_path in (posixpath.normpath("/" + v.path.value), posixpath.normpath(f"{persist}/{v.path.value}"))
             if meant_path != persist and is_inside(meant_path, persist)]
    for component in model.components.values():
        for store in component.stores:
            if not store.sensitive or not store.path.value.startswith("/"):
                continue
            vault_name = containing(index, store.path.value)
            if vault_name is not None and model.vaults[vault_name].encrypted:
                continue
            if vault_name is None and any(is_inside(store.path.value, path) for path in meant):
                continue
            where = "outside any vault" if vault_name is None else f"in vault `{vault_name}`, which has `encryption none`"
            yield error(
                codes.SENSITIVE_NOT_ENCRYPTED,
                f"component `{component.name.value}` keeps sensitive data at `{store.path.value}` {where}",
                store.path.span,
                "move the directory into an encrypted vault (or list it in a vault's `holds`)",
            )


def end_to_end_apps(model: Model) -> Iterator[Diagnostic]:
    for app in model.apps.values():
        if not app.end_to_end.value:
            continue
        vault = model.vaults.get(app.vault.value) if app.vault else None
        if app.vault is not None and vault is None:
            continue  # an unknown vault is reported by the names rules
        if vault is None or not vault.encrypted:
            where = "no vault" if vault is None else f"vault `{vault.name.value}`, which has `encryption none`"
            yield error(
                codes.END_TO_END_UNENCRYPTED,
                f"app `{app.name.value}` asks for end-to-end protection but is bound to {where}",
                app.end_to_end.span,
                "bind it to an encrypted vault sealed to an attestation",
            )
        elif vault.seal is None or vault.seal.attestation is None:
            yield error(
                codes.END_TO_END_NOT_ATTESTED,
                f"app `{app.name.value}` asks for end-to-end protection but vault `{vault.name.value}` is not sealed to an attestation",
                app.end_to_end.span,
                _seal_to_an_attestation(model, vault.name.value),
            )


def _seal_to_an_attestation(model: Model, vault: str) -> str:
    """A help that names an attestation the policy declares, or says to declare one."""
    declared = list(model.attestations)
    if not declared:
        return (f"declare an `attestation` block (bank, PCRs, allowed values) and seal vault `{vault}` to it "
                "with `seal NAME`")
    others = f" (or another declared one: {', '.join(f'`{name}`' for name in declared[1:])})" if declared[1:] else ""
    return f"seal vault `{vault}` to attestation `{declared[0]}`: `seal {declared[0]}`{others}"


def builtin_vaults_encrypted(model: Model) -> Iterator[Diagnostic]:
    """`encryption none` on `config` or `images` (in its block or from `defaults`) is an opt-out
    without a reason: one error per `encryption none` setting, at its `none`."""
    unencrypted = [v for v in model.vaults.values() if v.builtin and not v.encrypted and v.encryption.span is not None]
    for setting in model.settings(lambda vault: vault.encryption.span, unencrypted):
        names = [vault.name.value for vault in setting.vaults]
        vaults = " and ".join(f"`{name}`" for name in names)
        where = " in `defaults`" if setting.in_defaults else ""
        yield error(
            codes.BUILTIN_UNENCRYPTED,
            f"`encryption none`{where} leaves built-in vault{'s' if len(names) > 1 else ''} {vaults} unencrypted",
            _last_word(setting.span, "none"),
            f'opt out of a built-in vault with a reason, `vault {names[0]} {{ disabled "reason" }}`, '
            "or give it an encryption such as `aes-256-xts`",
        )


def _last_word(setting: Span, word: str) -> Span:
    """The span of the word a setting ends with (`encryption none` -> `none`); a word never spans lines."""
    return replace(setting, line=setting.end_line, column=setting.end_column - len(word), start_pos=setting.end_pos - len(word))


RULES = (sensitive_stores, end_to_end_apps, builtin_vaults_encrypted)
