"""A project with inbox folders, built from the sample data, for the pipeline and lock tests."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_DATA, built_once

ENV = {**os.environ, "CDP_DEBUG": "1"}
INBOXES = {
    "pos_orders": "inbox/pos",
    "shop_orders": "{folder: inbox/shop, pattern: '*.jsonl'}",
}


def fill_wechat_template_ids(folder: Path) -> None:
    """The shipped WeChat templates' REPLACE_ME_ ids replaced, as a user would: a run holds
    every customer a placeholder template_id would reach."""
    for path in (folder / "templates" / "wechat").glob("*.json"):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace('"REPLACE_ME_', '"TEST_'), encoding="utf-8")


def make_project(folder: Path, inboxes: dict[str, str] = INBOXES, log: str = "logs/cdp.log"):
    """The shipped project (cdp.yaml, tag rules, journeys, templates, sample data) in `folder`,
    with `inbox:` added to the sources named in `inboxes` and a `log:` file."""
    shutil.copytree(SAMPLE_DATA, folder / "sample_data")
    for name in ("tag_rules", "journeys", "templates"):
        shutil.copytree(REPO / name, folder / name)
    fill_wechat_template_ids(folder)
    text = (REPO / "cdp.yaml").read_text(encoding="utf-8")
    for source, inbox in inboxes.items():
        text = text.replace(f"  {source}:\n", f"  {source}:\n    inbox: {inbox}\n", 1)
        assert f"inbox: {inbox}" in text, source
    if log:
        text = text.replace("region: CN", f"log: {log}\nregion: CN", 1)
    (folder / "cdp.yaml").write_text(text, encoding="utf-8")
    for inbox in ("inbox/pos", "inbox/shop"):
        (folder / inbox).mkdir(parents=True, exist_ok=True)
    return folder


def run_sample(folder: Path) -> Path:
    """The sample ingested (through `files:`), resolved, tagged and its journeys run, in `folder`
    as `make_project` made it, each stage by its own command."""
    for args in (
        ["ingest", "--silent"], ["resolve"], ["tag", "--as-of", "2026-11-15"],
        ["journey", "run", "--now", "2026-11-15 10:30"],
    ):  # fmt: skip
        result = cdp(folder, *args)
        assert result.returncode == 0, result.stderr
    return folder


def sample_run_once(factory: pytest.TempPathFactory) -> Path:
    """`run_sample` of the default `make_project`, checkpointed into one file; built once per
    test run (`built_once`), read-only."""

    def build(folder: Path) -> None:
        run_sample(make_project(folder))
        conn = sqlite3.connect(folder / "cdp.db")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    return built_once(factory, "sample-run", build)


def sample_tagged_once(factory: pytest.TempPathFactory) -> Path:
    """The shipped project on the sample data (no inboxes, no log) ingested, resolved and
    tagged, no journey run; built once per test run, read-only."""

    def build(folder: Path) -> None:
        make_project(folder, inboxes={}, log="")
        for args in (["ingest", "--silent"], ["resolve"], ["tag", "--as-of", "2026-11-15"]):
            result = cdp(folder, *args)
            assert result.returncode == 0, result.stderr

    return built_once(factory, "sample-tagged", build)


def drop(path: Path, content: bytes, age: float = 600) -> Path:
    """Put a file into an inbox, last modified `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def cdp(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`cdp ARGS` in its own process, as cron runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cdp_cli", *args], cwd=folder, env=ENV, capture_output=True,
        text=True,
    )  # fmt: skip


HOLD = """
import sys, time
from pathlib import Path
from cdp_cli import lock
held = lock.acquire(Path(sys.argv[1]), command="cdp test-holder")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(store: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process that takes the store's lock and keeps it `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store), str(seconds)], env=ENV, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc
