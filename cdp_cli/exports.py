"""The export log: every file cdp wrote with customers in it, and who was in each.

Once a file leaves cdp (an audience handed to an agency, the ID mapping the CRM took, an SMS
file the sender picked up), `cdp forget` cannot erase it; it can say where a person went.
Every file that carries customer rows is recorded as it is written: its resolved path, when,
what wrote it and its row count in `exports`; the one_ids it held in `export_members`, the
link `cdp forget` erases (keeping the rest). Each writer of such a file logs it through
`record_export`; `write_logged_rows` is files.write_rows with the log.

The log is written just after the file is renamed into place, in one transaction: a run
killed between the two leaves a file the log does not know (the rerun writes and logs it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdp_cli.files import write_rows
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import insert_row, now_iso, transaction

# The kinds of file logged, by what writes them.
SEGMENT = "segment"  # cdp segment --export
HASHED_SEGMENT = "hashed_segment"  # cdp segment --export --hashed
ID_MAPPING = "id_mapping"  # cdp resolve --export
OUTBOUND = "outbound"  # a journey's outbound file (cdp journey run, cdp run)
RULE_PREFIX = "rule: "  # an ad-hoc audience's rule, as the log keeps it: `rule: city = '武汉'`


@dataclass(frozen=True)
class Export:
    """What wrote a file, for the log: its kind and the audience (a segment's name, a rule, a
    journey and channel; None for the ID mapping, which holds everyone)."""

    kind: str
    audience: str | None = None


class Members:
    """The one_ids of the rows going into a file, gathered as the rows stream by, in a temporary
    table, so that a file of a million rows does not keep a million one_ids in memory."""

    CHUNK = 10_000

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._pending: list[tuple[str]] = []
        self._selected: list[tuple[str, Sequence[Any]]] = []  # add_selected's, run by record()
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS export_one_ids (one_id TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM temp.export_one_ids")

    def add(self, one_id: str | None) -> None:
        if one_id is None:  # a record no identifier links to anyone (the ID mapping)
            return
        self._pending.append((one_id,))
        if len(self._pending) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO temp.export_one_ids VALUES (?)", self._pending)
        self._pending = []

    def add_selected(self, select: str, params: Sequence[Any]) -> None:
        """The one_ids a query selects (one column), for a file whose rows are in the store
        already. The query runs when the file is logged (record_export), straight into the
        log, without a Python loop or the temporary table: it must select the same rows then."""
        self._selected.append((select, params))

    def record(self, export_id: int) -> None:
        """Log every one_id noted as a member of the export `export_id`."""
        self.flush()
        self.conn.execute(
            "INSERT OR IGNORE INTO export_members (one_id, export_id) "
            "SELECT one_id, ? FROM temp.export_one_ids",
            (export_id,),
        )
        self.conn.execute("DELETE FROM temp.export_one_ids")
        for select, params in self._selected:
            self.conn.execute(
                "INSERT OR IGNORE INTO export_members (one_id, export_id) "
                f"SELECT one_id, ? FROM ({select}) WHERE one_id IS NOT NULL",
                (export_id, *params),
            )
        self._selected.clear()

    def taken_from(
        self, rows: Iterable[Sequence[Any]], at: int, hidden: bool = False
    ) -> Iterator[Sequence[Any]]:
        """The rows, each one's one_id (column `at`) noted as it passes; with `hidden`, that
        column is left out of what is yielded (the file does not carry it)."""
        for row in rows:
            self.add(row[at])
            yield (*row[:at], *row[at + 1 :]) if hidden else row


def record_export(
    conn: sqlite3.Connection, path: Path, export: Export, rows: int, members: Members
) -> int:
    """Log a file just written and who was in it; inside the caller's transaction. Its id."""
    export_id = insert_row(
        conn,
        "INSERT INTO exports (path, written_at, kind, audience, rows) VALUES (?, ?, ?, ?, ?)",
        (str(path.resolve()), now_iso(), export.kind, export.audience, rows),
    )
    members.record(export_id)
    return export_id


def write_logged_rows(
    db: sqlite_utils.Database,
    path: Path,
    fields: Sequence[str],
    rows: Iterable[Sequence[Any]],
    export: Export,
    members: Members,
    one_id_at: int,
    hidden: bool = False,
) -> int:
    """files.write_rows, then the file logged with the one_id of each row (column
    `one_id_at`, left out of the file when `hidden`). `members` is made before the query that
    gives `rows` runs. The rows written."""
    written = write_rows(path, fields, members.taken_from(rows, one_id_at, hidden))
    with transaction(db) as conn:
        record_export(conn, path, export, written, members)
    return written


def exports_of(conn: sqlite3.Connection, one_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The files logged with any of these one_ids in them, oldest first."""
    marks = ",".join("?" * len(one_ids))
    cursor = conn.execute(
        "SELECT DISTINCT e.id, e.path, e.written_at, e.kind, e.audience, e.rows FROM exports e "
        f"JOIN export_members m ON m.export_id = e.id WHERE m.one_id IN ({marks}) ORDER BY e.id",
        list(one_ids),
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]
