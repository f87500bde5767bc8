"""jinja2 rendering for plan summaries and diffs: computing is elsewhere, these only present data."""

from __future__ import annotations

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
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
