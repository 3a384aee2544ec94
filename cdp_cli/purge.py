"""Erased bytes leaving the store's files on disk, after `cdp forget` erased them from its tables.

A DELETE only marks rows gone: their bytes stay in the file's pages, and in the write-ahead log
(WAL) beside it. So the store is VACUUMed (rewritten without them, into the WAL) and the WAL is
checkpointed into the store file and truncated (PRAGMA wal_checkpoint(TRUNCATE)).

Another connection in the middle of a read (`sqlite3` with a BEGIN open, Datasette during a
query, a notebook holding a cursor) keeps the snapshot it started with: SQLite may not overwrite
the pages that snapshot reads, so the checkpoint cannot finish and the old pages, the person in
them, stay in the store file and its WAL. The checkpoint is retried until the wait runs out;
then the files are searched for the person's phone numbers and email addresses, and the
programs that have the store open are named (from /proc, on Linux). The erasure itself is
committed either way; running the purge again once the reader has let go finishes it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from cdp_cli.integrity import store_file
from cdp_cli.privacy import mask_text
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.storefiles import WAL_SUFFIXES, sidecars, wal_file

PURGE_WAIT_SECONDS = 2.0  # the least the checkpoint is retried for, --wait or not
POLL_SECONDS = 0.1
COMMAND_SHOWN = 80  # characters of a holder's command line in a message


@dataclass
class Purge:
    """Whether the erased bytes have left the store's files; if not, what keeps them there."""

    store: str = ""
    vacuumed: bool = False
    wal_truncated: bool = False
    bytes_left_in: list[str] = field(default_factory=list)  # files their phone or email is in
    held_by: list[dict[str, Any]] = field(default_factory=list)  # {pid, command}, when held
    waited: float = 0.0  # seconds the checkpoint was retried for

    @property
    def purged(self) -> bool:
        """The WAL emptied into the VACUUMed store file, and none of their bytes found."""
        return self.vacuumed and self.wal_truncated and not self.bytes_left_in

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "purged": self.purged}


def purge(db: sqlite_utils.Database, needles: Iterable[str] = (), wait: float = 0) -> Purge:
    """VACUUM the store, then empty its WAL into the file, retried for `wait` seconds (at least
    PURGE_WAIT_SECONDS) while another connection's snapshot holds it; then look for `needles`
    (their phone numbers and emails as the store wrote them) in both files."""
    conn = db.conn
    store = store_file(conn)
    conn.execute("VACUUM")
    result = Purge(str(store), vacuumed=True)
    started = time.monotonic()
    result.wal_truncated = _checkpoint(conn, started + max(wait, PURGE_WAIT_SECONDS))
    result.waited = round(time.monotonic() - started, 1)
    result.bytes_left_in = _files_holding(conn, store, list(needles), result.wal_truncated)
    if not result.wal_truncated:
        result.held_by = holders(store)
    return result


def _checkpoint(conn: sqlite3.Connection, deadline: float) -> bool:
    """Checkpoint the WAL into the store and truncate it, polling until `deadline`; whether it
    was done. SQLite reports a reader in the way as busy (the row), not as an error."""
    waited = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")  # polled here, not 30 s inside SQLite
    try:
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            remaining = deadline - time.monotonic()
            if busy == 0 or remaining <= 0:
                return busy == 0
            time.sleep(min(POLL_SECONDS, remaining))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(waited)}")


def needles_of(identifiers: Iterable[tuple[str, str]]) -> list[str]:
    """What to look for in the files: each phone (E.164, and its national digits, as records
    often carry it) and email (normalized) among a person's identifiers."""
    found = []
    for kind, value in identifiers:
        if kind == "email":
            found.append(value)
        elif kind == "phone":
            found.append(value)
            with contextlib.suppress(phonenumbers.NumberParseException):
                found.append(str(phonenumbers.parse(value).national_number))
    return found


def _files_holding(
    conn: sqlite3.Connection, store: Path, needles: list[str], truncated: bool
) -> list[str]:
    """The store's files (by name) that still hold one of the needles. Once the WAL is emptied
    into the VACUUMed file, the file holds only what the tables hold: a needle found there that
    a table holds too is part of someone else's value (their `na@qq.com` in `nana@qq.com`)."""
    left = []
    for path in (store, wal_file(store)):
        found = _found_in(path, needles)
        if truncated:
            found = [n for n in found if not _in_tables(conn, n)]
        if found:
            left.append(path.name)
    return left


def _found_in(path: Path, needles: list[str]) -> list[str]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return []
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as content:
            return [n for n in needles if content.find(n.encode()) != -1]


def _in_tables(conn: sqlite3.Connection, needle: str) -> bool:
    """Whether any value in any table contains `needle`: a scan of every table, done only for
    a needle found in the file after a full checkpoint (rare)."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    for table in tables:
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
        where = " OR ".join(f'instr("{c}", ?)' for c in columns)
        hit = conn.execute(
            f'SELECT 1 FROM "{table}" WHERE {where} LIMIT 1', [needle] * len(columns)
        ).fetchone()
        if hit:
            return True
    return False


def holders(store: Path) -> list[dict[str, Any]]:
    """Other processes that have the store or its WAL open, with their command lines (masked):
    read from /proc, so on Linux, and only those of the same user; elsewhere none are found."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    target = store.resolve()
    names = {str(path) for path in (target, *sidecars(target, WAL_SUFFIXES))}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if _has_open(entry / "fd", names):
            command = mask_text(_command_line(entry))  # it may quote a query with a phone in it
            found.append({"pid": int(entry.name), "command": command})
    return sorted(found, key=lambda h: h["pid"])


def _has_open(fd_folder: Path, names: set[str]) -> bool:
    try:
        fds = os.listdir(fd_folder)
    except OSError:  # another user's process, or one that just ended
        return False
    for fd in fds:
        try:
            if os.readlink(fd_folder / fd) in names:
                return True
        except OSError:
            continue
    return False


def _command_line(process: Path) -> str:
    try:
        words = (process / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    return b" ".join(words).decode("utf-8", "replace")


def purge_problem(result: Purge) -> str | None:
    """One line for the user when the bytes are not gone: what holds the store, what remains
    and how to finish; None when they are gone."""
    if result.purged:
        return None
    store = Path(result.store)
    if not result.wal_truncated:
        where = " and ".join(result.bytes_left_in) or f"{store.name} and {wal_file(store).name}"
        return (
            f"{store}: the erasure is committed, but the old pages that held them stay in "
            f"{where} while a read holds the store ({_who(result.held_by)}; waited "
            f"{result.waited:g}s); when it ends, run `cdp forget --finish` to finish"
        )
    return (
        f"{store}: the erasure is committed and the store rewritten, but their bytes are still "
        f"in {' and '.join(result.bytes_left_in)} though no table holds them; run "
        "`cdp forget --finish`"
    )


def _who(held_by: list[dict[str, Any]]) -> str:
    """Who has the store open, as a message names them; a long command line is cut short."""
    if not held_by:
        return "another program or connection"
    shown = []
    for holder in held_by:
        command = holder["command"]
        if len(command) > COMMAND_SHOWN:
            command = command[: COMMAND_SHOWN - 3] + "..."
        shown.append(f"pid {holder['pid']}" + (f" `{command}`" if command else ""))
    return f"open in {', '.join(shown)}"
