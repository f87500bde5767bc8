"""Parse trees -> policy_lang.ast models, checking literals on the way.

A separate pass over lark trees (internal transformers get no meta, style.md). Literal problems
(a size unit, a duration, a PCR index, a nonce size, an unknown mode word, an escape, a path
holding a character that does not show) become
diagnostics at the literal's span; the setting is then left out and conversion goes on, so one run
reports all of them.
"""

from __future__ import annotations

import re

from lark import Token, Tree

from vaultpolicy.printable import code_point, hidden_character
from vaultpolicy.suggest import did_you_mean

from . import ast
from . import syntax_codes as codes
from .diagnostics import Diagnostics, Span, error, source_lines
from .parse import ParseResult
from .vocabulary import (BANKS, DURATION_UNITS, ENCRYPTIONS, ON_FAILURE, ON_REMOVE, PROTECTIONS, SIZE_UNITS,
                         TPM_MODES, calendar_unit_days, calendar_unit_help, duration_unit_meant,
                         size_unit_meant)

# Plans are canonical JSON, whose integers are exact only below 2**53 (RFC 8785, S12).
MAX_EXACT_INT = 2**53
MAX_PCR = 23
NONCE_BYTES = (12, 32)

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
# A string's body in pieces: a run of plain characters, a NUL (which no string holds), a `\u{…}`,
# or a `\` and the character after it (an escape, valid or not).
_STRING_PIECE = re.compile(r"(?P<plain>[^\\\0]+)|(?P<nul>\0)|\\u\{(?P<hex>[0-9A-Fa-f]{1,6})\}|\\(?P<escape>.?)", re.S)
_RAW_NAMES = {"\t": "tab", "\n": "newline"}
# Sets, not tuples: a tree's rule name is a lark Token, whose `==` is a Python call per member tried.
_LIST_SETTINGS = frozenset({"holds", "stores", "allow_values", "allow_from"})
_UNNAMED_ITEMS = frozenset({"device", "defaults", "include"})
_NUMBER = re.compile(r"([0-9]+)(.*)", re.S)  # a NUMBER token starts with an ASCII digit


def _decoded(piece: re.Match) -> str | None:
    """What a piece of a string (`_STRING_PIECE`) stands for, or None if no string may hold it."""
    kind = piece.lastgroup
    if kind == "plain":
        return piece[0]
    if kind == "hex":
        value = int(piece["hex"], 16)
        return None if value == 0 or value > 0x10FFFF or 0xD800 <= value <= 0xDFFF else chr(value)
    return _ESCAPES.get(piece["escape"]) if kind == "escape" else None


def _bad_piece(piece: re.Match) -> str:
    if piece.lastgroup == "nul":
        return "strings may not contain NUL"
    if piece.lastgroup == "hex":
        return f"`{piece[0]}` is not a Unicode scalar value other than NUL"
    return f"invalid escape `{piece[0]}` in a string"


def _written_at(raw: str, index: int) -> tuple[int, int]:
    """Where the character at `index` of the decoded string stands in `raw`, a string's body that
    decodes: the character itself, or its escape."""
    seen = 0
    for piece in _STRING_PIECE.finditer(raw):
        text = _decoded(piece)
        if index < seen + len(text):
            if piece.lastgroup == "plain":
                return piece.start() + index - seen, piece.start() + index - seen + 1
            return piece.start(), piece.end()
        seen += len(text)
    raise ValueError(f"no character {index} in {raw!r}")


def _is_whole_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # `str.isdigit` alone takes `²`, which `int` refuses


_SIZE_RANGE = "sizes must be above zero and below 8PiB"
_DURATION_RANGE = "durations must be above zero and below 2^53 seconds (285 million years)"


