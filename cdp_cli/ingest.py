"""Ingest: read a source's export, map it onto canonical fields, and store it as one batch.

A file lands whole or not at all: its rows, its rejects and its batch's counts are written in
one transaction, so a killed run leaves nothing behind and a rerun ingests the file again. A
file whose sha256 is already in a finished batch is skipped, and a row whose natural key is
stored already is updated in place, so running the same command twice never duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import sqlite3
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cdp_cli import ingest_set, readers
from cdp_cli.canonical import (
    DATE,
    INTEGER,
    ITEM_FIELDS,
    JSON,
    NUMBER,
    TEXT,
    TIMESTAMP,
    Field,
)
from cdp_cli.config import Config, FieldMapping, Source
from cdp_cli.errors import IngestError, UsageError, system_fault
from cdp_cli.identity.fields import join_parts, own_value
from cdp_cli.identity.normalize import identity_key
from cdp_cli.identity.tombstones import FORGOTTEN_RAW, Screen, Tombstones
from cdp_cli.integrity import is_damage, store_file
from cdp_cli.parsing import (
    JSON_ENCODER,
    TimestampParser,
    parse_date,
    parse_integer,
    parse_number,
    to_json,
)
from cdp_cli.privacy import quote_cells
from cdp_cli.readers import Progress
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import indexes_built_after, insert_row, now_iso, sorting_cache, transaction

CHUNK_ROWS = 5000
# Whether a CSV or JSON Lines file may be mapped as set work (ingest_set); False maps every
# row with RowMapper, the definition the set path is tested against (tests/test_ingest_sql.py,
# tests/test_ingest_jsonl_sql.py).
SET_WORK = True
_JSON = JSON_ENCODER
ProgressCallback = Callable[[int, int], None]
_NOT_SEEN = object()


@dataclass
class IngestResult:
    """What one file's ingest did; `status` is done, skipped (seen before) or failed."""

    source: str
    file: str
    status: str
    batch_id: int | None = None
    encoding: str | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    message: str = ""
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ---------------------------------------------------------------------------------------------
# Batches


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abort_stale_batches(db: sqlite_utils.Database) -> int:
    """Mark batches left 'running' by a process that died; their rows were rolled back."""
    stale = [
        batch_id
        for batch_id, pid in db.conn.execute("SELECT id, pid FROM batches WHERE status='running'")
        if pid != os.getpid() and not _pid_alive(pid)
    ]
    for batch_id in stale:
        db.conn.execute(
            "UPDATE batches SET status='aborted', error='the process ingesting it stopped' "
            "WHERE id=?",
            (batch_id,),
        )
    return len(stale)


def _upsert_sql(table: str, columns: list[str]) -> str:
    marks = ", ".join("?" * (len(columns) + 5))
    return f"{_insert_into(table, columns)} VALUES ({marks}) {_on_conflict(table, columns)}"


def _insert_into(table: str, columns: list[str]) -> str:
    names = ", ".join(["source", "key", *columns, "attrs", "batch_id", "line"])
    return f"INSERT INTO {table} ({names})"


def _on_conflict(table: str, columns: list[str]) -> str:
    """A row stored already is updated, and counted as written, only where it changed."""
    content = [*columns, "attrs"]
    updates = ", ".join(f"{c}=excluded.{c}" for c in [*content, "batch_id", "line"])
    old = ", ".join(f"{table}.{c}" for c in content)
    new = ", ".join(f"excluded.{c}" for c in content)
    return f"ON CONFLICT(source, key) DO UPDATE SET {updates} WHERE ({old}) IS NOT ({new})"


