"""Kill harness: SIGKILL real `cdp` processes at random moments, rerun them, compare.

For each command (ingest, resolve, tag, journey run) a small project (an eighth of
sample_data/, the shipped tag rules, journeys and templates) is brought to the state the
command starts from, and one uninterrupted run from there is the reference. A trial copies
the start, kills the command one to six times, checks the store after every kill, runs the
command once more to its end (unless its last run ended before its kill), and compares the
result with the reference:

- `PRAGMA integrity_check` is ok after every kill and after the rerun;
- every table holds the same rows as after the reference run, but for the run logs
  (RUN_LOGS: a rerun records its own run), wall-clock columns and ids that count runs
  (VOLATILE), and batches a kill aborted (only finished batches are compared);
- outbound files: after every kill each visible file parses whole; after the rerun no
  message is left queued, no message id appears twice across files, and the files hold
  exactly the reference's messages, none missing and none extra.

Kills come two ways, planned by a seeded random.Random:

- timing: SIGKILL from outside after a random delay within the command's own running time,
  as cron's timeout, the OOM killer or a reboot would;
- point: the process dies at a random kill point (tests/killpoint.py: the start of any SQL
  statement or file rename), which reaches windows too short to hit by timing, such as
  between the commit of a journey's outbox and the rename of its outbound file.

Each kill is classed by what it left stored: nothing yet, part, or all of what the command
does (compared with the start and the reference). tests/test_kill.py runs it; the figures of
docs/reliability.md come from its slow variant.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-15"
NOW = "2026-11-15 10:30"
COMMANDS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "--silent"),
    # The same ingest with a second process reading each JSON Lines file's later lines
    # (ingest_worker.py), forced on these small files: kills reach the first process.
    "ingest, 2 processes": ("ingest", "--silent", "--worker-from", "1"),
    "resolve": ("resolve",),
    # The same first run with a second process reading part of the keys
    # (identity/keys_worker.py), forced on this small store.
    "resolve, 2 processes": ("resolve", "--worker-from", "0"),
    "tag": ("tag", "--as-of", AS_OF),
    "journey run": ("journey", "run", "--now", NOW),
    # The same run with a second process rendering (messaging/rendering.py), forced on this
    # small audience by the hidden option: kills reach the first process, its worker follows.
    "journey run, 2 processes": ("journey", "run", "--now", NOW, "--render-worker-from", "1"),
}
# Commands that start where another starts, instead of where the one before them ends.
SAME_START = {
    "journey run, 2 processes": "journey run",
    "ingest, 2 processes": "ingest",
    "resolve, 2 processes": "resolve",
}
STRIDE = 8  # every 8th row of each sample export: ~4,000 rows, every feature still exercised
# Tables where each run records itself: a rerun after a kill adds its own row by design.
RUN_LOGS = ("schema_migrations", "resolve_runs", "tag_runs", "feature_runs", "journey_runs")
# Columns that differ between two uninterrupted runs: the wall clock, random keys, and the ids
# of runs or batches (a kill that aborts a batch or commits one journey of four shifts the
# later ids).
VOLATILE = {
    "*": {"batch_id"},
    "batches": {"id", "pid", "started_at", "finished_at"},
    "rejects": {"id"},
    "identity_keys": {"resolved_at"},
    "id_history": {"at"},
    "profiles": {"created_at", "updated_at"},
    "profile_tags": {"since"},
    "tag_changes": {"at", "run_id"},
    "messages": {"run_id", "file", "written_at"},
    "journey_broadcasts": {"run_id"},
    "tombstone_salt": {"salt"},  # a random key, made when the store is
    "tombstones": {"forgotten_at"},
    "exports": {"id", "path", "written_at"},  # a path names its run, as messages.file does
    "export_members": {"export_id"},
}
ONLY_ROWS = {"batches": "status = 'done'"}  # an aborted batch stays, with the reason, by design


def env() -> dict[str, str]:
    """The environment of every cdp process: the repo importable, no inherited settings."""
    skip = ("CDP_CONFIG", "CDP_DB", "CDP_KILL_AT", "CDP_KILL_COUNT", "CDP_KILL_NOTE")
    base = {k: v for k, v in os.environ.items() if k not in skip}
    path = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, "CDP_DEBUG": "1"}


# No shipped journey sends twice in one run (a wait comes between): this one does, so that
# kills reach the moment between one step's message and the next step's.
TWO_SENDS = """\
name: two_sends
description: two messages back to back, for the kill tests
entry: {when: "has_tag('high_value')"}
transactional: true               # past the frequency cap, which would hold the second back
steps:
  - send: {channel: sms, template: member_day, link: "https://www.huayang.example.com/a"}
  - send: {channel: sms, template: member_day, link: "https://www.huayang.example.com/b"}
