"""A damaged store: recognising the signs, remembering them, and checking the whole file.

SQLite checks each page as it reads it, so a command meets a damaged page only if it reads
that page: `cdp segment` can answer from healthy tables while another one is damaged, and
`cdp ingest` can write beside a damaged page. Three things keep a damaged store from being
used unnoticed:

- a sign of damage any command meets (SQLITE_CORRUPT, SQLITE_NOTADB) ends it with one line
  (`corruption_error`), its transaction rolled back, and is remembered in `<store>.damaged`;
- while that file is there, every command that opens the store refuses with the same line
  (`refuse_if_damaged`: one stat per command), until `cdp status --check` passes;
- `cdp status --check` and `cdp backup` read every page (`PRAGMA integrity_check`): run
  nightly from cron, they find within a day the damage no command has met yet.

`cdp run` reads every page before it writes, unless the store is exactly as the last run
left it (`unchanged_since_run`): nothing but that run has written to the file since, so there
is nothing new to find that a read of 8.5 GB (103 s from the disk at 1M customers) would show
and the nightly `cdp backup` would not.

Reading every page on every command was measured and left out. On a store of 888 MB (100k
customers, 1.5M events; two shared cores) `PRAGMA quick_check` took 2.3-3.6 s and
`integrity_check` 11-22 s, so about 20 s and 2 min at 1M customers: ten times what
`cdp profile` or `cdp segment` take. `PRAGMA cell_size_check`, which makes SQLite check each
page's cells as it reads them (corruption is met sooner and spreads less), costs nothing
measurable, and every connection to the store turns it on.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cdp_cli.errors import CdpError, StoreDamaged, StoreError
from cdp_cli.files import write_text
from cdp_cli.storefiles import beside, wal_file

RESTORE_DOCS = "docs/operations.md#restoring-a-backup"
DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (named in sqlite3 from Python 3.11)
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
MAX_PROBLEMS = 100  # integrity_check stops at 100 too


def damage_message(store: Path, why: str, checked: bool = False) -> str:
    """The one line every command ends with on a damaged store: what, and what to do."""
    check = "" if checked else "run cdp status --check, then "
    return f"{store}: the store is damaged ({why}); {check}restore a backup ({RESTORE_DOCS})"


def is_damage(exc: BaseException) -> bool:
    """Whether an exception is SQLite saying the file is damaged or not a database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11 on; before, its text says
    if code is not None:
        return code & 0xFF in DAMAGE_CODES  # extended codes: SQLITE_CORRUPT_INDEX, ...
    text = str(exc)
    return "database disk image is malformed" in text or "file is not a database" in text


def is_sqlite_file(path: Path) -> bool:
    """Whether the file starts as every SQLite database does (if it can be read at all)."""
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def check_is_database(store: Path) -> None:
    """StoreError unless `store` exists and is a SQLite database, damaged or not: for the
    commands that read it without opening it as the store (`status --check`, `backup`)."""
    if not store.exists():
        raise StoreError(f"{store}: no store here yet; run `cdp ingest` first")
    if not is_sqlite_file(store):
        raise StoreError(f"{store}: not a cdp store (file is not a database)")


def corruption_error(exc: BaseException, store: Path) -> StoreDamaged | None:
    """The StoreDamaged to raise for a sign of damage met in `store`, else None; the damage is
    remembered (`remember_damage`), so that the next commands refuse the store too.

    A file that is not a SQLite database at all (`--db notes.txt`) is not a damaged store: None.
    """
    if not is_damage(exc):
        return None
    if "file is not a database" in str(exc) and not is_sqlite_file(store):
        return None
    return store_damaged(store, str(exc))


def store_damaged(store: Path, why: str) -> StoreDamaged:
    """The error for a store found damaged; the damage is remembered (`remember_damage`)."""
    remember_damage(store, why)
    return StoreDamaged(damage_message(store, why))


def store_file(conn: sqlite3.Connection) -> Path:
    """The file a connection has open, for a library function handed only the open store.
    Asking reads no page, so it works on a damaged store too."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])


# ---------------------------------------------------------------------------------------------
# Remembering


def damage_marker(store: Path) -> Path:
    """`cdp.db` -> `cdp.db.damaged`, beside the store: there while the store is known damaged."""
    return beside(store, ".damaged")


def remember_damage(store: Path, why: str) -> None:
    """Write `<store>.damaged`, unless it is there already (the first sighting is kept). A
    folder that cannot be written to is no reason to hide the error being raised."""
    marker = damage_marker(store)
    if marker.exists():
        return
    record = {"found_at": _now(), "error": why}
    with contextlib.suppress(CdpError, OSError):
        write_text(marker, json.dumps(record, ensure_ascii=False) + "\n")


def forget_damage(store: Path) -> str | None:
    """Remove `<store>.damaged` after a check passed; what it said, if it was there."""
    remembered = _remembered(store)
    damage_marker(store).unlink(missing_ok=True)
    return remembered


def refuse_if_damaged(store: Path) -> None:
    """StoreDamaged if a command has found the store damaged and no check has passed since."""
    remembered = _remembered(store)
    if remembered is not None:
        raise StoreDamaged(damage_message(store, remembered))


def _remembered(store: Path) -> str | None:
    """What `<store>.damaged` says (the error, and when it was found), or None without one."""
    try:
        text = damage_marker(store).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{damage_marker(store).name} cannot be read: {exc.strerror}"
    try:
        record = json.loads(text)
        return f"{record['error']}, found {record['found_at']}"
    except (ValueError, KeyError, TypeError):
        return f"as {damage_marker(store).name} says"


def _now() -> str:
    """As store.now_iso writes times (store.py imports this module, so not from there)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# A store only cdp run has written to


