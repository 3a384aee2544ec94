"""Run `cdp ARGS` as `python -m cdp_cli` does, and kill the process with SIGKILL at a chosen
kill point: `python -m tests.killpoint ARGS`, or in a process forked by
`python -m tests.killpoint --serve`, the harness's fork server (see `serve`).

A kill point is the start of any SQL statement (sqlite3's trace callback, once per row of an
executemany) or an os.replace (outbound files are renamed into place). Between two points the
store and the outbound folder do not change, so killing at every point reaches every state a
kill can leave, however short the window in time. Environment:

- CDP_KILL_AT=N     die at the Nth point, before it runs (0 or unset: never);
- CDP_KILL_COUNT=F  write the points the run passed to F when it exits, one a line: 1 if a
                    transaction was open, and what the point was;
- CDP_KILL_NOTE=F   just before dying, write what the point was and whether a transaction was
                    open to F, for the harness's figures.

Without CDP_KILL_AT and CDP_KILL_COUNT no hook is installed: cdp runs as it does for a user.
Only the tests use this: cdp itself carries no hook. See tests/killharness.py.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import runpy
import signal
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import cdp_cli


def install(kill_at: int, note_file: str | None) -> list[str]:
    """Make every SQL statement and os.replace of this process a kill point; return the list
    each point passed is appended to."""
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

    # Patched on the modules, not where cdp imported them: cdp calls sqlite3.connect (through
    # sqlite-utils) and os.replace, never a name bound at import time.
    sqlite3.connect = traced_connect  # type: ignore[assignment]
    os.replace = replace_point  # type: ignore[assignment]
    return passed


def run(args: list[str]) -> None:
    """`cdp ARGS`, with the kill point hook when the environment asks for one."""
    kill_at = int(os.environ.get("CDP_KILL_AT") or 0)
    count_file = os.environ.get("CDP_KILL_COUNT")
    hooked = kill_at or count_file
    passed = install(kill_at, os.environ.get("CDP_KILL_NOTE")) if hooked else []
    sys.argv = ["cdp", *args]
    try:
        runpy.run_module("cdp_cli", run_name="__main__", alter_sys=True)
    finally:
        if count_file:
            Path(count_file).write_text("\n".join(passed), encoding="utf-8")


def serve() -> None:
    """The fork server: import all of cdp once and say `ready`, then for each request on stdin
    (a JSON object of `forked`'s arguments) fork a process that runs it, and answer with the
    process's pid.

    A kill or a rerun then costs cdp's own work, not Python's start-up and cdp's imports (0.3
    to 0.5 CPU-seconds, more than most runs' work). Each process writes its exit code to a
    file as it ends (one killed writes none): the server, its parent, reaps it, and the
    harness, which is not, reads the file."""
    for module in pkgutil.walk_packages(cdp_cli.__path__, "cdp_cli."):
        if module.name != "cdp_cli.__main__":  # runpy runs it, as `python -m cdp_cli` does
            importlib.import_module(module.name)
    print("ready", flush=True)
    for line in sys.stdin:
        _reap(block=False)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _exit_after(forked, **request)
        print(pid, flush=True)
    _reap(block=True)


def _reap(block: bool) -> None:
    """Reap the processes that have ended (block: wait for all of them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def forked(folder: str, args: list[str], environ: dict[str, str], errors: str) -> None:
    """`cdp ARGS` in folder with exactly environ, as in a process of its own: nothing on
    stdin, stdout discarded, stderr to the errors file."""
    os.chdir(folder)
    os.environ.clear()
    os.environ.update(environ)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, os.devnull, os.O_WRONLY),
                            (2, errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        target = os.open(path, flags)
        os.dup2(target, fd)
        os.close(target)
    run(args)


def _exit_after(body: Callable[..., None], exit_file: str, **arguments: Any) -> NoReturn:
    """Run body, write the exit code Python would give to exit_file, and end the process
    (never returning into the server's loop)."""
    code = 1
    try:
        body(**arguments)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            Path(exit_file).write_text(str(code), encoding="utf-8")
        finally:
            os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run(sys.argv[1:])
