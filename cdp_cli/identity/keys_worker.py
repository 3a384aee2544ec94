"""A second process that reads and normalizes part of a full resolve's identity keys.

A full run reads one row per (identity key, source) of every kind table and normalizes its
identifiers: per-key Python (the blocklists; phonenumbers once per distinct value), about 108 s
of CPU of 375 at 1M customers, on one of the box's two cores. When the tables after the
members hold keys.WORKER_FROM_ROWS rows or more, the keys are split at a point one process
would reach (`split`, most of the way through the members): the first process reads the keys
before it, a second process (workers.start) the keys after it, in the same order, and sends
each key back with its identifiers. The first process stages its own keys and
the second's as they come, the second's numbered after all of its own (graph.stage): so the
graph, its numbering and every table written are those of one process, wherever the split
falls (tests/test_resolve_worker.py).

The second process opens the store to read, at the snapshot the run's transaction began with:
the run has written nothing to the kind tables yet and holds the write lock, so no one else
has either. It writes nothing; the run's transaction, its rollback and its kill guarantee stay
the first process's. The tombstones, which the first loads inside the transaction, are sent
along, so both screen keys against the same forgotten people.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from cdp_cli import workers
from cdp_cli.config import Config
from cdp_cli.errors import CdpError, StoreError, SystemFault
from cdp_cli.identity.graph import Found
from cdp_cli.identity.keys import EVERY_KEY, KIND_TABLES, Segment, new_keys, normalized_keys
from cdp_cli.identity.normalize import Normalizer, Rejected
from cdp_cli.identity.tombstones import Tombstones
from cdp_cli.integrity import store_file
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.store import open_store
from cdp_cli.workers import frame_value, read_raw_frame

# Where the second process's keys start: in KIND_TABLES[SPLIT_TABLE] (the members), past the
# lowest FIRST_SHARE of the identity keys. Besides normalizing its own keys, the first process
# stages every key, the second's too; the second normalizes without the cache the members'
# phones fill (orders carry mostly the same phones). Staging alone at 1M customers
# (3.4M keys, 6.6M rows), in process: one process 106.6 s; two, the members alone in the
# first, 61.1 to 67.3 s with the second idle at the end (its CPU 51 to 60 s); 85% of them,
# 60.7 s, the two within 3 s of CPU of each other; 70%, 70.3 s, the first waiting.
SPLIT_TABLE = 0
FIRST_SHARE = 0.85
# The second process's memory comes on top of the first's, which holds the run's caches and
# page cache. It reads each table once, in order, and its tables share few values (the orders'
# phones are mostly the members', which the first process reads): it forgets the values it
# normalized after each table, and reads through a small page cache. At 1M customers, the two
# processes together then held 1,001 MiB at most, against 1,367 MiB (reading and staging alone).
WORKER_CACHE_MB = 16
CHUNK_KEYS = 5_000  # keys a message: the pipe carries about 3M of them at 1M customers

Keyed = tuple[int, list[Found], list[Rejected]]
Parted = tuple[int, int, list[Found], list[Rejected]]  # (part, key, found, rejected)
_GONE = object()  # what the reader thread queues when the worker's stdout ends


class Part(NamedTuple):
    """What the second process reads: the store's file, the keys, and how to read them."""

    store: str
    config: Config
    segments: tuple[Segment, ...]
    tombstones: Tombstones | None


def split() -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
    """The keys of a full run as the first process's and the second's, in one process's
    order: SPLIT_TABLE's keys below FIRST_SHARE of the 64-bit range go to the first."""
    table = KIND_TABLES[SPLIT_TABLE]
    at = min(int(-(2**63) + FIRST_SHARE * 2**64), 2**63 - 1)
    first = (*EVERY_KEY[:SPLIT_TABLE], Segment(table, None, at))
    return first, (Segment(table, at, None), *EVERY_KEY[SPLIT_TABLE + 1 :])


def read_keys(
    db: sqlite_utils.Database,
    config: Config,
    segments: tuple[Segment, ...],
    tombstones: Tombstones | None,
    forgotten: list[int],
    forget_between: bool = False,
) -> Iterator[Keyed]:
    """Every key of these segments (a full run's), normalized, in either process. The
    normalizer's caches (every distinct raw value: the run's peak memory) go with the
    iterator once it is done; with `forget_between`, also after each segment."""
    normalizer = Normalizer(config.identity, config.region)
    groups = [(segment,) for segment in segments] if forget_between else [segments]
    for group in groups:
        keys = new_keys(db, config, None, group)
        yield from normalized_keys(normalizer, keys, tombstones, forgotten)
        normalizer.forget_values()


