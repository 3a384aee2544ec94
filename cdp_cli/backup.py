"""cdp backup: a consistent copy of the store, taken while other commands read and write it.

SQLite's online backup API copies the pages of one read snapshot. The store is in WAL mode,
so a command writing meanwhile goes on, and what it has not committed when the copy starts is
not in the copy. The copy is written to a temporary file beside DEST, checked (integrity_check,
and every table's row count equal to the store's in the same snapshot), and only then renamed
over DEST: a good old backup is never replaced by a broken one.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdp_cli.errors import CdpError, UsageError
from cdp_cli.files import move_into_place, temp_path
from cdp_cli.integrity import (
    check_is_database,
    corruption_error,
    is_sqlite_file,
    refuse_if_damaged,
    store_damaged,
    store_problems,
)
from cdp_cli.storefiles import sidecars

BACKUP_FORMATS = (".db", ".sqlite", ".sqlite3")  # how the name of a backup ends


@dataclass
class BackupResult:
    """What `cdp backup` wrote; `as_dict` is what `--json` prints."""

    store: str
    backup: str
    bytes: int
    seconds: float
    tables: dict[str, int] = field(default_factory=dict)  # rows per table, the same in both

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup_store(store: Path, dest: Path) -> BackupResult:
    """Copy the store to `dest`, check the copy, then put it in place (replacing an older
    backup there). The caller has checked that `dest` is none of the project's files."""
    check_is_database(store)
    refuse_if_damaged(store)
    check_replaceable(store, dest)
    started = time.monotonic()
    tmp = temp_path(dest)
    _remove_with_sidecars(tmp)  # left by a backup that was killed
    try:
        tables = _copy(store, tmp, dest)
        _verify(tmp, tables, store, dest)
        _sync(tmp)
        for sidecar in sidecars(dest):  # an old backup's WAL would be replayed into the new one
            sidecar.unlink(missing_ok=True)
        move_into_place(tmp, dest)
    finally:
        _remove_with_sidecars(tmp)
    seconds = round(time.monotonic() - started, 3)
    return BackupResult(str(store), str(dest), dest.stat().st_size, seconds, tables)


def check_replaceable(store: Path, dest: Path) -> None:
    """A backup replaces an older backup of the same store, or an empty file, and nothing
    else: not another program's file, nor another store or its backup, which a mistyped DEST
    (`../brand-b/cdp.db`) would otherwise wipe out. Every copy of a store holds the random key
    its tombstones are kept under (tombstone_salt), and no other store holds it."""
    if not dest.exists() or dest.stat().st_size == 0:
        return
    if not is_sqlite_file(dest):
        what = "not a database"
    else:
        theirs = _lineage(dest, as_written=True)
        if theirs is not None and theirs == _lineage(store):
            return
        what = "not a cdp store" if theirs is None else "another store, or a backup of one"
    raise UsageError(
        f"{dest} is {what}: a backup replaces only an older backup of this store; "
        "choose another name, or remove the file first"
    )


def _lineage(path: Path, as_written: bool = False) -> str | None:
    """The store's tombstone key, which its copies share; None where it cannot be read.
    `as_written`: read the file alone, without its WAL, taking no lock and writing nothing
    beside it (another store may be in use)."""
    uri = f"{path.resolve().as_uri()}?{'immutable=1' if as_written else 'mode=ro'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            row = conn.execute("SELECT salt FROM tombstone_salt").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _copy(store: Path, tmp: Path, dest: Path) -> dict[str, int]:
    """Copy one snapshot of the store into `tmp`; every table's row count in that snapshot."""
    source = sqlite3.connect(str(store), timeout=30, isolation_level=None)
    try:
        source.execute("BEGIN")  # one read snapshot for the counts and the copy
        tables = table_counts(source)
        _copy_pages(source, tmp, dest)
        source.execute("COMMIT")
    except sqlite3.DatabaseError as exc:  # the store's pages could not be read
        damaged = corruption_error(exc, store)
        if damaged is None:
            raise
        raise damaged from None
    finally:
        source.close()
    return tables


def _copy_pages(source: sqlite3.Connection, tmp: Path, dest: Path) -> None:
    """Every page of the source's snapshot into a new file `tmp`, in one step. The pages are
    copied unread, so an error here is the target's: no room, no permission."""
    try:
        target = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise CdpError(f"cannot write {dest}: {exc}") from None


def _verify(tmp: Path, tables: dict[str, int], store: Path, dest: Path) -> None:
    """The copy passes integrity_check and holds as many rows per table as the store did. A
    copy that fails says the store is damaged, unless the store itself passes the check."""
    copy = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        problems = store_problems(copy)
        copied = {} if problems else table_counts(copy)
    finally:
        copy.close()
    if problems:
        if _store_problems(store):
            raise store_damaged(store, f"its copy fails integrity_check: {problems[0]}")
        raise CdpError(f"{dest}: the copy was written wrong ({problems[0]}); check that disk")
    for table, rows in tables.items():
        if copied.get(table) != rows:
            raise CdpError(
                f"{dest}: the copy holds {copied.get(table)} rows of {table}, the store {rows}; "
                "the backup was not written"
            )


def _store_problems(store: Path) -> list[str]:
    conn = sqlite3.connect(str(store), timeout=30, isolation_level=None)
    try:
        return store_problems(conn)
    finally:
        conn.close()


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """The row count of every table in the database `conn` has open."""
    names = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    quoted = {name: name.replace('"', '""') for name in names}
    return {
        name: conn.execute(f'SELECT count(*) FROM "{quoted[name]}"').fetchone()[0] for name in names
    }


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_with_sidecars(path: Path) -> None:
    for file in (path, *sidecars(path)):
        file.unlink(missing_ok=True)