"""


def build_project(folder: Path) -> None:
    """cdp.yaml, tag rules, journeys and templates as shipped, a journey of two sends in a row,
    and every STRIDE-th data row."""
    folder.mkdir(parents=True)
    for name in ("tag_rules", "journeys", "templates"):
        shutil.copytree(REPO / name, folder / name)
    (folder / "journeys" / "two_sends.yaml").write_text(TWO_SENDS, encoding="utf-8")
    shutil.copy(REPO / "cdp.yaml", folder / "cdp.yaml")
    (folder / "sample_data").mkdir()
    for path in sorted((REPO / "sample_data").iterdir()):
        if path.name in ("README.md", "truth.csv"):
            continue
        # Split on b"\n": safe for GBK too, whose multi-byte characters never hold that byte.
        lines = path.read_bytes().splitlines(keepends=True)
        header = lines[:1] if path.suffix == ".csv" else []
        rows = lines[len(header) :][::STRIDE]
        (folder / "sample_data" / path.name).write_bytes(b"".join(header + rows))


# ---------------------------------------------------------------------------------------------
# What a project holds


@dataclass(frozen=True)
class Outbound:
    """The outbound folder: its messages, and whatever is wrong with its files."""

    messages: tuple[str, ...]  # every message as canonical JSON, sorted
    ids: tuple[str, ...]  # every message id, in file order
    temporary: tuple[str, ...]  # hidden files left behind (names starting with '.')
    problems: tuple[str, ...]  # files that do not parse whole


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, tuple[int, str]]  # table -> (rows, digest)
    outbound: Outbound

    def stored_as(self, start: Snapshot, done: Snapshot) -> str:
        """'nothing', 'all' or 'part' of what the command stores, between start and done
        (over the tables this snapshot holds)."""
        for name, other in (("nothing", start), ("all", done)):
            tables = {t: other.tables.get(t) for t in self.tables}
            if self.tables == tables and self.outbound.messages == other.outbound.messages:
                return name
        return "part"

    def changed(self, before: Snapshot) -> set[str]:
        """The tables that differ from `before`."""
        return {t for t, v in self.tables.items() if before.tables.get(t) != v}


def connect(folder: Path) -> sqlite3.Connection:
    return sqlite3.connect(folder / "cdp.db", timeout=30)


def integrity(folder: Path) -> str:
    if not (folder / "cdp.db").exists():
        return "ok"  # killed before the store was created
    conn = connect(folder)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def snapshot(folder: Path, root: Path, only: set[str] | None = None) -> Snapshot:
    """What the project in folder holds (in the tables `only` names, if given); paths into
    any project under root read <project>."""
    tables: dict[str, tuple[int, str]] = {}
    if (folder / "cdp.db").exists():
        conn = connect(folder)
        try:
            project = re.compile(re.escape(str(root.resolve())) + r"/[^/]+")
            tables = _tables(conn, project, only)
        finally:
            conn.close()
    return Snapshot(tables, read_outbound(folder))


def _tables(
    conn: sqlite3.Connection, project: re.Pattern[str], only: set[str] | None
) -> dict[str, tuple[int, str]]:
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
        if r[0] not in RUN_LOGS and (only is None or r[0] in only)
    ]
    found = {}
    for table in names:
        skip = VOLATILE["*"] | VOLATILE.get(table, set())
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in skip]
        where = f" WHERE {ONLY_ROWS[table]}" if table in ONLY_ROWS else ""
        listed = ", ".join(f'"{c}"' for c in columns) or "1"  # all volatile: count the rows
        cursor = conn.execute(f"SELECT {listed} FROM {table}{where}")
        rows = sorted(project.sub("<project>", repr(row)) for row in cursor)  # paths: in strings
        digest = hashlib.sha256("\n".join(rows).encode("utf-8", "surrogatepass")).hexdigest()
        found[table] = (len(rows), digest[:16])
    return found


def read_outbound(folder: Path) -> Outbound:
    root = folder / "outbound"
    messages: list[str] = []
    ids: list[str] = []
    temporary: list[str] = []
    problems: list[str] = []
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_dir():
            continue
        name = str(path.relative_to(root))
        if path.name.startswith("."):
            temporary.append(name)
            continue
        try:
            records = _records(path)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for record in records:
            ids.append(str(record.get("message_id")))
            messages.append(json.dumps(record, sort_keys=True, ensure_ascii=False))
    return Outbound(tuple(sorted(messages)), tuple(ids), tuple(temporary), tuple(problems))


def _records(path: Path) -> list[dict[str, Any]]:
    """Every message in an outbound file; ValueError when the file is not whole."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("does not end with a newline: cut short")
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows or "message_id" not in rows[0]:
            raise ValueError("no header with message_id")
        header = rows[0]
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise ValueError(f"row {number} has {len(row)} fields, the header {len(header)}")
        return [dict(zip(header, row, strict=True)) for row in rows[1:]]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: {exc.msg}") from None
        if not isinstance(record, dict) or "message_id" not in record:
            raise ValueError(f"line {number}: not a message")
        records.append(record)
    return records


