"""The one canonical layout of a policy, keeping every comment where it was (S17).

Layout rules (also in docs/language.md):
- two-space indentation, one setting per line, no `;`, single spaces between tokens, none before `,`;
- a block with at most one setting and no comment inside is written on one line if it fits;
- at most one blank line where the author left one or more, and always one around multi-line
  top-level blocks;
- a setting longer than 100 columns breaks after each `,` and before each `|`;
- a comment on its own line stays on its own line before the same token; a comment at the end of a
  line stays at the end of the line after the same token (which may force a line break there).

Formatting works on the token stream plus the item trees (for where settings start), so it never
invents or drops a token; `format_text` then re-parses its own output and refuses to return it if
the AST or the comments changed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from lark import Tree

from . import syntax_codes as codes
from .diagnostics import DiagnosticsError, error
from .load import partial_of
from .parse import Comment, ParseResult, parse

INDENT = "  "
MAX_WIDTH = 100



@dataclass
class _Line:
    indent: int
    text: str  # the line's tokens, joined
    closes_block: bool = False
    opens_block: bool = False
    leading: list[Comment] = field(default_factory=list)
    trailing: Comment | None = None
    blank_before: bool = False


class _Layout:
    def __init__(self, result: ParseResult):
        self.result = result
        self.tokens = result.tokens
        self.starts = [t.start_pos for t in self.tokens]
        self.types = [t.type for t in self.tokens]
        # Indexes of the tokens written out (`;` is not) and their start positions, for slicing ranges.
        self.kept = [i for i, kind in enumerate(self.types) if kind != "SEMICOLON"]
        self.kept_starts = [self.starts[i] for i in self.kept]
        # How each token is written after another on its line: `,` hugs the token before it.
        self.spaced = [t.value if t.type == "COMMA" else " " + t.value for t in self.tokens]
        self.trailing: dict[int, Comment] = {}  # token index -> comment at the end of its line
        self.leading: dict[int, list[Comment]] = {}  # token index -> own-line comments before it
        self.final_comments: list[Comment] = []  # own-line comments after the last token
        self.blank_before: set[int] = set()  # token start positions / comment positions with a blank line before
        self._attach_comments()
        self._find_blank_lines()
        self.leading_at, self.trailing_at = sorted(self.leading), sorted(self.trailing)

    def _attach_comments(self) -> None:
        starts = self.starts
        for comment in self.result.comments:
            k = bisect.bisect_left(starts, comment.span.start_pos)  # index of the next token
            before = k - 1
            while before >= 0 and self.tokens[before].type == "SEMICOLON":  # `;` is not written out
                before -= 1
            while k < len(self.tokens) and self.tokens[k].type == "SEMICOLON":
                k += 1
            # Trailing only to a token on the comment's own line; otherwise it would jump over other comments.
            same_line = before >= 0 and self.tokens[before].end_line == comment.span.line
            if not comment.own_line and same_line and before not in self.trailing:
                self.trailing[before] = comment
            elif k < len(self.tokens):
                self.leading.setdefault(k, []).append(comment)
            else:
                self.final_comments.append(comment)

    def _find_blank_lines(self) -> None:
        text = self.result.text
        elements = sorted([(t.start_pos, t.end_pos) for t in self.tokens]
                          + [(c.span.start_pos, c.span.end_pos) for c in self.result.comments])
        previous_end = None
        for start, end in elements:
            # Two line breaks take two characters at least: most gaps (one space, one newline) are not counted.
            if previous_end is not None and start - previous_end >= 2 and _line_breaks(text, previous_end, start) >= 2:
                self.blank_before.add(start)
            previous_end = end

    def _range(self, start: int, end: int) -> list[int]:
        """Indexes of the tokens inside [start, end), `;` left out."""
        first = bisect.bisect_left(self.kept_starts, start)
        return self.kept[first:bisect.bisect_left(self.kept_starts, end, first)]

    def _text(self, indexes: list[int]) -> str:
        return self.tokens[indexes[0]].value + "".join([self.spaced[i] for i in indexes[1:]])

    def _has_comment_inside(self, first: int, last: int) -> bool:
        """A comment before a token after `first`, or after a token before `last`, up to `last`."""
        leading = bisect.bisect_right(self.leading_at, first)
        trailing = bisect.bisect_left(self.trailing_at, first)
        return (leading < len(self.leading_at) and self.leading_at[leading] <= last) or (
            trailing < len(self.trailing_at) and self.trailing_at[trailing] < last)

    def item(self, tree: Tree) -> list[_Line]:
        indexes = self._range(tree.meta.start_pos, tree.meta.end_pos)
        settings = [c for c in tree.children if isinstance(c, Tree)]
        is_block = "LBRACE" in [self.types[i] for i in indexes]
        if not is_block or (len(settings) <= 1 and len(self._text(indexes)) <= MAX_WIDTH
                            and not self._has_comment_inside(indexes[0], indexes[-1])):
            return self._logical_line(0, indexes)
        brace = next(n for n, i in enumerate(indexes) if self.types[i] == "LBRACE")
        lines = self._logical_line(0, indexes[:brace + 1])
        lines[-1].opens_block = True
        for setting in settings:
            lines += self._logical_line(1, self._range(setting.meta.start_pos, setting.meta.end_pos))
        lines += self._logical_line(0, indexes[-1:])
        lines[-1].closes_block = True
        return lines

    def _logical_line(self, indent: int, indexes: list[int]) -> list[_Line]:
        """One logical line, broken where comments or the width demand it."""
        text = self._text(indexes)
        commented = self._has_comment_inside(indexes[0], indexes[-1])
        too_wide = len(text) + len(INDENT) * indent > MAX_WIDTH
        if not commented and not too_wide:  # most lines: written as they are
            return [self._line(indent, indexes, text)]
        breaks = set()
        if commented:
            for n, i in enumerate(indexes):
                if n > 0 and i in self.leading:
                    breaks.add(n)
                if n + 1 < len(indexes) and i in self.trailing:
                    breaks.add(n + 1)
        if too_wide:
            for n, i in enumerate(indexes):
                if self.types[i] == "VBAR":
                    breaks.add(n)
                elif self.types[i] == "COMMA" and n + 1 < len(indexes):
                    breaks.add(n + 1)
        breaks.discard(0)
        cuts = sorted(breaks)
        groups = [indexes[a:b] for a, b in zip([0, *cuts], [*cuts, len(indexes)])]
        return [self._line(indent if n == 0 else indent + 2, group, self._text(group)) for n, group in enumerate(groups)]

    def _line(self, indent: int, indexes: list[int], text: str) -> _Line:
        return _Line(indent, text, leading=self.leading.get(indexes[0], []), trailing=self.trailing.get(indexes[-1]),
                     blank_before=self.starts[indexes[0]] in self.blank_before)


def layout(result: ParseResult) -> str:
    lay = _Layout(result)
    out: list[str] = []
    previous_multiline = False
    for tree in result.items:
        lines = lay.item(tree)
        multiline = len(lines) > 1
        force_blank = bool(out) and (multiline or previous_multiline)
        previous_multiline = multiline
        for n, line in enumerate(lines):
            after_open = n > 0 and lines[n - 1].opens_block
            comment_indent = line.indent + 1 if line.closes_block else line.indent
            for k, comment in enumerate(line.leading):
                blank = comment.span.start_pos in lay.blank_before or (n == 0 and k == 0 and force_blank)
                if blank and out and not (after_open and k == 0):
                    out.append("")
                out.append(INDENT * comment_indent + comment.text)
            blank = line.blank_before or (n == 0 and force_blank and not line.leading)
            if blank and out and out[-1] != "" and not line.closes_block and not (after_open and not line.leading):
                out.append("")
            text = INDENT * line.indent + line.text
            out.append(text + (f"  {line.trailing.text}" if line.trailing else ""))
    for comment in lay.final_comments:
        if comment.span.start_pos in lay.blank_before and out:
            out.append("")
        out.append(comment.text)
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, file: str = "<input>") -> str:
    """The canonical layout; DiagnosticsError when the text has errors or formatting would change it.

    Each text is parsed once: the input, then the output, to check that the items, settings and
    comments are the same (the compiler's source digest lays out its one parse without this check)."""
    original = parse(text, file)
    before, diags, _ = partial_of(original)
    if diags.has_errors():
        raise DiagnosticsError(diags.errors())
    formatted = layout(original)
    reparsed = parse(formatted, file)
    after, after_diags, _ = partial_of(reparsed)
    same_comments = [c.text for c in original.comments] == [c.text for c in reparsed.comments]
    if after_diags.has_errors() or after != before or not same_comments:
        raise DiagnosticsError([error(codes.FORMAT_CHANGED_MEANING, f"formatting `{file}` would change its meaning",
                                      None, help="the file was left unchanged; please report this")])
    return formatted


def _line_breaks(text: str, start: int, end: int) -> int:
    """Line breaks in text[start:end]: LF, CRLF and a lone CR each end a line, as for the tokenizer."""
    return text.count("\n", start, end) + text.count("\r", start, end) - text.count("\r\n", start, end)
