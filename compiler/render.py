"""jinja2 rendering for plan summaries and diffs: computing is elsewhere, these only present data."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jinja2

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
    return env


# Plan fields that hold bytes or seconds -> the policy language's word for them and its spelling.
_IN_UNITS = {
    "limit_bytes": ("limit", lambda size: format_size(size) if size else "unlimited"),  # 0: no limit
    "capacity_bytes": ("capacity", format_size),
    "reserve_bytes": ("reserve", format_size),
    "rotate_seconds": ("rotate", format_duration),
    "nonce_lifetime_seconds": ("nonce_valid", format_duration),
}


def field_label(path: str) -> str:
    """`limit_bytes` -> `limit`, `seal.pcrs` unchanged: the dotted path in the language's words."""
    head, _, last = path.rpartition(".")
    word = _IN_UNITS[last][0] if last in _IN_UNITS else last
    return f"{head}.{word}" if head else word


def field_value(value, path: str) -> str:
    """A plan value for people: sizes and durations in the language's units, the rest as JSON."""
    if value is None:
        return "(none)"
    last = path.rpartition(".")[2]
    if last in _IN_UNITS:
        return _IN_UNITS[last][1](value)
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