def run_marker(store: Path) -> Path:
    """`cdp.db` -> `cdp.db.run`, beside the store: its file as the last `cdp run` left it."""
    return beside(store, ".run")


def file_state(store: Path) -> dict[str, int]:
    """What any write to the store changes: its file's identity, size and times (the change
    time, ctime, cannot be set back by any tool), and the size of its WAL (0 when absent)."""
    stat = store.stat()
    try:
        wal = wal_file(store).stat().st_size
    except FileNotFoundError:
        wal = 0
    return {
        "device": stat.st_dev, "inode": stat.st_ino, "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "wal_size": wal,
    }  # fmt: skip


def remember_run(conn: sqlite3.Connection) -> None:
    """After a run that found the store sound and wrote to it: move the WAL into the file (so
    that closing the store writes nothing more) and record the file's state. A reader that
    holds the WAL keeps it from emptying; then nothing is recorded, and the next run reads
    every page. A folder that cannot be written to only costs the next run that read too."""
    store = store_file(conn)
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout = 0")  # a reader's long export must not hold the run
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    if busy:  # the WAL still holds frames: the file's state would not match the next run's
        return
    record = {"recorded_at": _now(), "file": file_state(store)}
    with contextlib.suppress(CdpError, OSError):
        write_text(run_marker(store), json.dumps(record) + "\n")


def unchanged_since_run(store: Path) -> bool:
    """Whether the store's file is exactly as the last `cdp run` left it: no other command,
    program, copy or restore has written to it since."""
    try:
        record = json.loads(run_marker(store).read_text(encoding="utf-8"))
        return bool(record["file"] == file_state(store))
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# Checking every page


@dataclass
class CheckResult:
    """What `cdp status --check` found: `problems` is empty when the store is sound."""

    store: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # The damage `<store>.damaged` remembered, forgotten because this check passed.
    forgotten: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        """The problems in a few words: the first one, and how many there are."""
        count = len(self.problems)
        return f"{count} problems, the first: {self.problems[0]}" if count > 1 else self.problems[0]

    def error(self) -> StoreDamaged:
        """The one line a failed check ends with."""
        return StoreDamaged(damage_message(Path(self.store), self.summary, checked=True))


def check_store(store: Path) -> CheckResult:
    """Read every page of the store (`PRAGMA integrity_check`, then `foreign_key_check`); a
    sound store forgets damage remembered before, a damaged one is remembered."""
    check_is_database(store)
    started = time.monotonic()
    conn = sqlite3.connect(str(store), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only=ON")  # a check never writes
        problems = store_problems(conn)
    except sqlite3.DatabaseError as exc:  # not even the schema can be read
        if not is_damage(exc):
            raise
        problems = [str(exc)]
    finally:
        conn.close()
    result = CheckResult(str(store), not problems, problems, round(time.monotonic() - started, 3))
    if problems:
        remember_damage(store, result.summary)
    else:
        result.forgotten = forget_damage(store)
    return result


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """What `PRAGMA quick_check` finds: every page read, but indexes not matched against
    their tables; about a fifth of integrity_check's time. Empty when the pages are sound."""
    problems = _rows(conn, "PRAGMA quick_check")
    return [] if problems == ["ok"] else problems


def store_problems(conn: sqlite3.Connection) -> list[str]:
    """What integrity_check and foreign_key_check report for the database `conn` has open:
    no item when it is sound. A page so damaged that the check itself stops is one item."""
    problems = _rows(conn, "PRAGMA integrity_check")
    if problems == ["ok"]:
        problems = []
    if not problems:
        problems = [_foreign_key_problem(row) for row in _raw_rows(conn, "foreign_key_check")]
    return problems


def _rows(conn: sqlite3.Connection, sql: str) -> list[str]:
    """A check's report, a problem a line; a damaged page that stops the check is the last."""
    lines: list[str] = []
    try:
        for (text,) in conn.execute(sql):
            lines += [line for line in str(text).splitlines() if not line.startswith("***")]
    except sqlite3.DatabaseError as exc:  # `*** in database main ***` heads the others
        if not is_damage(exc):
            raise
        lines.append(str(exc))
    return lines


def _raw_rows(conn: sqlite3.Connection, pragma: str) -> list[tuple[Any, ...]]:
    cursor = conn.execute(f"PRAGMA {pragma}")
    return [tuple(row) for row, _ in zip(cursor, range(MAX_PROBLEMS), strict=False)]


def _foreign_key_problem(row: tuple[Any, ...]) -> str:
    table, rowid, parent, _ = row
    return f"{table} row {rowid} refers to a row of {parent} that does not exist"
