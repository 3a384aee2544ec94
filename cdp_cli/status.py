"""What the store holds: sources and their freshness, table sizes, rejects, field quality."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlite_utils

from cdp_cli.canonical import KINDS
from cdp_cli.config import Config
from cdp_cli.identity.normalize import email_key, normalize_phone
from cdp_cli.identity.resolve import set_aside

# Checking phones and emails costs a parse per distinct value; past this many, a sample says.
VALIDITY_SAMPLE = 50_000
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
                **asdict(q),
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
    status.fields = _field_quality(db, config)
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
        rows = db.conn.execute(f"SELECT count(*) FROM {table} WHERE source=?", (name,)).fetchone()
        count = db.conn.execute("SELECT count(*) FROM batches WHERE source=?", (name,)).fetchone()
        last_batch, last_file, last_status, finished_at = db.conn.execute(
            "SELECT id, file, status, finished_at FROM batches WHERE source=? AND status='done' "
            "ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone() or (None, None, None, None)
        result.append(
            SourceStatus(name, kind, rows[0], count[0], last_batch, last_file, last_status,
                         finished_at, _age_hours(finished_at))
        )  # fmt: skip
    return result


def _field_quality(db: sqlite_utils.Database, config: Config | None) -> list[FieldQuality]:
    """Fill and invalid rate of each canonical column a source has written."""
    quality = []
    for kind in KINDS.values():
        names = [f.name for f in kind.all_fields]
        filled = ", ".join(f"count({n})" for n in names)
        rows = db.conn.execute(
            f"SELECT source, count(*), {filled} FROM {kind.table} GROUP BY source"
        ).fetchall()
        for source, total, *counts in rows:
            invalid = _invalid_counts(db, kind.table, source)
            for name, count in zip(names, counts, strict=True):
                bad = invalid.get(name, 0)
                if count == 0 and bad == 0:
                    continue
                if name in ("phone", "email"):
                    bad += _unusable_identifiers(db, kind.table, source, name, config)
                quality.append(FieldQuality(source, name, count + invalid.get(name, 0), bad, total))
    return quality


def _invalid_counts(db: sqlite_utils.Database, table: str, source: str) -> dict[str, int]:
    return dict(
        db.conn.execute(
            f"SELECT j.key, count(*) FROM {table} t, json_each(t.attrs, '$._invalid') j "
            "WHERE t.source = ? AND t.attrs LIKE '%\"_invalid\"%' GROUP BY j.key",
            (source,),
        )
    )


def _unusable_identifiers(
    db: sqlite_utils.Database, table: str, source: str, column: str, config: Config | None
) -> int:
    """Rows whose phone or email cannot identify anyone (masked, malformed, not a number)."""
    region = config.region if config else "CN"
    check = normalize_phone if column == "phone" else email_key
    values = db.conn.execute(
        f"SELECT {column}, count(*) FROM {table} WHERE source=? AND {column} IS NOT NULL "
        f"GROUP BY {column} ORDER BY random() LIMIT ?",
        (source, VALIDITY_SAMPLE),
    ).fetchall()
    seen = sum(n for _, n in values)
    bad = sum(n for v, n in values if (check(v, region) if column == "phone" else check(v)) is None)
    total = db.conn.execute(
        f"SELECT count({column}) FROM {table} WHERE source=?", (source,)
    ).fetchone()[0]
    return round(bad * total / seen) if seen else 0
