"""`cdp ingest`, `resolve`, `tag` and `journey run` killed with SIGKILL at random moments, then
rerun once: the store is intact and holds what an uninterrupted run leaves, and no message
is sent twice or lost. The harness and what it compares are in tests/killharness.py; the
figures of a slow run are in docs/reliability.md.

    pytest tests/test_kill.py                 10 kills per command (the slow run: at every commit)
    pytest tests/test_kill.py -m slow         250 per command; CDP_KILL_SEED=N other moments
    CDP_KILL_REPORT=kills.jsonl pytest ...    also write each command's figures to a file
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.killharness import COMMANDS, Harness, compare, duplicate_messages, env, summary

# The harness takes a few seconds to prepare, once per process. The default run sends all of a
# file's tests to one xdist worker (setup.cfg: --dist loadfile), so one harness serves them;
# the slow sweep's tests take minutes each, and .ci/run spreads them over the workers (--dist load).

# Per command, in the default run (CI also runs SLOW). 16 until 2026-12-05 (stop 33), when the
# README's test command reached its 3 minutes on a slow stretch of the box.
DEFAULT = {"timing": 6, "points": 4}
SLOW = {"timing": 140, "points": 110}
# A variant of a command that both runs kill less, and the default run not at every commit and
# rename: its parent passes the same ones as the command's, which is killed fully. (At the slow
# run's 500 kills it alone took six minutes of CI's fifteen.) Ingest and journey run pass some
# 40 and 27 commits and renames: the slow run kills at each, the default run at 4 of them.
LIGHT: dict[str, dict[str, Any]] = {
    "journey run, 2 processes": {"timing": 4, "points": 4, "every_boundary": False},
    "ingest": {**DEFAULT, "every_boundary": False},
    "ingest, 2 processes": {"timing": 2, "points": 2, "every_boundary": False},
    "resolve, 2 processes": {"timing": 4, "points": 2, "every_boundary": False},
    "journey run": {**DEFAULT, "every_boundary": False},
}
SLOW_LIGHT: dict[str, dict[str, Any]] = {
    "journey run, 2 processes": {"timing": 50, "points": 50},
    "ingest, 2 processes": {"timing": 30, "points": 30},
    "resolve, 2 processes": {"timing": 30, "points": 30},
}


@pytest.fixture(scope="session")  # per process: an xdist worker builds it once, not per visit
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    made = Harness(tmp_path_factory.mktemp("kills"), seed=int(os.environ.get("CDP_KILL_SEED", 7)))
    try:
        made.prepare()
        yield made
    finally:
        made.close()


def _check(
    harness: Harness, command: str, timing: int, points: int, every_boundary: bool = True
) -> None:
    figures = summary(command, harness.run(command, timing, points, every_boundary=every_boundary))
    figures["seed"] = harness.seed
    report = os.environ.get("CDP_KILL_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps(figures, ensure_ascii=False) + "\n")
    assert figures["timing kills"] >= timing and figures["point kills"] >= points, figures
    assert figures["problems"] == [], json.dumps(figures, ensure_ascii=False, indent=1)
    # The kills reached the work itself, not only Python starting up.
    assert figures["timing kills with the store open"] >= timing // 3, figures
    assert figures["left stored"].get("part", 0) + figures["left stored"].get("all", 0) or (
        command.startswith("resolve")  # one transaction: a kill leaves nothing or all
    ), figures


@pytest.mark.parametrize("command", list(COMMANDS))
def test_killed_commands_rerun_to_the_uninterrupted_result(harness: Harness, command: str) -> None:
    _check(harness, command, **LIGHT.get(command, DEFAULT))


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_many_kills(harness: Harness, command: str) -> None:
    _check(harness, command, **SLOW_LIGHT.get(command, SLOW))


# ---------------------------------------------------------------------------------------------
# The harness notices what it is there to notice


def test_the_project_exercises_every_stage(harness: Harness) -> None:
    journeys = harness.references["journey run"]
    two = harness.references["journey run, 2 processes"]
    assert two.start == journeys.start
    assert compare(two.after, journeys.after) == []  # the worker sends what one process sends
    ingest = harness.references["ingest"]
    two_reading = harness.references["ingest, 2 processes"]
    assert two_reading.start == ingest.start
    assert compare(two_reading.after, ingest.after) == []  # and stores what one stores
    resolve = harness.references["resolve"]
    two_resolving = harness.references["resolve, 2 processes"]
    assert two_resolving.start == resolve.start
    assert compare(two_resolving.after, resolve.after) == []  # and resolves what one does
    ids = [json.loads(m)["message_id"] for m in journeys.after.outbound.messages]
    assert len({i.split(":")[0] for i in ids}) >= 2, "messages from at least two journeys"
    enrolments = Counter(i.rsplit(":", 1)[0] for i in ids if i.startswith("two_sends:"))
    assert enrolments and set(enrolments.values()) == {2}, "both steps of two_sends in one run"
    for command, reference in harness.references.items():
        assert reference.after.changed(reference.before), f"{command} changed nothing"
        assert any(p.endswith(" COMMIT") for p in reference.points), command
    assert any(p.endswith(" os.replace") for p in journeys.points)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_forked_run_passes_the_kill_points_of_a_fresh_python(
    harness: Harness, command: str, tmp_path: Path
) -> None:
    """The harness forks its cdp processes from a server that imported cdp once; a process
    started as a user starts cdp runs the very same statements and renames."""
    folder = tmp_path / "project"
    shutil.copytree(harness.references[command].start, folder)
    count = tmp_path / "points"
    fresh = subprocess.run(
        [sys.executable, "-m", "tests.killpoint", *COMMANDS[command]],
        cwd=folder, env={**env(), "CDP_KILL_COUNT": str(count)}, capture_output=True, text=True,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert count.read_text(encoding="utf-8").splitlines() == harness.references[command].points


@pytest.fixture
def journeys_done(harness: Harness, tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    shutil.copytree(harness.root / f"done-{list(COMMANDS).index('journey run')}", folder)
    return folder


def _first_outbound(folder: Path) -> Path:
    return next(p for p in sorted((folder / "outbound").rglob("*")) if p.is_file())


def test_compare_sees_a_message_written_twice(harness: Harness, journeys_done: Path) -> None:
    path = _first_outbound(journeys_done)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join([*lines, lines[-1]]), encoding="utf-8")
    problems = compare(harness.snapshot(journeys_done), harness.references["journey run"].after)
    assert any("message ids in two files or twice" in p for p in problems), problems
    assert any("1 not in the reference" in p for p in problems), problems


def test_compare_sees_a_file_cut_short_and_a_message_missing(
    harness: Harness, journeys_done: Path
) -> None:
    path = _first_outbound(journeys_done)
    path.write_bytes(path.read_bytes()[:-20])
    problems = compare(harness.snapshot(journeys_done), harness.references["journey run"].after)
    assert any("cut short" in p for p in problems), problems


def test_compare_sees_a_row_lost_and_a_message_left_queued(
    harness: Harness, journeys_done: Path
) -> None:
    conn = sqlite3.connect(journeys_done / "cdp.db")
    with conn:
        conn.execute(
            "DELETE FROM profile_tags WHERE one_id = (SELECT min(one_id) FROM profile_tags)"
        )
        conn.execute(
            "UPDATE messages SET status = 'queued' "
            "WHERE id = (SELECT min(id) FROM messages WHERE status = 'written')"
        )
    conn.close()
    problems = compare(harness.snapshot(journeys_done), harness.references["journey run"].after)
    assert any(p.startswith("table profile_tags differs") for p in problems), problems
    assert duplicate_messages(journeys_done) == ["1 messages still queued"]
