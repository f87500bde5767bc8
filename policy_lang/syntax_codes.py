"""Diagnostic codes of the policy language (VP00xx, and VP0207): lexing, syntax, literals and includes."""

from __future__ import annotations

from .codes import register

UNEXPECTED_CHARACTER = register(
    "VP0001", "unexpected character",
    "The policy contains a character that no part of the language uses: only names, numbers, "
    "double-quoted strings, `#` comments and the punctuation `{ } , ; = |` may appear. Characters "
    "outside a string or comment are usually a stray paste or a typo. Names are ASCII: a letter such as "
    "`é` or `应` may appear in a string or a comment, not in a name. A character that does not show "
    "(a no-break or zero-width space, a right-to-left override) is named by its code point, such as "
    "`U+200B ZERO WIDTH SPACE`; a string in curly quotes (`“…”`, as word processors write them) is one "
    "error, and is read as the string it means.",
    'vault config { limit 16MiB! }      # `!` is not part of the language',
)
UNTERMINATED_STRING = register(
    "VP0002", "unterminated string",
    "A string starts with `\"` but the line ends before the closing `\"`. Strings are one line; "
    "write a newline inside a string as `\\n`.",
    'vault config { path "/persist/vault/config }',
)
BAD_ESCAPE = register(
    "VP0003", "invalid escape in a string",
    "Inside a string, `\\` starts an escape. The valid escapes are `\\\"`, `\\\\`, `\\n`, `\\t` and "
    "`\\u{…}` with one to six hexadecimal digits naming a Unicode scalar value other than NUL.",
    'vault config { path "C:\\data" }    # `\\d` is no escape: write "C:\\\\data"',
)
UNEXPECTED_TOKEN = register(
    "VP0004", "unexpected token",
    "The parser found something it cannot use at this point, such as a string where a size belongs, "
    "a missing name after `vault`, a missing `,` between two items of a list, or a `}` that closes "
    "no block. The message says what was expected; a value missing after a keyword is reported at "
    "the keyword (`limit` at the end of its line).",
    "vault { limit 16MiB }              # the vault needs a name: vault config { … }",
)
UNKNOWN_KEYWORD = register(
    "VP0005", "unknown keyword",
    "A word appears where a keyword (a block such as `vault`, or a setting such as `limit`) is "
    "expected, and it is not one of the keywords valid here. Often a misspelling; the help line "
    "suggests the closest valid keyword.",
    "vault config { limt 16MiB }        # did you mean `limit`?",
)
UNCLOSED_BRACE = register(
    "VP0006", "unclosed block",
    "A block opened with `{` is never closed with `}`. The diagnostic points at the `{` that is "
    "still open; the next block or the end of the file is where the `}` was expected. The block "
    "ends there, so its settings and the items after it are still checked.",
    "vault config { limit 16MiB\nvault images { limit 64MiB }",
)
UNEXPECTED_END = register(
    "VP0007", "unexpected end of file",
    "A declaration stops before it is complete: the file ends, or the next item starts, right after "
    "`include` or `vault` (whose name is missing) or `vault NAME`. The error points at the last word "
    "of the unfinished declaration.",
    "include",
)
BAD_SIZE = register(
    "VP0010", "invalid size",
    "Sizes are a whole number followed by a unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) "
    "or `KB`, `MB`, `GB`, `TB` (powers of 1000). Units are case-sensitive; zero and sizes above "
    "8 PiB are refused.",
    "vault images { limit 64Mb }        # did you mean `MB`?",
)
BAD_DURATION = register(
    "VP0011", "invalid duration",
    "Durations are a whole number followed by a unit: `s` seconds, `m` minutes, `h` hours, `d` days, "
    "`w` weeks. Zero is refused: a rotation or a nonce lifetime of zero means nothing.",
    "defaults { rotate every 90days }   # write `90d`",
)
PCR_OUT_OF_RANGE = register(
    "VP0012", "PCR index out of range",
    "A TPM 2.0 PC client has PCRs 0 to 23. An index outside that range, or one that is not a plain "
    "whole number, cannot be measured or sealed to.",
    "vault config { seal pcrs 0, 24 }",
)
BAD_NONCE_SIZE = register(
    "VP0013", "nonce size out of range",
    "Attestation nonces must be 12 to 32 bytes: shorter ones can be guessed or repeat, and a TPM "
    "quote cannot carry a longer qualifying value for SHA-256.",
    "attestation boot { nonce 8 bytes }",
)
UNKNOWN_VALUE = register(
    "VP0014", "unknown value for a setting",
    "A setting that takes one of a fixed set of words got another word: `encryption` takes "
    "`aes-256-xts`, `adiantum` or `none`; `on_remove` takes `retain` or `destroy`; `tpm` takes "
    "`required` or `optional`; `bank` takes `sha1`, `sha256`, `sha384` or `sha512`; `on_failure` "
    "takes `keep_locked` and `deny_release`; `protection` takes `end_to_end`.",
    "vault config { encryption aes-256-xtz }",
)
BAD_NUMBER = register(
    "VP0015", "invalid number",
    "A plain whole number is expected here (for example a nonce size in bytes); it may not carry a "
    "unit and may not be absurdly large.",
    "attestation boot { nonce 32KiB bytes }",
)
REPEATED_SETTING = register(
    "VP0016", "setting given twice",
    "A block states the same single-valued setting twice, so it is unclear which one was meant. "
    "Keep one. (Settings that list things, such as `holds`, `stores` and `allow`, may repeat.)",
    "vault config { limit 16MiB limit 32MiB }",
)
INVALID_UTF8 = register(
    "VP0017", "file is not UTF-8 text",
    "Policy files are UTF-8 text. The file contains a byte sequence that is not valid UTF-8, or a "
    "NUL byte, at the given position: often a binary file named by mistake, or another encoding. "
    "Only the first such byte is reported and the file is not parsed further.",
    "(a policy saved as Latin-1 with a `é` in a comment)",
)
EMPTY_REASON = register(
    "VP0018", "empty opt-out reason",
    "Opting out of a built-in vault (`config` or `images`) needs a reason that reviewers can read; "
    "an empty string is not a reason.",
    'vault images { disabled "" }',
)
FORMAT_CHANGED_MEANING = register(
    "VP0019", "formatter would change the policy",
    "`vaultpolicy fmt` re-parses the text it produced and compares the result with the original: the "
    "same items and settings, and the same comments in the same order. If they differ the file is left "
    "as it was. This is a bug in the formatter; please report it with the file.",
    "(no example: any valid policy should format)",
)
INCLUDE_NOT_FOUND = register(
    "VP0020", "file cannot be read",
    "A policy file, or a file named by `include`, does not exist, cannot be read, is not a regular "
    "file (a directory or a device such as /dev/zero) or is larger than 16 MiB. Paths in "
    "`include` are relative to the file that contains the `include`.",
    'include "vaults/missing.vpol"',
)
INCLUDE_CYCLE = register(
    "VP0021", "include cycle",
    "Files include each other in a loop, so the policy would never end. Remove one of the "
    "`include`s in the cycle the note lists.",
    '# a.vpol\ninclude "b.vpol"\n# b.vpol\ninclude "a.vpol"',
)
NOT_A_POLICY = register(
    "VP0022", "not a policy file",
    "The file is JSON or PEM, not `.vpol` text: usually a plan, a signed plan, a trust root or a key "
    "(what `compile`, `sign`, `trust` and `keygen` write) named where a policy belongs. No policy "
    "is a JSON document or starts with `-----BEGIN`; the file is not parsed further. Text that only "
    "starts with `{` or `[` and is not JSON is read as a policy, and the stray brace is an error (VP0004). "
    "Other text whose first lines hold only errors (five or more, over three lines or more, before any "
    "item), such as `/etc/passwd` or a YAML file named by mistake, is reported once the same way "
    "instead of with an error for every line; what such a file declares is unknown, as for a file "
    "that cannot be read.",
    "vaultpolicy check plan.json        # error: `plan.json` is not a policy: it is an unsigned plan",
)
EMPTY_PATH = register(
    "VP0023", "empty path",
    "A path or file name is the empty string: a vault `path`, a `holds` or `stores` directory, the "
    "`persist` root, an `include`, an `escrow_key` or an `allow pcr N from` file. Write the path, or "
    "leave the setting out where it has a default (a vault without `path` lives at "
    "`<persist>/vault/<name>`).",
    'vault scratch { path "" }          # write "/persist/scratch", or leave `path` out',
)
INCLUDE_TOO_DEEP = register(
    "VP0024", "includes nested too deeply",
    "A chain of `include`s, each file including the next, is more than 64 files deep. No policy "
    "needs that; such a chain is almost always generated by mistake. The file at the limit is not "
    "read: include the files from a shallower level, for example all from the main policy.",
    "(a.vpol includes b.vpol, which includes c.vpol, … 65 files deep)",
)
# Among the path codes (VP02xx), where the compiler first had it; checked where a string is decoded,
# which knows where each character is written.
PATH_HIDDEN_CHARACTER = register(
    "VP0207", "character that does not show in a path",
    "A path or file name holds a character that does not show as itself: a control character (a "
    "newline, a tab), an invisible one (U+200B ZERO WIDTH SPACE, U+200E and U+200F, the bidi controls "
    "U+202A-U+202E and U+2066-U+2069, U+2060, U+FEFF) or a space other than the plain one (U+00A0 "
    "NO-BREAK SPACE), written raw or as an escape. Two paths that look the same would name different "
    "directories on the device, and such names garble its reports and logs. The error points at the "
    "character and names its code point; messages that quote the path show it as its escape.",
    'vault data { path "/persist/da\\u{200b}ta" }   # error: U+200B ZERO WIDTH SPACE',
)
