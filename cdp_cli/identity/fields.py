"""Declared fields as resolve and matching read them: several columns joined, normalizers,
and the fields of a project's own kept in a row's attrs.

A source's `fields:` may build one field from several columns (`name: {from: [surname,
given_name]}`) and give it normalizers (`normalize: [strip, upper, digits]`). Ingest stores
canonical fields as written (joined, not normalized); a field of the project's own (a loyalty
card, an address) is no column of the store, so its columns stay in the row's attrs JSON,
where resolve reads them. The normalizers apply only where a value identifies or matches
someone: the stored value is never changed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cdp_cli.config import FieldMapping, Source

_SPACES = re.compile(r"\s+")


def _is_cjk(char: str) -> bool:
    """A Chinese, Japanese or Korean character: written without spaces between words."""
    return unicodedata.name(char, "").startswith(("CJK ", "HANGUL", "HIRAGANA", "KATAKANA"))


def join_parts(parts: Sequence[str | None]) -> str | None:
    """Several columns as one value, in the order given, with the locale's separator: none
    between Chinese characters (张 + 伟 = 张伟), a space otherwise (Zhang + Wei = Zhang Wei).
    Empty parts are left out; None when all are."""
    texts = [p.strip() for p in parts if p is not None and p.strip()]
    if not texts:
        return None
    joined = texts[0]
    for text in texts[1:]:
        separator = "" if _is_cjk(joined[-1]) and _is_cjk(text[0]) else " "
        joined += separator + text
    return joined


def _strip(value: str) -> str:
    """NFKC (full-width forms to their plain ones), white space trimmed and collapsed."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip()


def _upper(value: str) -> str:
    return value.upper()


def _digits(value: str) -> str:
    """Only the decimal digits (any script's, as ASCII: full-width ２ is 2; superscripts are
    no digits): a card number written with spaces or dashes."""
    return "".join(str(unicodedata.decimal(c)) for c in value if c.isdecimal())


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "strip": _strip,
    "upper": _upper,
    "digits": _digits,
}


def normalized(value: str | None, names: Sequence[str]) -> str | None:
    """`value` through the named normalizers in order; None when nothing is left."""
    if value is None:
        return None
    for name in names:
        value = NORMALIZERS[name](value)
    return value if value.strip() else None


def _attr(attrs: Mapping[str, Any], column: str) -> str | None:
    """A column kept in attrs (a JSON path for nested JSON rows), as text."""
    value: Any = attrs.get(column)
    if value is None and "." in column:
        value = attrs
        for part in column.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


class FieldReader:
    """The values of a source's fields for identifying and matching: canonical ones from the
    row's columns, the project's own from its attrs, each through its normalizers."""

    def __init__(self, source: Source, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._own = {n: m for n, m in source.custom_fields.items() if n in self.names}
        self._normalize = {
            n: m.normalize
            for n in self.names
            for m in [source.fields.get(n) or source.custom_fields.get(n)]
            if m is not None and m.normalize
        }
        self.reads_attrs = bool(self._own)
        self.changes_values = bool(self._own or self._normalize)

    def values(self, columns: Mapping[str, str | None], attrs: str | None) -> dict[str, Any]:
        """The fields' values of one row, from its canonical `columns` and its attrs JSON."""
        values: dict[str, Any] = {n: columns[n] for n in self.names if n in columns}
        if self._own:
            loaded = _load(attrs)
            for name, mapping in self._own.items():
                values[name] = own_value(mapping, loaded)
        for name, steps in self._normalize.items():
            values[name] = normalized(values.get(name), steps)
        return values


def own_value(mapping: FieldMapping, attrs: Mapping[str, Any]) -> str | None:
    """A field of the project's own: its constant, or its column(s) read from attrs."""
    if mapping.constant is not None:
        return mapping.constant
    return join_parts([_attr(attrs, c) for c in mapping.read_from])


def _load(attrs: str | None) -> dict[str, Any]:
    if not attrs:
        return {}
    try:
        loaded = json.loads(attrs)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}
