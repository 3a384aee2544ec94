"""Ingest: read a source's export, map it onto canonical fields, and store it as one batch.

A file lands whole or not at all: its rows, its rejects and its batch's counts are written in
one transaction, so a killed run leaves nothing behind and a rerun ingests the file again. A
file whose sha256 is already in a finished batch is skipped, and a row whose natural key is
stored already is updated in place, so running the same command twice never duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cdp_cli import ingest_set, ingest_worker, readers
from cdp_cli.config import Config, Source
from cdp_cli.errors import IngestError, NotFound, UsageError, system_fault
from cdp_cli.identity.tombstones import Screen, Tombstones
from cdp_cli.ingest_rows import CHUNK_ROWS, IngestResult, RowMapping, map_chunks
from cdp_cli.ingest_worker import WORKER_FROM_BYTES, MapWorker, Part
from cdp_cli.integrity import is_damage, store_file
from cdp_cli.mapping import RowMapper
from cdp_cli.parsing import (
    JSON_ENCODER,
)
from cdp_cli.readers import Progress
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import indexes_built_after, insert_row, now_iso, sorting_cache, transaction

# Whether a CSV or JSON Lines file may be mapped as set work (ingest_set); False maps every
# row with RowMapper, the definition the set path is tested against (tests/test_ingest_sql.py,
# tests/test_ingest_jsonl_sql.py).
SET_WORK = True
_JSON = JSON_ENCODER
ProgressCallback = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Batches


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abort_stale_batches(db: sqlite_utils.Database) -> int:
    """Mark batches left 'running' by a process that died; their rows were rolled back."""
    stale = [
        batch_id
        for batch_id, pid in db.conn.execute("SELECT id, pid FROM batches WHERE status='running'")
        if pid != os.getpid() and not _pid_alive(pid)
    ]
    for batch_id in stale:
        db.conn.execute(
            "UPDATE batches SET status='aborted', error='the process ingesting it stopped' "
            "WHERE id=?",
            (batch_id,),
        )
    return len(stale)


def _upsert_sql(table: str, columns: list[str]) -> str:
    marks = ", ".join("?" * (len(columns) + 5))
    return f"{_insert_into(table, columns)} VALUES ({marks}) {_on_conflict(table, columns)}"


def _insert_into(table: str, columns: list[str]) -> str:
    names = ", ".join(["source", "key", *columns, "attrs", "batch_id", "line"])
    return f"INSERT INTO {table} ({names})"


def _on_conflict(table: str, columns: list[str]) -> str:
    """A row stored already is updated, and counted as written, only where it changed."""
    content = [*columns, "attrs"]
    updates = ", ".join(f"{c}=excluded.{c}" for c in [*content, "batch_id", "line"])
    old = ", ".join(f"{table}.{c}" for c in content)
    new = ", ".join(f"excluded.{c}" for c in content)
    return f"ON CONFLICT(source, key) DO UPDATE SET {updates} WHERE ({old}) IS NOT ({new})"


def ingest_file(
    db: sqlite_utils.Database,
    source: Source,
    path: Path,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
    screen: Screen | None = None,
    worker_from: int | None = WORKER_FROM_BYTES,
) -> IngestResult:
    """Ingest one file as one batch of `source`; a file seen before is skipped unless forced.

    With a `screen`, rows that carry an identifier of a forgotten person are refused. A JSON
    Lines file of `worker_from` bytes or more is read by two processes (None: never).
    """
    started = time.monotonic()
    path = path.absolute()
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if not path.is_file():  # a pipe or a device: a file is read twice (its sha256, its rows)
        raise IngestError(f"{path}: not a regular file; save the export to a file and ingest that")
    sha256 = file_sha256(path)
    seen = db.conn.execute(
        "SELECT id FROM batches WHERE source=? AND sha256=? AND status='done' "
        "ORDER BY id DESC LIMIT 1",
        (source.name, sha256),
    ).fetchone()
    if seen and not force:
        return IngestResult(
            source.name,
            str(path),
            "skipped",
            batch_id=seen[0],
            message=f"seen in batch {seen[0]}",
        )
    fmt = _format_of(source, path)
    encoding = readers.detect_encoding(path, source.encoding)
    abort_stale_batches(db)
    batch_id = insert_row(
        db.conn,
        "INSERT INTO batches (source, kind, file, sha256, size, encoding, status, pid, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
        (source.name, source.kind.name, str(path), sha256, path.stat().st_size, encoding,
         os.getpid(), now_iso()),
    )  # fmt: skip
    result = IngestResult(source.name, str(path), "done", batch_id=batch_id, encoding=encoding)
    try:
        with transaction(db) as conn:
            inserted_after = _load(
                conn, source, path, fmt, encoding, result, on_progress, screen, worker_from
            )
            conn.execute(
                "UPDATE batches SET status='done', finished_at=?, rows_read=?, rows_inserted=?, "
                "rows_updated=?, rows_unchanged=?, rows_rejected=?, rows_skipped=?, "
                "inserted_after=? WHERE id=?",
                (now_iso(), result.rows_read, result.inserted, result.updated, result.unchanged,
                 result.rejected, result.skipped, inserted_after, batch_id),
            )  # fmt: skip
    except BaseException as exc:
        if is_damage(exc):  # rolled back; nothing more is written into a damaged store
            raise
        status = "failed" if isinstance(exc, Exception) else "aborted"
        fault = system_fault(exc, store_file(db.conn))  # a full disk: the batch says so
        message = str(fault or exc) or type(exc).__name__
        _record_failure(db, batch_id, status, message)
        if fault is not None:
            raise fault from None
        if isinstance(exc, IngestError):
            raise IngestError(f"{path}: {exc}") from None
        if isinstance(exc, (sqlite3.DataError, RecursionError)):
            raise IngestError(f"{path}: {message}") from None
        raise
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _format_of(source: Source, path: Path) -> str:
    """source.format_for, but a file that is no export (a workbook, an archive, a store) is
    named for what it is rather than for its extension."""
    try:
        return source.format_for(path)
    except NotFound:
        with path.open("rb") as f:
            what = readers.not_an_export(f.read(16))
        if what:
            raise IngestError(f"{path}: the file is {what}") from None
        raise


def _record_failure(db: sqlite_utils.Database, batch_id: int, status: str, message: str) -> None:
    """Mark the batch failed (or aborted) with why. When the disk is too full for even that,
    the batch stays 'running', and the next ingest marks it aborted."""
    with contextlib.suppress(sqlite3.OperationalError):  # the first error is the one to tell
        db.conn.execute(
            "UPDATE batches SET status=?, finished_at=?, error=? WHERE id=?",
            (status, now_iso(), message, batch_id),
        )


def _load(
    conn: sqlite3.Connection,
    source: Source,
    path: Path,
    fmt: str,
    encoding: str,
    result: IngestResult,
    on_progress: ProgressCallback | None,
    screen: Screen | None = None,
    worker_from: int | None = None,
) -> int:
    """Write the file's rows into its kind's table; the table's largest id before (every row
    inserted has a larger one: resolve reads new rows from there, see batches.inserted_after)."""
    table = source.kind.table
    # Loaded inside the file's transaction: a `cdp forget` committed before it is always seen.
    tombstones = screen.load(conn) if screen else None
    # A new row's id is one above the largest (SQLite's rowid, without AUTOINCREMENT), and
    # an upsert that updates takes none: the largest id before and after tells how many
    # rows were inserted, where counting the source's rows would read all of them twice.
    last_id = _largest_id(conn, table)
    # Into an empty table (a first load), the secondary indexes are built once at the end.
    first_load = last_id == 0 and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
    # A JSON Lines file has no header: its mapper and plan are made before it is opened, once,
    # and the second process (see ingest_worker) is told which of the two paths maps it.
    json_mapper = json_plan = worker = None
    if fmt == "jsonl":
        json_mapper = RowMapper(source, None)
        if SET_WORK and tombstones is None:
            json_plan = ingest_set.json_plan_for(json_mapper)
        assert result.batch_id is not None
        worker = _second_process(
            source, path, encoding, tombstones, result.batch_id, worker_from, json_plan is not None
        )
    try:
        with (
            indexes_built_after(conn, table, first_load),
            readers.open_rows(
                path, fmt, encoding, source.delimiter, source.limits, source.columns,
                end=worker.start if worker else None,
            ) as (header, rows, progress),
        ):  # fmt: skip
            mapper = json_mapper or RowMapper(source, header)
            loader = _RowLoader(conn, mapper, result, tombstones)
            plan = None
            if SET_WORK and header is not None and tombstones is None:
                plan = ingest_set.plan_for(mapper, header, source.limits.attrs_bytes)
            if plan is not None:
                changed = _load_set(conn, plan, loader, rows, progress, on_progress)
            elif json_plan is not None:
                changed = _load_json(conn, json_plan, loader, rows, progress, on_progress, worker)
            else:
                changed = loader.load(rows, progress, on_progress, worker)
            if on_progress:
                on_progress(progress.total, progress.total)
    finally:
        if worker is not None:
            worker.stop()
    result.inserted = _largest_id(conn, table) - last_id
    result.updated = changed - result.inserted
    result.rejected = sum(result.reject_reasons.values())
    result.unchanged = result.rows_read - result.rejected - result.inserted - result.updated
    return last_id


def _second_process(
    source: Source,
    path: Path,
    encoding: str,
    tombstones: Tombstones | None,
    batch_id: int,
    worker_from: int | None,
    set_work: bool,
) -> MapWorker | None:
    """The process that reads the later part of a large JSON Lines file (see ingest_worker),
    mapping its rows as this one maps them (`set_work`: with the file's JsonPlan), and
    screening them against the same tombstones; None where this process reads it whole."""
    if encoding not in ingest_worker.ENCODINGS:
        return None
    share = ingest_worker.FIRST_SHARE_SET if set_work else ingest_worker.FIRST_SHARE_ROWS
    split = ingest_worker.split_point(path, worker_from, share)
    if split is None:
        return None
    try:
        return MapWorker(Part(source, path, split, encoding, batch_id, set_work, tombstones))
    except OSError:  # no second process to be had (no fork, no Python): this one reads it all
        return None


def _largest_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0)


class _RowLoader(RowMapping):
    """The row-by-row path: each row mapped by RowMapper and upserted, in chunks."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        mapper: RowMapper,
        result: IngestResult,
        tombstones: Tombstones | None,
    ) -> None:
        super().__init__(mapper, result, tombstones)
        self.conn = conn
        columns = [*mapper.columns, *(["items"] if mapper.has_items else []), "identity_key"]
        self.columns = columns
        self.upsert = _upsert_sql(mapper.source.kind.table, columns)
        self.insert_rejects = INSERT_REJECTS

    def load(
        self,
        rows: Iterator[Any],
        progress: Progress,
        on_progress: ProgressCallback | None,
        worker: MapWorker | None = None,
    ) -> int:
        """Map and upsert every row; returns the rows written (inserted or changed)."""
        conn = self.conn
        second = _SecondPart(conn, worker, self._stage_second) if worker else None
        if second is not None:
            ingest_set.drop_stage(conn)
            values = ", ".join(f"v{i}" for i in range(len(self.columns)))
            conn.execute(
                f"CREATE TABLE {_SECOND_ROWS} (line INTEGER PRIMARY KEY, key, {values}, attrs)"
            )
            second.create()
        changed = 0
        for _, mapped, rejects in map_chunks(rows, None, self):
            if mapped:
                changed += conn.executemany(self.upsert, mapped).rowcount
            if rejects:
                conn.executemany(self.insert_rejects, rejects)
            if second is not None:
                second.stage_ready()
            if on_progress:
                on_progress(*_progress(progress, worker))
        if second is None:
            return changed
        second.finish(self.result)
        table, names = self.mapper.source.kind.table, self.columns
        values = ", ".join(f"v{i}" for i in range(len(names)))
        changed += conn.execute(
            f"{_insert_into(table, names)} SELECT ?, key, {values}, attrs, ?, line "
            f"FROM {_SECOND_ROWS} WHERE 1 ORDER BY line {_on_conflict(table, names)}",
            (self.mapper.source.name, self.result.batch_id),
        ).rowcount
        second.write_rejects()
        ingest_set.drop_stage(conn)
        return changed

    def _stage_second(self, taken: list[tuple[Any, ...]], mapped: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * (len(self.columns) + 3))
        self.conn.executemany(
            f"INSERT INTO {_SECOND_ROWS} VALUES ({marks})",
            [(one[-1], *one[1:-2]) for one in mapped],
        )