def duplicate_messages(folder: Path) -> list[str]:
    """Messages recorded twice for one step of one enrolment; none is the rule."""
    conn = connect(folder)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
            return []
        rows = conn.execute(
            "SELECT journey, enrolment_id, step, count(*) FROM messages "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1"
        ).fetchall()
        queued = conn.execute("SELECT count(*) FROM messages WHERE status = 'queued'").fetchone()
    finally:
        conn.close()
    found = [f"{j}: enrolment {e}, step {s}: {n} messages" for j, e, s, n in rows]
    return found + ([f"{queued[0]} messages still queued"] if queued[0] else [])


def compare(got: Snapshot, want: Snapshot) -> list[str]:
    """What differs between a rerun's project and the reference's, one line per difference."""
    problems = []
    for table in sorted(set(got.tables) | set(want.tables)):
        have, expected = got.tables.get(table), want.tables.get(table)
        if have != expected:
            counts = (
                f"{have[0] if have else 'no'} rows, {expected[0] if expected else 'no'} expected"
            )
            problems.append(f"table {table} differs from the uninterrupted run ({counts})")
    ids = Counter(got.outbound.ids)
    twice = sorted(i for i, n in ids.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} message ids in two files or twice, e.g. {twice[0]}")
    have, expected = Counter(got.outbound.messages), Counter(want.outbound.messages)
    if have != expected:
        missing, extra = sum((expected - have).values()), sum((have - expected).values())
        problems.append(f"outbound messages: {missing} missing, {extra} not in the reference")
    problems += [f"outbound file {p}" for p in got.outbound.problems]
    problems += [f"temporary file left in outbound: {t}" for t in got.outbound.temporary]
    return problems


# ---------------------------------------------------------------------------------------------
# Running and killing


@dataclass
class Kill:
    """One kill: how it was aimed, whether the process was still running, what it left."""

    mode: str  # "timing" or "point"
    at: float  # timing: seconds after `anchor`; point: the number of the kill point
    anchor: str = "spawn"  # timing: "spawn", or "store" (once the process has the store open)
    killed: bool = False  # False: the process had finished before the kill
    store_open: bool | None = None  # the process had the store open when it died
    point: str = ""  # point: the statement (BEGIN, INSERT, COMMIT, ...) or os.replace
    in_transaction: bool | None = None  # point: a transaction was open when it died
    stored: str = ""  # nothing, part or all of what the command stores


@dataclass
class Trial:
    command: str
    number: int
    kills: list[Kill] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Reference:
    """Where a command starts from, and what one uninterrupted run of it leaves."""

    start: Path
    before: Snapshot
    after: Snapshot
    # Timed kills aim within these times: the median of three uninterrupted runs without the
    # kill point hook (which slows a run down, as it is absent from a timed kill's run).
    seconds: float  # from spawning to exit
    opened: float  # when it had the store open, in seconds after spawning
    closed: float  # when it had closed the store again
    points: list[str]  # the kill points it passed: "1 COMMIT" (1: inside a transaction)

    def boundaries(self) -> list[int]:
        """Every commit and file rename, and the point right after each: the moments where
        what is stored or written changes, each too short to aim at by timing."""
        found = set()
        for number, point in enumerate(self.points, start=1):
            if point.endswith((" COMMIT", " os.replace")):
                found |= {number, min(number + 1, len(self.points))}
        return sorted(found)


