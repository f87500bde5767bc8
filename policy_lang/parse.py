"""Text -> lark parse trees, with every lexical and syntax error turned into a Diagnostic.

The tokenizer is our own (not lark's) for two reasons: keywords are contextual (a vault may be
called `protected` where the parser expects a name) and bad characters or unterminated strings
become diagnostics instead of aborting the run.

Error recovery collects every independent error in one run (S18): the token stream is cut into
top-level items at balanced braces, each item is parsed on its own, and inside a block the
setting that failed is dropped and the block re-parsed, so each broken setting reports once. A
block left open ends where the next item evidently starts (`split_items`) and is parsed as if
closed there (`parse_chunk`). A lexical error costs only its token (`Lexed`), so it hides nothing
else in its block.
An item is parsed in one call of lark's parser; only one that fails is fed again token by token.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer, PatternStr

from vaultpolicy.printable import code_point
from vaultpolicy.suggest import did_you_mean

from . import syntax_codes as codes
from .diagnostics import Diagnostic, Diagnostics, Span, error
from .vocabulary import (CHOICES, DURATION_KEYWORDS, SIZE_KEYWORDS, calendar_unit_days, calendar_unit_help,
                         duration_unit_meant, size_unit_meant)

TOP_LEVEL_KEYWORDS = ("device", "attestation", "defaults", "vault", "component", "app", "include")

# Quotes a word processor or a web page puts in place of `"`.
_CURLY_QUOTES = "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f"
# A letter of another script or a combining accent: part of a word, though no name may hold it.
_NOT_ASCII_LETTER = r"[^\W\x00-\x7f]|[\u0300-\u036f]"

_TOKEN_RE = re.compile(
    rf"""
    (?P<WS>[ \t\r\n\f]+)
  | (?P<COMMENT>\#[^\r\n]*)  # a CR ends a line too (CRLF files, LINE_BREAK)
  | (?P<STRING>"(?:\\[^\r\n]|[^"\\\r\n])*")
  | (?P<BADSTRING>"(?:\\[^\r\n]|[^"\\\r\n])*\\?)
  | (?P<CURLYSTRING>[{_CURLY_QUOTES}](?:\\[^\r\n]|[^"\\\r\n{_CURLY_QUOTES}])*["{_CURLY_QUOTES}]?)
  | (?P<BADWORD>[A-Za-z0-9_\-]*+(?:{_NOT_ASCII_LETTER})[\w\-\u0300-\u036f]*)
  | (?P<NUMBER>[0-9][A-Za-z0-9_]*)
  | (?P<NAME>[A-Za-z_][A-Za-z0-9_\-]*)
  | (?P<PUNCT>[{{}},;=|])
  | (?P<BAD>[^\w \t\r\n\f\#"{{}},;=|\u0300-\u036f]+)  # a run of characters no other group can start with
    """,
    re.VERBOSE,
)

_PUNCT_WORDS = {"{": "`{`", "}": "`}`", ",": "`,`", ";": "`;`", "=": "`=`", "|": "`|`"}

# What a NUMBER means after a given keyword, for "expected ..." messages.
_NUMBER_AFTER = {
    "limit": "a size such as `512MiB`",
    "capacity": "a size such as `64GiB`",
    "reserve": "a size such as `4GiB`",
    "every": "a duration such as `90d`",
    "valid": "a duration such as `5m`",
    "pcrs": "a PCR index such as `7`",
    "pcr": "a PCR index such as `7`",
    "nonce": "a nonce size in bytes such as `32`",
}


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading `#`, without the newline
    span: Span
    own_line: bool  # nothing but whitespace precedes it on its line


# In `Block.damaged`: an error dropped or cut short a setting whose keyword cannot be told.
ANY_SETTING = "*"


@dataclass(frozen=True)
class Block:
    """One top-level item as the splitter cut it, whether or not it parsed.

    The compiler checks the items that parsed and needs to know what the others would have
    declared, so that it reports only errors that do not depend on them (S18).
    """

    file: str
    kind: str | None  # the top-level keyword, or the one a misspelt keyword most likely meant
    name: str | None  # the declared name (an include's path), when the header is readable
    start_pos: int
    end_pos: int  # where the next item starts: errors in between belong to this one
    parsed: bool
    # Of a parsed block: the settings (by keyword, `seal` for both forms) that an error dropped or
    # left incomplete, the keyword a misspelt one most likely meant, or ANY_SETTING.
    damaged: frozenset[str] = frozenset()


@dataclass
class ParseResult:
    """Item trees that parsed, plus everything the formatter needs to re-lay the text out."""

    file: str
    text: str
    items: list[Tree] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    stand_ins: list[tuple[int, int]] = field(default_factory=list)  # `Lexed.stand_ins`
    looks_like_a_policy: bool = True  # else its one diagnostic says so, and it has no items (`_not_a_policy`)

    def holds_lexical_error(self, pos: int) -> bool:
        """Whether `pos` lies in a token that stands in for text with a lexical error: any other
        error there (a bad unit in `16Mié`) only echoes it."""
        at = bisect.bisect_right(self.stand_ins, (pos, math.inf)) - 1
        return at >= 0 and self.stand_ins[at][0] <= pos < self.stand_ins[at][1]


class _SyntaxFailure(Exception):
    def __init__(self, index: int | None, token: Token, expected: set[str]):
        self.index = index  # into the chunk's token list; None at end of input
        self.token = token
        self.expected = expected


class _ContextualTokens(Lexer):
    """Hands lark's parser the tokens of one item (a list given to `Lark.parse`), each keyword made a
    name where the parser's state cannot take it (`_contextual`), so an item without errors parses in
    one call, without the interactive parser that recovery needs."""

    __future_interface__ = 2  # lex(lexer_state, parser_state)

    def __init__(self, lexer_conf):
        pass

    def lex(self, lexer_state, parser_state):
        states = parser_state.parse_conf.parse_table.states
        keyword_types = _keyword_types()
        for tok in lexer_state.text:
            yield _contextual(tok, states[parser_state.position]) if tok.type in keyword_types else tok


@cache
def _lark() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", start="item", propagate_positions=True, keep_all_tokens=True,
                lexer=_ContextualTokens)


@cache
def _keyword_terminals() -> dict[str, str]:
    """keyword text -> terminal name, taken from the grammar itself so the two never drift."""
    return {
        t.pattern.value: t.name
        for t in _lark().terminals
        if isinstance(t.pattern, PatternStr) and re.fullmatch(r"[a-z_]+", t.pattern.value)
    }


@cache
def _keyword_types() -> frozenset[str]:
    return frozenset(_keyword_terminals().values())


@cache
def _terminal_words() -> dict[str, str]:
    words = {t.name: f"`{t.pattern.value}`" for t in _lark().terminals if isinstance(t.pattern, PatternStr)}
    words.update({"NAME": "a name", "NUMBER": "a number", "STRING": "a string"})
    return words


def keywords() -> frozenset[str]:
    return frozenset(_keyword_terminals())


def _span(file: str, token: Token) -> Span:
    return Span.from_token(file, token)


def _token(kind: str, value: str, pos: int, line: int, col: int) -> Token:
    # Positional: lark's keyword-argument path costs a third of the tokenizer on large files.
    return Token(kind, value, pos, line, col, line, col + len(value), pos + len(value))


@dataclass
class Lexed:
    """The tokens of a text and what its lexical errors cost. A bad character or an unterminated string
    costs only its token, so the rest of its block is still parsed and checked (S18): a run of
    characters no token takes is skipped, a word holding a letter no name may hold and an unterminated
    string stand as a name (or number) and a string. Errors at such a token, or at the one right after
    a skipped run, would only echo the lexical error: `echoes` holds where they start."""

    tokens: list[Token] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    stand_ins: list[tuple[int, int]] = field(default_factory=list)  # start and end of each such token
    echoes: set[int] = field(default_factory=set)


def tokenize(text: str, file: str) -> Lexed:
    lexed = Lexed()
    tokens, comments, diags = lexed.tokens, lexed.comments, lexed.diagnostics
    kw = _keyword_terminals()
    line, line_start = 1, 0
    line_has_code = False
    after_skipped = False

    def stand_in(kind: str, value: str, pos: int, end: int) -> None:
        tok = Token(kind, value, pos, line, pos - line_start + 1, line, end - line_start + 1, end)
        tokens.append(tok)
        lexed.stand_ins.append((pos, end))
        lexed.echoes.add(pos)

    # Every character starts some group (BAD takes the rest), so the matches cover the text end to end.
    for m in _TOKEN_RE.finditer(text):
        kind, value, pos = m.lastgroup, m.group(), m.start()
        col = pos - line_start + 1
        if kind == "WS":
            breaks = value.count("\n")
            if "\r" in value:  # CRLF, or a lone CR that ends a line too (diagnostics.LINE_BREAK)
                breaks += value.count("\r") - value.count("\r\n")
            if breaks:
                line += breaks
                line_start = pos + max(value.rfind("\n"), value.rfind("\r")) + 1
                line_has_code = False
            continue
        if kind == "COMMENT":
            tok = _token("COMMENT", value, pos, line, col)
            comments.append(Comment(value, _span(file, tok), own_line=not line_has_code))
            continue
        if after_skipped:
            lexed.echoes.add(pos)
            after_skipped = False
        if kind == "BAD":  # never a newline: WS matches those, so line counting stays right
            diags.append(error(codes.UNEXPECTED_CHARACTER, f"unexpected {_characters(value)} in the policy",
                               _span(file, _token("BAD", value, pos, line, col)), help=_characters_help(value)))
            after_skipped = True
        elif kind == "CURLYSTRING" and len(value) > 1 and value[-1] in _CURLY_QUOTES + '"':
            # Its meaning is plain: a string, with one error instead of one per quote and word.
            straight = f'"{value[1:-1]}"'
            tok = _token("STRING", straight, pos, line, col)
            diags.append(error(codes.UNEXPECTED_CHARACTER, f"string in curly quotes `{value}`", _span(file, tok),
                               help=f"write it in straight double quotes: `{straight}`"))
            tokens.append(tok)
        elif kind == "BADWORD":
            bad = re.search(f"(?:{_NOT_ASCII_LETTER})+", value)
            diags.append(error(codes.UNEXPECTED_CHARACTER, f"unexpected `{bad.group()}` in the policy",
                               _span(file, _token("BAD", bad.group(), pos + bad.start(), line, col + bad.start())),
                               help=_DIGITS_HELP if bad.group().isnumeric() else _NAME_HELP))
            stand_in("NUMBER" if value[0] in "0123456789" else "NAME", value, pos, m.end())
        elif kind in ("BADSTRING", "CURLYSTRING"):  # unterminated
            # A `}` or `;` that ends the line ends the block or setting, not the string: `path "/a }`.
            body = value.rstrip(" \t\f};")
            end = pos + len(body)
            escapes_quote = (len(body) - len(body.rstrip("\\"))) % 2 == 1  # `"a\` would read as `"a\"`
            straight = '"' + (body[1:-1] if escapes_quote else body[1:]) + '"'
            span = _span(file, _token("STRING", body, pos, line, col))
            diags.append(error(codes.UNTERMINATED_STRING, "unterminated string", span,
                               help="close the string with `\"` on the same line; write a newline as `\\n`")
                         if kind == "BADSTRING" else
                         error(codes.UNEXPECTED_CHARACTER, f"unterminated string in curly quotes `{body}`", span,
                               help=f"write it in straight double quotes: `{straight}`"))
            stand_in("STRING", straight, pos, end)
            for offset, ch in enumerate(value[len(body):]):
                if ch in "};":
                    tokens.append(_token(_PUNCT_TERMINALS[ch], ch, end + offset, line, end + offset - line_start + 1))
        else:
            if kind == "NAME" and value in kw:
                kind = kw[value]
            elif kind == "PUNCT":
                kind = _PUNCT_TERMINALS[value]
            tokens.append(_token(kind, value, pos, line, col))
        line_has_code = True
    return lexed


_CHARACTERS_HELP = "policies contain names, numbers, \"strings\", `#` comments and `{ } , ; = |`"


def _characters(run: str) -> str:
    """A run of bad characters as a message shows it: in backticks when it can be seen, each invisible
    one by its code point and name (`U+200B ZERO WIDTH SPACE`), where a caret would point at a blank."""
    if run.isprintable():
        return f"`{run}`" if len(run) <= 20 else "characters"
    pieces = [f"`{''.join(group)}`" if visible else code_point(char)
              for (visible, char), group in itertools.groupby(run, key=lambda c: (c.isprintable(), c.isprintable() or c))]
    if len(pieces) > 3:
        return f"{', '.join(pieces[:2])} and more characters"
    return pieces[0] if len(pieces) == 1 else ", ".join(pieces[:-1]) + " and " + pieces[-1]


def _characters_help(run: str) -> str:
    if any(c in _CURLY_QUOTES for c in run):
        return 'strings are written in straight double quotes `"`'
    if any(unicodedata.category(c) == "Zs" for c in run):
        return "replace it with a plain space"
    if not any(c.isprintable() for c in run):
        return "remove it: it does not show in most editors, and no policy needs it"
    return _CHARACTERS_HELP
# A letter or digit no group takes is not ASCII: it was meant as part of a name (grammar.lark NAME).
_NAME_HELP = "names are ASCII: letters `a`-`z` and `A`-`Z`, digits, `_` and `-`, starting with a letter or `_`"
_DIGITS_HELP = "numbers are written with the ASCII digits `0`-`9`"
_PUNCT_TERMINALS = {"{": "LBRACE", "}": "RBRACE", ",": "COMMA", ";": "SEMICOLON", "=": "EQUAL", "|": "VBAR"}


def _is_keyword(token: Token) -> bool:
    return token.type in _keyword_types()


def _item_keyword(tok: Token) -> str | None:
    """The top-level keyword `tok` is, or the one a plain name most likely misspells (`ap` -> `app`)."""
    if tok.value in TOP_LEVEL_KEYWORDS:
        return tok.value
    close = difflib.get_close_matches(tok.value, TOP_LEVEL_KEYWORDS, n=1, cutoff=0.6) if tok.type == "NAME" else []
    return close[0] if close else None


def _starts_item(tokens: list[Token], i: int) -> bool:
    """The header of a block (`vault b {`, or a misspelt `ap b {`, anywhere), or an `include "…"` at
    the start of a line. Inside a block, a missing `}` before it: no setting has a `{`."""
    tok = tokens[i]
    if tok.type != "NAME" and tok.value not in TOP_LEVEL_KEYWORDS:
        return False
    nxt = tokens[i + 1:i + 3]
    if tok.value == "include":
        return bool(nxt) and nxt[0].type == "STRING" and (i == 0 or tokens[i - 1].line < tok.line)
    if nxt and nxt[0].type == "LBRACE":
        return _item_keyword(tok) in ("device", "defaults")
    named = len(nxt) == 2 and _is_word(nxt[0]) and nxt[1].type == "LBRACE"
    return named and _item_keyword(tok) in _NAMED_ITEMS


# Top-level keywords that a name follows: after one of them, a top-level keyword and `{` are a name
# and the block's brace (`vault app {`, `app vault {`), not the start of another item.
_NAMED_ITEMS = frozenset({"attestation", "vault", "component", "app"})


def _is_item_name(tokens: list[Token], i: int, current: list[Token]) -> bool:
    return (len(current) == 1 and current[0].value in _NAMED_ITEMS and i + 1 < len(tokens)
            and tokens[i + 1].type == "LBRACE")


def _heads_a_line(tokens: list[Token], i: int) -> bool:
    """Inside a block, a top-level keyword first on its line with a `{` later on that line: the
    header of the next item however malformed (`app x y {`, `vault "m" {`), as no setting holds a
    `{` (an app's `vault v` has none), when it stands no further right than the block's keyword."""
    tok = tokens[i]
    if tok.value not in TOP_LEVEL_KEYWORDS or tokens[i - 1].end_line == tok.line:
        return False
    for j in range(i + 1, len(tokens)):
        following = tokens[j]
        if following.line != tok.line:
            return False
        if following.type == "LBRACE":
            return True
    return False


def split_items(tokens: list[Token]) -> list[list[Token]]:
    """Cut the stream into top-level chunks at balanced braces and top-level keywords. A block left
    open ends where the next item evidently starts: a well-formed header anywhere (`_starts_item`),
    or a line that starts like one at the block's indentation or left of it (`_heads_a_line`)."""
    chunks: list[list[Token]] = []
    current: list[Token] = []
    depth = 0
    for i, tok in enumerate(tokens):
        new_chunk = False
        if depth == 0:
            closed = bool(current) and current[-1].type == "RBRACE"
            # The item's name first: it is cheap and spares `_starts_item` a did-you-mean on every header.
            starts = not _is_item_name(tokens, i, current) and (tok.value in TOP_LEVEL_KEYWORDS or _starts_item(tokens, i))
            new_chunk = starts or closed or tok.type == "SEMICOLON"
        elif _starts_item(tokens, i) or (tok.column <= current[0].column and _heads_a_line(tokens, i)):
            new_chunk, depth = True, 0
        if new_chunk and current:
            chunks.append(current)
            current = []
        if tok.type == "SEMICOLON" and depth == 0:
            continue  # a stray top-level `;` separates items and means nothing else
        current.append(tok)
        if tok.type == "LBRACE":
            depth += 1
        elif tok.type == "RBRACE":
            depth = max(0, depth - 1)
    if current:
        chunks.append(current)
    return chunks


def _contextual(tok: Token, choices) -> Token:
    """Keywords are reserved only where a keyword may stand: elsewhere they are plain names."""
    if _is_keyword(tok) and tok.type not in choices and "NAME" in choices:
        return Token.new_borrow_pos("NAME", tok.value, tok)
    return tok


def _parser_after(tokens: list[Token], indexes: list[int]):
    """The interactive parser after `indexes` of `tokens`; raises UnexpectedInput if they do not parse."""
    parser = _lark().parse_interactive(start="item")
    for i in indexes:
        parser.feed_token(_contextual(tokens[i], parser.choices()))
    return parser


def _feed(tokens: list[Token], indexes: list[int]) -> Tree:
    parser = _lark().parse_interactive(start="item")
    for n, i in enumerate(indexes):
        choices = parser.choices()
        tok = _contextual(tokens[i], choices)
        if tok.type not in choices:
            raise _SyntaxFailure(i, tok, parser.accepts())
        try:
            parser.feed_token(tok)
        except UnexpectedToken:
            # The LALR tables merge states, so a token may be taken as the lookahead of a reduction
            # that then fails: what the parser really accepts is asked of it before that token.
            raise _SyntaxFailure(i, tok, _parser_after(tokens, indexes[:n]).accepts()) from None
    try:
        return parser.feed_eof(tokens[indexes[-1]])
    except UnexpectedToken:
        last = tokens[indexes[-1]]
        eof = Token("$END", "", start_pos=last.end_pos, line=last.end_line, column=last.end_column,
                    end_line=last.end_line, end_column=last.end_column + 1, end_pos=last.end_pos)
        raise _SyntaxFailure(None, eof, _parser_after(tokens, indexes).accepts()) from None


@dataclass(frozen=True)
class _At:
    """Where a chunk failed to parse: its tokens, the indexes fed to the parser, and the failure."""

    tokens: list[Token]
    kept: list[int]
    failure: _SyntaxFailure
    setting_starts: frozenset[str]

    @property
    def position(self) -> int:
        """The failing token's place in `kept` (len(kept) at the end of the chunk)."""
        return len(self.kept) if self.failure.index is None else self.kept.index(self.failure.index)

    def before(self, n: int = 1) -> Token | None:
        """The n-th token the parser took before the failing one."""
        at = self.position - n
        return self.tokens[self.kept[at]] if at >= 0 else None

    def after(self) -> Token | None:
        at = self.position + 1
        return self.tokens[self.kept[at]] if at < len(self.kept) else None

    def accepts(self, tok: Token, skipping: int = 0) -> bool:
        """Whether the parser would take `tok` where the failing token is, with the `skipping`
        tokens before that left out."""
        try:
            parser = _parser_after(self.tokens, self.kept[:self.position - skipping])
            parser.feed_token(_contextual(tok, parser.choices()))
        except UnexpectedInput:
            return False
        return True


def _describe(token: Token) -> str:
    if token.type == "$END":  # of the chunk: the end of the file, or the start of the next item
        return "the end of the item"
    if token.type == "RBRACE" and not token.value:  # `_closing_brace`
        return "the end of the block"
    if token.type == "STRING":
        shown = token.value if len(token.value) <= 30 else token.value[:29] + '…"'
        return f"string `{shown}`"
    if token.type == "NUMBER":
        return f"`{token.value}`"
    if _is_keyword(token):
        return f"keyword `{token.value}`"
    if token.type == "NAME":
        return f"`{token.value}`"
    return _PUNCT_WORDS.get(token.value, f"`{token.value}`")


def _expected_words(expected: set[str], previous: Token | None) -> list[str]:
    words = _terminal_words()
    after = previous.value if previous is not None else None
    if after in CHOICES and "NAME" in expected:  # `tpm` takes `required` (a keyword) or a name: it means these
        expected = expected - {"NAME"} - {n for n in expected if words.get(n, "").strip("`") in CHOICES[after]}
        out = [f"`{choice}`" for choice in CHOICES[after]]
    else:
        out = []
    for name in sorted(expected - {"SEMICOLON", "$END"}, key=lambda n: (n == "RBRACE", words.get(n, n))):
        if name == "NUMBER" and after in _NUMBER_AFTER:
            out.append(_NUMBER_AFTER[after])
        elif name == "NUMBER" and previous is not None and previous.type == "COMMA":
            out.append("a PCR index such as `7`")
        elif name == "NAME" and after in _NAME_AFTER:
            out.append(_NAME_AFTER[after])
        else:
            out.append(words.get(name, "a setting"))
    return out


# What a name means after a given keyword, for "expected ..." messages.
_NAME_AFTER = {
    "seal": "the name of an attestation such as `boot`", "vault": "a vault name", "app": "an app name",
    "component": "a component name", "attestation": "an attestation name",
}


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _spaced_unit(keyword: Token | None, number: Token | None, unit: Token) -> tuple[str, str, str] | None:
    """For a size or duration written with a space before its unit (`8 MiB`, `90 days`, `8 gib`,
    `4 months`): its code, what to write instead and the help line saying so. Else None."""
    if (keyword is None or number is None or number.type != "NUMBER" or not number.value.isdigit()
            or number.line != unit.line or not _is_word(unit)):
        return None
    meant = None
    if keyword.value in SIZE_KEYWORDS and (meant := size_unit_meant(unit.value)):
        code = codes.BAD_SIZE
    elif keyword.value in DURATION_KEYWORDS and (days := calendar_unit_days(unit.value)) is not None:
        return codes.BAD_DURATION, f"{int(number.value) * days}d", calendar_unit_help(int(number.value), days)
    elif keyword.value in DURATION_KEYWORDS and (meant := duration_unit_meant(unit.value)):
        code = codes.BAD_DURATION
    if meant is None:
        return None
    written = f"{number.value}{meant}"
    if meant == unit.value:
        return code, written, f"write `{written}`, without a space"
    return code, written, f"write `{written}`: the number and its unit, without a space"


def _syntax_diagnostic(file: str, at: _At) -> Diagnostic:
    tok, expected = at.failure.token, at.failure.expected
    previous = at.before()
    if (spaced := _spaced_unit(at.before(2), previous, tok)) is not None:
        code, written, help_line = spaced
        both = Span(file=file, line=previous.line, column=previous.column, end_line=tok.end_line,
                    end_column=tok.end_column, start_pos=previous.start_pos, end_pos=tok.end_pos)
        if written == f"{previous.value}{tok.value}":
            return error(code, f"space between `{previous.value}` and its unit `{tok.value}`", both, help=help_line)
        what = "size" if code == codes.BAD_SIZE else "duration"
        return error(code, f"`{previous.value} {tok.value}` is not a {what}", both, help=help_line)
    if tok.type == "RBRACE" and (expected == {"$END"} or at.position == 0):  # after an item, or before any
        return error(codes.UNEXPECTED_TOKEN, "unexpected `}`: no block is open here", _span(file, tok), help="remove it")
    if expected == {"$END"}:  # the item is complete
        return error(codes.UNEXPECTED_TOKEN, f"unexpected {_describe(tok)} after a complete item", _span(file, tok),
                     help="remove it, or start a new item there")
    words = _expected_words(expected, previous)
    keywords_here = [_terminal_words()[n].strip("`") for n in expected if n in _keyword_types()]
    suggestion = did_you_mean(tok.value, keywords_here) if tok.type == "NAME" or _is_keyword(tok) else None
    if (previous is not None and tok.type == previous.type in ("NUMBER", "STRING", "NAME") and "COMMA" in expected
            and (suggestion is None or tok.line == previous.line)):  # `keep_locked` / `escrw required`: a misspelling
        what = "PCR indexes " if tok.type == "NUMBER" else ""
        return error(codes.UNEXPECTED_TOKEN, f"missing `,` between {what}`{previous.value}` and `{tok.value}`",
                     _span(file, tok), help=f"write `{previous.value}, {tok.value}`")
    expectation = f"expected {_join(words)}" if words else None
    if suggestion is not None or (keywords_here and "NAME" not in expected and tok.type == "NAME"):
        message = f"unknown keyword `{tok.value}`" if tok.type == "NAME" else f"keyword `{tok.value}` is not allowed here"
        return error(codes.UNKNOWN_KEYWORD, message, _span(file, tok), help=suggestion or expectation)
    if _is_keyword(tok) and keywords_here:
        return error(codes.UNKNOWN_KEYWORD, f"keyword `{tok.value}` is not allowed here", _span(file, tok),
                     help=expectation)
    code = codes.UNEXPECTED_END if tok.type == "$END" else codes.UNEXPECTED_TOKEN
    if previous is not None and previous.type in ("COMMA", "VBAR") and at.accepts(tok, skipping=1):
        fix = (f"remove one of the two {_describe(tok)}" if tok.type == previous.type
               else f"remove the {_describe(previous)} before {_describe(tok)}: a list does not end with one")
        return error(code, f"{expectation}, found {_describe(tok)}", _span(file, tok), help=fix)
    if previous is not None and _value_missing(at, tok, previous):
        after = f"`{previous.value}`"
        return error(code, f"missing {_join(words)} after {after}", _span(file, previous),
                     help=_example(previous, words) or f"write {_join(words)} after {after}")
    if words and len(words) <= 4:
        return error(code, f"{expectation}, found {_describe(tok)}", _span(file, tok), help=_fix(at, tok, expected, words))
    return error(code, f"unexpected {_describe(tok)}", _span(file, tok), help=expectation or "remove it")


def _value_missing(at: _At, tok: Token, previous: Token) -> bool:
    """Whether, in the middle of a declaration (where no `}` may stand), `tok` comes after something
    missing rather than in place of it: it ends the block or the setting, starts the next setting,
    or stands on a later line (`limit` / `}`)."""
    if "RBRACE" in at.failure.expected:
        return False
    return (tok.type in ("RBRACE", "SEMICOLON", "$END") or tok.line > previous.end_line
            or (tok.type in at.setting_starts and tok.type not in at.failure.expected))


def _example(keyword: Token, words: list[str]) -> str | None:
    """`for example `limit 512MiB``, when the words expected give one."""
    examples = [m.group(1) for w in words if (m := re.search(r"such as `([^`]+)`", w))]
    examples += [w.strip("`") for w in words if re.fullmatch(r"`[^`]+`", w)]  # a keyword or a choice: `required`
    if keyword.value == "pcrs" and examples:  # PCR 7 alone leaves the firmware unbound (VP0507): the usual set
        examples = ["0, 4, 7"]
    return f"for example `{keyword.value} {examples[0]}`" if examples and _is_word(keyword) else None


def _fix(at: _At, tok: Token, expected: set[str], words: list[str]) -> str:
    """Help for `expected …, found …`: what to write instead."""
    if tok.type == "STRING":
        inner = tok.value[1:-1]
        as_word = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", inner) and ("NAME" in expected or f"`{inner}`" in words)
        if as_word or ("NUMBER" in expected and re.fullmatch(r"[0-9][A-Za-z0-9_]*", inner)):
            return f"remove the quotes: `{inner}`"
    if (_is_word(tok) or tok.type == "NUMBER") and expected == {"STRING"}:
        return f'put it in double quotes: `"{tok.value}"`'
    following, previous = at.after(), at.before()
    if tok.type in ("EQUAL", "COMMA", "VBAR") and following is not None and at.accepts(following):
        instead = f": `{previous.value} {following.value}`" if previous is not None else ""
        return f"remove the {_describe(tok)}{instead}"
    return f"write {_join(words)} before {_describe(tok)}"


def _segments(tokens: list[Token], header_end: int, body_end: int, setting_starts: set[str]) -> list[list[int]]:
    """Indexes of the block body cut into settings: each starts at a setting keyword or after `;`."""
    segments: list[list[int]] = []
    for i in range(header_end + 1, body_end):
        tok = tokens[i]
        if not segments or tok.type in setting_starts or tokens[i - 1].type == "SEMICOLON" or _misspelt_setting(tokens, i):
            segments.append([])
        segments[-1].append(i)
    return segments


def _misspelt_setting(tokens: list[Token], i: int) -> bool:
    """A plain name first on its line, not continuing a list: most likely a misspelt setting keyword."""
    tok, prev = tokens[i], tokens[i - 1]
    return tok.type == "NAME" and prev.line < tok.line and prev.type not in ("COMMA", "VBAR", "EQUAL")


def _unclosed_brace(file: str, tokens: list[Token]) -> Diagnostic | None:
    """VP0006 for an item that the splitter ended with its block's `{` left open. Not when its last
    `}` lines up with its header (on the header's line, or first on its own line and no further
    right): that `}` closes the block, and the `{` left open is a stray one inside it."""
    if _item_keyword(tokens[0]) is None:  # no block: the first token is the error
        return None
    depth, opener = 0, None
    for tok in tokens:
        if tok.type == "LBRACE":
            depth += 1
            opener = tok if depth == 1 else opener
        elif tok.type == "RBRACE":
            depth -= 1
    if depth <= 0 or opener is None or _closes_block(tokens):
        return None
    return error(codes.UNCLOSED_BRACE, f"unclosed `{{` in `{_block_name(tokens)}`", _span(file, opener),
                 help=f"add `}}` after line {tokens[-1].end_line} to close this block")


def _closes_block(tokens: list[Token]) -> bool:
    """Whether the item's last token is a `}` that lines up with its header (`_unclosed_brace`)."""
    header, last = tokens[0], tokens[-1]
    if last.type != "RBRACE":
        return False
    return last.line == header.line or (tokens[-2].end_line < last.line and last.column <= header.column)


def _closing_brace(last: Token) -> Token:
    """The `}` of a block left open, right after its last token. Empty: no `}` stands there, and
    messages call it the end of the block (`_describe`)."""
    return Token("RBRACE", "", last.end_pos, last.end_line, last.end_column, last.end_line, last.end_column,
                 last.end_pos)


def _block_name(tokens: list[Token]) -> str:
    """The block a chunk declares as written, for messages: `vault a`, `device`."""
    _, name = _header(tokens)
    return tokens[0].value if name is None else f"{tokens[0].value} {name}"


@lru_cache(maxsize=256)
def _setting_keywords(header_types: tuple[str, ...]) -> frozenset[str]:
    """The setting keywords the parser accepts right after a block header. They depend only on the
    header's token types, so the few distinct headers (`vault NAME {`, `app NAME {`, ...) are probed once."""
    probe = _lark().parse_interactive(start="item")
    try:
        for type_ in header_types:
            probe.feed_token(_contextual(Token(type_, "", 0, 1, 1, 1, 1, 0), probe.choices()))
    except UnexpectedToken:
        return frozenset()
    return frozenset(c for c in probe.choices() if c in _keyword_types())


def parse_chunk(file: str, tokens: list[Token], echoes: set[int] | frozenset[int] = frozenset()
                ) -> tuple[Tree | None, Diagnostics, frozenset[str]]:
    """Parse one top-level item; on an error, drop the failing setting and try again. Also returns
    the settings dropped (see `Block.damaged`). An error at a token whose start is in `echoes` is
    not reported: a lexical error there explains it (`Lexed.echoes`)."""
    try:
        return _lark().parse(tokens), Diagnostics(), frozenset()  # most items: no recovery set up
    except UnexpectedToken:
        pass  # parsed again below, token by token, to tell what to drop
    diags = Diagnostics()
    if (unclosed := _unclosed_brace(file, tokens)) is not None:
        # The block ends where the next item starts (`split_items`): closed there, its settings are
        # parsed and checked as usual, so the missing `}` hides no other error (S18).
        diags.append(unclosed)
        tokens = [*tokens, _closing_brace(tokens[-1])]
    header_end = next((i for i, t in enumerate(tokens) if t.type == "LBRACE"), None)
    body_end = len(tokens) - 1 if tokens[-1].type == "RBRACE" else len(tokens)
    setting_starts: frozenset[str] = frozenset()
    segments: list[list[int]] = []
    if header_end is not None:
        setting_starts = _setting_keywords(tuple(tok.type for tok in tokens[:header_end + 1]))
        segments = _segments(tokens, header_end, body_end, setting_starts)
    dropped: set[int] = set()
    damaged: set[str] = set()
    while True:  # each round drops at least one more token, so it ends
        kept = [i for i in range(len(tokens)) if i not in dropped]
        try:
            return _feed(tokens, kept), diags, frozenset(damaged)
        except _SyntaxFailure as failure:
            nested = failure.index is not None and header_end is not None and failure.index > header_end \
                and failure.token.type == "LBRACE"
            strays = _stray_braces(tokens, failure.index, body_end, dropped) if nested else []
            if failure.token.start_pos not in echoes:
                diags.append(_stray_brace(file, tokens, failure.token, strays) if nested
                             else _syntax_diagnostic(file, _At(tokens, kept, failure, setting_starts)))
            if nested:  # the settings inside a stray `{ … }` are still the block's
                dropped.update(strays)
                continue
            blamed = _blamed_segment(failure, tokens, segments, dropped, setting_starts)
            if blamed is None:
                return None, diags, frozenset()
            dropped.update(blamed)
            damaged.add(_setting_meant(tokens[blamed[0]], setting_starts))


def _stray_brace(file: str, tokens: list[Token], brace: Token, strays: list[int]) -> Diagnostic:
    fix = "remove it and its `}`" if len(strays) > 1 else "remove it"
    return error(codes.UNEXPECTED_TOKEN, f"unexpected `{{` inside `{_block_name(tokens)}`", _span(file, brace),
                 help=f"{fix}: blocks do not nest")


def _stray_braces(tokens: list[Token], opening: int, body_end: int, dropped: set[int]) -> list[int]:
    """The indexes of the stray `{` at `opening`, of the `}` before `body_end` that closes it, and of
    every brace between them: one error covers a stray block, however deep. Just `opening` if no
    `}` closes it: the block's own `}` is not taken for its."""
    braces, depth = [], 0
    for i in range(opening, body_end):
        if i in dropped or tokens[i].type not in ("LBRACE", "RBRACE"):
            continue
        braces.append(i)
        depth += 1 if tokens[i].type == "LBRACE" else -1
        if depth == 0:
            return braces
    return [opening]


def _blamed_segment(failure: _SyntaxFailure, tokens, segments, dropped, setting_starts) -> list[int] | None:
    """The setting to drop for `failure`. A word where a new setting could start ends the setting
    before it (`seal bot limt 1MiB`): `segments` is split there, so `seal bot` is kept."""
    index = failure.index
    if index is None:
        return None
    live = [s for s in segments if not set(s) <= dropped]
    for n, seg in enumerate(live):
        if index in seg:
            starts_setting = seg[0] == index and tokens[index].type in setting_starts
            if starts_setting:
                return live[n - 1] if n > 0 else None
            k = seg.index(index)
            keyword = tokens[seg[k - 2]] if k > 1 else None
            spaced_unit = k > 0 and _spaced_unit(keyword, tokens[seg[k - 1]], tokens[index]) is not None  # `limit 8 MiB`: all of it
            if k > 0 and _is_word(tokens[index]) and failure.expected & setting_starts and not spaced_unit:
                where = segments.index(seg)
                segments[where:where + 1] = [seg[:k], seg[k:]]
                return seg[k:]
            return seg
    # the error is at the closing brace or in the header
    if live and index > live[-1][-1]:
        return live[-1]
    return None


def _is_word(token: Token) -> bool:
    return token.type == "NAME" or _is_keyword(token)


def _setting_meant(first: Token, setting_starts: frozenset[str]) -> str:
    """The keyword of a dropped setting: its own, the one a misspelt word most likely meant, or ANY_SETTING."""
    if first.type in setting_starts:
        return first.value
    words = sorted(_terminal_words()[t].strip("`") for t in setting_starts)
    close = difflib.get_close_matches(first.value, words, n=1, cutoff=0.6) if _is_word(first) else []
    return close[0] if close else ANY_SETTING


def _header(tokens: list[Token]) -> tuple[str | None, str | None]:
    """The kind and name a chunk declares, read from `KIND NAME {` (or `include "…"`) alone."""
    first = tokens[0]
    kind = _item_keyword(first)
    following = tokens[1:3]
    if kind == "include":
        return kind, following[0].value[1:-1] if following and following[0].type == "STRING" else None
    if kind in ("device", "defaults"):
        return kind, None
    named = len(following) == 2 and (following[0].type == "NAME" or _is_keyword(following[0]))
    return kind, following[0].value if named and following[1].type == "LBRACE" else None


def parse(text: str, file: str) -> ParseResult:
    lexed = tokenize(text, file)
    result = ParseResult(file=file, text=text, tokens=lexed.tokens, comments=lexed.comments,
                         diagnostics=lexed.diagnostics, stand_ins=lexed.stand_ins)
    chunks = split_items(lexed.tokens)
    for n, chunk in enumerate(chunks):
        tree, chunk_diags, damaged = parse_chunk(file, chunk, lexed.echoes)
        end = chunks[n + 1][0].start_pos if n + 1 < len(chunks) else len(text)
        kind, name = _header(chunk)
        result.blocks.append(Block(file, kind, name, chunk[0].start_pos, end, tree is not None, damaged))
        result.diagnostics.extend(chunk_diags)
        if tree is not None:
            result.items.append(tree)
    if (verdict := _not_a_policy(result)) is not None:
        result.diagnostics, result.items, result.blocks = Diagnostics([verdict]), [], []
        result.looks_like_a_policy = False
    return result


# A text with errors on its first lines and no item among them is not a policy with mistakes but
# another file named by mistake (`include "/etc/passwd"`): one error says so, instead of an error for
# every stray word and character, each echoing a line of it. (VP0017 and VP0022 do the same for
# binary files, JSON and PEM.)
_NOT_A_POLICY_ERRORS = 5
_NOT_A_POLICY_LINES = 3


def _not_a_policy(result: ParseResult) -> Diagnostic | None:
    first_item = min((block.start_pos for block in result.blocks if block.kind is not None), default=len(result.text))
    before = sorted((d for d in result.diagnostics.errors() if d.span.start_pos < first_item),
                    key=lambda d: d.span.start_pos)
    if len(before) < _NOT_A_POLICY_ERRORS or len({d.span.line for d in before}) < _NOT_A_POLICY_LINES:
        return None
    return error(codes.NOT_A_POLICY, f"`{result.file}` does not look like a policy: its first lines hold only errors",
                 before[0].span, help="name the `.vpol` file here; a policy is made of items such as "
                                      "`vault config { … }` and `include \"other.vpol\"`",
                 notes=[f"the first of {len(before)} errors before any item: {before[0].message}"])