def _load_set(
    conn: sqlite3.Connection,
    plan: ingest_set.SetPlan,
    loader: _RowLoader,
    rows: Iterator[Any],
    progress: Progress,
    on_progress: ProgressCallback | None,
) -> int:
    """A CSV file as set work (see ingest_set): cells staged, then mapped in SQL, with
    RowMapper for the rows SQL does not take. Returns the rows written."""
    result = loader.result
    stage, leftover = ingest_set.create_stage(conn, plan, len(loader.columns))
    leftovers = _Leftovers(conn, loader, leftover)
    identity_of = plan.identity_of_cells
    staged: list[tuple[Any, ...]] = []
    for line, row, error, raw in rows:
        if row is None and error is None:
            result.skipped += 1
            continue
        result.rows_read += 1
        if error is not None:
            leftovers.map(line, row, error, raw)
            continue
        # Cells are staged stripped, as RowMapper reads them: SQL's trim() knows only
        # the characters it is given, and is slow with many. The row as read is kept
        # where it differs, for its attrs and rejects.
        cells = list(map(str.strip, row))
        written = None if cells == row else _JSON.encode(row)
        if identity_of:
            staged.append((line, *cells, written, identity_of(cells)))
        else:
            staged.append((line, *cells, written))
        if len(staged) >= CHUNK_ROWS:
            plan.stage(conn, stage, staged)
            staged.clear()
            if on_progress:
                on_progress(progress.done, progress.total)
    plan.stage(conn, stage, staged)
    plan.build(conn)
    found = conn.execute(plan.leftovers_sql(), plan.params)
    while chunk := found.fetchmany(CHUNK_ROWS):
        for line, written, *cells in chunk:
            leftovers.map(line, cells if written is None else json.loads(written), None, None)
    leftovers.flush()
    table, names = loader.mapper.source.kind.table, loader.columns
    values = ", ".join(f"v{i}" for i in range(len(names)))
    changed = conn.execute(
        f"{_insert_into(table, names)} SELECT :source, key, {values}, attrs, :batch_id, line "
        f"FROM ({ingest_set.mapped_rows_sql(plan, leftovers.mapped)}) WHERE 1 "
        f"{_on_conflict(table, names)}",
        {**plan.params, "source": loader.mapper.source.name, "batch_id": result.batch_id},
    ).rowcount
    if result.reject_reasons:  # a file without rejects writes nothing there, as row by row
        conn.execute(
            "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
            f"SELECT * FROM {ingest_set.STAGED_REJECTS} ORDER BY line"
        )
    # On failure the file's rollback takes the temporary tables with it.
    ingest_set.drop_stage(conn)
    return changed


