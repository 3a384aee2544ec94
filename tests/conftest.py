from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import settings

from cdp_cli.cli import cli

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"

# The default run draws the same examples every time, so CI is red for a change and not for
# a draw; `HYPOTHESIS_PROFILE=explore pytest` draws new ones to look for new bugs. Neither has
# a deadline: an example's time is the box's load, not a finding (a 200 ms deadline failed a
# graph test at 269 ms in a fresh clone's run, 2 ms when tried again).
settings.register_profile("repeatable", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


# The files whose tests take longest, longest first (seconds of one worker, 2026-12-05, stop
# 33): the default run hands out whole files in collection order (setup.cfg), so these start
# first and the workers end together. The others follow in alphabetical order.
LONGEST_FIRST = (
    "test_kill.py",  # 53 (before stop 33's fewer kills): the kill harness, then the kills
    "test_privacy.py",  # 46: the demo, built once for it and test_reports
    "test_predict.py",  # 28: the predicted sample
    "test_bad_input.py",  # 27
    "test_journeys.py",  # 21
    "test_damage.py",  # 19
    "test_resolve_worker.py",  # 15 (25 before its kill test went to the slow run)
    "test_ingest_worker.py",  # 15
    "test_security.py",  # 15
    "test_outputs.py",
    "test_match.py",
    "test_resolve.py",
    "test_pipeline.py",
    "test_journey_workers.py",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker more than the cores. Many tests wait (on a cdp process they run, a
    kill's moment, a commit's fsync); the extra worker keeps both cores busy meanwhile: on 2
    cores the default run took 135 to 160 s with 3 workers, 184 s and more with 2."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests stay in their order


@pytest.fixture(autouse=True)
def _debug_and_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bugs must surface as tracebacks in tests, not as the one-line message users get.
    monkeypatch.setenv("CDP_DEBUG", "1")
    monkeypatch.delenv("CDP_CONFIG", raising=False)
    monkeypatch.delenv("CDP_DB", raising=False)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `cdp ARGS` inside tmp_path, as a user in their project folder would."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a file under tmp_path: text is dedented; bytes are written as they are."""

    def write_file(name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"), encoding=encoding)
        return path

    return write_file


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `build` fills, built once per test run and shared by every xdist worker and
    every module that asks for `name`: the sample's pipeline takes seconds, its copy
    milliseconds. Read-only: a test copies it before writing to it, or opening its store,
    which writes the WAL beside it while another worker may be copying the folder."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are siblings
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (root / f"{name}.done").write_text("")
    return folder


def demo_once(factory: pytest.TempPathFactory) -> Path:
    """`cdp demo demo` run once per test run: the folder holds the demo's folder `demo` and the
    command's exit code, stdout and stderr in `exit`, `stdout`, `stderr`. Read-only."""

    def build(folder: Path) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            result = CliRunner().invoke(cli, ["demo", "demo"], catch_exceptions=False)
        (folder / "exit").write_text(str(result.exit_code))
        (folder / "stdout").write_text(result.stdout, encoding="utf-8")
        (folder / "stderr").write_text(result.stderr, encoding="utf-8")

    return built_once(factory, "demo", build)


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def ingest_declared_files(config_path: Path) -> None:
    """Every file each source of the project declares, ingested in process (no screen)."""
    from cdp_cli.config import load_config
    from cdp_cli.ingest import ingest_file
    from cdp_cli.store import open_store

    config = load_config(config_path)
    db = open_store(config.store)
    try:
        for source in config.sources.values():
            for path in config.files_of(source):
                assert ingest_file(db, source, path).status == "done"
    finally:
        db.close()
