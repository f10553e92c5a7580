"""Strings from an experiment's files, made safe to put in Markdown.

An experiment folder can be someone else's (downloaded, possibly crafted): a name, a path
or an error message read from it must show as itself, never open a code span, a link, an
image, raw HTML or a table cell of its own (CommonMark and GitHub's tables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Characters that can start markup, as references that CommonMark shows as the
# character and never as markup. An underscore between two letters or digits cannot
# (intraword emphasis does not exist), so names like trial_002_ab stay readable.
_REFERENCES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "|": "&#124;",
    "`": "&#96;",
    "*": "&#42;",
    "_": "&#95;",
    "[": "&#91;",
    "]": "&#93;",
    "!": "&#33;",
    "\\": "&#92;",
    "~": "&#126;",
}
_MARKUP = re.compile(r"[&<>|`*\[\]!\\~]|(?<![^\W_])_|_(?![^\W_])")
_BACKTICKS = re.compile(r"`+")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _one_line(value: Any) -> str:
    """Line breaks and other control characters written as escapes (\\n, \\x1b): a raw
    line break would end a table row or start a block (raw HTML) of its own."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value)
    )


def text(value: Any) -> str:
    """`value` as plain text, in a paragraph or a table cell."""
    return _MARKUP.sub(lambda match: _REFERENCES[match.group()], _one_line(value))


def csv_cell(value: Any) -> Any:
    """`value` for a CSV file, with a leading single quote when it is text a spreadsheet
    would run as a formula (OWASP's advice against CSV injection); numbers as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def code(value: Any) -> str:
    """`value` as a code span that shows it literally: fenced by a run of backticks longer
    than any inside it, padded with a space when it starts or ends with a backtick or a
    space (CommonMark strips one from each side). Not for a table cell: GitHub splits
    cells at a pipe even inside a code span (use `text` there)."""
    content = _one_line(value)
    longest = max((len(run) for run in _BACKTICKS.findall(content)), default=0)
    fence = "`" * (longest + 1)
    if content.startswith(("`", " ")) or content.endswith(("`", " ")):
        content = f" {content} "
    return f"{fence}{content}{fence}"


def folder_name(path: str | Path) -> str:
    """A data folder by its name alone: its full path is the training machine's."""
    return Path(path).name