def ingest_file(
    db: sqlite_utils.Database,
    source: Source,
    path: Path,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
    screen: Screen | None = None,
) -> IngestResult:
    """Ingest one file as one batch of `source`; a file seen before is skipped unless forced.

    With a `screen`, rows that carry an identifier of a forgotten person are refused.
    """
    started = time.monotonic()
    path = path.absolute()
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if not path.is_file():  # a pipe or a device: a file is read twice (its sha256, its rows)
        raise IngestError(f"{path}: not a regular file; save the export to a file and ingest that")
    sha256 = file_sha256(path)
    seen = db.conn.execute(
        "SELECT id FROM batches WHERE source=? AND sha256=? AND status='done' "
        "ORDER BY id DESC LIMIT 1",
        (source.name, sha256),
    ).fetchone()
    if seen and not force:
        return IngestResult(
            source.name,
            str(path),
            "skipped",
            batch_id=seen[0],
            message=f"seen in batch {seen[0]}",
        )
    fmt = source.format_for(path)
    encoding = readers.detect_encoding(path, source.encoding)
    abort_stale_batches(db)
    batch_id = insert_row(
        db.conn,
        "INSERT INTO batches (source, kind, file, sha256, size, encoding, status, pid, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
        (source.name, source.kind.name, str(path), sha256, path.stat().st_size, encoding,
         os.getpid(), now_iso()),
    )  # fmt: skip
    result = IngestResult(source.name, str(path), "done", batch_id=batch_id, encoding=encoding)
    try:
        with transaction(db) as conn:
            _load(conn, source, path, fmt, encoding, result, on_progress, screen)
            conn.execute(
                "UPDATE batches SET status='done', finished_at=?, rows_read=?, rows_inserted=?, "
                "rows_updated=?, rows_unchanged=?, rows_rejected=?, rows_skipped=? WHERE id=?",
                (now_iso(), result.rows_read, result.inserted, result.updated, result.unchanged,
                 result.rejected, result.skipped, batch_id),
            )  # fmt: skip
    except BaseException as exc:
        if is_damage(exc):  # rolled back; nothing more is written into a damaged store
            raise
        status = "failed" if isinstance(exc, Exception) else "aborted"
        fault = system_fault(exc, store_file(db.conn))  # a full disk: the batch says so
        message = str(fault or exc) or type(exc).__name__
        _record_failure(db, batch_id, status, message)
        if fault is not None:
            raise fault from None
        if isinstance(exc, IngestError):
            raise IngestError(f"{path}: {exc}") from None
        if isinstance(exc, (sqlite3.DataError, RecursionError)):
            raise IngestError(f"{path}: {message}") from None
        raise
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _record_failure(db: sqlite_utils.Database, batch_id: int, status: str, message: str) -> None:
    """Mark the batch failed (or aborted) with why. When the disk is too full for even that,
    the batch stays 'running', and the next ingest marks it aborted."""
    with contextlib.suppress(sqlite3.OperationalError):  # the first error is the one to tell
        db.conn.execute(
            "UPDATE batches SET status=?, finished_at=?, error=? WHERE id=?",
            (status, now_iso(), message, batch_id),
        )


def _load(
    conn: sqlite3.Connection,
    source: Source,
    path: Path,
    fmt: str,
    encoding: str,
    result: IngestResult,
    on_progress: ProgressCallback | None,
    screen: Screen | None = None,
) -> None:
    table = source.kind.table
    # Loaded inside the file's transaction: a `cdp forget` committed before it is always seen.
    tombstones = screen.load(conn) if screen else None
    # A new row's id is one above the largest (SQLite's rowid, without AUTOINCREMENT), and
    # an upsert that updates takes none: the largest id before and after tells how many
    # rows were inserted, where counting the source's rows would read all of them twice.
    last_id = _largest_id(conn, table)
    # Into an empty table (a first load), the secondary indexes are built once at the end.
    first_load = last_id == 0 and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
    with (
        indexes_built_after(conn, table, first_load),
        readers.open_rows(path, fmt, encoding, source.delimiter, source.limits, source.columns) as (
            header,
            rows,
            progress,
        ),
    ):
        mapper = RowMapper(source, header)
        loader = _RowLoader(conn, mapper, result, tombstones)
        plan = None
        if SET_WORK and header is not None and tombstones is None:
            plan = ingest_set.plan_for(mapper, header, source.limits.attrs_bytes)
        json_plan = None
        if SET_WORK and header is None and fmt == "jsonl" and tombstones is None:
            json_plan = ingest_set.json_plan_for(mapper)
        if plan is not None:
            changed = _load_set(conn, plan, loader, rows, progress, on_progress)
        elif json_plan is not None:
            changed = _load_json(conn, json_plan, loader, rows, progress, on_progress)
        else:
            changed = loader.load(rows, progress, on_progress)
        if on_progress:
            on_progress(progress.total, progress.total)
    result.inserted = _largest_id(conn, table) - last_id
    result.updated = changed - result.inserted
    result.rejected = sum(result.reject_reasons.values())
    result.unchanged = result.rows_read - result.rejected - result.inserted - result.updated


