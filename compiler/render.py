"""jinja2 rendering for plan summaries and diffs: computing is elsewhere, these only present data."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import jinja2

from vaultpolicy.printable import escaped

from .plan import canonical_json
from .units import format_duration, format_size


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["size"] = format_size
    env.filters["duration"] = format_duration
    env.filters["label"] = field_label
    env.filters["shown"] = field_value
    env.filters["md"] = markdown_text
    env.filters["md_code"] = markdown_code
    # JSON is written by the one serializer plans are written with, never spelt out by a template
    env.filters["canonical_json"] = lambda data: canonical_json(data).decode()
    return env


# Plan fields that hold bytes or seconds -> the policy language's word for them and its spelling.
_IN_UNITS = {
    "limit_bytes": ("limit", lambda size: format_size(size) if size else "unlimited"),  # 0: no limit
    "capacity_bytes": ("capacity", format_size),
    "reserve_bytes": ("reserve", format_size),
    "rotate_seconds": ("rotate", format_duration),
    "nonce_lifetime_seconds": ("nonce_valid", format_duration),
}


# Plan fields the language names otherwise: a plan holds the escrow key itself, the policy its file
_RENAMED = {"escrow_public_key": "escrow_key"}


def field_label(path: str) -> str:
    """`limit_bytes` -> `limit`, `seal.pcrs` unchanged: the dotted path in the language's words."""
    head, _, last = path.rpartition(".")
    word = _IN_UNITS[last][0] if last in _IN_UNITS else _RENAMED.get(last, last)
    return f"{head}.{word}" if head else word


# Plan fields whose strings the language writes as "strings" (paths); its other strings are words.
_QUOTED = {"path", "persist", "holds"}


def field_value(value, path: str) -> str:
    """A plan value for people, spelt as the policy language writes it: sizes and durations in its
    units, words bare (`none`, `retain`), paths quoted, lists as the language lists them (`0, 4, 7`;
    allowed digests `"…" | "…"`), a component's directories as `stores` writes them."""
    head, _, last = path.rpartition(".")
    if value is None or value == []:
        return "(none)"
    if last in _IN_UNITS:
        return _IN_UNITS[last][1](value)
    if last == "escrow_public_key":  # the key itself, not the file the policy named
        return f"X25519 public key {value} (base64)"
    if head == "allowed":  # allowed.<PCR>: that PCR's digests
        return " | ".join(_language_string(digest) for digest in value)
    if last == "stores":
        return ", ".join(_store(store) for store in value)
    if isinstance(value, list):
        return ", ".join(_word(item, last in _QUOTED) for item in value)
    return _word(value, last in _QUOTED)


def _word(value, quoted: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _language_string(value) if quoted else value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)  # no such plan field today


def _store(store: dict) -> str:
    where = f"in vault {store['vault']}" if store.get("vault") else "in no vault"
    return f"{_language_string(store['path'])}{' sensitive' if store.get('sensitive') else ''} ({where})"


def _language_string(text: str) -> str:
    """`text` as a string literal of the language, escapes included (a character that does not show is `\\u{…}`)."""
    return '"' + escaped(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


# What Markdown would read as markup in running text (CommonMark escapes any ASCII punctuation).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&#!~])")


def markdown_text(text: str) -> str:
    """Text a Markdown table cell or paragraph shows as it is: no `|` ends a cell, no `<i>` is HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def markdown_code(text: str, in_table: bool = False) -> str:
    """`text` as a Markdown code span: fenced by more backticks than any run inside it, padded when it
    starts or ends with one, and with `|` escaped in a table cell (GFM ends a cell there, code or not)."""
    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