@contextmanager
def full_run_keys(
    db: sqlite_utils.Database,
    config: Config,
    tombstones: Tombstones | None,
    forgotten: list[int],
    worker_from: int | None,
) -> Iterator[Iterator[Parted]]:
    """Every key of a full run, normalized, with its part (graph.stage): part of them by a
    second process when the tables after the members hold `worker_from` rows or more (None:
    never). The second's keys come as they arrive, between the first's own, so that they
    never wait in memory; `forgotten` gets the first's forgotten keys, then the second's, as
    one process has them."""
    first, second = split()
    worker = _start(db, config, second, tombstones, worker_from)
    if worker is None:
        keys = read_keys(db, config, EVERY_KEY, tombstones, forgotten)
        yield ((0, *keyed) for keyed in keys)
        return
    try:
        own = read_keys(db, config, first, tombstones, forgotten)
        yield _interleaved(own, worker, forgotten)
    finally:
        worker.stop()


def _interleaved(
    own: Iterator[Keyed], worker: KeysWorker, forgotten: list[int]
) -> Iterator[Parted]:
    for count, keyed in enumerate(own):
        yield (0, *keyed)
        if count % CHUNK_KEYS == 0:
            yield from worker.ready()
    yield from worker.rest(forgotten)


def _start(
    db: sqlite_utils.Database,
    config: Config,
    segments: tuple[Segment, ...],
    tombstones: Tombstones | None,
    worker_from: int | None,
) -> KeysWorker | None:
    """The second process for this run, or None when one process reads every key: the
    tables after the members are small, the store has no file (in memory), or no process
    can start."""
    store = store_file(db.conn)
    if worker_from is None or not store.is_file():  # in memory: no file to open
        return None
    rows = sum(
        db.conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
        for table in KIND_TABLES[1:]
    )
    if rows < worker_from:
        return None
    try:
        return KeysWorker(Part(str(store), config, segments, tombstones))
    except OSError:  # no second process to be had (no fork, no Python): read them here
        return None


class KeysWorker:
    """The first process's side. A thread reads the pipe as the worker writes, so that the
    worker never waits; the first process takes what has come between its own keys."""

    def __init__(self, part: Part) -> None:
        self.process = workers.start("cdp_cli.identity.keys_worker", "worker_main", tuple(part))
        assert self.process.stdout is not None
        self._results = self.process.stdout
        self._messages: queue.Queue[Any] = queue.Queue()
        self._done = False
        self._forgotten: list[int] = []
        self._thread = threading.Thread(target=self._read, name="resolve worker", daemon=True)
        self._thread.start()

    def ready(self) -> Iterator[Parted]:
        """The keys that have come, without waiting for more."""
        while not self._done:
            try:
                raw = self._messages.get_nowait()
            except queue.Empty:
                return
            yield from self._take(raw)

    def rest(self, forgotten: list[int]) -> Iterator[Parted]:
        """Every key still to come, waiting for each; then the keys the worker found carrying
        a forgotten identifier are added to `forgotten`."""
        while not self._done:
            yield from self._take(self._messages.get())
        forgotten += self._forgotten

    def _take(self, raw: Any) -> Iterator[Parted]:
        if raw is _GONE:
            how = workers.exit_description(self.process)
            raise SystemFault(
                f"the second process reading identity keys ended ({how}); nothing was "
                "resolved: run `cdp resolve` again"
            )
        kind, body = frame_value(raw)
        if kind == "keys":
            for key, found, rejected in body:
                yield 1, key, found, [Rejected(*r) for r in rejected] if rejected else []
        elif kind == "end":
            self._forgotten, self._done = body, True
        elif kind == "fault":  # the store, as the first process would say it
            raise StoreError(body)
        else:  # a bug: the same key would fail in one process
            raise RuntimeError(f"in the second process reading identity keys: {body}")

    def _read(self) -> None:
        try:
            while True:
                self._messages.put(read_raw_frame(self._results))
        except (EOFError, OSError, ValueError):
            self._messages.put(_GONE)

    def stop(self) -> None:
        """End the worker (done, or the run failed in the first process) and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._results.close()


def _messages(part: Part) -> Iterator[tuple[str, Any]]:
    """The worker's messages: its keys a chunk at a time, then the forgotten ones."""
    db = open_store(Path(part.store), create=False, cache_mb=WORKER_CACHE_MB)
    try:
        forgotten: list[int] = []
        chunk: list[tuple[int, list[Found], list[tuple[str, str, str]]]] = []
        for key, found, rejected in read_keys(
            db, part.config, part.segments, part.tombstones, forgotten, forget_between=True
        ):
            chunk.append((key, found, [(r.type, r.raw, r.reason) for r in rejected]))
            if len(chunk) == CHUNK_KEYS:
                yield "keys", chunk
                chunk = []
        if chunk:
            yield "keys", chunk
        yield "end", forgotten
    finally:
        db.conn.close()


def worker_main() -> None:
    """The worker process: its part on stdin, keys on stdout, until its keys are read or
    the first process has gone. A store's fault goes back as the first process would say it."""
    gc.disable()  # millions of tuples and no cycles, as in the first process's run
    workers.serve(lambda request: _messages(Part(*request)), (CdpError, sqlite3.DatabaseError))
