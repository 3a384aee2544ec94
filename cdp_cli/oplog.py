"""The operations log (`log:` in cdp.yaml): one `key=value` line per stage of `cdp run`.

A line holds the time, the pid, the stage, its status, counts and seconds, so that `grep`,
`tail -f` and logfmt tools read it. It never holds personal data: stages log counts, and of an
error message it keeps the gist (`for_log`): the first clause, without quoted values, email
addresses or phone and ID numbers. An error can quote data, masked where it is made
(privacy.quote_cells): a file without a header row makes "M***, 李***, ..." of its first row.
Each line is one append to a file opened for this run, so rotation tools that rename the file
(logrotate without copytruncate) are safe: the next run starts a new file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cdp_cli.errors import CdpError, system_fault
from cdp_cli.privacy import replace_identifiers
from cdp_cli.store import now_iso

QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def scrub(text: str) -> str:
    """The text with email addresses and phone or ID numbers replaced: safe for a log."""
    return replace_identifiers(text, lambda _: "<email>", lambda _: "<number>")


def for_log(message: str) -> str:
    """What the log keeps of an error message: its first clause (up to "; "), with quoted
    values replaced by '…' and then `scrub`bed. The terminal shows the whole message."""
    return scrub(QUOTED.sub("'…'", message.split("; ", 1)[0]))


def format_fields(fields: dict[str, Any]) -> str:
    """`key=value` pairs; a value with spaces, quotes or `=` is quoted as a JSON string."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.3f}"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        if not text or not text.isprintable() or any(c in text for c in ' ="\\'):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class OpsLog:
    """Appends lines to the log file; does nothing when the project sets no `log:`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self) -> OpsLog:
        if self.path is not None and self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise CdpError(f"{self.path}: cannot write the log file ({exc.strerror})") from None
        return self

    def write(self, **fields: Any) -> None:
        """One line: the time, the pid, then the fields in the order given."""
        if self.path is None:
            return
        self.open()
        assert self._file is not None
        try:
            self._file.write(f"{now_iso()} pid={os.getpid()} {format_fields(fields)}\n")
            self._file.flush()
        except OSError as exc:  # a full disk: the error names the log, not the store
            raise system_fault(exc, self.path) or CdpError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a line a full disk refused: write() said so
                self._file.close()
            self._file = None

    def __enter__(self) -> OpsLog:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
