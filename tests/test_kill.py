"""resolve and tag killed at any moment leave a store that a rerun completes: the same result
as an uninterrupted run, and an intact database file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SAMPLE_DATA, query

ENV = {**os.environ, "CDP_DEBUG": "1"}


def cdp(folder, *args, wait=True):
    command = [sys.executable, "-m", "cdp_cli", *args]
    if wait:
        result = subprocess.run(command, cwd=folder, env=ENV, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result
    return subprocess.Popen(
        command, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ingested")
    shutil.copytree(SAMPLE_DATA, folder / "sample_data")
    shutil.copytree(REPO / "tag_rules", folder / "tag_rules")
    shutil.copy(REPO / "cdp.yaml", folder / "cdp.yaml")
    cdp(folder, "ingest", "--silent")
    return folder


def snapshot(db):
    return (
        query(db, "SELECT source, key, one_id FROM id_mapping ORDER BY 1, 2"),
        query(db, "SELECT one_id, name, city, phones FROM profiles ORDER BY 1"),
        query(db, "SELECT one_id, tag, value FROM profile_tags ORDER BY 1, 2"),
    )


@pytest.fixture(scope="module")
def expected(ingested, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    for name in ("sample_data", "tag_rules"):
        shutil.copytree(ingested / name, folder / name)
    shutil.copy(ingested / "cdp.yaml", folder / "cdp.yaml")
    shutil.copy(ingested / "cdp.db", folder / "cdp.db")
    cdp(folder, "resolve")
    cdp(folder, "tag", "--as-of", "2026-11-15")
    return snapshot(folder / "cdp.db")


@pytest.mark.parametrize("delay", [0.0, 0.6, 0.9, 1.2, 1.5, 2.0])
def test_killed_resolve_and_tag_complete_on_rerun(ingested, expected, tmp_path, delay):
    for name in ("sample_data", "tag_rules"):
        shutil.copytree(ingested / name, tmp_path / name)
    shutil.copy(ingested / "cdp.yaml", tmp_path / "cdp.yaml")
    shutil.copy(ingested / "cdp.db", tmp_path / "cdp.db")
    for args in (["resolve"], ["tag", "--as-of", "2026-11-15"]):
        proc = cdp(tmp_path, *args, wait=False)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert query(tmp_path / "cdp.db", "PRAGMA integrity_check") == [("ok",)]
        cdp(tmp_path, *args)  # the rerun finishes what the killed run began
    assert snapshot(tmp_path / "cdp.db") == expected
