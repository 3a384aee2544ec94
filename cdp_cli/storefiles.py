"""The store's files on disk: the store, SQLite's own files beside it, and cdp's markers.

Every command that copies, removes, protects or explains these files names them from here:
backup and purge, `cdp demo --force`, the outputs no option may overwrite, and the errors
that say which file is read-only or held open.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_STORE = "cdp.db"  # a project's store when cdp.yaml names none
# SQLite's files beside a store, by what it adds to the store's name: the write-ahead log and
# its shared memory (there while a store in WAL mode is open), and a rollback journal.
WAL_SUFFIXES = ("-wal", "-shm")
SIDECAR_SUFFIXES = (*WAL_SUFFIXES, "-journal")
LOCK_SUFFIX = ".lock"  # cdp's write lock beside the store (lock.lock_path)


def beside(store: Path, suffix: str) -> Path:
    """`cdp.db` and `-wal` -> `cdp.db-wal`: a file named after the store, in its folder."""
    return store.with_name(store.name + suffix)


def wal_file(store: Path) -> Path:
    """SQLite's write-ahead log beside the store."""
    return beside(store, "-wal")


def sidecars(store: Path, suffixes: tuple[str, ...] = SIDECAR_SUFFIXES) -> list[Path]:
    """SQLite's files beside the store (all three, or those of `suffixes`), there or not."""
    return [beside(store, suffix) for suffix in suffixes]