def _largest_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)


class _RowLoader:
    """The row-by-row path: each row mapped by RowMapper and upserted, in chunks."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        mapper: RowMapper,
        result: IngestResult,
        tombstones: Tombstones | None,
    ) -> None:
        self.conn = conn
        self.mapper = mapper
        self.result = result
        self.tombstones = tombstones
        columns = [*mapper.columns, *(["items"] if mapper.has_items else []), "identity_key"]
        self.columns = columns
        self.upsert = _upsert_sql(mapper.source.kind.table, columns)
        self.insert_rejects = INSERT_REJECTS

    def load(
        self, rows: Iterator[Any], progress: Progress, on_progress: ProgressCallback | None
    ) -> int:
        """Map and upsert every row; returns the rows written (inserted or changed)."""
        conn, result = self.conn, self.result
        pending: list[tuple[Any, ...]] = []
        rejects: list[tuple[Any, ...]] = []
        changed = 0
        for line, row, error, raw in rows:
            if row is None and error is None:
                result.skipped += 1
                continue
            result.rows_read += 1
            mapped = self.map(line, row, error, raw, rejects)
            if mapped is not None:
                pending.append(mapped)
            if len(pending) >= CHUNK_ROWS:
                changed += conn.executemany(self.upsert, pending).rowcount
                pending.clear()
                if on_progress:
                    on_progress(progress.done, progress.total)
            if len(rejects) >= CHUNK_ROWS:
                conn.executemany(self.insert_rejects, rejects)
                rejects.clear()
        if pending:
            changed += conn.executemany(self.upsert, pending).rowcount
        if rejects:
            conn.executemany(self.insert_rejects, rejects)
        return changed

    def map(
        self, line: int, row: Any, error: str | None, raw: Any, rejects: list[tuple[Any, ...]]
    ) -> tuple[Any, ...] | None:
        """The row to upsert (source, key, values, attrs, batch, line), or None with its
        reject appended to `rejects`."""
        mapper, tombstones = self.mapper, self.tombstones
        name, batch_id = mapper.source.name, self.result.batch_id
        try:
            if error is not None:
                raise RowRejected(_problem_of(error), error)
            key, values, attrs = mapper.map(row)
            if tombstones is not None:
                hit = tombstones.row_hit(values[-1], mapper.identity_fields(values))
                if hit:
                    raise RowRejected("forgotten", f"carries a forgotten {hit}", hit)
            if key is None:
                key = _content_key(values, attrs)
            return (name, key, *values, attrs, batch_id, line)
        except RowRejected as rejected:
            # A row too large is not kept whole a second time: its line finds it.
            too_large = rejected.problem == "too_large"
            raw_text = None if too_large else _raw_text(raw or row, mapper.header)
            if tombstones is not None and (
                rejected.problem == "forgotten" or tombstones.mentioned_in(raw_text or "")
            ):
                raw_text = FORGOTTEN_RAW  # never the forgotten person's bytes
            rejects.append(
                (batch_id, name, line, rejected.problem, rejected.field, rejected.reason,
                 raw_text)
            )  # fmt: skip
            reasons = self.result.reject_reasons
            reasons[rejected.problem] = reasons.get(rejected.problem, 0) + 1
            return None


def _load_set(
    conn: sqlite3.Connection,
    plan: ingest_set.SetPlan,
    loader: _RowLoader,
    rows: Iterator[Any],
    progress: Progress,
    on_progress: ProgressCallback | None,
) -> int:
    """A CSV file as set work (see ingest_set): cells staged, then mapped in SQL, with
    RowMapper for the rows SQL does not take. Returns the rows written."""
    result = loader.result
    stage, leftover = ingest_set.create_stage(conn, plan, len(loader.columns))
    leftovers = _Leftovers(conn, loader, leftover)
    identity_of = plan.identity_of_cells
    staged: list[tuple[Any, ...]] = []
    for line, row, error, raw in rows:
        if row is None and error is None:
            result.skipped += 1
            continue
        result.rows_read += 1
        if error is not None:
            leftovers.map(line, row, error, raw)
            continue
        # Cells are staged stripped, as RowMapper reads them: SQL's trim() knows only
        # the characters it is given, and is slow with many. The row as read is kept
        # where it differs, for its attrs and rejects.
        cells = list(map(str.strip, row))
        written = None if cells == row else _JSON.encode(row)
        if identity_of:
            staged.append((line, *cells, written, identity_of(cells)))
        else:
            staged.append((line, *cells, written))
        if len(staged) >= CHUNK_ROWS:
            plan.stage(conn, stage, staged)
            staged.clear()
            if on_progress:
                on_progress(progress.done, progress.total)
    plan.stage(conn, stage, staged)
    plan.build(conn)
    found = conn.execute(plan.leftovers_sql(), plan.params)
    while chunk := found.fetchmany(CHUNK_ROWS):
        for line, written, *cells in chunk:
            leftovers.map(line, cells if written is None else json.loads(written), None, None)
    leftovers.flush()
    table, names = loader.mapper.source.kind.table, loader.columns
    values = ", ".join(f"v{i}" for i in range(len(names)))
    changed = conn.execute(
        f"{_insert_into(table, names)} SELECT :source, key, {values}, attrs, :batch_id, line "
        f"FROM ({ingest_set.mapped_rows_sql(plan, leftovers.mapped)}) WHERE 1 "
        f"{_on_conflict(table, names)}",
        {**plan.params, "source": loader.mapper.source.name, "batch_id": result.batch_id},
    ).rowcount
    if result.reject_reasons:  # a file without rejects writes nothing there, as row by row
        conn.execute(
            "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
            f"SELECT * FROM {ingest_set.STAGED_REJECTS} ORDER BY line"
        )
    # On failure the file's rollback takes the temporary tables with it.
    ingest_set.drop_stage(conn)
    return changed


def _load_json(
    conn: sqlite3.Connection,
    plan: ingest_set.JsonPlan,
    loader: _RowLoader,
    rows: Iterator[Any],
    progress: Progress,
    on_progress: ProgressCallback | None,
) -> int:
    """A JSON Lines file as set work (see ingest_set.JsonPlan): each parsed row's values
    staged as `take` gives them, or as RowMapper maps a row it does not take; then one
    `INSERT … SELECT` types and writes them all. Returns the rows written."""
    result = loader.result
    assert result.batch_id is not None
    stage_taken, stage_mapped = plan.prepare(conn)
    take = plan.take
    taken: list[tuple[Any, ...]] = []  # rows SQL maps,
    mapped: list[tuple[Any, ...]] = []  # rows RowMapper mapped: key, values, attrs, line
    rejects: list[tuple[Any, ...]] = []

    def stage() -> None:
        plan.add_hours(conn, taken)
        conn.executemany(stage_taken, taken)
        conn.executemany(stage_mapped, mapped)
        taken.clear()
        mapped.clear()

    for line, row, error, raw in rows:
        if row is None and error is None:
            result.skipped += 1
            continue
        result.rows_read += 1
        values = take(row, line) if error is None else None
        if values is not None:
            taken.append(values)
        else:
            one = loader.map(line, row, error, raw, rejects)
            if one is not None:
                mapped.append((*one[1:-2], line))
        if len(taken) >= CHUNK_ROWS or len(mapped) >= CHUNK_ROWS:
            stage()
            if on_progress:
                on_progress(progress.done, progress.total)
        if len(rejects) >= CHUNK_ROWS:
            conn.executemany(loader.insert_rejects, rejects)
            rejects.clear()
    stage()
    if rejects:
        conn.executemany(loader.insert_rejects, rejects)
    table, names = loader.mapper.source.kind.table, loader.columns
    by_key = result.rows_read > ingest_set.JSON_KEY_ORDER_FROM
    select = plan.select(loader.mapper.source.name, result.batch_id, by_key)
    insert = f"{_insert_into(table, names)} {select} {_on_conflict(table, names)}"
    # In key order the writes need few pages cached: a small cache for the sort and writes.
    with sorting_cache(conn) if by_key else contextlib.nullcontext():
        changed = conn.execute(insert).rowcount
    # On failure the file's rollback takes the temporary tables with it.
    ingest_set.drop_stage(conn)
    return int(changed)


class _Leftovers:
    """The rows of a set-path file that RowMapper maps: their mapped rows (line, key,
    values, attrs) and their rejects go to temporary tables, to join SQL's in line order."""

    def __init__(self, conn: sqlite3.Connection, loader: _RowLoader, insert: str) -> None:
        self.conn = conn
        self.loader = loader
        self.insert = insert
        self.rows: list[tuple[Any, ...]] = []
        self.rejects: list[tuple[Any, ...]] = []
        self.mapped = 0

    def map(self, line: int, row: Any, error: str | None, raw: Any) -> None:
        mapped = self.loader.map(line, row, error, raw, self.rejects)
        if mapped is not None:
            self.rows.append((line, *mapped[1:-2]))
            self.mapped += 1
        if len(self.rows) >= CHUNK_ROWS or len(self.rejects) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        self.conn.executemany(self.insert, self.rows)
        self.conn.executemany(ingest_set.stage_rejects_sql(), self.rejects)
        self.rows.clear()
        self.rejects.clear()


