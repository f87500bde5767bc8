"""The policy language: parse `.vpol` text into the AST, load files with includes, format.

Stable API: `load`, `parse_text`, `format_text`, `LoadResult`, `Block` (its `broken_blocks`) and
`ANY_SETTING` (in `Block.damaged`).
Everything else is internal.
"""

from .load import LoadResult, load, parse_text
from .parse import ANY_SETTING, Block

__all__ = ["ANY_SETTING", "Block", "LoadResult", "format_text", "load", "parse_text"]


def format_text(text: str, file: str = "<input>") -> str:
    """The canonical layout of `text`; raises DiagnosticsError if it has errors or would change meaning."""
    from .fmt import format_text as _format

    return _format(text, file)
