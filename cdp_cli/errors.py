"""The errors a user can cause, one class per area, and the machine's faults put in words.

The library raises these and never prints or exits; the CLI turns them into one line and an
exit code (1 for data and runtime errors, 2 for usage errors and invalid files the user wrote).
`system_fault` is the one place where an error of the machine (a full disk, a read-only file,
a store another program holds) becomes such a line.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from cdp_cli.storefiles import WAL_SUFFIXES, sidecars


class CdpError(Exception):
    """Base class of every error cdp expects a user to be able to cause."""

    exit_code = 1


class UsageError(CdpError):
    """The command was asked for something that cannot be done as asked."""

    exit_code = 2


class FileError(CdpError):
    """A file the user wrote is invalid; the message names the file, line and key."""

    exit_code = 2

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(FileError):
    """cdp.yaml is missing or invalid."""


class IngestError(CdpError):
    """An input file cannot be read as its source declares."""


class StoreError(CdpError):
    """The store cannot be opened or is not a cdp store."""


class StoreBusy(StoreError):
    """Another cdp command, or another program, is writing to the store and did not finish in
    time."""


class SystemFault(CdpError):
    """The machine stopped the command, not the data: a full disk, a read-only file, folder or
    filesystem, a permission. What was not committed was rolled back; run it again once fixed."""


class StoreDamaged(StoreError):
    """The store's file is damaged (SQLite met a corrupt page): check it, restore a backup."""


class PredictError(CdpError):
    """The store's history cannot support a prediction (no orders, no repeat purchases, too
    short a history); the message names what is missing."""


class MissingExtra(CdpError):
    """An optional part of cdp is used without its libraries installed (an extra); the
    message says how to install it."""


class NotFound(CdpError):
    """A named thing (source, profile, tag, journey) does not exist."""


class RuleError(CdpError):
    """A rule a user wrote (a tag, segment or journey condition) is invalid."""

    exit_code = 2

    def __init__(self, message: str, column: int | None = None, rule: str | None = None) -> None:
        # `message` stays bare so callers can prefix the file, line and tag name.
        self.message = message
        self.column = column
        self.rule = rule
        super().__init__(message)


class TemplateError(FileError):
    """A message template cannot be rendered or sent; the message names the file and line."""


AGAIN = "then run the command again"


def system_fault(exc: BaseException, path: Path | None = None) -> CdpError | None:
    """The one-line error for a fault of the machine, or None when `exc` is not one (a bug).

    `path` is what was being written: the store, for SQLite's errors; for an OSError, the file
    its error does not name (a failed write() names none). Used by the CLI for any command, and
    by what records errors: ingest's batches and `cdp run`'s stages and log.
    """
    if isinstance(exc, sqlite3.OperationalError):
        return _store_fault(str(exc), path)
    if isinstance(exc, OSError):
        return _file_fault(exc, Path(exc.filename) if exc.filename else path)
    return None


def sqlite_temp_folder() -> str:
    """Where SQLite writes its temporary files (sorts, temp tables, a statement's automatic
    indexes): the first writable folder of those its unix VFS tries, in its order."""
    environment = (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"))
    for folder in (*environment, "/var/tmp", "/usr/tmp", "/tmp"):
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return os.path.abspath(folder)
    return os.path.abspath(".")


def _same_disk(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True  # nothing better to say than the store's folder


def _store_fault(message: str, store: Path | None) -> CdpError | None:
    """SQLite's error, by its message (the same text on every version), said of the store."""
    name = store.name if store else "the store"  # and the folder, in full, where it helps
    folder = os.path.abspath(store.parent) if store else "its folder"
    if message == "database or disk is full":
        temp = sqlite_temp_folder()
        if store and not _same_disk(temp, folder):  # a sort may have filled the other one
            folder = f"{folder} and in {temp} (SQLite's temporary files)"
        return SystemFault(f"{name}: the disk is full; free some space in {folder}, {AGAIN}")
    if message == "disk I/O error":
        return SystemFault(
            f"{name}: disk I/O error; check that {folder} has free space and its disk is "
            f"healthy, {AGAIN}"
        )
    if message in ("attempt to write a readonly database", "unable to open database file"):
        reason = read_only_reason(store) if store else None
        if reason or message.startswith("attempt"):
            return SystemFault(f"{name}: cannot write the store: {reason or 'it is read-only'}")
    if message == "database is locked":
        return StoreBusy(
            f"{name}: the store is busy: another program holds a write lock (a sqlite3 shell, "
            "a backup?); let it finish, or give --wait SECONDS"
        )
    return None


def _file_fault(exc: OSError, path: Path | None) -> CdpError | None:
    name = str(path) if path else "a file"
    folder = os.path.abspath(path.parent) if path else "its folder"
    if exc.errno == errno.ENOSPC:
        return SystemFault(
            f"cannot write {name}: the disk is full; free some space in {folder}, {AGAIN}"
        )
    if exc.errno == errno.EDQUOT:
        return SystemFault(f"cannot write {name}: the disk quota is used up in {folder}; {AGAIN}")
    if exc.errno == errno.EFBIG:
        return SystemFault(
            f"cannot write {name}: the file is too large for this filesystem or for the file "
            f"size limit (ulimit -f); {AGAIN}"
        )
    if exc.errno == errno.EROFS:
        return SystemFault(
            f"cannot write {name}: the filesystem is mounted read-only; remount it read-write, "
            f"{AGAIN}"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        if path and not path.exists():
            return SystemFault(
                f"cannot create {name}: the user running cdp may not write in {folder}; "
                f"make the folder writable, {AGAIN}"
            )
        return SystemFault(
            f"{name}: permission denied to the user running cdp; change the owner or mode of "
            f"it or its folder, {AGAIN}"
        )
    return None


def read_only_reason(store: Path) -> str | None:
    """What keeps the store from being written (its filesystem, folder or file, read-only),
    said with what to make writable; None when nothing is."""
    folder = store.absolute().parent
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"the filesystem holding {folder} is mounted read-only; remount it read-write"
    if not os.access(folder, os.W_OK):
        return (
            f"its folder {folder} is read-only, and SQLite writes its journal ({store.name}-wal "
            "and -shm) beside the store; make the folder writable by the user running cdp"
        )
    for path in (store, *sidecars(store, WAL_SUFFIXES)):
        if path.exists() and not os.access(path, os.W_OK):
            what = "the file is" if path == store else f"{path.name} beside it is"
            return f"{what} read-only; make it writable by the user running cdp (chmod u+w {path})"
    return None