def _unit_for_bytes(number: int) -> str:
    """Help for a size without a unit: the unit that states the same bytes, when one does."""
    exact = sorted((number // factor, unit) for unit, factor in SIZE_UNITS.items()
                   if factor > 1 and number >= factor and number % factor == 0)
    if exact:
        return f"sizes need a unit: {number} bytes is `{exact[0][0]}{exact[0][1]}`"
    return f"sizes need a unit: write `{number}B` for bytes, or another unit such as `{number}MiB`"


class _Converter:
    def __init__(self, file: str):
        self.file = file
        self.diags = Diagnostics()
        self.block = ""  # the item being converted, as messages name it: `vault a`, `device`

    # ---- spans and small helpers -------------------------------------------------------------

    def span(self, node: Tree | Token) -> Span:
        if isinstance(node, Token):
            return Span.from_token(self.file, node)
        return Span.from_meta(self.file, node.meta)

    def sub_span(self, token: Token, start: int, end: int) -> Span:
        """A span inside a one-line token (strings and numbers never cross lines)."""
        return Span(file=self.file, line=token.line, column=token.column + start, end_line=token.line,
                    end_column=token.column + end, start_pos=token.start_pos + start,
                    end_pos=token.start_pos + end)

    def fail(self, code: str, message: str, where: Span, help: str | None = None, notes=()) -> None:
        self.diags.append(error(code, message, where, help=help, notes=notes))

    def of(self, setting: str) -> str:
        """Where a literal stands, for its messages: `` of `limit` in `vault a` ``."""
        return f"of `{setting}` in `{self.block}`"

    @staticmethod
    def tokens(tree: Tree, kind: str) -> list[Token]:
        return [c for c in tree.children if isinstance(c, Token) and c.type == kind]

    def name(self, token: Token) -> ast.Name:
        return ast.Name(value=token.value, span=self.span(token))

    # ---- literals ----------------------------------------------------------------------------

    def string(self, token: Token) -> ast.StringLit | None:
        raw = token.value[1:-1]
        if "\\" not in raw and "\0" not in raw:  # most strings: nothing to decode
            return ast.StringLit(value=raw, span=self.span(token))
        out, ok = [], True
        for piece in _STRING_PIECE.finditer(raw):
            text = _decoded(piece)
            if text is None:
                ok = self._bad_escape(token, piece.start(), piece.end(), _bad_piece(piece))
            else:
                out.append(text)
        return ast.StringLit(value="".join(out), span=self.span(token)) if ok else None

    def path(self, token: Token, what: str, help: str) -> ast.StringLit | None:
        """A string naming a directory or file: the empty string is an error, not the current directory,
        and so is a character that does not show (`hidden_character`), at that character."""
        path = self.string(token)
        if path is not None and path.value == "":
            self.fail(codes.EMPTY_PATH, f"empty {what} in `{self.block}`", path.span, help=help)
            return None
        if path is not None and (index := hidden_character(path.value)) is not None:
            char = path.value[index]
            start, end = _written_at(token.value[1:-1], index)
            written = token.value[start + 1:end + 1]
            how = f"the `{written}` escape" if written.startswith("\\") else \
                f"the raw {_RAW_NAMES.get(char, f'U+{ord(char):04X} character')} in the string"
            self.fail(codes.PATH_HIDDEN_CHARACTER, f"{what} `{path.value}` in `{self.block}` contains {code_point(char)}",
                      self.sub_span(token, start + 1, end + 1),
                      help=f"paths hold only characters that show: remove {how}")
            return None
        return path

    def _bad_escape(self, token: Token, start: int, end: int, message: str) -> bool:
        # +1: the offsets are inside the quotes
        self.fail(codes.BAD_ESCAPE, message, self.sub_span(token, start + 1, end + 1),
                  help='valid escapes: `\\"`, `\\\\`, `\\n`, `\\t`, `\\u{1F512}`')
        return False

    def _split_number(self, token: Token, code: str, what: str, range_help: str) -> tuple[int, str] | None:
        digits, unit = _NUMBER.fullmatch(token.value).groups()
        if len(digits) > 16 or int(digits) >= MAX_EXACT_INT:
            self.fail(code, f"{what} is too large", self.span(token), help=range_help)
            return None
        return int(digits), unit

    def size(self, token: Token, setting: str) -> ast.SizeLit | None:
        what = f"size `{token.value}` {self.of(setting)}"
        parts = self._split_number(token, codes.BAD_SIZE, what, _SIZE_RANGE)
        if parts is None:
            return None
        number, unit = parts
        if unit not in SIZE_UNITS:
            where = self.sub_span(token, len(str(number)) if unit else 0, len(token.value))
            if not unit:
                self.fail(codes.BAD_SIZE, f"{what} has no unit", self.span(token), help=_unit_for_bytes(number))
            else:
                meant = size_unit_meant(unit)
                hint = f"did you mean `{meant}`?" if meant else did_you_mean(unit, SIZE_UNITS)
                self.fail(codes.BAD_SIZE, f"unknown size unit `{unit}` {self.of(setting)}", where,
                          help=hint or "units: B, KiB, MiB, GiB, TiB (1024) or KB, MB, GB, TB (1000)")
            return None
        value = number * SIZE_UNITS[unit]
        if value == 0 or value >= MAX_EXACT_INT:
            self.fail(codes.BAD_SIZE, f"{what} is {'zero' if value == 0 else 'too large'}", self.span(token),
                      help=_SIZE_RANGE)
            return None
        return ast.SizeLit(bytes=value, text=token.value, span=self.span(token))

    def duration(self, token: Token, setting: str) -> ast.DurationLit | None:
        what = f"duration `{token.value}` {self.of(setting)}"
        parts = self._split_number(token, codes.BAD_DURATION, what, _DURATION_RANGE)
        if parts is None:
            return None
        number, unit = parts
        if unit not in DURATION_UNITS:
            if not unit:
                self.fail(codes.BAD_DURATION, f"{what} has no unit", self.span(token),
                          help=f"write the unit, for example `{number}d` (s, m, h, d, w)")
            elif (days := calendar_unit_days(unit)) is not None:
                self.fail(codes.BAD_DURATION, f"unknown duration unit `{unit}` {self.of(setting)}",
                          self.sub_span(token, len(str(number)), len(token.value)),
                          help=calendar_unit_help(number, days))
            else:
                short = duration_unit_meant(unit)
                hint = f"write `{number}{short}`" if short else did_you_mean(unit, DURATION_UNITS)
                self.fail(codes.BAD_DURATION, f"unknown duration unit `{unit}` {self.of(setting)}",
                          self.sub_span(token, len(str(number)), len(token.value)),
                          help=hint or "units: s (seconds), m (minutes), h (hours), d (days), w (weeks)")
            return None
        seconds = number * DURATION_UNITS[unit]
        if seconds == 0 or seconds >= MAX_EXACT_INT:
            self.fail(codes.BAD_DURATION, f"{what} is {'zero' if seconds == 0 else 'too large'}", self.span(token),
                      help=_DURATION_RANGE)
            return None
        return ast.DurationLit(seconds=seconds, text=token.value, span=self.span(token))

    def pcr(self, token: Token, setting: str) -> ast.PcrIndex | None:
        if not _is_whole_number(token.value) or len(token.value) > 3 or int(token.value) > MAX_PCR:
            self.fail(codes.PCR_OUT_OF_RANGE, f"PCR index `{token.value}` {self.of(setting)} is out of range",
                      self.span(token), help=f"PCR indexes are whole numbers from 0 to {MAX_PCR}")
            return None
        return ast.PcrIndex(index=int(token.value), span=self.span(token))

    def word(self, token: Token, allowed: tuple[str, ...], setting: str) -> str | None:
        if token.value in allowed:
            return token.value
        choices = ", ".join(f"`{a}`" for a in allowed)
        self.fail(codes.UNKNOWN_VALUE, f"unknown value `{token.value}` {self.of(setting)}", self.span(token),
                  help=did_you_mean(token.value, allowed) or f"`{setting}` takes {choices}")
        return None

    # ---- blocks ------------------------------------------------------------------------------

    def settings(self, tree: Tree) -> dict[str, Tree]:
        """The block's single-valued settings by rule name; list settings are read separately."""
        seen: dict[str, Tree] = {}
        for child in tree.children:
            if not isinstance(child, Tree) or child.data in _LIST_SETTINGS:
                continue
            key = "seal" if child.data.startswith("seal_") else child.data
            if key in seen:
                first = seen[key]
                self.fail(codes.REPEATED_SETTING, f"`{child.children[0].value}` is set twice in `{self.block}`",
                          self.span(child), help="keep one of them",
                          notes=[f"first set at {self.span(first)}"])
                continue
            seen[key] = child
        return seen

    def vault_settings(self, settings: dict[str, Tree], span: Span) -> ast.VaultSettings:
        fields = {}
        if (t := settings.get("encryption")) is not None:
            mode = self.word(t.children[1], ENCRYPTIONS, "encryption")
            if mode is not None:
                fields["encryption"] = ast.EncryptionSetting(mode=mode, span=self.span(t))
        if (t := settings.get("seal")) is not None:
            fields["seal"] = self.seal(t)
        if (t := settings.get("rotate")) is not None:
            every = self.duration(t.children[2], "rotate every")
            if every is not None:
                fields["rotate"] = ast.RotateSetting(every=every, span=self.span(t))
        if (t := settings.get("on_remove")) is not None:
            action = self.word(t.children[1], ON_REMOVE, "on_remove")
            if action is not None:
                fields["on_remove"] = ast.OnRemoveSetting(action=action, span=self.span(t))
        return ast.VaultSettings(span=span, **{k: v for k, v in fields.items() if v is not None})

    def seal(self, tree: Tree) -> ast.SealSetting:
        if tree.data == "seal_attestation":
            return ast.SealSetting(attestation=self.name(tree.children[1]), span=self.span(tree))
        names = self.tokens(tree, "NAME")
        bank = self.bank(names[0]) if names else None
        return ast.SealSetting(pcrs=self.pcr_list(tree, "seal pcrs"), bank=bank, span=self.span(tree))

    def pcr_list(self, tree: Tree, setting: str) -> tuple[ast.PcrIndex, ...]:
        """The valid indexes; with an invalid one among them the policy has an error, but `check`
        still judges the others (PCR 5 in `pcrs 0, 5, 24`)."""
        return tuple(p for p in (self.pcr(t, setting) for t in self.tokens(tree, "NUMBER")) if p is not None)

    def bank(self, token: Token) -> ast.Name | None:
        return self.name(token) if self.word(token, BANKS, "bank") else None

    def device(self, tree: Tree) -> ast.DeviceDecl:
        s = self.settings(tree)
        fields = {}
        if (t := s.get("persist")) is not None:
            fields["persist"] = self.path(t.children[1], "persist root", "write the partition's mount point, e.g. `/persist`")
        for key in ("capacity", "reserve"):
            if (t := s.get(key)) is not None:
                fields[key] = self.size(t.children[1], key)
        if (t := s.get("tpm")) is not None:
            mode = self.word(t.children[1].children[0], TPM_MODES, "tpm")
            fields["tpm_required"] = None if mode is None else mode == "required"
        if (t := s.get("bank")) is not None:
            fields["bank"] = self.bank(t.children[1])
        if (t := s.get("allow_unmeasured_boot")) is not None:
            fields["allow_unmeasured_boot"] = ast.Flag(span=self.span(t))
        if (t := s.get("escrow_key")) is not None:
            fields["escrow_key"] = self.path(t.children[1], "escrow key file name",
                                             "name the controller's escrow public key file, relative to this policy")
        return ast.DeviceDecl(span=self.span(tree), **{k: v for k, v in fields.items() if v is not None})

    def attestation(self, tree: Tree) -> ast.AttestationDecl:
        s = self.settings(tree)
        fields = {}
        if (t := s.get("bank")) is not None:
            fields["bank"] = self.bank(t.children[1])
        if (t := s.get("pcrs")) is not None:
            fields["pcrs"] = self.pcr_list(t, "pcrs")
        if (t := s.get("nonce")) is not None:
            numbers = self.tokens(t, "NUMBER")
            fields["nonce_bytes"] = self.nonce_size(numbers[0])
            if len(numbers) > 1:
                fields["nonce_valid"] = self.duration(numbers[1], "valid")
        if (t := s.get("escrow")) is not None:
            fields["escrow_required"] = ast.Flag(span=self.span(t))
        if (t := s.get("on_failure")) is not None:
            words = [self.word(n, ON_FAILURE, "on_failure") for n in self.tokens(t, "NAME")]
            fields["on_failure"] = None if None in words else tuple(words)
        rules = [self.allow(c) for c in tree.children if isinstance(c, Tree) and c.data.startswith("allow_")]
        fields["allow"] = tuple(r for r in rules if r is not None)
        return ast.AttestationDecl(name=self.name(tree.children[1]), span=self.span(tree),
                                   **{k: v for k, v in fields.items() if v is not None})

    def nonce_size(self, token: Token) -> ast.IntLit | None:
        if not _is_whole_number(token.value) or len(token.value) > 6:
            self.fail(codes.BAD_NUMBER, f"nonce size `{token.value}` in `{self.block}` is not a number of bytes", self.span(token),
                      help="write the nonce size as a plain number, for example `nonce 32 bytes`")
            return None
        value = int(token.value)
        low, high = NONCE_BYTES
        if not low <= value <= high:
            self.fail(codes.BAD_NONCE_SIZE, f"nonce size {value} bytes in `{self.block}` is outside {low}–{high}", self.span(token),
                      help=f"use between {low} and {high} bytes; 32 is a good choice")
            return None
        return ast.IntLit(value=value, span=self.span(token))

    def allow(self, tree: Tree) -> ast.AllowRule | None:
        pcr = self.pcr(tree.children[2], "allow pcr")
        if tree.data == "allow_from":
            file = self.path(tree.children[4], "file name", "name the file of allowed values, relative to this policy")
            return None if pcr is None or file is None else ast.AllowRule(pcr=pcr, reference_file=file, span=self.span(tree))
        strings = [self.string(t) for t in self.tokens(tree, "STRING")]
        if pcr is None or None in strings:
            return None
        return ast.AllowRule(pcr=pcr, values=tuple(strings), span=self.span(tree))

    def defaults(self, tree: Tree) -> ast.DefaultsDecl:
        span = self.span(tree)
        return ast.DefaultsDecl(settings=self.vault_settings(self.settings(tree), span), span=span)

    def vault(self, tree: Tree) -> ast.VaultDecl:
        s = self.settings(tree)
        span = self.span(tree)
        fields = {}
        name = tree.children[1].value
        if (t := s.get("path")) is not None:
            fields["path"] = self.path(t.children[1], "path",
                                       f"write a directory such as `/persist/vault/{name}`, or leave `path` out for that default")
        if (t := s.get("limit")) is not None:
            fields["limit"] = self.size(t.children[1], "limit")
        if (t := s.get("protected")) is not None:
            fields["protected"] = ast.Flag(span=self.span(t))
        if (t := s.get("disabled")) is not None:
            reason = self.string(t.children[1])
            if reason is not None and not reason.value.strip():
                self.fail(codes.EMPTY_REASON, f"the reason for disabling `{self.block}` is empty", reason.span,
                          help='say why, for example `disabled "no apps run on this device"`')
                reason = None
            fields["opt_out_reason"] = reason
        holds = [self.path(t, "`holds` directory", "write a directory inside the vault")
                 for c in tree.children if isinstance(c, Tree) and c.data == "holds" for t in self.tokens(c, "STRING")]
        fields["holds"] = tuple(h for h in holds if h is not None)
        return ast.VaultDecl(name=self.name(tree.children[1]), settings=self.vault_settings(s, span), span=span,
                             **{k: v for k, v in fields.items() if v is not None})

    def component(self, tree: Tree) -> ast.ComponentDecl:
        entries = []
        for child in tree.children:
            if isinstance(child, Tree) and child.data == "stores":
                sensitive = bool(self.tokens(child, "SENSITIVE"))
                for t in self.tokens(child, "STRING"):
                    path = self.path(t, "`stores` directory", "write the directory the component writes to")
                    if path is not None:
                        entries.append(ast.StoreEntry(path=path, sensitive=sensitive, span=path.span))
        return ast.ComponentDecl(name=self.name(tree.children[1]), stores=tuple(entries), span=self.span(tree))

    def app(self, tree: Tree) -> ast.AppDecl:
        s = self.settings(tree)
        fields = {}
        if (t := s.get("app_vault")) is not None:
            fields["vault"] = self.name(t.children[1])
        if (t := s.get("protection")) is not None:
            if self.word(t.children[1], PROTECTIONS, "protection") is not None:
                fields["end_to_end"] = ast.Flag(span=self.span(t))
        return ast.AppDecl(name=self.name(tree.children[1]), span=self.span(tree), **fields)

    def include(self, tree: Tree) -> ast.IncludeDecl | None:
        path = self.path(tree.children[1], "path", "name a policy file, relative to this one")
        return None if path is None else ast.IncludeDecl(path=path, span=self.span(tree))


def whole_file_span(file: str, text: str) -> Span:
    lines = source_lines(text)
    return Span(file=file, line=1, column=1, end_line=len(lines), end_column=len(lines[-1]) + 1,
                start_pos=0, end_pos=len(text))


def to_policy(result: ParseResult) -> tuple[ast.Policy, Diagnostics]:
    """The AST of every item that parsed, and the literal diagnostics found on the way."""
    conv = _Converter(result.file)
    items = []
    for tree in result.items:
        conv.block = tree.data if tree.data in _UNNAMED_ITEMS else f"{tree.data} {tree.children[1].value}"
        item = getattr(conv, tree.data)(tree)
        if item is not None:
            items.append(item)
    policy = ast.Policy.of_items(result.file, tuple(items), whole_file_span(result.file, result.text))
    return policy, Diagnostics(d for d in conv.diags if not result.holds_lexical_error(d.span.start_pos))
