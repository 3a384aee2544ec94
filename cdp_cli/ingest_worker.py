"""A second process that reads and maps the later part of a large JSON Lines file.

Reading JSON and mapping its rows is per-row Python: about 20 µs an app event, 70 µs a shop
order with its items, where writing the row costs a few. One process leaves one of the box's
two cores idle. From WORKER_FROM_BYTES, ingest splits a UTF-8 JSON Lines file where a line
starts (split_point): the first process reads and maps the lines before it as ever, and a
second one (workers.start) reads and maps the lines after it, with the same RowMapper and
JsonPlan, and sends each chunk back. The first process stages those chunks in temporary tables
as they come and writes them after its own rows, so the stored rows, their ids, the rejects
and their order are those one process gives (tests/test_ingest_worker.py).

The second process opens the file, never the store; a file's one transaction, its rollback
and its kill guarantee stay the first process's. Where the store holds forgotten people, the
first process loads their tombstones inside the file's transaction, as ever, and sends them
along, so both screen every row against the same ones.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cdp_cli import ingest_set, readers, workers
from cdp_cli.config import Source
from cdp_cli.errors import IngestError
from cdp_cli.identity.tombstones import Tombstones
from cdp_cli.ingest_rows import IngestResult, RowMapping, map_chunks
from cdp_cli.mapping import RowMapper
from cdp_cli.workers import read_frame

# The smallest file read by two processes: below it, starting one (about 0.3 s) gives little.
WORKER_FROM_BYTES = 16 * 1024 * 1024
# The first process's part of the file's bytes, so that both processes end together. Besides
# its own lines, it stages every row the second sends: on the set path a row costs it about a
# quarter of what mapping one does (app events), on the row path about a ninth (shop orders,
# whose rows cost more to map). Measured in process (1.6M shop orders, 1M app events): the
# first process waited for the second's last chunks 0 and 0.1 s.
FIRST_SHARE_SET = 0.4
FIRST_SHARE_ROWS = 0.45
# Chunks read from the worker and not staged yet: the worker waits when they are this many,
# so a first process slower than it never holds more than these in memory.
IN_FLIGHT = 4
ENCODINGS = ("utf-8", "utf-8-sig")  # where every b"\n" ends a line

Chunk = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]
_GONE = object()  # what the reader thread queues when the worker's stdout ends


def split_point(path: Path, worker_from: int | None, share: float) -> int | None:
    """Where the second process's part of the file starts (the start of the first line at or
    after `share` of its bytes), or None when one process reads it all."""
    size = path.stat().st_size
    if worker_from is None or size < worker_from:
        return None
    with path.open("rb") as stream:
        stream.seek(max(int(size * share) - 1, 0))
        while (chunk := stream.readline(readers.SKIP_CHUNK)) and not chunk.endswith(b"\n"):
            pass  # to the end of the line holding that byte, a long one in pieces
        start = stream.tell()
    return start if 0 < start < size else None


def lines_before(stream: Any, offset: int) -> int:
    """The lines that end before `offset` (a line's start)."""
    stream.seek(0)
    count, left = 0, offset
    while left and (block := stream.read(min(left, 1 << 24))):
        count += block.count(b"\n")
        left -= len(block)
    return count


class Part(NamedTuple):
    """What the second process reads, and how: its part of the file (from `start`, a line's
    start, to the end) and what the first process maps rows with."""

    source: Source
    path: Path
    start: int
    encoding: str
    batch_id: int
    set_work: bool  # the JSON Lines plan (ingest_set.json_plan_for) maps what it takes
    tombstones: Tombstones | None


class MapWorker:
    """The first process's side: the worker's chunks as they come. A thread reads the pipe
    into a bounded queue, so the worker never waits for the first process between two of its
    chunks, and never gets more than IN_FLIGHT chunks ahead."""

    def __init__(self, part: Part) -> None:
        self.process = workers.start("cdp_cli.ingest_worker", "worker_main", tuple(part))
        assert self.process.stdout is not None
        self.start, self.read = part.start, 0  # bytes of its part read so far, for progress
        self.rows_read = self.skipped = 0
        self.reject_reasons: dict[str, int] = {}
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=IN_FLIGHT)
        self._done = False
        self._results = self.process.stdout
        self._thread = threading.Thread(target=self._read, name="ingest worker", daemon=True)
        self._thread.start()

    def ready(self) -> Iterator[Chunk]:
        """The chunks that have come, without waiting for more."""
        while not self._done:
            try:
                message = self._chunks.get_nowait()
            except queue.Empty:
                return
            chunk = self._take(message)
            if chunk is not None:
                yield chunk

    def rest(self) -> Iterator[Chunk]:
        """Every chunk still to come, waiting for each; then its counts are set."""
        while not self._done:
            chunk = self._take(self._chunks.get())
            if chunk is not None:
                yield chunk

    def _take(self, message: Any) -> Chunk | None:
        if message is _GONE:
            how = workers.exit_description(self.process)
            raise IngestError(
                f"the second process reading the file ended ({how}); nothing of this file "
                "was kept: ingest it again"
            )
        kind, *body = message
        if kind == "chunk":
            taken, mapped, rejects, position = body
            self.read = position - self.start
            return taken, mapped, rejects
        if kind == "fault":  # reading the file
            raise IngestError(body[0])
        if kind == "error":  # a bug: the same row would fail in one process
            raise RuntimeError(f"in the second process reading the file: {body[0]}")
        self.rows_read, self.skipped, self.reject_reasons = body
        self._done = True
        return None

    def _read(self) -> None:
        try:
            while True:
                message = read_frame(self._results)
                self._chunks.put(message)
                if message[0] != "chunk":
                    return
        except (EOFError, OSError, ValueError, TypeError):
            self._chunks.put(_GONE)

    def stop(self) -> None:
        """End the worker (done, or the file failed in the first process) and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        with contextlib.suppress(queue.Empty):  # a reader thread waiting on a full queue
            while True:
                self._chunks.get_nowait()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._results.close()


def map_part(part: Part) -> Iterator[tuple[Any, ...]]:
    """The worker's messages: each chunk of its part of the file as the first process would
    map it (taken rows, mapped rows, rejects, and how far it has read), then its counts."""
    source = part.source
    with part.path.open("rb") as stream:
        first_line = lines_before(stream, part.start) + 1
        stream.seek(part.start)
        rows = readers.read_jsonl(stream, part.encoding, source.limits, first_line=first_line)
        mapper = RowMapper(source, None)
        plan = ingest_set.json_plan_for(mapper) if part.set_work else None
        result = IngestResult(source.name, str(part.path), "done", batch_id=part.batch_id)
        mapping = RowMapping(mapper, result, part.tombstones)
        take = plan.take if plan is not None else None
        for taken, mapped, rejects in map_chunks(rows, take, mapping):
            yield ("chunk", taken, mapped, rejects, stream.tell())
        yield ("end", result.rows_read, result.skipped, result.reject_reasons)


def worker_main() -> None:
    """The worker process: its part on stdin, chunks on stdout, until its part is read or the
    first process has gone. A read error goes back as the first process would say it."""
    workers.serve(lambda request: map_part(Part(*request)), (OSError,))
