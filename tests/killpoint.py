"""`python -m tests.killpoint ARGS`: run `cdp ARGS` as `python -m cdp_cli` does, and kill the
process with SIGKILL at a chosen kill point.

A kill point is the start of any SQL statement (sqlite3's trace callback, once per row of an
executemany) or an os.replace (outbound files are renamed into place). Between two points the
store and the outbound folder do not change, so killing at every point reaches every state a
kill can leave, however short the window in time. Environment:

- CDP_KILL_AT=N     die at the Nth point, before it runs (0 or unset: never);
- CDP_KILL_COUNT=F  write the points the run passed to F when it exits, one a line: 1 if a
                    transaction was open, and what the point was;
- CDP_KILL_NOTE=F   just before dying, write what the point was and whether a transaction was
                    open to F, for the harness's figures.

Only the tests use this: cdp itself carries no hook. See tests/killharness.py.
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    kill_at = int(os.environ.get("CDP_KILL_AT") or 0)
    count_file = os.environ.get("CDP_KILL_COUNT")
    note_file = os.environ.get("CDP_KILL_NOTE")
    passed: list[str] = []

    def point(what: str, conn: sqlite3.Connection | None = None) -> None:
        passed.append(f"{int(bool(conn is not None and conn.in_transaction))} {what[:40]}")
        if len(passed) != kill_at:
            return
        if note_file:
            Path(note_file).write_text(passed[-1], encoding="utf-8")
        os.kill(os.getpid(), signal.SIGKILL)

    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: point((sql.split(None, 1) or [""])[0].upper(), conn))
        return conn

    replace = os.replace

    def replace_point(*args: Any, **kwargs: Any) -> None:
        point("os.replace")
        replace(*args, **kwargs)

    sqlite3.connect = traced_connect  # type: ignore[assignment]
    os.replace = replace_point  # type: ignore[assignment]
    if count_file:
        atexit.register(lambda: Path(count_file).write_text("\n".join(passed), encoding="utf-8"))
    sys.argv = ["cdp", *sys.argv[1:]]
    runpy.run_module("cdp_cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
