"""Read a policy file and the files it `include`s, and merge them into one Policy.

Includes are resolved relative to the including file, each file is read once (a file included
from two places contributes its items once), and a cycle is an error at the `include` that closes
it. Merged items keep the spans of the file they were written in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lark import Tree

from vaultpolicy.encoding import is_json_document

from . import ast
from . import syntax_codes as codes
from .diagnostics import Diagnostic, Diagnostics, Span, error, line_and_column
from .parse import ANY_SETTING, Block, ParseResult, parse
from .to_ast import to_policy, whole_file_span


@dataclass
class LoadResult:
    policy: ast.Policy | None  # None when any file has an error
    sources: dict[str, str] = field(default_factory=dict)  # file -> text, for rendering diagnostics
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    # For `check` only, never for building a plan: the items that parsed, even when others did not,
    # and the blocks an error left out or cut short (in every file read).
    partial: ast.Policy | None = None
    broken_blocks: list[Block] = field(default_factory=list)
    # file -> its parse, so the compiler lays out the canonical text for its digest without parsing again
    parses: dict[str, ParseResult] = field(default_factory=dict)


# Far above any real policy (the 2,000-vault benchmark policy is under 1 MiB), far below what would
# exhaust memory: `check /dev/zero` or a disk image given by mistake is refused before it is read.
MAX_INPUT_BYTES = 16 * 1024 * 1024


class UnreadableInput(ValueError):
    """A file that is not a regular file or is too large to be a policy, plan or key; says which."""


UTF8_BOM = b"\xef\xbb\xbf"


def read_input_file(path: str | os.PathLike, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, without a leading UTF-8 BOM. Raises
    OSError (cannot open) or UnreadableInput. Opened non-blocking so a FIFO is refused instead of
    waited on.

    Every file a command reads comes through here: policies, the files they name, plans, keys,
    trust roots, quotes. Each is text (or JSON, or PEM), and a BOM that an editor put in front of
    one means nothing, so it is dropped here, in one place, rather than refused by each format."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, pipe or socket"
            raise UnreadableInput(f"is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)  # the size may have changed since fstat
    if len(data) > limit:
        raise UnreadableInput(f"is larger than {limit // (1 << 20)} MiB, far more than any policy, plan or key")
    return data.removeprefix(UTF8_BOM)


# Says what a file that is not a policy holds ("an unsigned plan", "an Ed25519 public key"); the
# compiler's commands pass `compiler.signing.describe_key_file`, which knows those formats.
Describe = Callable[[bytes], str]


def unreadable(file: str, exc: OSError | UnreadableInput, included_at: Span | None = None) -> Diagnostic:
    """The error for a policy file that `read_input_file` refused (at the `include` naming it, if any)."""
    reason = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)
    return error(codes.INCLUDE_NOT_FOUND, f"cannot read `{file}`: {reason}", included_at,
                 help="paths in `include` are relative to the including file" if included_at
                 else "check the file name: a policy is a readable `.vpol` file")


def decode(data: bytes, file: str, describe: Describe | None = None) -> tuple[str, Diagnostics]:
    """UTF-8 text (a leading BOM dropped), or "" and one error at the first byte that is not text:
    invalid UTF-8 or a NUL (a binary file would otherwise give an error at every stray token); or
    the text and one error when it is JSON or PEM (a plan or a key gave an error per line)."""
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad, reason = exc.start, f"byte 0x{data[exc.start]:02x} is not valid UTF-8"
    else:
        if nul < 0:
            return text, _not_a_policy(data, text, file, describe)
        bad = len(data)
    if 0 <= nul < bad:
        bad, reason = nul, "a NUL byte (0x00) is not text"
    prefix = data[:bad].decode("utf-8-sig", errors="replace")
    line, column = line_and_column(prefix, len(prefix))
    span = Span(file=file, line=line, column=column, end_line=line, end_column=column + 1,
                start_pos=len(prefix), end_pos=len(prefix) + 1)
    # The text up to the bad byte, so the error renders with its source line.
    return prefix + "\n", Diagnostics([error(codes.INVALID_UTF8, f"{reason}; this does not look like a policy file",
                                             span, help="policies are UTF-8 text; save the file as UTF-8 or "
                                                        "check that you named the right file")])


def _not_a_policy(data: bytes, text: str, file: str, describe: Describe | None) -> Diagnostics:
    """One error at the first character of a JSON document or PEM file: no policy is one. Text that
    only starts with `{` or `[` is parsed as a policy (a stray brace is an error like any other)."""
    start = len(text) - len(text.lstrip())
    json_document = text.startswith(("{", "["), start) and is_json_document(text)
    if not json_document and not text.startswith("-----BEGIN", start):
        return Diagnostics()
    what = describe(data) if describe else ("a PEM file" if text.startswith("-", start) else "JSON")
    line, column = line_and_column(text, start)
    span = Span(file=file, line=line, column=column, end_line=line, end_column=column + 1, start_pos=start,
                end_pos=start + 1)
    return Diagnostics([error(codes.NOT_A_POLICY, f"`{file}` is not a policy: it is {what}", span,
                              help="name the `.vpol` file here; plans and keys are inputs of other commands")])


def parse_partial(text: str, file: str) -> tuple[ast.Policy, Diagnostics, list[Block]]:
    """The items that parsed (even when others did not), every diagnostic, sorted, and the blocks
    that an error left out (not parsed) or cut short (a setting dropped)."""
    return partial_of(parse(text, file))


def partial_of(result: ParseResult) -> tuple[ast.Policy, Diagnostics, list[Block]]:
    """`parse_partial` of a text already parsed."""
    policy, literal_diags = to_policy(result)
    diags = Diagnostics(result.diagnostics + literal_diags).sorted()
    return policy, diags, _broken_blocks(result, diags, literal_diags)


def _broken_blocks(result: ParseResult, diags: Diagnostics, literal_diags: Diagnostics) -> list[Block]:
    """The blocks an error left out (not parsed) or cut short, each parsed one with the settings
    its errors damaged: those the parser dropped, and those holding a bad literal, a repeat or a
    token that stands in for a lexical error (a name it holds, as written, is still its name)."""
    def positions(found: Diagnostics) -> list[int]:
        return [d.span.start_pos for d in found.errors() if d.span is not None and d.span.file == result.file]

    errors, literal_errors = positions(diags), positions(literal_diags)
    trees = {tree.meta.start_pos: tree for tree in result.items}
    broken = []
    for block in result.blocks:
        if block.parsed and not any(block.start_pos <= pos < block.end_pos for pos in errors):
            continue
        if block.parsed:
            tree = trees[block.start_pos]
            at = {_setting_at(tree, pos) for pos in literal_errors if block.start_pos <= pos < block.end_pos}
            stood_in = {_setting_at(tree, pos) for pos, _ in result.stand_ins if block.start_pos <= pos < block.end_pos}
            block = replace(block, damaged=block.damaged | at | (stood_in - {ANY_SETTING}))
        broken.append(block)
    return broken


def _setting_at(item: Tree, pos: int) -> str:
    """The keyword of the setting of `item` that contains source position `pos`."""
    for child in item.children:
        if isinstance(child, Tree) and child.meta.start_pos <= pos < child.meta.end_pos:
            return child.children[0].value
    return ANY_SETTING


def parse_text(text: str, file: str = "<input>") -> tuple[ast.Policy | None, Diagnostics]:
    """One file's AST (its `include`s left unresolved), or None and at least one error."""
    policy, diags, _ = parse_partial(text, file)
    return (None if diags.has_errors() else policy), diags


