"""The errors a user can cause, one class per area.

The library raises these and never prints or exits; the CLI turns them into one line and an
exit code (1 for data and runtime errors, 2 for usage errors and invalid files the user wrote).
"""

from __future__ import annotations

from pathlib import Path


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
    """Another cdp command is writing to the store and did not finish in time."""


class StoreDamaged(StoreError):
    """The store's file is damaged (SQLite met a corrupt page): check it, restore a backup."""


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
