"""Which identity keys a resolve run reads: one row per (identity key, source) of the kind
tables, with the identity fields its source declares; every row on a full run, the rows of
new batches whose key is not resolved yet on an incremental one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from cdp_cli.canonical import IDENTITY_FIELDS, KINDS
from cdp_cli.config import Config
from cdp_cli.identity.fields import FieldReader
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import key_walk

if TYPE_CHECKING:
    from cdp_cli.identity.normalize import Normalizer, Rejected
    from cdp_cli.identity.tombstones import Tombstones

KIND_TABLES = [kind.table for kind in KINDS.values()]
# Rows in the kind tables after the first (their largest rowid: rows ever written, read from
# each table's b-tree at once) from which a full run reads part of its keys in a second
# process (keys_worker.py). Below it, starting one (about 0.3 s) gives little. 100k customers with
# their orders and events hold about 1.6M.
WORKER_FROM_ROWS = 1_000_000


def _identity_columns(db: sqlite_utils.Database, config: Config, table: str) -> list[str]:
    """The columns of `table` that any identifier type reads."""
    wanted = [f.name for f in IDENTITY_FIELDS]
    wanted += [f for t in config.identity.types for f in t.fields if f not in wanted]
    present = {c.name for c in db[table].columns}
    return [c for c in wanted if c in present]


class Segment(NamedTuple):
    """The keys of a kind table from `low` (inclusive) to `high` (exclusive; None: no bound).
    Identity keys are 64-bit hashes, spread evenly over that range."""

    table: str
    low: int | None = None
    high: int | None = None


EVERY_KEY = tuple(Segment(table) for table in KIND_TABLES)


def new_keys(
    db: sqlite_utils.Database,
    config: Config,
    after_batch: int | None,
    segments: Sequence[Segment] = EVERY_KEY,
) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(identity_key, identity fields) of rows written after `after_batch` whose key is not
    resolved yet; of every row of `segments` (in their order) when `after_batch` is None.

    A row gives only the fields its source declares as identifying it, so a composite
    identifier declared for one source never reads another source's columns.
    """
    fields_of = {name: set(s.identity_fields) for name, s in config.sources.items()}
    default = {f.name for f in IDENTITY_FIELDS}
    readers = {
        name: reader
        for name, s in config.sources.items()
        if (reader := FieldReader(s, s.identity_fields)).changes_values
    }
    reads: list[tuple[str, int | None, tuple[int | None, int | None]]]
    reads = [(s.table, None, (s.low, s.high)) for s in segments]
    if after_batch is not None:  # only the tables new batches wrote to: the others are
        written = _tables_written_after(db, after_batch)  # read whole, to find nothing
        reads = [(table, after, (None, None)) for table, after in written.items()]
    for table, inserted_after, key_range in reads:
        columns = _identity_columns(db, config, table)
        select = ", ".join(f"t.{c}" for c in columns)
        if readers:  # a field of the project's own, or a normalizer: read through FieldReader
            select = ", ".join(f"t.{c}" for c in columns) + ", t.attrs"
        sql, params = _keys_sql(db, table, select, after_batch, inserted_after, key_range)
        allowed_of: dict[str, set[str] | None] = {}  # None: every column
        for row in db.conn.execute(sql, params):
            source = row[1]
            if source not in allowed_of:
                declared = fields_of.get(source, default)
                allowed_of[source] = None if declared.issuperset(columns) else declared
            allowed = allowed_of[source]
            if readers:
                fields = dict(zip(columns, row[2:-1], strict=True))
                if source in readers:
                    fields.update(readers[source].values(fields, row[-1]))
            else:
                fields = dict(zip(columns, row[2:], strict=True))
            if allowed is not None:
                fields = {c: v for c, v in fields.items() if c in allowed}
            yield row[0], fields


def normalized_keys(
    normalizer: Normalizer,
    keys: Iterable[tuple[int, dict[str, str | None]]],
    tombstones: Tombstones | None = None,
    forgotten: list[int] | None = None,
) -> Iterator[tuple[int, list[tuple[str, str, str | None]], list[Rejected]]]:
    """Each key's identifiers; a key carrying a forgotten one goes to `forgotten` instead."""
    for key, fields in keys:
        found, rejected = normalizer.identifiers(fields)
        if tombstones is not None and tombstones.forgotten(found):
            forgotten.append(key)  # type: ignore[union-attr]
            continue
        yield key, found, rejected


def _tables_written_after(db: sqlite_utils.Database, after_batch: int) -> dict[str, int | None]:
    """The kind tables a batch after `after_batch` wrote rows to (each row holds the id of
    the batch that wrote it last, and a batch writes to its kind's table only), in order;
    each with the row id all those rows are above, or None when that is not known.

    A batch records the largest id of its table before it wrote (`inserted_after`), and
    inserts above it whatever was deleted before; the smallest of these bounds every row the
    new batches inserted. A batch that updated rows in place (`rows_updated`: they keep their
    ids), or did not record one, leaves the table to be scanned for its batch ids. Batches
    not done wrote no rows: their transaction rolled back, or has not committed."""
    found = db.conn.execute(
        "SELECT kind, min(CASE WHEN status = 'done' THEN inserted_after END), "
        "sum(status = 'done'), "
        "sum(status = 'done' AND (inserted_after IS NULL OR rows_updated > 0)) "
        "FROM batches WHERE id > ? GROUP BY kind",
        (after_batch,),
    )
    bounds = {kind: low if done and not unknown else None for kind, low, done, unknown in found}
    return {kind.table: bounds[name] for name, kind in KINDS.items() if name in bounds}