def _load_json(
    conn: sqlite3.Connection,
    plan: ingest_set.JsonPlan,
    loader: _RowLoader,
    rows: Iterator[Any],
    progress: Progress,
    on_progress: ProgressCallback | None,
    worker: MapWorker | None = None,
) -> int:
    """A JSON Lines file as set work (see ingest_set.JsonPlan): each parsed row's values
    staged as `take` gives them, or as RowMapper maps a row it does not take; then one
    `INSERT … SELECT` types and writes them all. Returns the rows written."""
    result = loader.result
    assert result.batch_id is not None
    stage_taken, stage_mapped = plan.prepare(conn)

    def stage(taken: list[tuple[Any, ...]], mapped: list[tuple[Any, ...]]) -> None:
        plan.add_hours(conn, taken)
        conn.executemany(stage_taken, taken)
        # RowMapper's rows: key, values, attrs, line
        conn.executemany(stage_mapped, [(*one[1:-2], one[-1]) for one in mapped])

    second = _SecondPart(conn, worker, stage) if worker else None
    if second is not None:
        second.create()
    for taken, mapped, rejects in map_chunks(rows, plan.take, loader):
        stage(taken, mapped)
        if rejects:
            conn.executemany(loader.insert_rejects, rejects)
        if second is not None:
            second.stage_ready()
        if on_progress:
            on_progress(*_progress(progress, worker))
    if second is not None:
        second.finish(result)
        second.write_rejects()
    table, names = loader.mapper.source.kind.table, loader.columns
    by_key = result.rows_read > ingest_set.JSON_KEY_ORDER_FROM
    select = plan.select(loader.mapper.source.name, result.batch_id, by_key)
    insert = f"{_insert_into(table, names)} {select} {_on_conflict(table, names)}"
    # In key order the writes need few pages cached: a small cache for the sort and writes.
    with sorting_cache(conn) if by_key else contextlib.nullcontext():
        changed = conn.execute(insert).rowcount
    # On failure the file's rollback takes the temporary tables with it.
    ingest_set.drop_stage(conn)
    return int(changed)


