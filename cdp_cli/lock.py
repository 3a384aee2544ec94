"""One writer at a time: an exclusive lock on `<store>.lock`, held while a command writes.

The lock is `fcntl.flock` on a file next to the store. Such a lock belongs to the open file and
the kernel drops it when the process ends, however it ends, so a lock left by a killed process
is simply free for the next command: there is no stale lock to detect or break. The file holds
its holder's pid, start time and command, for the message another command gets while it waits.

Readers take no lock: the store is in WAL mode, so `cdp status`, `cdp profile`, Datasette or
`sqlite3` read a consistent snapshot while a command writes. The lock is advisory and works on
a local disk; keep the store off network file systems.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cdp_cli.errors import StoreBusy, StoreError, system_fault
from cdp_cli.store import check_store_path, now_iso
from cdp_cli.storefiles import LOCK_SUFFIX, beside

POLL_SECONDS = 0.1


def lock_path(store: Path) -> Path:
    """`cdp.db` -> `cdp.db.lock`, in the same folder; of the real file, when `store` is a
    symlink, so that every name of one store takes the one lock."""
    real = store.resolve()
    return beside(real, LOCK_SUFFIX)


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as its holder wrote it into the lock file."""

    pid: int | None
    since: str | None
    command: str | None


class StoreLock:
    """The store's write lock, once acquired; `release()` (or leaving a `with`) frees it."""

    def __init__(self, store: Path, fd: int) -> None:
        self.store = store
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # a free lock names no one
        finally:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def acquire(store: Path, wait: float = 0, command: str = "cdp") -> StoreLock:
    """Take the store's write lock, waiting up to `wait` seconds; StoreBusy if it stays taken."""
    check_store_path(store)
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    except OSError as exc:
        fault = system_fault(exc, path)
        error = fault or StoreError(f"{path}: cannot open the store's lock file ({exc.strerror})")
        raise error from None
    try:
        _wait_for(fd, store, wait)
        info = {"pid": os.getpid(), "since": now_iso(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return StoreLock(store, fd)


def _wait_for(fd: int, store: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreBusy(busy_message(store, _read_holder(fd), wait))
        time.sleep(min(POLL_SECONDS, remaining))


def busy_message(store: Path, holder: Holder, wait: float) -> str:
    who = f"pid {holder.pid} since {holder.since}" if holder.pid else "another cdp command"
    running = f", running `{holder.command}`" if holder.command else ""
    waited = f"; waited {wait:g}s" if wait else "; --wait SECONDS waits for it"
    return f"{store}: store is busy ({who}{running}){waited}"


def _read_holder(fd: int) -> Holder:
    # The holder writes its line just after taking the lock: an empty file is that moment.
    for _ in range(3):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            break
        time.sleep(0.05)
    try:
        info = json.loads(text)
        return Holder(int(info["pid"]), str(info["since"]), str(info.get("command") or ""))
    except (ValueError, KeyError, TypeError):
        return Holder(None, None, None)
