"""Mapping one row of a source's export onto canonical fields: RowMapper, the definition of
what a row becomes (its typed values, attrs, identity key) or why it is rejected. The set
path (ingest_set) maps most rows in SQL and is tested to store exactly what this does."""

from __future__ import annotations

import json
import operator
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cdp_cli import readers
from cdp_cli.canonical import DATE, INTEGER, ITEM_FIELDS, JSON, NUMBER, TEXT, TIMESTAMP, Field
from cdp_cli.config import FieldMapping, Source
from cdp_cli.errors import IngestError
from cdp_cli.identity.fields import join_parts, own_value
from cdp_cli.identity.normalize import identity_key
from cdp_cli.parsing import (
    JSON_ENCODER,
    TimestampParser,
    parse_date,
    parse_integer,
    parse_number,
    to_json,
)
from cdp_cli.privacy import quote_cells

_JSON = JSON_ENCODER
_NOT_SEEN = object()


class RowRejected(Exception):
    """A row cannot be stored; `problem` is a short code for grouping, `field` the culprit."""

    def __init__(self, problem: str, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.field = field


# ---------------------------------------------------------------------------------------------
# Mapping a row onto canonical fields


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return to_json(value)
    return str(value)


_PROBLEMS = {NUMBER: "bad_number", INTEGER: "bad_number", TIMESTAMP: "bad_timestamp"}


Converter = Callable[[Any, dict[str, Any]], Any]


def _converter(mapping: FieldMapping, spec: Field, source: Source) -> Converter:
    """`convert(raw, invalid)` for one field: typed value, None, or RowRejected if required.

    An optional value that does not parse is recorded in `invalid` and stored as None.
    """
    name, required, synonyms, choices = spec.name, spec.required, mapping.values, spec.choices
    problem = _PROBLEMS.get(spec.type, "bad_date")
    formats = mapping.formats + source.timestamp_formats
    timestamps = TimestampParser(zoneinfo.ZoneInfo(source.timezone), formats)
    parsers: dict[str, Callable[[Any], Any]] = {
        NUMBER: _parse_float,
        INTEGER: parse_integer,
        TIMESTAMP: timestamps,
        DATE: lambda v: parse_date(v, mapping.formats),
    }
    parse = parsers.get(spec.type)
    if spec.type == JSON:
        return _json_text

    def convert(raw: Any, invalid: dict[str, Any]) -> Any:
        text: str | int | float | None
        if type(raw) is str:
            text = raw.strip() or None
        elif parse is not None and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            text = raw
        else:
            text = _text(raw)
        if text is None:
            if required:
                raise RowRejected("missing", f"{name}: missing", name)
            return None
        if synonyms and type(text) is str:
            text = synonyms.get(text.casefold(), text)
        if choices and text not in choices:
            if required or spec.refuse_unknown:
                raise RowRejected("unknown_value", unknown_value_reason(spec, text), name)
            invalid[name] = text
            return None
        if parse is None:
            return text
        try:
            return parse(text)
        except (ValueError, OverflowError) as exc:
            if required:
                raise RowRejected(problem, f"{name}: {exc}", name) from None
            invalid[name] = text
            return None

    if synonyms:
        return _per_distinct_value(convert)
    if spec.type == NUMBER:
        return _per_distinct_value(_fast_number(convert))
    if spec.type == TIMESTAMP and not formats:
        return _per_distinct_value(_fast_timestamp(convert, timestamps))
    return _per_distinct_value(convert)


def _json_text(raw: Any, invalid: dict[str, Any]) -> str | None:
    """A JSON field's text; a parsed object is encoded by the shared encoder (to_json's
    json.dumps with options builds an encoder per call, and JSON Lines events all have one)."""
    if raw is None or raw == "":
        return None
    if type(raw) is dict or type(raw) is list:
        return _JSON.encode(raw)
    return to_json(raw)


# A converter remembers this many distinct raw strings, then starts again; a column whose values
# did not repeat at least as often as they were new (timestamps to the second) stops remembering.
DISTINCT_CACHE = 20_000


def _per_distinct_value(convert: Converter) -> Converter:
    """`convert`, run once per distinct raw string rather than per row: most columns repeat a
    few values (a gender, a city, a level, a birthday), and their synonyms, choices and parsing
    cost the same each time. Only a clean result is remembered: a value that is invalid or
    rejects the row goes through `convert` every time, so each row records its own reason."""
    cache: dict[str, Any] = {}
    hits = 0
    remember = True

    def cached(raw: Any, invalid: dict[str, Any]) -> Any:
        nonlocal hits, remember
        if type(raw) is not str or not remember:
            return convert(raw, invalid)
        try:
            value = cache[raw]
        except KeyError:
            pass
        else:
            hits += 1
            return value
        found: dict[str, Any] = {}
        value = convert(raw, found)
        if found:
            invalid.update(found)
            return value
        if len(cache) >= DISTINCT_CACHE:
            remember = hits >= len(cache)
            cache.clear()
            hits = 0
        cache[raw] = value
        return value

    return cached


def unknown_value_reason(spec: Field, value: Any) -> str:
    """Why a value of a field with choices was refused, and how to make cdp understand it."""
    return (
        f"{spec.name}: {value!r} is not one of {', '.join(spec.choices)}; "
        f"map it with `values:` on the field in cdp.yaml"
    )


# Fast paths for the common case, a plain string in the usual form; anything else goes the
# general way. They run once per field per row, which is where ingest spends its time.


def _fast_number(convert: Converter) -> Converter:
    def fast(raw: Any, invalid: dict[str, Any]) -> Any:
        if type(raw) is str and "_" not in raw:
            try:
                number = float(raw)
            except ValueError:
                return convert(raw, invalid)
            if number - number == 0.0:  # not inf or nan
                return number
        return convert(raw, invalid)

    return fast


def _fast_timestamp(convert: Converter, parser: TimestampParser) -> Converter:
    local, epoch = parser.local, parser.epoch

    def fast(raw: Any, invalid: dict[str, Any]) -> Any:
        if type(raw) is str:
            value = local(raw)
            if value is not None:
                return value
        elif type(raw) is int and 0 <= raw < 10**13:
            return epoch(raw)
        return convert(raw, invalid)

    return fast


def _parse_float(value: Any) -> float:
    """parse_number, with the plain case (a finite decimal) first."""
    try:
        number = float(value)
    except (ValueError, TypeError):
        return parse_number(value)
    if number - number != 0.0 or (type(value) is str and "_" in value):  # inf, nan, 1_000
        return parse_number(value)
    return number


def _picker(indexes: list[int]) -> Callable[[list[str]], tuple[str, ...]]:
    """The cells at `indexes` of a CSV row, in one C call where there are several."""
    if not indexes:
        return lambda row: ()
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: (row[index],)
    return operator.itemgetter(*indexes)


def _json_getter(column: str) -> Callable[[dict[str, Any]], Any]:
    parts = column.split(".")

    def get(obj: dict[str, Any]) -> Any:
        if column in obj:
            return obj[column]
        value: Any = obj
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return get


def _pop_path(obj: dict[str, Any], column: str) -> None:
    """Remove a mapped value from a JSON row, so what is left over becomes its attrs."""
    if column in obj:
        del obj[column]
        return
    parts = column.split(".")
    if len(parts) == 2:  # the usual nesting, kept short: it runs for every row
        parent = obj.get(parts[0])
        if isinstance(parent, dict):
            parent.pop(parts[1], None)
            if not parent:
                del obj[parts[0]]
        return
    parents = [obj]
    for part in parts[:-1]:
        child = parents[-1].get(part)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(parts[-1], None)
    for parent, part in zip(reversed(parents[:-1]), reversed(parts[:-1]), strict=True):
        if parent.get(part) == {}:
            del parent[part]


class RowMapper:
    """Maps rows of one file (a CSV header, or JSON objects) onto the source's fields."""

    def __init__(self, source: Source, header: list[str] | None) -> None:
        self.source = source
        self.header = header
        self.has_items = source.items is not None
        self._attrs_bytes = source.limits.attrs_bytes
        mappings = list(source.fields.values())
        # Text columns that need only trimming take a fast path: all of them fetched in one
        # C call per row (an itemgetter for CSV, dict.get mapped over the names for JSON).
        plain = [
            m for m in mappings
            if m.column and not m.values and (header is not None or "." not in m.column)
            and source.kind.field(m.name).type == TEXT  # type: ignore[union-attr]
            and not source.kind.field(m.name).choices  # type: ignore[union-attr]
        ]  # fmt: skip
        typed = [m for m in mappings if m not in plain]
        self.plain_mappings, self.typed_mappings = plain, typed
        self.columns = [m.name for m in plain + typed]
        # Required text fields on the fast path (an event's type, a coupon's code): checked
        # here, as _converter checks the typed ones.
        self._required_plain = [
            (i, m.name)
            for i, m in enumerate(plain)
            if source.kind.field(m.name).required  # type: ignore[union-attr]
        ]
        if header is not None:
            self._pick_plain = _picker([self._index(m) for m in plain])
        else:
            self._plain_keys = [m.column for m in plain]
        self._typed = [
            (self._getter(m), _converter(m, source.kind.field(m.name), source))  # type: ignore[arg-type]
            for m in typed
        ]
        # A field required only in some rows (an opt-in's time): (its index or -1, its name,
        # the index of the field it depends on, the value that makes it required).
        self._required_if = [
            (self._position(spec.name), spec.name, self._position(other), value)
            for spec in source.kind.fields
            if spec.required_if
            for other, value in [spec.required_if]
        ]
        identity_names = set(source.identity_fields)
        self._own_identity = [
            (n, m) for n, m in source.custom_fields.items() if n in identity_names
        ]
        for own in source.custom_fields.values():  # their columns stay in attrs: in the header?
            for column in own.read_from if header is not None else ():
                self._index(replace(own, column=column))
        self._identity = [(n, i) for i, n in enumerate(self.columns) if n in identity_names]
        self._identity_values = _picker([i for _, i in self._identity])
        self._identity_keys: dict[tuple[Any, ...], int | None] = {}
        self._identity_hits, self._remember_identity = 0, True
        # A key part uses the value of a field read from the same place, else the raw column.
        by_column = {m.column: m.name for m in plain}
        self._key = [
            (m.name, self._getter(m), self.columns.index(by_column.get(m.column, m.name)))
            if m.name in source.fields or m.column in by_column
            else (m.name, self._getter(m), -1)
            for m in source.key
        ]
        mapped = source.columns
        if source.items:
            self._items_getter = self._getter(FieldMapping("items", column=source.items.column))
            self._item_fields = [
                (m.name, _json_getter(m.column or m.name), m.column or m.name, spec)
                for spec in ITEM_FIELDS
                for m in [source.items.fields.get(spec.name, FieldMapping(spec.name, spec.name))]
            ]
        if header is not None:
            used = {header.index(c) for c in mapped}
            self._extra = [(i, name) for i, name in enumerate(header) if i not in used and name]
        else:
            self._mapped_top = sorted({c for c in mapped if "." not in c})
            self._mapped_paths = sorted(
                {c for c in mapped if "." in c}, key=lambda c: -c.count(".")
            )

    def _position(self, name: str) -> int:
        return self.columns.index(name) if name in self.columns else -1

    def _index(self, mapping: FieldMapping) -> int:
        assert self.header is not None and mapping.column is not None
        if mapping.column not in self.header:
            missing = f"column {mapping.column!r} (for {mapping.name.removeprefix('key:')})"
            raise IngestError(f"{missing} is not in the header; {self._header_problem()}")
        return self.header.index(mapping.column)

    def _header_problem(self) -> str:
        """What the header holds instead, its cells masked when it may be a row of data."""
        assert self.header is not None
        if readers.is_known_header(self.header, self.source.columns):
            return f"the columns are: {quote_cells(self.header, header=True)}" + (
                self._delimiter_hint()
            )
        return (
            "its first line holds none of the columns cdp.yaml maps: is the header row "
            f"missing? It reads: {quote_cells(self.header, header=False)}"
        )

    def _delimiter_hint(self) -> str:
        """A header read as one column may be split on the wrong character: say how to set it."""
        assert self.header is not None
        if len(self.header) != 1 or not self.header[0]:
            return ""
        delimiter = self.source.delimiter or ","
        split = {",": "commas", "\t": "tabs"}.get(delimiter, repr(delimiter))
        return (
            f" (read as one column, split on {split}: if the file is separated by another "
            f"character, set `delimiter:` for source {self.source.name!r} in cdp.yaml)"
        )

    def _getter(self, mapping: FieldMapping) -> Callable[[Any], Any]:
        if mapping.columns:  # `from: [surname, given_name]`: the columns joined
            parts = [self._getter(replace(mapping, column=c, columns=())) for c in mapping.columns]
            return lambda row: join_parts([_text(get(row)) for get in parts])
        if mapping.constant is not None:
            constant = mapping.constant
            return lambda row: constant
        if self.header is None:
            return _json_getter(mapping.column or mapping.name)
        index = self._index(mapping)
        return lambda row: row[index]

    def map(self, row: Any) -> tuple[str | None, list[Any], str | None]:
        """The row's natural key, its values (`columns`, then items, then identity_key), attrs."""
        invalid: dict[str, Any] = {}
        values: list[Any]  # text, then typed values, then the identity key
        if self.header is not None:
            values = [cell.strip() or None for cell in self._pick_plain(row)]
        else:
            values = [
                (value.strip() or None) if type(value) is str else _text(value)
                for value in map(row.get, self._plain_keys)
            ]
        for i, name in self._required_plain:
            if values[i] is None:
                raise RowRejected("missing", f"{name}: missing", name)
        values += [convert(get(row), invalid) for get, convert in self._typed]
        for i, name, depends, value in self._required_if:
            if (i < 0 or values[i] is None) and depends >= 0 and values[depends] == value:
                raise RowRejected("missing", f"{name}: missing (required when {value})", name)
        key = self._key_of(row, values)
        if self.has_items:
            values.append(self._items(row, invalid))
        attrs = self._attrs(row)
        if invalid:
            attrs["_invalid"] = invalid
        attrs_json = _JSON.encode(attrs) if attrs else None
        # A character is 1 to 4 bytes in UTF-8: count them only where that could matter.
        if attrs_json is not None and len(attrs_json) * 4 > self._attrs_bytes:
            self._check_attrs_size(attrs_json)
        if self._own_identity:  # fields of the project's own (kept in attrs) identify it too
            own = [(name, own_value(mapping, attrs)) for name, mapping in self._own_identity]
            values.append(identity_key([(n, values[i]) for n, i in self._identity] + own))
        else:
            values.append(self._identity_key(values))
        return key, values, attrs_json

    def _check_attrs_size(self, attrs_json: str) -> None:
        if len(attrs_json.encode("utf-8", "surrogatepass")) > self._attrs_bytes:
            over = readers.over_limit("attrs_bytes", self._attrs_bytes)
            reason = f"{readers.TOO_LARGE}the columns cdp.yaml does not map (attrs) are {over}"
            raise RowRejected("too_large", reason, "attrs")

    def _identity_key(self, values: list[Any]) -> int | None:
        """identity_key of the row's identity fields, hashed once per distinct combination:
        ten million events come from far fewer devices and members."""
        if not self._remember_identity:  # every row its own (customers): no use remembering
            return identity_key([(n, values[i]) for n, i in self._identity])
        raw = self._identity_values(values)
        key = self._identity_keys.get(raw, _NOT_SEEN)
        if key is not _NOT_SEEN:
            self._identity_hits += 1
            return key  # type: ignore[return-value]
        key = identity_key([(n, values[i]) for n, i in self._identity])
        if len(self._identity_keys) >= DISTINCT_CACHE:
            self._remember_identity = self._identity_hits >= len(self._identity_keys)
            self._identity_keys.clear()
            self._identity_hits = 0
        self._identity_keys[raw] = key
        return key

    def identity_fields(self, values: list[Any]) -> dict[str, Any]:
        """The identity fields among a mapped row's values, by canonical name."""
        return {name: values[i] for name, i in self._identity}

    def _key_of(self, row: Any, values: list[Any]) -> str | None:
        if not self._key:
            return None
        if len(self._key) == 1:  # the usual case, kept short: it runs once per row
            name, get, index = self._key[0]
            value = values[index] if index >= 0 else _text(get(row))
            if value is None:
                raise RowRejected("missing_key", f"missing key {name.removeprefix('key:')}")
            return value if type(value) is str else str(value)
        parts = []
        for name, get, index in self._key:
            value = values[index] if index >= 0 else _text(get(row))
            if value is None:
                raise RowRejected("missing_key", f"missing key {name.removeprefix('key:')}")
            parts.append(str(value))
        return "|".join(parts)

    def _attrs(self, row: Any) -> dict[str, Any]:
        if self.header is not None:
            if not self._extra:
                return {}
            return {name: row[i] for i, name in self._extra if row[i].strip()}
        for column in self._mapped_paths:
            _pop_path(row, column)
        pop = row.pop
        for column in self._mapped_top:
            pop(column, None)
        return row

    def _items(self, row: Any, invalid: dict[str, Any]) -> str | None:
        items = self._items_getter(row)
        if items is None or items == "":
            return None
        if isinstance(items, str):
            try:
                items = json.loads(items)
            except ValueError:
                invalid["items"] = items
                return None
        if not isinstance(items, list):
            invalid["items"] = items
            return None
        out = []
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                out.append({"value": item})
                continue
            mapped = dict(item)
            for name, get, column, spec in self._item_fields:
                value = get(item)
                mapped.pop(column, None)
                if spec.type == NUMBER and value not in (None, ""):
                    try:
                        value = parse_number(value)
                    except ValueError:
                        invalid[f"items[{position}].{name}"] = value
                        value = None
                else:
                    value = _text(value)
                mapped[name] = value
            out.append(mapped)
        return _JSON.encode(out)
