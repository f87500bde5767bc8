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

from lark import Token, Tree

from . import syntax_codes as codes
from .diagnostics import DiagnosticsError, error
from .load import parse_text
from .parse import Comment, ParseResult, parse

INDENT = "  "
MAX_WIDTH = 100



@dataclass
class _Line:
    indent: int
    tokens: list[Token]
    closes_block: bool = False
    opens_block: bool = False
    leading: list[Comment] = field(default_factory=list)
    trailing: Comment | None = None
    blank_before: bool = False


class _Layout:
    def __init__(self, result: ParseResult):
        self.result = result
        self.tokens = result.tokens
        self.by_pos = {t.start_pos: i for i, t in enumerate(self.tokens)}
        self.lines: list[_Line] = []
        self.trailing: dict[int, Comment] = {}  # token index -> comment at the end of its line
        self.leading: dict[int, list[Comment]] = {}  # token index -> own-line comments before it
        self.final_comments: list[Comment] = []  # own-line comments after the last token
        self.blank_before: set[int] = set()  # token start positions / comment positions with a blank line before
        self._attach_comments()
        self._find_blank_lines()

    def _attach_comments(self) -> None:
        starts = [t.start_pos for t in self.tokens]
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
            if previous_end is not None and text.count("\n", previous_end, start) >= 2:
                self.blank_before.add(start)
            previous_end = end

    def _range(self, start: int, end: int) -> list[int]:
        """Indexes of the tokens inside [start, end), `;` left out."""
        i = self.by_pos[start]
        out = []
        while i < len(self.tokens) and self.tokens[i].start_pos < end:
            if self.tokens[i].type != "SEMICOLON":
                out.append(i)
            i += 1
        return out

    def _has_comment_inside(self, first: int, last: int) -> bool:
        inside = any(first <= k <= last for k in self.leading if k != first)
        return inside or any(first <= k < last for k in self.trailing)

    def item(self, tree: Tree) -> list[_Line]:
        indexes = self._range(tree.meta.start_pos, tree.meta.end_pos)
        settings = [c for c in tree.children if isinstance(c, Tree)]
        is_block = any(self.tokens[i].type == "LBRACE" for i in indexes)
        fits = len(_join([self.tokens[i] for i in indexes])) <= MAX_WIDTH
        if not is_block or (len(settings) <= 1 and fits and not self._has_comment_inside(indexes[0], indexes[-1])):
            return self._logical_line(0, indexes)
        brace = next(n for n, i in enumerate(indexes) if self.tokens[i].type == "LBRACE")
        lines = self._logical_line(0, indexes[:brace + 1])
        lines[-1].opens_block = True
        for setting in settings:
            lines += self._logical_line(1, self._range(setting.meta.start_pos, setting.meta.end_pos))
        lines += self._logical_line(0, indexes[-1:])
        lines[-1].closes_block = True
        return lines

    def _logical_line(self, indent: int, indexes: list[int]) -> list[_Line]:
        """One logical line, broken where comments or the width demand it."""
        breaks = set()
        for n, i in enumerate(indexes):
            if n > 0 and i in self.leading:
                breaks.add(n)
            if n + 1 < len(indexes) and i in self.trailing:
                breaks.add(n + 1)
        if len(_join([self.tokens[i] for i in indexes])) + len(INDENT) * indent > MAX_WIDTH:
            for n, i in enumerate(indexes):
                if self.tokens[i].type == "VBAR":
                    breaks.add(n)
                elif self.tokens[i].type == "COMMA" and n + 1 < len(indexes):
                    breaks.add(n + 1)
        lines, current = [], []
        for n, i in enumerate(indexes):
            if n in breaks and current:
                lines.append(current)
                current = []
            current.append(i)
        lines.append(current)
        out = []
        for n, group in enumerate(lines):
            line = _Line(indent if n == 0 else indent + 2, [self.tokens[i] for i in group])
            line.leading = self.leading.get(group[0], [])
            line.trailing = self.trailing.get(group[-1])
            line.blank_before = self.tokens[group[0]].start_pos in self.blank_before
            out.append(line)
        return out


def _join(tokens: list[Token]) -> str:
    text = ""
    for t in tokens:
        text += t.value if (not text or t.type == "COMMA") else " " + t.value
    return text


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
            text = INDENT * line.indent + _join(line.tokens)
            out.append(text + (f"  {line.trailing.text}" if line.trailing else ""))
    for comment in lay.final_comments:
        if comment.span.start_pos in lay.blank_before and out:
            out.append("")
        out.append(comment.text)
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, file: str = "<input>") -> str:
    """The canonical layout; DiagnosticsError when the text has errors or formatting would change it."""
    before, diags = parse_text(text, file)
    if before is None:
        raise DiagnosticsError(diags.errors())
    original = parse(text, file)
    formatted = layout(original)
    after, _ = parse_text(formatted, file)
    same_comments = [c.text for c in original.comments] == [c.text for c in parse(formatted, file).comments]
    if after != before or not same_comments:
        raise DiagnosticsError([error(codes.FORMAT_CHANGED_MEANING, f"formatting `{file}` would change its meaning",
                                      None, help="the file was left unchanged; please report this")])
    return formatted