INSERT_REJECTS = (
    "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _problem_of(error: str) -> str:
    if error.startswith(readers.TOO_LARGE):
        return "too_large"
    if error.startswith("bytes that do not decode"):
        return "undecodable"
    if error.startswith("expected") and "columns" in error:
        return "column_count"
    if error.startswith("expected a JSON object"):
        return "not_an_object"
    return "invalid_json" if "JSON" in error else "unreadable"


def _content_key(values: list[Any], attrs: str | None) -> str:
    """A key for rows without a natural one: the same content is the same row."""
    return hashlib.blake2b(repr((values, attrs)).encode(), digest_size=12).hexdigest()


def _raw_text(row: Any, header: list[str] | None) -> str | None:
    """The row as it was read, for the rejects table; undecodable bytes are shown escaped."""
    if row is None:
        return None
    if isinstance(row, bytes):
        return row.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    if isinstance(row, list) and header is not None:
        text = ",".join(row)
    else:
        text = json.dumps(row, ensure_ascii=False)
    return _SURROGATE.sub(_escaped, text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    """A byte that did not decode (kept as U+DC00 + byte) as \\xNN; any other lone
    surrogate as \\uXXXX: SQLite stores UTF-8, which has no room for them."""
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC00 <= code <= 0xDCFF else f"\\u{code:04x}"


def ingest(
    db: sqlite_utils.Database,
    config: Config,
    source_name: str | None = None,
    paths: list[Path] | None = None,
    *,
    force: bool = False,
    on_file: Callable[[Source, Path], ProgressCallback | None] | None = None,
) -> list[IngestResult]:
    """Ingest the given files into one source, or every declared file of one or all sources."""
    if paths and source_name is None:
        raise UsageError("name the source these files come from with --source")
    sources = [config.source(source_name)] if source_name else list(config.sources.values())
    screen = Screen(config.identity, config.region)
    results = []
    for source in sources:
        files = paths if paths else config.files_of(source)
        for path in files:
            on_progress = on_file(source, path) if on_file else None
            results.append(
                ingest_file(db, source, path, force=force, on_progress=on_progress, screen=screen)
            )
    return results
