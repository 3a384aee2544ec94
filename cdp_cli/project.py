"""A cdp project as Python code meets it: its cdp.yaml, its store and its folders.

The front door of the library for a notebook or a script, and the CLI's context object:

    from cdp_cli import Project

    project = Project("cdp.yaml")
    with project.store() as db:
        ...

The environment is read here and nowhere else: $CDP_CONFIG names cdp.yaml when no path is
given, and $CDP_DB the store when none is given.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cdp_cli.storefiles import SIDECAR_SUFFIXES, beside

# Every cdp command makes a Project before it parses its own options, `cdp --version` too:
# the modules behind cdp.yaml and the store (YAML, phonenumbers, sqlite-utils: a tenth of a
# second) are imported by the methods that use them, not here.
if TYPE_CHECKING:
    from cdp_cli.config import Config
    from cdp_cli.lock import StoreLock
    from cdp_cli.sqlitelib import sqlite_utils

DEFAULT_CONFIG = "cdp.yaml"
PathLike = str | os.PathLike[str]


class Project:
    """A project's cdp.yaml (read on first use) and the store it names, or the one given."""

    def __init__(self, config: PathLike | None = None, store: PathLike | None = None) -> None:
        self.config_path = Path(config or os.environ.get("CDP_CONFIG") or DEFAULT_CONFIG)
        store = store or os.environ.get("CDP_DB")
        self.store_override = Path(store) if store else None  # else `store:` in cdp.yaml
        self._config: Config | None = None
        self._write_wait: float | None = None  # set by lock(): store() opens to write

    def __repr__(self) -> str:
        store = f", store={str(self.store_override)!r}" if self.store_override else ""
        return f"Project({str(self.config_path)!r}{store})"

    @property
    def config(self) -> Config:
        """cdp.yaml, read and checked once, on first use: a ConfigError names file and line."""
        if self._config is None:
            from cdp_cli.config import load_config

            self._config = load_config(self.config_path, self.store_override)
        return self._config

    @property
    def has_config(self) -> bool:
        """Whether cdp.yaml exists: `cdp status` reads a store given without one."""
        return self.config_path.exists()

    @property
    def store_path(self) -> Path:
        """The SQLite store: the one given, else `store:` in cdp.yaml, relative to it."""
        return self.store_override or self.config.store

    def lock(self, wait: float = 0, command: str = "cdp") -> StoreLock:
        """Take the store's write lock (one cdp writer at a time), waiting up to `wait` seconds;
        from then on the store opens to write, and waits as long for another program's lock."""
        from cdp_cli.lock import acquire

        held = acquire(self.store_path, wait, command)
        self._write_wait = wait
        return held

    def open_store(self, create: bool = True) -> sqlite_utils.Database:
        """The store, open until the caller closes it: to write when lock() was taken, else
        to read (read-only when it cannot be written). Without `create`, a missing store is a
        StoreError that says to run `cdp ingest` first."""
        from cdp_cli.store import DEFAULT_CACHE_MB, open_store

        write = self._write_wait is not None
        cache_mb = self.config.store_cache_mb if self.has_config else DEFAULT_CACHE_MB
        return open_store(
            self.store_path, create, write=write, wait=self._write_wait or 0, cache_mb=cache_mb
        )

    @contextmanager
    def store(self, create: bool = True) -> Iterator[sqlite_utils.Database]:
        """The store (open_store), open for the `with` block and closed after it; a damaged
        page met inside the block is a StoreDamaged that says what to do."""
        db = self.open_store(create)
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            from cdp_cli.integrity import corruption_error

            damaged = corruption_error(exc, self.store_path)
            if damaged is None:
                raise
            raise damaged from None
        finally:
            db.close()

    def check_output(self, path: Path, formats: Sequence[str], any_new_name: bool = False) -> None:
        """Refuse an output file (`--export`, `--html`) that would land in a missing folder or
        on the project's own files: its store, cdp.yaml, the log, a source's input files, the
        outbound files and the inboxes. Every output option calls this before any work."""
        from cdp_cli.files import check_output

        check_output(path, formats, *self._kept(), any_new_name=any_new_name)

    def _kept(self) -> tuple[dict[Path, str], dict[Path, str]]:
        """The project's files and folders no output may replace, each with what it is."""
        from cdp_cli.integrity import damage_marker, run_marker
        from cdp_cli.lock import lock_path

        store = self.store_path
        files = {store: "the project's store", self.config_path: "the project's cdp.yaml"}
        for suffix in SIDECAR_SUFFIXES:
            files[beside(store, suffix)] = f"the store's {suffix} file"
        files[lock_path(store)] = "the store's write lock"
        files[damage_marker(store)] = "the mark of a damaged store"
        files[run_marker(store)] = "the store's state as the last cdp run left it"
        folders: dict[Path, str] = {}
        if not self.has_config:
            return files, folders
        config = self.config
        if config.log_path:
            files[config.log_path] = "the log cdp run writes (log: in cdp.yaml)"
        for name, source in config.sources.items():
            files.update({f: f"an input file of source {name}" for f in config.files_of(source)})
            inbox = config.inbox_folder(source)
            if inbox:
                folders[inbox] = f"the inbox of source {name}"
        folders[config.outbound_folder] = f"{config.outbound_folder}/, the journeys' outbound files"
        return files, folders

    @property
    def tag_rules_folder(self) -> Path:
        return self.config.tag_rules_folder

    @property
    def journeys_folder(self) -> Path:
        return self.config.journeys_folder

    @property
    def templates_folder(self) -> Path:
        return self.config.templates_folder

    @property
    def outbound_folder(self) -> Path:
        return self.config.outbound_folder
