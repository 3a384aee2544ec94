"""Ingest as set work: a CSV file's cells are staged as read, then mapped in SQL; a JSON
Lines file's parsed values are bound straight into an `INSERT … SELECT` (JsonPlan, below).

Each row's cells, stripped, go into a temporary table with one `executemany` a chunk;
synonyms, choices, typing, the checks, the natural key and the attrs JSON then happen in
one `INSERT … SELECT` into the kind's table, in line order, with the same upsert as the row
path. RowMapper.map (mapping.py) stays the definition of what a row becomes: SQL takes a row
only where it gives the very same stored row. Every other row (a required value missing, a
value that does not convert cleanly, attrs that may be over their limit) is read back from
the stage and mapped by RowMapper, for its exact reject reason or `_invalid` attrs, and its
result joins SQL's in line order. tests/test_ingest_sql.py holds the two paths equal.

What SQL cannot say is worked out in Python once per distinct cell, into lookup tables
joined back (the clean values; the others send their rows to RowMapper): synonyms (matched
by Unicode's casefold; SQLite's lower() knows only ASCII), dates (the calendar, strptime's
formats), numbers (Python's float() grammar, thousands separators, currency signs), JSON
text, and timestamps in any but the usual forms. A timestamp in the usual form, 'YYYY-MM-DD
HH:MM[:SS]' (or with '/', or 'T'), is read in SQL, with its date and hour checked and the
zone's offset found once per distinct hour; so is one of epoch seconds or milliseconds (10 or
13 digits, as WeChat and app exports write them, each value distinct). Trimming happens as
the cells are staged: SQL's trim() knows only the characters it is given, and is slow with
many. The identity key is a blake2b hash, which SQLite has not: computed as the row is
staged where the identity fields are plain text, else by a function registered on the
connection.

A source the set path cannot take whole is mapped by RowMapper row by row: JSON (a JSON
Lines file is taken by JsonPlan where it can be), a store with tombstones (each row is
screened against forgotten people), a source without a natural key (its key is a hash of
the row's Python values), orders with items, a number as (part of) the key (Python and
SQLite write floats differently), a constant that does not convert, a field joined from
several columns, and identifiers of the project's own (identity/fields.py).
"""

from __future__ import annotations

import hashlib
import operator
import sqlite3
import zoneinfo
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from cdp_cli.canonical import JSON, NUMBER, TEXT, TIMESTAMP
from cdp_cli.identity.normalize import identity_key
from cdp_cli.parsing import JSON_ENCODER, TimestampParser


def sql_text(text: str) -> str:
    """A string as an SQL literal."""
    return "'" + text.replace("'", "''") + "'"


STAGE = "temp.cdp_stage"
LEFTOVERS = "temp.cdp_leftovers"
STAGED_REJECTS = "temp.cdp_rejects"
# The temporary tables' page cache: they hold the whole file's cells while it is mapped.
TEMP_CACHE_MB = 16

# The distinct cells of a typed column gathered in Python as it is staged, at most: past
# this, SQL finds them in the staged table.
DISTINCT_HELD = 100_000
_HOUR = operator.itemgetter(slice(0, 13))  # 'YYYY-MM-DD HH' of a timestamp as written
Converter = Callable[[Any, dict[str, Any]], Any]


def _identity_key_of(*pairs: Any) -> int | None:
    """identity.identity_key from (name, value, name, value, ...): the SQL function."""
    return identity_key(zip(pairs[::2], pairs[1::2], strict=True))


def register_functions(conn: sqlite3.Connection) -> None:
    """cdp_identity_key(name, value, ...), deterministic, so SQLite may call it less."""
    conn.create_function("cdp_identity_key", -1, _identity_key_of, deterministic=True)


def cell(index: int) -> str:
    """A staged cell (stripped), in SQL."""
    return f"s.c{index}"


def present(index: int) -> str:
    """`cell.strip() or None` of a staged cell: cells are staged stripped."""
    return f"NULLIF({cell(index)}, '')"


# ---------------------------------------------------------------------------------------------
# Epoch timestamps read in SQL: a number of seconds or milliseconds (a JSON number, or a CSV
# cell of 10 or 13 ASCII digits, which parse_timestamp reads as one), written as
# TimestampParser.epoch writes it, with the zone's offset looked up in a table of its hours.

_MILLIS_FROM = 100_000_000_000  # TimestampParser.epoch: from 1e11 a number is milliseconds
_EPOCH_TOO_LARGE = 10**13  # and up to here the row path reads it without the general parser


def _epoch_seconds(param: str) -> str:
    return f"(CASE WHEN {param} >= {_MILLIS_FROM} THEN {param} / 1000 ELSE {param} END)"


