"""A second Python process working beside the first: how it starts, and what crosses its pipes.

On the 2-core box cdp is built for, a command that spends its time in per-row Python leaves a
core idle. Rendering a journey's messages (messaging/rendering.py) and reading a large JSON
Lines file (ingest_worker.py) hand part of that work to a second process. It is a plain
`python -c`, with pipes for stdin and stdout: it inherits no file of the first process (the
store, its lock), imports nothing of the caller's script (as multiprocessing's spawn would),
and, in a session of its own, is not sent the terminal's Ctrl-C (the first process ends it).
It ends when its pipe closes, whichever side dies, so a killed command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import cdp_cli

# What crosses the pipes, each way: frames of a kind (marshal or pickle) and a length. A batch
# is tuples, lists and dicts of str, int, float and None, which marshal writes and reads several
# times faster than pickle (millions of rows cross); anything else marshal refuses (a value of
# another type in cdp.yaml, say) goes as a pickle.
_FRAME = struct.Struct(">cQ")
_MARSHAL, _PICKLE = b"m", b"p"


def frame(value: Any) -> bytes:
    """`value` as one frame for the pipe."""
    try:
        kind, data = _MARSHAL, marshal.dumps(value)
    except ValueError:  # unmarshallable: a type marshal does not write
        kind, data = _PICKLE, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(kind, len(data)) + data


def read_frame(pipe: IO[bytes]) -> Any:
    """The next frame's value; EOFError when the pipe ends (between frames or inside one)."""
    return frame_value(read_raw_frame(pipe))


def read_raw_frame(pipe: IO[bytes]) -> tuple[bytes, bytes]:
    """The next frame as it came (its kind and bytes), for a reader that holds many before it
    uses them: bytes take a fraction of the memory of the tuples they hold."""
    head = pipe.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    kind, size = _FRAME.unpack(head)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return kind, data


def frame_value(raw: tuple[bytes, bytes]) -> Any:
    """The value of a frame read_raw_frame gave."""
    kind, data = raw
    return marshal.loads(data) if kind == _MARSHAL else pickle.loads(data)


def start(module: str, function: str, request: Any = None) -> subprocess.Popen[bytes]:
    """A second process running `module.function()`, with this process's cdp_cli; sent
    `request` as its one frame on stdin, when given (serve reads it)."""
    package = str(Path(cdp_cli.__file__).resolve().parents[1])  # cdp_cli as imported here
    path = os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)
    # `python -c` puts the current folder first on sys.path: left there, a `cdp_cli` folder in
    # it (a checkout of another commit, say) would be the worker's cdp_cli, not this process's.
    command = (
        "import sys; sys.path[:1] = [p for p in sys.path[:1] if p]; "
        f"from {module} import {function}; {function}()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path}, start_new_session=True,
    )  # fmt: skip
    if request is not None:
        assert process.stdin is not None
        with contextlib.suppress(OSError):  # a process gone already: its reader says so
            process.stdin.write(frame(request))
            process.stdin.close()
    return process


def answers_pipe() -> IO[bytes]:
    """In the second process: its stdout, for frames only; anything printed by mistake goes
    to stderr instead."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return answers


def serve(work: Callable[[Any], Iterator[Any]], faults: tuple[type[Exception], ...]) -> None:
    """In the second process: the first process's request from stdin, then each message of
    `work(request)` on stdout, until the work is done or the first process has gone (its pipe
    breaks). An exception of `faults` (reading a file, the store) goes back as ("fault",
    text), for the first process to say as it would say it; any other as ("error", text): a
    bug, which stops the first process's work too."""
    answers = answers_pipe()
    try:
        request = read_frame(sys.stdin.buffer)
    except (EOFError, OSError):  # the first process has gone
        return
    try:
        for message in work(request):
            try:
                answers.write(frame(message))
                answers.flush()
            except OSError:  # the first process has gone
                return
    except faults as exc:
        _send_last(answers, ("fault", str(exc)))
    except Exception as exc:
        _send_last(answers, ("error", f"{type(exc).__name__}: {exc}"))


def _send_last(answers: IO[bytes], message: tuple[str, str]) -> None:
    with contextlib.suppress(OSError):
        answers.write(frame(message))
        answers.flush()


def exit_description(process: subprocess.Popen[bytes]) -> str:
    """How a second process ended, for the line that says it did."""
    try:
        code = process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
