"""The SQLite store: opening it, its settings for size, transactions, and bringing its
schema up to date (the migrations themselves: schema.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cdp_cli.errors import StoreError, read_only_reason, system_fault
from cdp_cli.integrity import corruption_error, refuse_if_damaged
from cdp_cli.schema import MIGRATIONS, Migration
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.storefiles import wal_file

# SQLite's page cache for one connection, in MB (`store_cache_mb:` in cdp.yaml). SQLite's own
# default is 2 MB: at a million rows each insert then re-reads index pages from the OS (system
# time grew 45x from 100k to 1M customers). 128 MB holds the indexes a large ingest walks
# while a 1M-customer ingest stays near 200 MB of resident memory; the cache fills only as
# pages are read, so a small store never uses it.
DEFAULT_CACHE_MB = 128


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def insert_row(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """Insert one row; its rowid (sqlite3's lastrowid, None only after no insert at all)."""
    rowid = conn.execute(sql, params).lastrowid
    if rowid is None:
        raise StoreError(f"no row inserted by {sql}")
    return rowid


def rows_as_dicts(
    db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """A query's rows as dicts keyed by column name, for documents such as --json output."""
    cursor = db.conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


# How long a connection waits for a lock another connection holds. Readers rarely meet one
# (WAL): a checkpoint, or a recovery after a crash. A writer waits for another program's write
# lock as long as --wait says, and at least WRITER_GRACE for such a brief one.
READER_WAIT = 30.0
WRITER_GRACE = 1.0


def check_store_path(path: Path) -> None:
    """Refuse a store path no store can be at: in a missing folder, or a folder itself."""
    if path.is_dir():
        raise StoreError(
            f"{path} is a folder, not a store: --db (or $CDP_DB, or store: in cdp.yaml) names "
            f"the store's file, such as {path / 'cdp.db'}"
        )
    if not path.parent.is_dir():
        raise StoreError(f"{path}: folder {path.parent} does not exist")


def open_store(
    path: Path,
    create: bool = True,
    *,
    write: bool = False,
    wait: float = 0,
    cache_mb: int = DEFAULT_CACHE_MB,
) -> sqlite_utils.Database:
    """Open (or create) the store, in WAL mode so readers work while a command writes.

    A writer (`write`) learns at once whether it can write: a read-only store, or a write lock
    another program holds for longer than `wait` seconds, is a one-line error before any work.
    Anyone else can read a store that cannot be written (its file, folder or filesystem
    read-only): it is opened read-only then.
    """
    if not create and not path.exists():
        raise StoreError(f"{path}: no store here yet; run `cdp ingest` first")
    check_store_path(path)
    refuse_if_damaged(path)  # a store a command found damaged stays refused until checked
    timeout = max(wait, WRITER_GRACE) if write else READER_WAIT
    conn = None
    try:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cell_size_check=ON")  # damage met sooner; see integrity.py
        apply_size_settings(conn, cache_mb)
        db = database(conn)
        migrate(db)
        if write:
            check_writable(conn)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        readable = isinstance(exc, sqlite3.OperationalError) and not write and path.exists()
        if readable and read_only_reason(path):
            return open_read_only(path, cache_mb)
        fault = corruption_error(exc, path) or system_fault(exc, path)
        raise fault or StoreError(f"{path}: not a cdp store ({exc})") from None
    return db


def database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils' Database over a connection cdp opened and set up. Without sqlite-utils'
    plugins: loading them reads the entry points of every installed distribution (13 ms with
    the extras installed, in every command), and cdp's store runs none."""
    return sqlite_utils.Database(conn, execute_plugins=False)


def check_writable(conn: sqlite3.Connection) -> None:
    """Begin a write and roll it back: SQLite says here if the store is read-only, or waits
    for another program's write lock (the connection's timeout) and says it is busy."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM schema_migrations WHERE 0")  # a write that changes nothing
    finally:
        rollback(conn)


def open_read_only(path: Path, cache_mb: int = DEFAULT_CACHE_MB) -> sqlite_utils.Database:
    """The store through a read-only connection, for readers of a store they cannot write.

    In a read-only folder, SQLite cannot make the -shm file a WAL store is read through; if no
    -wal is there either, nobody can be writing (a writer needs one), and the store is opened
    as immutable, which needs neither.
    """
    uri = path.absolute().as_uri()
    wal = wal_file(path)
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        if wal.exists():
            why = read_only_reason(path)
            error = f"{path}: cannot read the store while {wal.name} is there: {why}"
            raise StoreError(error) from None
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
    apply_size_settings(conn, cache_mb)
    db = database(conn)
    if pending_migrations(db):
        db.close()
        raise StoreError(
            f"{path}: cannot read the store: it was made by an older cdp, which this one must "
            f"update first, and {read_only_reason(path)}"
        )
    return db


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: SQLite has already rolled it back itself after
    some errors (a full disk, an I/O error), and a ROLLBACK then would hide the real one."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def apply_size_settings(conn: sqlite3.Connection, cache_mb: int) -> None:
    """Size SQLite for the work (see DEFAULT_CACHE_MB). Left as SQLite has them, on purpose:
    mmap_size (mapped pages count as the process's resident memory, and WAL writes do not go
    through the map) and temp_store (in memory, sorting 10M keys for an index would hold them
    all in RAM; on file, the sorter spills past the cache size)."""
    conn.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")  # negative: KiB rather than pages
    # The temp database's freed pages are not overwritten with zeros, where SQLite was built
    # to (SECURE_DELETE, as Debian's libsqlite3 is). Its file is deleted, unzeroed, when
    # the connection closes, so zeroing what a statement frees protects nothing; it
    # made dropping a staged table of 300 MB take 0.6 s instead of 0.15 s. The store keeps
    # SQLite's setting, and erasure turns it on (tombstones.py).
    conn.execute("PRAGMA temp.secure_delete=0")
    # No sorter threads but under sorting_cache, even where SQLite was built to use some by
    # default (Python's own SQLite uses none, so no test here can tell): the golden profiles'
    # groupings (profiles.py) read rows that tie in the order they come, which threads change.
    conn.execute("PRAGMA threads=0")


# The page cache while SQLite sorts a bulk write's rows or indexes (see sorting_cache), in KiB.
SORT_CACHE_KIB = 16 * 1024
# Helper threads SQLite's sorter takes for such a sort (`PRAGMA threads`; SQLite's default is
# none). They sort the runs that spill to disk, and merge them, while the statement goes on
# reading rows: on a 2-core box, an index over 10M events at 1M customers took 9.9-10.4 s
# with none, 7.9-9.4 s with one, 6.9-7.0 s with two, for 2-3 s more CPU and 40 MB more
# memory (each holds up to the sorting cache's size). Rows that tie in a sort may come out in
# another order with them. Under sorting_cache that changes nothing cdp stores: an index's
# entries end with their rowid, the ORDER BYs end with a unique column (ingest's line) or read
# ties alike (graph.load's links of a value); tests/test_store_sorting.py compares runs.
# Elsewhere it would: see apply_size_settings.
SORTER_THREADS = 2


@contextmanager
def sorting_cache(conn: sqlite3.Connection) -> Iterator[None]:
    """The page cache cut to SORT_CACHE_KIB around a big sort, with SORTER_THREADS helper
    threads, then both set back. SQLite's sorter holds up to the page cache's size in memory
    besides the cache itself: with the cache full from a load, that took a 10M-event ingest
    past 300 MB. Shrinking it frees clean pages."""
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    threads = conn.execute("PRAGMA threads").fetchone()[0]
    conn.execute(f"PRAGMA cache_size=-{SORT_CACHE_KIB}")
    conn.execute(f"PRAGMA threads={SORTER_THREADS}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={cache}")
        conn.execute(f"PRAGMA threads={threads}")


@contextmanager
def one_checkpoint(conn: sqlite3.Connection) -> Iterator[None]:
    """Around a command that commits several large transactions which rewrite the same pages
    (a journey run's outbox, then its messages marked written): no automatic checkpoint after
    each commit, one at the end, so that each page is copied from the WAL into the store once.
    The WAL holds them all meanwhile. After an error, the next commit or close checkpoints."""
    pages = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


@contextmanager
def indexes_built_after(
    conn: sqlite3.Connection, table: str, bulk: bool, appended: Collection[str] = ()
) -> Iterator[None]:
    """Around a write of many more rows than `table` holds (a first load, a first tag run):
    its secondary indexes are dropped, then made again from the SQL that made them, inside
    the caller's transaction. One sort per index beats an insert into each per row. The
    indexes of a primary key or UNIQUE constraint stay (upserts need them), and so do those
    named in `appended`: the caller knows the write adds each of their entries after the
    last, which fills page after page with nothing to sort (an insert into the middle of an
    index leaves pages half full, and more of them for the commit to write)."""
    if not bulk:
        yield
        return
    indexes = [
        (name, sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (table,),
        )
        if name not in appended
    ]
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    yield
    with sorting_cache(conn):
        for _, sql in indexes:
            conn.execute(sql)


def key_walk(
    conn: sqlite3.Connection, table: str, covering: Sequence[str] = ()
) -> tuple[str, str] | None:
    """(source, index) when a kind table can be read per identity key, else None: every row
    comes from that one source, and the index leads with identity_key and holds the
    `covering` columns too, so a walk of it groups rows by key without reading the table."""
    source = _only_source(conn, table)
    index = _key_index(conn, table, covering) if source else None
    return (source, index) if source and index else None


def _only_source(conn: sqlite3.Connection, table: str) -> str | None:
    """The one source every row of a kind table comes from; None when there are several, or
    no row. Two lookups in the index of its UNIQUE (source, key), not a scan."""
    first = conn.execute(f"SELECT min(source) FROM {table}").fetchone()[0]
    if first is None:
        return None
    other = conn.execute(f"SELECT min(source) FROM {table} WHERE source > ?", (first,))
    return first if other.fetchone()[0] is None else None


def _key_index(conn: sqlite3.Connection, table: str, covering: Sequence[str]) -> str | None:
    """An index of `table` that leads with identity_key and holds the `covering` columns."""
    for name, sql in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL ORDER BY name",
        (table,),
    ):
        columns = [row[2] for row in conn.execute(f'PRAGMA index_info("{name}")')]
        partial = " where " in sql.lower()  # holds only some rows
        if columns[:1] == ["identity_key"] and set(covering) <= set(columns) and not partial:
            return name
    return None


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """One explicit transaction: everything inside lands together or not at all."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        rollback(conn)
        raise
    conn.execute("COMMIT")


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations this store has not seen yet; returns their names."""
    db.conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = []
    for version, name, fn in pending_migrations(db):
        with transaction(db):
            fn(db)
            db.conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_iso())
            )
        applied.append(name)
    return applied


def pending_migrations(db: sqlite_utils.Database) -> list[tuple[int, str, Migration]]:
    """The migrations this store has not seen yet, in order."""
    if "schema_migrations" not in db.table_names():
        return list(MIGRATIONS)
    done = {row[0] for row in db.conn.execute("SELECT version FROM schema_migrations")}
    return [m for m in MIGRATIONS if m[0] not in done]
