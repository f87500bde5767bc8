"""Diagnostics shared by every phase: parse, resolve, verify, and the device.

A diagnostic is data (code, severity, message, span, help, notes); rendering is separate.
Messages follow the cedar style: lowercase, no final period, user input in backticks, one line;
everything else goes into `help` or `notes`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

from vaultpolicy.printable import escaped


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Span:
    """A source range; field names follow lark's `Meta` (1-based line and column, end exclusive).

    A slotted dataclass, not a pydantic model: the AST of a large policy holds ~40,000 spans, and a
    model instance (with its field dict and field set) took 1,100 bytes where this takes 100. Spans
    are made from positions the code computes (lark's, or offsets from them), never read from input,
    so there is nothing to validate; pydantic models that hold one (AST nodes, `Diagnostic`) take it
    as it is and dump it as the same fields."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int
    start_pos: int
    end_pos: int

    @classmethod
    def from_meta(cls, file: str, meta) -> "Span":
        """The span of a lark `Meta`; also of a `Token`, whose positions have the same names."""
        return cls(file, meta.line, meta.column, meta.end_line, meta.end_column, meta.start_pos, meta.end_pos)

    from_token = from_meta

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Diagnostic(BaseModel):
    """One finding. `span` is None for problems of the environment (no TPM, no fscrypt)."""

    model_config = ConfigDict(frozen=True)

    code: str
    severity: Severity
    message: str
    span: Span | None = None
    help: str | None = None
    notes: tuple[str, ...] = ()

    @field_validator("message", "help")
    @classmethod
    def _one_line(cls, text: str | None) -> str | None:
        """Messages quote paths and strings the user wrote: a control character in one shows as its
        escape, so no message breaks over lines or sends a terminal escape (`include "x\\u{1b}[31m"`)."""
        return None if text is None else escaped(text)

    @field_validator("notes")
    @classmethod
    def _notes_one_line(cls, notes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(escaped(note) for note in notes)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def error(code: str, message: str, span: Span | None = None, help: str | None = None, notes: Iterable[str] = ()) -> Diagnostic:
    return Diagnostic(code=code, severity=Severity.ERROR, message=message, span=span, help=help, notes=tuple(notes))


def warning(code: str, message: str, span: Span | None = None, help: str | None = None, notes: Iterable[str] = ()) -> Diagnostic:
    return Diagnostic(code=code, severity=Severity.WARNING, message=message, span=span, help=help, notes=tuple(notes))


class Diagnostics(list[Diagnostic]):
    """An ordered collection; callers decide control flow with `has_errors()` (tfdiags style)."""

    def has_errors(self) -> bool:
        return any(d.is_error for d in self)

    def errors(self) -> list[Diagnostic]:
        return [d for d in self if d.is_error]

    def warnings(self) -> list[Diagnostic]:
        return [d for d in self if not d.is_error]

    def sorted(self) -> "Diagnostics":
        def key(d: Diagnostic):
            s = d.span
            return (s is None, s.file if s else "", s.start_pos if s else 0, d.code)

        return Diagnostics(sorted(self, key=key))


class DiagnosticsError(Exception):
    """Raised where a phase cannot return a result; always carries at least one diagnostic."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = Diagnostics(diagnostics)
        if not self.diagnostics:
            raise ValueError("DiagnosticsError needs at least one diagnostic")
        super().__init__("; ".join(d.message for d in self.diagnostics))


# Line breaks as the tokenizer counts them, and as editors do (LSP): CRLF, LF and a lone CR.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def source_lines(text: str) -> list[str]:
    return LINE_BREAK.split(text)


def line_and_column(text: str, pos: int) -> tuple[int, int]:
    """The 1-based line and column of offset `pos` in `text`."""
    breaks = list(LINE_BREAK.finditer(text, 0, pos))
    return len(breaks) + 1, pos - (breaks[-1].end() if breaks else 0) + 1


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> str:
    """rustc-style rendering: header, `-->` location, the source line with a caret span, help, notes."""
    blocks = []
    for d in diagnostics:
        lines = [f"{d.severity.value}[{d.code}]: {d.message}"]
        # `-->`, `|` and `=` stand one column past the line number, however wide, so they line up.
        pad = " " * len(str(d.span.line)) if d.span is not None else " "
        if d.span is not None:
            s = d.span
            lines.append(f"{pad} --> {escaped(s.file)}:{s.line}:{s.column}")
            text = sources.get(s.file)
            if text is not None:
                lines_of_text = source_lines(text)
                if 1 <= s.line <= len(lines_of_text):
                    # one column per character: a tab or another control character shows as a space
                    src = "".join(c if c.isprintable() else " " for c in lines_of_text[s.line - 1])
                    end = s.end_column if s.end_line == s.line else len(src) + 1
                    src, start, width = _excerpt(src, s.column - 1, max(1, end - s.column))
                    gutter = str(s.line)
                    carets = max(1, display_width(src[start:start + width]))
                    lines.append(f"{pad} |")
                    lines.append(f"{gutter} | {src}")
                    lines.append(f"{pad} | {' ' * display_width(src[:start])}{'^' * carets}")
        if d.help:
            lines.append(f"{pad} = help: {d.help}")
        for note in d.notes:
            lines.append(f"{pad} = note: {note}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def display_width(text: str) -> int:
    """The terminal columns `text` takes: two for a wide or fullwidth character (CJK), one for any
    other, as rustc lines its carets up. A span's column stays a count of characters."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


# Columns of a source line that a diagnostic shows: a minified JSON file or a long generated line is
# cut to this much around the span, with `…` where text was left out.
MAX_SHOWN_COLUMNS = 120
_CONTEXT_BEFORE = 30


def _excerpt(line: str, start: int, width: int) -> tuple[str, int, int]:
    """The part of `line` to show, and where the span (0-based `start`, `width`) falls in it."""
    if len(line) <= MAX_SHOWN_COLUMNS:
        return line, start, width
    first = max(0, min(start - _CONTEXT_BEFORE, len(line) - MAX_SHOWN_COLUMNS))
    last = first + MAX_SHOWN_COLUMNS
    head = "…" if first > 0 else ""
    tail = "…" if last < len(line) else ""
    width = max(1, min(start + width, last) - start)
    return head + line[first:last] + tail, start - first + len(head), width


def to_json(diagnostics: Iterable[Diagnostic]) -> list[dict]:
    """The JSON view: the same fields, with the full range."""
    return [d.model_dump(mode="json") for d in diagnostics]


def summary_line(diagnostics: Diagnostics) -> str:
    e, w = len(diagnostics.errors()), len(diagnostics.warnings())
    return f"{e} error{'s' if e != 1 else ''}, {w} warning{'s' if w != 1 else ''}"