class ForkServer:
    """Starts every cdp process of the harness: `python -m tests.killpoint --serve`, a process
    that imported all of cdp once and forks a process per run (see killpoint.serve)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.killpoint", "--serve"], cwd=REPO, env=env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lock = threading.Lock()  # one request and its answer at a time
        assert self.process.stdout is not None
        if self.process.stdout.readline() != "ready\n":  # cdp imported: runs time cdp alone
            raise RuntimeError(f"the fork server ended with exit code {self.process.wait()}")

    def start(self, folder: Path, args: tuple[str, ...], environ: dict[str, str]) -> Process:
        """`cdp ARGS` run in folder, with exactly environ."""
        errors = folder.parent / f".{folder.name}.err"
        exit_file = folder.parent / f".{folder.name}.exit"
        exit_file.unlink(missing_ok=True)
        request = {"folder": str(folder), "args": list(args), "environ": environ,
                   "errors": str(errors), "exit_file": str(exit_file)}  # fmt: skip
        assert self.process.stdin is not None and self.process.stdout is not None
        with self.lock:  # and the pidfd opened before the server can reap (at a next request)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
            if not answer:
                raise RuntimeError(f"the fork server ended with exit code {self.process.wait()}")
            return Process(int(answer), errors, exit_file)

    def close(self) -> None:
        """End the server once every process it forked has ended."""
        self.process.communicate()


class Process:
    """One forked cdp process, through a pidfd: the harness is not its parent, and a pidfd
    never reaches another process that took its pid after the server reaped it."""

    def __init__(self, pid: int, errors: Path, exit_file: Path) -> None:
        self.pid, self.errors, self.exit_file = pid, errors, exit_file
        self.pidfd: int | None = os.pidfd_open(pid)  # None once closed

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the process has ended, waiting for it up to timeout seconds."""
        return self.pidfd is None or bool(select.select([self.pidfd], [], [], timeout)[0])

    def kill(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # ended and reaped meanwhile
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def returncode(self) -> int:
        """Its exit code once it has ended, as subprocess gives it: -9 when it was killed."""
        self.wait()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        try:
            code = self.exit_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            code = ""
        return int(code) if code else -signal.SIGKILL  # no code written, or half: killed


def _has_open(pid: int, path: Path) -> bool:
    """Whether process pid has the file open (Linux /proc; False where there is none)."""
    target = str(path.resolve())
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _wait_for_store(proc: Process, path: Path, is_open: bool = True) -> None:
    """Until the process has the store open (or closed), or has ended (or there is no /proc)."""
    if not Path(f"/proc/{proc.pid}").exists():
        return
    while not proc.wait(0) and _has_open(proc.pid, path) != is_open:
        time.sleep(0.005)


@dataclass
class Run:
    """How one cdp process ended."""

    returncode: int
    error: str  # the last line of its error output, if it failed
    seconds: float
    opened: float  # seconds after spawning when it was seen with the store open
    closed: float  # and then with the store closed (its work done, printing and exiting)
    kill: Kill | None = None

    def work(self) -> float:
        """How long it had the store open."""
        return self.closed - self.opened


def run_cdp(
    forks: ForkServer,
    folder: Path,
    args: tuple[str, ...],
    kill: Kill | None = None,
    count: Path | None = None,
) -> Run:
    """Run cdp in folder: to its end, or until `kill` kills it; `count` records its points."""
    extra: dict[str, str] = {}
    note = folder.parent / f".{folder.name}.note"
    if kill is not None and kill.mode == "point":
        extra = {"CDP_KILL_AT": str(int(kill.at)), "CDP_KILL_NOTE": str(note)}
        note.unlink(missing_ok=True)
    if count is not None:
        extra["CDP_KILL_COUNT"] = str(count)
    store = folder / "cdp.db"
    started = time.monotonic()
    proc = forks.start(folder, args, {**env(), **extra})
    opened = closed = 0.0
    if kill is None or kill.anchor == "store":
        _wait_for_store(proc, store)
        opened = time.monotonic() - started
    if kill is None:
        _wait_for_store(proc, store, is_open=False)
        closed = time.monotonic() - started
    timed = kill is not None and kill.mode == "timing"
    if not proc.wait(timeout=kill.at if timed and kill is not None else 300):
        assert kill is not None, f"cdp {' '.join(args)} ran for over 300 seconds"
        kill.store_open = _has_open(proc.pid, store)
        proc.kill()
    returncode = proc.returncode()
    seconds = time.monotonic() - started
    if kill is not None:
        kill.killed = returncode == -signal.SIGKILL
        if note.exists():
            flag, _, what = note.read_text(encoding="utf-8").partition(" ")
            kill.in_transaction, kill.point, kill.store_open = flag == "1", what, True
            note.unlink()
    error = ""
    if returncode not in (0, -signal.SIGKILL):
        lines = proc.errors.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        error = (lines or [f"exit {returncode}"])[-1]
    return Run(returncode, error, seconds, opened, closed, kill)


class Harness:
    """Prepares the project once, then runs trials of kills against each command."""

    def __init__(self, root: Path, seed: int = 7, workers: int | None = None) -> None:
        self.root = root
        self.seed = seed
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.forks = ForkServer()
        self.references: dict[str, Reference] = {}

    def prepare(self) -> None:
        """Each command's start is the end of the one before; each ends as a reference."""
        folder = self.root / "start-ingest"
        build_project(folder)
        for number, (command, args) in enumerate(COMMANDS.items()):
            chained = command not in SAME_START
            start = folder if chained else self.references[SAME_START[command]].start
            done = self.root / f"done-{number}"
            shutil.copytree(start, done)
            count = self.root / f".points-{number}"
            self._uninterrupted(done, args, count)
            points = count.read_text(encoding="utf-8").splitlines()
            timed = sorted((self._timed(start, args, n) for n in range(3)), key=Run.work)
            typical = timed[1]  # the median: a run that happened to be slow or quick
            self.references[command] = Reference(
                start,
                self.snapshot(start),
                self.snapshot(done),
                typical.seconds,
                typical.opened,
                typical.closed,
                points,
            )
            if chained:
                folder = done

    def _uninterrupted(self, folder: Path, args: tuple[str, ...], count: Path | None) -> Run:
        run = run_cdp(self.forks, folder, args, count=count)
        if run.returncode:
            raise RuntimeError(f"cdp {' '.join(args)} failed uninterrupted: {run.error}")
        return run

    def _timed(self, start: Path, args: tuple[str, ...], copy: int) -> Run:
        """An uninterrupted run from start, in a copy, for its times."""
        folder = self.root / f"timed-{copy}"
        shutil.copytree(start, folder)
        try:
            return self._uninterrupted(folder, args, None)
        finally:
            shutil.rmtree(folder)

    def snapshot(self, folder: Path, only: set[str] | None = None) -> Snapshot:
        return snapshot(folder, self.root, only)

    def close(self) -> None:
        self.forks.close()

    def plan(
        self, command: str, timing: int, points: int, round_: int = 0, every_boundary: bool = True
    ) -> list[list[Kill]]:
        """Trials of two to six kills, each trial timed or at kill points. A timed kill
        comes at a random moment of the process's life (one in four) or of its work with the
        store open; the first round starts with one trial per boundary point (every_boundary).
        Later rounds make up for kills that came too late with trials of one kill each: in a
        trial of several, a kill after the work was done ends the trial, kills unmade."""
        rng = random.Random(f"{self.seed}:{command}:{round_}")
        ref = self.references[command]
        work = max(ref.closed - ref.opened, 0.05)
        first = not round_ and every_boundary
        trials = [[Kill("point", n)] for n in ref.boundaries()] if first else []
        for mode, wanted in (("timing", timing), ("point", points - len(trials))):
            planned = 0
            while planned < wanted:
                size = min(rng.randint(2, 6), wanted - planned) if not round_ else 1
                kills = []
                for _ in range(size):
                    if mode == "point":
                        kills.append(Kill(mode, rng.randint(1, len(ref.points))))
                    elif rng.random() < 0.25:
                        kills.append(Kill(mode, round(rng.uniform(0, ref.seconds), 3)))
                    else:
                        kills.append(Kill(mode, round(rng.uniform(0, work), 3), "store"))
                trials.append(kills)
                planned += size
        return trials

    def run(
        self, command: str, timing: int, points: int, rounds: int = 10, every_boundary: bool = True
    ) -> list[Trial]:
        """At least `timing` and `points` kills (with every_boundary, one at every boundary
        point, even if that makes more): kills that came after the process had finished, or
        after an earlier kill of the trial had left the work done, are made up for by more
        trials, for up to `rounds` rounds. Each round plans the kills missing, scaled by how
        many of those planned so far were made (at most 4 times): on a slower machine than
        the reference run's, many timed kills come too late to count."""
        if every_boundary:
            points = max(points, len(self.references[command].boundaries()))
        done: list[Trial] = []
        planned: Counter[str] = Counter()
        for round_ in range(rounds):
            have = Counter(k.mode for t in done for k in t.kills if k.killed)
            missing = [max(timing - have["timing"], 0), max(points - have["point"], 0)]
            if not any(missing):
                break
            scaled = [
                min(math.ceil(n * planned[mode] / have[mode]), 4 * n) if have[mode] else n
                for n, mode in zip(missing, ("timing", "point"), strict=True)
            ]
            plans = self.plan(command, *scaled, round_, every_boundary)
            planned.update(k.mode for kills in plans for k in kills)
            numbers = range(len(done), len(done) + len(plans))
            with ThreadPoolExecutor(self.workers) as pool:
                done += pool.map(self.trial, [command] * len(plans), numbers, plans)
        return done

    def trial(self, command: str, number: int, kills: list[Kill]) -> Trial:
        """Kill the command as planned, checking after each kill; rerun it once; compare."""
        ref, args = self.references[command], COMMANDS[command]
        trial = Trial(command, number, kills)
        folder = self.root / f"trial-{command.replace(' ', '-')}-{number}"
        shutil.copytree(ref.start, folder)
        for number, kill in enumerate(kills):
            run = run_cdp(self.forks, folder, args, kill)
            if run.error:
                trial.problems.append(f"failed on its own before the kill: {run.error}")
            checked = integrity(folder)
            if checked != "ok":
                trial.problems.append(f"integrity_check after a kill: {checked}")
            after = self.snapshot(folder, ref.after.changed(ref.before))
            trial.problems += [f"after a kill, outbound file {p}" for p in after.outbound.problems]
            kill.stored = after.stored_as(ref.before, ref.after)
            if not kill.killed or kill.stored == "all":
                del kills[number + 1 :]  # the work is done: later kills would find nothing to do
                break
        if kills[-1].killed:  # else the last run, finished before its kill, was the rerun
            rerun = run_cdp(self.forks, folder, args)
            if rerun.returncode:
                trial.problems.append(f"the rerun failed: {rerun.error}")
        checked = integrity(folder)
        if checked != "ok":
            trial.problems.append(f"integrity_check after the rerun: {checked}")
        trial.problems += duplicate_messages(folder) if (folder / "cdp.db").exists() else []
        trial.problems += compare(self.snapshot(folder), ref.after)
        if not trial.problems:
            shutil.rmtree(folder)  # failed trials stay, to be looked at
        return trial


def summary(command: str, trials: list[Trial]) -> dict[str, Any]:
    """The figures of one command's trials, for the test's message and the docs."""
    kills = [k for t in trials for k in t.kills if k.killed]
    timing = [k for k in kills if k.mode == "timing"]
    points = [k for k in kills if k.mode == "point"]
    return {
        "command": command,
        "trials": len(trials),
        "kills": len(kills),
        "timing kills": len(timing),
        "timing kills with the store open": sum(bool(k.store_open) for k in timing),
        "point kills": len(points),
        "point kills inside a transaction": sum(bool(k.in_transaction) for k in points),
        "point kills at a commit or rename": sum(
            k.point in ("COMMIT", "os.replace") for k in points
        ),
        "left stored": dict(Counter(k.stored for k in kills)),
        "finished before the kill": sum(not k.killed for t in trials for k in t.kills),
        "trials with a difference": sum(bool(t.problems) for t in trials),
        "problems": sorted({p for t in trials for p in t.problems}),
    }


# ---------------------------------------------------------------------------------------------
# A command killed while its second process works (ingest's, resolve's)


def kill_beside_its_second_process(command: list[str]) -> None:
    """Start `command` (a cdp command in a fresh Python), SIGKILL it once its second process is
    well into its work, and check that the second process then ends by itself (its pipe
    breaks)."""
    process = subprocess.Popen(command, env=env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while not children and time.monotonic() < deadline and process.poll() is None:
        children = _children(process.pid)
        time.sleep(0.02)
    assert children, "the second process never started"
    while _cpu_seconds(children[0]) < 0.5 and time.monotonic() < deadline:
        time.sleep(0.02)  # until it is well into its part (its start-up takes some 0.3 s)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the command ended before the kill"
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody has reaped yet."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
