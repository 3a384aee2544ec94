"""CSV cells that a spreadsheet cannot run: formula injection neutralised in exports for people.

A spreadsheet reads a cell that begins with `=`, `+`, `-` or `@` as a formula (and a leading
tab, carriage return or NUL can hide one), so an export opened in Excel or WPS could run what a
customer typed into a form. As OWASP advises, such a cell gets a leading `'`, which
spreadsheets show as text and do not display.

A plain number is left alone, even with a sign: `+8613800138000` (a phone in E.164) and
`-12.5` cannot carry a formula, and an export whose phones all began with `'` would not be
usable by the systems it is meant for. Only cdp's exports for people go through here; the
outbound SMS CSV is for a sending program and keeps every value as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# OWASP's CSV Injection page and ASVS 5.0 requirement 1.2.10, together.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def safe_cell(value: Any) -> Any:
    """The value, with a leading `'` if it is text a spreadsheet would read as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def safe_row(row: Iterable[Any]) -> list[Any]:
    """Every cell of a row through `safe_cell`."""
    return [safe_cell(value) for value in row]