def _keys_sql(
    db: sqlite_utils.Database,
    table: str,
    select: str,
    after_batch: int | None,
    inserted_after: int | None = None,
    key_range: tuple[int | None, int | None] = (None, None),
) -> tuple[str, list[Any]]:
    """The statement that reads one row per (identity key, source) of a kind table, in that
    order, for new_keys; and its parameters. A full run reads the keys in `key_range` only
    (see Segment).

    Rows that share a key carry the same identity fields, so one row per key is enough. A
    table of one source with an index that leads with identity_key (events: 10M rows, 600k
    keys at 1M customers) is read per distinct key: a walk of that index, which is in key
    order and much smaller than the table, then one row per key by its rowid; 5 s at 1M
    where a scan and a sort of every row take 25 s. Other tables are scanned and sorted.

    After a run, with `inserted_after` (see _tables_written_after), only the rows above that
    id are read, still filtered by batch: the newest 1% of 100k orders in 2 ms, where the scan
    of every row for its batch took 26."""
    conn = db.conn
    walk = key_walk(conn, table)
    if after_batch is not None and inserted_after is not None:
        return _new_rows_sql(table, select, after_batch, inserted_after, walk is not None)
    if walk is None:
        params: list[Any] = []
        where = "t.identity_key IS NOT NULL" + _in_range("t.identity_key", key_range, params)
        if after_batch is not None:
            where += (
                " AND t.batch_id > ? AND NOT EXISTS "
                "(SELECT 1 FROM identity_keys k WHERE k.key = t.identity_key)"
            )
            params.append(after_batch)
        # NOT INDEXED: a scan and one sort; the planner would otherwise walk the whole
        # identity_key index for `IS NOT NULL` and fetch each row from it, 3 times slower.
        sql = (
            f"SELECT t.identity_key, t.source, {select} FROM {table} t NOT INDEXED "
            f"WHERE {where} GROUP BY t.identity_key, t.source ORDER BY t.identity_key, t.source"
        )
        return sql, params
    _, index = walk
    if after_batch is None:
        params = []
        first_rows = (
            f"SELECT identity_key AS k, min(rowid) AS r FROM {table} INDEXED BY {index} "
            f"WHERE identity_key IS NOT NULL{_in_range('identity_key', key_range, params)} "
            "GROUP BY identity_key"
        )
    else:  # keys not resolved yet, each by a row of a batch after the last run's
        first_rows = (
            f"SELECT d.k, (SELECT min(x.rowid) FROM {table} x "
            "WHERE x.identity_key = d.k AND x.batch_id > ?) AS r "
            f"FROM (SELECT DISTINCT identity_key AS k FROM {table} INDEXED BY {index} "
            "WHERE identity_key IS NOT NULL) d "
            "WHERE NOT EXISTS (SELECT 1 FROM identity_keys WHERE key = d.k)"
        )
        params = [after_batch]
    # CROSS JOIN keeps the walk outside; the ORDER BY sorts one row per key, not every row.
    sql = (
        f"SELECT t.identity_key, t.source, {select} FROM ({first_rows}) m "
        f"CROSS JOIN {table} t ON t.rowid = m.r ORDER BY m.k"
    )
    return sql, params


def _in_range(column: str, key_range: tuple[int | None, int | None], params: list[Any]) -> str:
    """The conditions that keep `column` in `key_range`, their parameters added to `params`."""
    low, high = key_range
    sql = ""
    if low is not None:
        sql += f" AND {column} >= ?"
        params.append(low)
    if high is not None:
        sql += f" AND {column} < ?"
        params.append(high)
    return sql


def _new_rows_sql(
    table: str, select: str, after_batch: int, inserted_after: int, per_key: bool
) -> tuple[str, list[Any]]:
    """_keys_sql for new rows that all lie above `inserted_after`: a range of the table's
    rowid (NOT INDEXED keeps the planner off the identity_key index; SQLite still seeks by
    rowid). The rows read are those the scan reads, in the same order, so each (key, source)
    keeps the row it had; on a table read per key (`per_key`), each key its first new row."""

    def new_rows(alias: str) -> str:
        return (
            f"{table} {alias} NOT INDEXED WHERE {alias}.rowid > ? AND {alias}.batch_id > ? "
            f"AND {alias}.identity_key IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM identity_keys k WHERE k.key = {alias}.identity_key)"
        )

    params: list[Any] = [inserted_after, after_batch]
    if per_key:
        sql = (
            f"SELECT t.identity_key, t.source, {select} FROM (SELECT x.identity_key AS k, "
            f"min(x.rowid) AS r FROM {new_rows('x')} GROUP BY x.identity_key) m "
            f"CROSS JOIN {table} t ON t.rowid = m.r ORDER BY m.k"
        )
    else:
        sql = (
            f"SELECT t.identity_key, t.source, {select} FROM {new_rows('t')} "
            "GROUP BY t.identity_key, t.source ORDER BY t.identity_key, t.source"
        )
    return sql, params
