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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from cdp_cli.config import DEFAULT_CONFIG, Config, load_config
from cdp_cli.store import open_store

PathLike = str | os.PathLike[str]


class Project:
    """A project's cdp.yaml (read on first use) and the store it names, or the one given."""

    def __init__(self, config: PathLike | None = None, store: PathLike | None = None) -> None:
        self.config_path = Path(config or os.environ.get("CDP_CONFIG") or DEFAULT_CONFIG)
        store = store or os.environ.get("CDP_DB")
        self.store_override = Path(store) if store else None  # else `store:` in cdp.yaml
        self._config: Config | None = None

    def __repr__(self) -> str:
        store = f", store={str(self.store_override)!r}" if self.store_override else ""
        return f"Project({str(self.config_path)!r}{store})"

    @property
    def config(self) -> Config:
        """cdp.yaml, read and checked once, on first use: a ConfigError names file and line."""
        if self._config is None:
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

    @contextmanager
    def store(self, create: bool = True) -> Iterator[sqlite_utils.Database]:
        """The store, open for the `with` block and closed after it. Without `create`, a
        missing store is a StoreError that says to run `cdp ingest` first."""
        db = open_store(self.store_path, create=create)
        try:
            yield db
        finally:
            db.close()

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