def _epoch_sql(param: str, hours: str) -> str:
    """TimestampParser.epoch of a bound integer (0 <= n < 10**13), in SQL: the local time by
    the zone's offset of its hour (from the hours table), then milliseconds where there are
    any, then the offset as written."""
    millis = f"(CASE WHEN {param} >= {_MILLIS_FROM} THEN {param} % 1000 ELSE 0 END)"
    local = f"strftime('%Y-%m-%dT%H:%M:%S', {_epoch_seconds(param)} + {hours}.seconds, 'unixepoch')"
    return (
        f"{local} || CASE WHEN {millis} = 0 THEN '' ELSE printf('.%03d', {millis}) END "
        f"|| {hours}.zone"
    )


def epoch_hour(number: int) -> int:
    """The hour (since 1970, UTC) TimestampParser.epoch looks a number's offset up by."""
    return (number // 1000 if number >= _MILLIS_FROM else number) // 3600


def epoch_offsets(zone: tzinfo, hours: Collection[int]) -> list[tuple[int, int, str]]:
    """Each epoch hour's row of an hours table: the hour, the zone's offset then in seconds,
    and as TimestampParser writes it."""
    offsets = []
    for hour in sorted(hours):
        start = datetime.fromtimestamp(hour * 3600, zone)
        offset = start.utcoffset()
        seconds = int(offset.total_seconds()) if offset is not None else 0
        offsets.append((hour, seconds, start.isoformat()[19:]))
    return offsets


def create_epoch_hours(conn: sqlite3.Connection, table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (hour INTEGER PRIMARY KEY, seconds INTEGER, zone TEXT)")


@dataclass
class TypedColumn:
    """A typed field read from a CSV column: converted once per distinct cell, in Python,
    into a table of clean values (joined back) and one of the others (their rows go to
    RowMapper). A plain timestamp column reads its usual written form and epoch numbers in
    SQL, with the zone's offset looked up per distinct hour."""

    position: int  # in RowMapper.columns
    cell: int
    convert: Converter
    timestamps: TimestampParser | None = None
    has_bad: bool = False
    # The distinct cells (for a timestamp, hours) seen as the rows were staged, gathered a
    # chunk at a time in C; None once there are too many to hold, and SQL finds them.
    seen: set[str] | None = field(default_factory=set)

    def collect(self, chunk: list[tuple[Any, ...]]) -> None:
        """Add a chunk of staged rows' cells (line first) to `seen`."""
        if self.seen is None:
            return
        cells = map(operator.itemgetter(self.cell + 1), chunk)
        if self.timestamps is not None:
            cells = map(_HOUR, cells)
        self.seen.update(cells)
        if len(self.seen) > DISTINCT_HELD:
            self.seen = None

    @property
    def values_table(self) -> str:
        return f"temp.cdp_values_{self.position}"

    @property
    def bad_table(self) -> str:
        return f"temp.cdp_bad_{self.position}"

    @property
    def hours_table(self) -> str:
        return f"temp.cdp_hours_{self.position}"

    @property
    def epoch_hours_table(self) -> str:
        return f"temp.cdp_epoch_hours_{self.position}"

    @property
    def joins(self) -> str:
        m = f"m{self.position}"
        join = f"LEFT JOIN {self.values_table} {m} ON {m}.raw = {cell(self.cell)}"
        if self.timestamps is None:
            return join
        h = f"h{self.position}"
        hour = f"substr({cell(self.cell)}, 1, 13)"
        return f"{join} LEFT JOIN {self.hours_table} {h} ON {h}.hour = {hour}"

    @property
    def value(self) -> str:
        if self.timestamps is None:
            return f"m{self.position}.value"
        c, h = cell(self.cell), f"h{self.position}"
        seconds = f"CASE WHEN length({c}) = 16 THEN ':00' ELSE '' END"
        iso = f"{h}.day || 'T' || substr({c}, 12) || {seconds} || {h}.zone"
        # A lookup only for an epoch cell (a join would cost every row one).
        number = self._number
        epoch = (
            f"(SELECT {_epoch_sql(number, 'e')} FROM {self.epoch_hours_table} e "
            f"WHERE e.hour = {_epoch_seconds(number)} / 3600)"
        )
        return (
            f"CASE WHEN {self.read_in_sql} THEN {iso} WHEN {self.epoch_like} THEN {epoch} "
            f"ELSE m{self.position}.value END"
        )

    @property
    def epoch_like(self) -> str:
        """True for a cell parse_timestamp reads as epoch seconds or milliseconds: 10 or 13
        digits, here ASCII ones (the others str.isdigit takes are left to Python)."""
        c = cell(self.cell)
        return f"(length({c}) IN (10, 13) AND {c} NOT GLOB '*[^0-9]*')"

    @property
    def _number(self) -> str:
        """The cell as an integer, for an epoch cell."""
        return f"CAST({cell(self.cell)} AS INTEGER)"

    def _epoch_hours(self, conn: sqlite3.Connection) -> set[int]:
        """The epoch hours of the column's epoch cells (see epoch_like). `seen` holds each
        cell's first 13 characters: all of a cell of 10 or 13."""
        if self.seen is not None:
            return {
                epoch_hour(int(v))
                for v in self.seen
                if len(v) in (10, 13) and v.isascii() and v.isdigit()
            }
        query = (
            f"SELECT DISTINCT {_epoch_seconds(self._number)} / 3600 FROM {STAGE} s "
            f"WHERE {self.epoch_like}"
        )
        return {hour for (hour,) in conn.execute(query)}

    @property
    def read_in_sql(self) -> str:
        """True for a timestamp SQL reads as TimestampParser.local does: its date and hour
        are in the hours table (valid ones only), its minutes and seconds up to 59."""
        c = cell(self.cell)
        return (
            f"h{self.position}.hour IS NOT NULL AND CASE length({c}) "
            f"WHEN 19 THEN substr({c}, 14) GLOB ':[0-5][0-9]:[0-5][0-9]' "
            f"WHEN 16 THEN substr({c}, 14) GLOB ':[0-5][0-9]' ELSE 0 END"
        )

    def build(self, conn: sqlite3.Connection) -> None:
        """The lookup tables, from the staged cells."""
        distinct = f"SELECT DISTINCT {cell(self.cell)} FROM {STAGE} s"
        conn.execute(
            f"CREATE TABLE {self.values_table} (raw TEXT PRIMARY KEY, value) WITHOUT ROWID"
        )
        conn.execute(f"CREATE TABLE {self.bad_table} (raw TEXT PRIMARY KEY) WITHOUT ROWID")
        if self.timestamps is not None:
            conn.execute(
                f"CREATE TABLE {self.hours_table} (hour TEXT PRIMARY KEY, day TEXT, zone TEXT) "
                "WITHOUT ROWID"
            )
            create_epoch_hours(conn, self.epoch_hours_table)
            conn.executemany(
                f"INSERT INTO {self.epoch_hours_table} VALUES (?, ?, ?)",
                epoch_offsets(self.timestamps.zone, self._epoch_hours(conn)),
            )
            hours = self.seen
            if hours is None:
                query = (
                    f"SELECT DISTINCT substr({cell(self.cell)}, 1, 13) FROM {STAGE} s "
                    f"WHERE NOT {self.epoch_like}"
                )
                hours = {hour for (hour,) in conn.execute(query)}
            conn.executemany(
                f"INSERT INTO {self.hours_table} VALUES (?, ?, ?)",
                _offsets(self.timestamps, sorted(hours)),
            )
            distinct += f" {self.joins} WHERE NOT ({self.read_in_sql}) AND NOT {self.epoch_like}"
            raws = [raw for (raw,) in conn.execute(distinct)]
        elif self.seen is not None:
            raws = sorted(self.seen)
        else:
            raws = [raw for (raw,) in conn.execute(distinct)]
        clean, bad = [], []
        for raw in raws:
            invalid: dict[str, Any] = {}
            try:
                value = self.convert(raw, invalid)
            except Exception:  # RowRejected: the row's reason is RowMapper's to give
                bad.append((raw,))
                continue
            if invalid:
                bad.append((raw,))
            else:
                clean.append((raw, value))
        conn.executemany(f"INSERT INTO {self.values_table} VALUES (?, ?)", clean)
        conn.executemany(f"INSERT INTO {self.bad_table} VALUES (?)", bad)
        self.has_bad = bool(bad)


_ASCII_DIGITS = frozenset("0123456789")


def _offsets(parser: TimestampParser, hours: list[str]) -> Iterator[tuple[str, str, str]]:
    """For each hour as written ('YYYY/MM/DD HH' or 'YYYY-MM-DDTHH') that is a valid one in
    a form TimestampParser.local reads: its date as YYYY-MM-DD and the zone's offset then, as
    TimestampParser writes them."""
    for hour in hours:
        if len(hour) != 13 or hour[10] not in " T" or hour[4] != hour[7] or hour[4] not in "-/":
            continue
        digits = hour[:4] + hour[5:7] + hour[8:10] + hour[11:]
        if not _ASCII_DIGITS.issuperset(digits):
            continue
        day = hour[:10].replace("/", "-")
        try:
            start = datetime.fromisoformat(f"{day} {hour[11:]}:00:00")
        except ValueError:
            continue
        yield hour, day, parser.offset(start)


@dataclass
class SetPlan:
    """The SQL that maps one CSV file's staged cells onto its source's table."""

    width: int  # cells per row
    values: list[str]  # an expression per RowMapper.columns
    key: str = ""
    identity: str = "NULL"
    attrs: str = "NULL"
    # Conditions under which RowMapper maps a row (a value missing, attrs near their limit);
    # the typed columns add theirs (a value that did not convert cleanly) once built.
    problems: list[str] = field(default_factory=list)
    typed: list[TypedColumn] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # The identity key of a row's cells, staged with them (column ik), where the identity
    # fields are plain text: hashed in Python as the row is read, rather than by a call
    # from SQLite back into Python per row.
    identity_of_cells: Callable[[list[str]], int | None] | None = None

    def stage(self, conn: sqlite3.Connection, insert: str, rows: list[tuple[Any, ...]]) -> None:
        """Stage a chunk of rows, and gather their typed cells' distinct values."""
        conn.executemany(insert, rows)
        for typed in self.typed:
            typed.collect(rows)

    def build(self, conn: sqlite3.Connection) -> None:
        register_functions(conn)
        for typed in self.typed:
            typed.build(conn)

    @property
    def _leftover(self) -> str:
        """True for a row RowMapper maps: never NULL (a NULL would lose the row)."""
        problems = self.problems + [
            f"{cell(t.cell)} IN (SELECT raw FROM {t.bad_table})" for t in self.typed if t.has_bad
        ]
        if not problems:
            return "0"
        return f"coalesce({' OR '.join(f'({p})' for p in problems)}, 1)"

    @property
    def joins(self) -> str:
        return " ".join(t.joins for t in self.typed)

    def select(self) -> str:
        """The mapped rows (key, values, identity key, attrs, line) SQL takes, in order."""
        values = [f"{v} AS v{i}" for i, v in enumerate([*self.values, self.identity])]
        columns = ", ".join(
            [f"{self.key} AS key", *values, f"{self.attrs} AS attrs", "s.line AS line"]
        )
        return (
            f"SELECT {columns} FROM {STAGE} s {self.joins} "
            f"WHERE NOT {self._leftover} ORDER BY s.line"
        )

    def leftovers_sql(self) -> str:
        """The staged rows SQL does not take, for RowMapper."""
        cells = ", ".join(cell(i) for i in range(self.width))
        return f"SELECT s.line, s.raw, {cells} FROM {STAGE} s {self.joins} WHERE {self._leftover}"


_NOT_SET_WORK = object()


def _constant(constant: Any, convert: Converter) -> Any:
    """A mapping's constant as RowMapper converts it, once for every row; _NOT_SET_WORK when
    it fails (every row is rejected, for RowMapper to say why) or sets other fields too."""
    found: dict[str, Any] = {}
    try:
        value = convert(constant, found)
    except Exception:  # a RowRejected
        return _NOT_SET_WORK
    return _NOT_SET_WORK if found else value


def plan_for(mapper: Any, header: list[str], attrs_bytes: int) -> SetPlan | None:
    """The SQL for a CSV file of this header, or None where the set path cannot take the
    source (see the module's docstring): RowMapper then maps every row."""
    source = mapper.source
    if not source.key or mapper.has_items or source.custom_fields:
        return None  # fields of the project's own identify rows as RowMapper computes them
    if any(m.columns for m in source.fields.values()):
        return None  # a field joined from several columns
    plain = mapper.plain_mappings
    plan = SetPlan(len(header), [present(header.index(m.column)) for m in plain])
    for offset, (mapping, (_, convert)) in enumerate(
        zip(mapper.typed_mappings, mapper._typed, strict=True)
    ):
        position = len(plain) + offset
        if mapping.constant is not None:
            value = _constant(mapping.constant, convert)
            if value is _NOT_SET_WORK:
                return None
            plan.params[f"k{position}"] = value
            plan.values.append(f":k{position}")
            continue
        spec = source.kind.field(mapping.name)
        plain_timestamp = (
            spec.type == TIMESTAMP
            and not mapping.values
            and not (mapping.formats + source.timestamp_formats)
        )
        parser = TimestampParser(zoneinfo.ZoneInfo(source.timezone)) if plain_timestamp else None
        typed = TypedColumn(position, header.index(mapping.column), convert, parser)
        plan.typed.append(typed)
        plan.values.append(typed.value)
    for index, _ in mapper._required_plain:
        plan.problems.append(f"{plan.values[index]} IS NULL")
    for number, (index, _, depends, value) in enumerate(mapper._required_if):
        if depends < 0:
            continue
        field_value = plan.values[index] if index >= 0 else "NULL"
        plan.params[f"r{number}"] = value
        plan.problems.append(f"{plan.values[depends]} IS :r{number} AND {field_value} IS NULL")
    key = _key(mapper, header, plan)
    if key is None:
        return None
    plan.key = key
    if mapper._identity and all(index < len(plain) for _, index in mapper._identity):
        cells = [(name, header.index(plain[index].column)) for name, index in mapper._identity]
        plan.identity_of_cells = _identity_of_cells(cells)
        plan.identity = "s.ik"
    else:
        pairs = [f"{sql_text(name)}, {plan.values[index]}" for name, index in mapper._identity]
        plan.identity = f"cdp_identity_key({', '.join(pairs)})" if pairs else "NULL"
    _attrs(mapper, plan, attrs_bytes)
    return plan


def _identity_of_cells(cells: list[tuple[str, int]]) -> Callable[[list[str]], int | None]:
    """identity.identity_key of a row's stripped cells (an empty one is no value), written
    out for speed: it runs once a row, and the general one builds a list of pairs first.
    tests/test_ingest_sql.py checks the two agree."""
    prefixes = [f"{name}\x1f" for name, _ in cells]
    indexes = [index for _, index in cells]
    # One index: a slice, so that the cells always come as a sequence.
    pick: Callable[[list[str]], Any] = (
        operator.itemgetter(*indexes)
        if len(indexes) > 1
        else operator.itemgetter(slice(indexes[0], indexes[0] + 1))
    )

    def key(row: list[str]) -> int | None:
        text = "\x1e".join([p + v for p, v in zip(prefixes, pick(row), strict=True) if v])
        if not text:
            return None
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    return key


def _key(mapper: Any, header: list[str], plan: SetPlan) -> str | None:
    """The natural key's expression (parts joined by |), each part checked present."""
    parts = []
    for number, (mapping, (_, _, index)) in enumerate(
        zip(mapper.source.key, mapper._key, strict=True)
    ):
        if index >= 0:
            spec = mapper.source.kind.field(mapper.columns[index])
            if spec is not None and spec.type == NUMBER:  # str(float) is Python's own
                return None
            part = plan.values[index]
            if index >= len(mapper.plain_mappings):
                part = f"CAST({part} AS TEXT)"
        elif mapping.constant is not None:
            plan.params[f"key{number}"] = mapping.constant.strip() or None
            part = f":key{number}"
        else:
            part = present(header.index(mapping.column))
        plan.problems.append(f"{part} IS NULL")
        parts.append(part)
    return " || '|' || ".join(parts)


def _attrs(mapper: Any, plan: SetPlan, limit: int) -> None:
    """The attrs JSON of the columns cdp.yaml does not map, as RowMapper writes it, and a
    check that it cannot be over limits.attrs_bytes (a row near it goes to RowMapper)."""
    if not mapper._extra:
        return
    members = []
    bound = ["2"]
    for index, name in mapper._extra:
        name_json = JSON_ENCODER.encode(name)
        # attrs keep a cell as written, spaces and all: in a row staged with its cells
        # stripped, the one in the row as read, as JSON_ENCODER wrote it there (`->>` would
        # decode it, and SQLite's text ends at a NUL character: "\x00 " became "").
        written = (
            f"CASE WHEN s.raw IS NULL THEN json_quote({cell(index)}) ELSE s.raw -> '$[{index}]' END"
        )
        members.append(
            f"CASE WHEN {cell(index)} <> '' "
            f"THEN ',' || {sql_text(name_json)} || ':' || {written} ELSE '' END"
        )
        # A character is at most 6 bytes of JSON (\u0000), and at least one byte of UTF-8.
        bound.append(f"{len(name_json.encode()) + 4} + 6 * length(CAST({cell(index)} AS BLOB))")
    bound.append("6 * coalesce(length(CAST(s.raw AS BLOB)), 0)")
    plan.attrs = f"NULLIF('{{' || substr({' || '.join(members)}, 2) || '}}', '{{}}')"
    plan.problems.append(f"{' + '.join(bound)} > {limit}")


# ---------------------------------------------------------------------------------------------
# The temporary tables of one file


def create_stage(conn: sqlite3.Connection, plan: SetPlan, columns: int) -> tuple[str, str]:
    """The temporary tables of one file; returns the INSERTs that stage a row (its line,
    cells and, where computed then, identity key) and a row RowMapper mapped (line, key,
    values, attrs)."""
    drop_stage(conn)
    conn.execute(f"PRAGMA temp.cache_size = -{TEMP_CACHE_MB * 1024}")
    width = plan.width + 1 + (plan.identity_of_cells is not None)
    # Each cell stripped, as RowMapper reads all but attrs; `raw`, the row as read (JSON),
    # where that differs.
    cells = [f"c{i} TEXT" for i in range(plan.width)] + ["raw TEXT"]
    if plan.identity_of_cells is not None:
        cells.append("ik INTEGER")
    conn.execute(f"CREATE TABLE {STAGE} (line INTEGER PRIMARY KEY, {', '.join(cells)})")
    values = ", ".join(f"v{i}" for i in range(columns))
    conn.execute(f"CREATE TABLE {LEFTOVERS} (line INTEGER PRIMARY KEY, key, {values}, attrs)")
    create_staged_rejects(conn)
    return (
        f"INSERT INTO {STAGE} VALUES ({', '.join('?' * (width + 1))})",
        f"INSERT INTO {LEFTOVERS} VALUES ({', '.join('?' * (columns + 3))})",
    )


def drop_stage(conn: sqlite3.Connection) -> None:
    names = conn.execute(
        "SELECT name FROM temp.sqlite_master WHERE type = 'table' AND name LIKE 'cdp\\_%' "
        "ESCAPE '\\'"
    ).fetchall()
    for (name,) in names:
        conn.execute(f"DROP TABLE temp.{name}")


def create_staged_rejects(conn: sqlite3.Connection) -> None:
    """Rejects held back to be written in line order after others (rejects' columns)."""
    conn.execute(
        f"CREATE TABLE {STAGED_REJECTS} (batch_id, source, line, problem, field, reason, raw)"
    )


def stage_rejects_sql() -> str:
    return f"INSERT INTO {STAGED_REJECTS} VALUES (?, ?, ?, ?, ?, ?, ?)"


def mapped_rows_sql(plan: SetPlan, leftovers: int) -> str:
    """Every mapped row in line order: SQL's, and RowMapper's where there were any."""
    if not leftovers:
        return plan.select()
    columns = ", ".join(f"v{i}" for i in range(len(plan.values) + 1))
    return (
        f"SELECT * FROM ({plan.select().removesuffix(' ORDER BY s.line')} "
        f"UNION ALL SELECT key, {columns}, attrs, line FROM {LEFTOVERS}) ORDER BY line"
    )


# ---------------------------------------------------------------------------------------------
# JSON Lines: parsed values staged, then typed and written by one `INSERT … SELECT`
#
# A JSON Lines file is parsed line by line by readers.read_jsonl (json.loads, as the
# baseline does; its checks of size, depth, lone surrogates and long strings stay where they
# are). `take` picks each object's values into a staged row; one `INSERT … SELECT` then
# reads epoch timestamps (the zone's offset per distinct hour), and writes every row with
# the row path's upsert, in line order, or in key order for a large file (see
# JSON_KEY_ORDER_FROM). What stays in Python per row is what a value's JSON type decides (a
# text value must be a string: RowMapper writes a number or a list as text in its own way),
# trimming (Python's strip, which SQL's trim() is not), the identity key (blake2b, once per
# distinct combination), the attrs check (a row whose keys are all mapped has none), and a
# timestamp written as text, which goes through RowMapper's own converter (its forms are
# many) and is staged converted. A row `take` does not take (a value of another type, a
# missing required value or key, attrs, a reader's reject) is mapped by RowMapper, for its
# exact reason or `_invalid` attrs, staged as mapped, and written in its place.
#
# Staging each raw line as text and extracting its fields with `->>` was measured faster on
# its own (200k events: 0.70 s of CPU to stage and extract, against 1.87 s for json.loads and
# binding), but was not built: the reader's checks and Python's reading of JSON (the last of
# a repeated key wins; numbers and escapes are written again by the encoder, in properties)
# would each need an SQL equivalent proven to give the same rows.


HOURS = "temp.cdp_epoch_hours"
JSON_STAGE = "temp.cdp_json"
# A JSON Lines file of more rows than this is written in key order: its rows' new ids then
# follow their keys, not their lines (the `line` column keeps each row's place). The
# UNIQUE (source, key) index of random event ids outgrows the page cache from a few million
# rows, and each insert in line order then reads a random index page back (through a WAL
# the size of the file): 10M events took 15 times as long as 1M. In key order the index is
# written from one end to the other. A file's new ids stay above those of the files before
# it, which is the order profiles read a customer's sources in (profiles.py, by rowid).
JSON_KEY_ORDER_FROM = 200_000
EPOCH, CONSTANT = "epoch", "constant"  # kinds of typed field beside TEXT and JSON


@dataclass
class JsonPlan:
    """How rows of a JSON Lines file are mapped in SQL: `take` picks a parsed row's values
    to stage (or None: RowMapper maps that row), and `select` turns the staged rows into
    stored ones. Epoch timestamps are read in SQL, with the zone's offset looked up in a
    table filled once per distinct hour; written ones come converted."""

    take: Callable[[dict[str, Any], int], tuple[Any, ...] | None]
    values: list[str]  # an expression per RowMapper.columns, then the identity key
    epochs: list[int]  # the staged columns (p1 is the key) that are timestamps
    parser: TimestampParser | None = None
    hours_known: set[int] = field(default_factory=set)

    @property
    def width(self) -> int:
        """Values staged per row: the key, one per column, the identity key."""
        return len(self.values) + 1

    def select(self, source: str, batch_id: int, by_key: bool) -> str:
        """The mapped rows (source, key, values, attrs, batch, line) of the staged ones, in
        line order, or in key order (see JSON_KEY_ORDER_FROM)."""
        columns = ", ".join(
            [sql_text(source), "s.p1", *self.values, "s.attrs", str(int(batch_id)), "s.line"]
        )
        # A timestamp staged as text is converted already (see json_plan_for).
        joins = " ".join(
            f"LEFT JOIN {HOURS} h{p} ON typeof(s.p{p}) = 'integer' "
            f"AND h{p}.hour = {_epoch_seconds(f's.p{p}')} / 3600"
            for p in self.epochs
        )
        order = "s.p1, s.line" if by_key else "s.line"
        return f"SELECT {columns} FROM {JSON_STAGE} s {joins} WHERE 1 ORDER BY {order}"

    def prepare(self, conn: sqlite3.Connection) -> tuple[str, str]:
        """The temporary tables; returns the INSERTs that stage a row `take` took (its
        values, line) and a row RowMapper mapped (its values, attrs, line)."""
        drop_stage(conn)
        conn.execute(f"PRAGMA temp.cache_size = -{TEMP_CACHE_MB * 1024}")
        staged = ", ".join(f"p{p}" for p in range(1, self.width + 1))
        conn.execute(f"CREATE TABLE {JSON_STAGE} (line INTEGER PRIMARY KEY, {staged}, attrs)")
        if self.epochs:
            create_epoch_hours(conn, HOURS)
        marks = ", ".join("?" * (self.width + 1))
        return (
            f"INSERT INTO {JSON_STAGE} ({staged}, line) VALUES ({marks})",
            f"INSERT INTO {JSON_STAGE} ({staged}, attrs, line) VALUES ({marks}, ?)",
        )

    def add_hours(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """The zone's offsets for the hours of these rows' epoch timestamps not seen before,
        staged with them: a row whose hour were missing would be written without its time."""
        if self.parser is None:
            return
        hours = {
            epoch_hour(row[p - 1]) for row in rows for p in self.epochs if type(row[p - 1]) is int
        }
        hours -= self.hours_known
        offsets = epoch_offsets(self.parser.zone, hours)
        conn.executemany(f"INSERT INTO {HOURS} VALUES (?, ?, ?)", offsets)
        self.hours_known |= hours


def json_plan_for(mapper: Any) -> JsonPlan | None:
    """The plan for a JSON Lines file of this source, or None where RowMapper maps every row:
    the same sources as plan_for leaves out, and fields SQL does not type here (numbers,
    dates, synonyms, choices, a path deeper than one level, required_if)."""
    source = mapper.source
    if not source.key or mapper.has_items or source.custom_fields or mapper._required_if:
        return None
    if any(m.columns for m in source.fields.values()):
        return None
    if any(c.count(".") > 1 for c in mapper._mapped_paths):
        return None
    # A row's attrs are empty when each of its keys is a mapped column, or an object that
    # holds only mapped values (RowMapper removes an object its mapped values left empty).
    top = frozenset(mapper._mapped_top)
    holders: dict[str, frozenset[str]] = {}
    for column in mapper._mapped_paths:
        parent, child = column.split(".")
        if parent not in top:
            holders[parent] = holders.get(parent, frozenset()) | {child}
    allowed = top | holders.keys()
    plain_keys: list[str] = [m.column for m in mapper.plain_mappings]
    values = [f"s.p{i + 2}" for i in range(len(plain_keys))]
    # A typed field: (its kind, its column split on '.', required, a constant's value or,
    # for a timestamp, RowMapper's converter of the written ones).
    typed: list[tuple[str, list[str], bool, Any]] = []
    epochs: list[int] = []
    parser = None
    for mapping, (_, convert) in zip(mapper.typed_mappings, mapper._typed, strict=True):
        position = len(plain_keys) + len(typed) + 2  # its bound parameter
        spec = source.kind.field(mapping.name)
        values.append(f"s.p{position}")
        if mapping.constant is not None:
            value = _constant(mapping.constant, convert)
            if value is _NOT_SET_WORK or not (value is None or isinstance(value, str)):
                return None
            typed.append((CONSTANT, [], False, value))
            continue
        if mapping.values or spec.choices:
            return None
        path = (mapping.column or mapping.name).split(".")
        if spec.type == TIMESTAMP and not (mapping.formats + source.timestamp_formats):
            parser = TimestampParser(zoneinfo.ZoneInfo(source.timezone))
            epochs.append(position)
            epoch = _epoch_sql(f"s.p{position}", f"h{position}")
            staged = f"s.p{position}"
            values[-1] = f"CASE WHEN typeof({staged}) = 'integer' THEN {epoch} ELSE {staged} END"
            typed.append((EPOCH, path, spec.required, convert))
        elif spec.type in (TEXT, JSON):
            typed.append((spec.type, path, spec.required, None))
        else:
            return None
    key_parts = []
    for mapping, (_, _, index) in zip(source.key, mapper._key, strict=True):
        if index >= len(plain_keys) and not _is_text(typed, index - len(plain_keys)):
            return None  # a typed value in the key: str() of a number is Python's own
        if index < 0 and (mapping.column is None or "." in mapping.column):
            return None
        key_parts.append((index, mapping.column))
    if any(
        not _is_text(typed, i - len(plain_keys))
        for _, i in mapper._identity
        if i >= len(plain_keys)
    ):
        return None
    required_plain = [i for i, _ in mapper._required_plain]
    identity_key_of = mapper._identity_key
    encode = JSON_ENCODER.encode
    epoch_limit = _EPOCH_TOO_LARGE
    # The plain columns in one C call where there are several and all are there.
    get_plain = operator.itemgetter(*plain_keys) if len(plain_keys) > 1 else None

    def plain_of(row: dict[str, Any]) -> Any:
        if get_plain is not None:
            try:
                return get_plain(row)
            except KeyError:
                pass
        return [row.get(k) for k in plain_keys]

    def take(row: dict[str, Any], line: int) -> tuple[Any, ...] | None:
        if not row.keys() <= allowed:
            return None  # attrs: RowMapper's
        for parent, children in holders.items():
            if parent in row:
                held = row[parent]
                if type(held) is not dict or not held.keys() <= children:
                    return None
        raw = plain_of(row)
        out: list[Any] = []
        for value in raw:
            if type(value) is str:
                out.append(value.strip() or None)
            elif value is None:
                out.append(None)
            else:
                return None  # a number, a list, true: RowMapper's text of it
        for i in required_plain:
            if out[i] is None:
                return None
        for kind, path, required, constant in typed:
            if kind == CONSTANT:
                out.append(constant)
                continue
            value = row.get(path[0])
            if len(path) == 2 and value is not None:
                if type(value) is not dict:
                    return None
                value = value.get(path[1])
            if value is None:
                if required:
                    return None
                out.append(None)
            elif kind == EPOCH:
                if type(value) is int and 0 <= value < epoch_limit:
                    out.append(value)  # read in SQL
                    continue
                if type(value) is not str:
                    return None
                # Written forms are many: RowMapper's converter, per row (its cache keeps
                # the distinct ones while they repeat), as the row path; a value it does not
                # read cleanly sends the row there.
                found: dict[str, Any] = {}
                try:
                    value = constant(value, found)
                except Exception:  # RowRejected
                    return None
                if found or value is None:
                    return None
                out.append(value)
            elif kind == JSON:
                if type(value) is not dict and type(value) is not list:
                    return None
                out.append(encode(value))
            elif type(value) is str:
                value = value.strip() or None
                if value is None and required:
                    return None
                out.append(value)
            else:
                return None
        parts = []
        for index, column in key_parts:
            part = out[index] if index >= 0 else row.get(column)
            if type(part) is not str:
                return None
            part = part.strip() if index < 0 else part
            if not part:
                return None
            parts.append(part)
        key = parts[0] if len(parts) == 1 else "|".join(parts)
        return (key, *out, identity_key_of(out), line)

    values.append(f"s.p{len(values) + 2}")  # the identity key
    return JsonPlan(take, values, epochs, parser)


def _is_text(typed: list[tuple[str, list[str], bool, Any]], index: int) -> bool:
    return 0 <= index < len(typed) and typed[index][0] in (TEXT, CONSTANT)
