"""The SQLite store: opening it, its schema, and numbered migrations recorded inside it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from cdp_cli.canonical import KINDS, SQL_TYPES, Kind
from cdp_cli.errors import StoreError

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register a schema change; versions run once each, in order, and are recorded."""

    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((version, fn.__name__, fn))
        MIGRATIONS.sort(key=lambda m: m[0])
        return fn

    return register


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def open_store(path: Path, create: bool = True) -> sqlite_utils.Database:
    """Open (or create) the store, in WAL mode so readers work while a command writes."""
    if not create and not path.exists():
        raise StoreError(f"{path}: no store here yet; run `cdp ingest` first")
    if path.parent and not path.parent.exists():
        raise StoreError(f"{path}: folder {path.parent} does not exist")
    try:
        # check_same_thread=False: ingest hands inserts to a writer thread, one at a time.
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = sqlite_utils.Database(conn)
        migrate(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a cdp store ({exc})") from None
    return db


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """One explicit transaction: everything inside lands together or not at all."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations this store has not seen yet; returns their names."""
    db.conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, fn in MIGRATIONS:
        if version in done:
            continue
        with transaction(db):
            fn(db)
            db.conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_iso())
            )
        applied.append(name)
    return applied


def kind_table_sql(kind: Kind) -> str:
    columns = ",\n  ".join(f"{f.name} {SQL_TYPES[f.type]}" for f in kind.all_fields)
    return f"""CREATE TABLE {kind.table} (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  key TEXT NOT NULL,
  {columns},
  attrs TEXT,
  identity_key INTEGER,  -- hash of the raw identity fields; see identity.identity_key
  batch_id INTEGER NOT NULL REFERENCES batches(id),
  line INTEGER,
  UNIQUE (source, key)
)"""


@migration(1)
def create_ingest_tables(db: sqlite_utils.Database) -> None:
    conn = db.conn
    conn.execute(
        """CREATE TABLE batches (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  kind TEXT NOT NULL,
  file TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  encoding TEXT,
  status TEXT NOT NULL,   -- running, done, failed, aborted
  pid INTEGER,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  rows_read INTEGER NOT NULL DEFAULT 0,
  rows_inserted INTEGER NOT NULL DEFAULT 0,
  rows_updated INTEGER NOT NULL DEFAULT 0,
  rows_unchanged INTEGER NOT NULL DEFAULT 0,
  rows_rejected INTEGER NOT NULL DEFAULT 0,
  rows_skipped INTEGER NOT NULL DEFAULT 0,
  error TEXT
)"""
    )
    conn.execute("CREATE INDEX batches_source_sha256 ON batches (source, sha256)")
    conn.execute(
        """CREATE TABLE rejects (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL REFERENCES batches(id),
  source TEXT NOT NULL,
  line INTEGER,
  problem TEXT NOT NULL,  -- a short code to group by: missing_key, bad_number, ...
  field TEXT,
  reason TEXT NOT NULL,
  raw TEXT
)"""
    )
    conn.execute("CREATE INDEX rejects_batch ON rejects (batch_id)")
    for kind in KINDS.values():
        conn.execute(kind_table_sql(kind))
        conn.execute(f"CREATE INDEX {kind.table}_identity ON {kind.table} (identity_key)")
    # Items live inside their order (one row, one transaction); this view lists them for SQL.
    conn.execute(
        """CREATE VIEW order_items AS
SELECT o.id AS order_row, o.source, o.key AS order_key, o.order_id, o.ordered_at,
       i.key AS position,
       i.value ->> '$.sku' AS sku, i.value ->> '$.name' AS name,
       i.value ->> '$.category' AS category, i.value ->> '$.price' AS price,
       i.value ->> '$.quantity' AS quantity
FROM orders o, json_each(o.items) i"""
    )