def load(path: str | os.PathLike, describe: Describe | None = None) -> LoadResult:
    """The policy in `path` and every file it includes; `describe` says what a file that is not a
    policy is (see `decode`)."""
    result = LoadResult(policy=None)
    root = os.fspath(path)
    items = _load_file(root, None, (), set(), result, describe)
    text = result.sources.get(root, "")
    result.partial = ast.Policy.of_items(root, tuple(items or ()), whole_file_span(root, text))
    if not result.diagnostics.has_errors() and items is not None:
        result.policy = result.partial
    return result


# A file includes another at most this many levels below the main policy: far more than any policy
# needs, far less than the interpreter's stack, which each level below takes a little of.
MAX_INCLUDE_DEPTH = 64


def _load_file(file: str, included_at: Span | None, stack: tuple[str, ...], done: set[str],
               result: LoadResult, describe: Describe | None) -> list | None:
    key = os.path.realpath(file)
    if len(stack) > MAX_INCLUDE_DEPTH:
        result.diagnostics.append(error(codes.INCLUDE_TOO_DEEP,
                                        f"`{file}` is included more than {MAX_INCLUDE_DEPTH} files deep; not read",
                                        included_at, help="include the files from a shallower level, e.g. all "
                                                          "from the main policy"))
        return None
    if key in stack:
        chain = " -> ".join([*(_display(result, k) for k in stack[stack.index(key):]), file])
        result.diagnostics.append(error(codes.INCLUDE_CYCLE, f"`{file}` includes itself through {chain}",
                                        included_at, help="remove one `include` in the cycle"))
        return []  # it is being read already: its items are known, and checked, where it was first included
    if key in done:
        return []
    done.add(key)
    try:
        data = read_input_file(file)
    except (OSError, UnreadableInput) as exc:
        result.diagnostics.append(unreadable(file, exc, included_at))
        return None
    text, diags = decode(data, file, describe)
    result.sources[file] = text
    if diags:  # not a policy: parsing it would only add an error per stray byte or line
        result.diagnostics.extend(diags)
        return None
    # Includes of a broken file are still followed, so their errors show up in the same run.
    parsed = result.parses[file] = parse(text, file)
    policy, parse_diags, broken = partial_of(parsed)
    result.diagnostics.extend(parse_diags)
    if not parsed.looks_like_a_policy:  # like a file that is not text: what it declares is unknown
        return None
    result.broken_blocks.extend(broken)
    items = []
    for item in policy.items:
        if isinstance(item, ast.IncludeDecl):
            target = os.path.normpath(os.path.join(os.path.dirname(file), item.path.value))
            included = _load_file(target, item.path.span, (*stack, key), done, result, describe)
            if included is None:  # unreadable or too deep: what it declares is unknown
                result.broken_blocks.append(Block(file, "include", item.path.value, item.span.start_pos,
                                                  item.span.end_pos, parsed=False))
            items.extend(included or [])
        else:
            items.append(item)
    return items


def _display(result: LoadResult, real: str) -> str:
    return next((f for f in result.sources if os.path.realpath(f) == real), real)
