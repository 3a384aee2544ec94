"""What the store holds: sources and their freshness, table sizes, rejects, field quality."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cdp_cli.canonical import KINDS
from cdp_cli.config import Config
from cdp_cli.identity.normalize import email_key, normalize_phone
from cdp_cli.identity.resolve import set_aside
from cdp_cli.sqlitelib import sqlite_utils

# Checking phones and emails costs a parse per distinct value; past this many, a sample says.
VALIDITY_SAMPLE = 50_000
# Field quality reads every row of a table of up to SAMPLE_ABOVE rows (by its highest id). A
# bigger table is measured on a sample: SAMPLE_RUNS runs of SAMPLE_RUN_ROWS consecutive ids,
# spread evenly over its ids, and the figures say so (FieldQuality.sampled). A sample rather
# than figures kept at ingest: fill and invalid rates change with every write to the rows
# (a re-ingest that updates them, `cdp forget`, a migration), and counters kept beside the
# rows would have to follow each of those to stay true, where a sample is true by
# construction. Rows land in file order, so runs spread over the ids reach every batch; the
# same ids each time, so two `cdp status` of one store agree.
SAMPLE_ABOVE = 200_000
SAMPLE_RUNS = 40
SAMPLE_RUN_ROWS = 250
BASE_TABLES = ["batches", "rejects", *(kind.table for kind in KINDS.values())]


@dataclass
class SourceStatus:
    """One source: its batches, its newest finished one, and how old that is."""

    source: str
    kind: str
    rows: int
    batches: int
    last_batch: int | None
    last_file: str | None
    last_status: str | None
    last_finished_at: str | None
    age_hours: float | None


@dataclass
class FieldQuality:
    """How often a source fills a field, and how often what it wrote could not be used."""

    source: str
    field: str
    filled: int
    invalid: int
    rows: int
    sampled: int | None = None  # the rows read, when filled and invalid are scaled from a sample

    @property
    def fill_rate(self) -> float:
        return self.filled / self.rows if self.rows else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.invalid / self.filled if self.filled else 0.0


@dataclass
class StoreStatus:
    """The whole status report; `as_dict` is what `cdp status --json` prints."""

    store: str
    sources: list[SourceStatus] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    fields: list[FieldQuality] = field(default_factory=list)
    unfinished_batches: list[dict[str, Any]] = field(default_factory=list)
    # Identity values that identify no one, by type and reason, as of the last `cdp resolve`.
    set_aside: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = [
            {
                **{k: v for k, v in asdict(q).items() if k != "sampled" or v is not None},
                "fill_rate": round(q.fill_rate, 4),
                "invalid_rate": round(q.invalid_rate, 4),
            }
            for q in self.fields
        ]
        return data


def store_status(db: sqlite_utils.Database, config: Config | None = None) -> StoreStatus:
    """Read the status of the store; cdp.yaml adds the declared sources that have no data yet."""
    status = StoreStatus(store=db.conn.execute("PRAGMA database_list").fetchone()[2])
    status.tables = {name: db[name].count for name in _tables(db)}
    status.sources = _sources(db, config)
    status.rejects = [
        {"source": source, "problem": problem, "field": fld, "count": count, "example": reason}
        for source, problem, fld, count, reason in db.conn.execute(
            "SELECT r.source, r.problem, r.field, count(*), max(r.reason) FROM rejects r "
            "JOIN batches b ON b.id = r.batch_id GROUP BY 1, 2, 3 ORDER BY 4 DESC"
        )
    ]
    status.fields = _field_quality(db, config, {s.source: s.rows for s in status.sources})
    status.set_aside = set_aside(db)
    status.unfinished_batches = [
        {"batch": bid, "source": src, "file": path, "status": st, "error": err}
        for bid, src, path, st, err in db.conn.execute(
            "SELECT id, source, file, status, error FROM batches "
            "WHERE status != 'done' ORDER BY id DESC LIMIT 20"
        )
    ]
    return status


def _tables(db: sqlite_utils.Database) -> list[str]:
    names = set(db.table_names())
    return [t for t in BASE_TABLES if t in names] + sorted(
        names - set(BASE_TABLES) - {"schema_migrations"}
    )


def _age_hours(finished_at: str | None) -> float | None:
    if not finished_at:
        return None
    delta = datetime.now().astimezone() - datetime.fromisoformat(finished_at)
    return round(delta.total_seconds() / 3600, 2)


def _sources(db: sqlite_utils.Database, config: Config | None) -> list[SourceStatus]:
    declared = {name: s.kind.name for name, s in (config.sources.items() if config else [])}
    seen = dict(db.conn.execute("SELECT source, kind FROM batches GROUP BY source"))
    result = []
    for name, kind in {**declared, **seen}.items():
        table = KINDS[kind].table
        rows = _source_rows(db, table, name)
        count = db.conn.execute("SELECT count(*) FROM batches WHERE source=?", (name,)).fetchone()
        last_batch, last_file, last_status, finished_at = db.conn.execute(
            "SELECT id, file, status, finished_at FROM batches WHERE source=? AND status='done' "
            "ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone() or (None, None, None, None)
        result.append(
            SourceStatus(name, kind, rows, count[0], last_batch, last_file, last_status,
                         finished_at, _age_hours(finished_at))
        )  # fmt: skip
    return result


def _source_rows(db: sqlite_utils.Database, table: str, source: str) -> int:
    """A source's rows. When it is the table's only source (the first and last in the
    (source, key) index), the table's count(*), which SQLite takes from its smallest b-tree
    without stepping through rows; else a walk of the source's part of that index."""
    first = db.conn.execute(f"SELECT source FROM {table} ORDER BY source LIMIT 1").fetchone()
    last = db.conn.execute(f"SELECT source FROM {table} ORDER BY source DESC LIMIT 1").fetchone()
    if first is None:
        return 0
    if first[0] == last[0] == source:
        return int(db.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return int(
        db.conn.execute(f"SELECT count(*) FROM {table} WHERE source=?", (source,)).fetchone()[0]
    )


@dataclass(frozen=True)
class _Rows:
    """The rows field quality reads: a whole table, or a sample of it (its runs of ids)."""

    table: str
    runs: tuple[tuple[int, int], ...] = ()  # (first id, last id) of each run, when sampled

    def select(self, what: str) -> tuple[str, list[int]]:
        """`SELECT what FROM` these rows, named t; the caller adds the rest, and its parameters
        after these."""
        if not self.runs:
            return f"SELECT {what} FROM {self.table} t", []
        runs = " UNION ALL ".join([f"SELECT * FROM {self.table} WHERE id BETWEEN ? AND ?"]
                                  * len(self.runs))  # fmt: skip
        # MATERIALIZED: else SQLite pushes the caller's `source = ?` into each run, and picks
        # the (source, key) index over the id range: a walk of every row of the source.
        sql = f"WITH sample AS MATERIALIZED ({runs}) SELECT {what} FROM sample t"
        return sql, [n for run in self.runs for n in run]


def _sample(db: sqlite_utils.Database, table: str) -> _Rows:
    """A table small enough to read whole, or a sample of it (see SAMPLE_ABOVE)."""
    # Two queries: SQLite reads a lone min() or max() of the rowid from one end of the table,
    # but both in one query scan it.
    low = db.conn.execute(f"SELECT min(id) FROM {table}").fetchone()[0]
    high = db.conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
    if high is None or high - low < SAMPLE_ABOVE:
        return _Rows(table)
    step = (high - low + 1) // SAMPLE_RUNS
    starts = [low + i * step for i in range(SAMPLE_RUNS)]
    return _Rows(table, tuple((start, start + SAMPLE_RUN_ROWS - 1) for start in starts))


def _field_quality(
    db: sqlite_utils.Database, config: Config | None, source_rows: dict[str, int] | None = None
) -> list[FieldQuality]:
    """Fill and invalid rate of each canonical column a source has written. A source with more
    than SAMPLE_ABOVE rows in a bigger table is measured on a sample; its counts are scaled
    to its rows (`source_rows`, counted by the caller) and say how many rows were read."""
    quality = []
    for kind in KINDS.values():
        names = [f.name for f in kind.all_fields]
        filled = ", ".join(f"count({n})" for n in names)
        whole, sample = _Rows(kind.table), _sample(db, kind.table)
        sql, params = sample.select(f"source, count(*), {filled}")
        counted = {
            row[0]: (row, sample)
            for row in db.conn.execute(sql + " GROUP BY source", params)
            if not sample.runs or (source_rows or {}).get(row[0], SAMPLE_ABOVE + 1) > SAMPLE_ABOVE
        }
        if sample.runs:  # a small source beside a big one, or one the runs missed: read whole
            sql, _ = whole.select(f"source, count(*), {filled}")
            for name in _sources_of(db, kind.table):
                if name not in counted:
                    counted[name] = (
                        db.conn.execute(sql + " WHERE source = ?", (name,)).fetchone(),
                        whole,
                    )
        for (source, read, *counts), rows in counted.values():
            total = (
                read
                if not rows.runs
                else (source_rows or {}).get(source) or _source_rows(db, kind.table, source)
            )
            scale = total / read
            invalid = _invalid_counts(db, rows, source)
            for name, count in zip(names, counts, strict=True):
                bad = invalid.get(name, 0)
                if count == 0 and bad == 0:
                    continue
                if name in ("phone", "email"):
                    bad += _unusable_identifiers(db, rows, source, name, config)
                quality.append(
                    FieldQuality(source, name, round((count + invalid.get(name, 0)) * scale),
                                 round(bad * scale), total, read if rows.runs else None)
                )  # fmt: skip
    return quality


def _sources_of(db: sqlite_utils.Database, table: str) -> list[str]:
    """The sources with rows in a table, by a skip through the (source, key) index."""
    names: list[str] = []
    while True:
        after = db.conn.execute(
            f"SELECT source FROM {table} WHERE source > ? ORDER BY source LIMIT 1",
            (names[-1] if names else "",),
        ).fetchone()
        if after is None:
            return names
        names.append(after[0])


def _invalid_counts(db: sqlite_utils.Database, rows: _Rows, source: str) -> dict[str, int]:
    sql, params = rows.select("j.key, count(*)")
    return dict(
        db.conn.execute(
            sql + ", json_each(t.attrs, '$._invalid') j "
            "WHERE t.source = ? AND t.attrs LIKE '%\"_invalid\"%' GROUP BY j.key",
            (*params, source),
        )
    )


def _unusable_identifiers(
    db: sqlite_utils.Database, rows: _Rows, source: str, column: str, config: Config | None
) -> int:
    """Rows whose phone or email cannot identify anyone (masked, malformed, not a number);
    of the sample's rows when `rows` is one (the caller scales it)."""
    region = config.region if config else "CN"
    check = normalize_phone if column == "phone" else email_key
    sql, params = rows.select(f"{column}, count(*)")
    values = db.conn.execute(
        sql + f" WHERE source=? AND {column} IS NOT NULL "
        f"GROUP BY {column} ORDER BY random() LIMIT ?",
        (*params, source, VALIDITY_SAMPLE),
    ).fetchall()
    seen = sum(n for _, n in values)
    bad = sum(n for v, n in values if (check(v, region) if column == "phone" else check(v)) is None)
    sql, params = rows.select(f"count({column})")
    total = db.conn.execute(sql + " WHERE source=?", (*params, source)).fetchone()[0]
    return round(bad * total / seen) if seen else 0