_SECOND_ROWS = "temp.cdp_second_rows"  # the row path's rows from the second process


class _SecondPart:
    """The second process's chunks, in the first (see ingest_worker): staged as they come,
    its rows by `stage` and its rejects into a temporary table, to be written after the first
    process's own: in line order, as one process writes them."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        worker: MapWorker,
        stage: Callable[[list[tuple[Any, ...]], list[tuple[Any, ...]]], None],
    ) -> None:
        self.conn, self.worker, self.stage = conn, worker, stage
        self.rejected = False

    def create(self) -> None:
        ingest_set.create_staged_rejects(self.conn)

    def stage_ready(self) -> None:
        """Stage what the worker has sent so far (it goes on meanwhile)."""
        for chunk in self.worker.ready():
            self._stage(*chunk)

    def finish(self, result: IngestResult) -> None:
        """Stage the rest of the worker's chunks, and add its counts to the file's."""
        for chunk in self.worker.rest():
            self._stage(*chunk)
        result.rows_read += self.worker.rows_read
        result.skipped += self.worker.skipped
        reasons = result.reject_reasons
        for problem, count in self.worker.reject_reasons.items():
            reasons[problem] = reasons.get(problem, 0) + count

    def write_rejects(self) -> None:
        if self.rejected:
            self.conn.execute(
                "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
                f"SELECT * FROM {ingest_set.STAGED_REJECTS} ORDER BY line"
            )

    def _stage(
        self,
        taken: list[tuple[Any, ...]],
        mapped: list[tuple[Any, ...]],
        rejects: list[tuple[Any, ...]],
    ) -> None:
        self.stage(taken, mapped)
        if rejects:
            self.conn.executemany(ingest_set.stage_rejects_sql(), rejects)
            self.rejected = True


def _progress(progress: Progress, worker: MapWorker | None) -> tuple[int, int]:
    """Bytes read so far, of the file's: both processes' parts."""
    return progress.done + (worker.read if worker else 0), progress.total


class _Leftovers:
    """The rows of a set-path file that RowMapper maps: their mapped rows (line, key,
    values, attrs) and their rejects go to temporary tables, to join SQL's in line order."""

    def __init__(self, conn: sqlite3.Connection, loader: _RowLoader, insert: str) -> None:
        self.conn = conn
        self.loader = loader
        self.insert = insert
        self.rows: list[tuple[Any, ...]] = []
        self.rejects: list[tuple[Any, ...]] = []
        self.mapped = 0

    def map(self, line: int, row: Any, error: str | None, raw: Any) -> None:
        mapped = self.loader.map(line, row, error, raw, self.rejects)
        if mapped is not None:
            self.rows.append((line, *mapped[1:-2]))
            self.mapped += 1
        if len(self.rows) >= CHUNK_ROWS or len(self.rejects) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        self.conn.executemany(self.insert, self.rows)
        self.conn.executemany(ingest_set.stage_rejects_sql(), self.rejects)
        self.rows.clear()
        self.rejects.clear()


INSERT_REJECTS = (
    "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def ingest(
    db: sqlite_utils.Database,
    config: Config,
    source_name: str | None = None,
    paths: list[Path] | None = None,
    *,
    force: bool = False,
    on_file: Callable[[Source, Path], ProgressCallback | None] | None = None,
    worker_from: int | None = WORKER_FROM_BYTES,
) -> list[IngestResult]:
    """Ingest the given files into one source, or every declared file of one or all sources."""
    if paths and source_name is None:
        raise UsageError("name the source these files come from with --source")
    sources = [config.source(source_name)] if source_name else list(config.sources.values())
    screen = Screen(config.identity, config.region)
    results = []
    for source in sources:
        files = paths if paths else config.files_of(source)
        for path in files:
            on_progress = on_file(source, path) if on_file else None
            results.append(
                ingest_file(
                    db,
                    source,
                    path,
                    force=force,
                    on_progress=on_progress,
                    screen=screen,
                    worker_from=worker_from,
                )
            )
    return results
