"""The README's short tour runs as written, line by line, on the project `cdp init` makes;
and sample_data/README.md says what cdp does with the sample's blank lines."""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdp_cli.cli import cli
from cdp_cli.scaffold import init_project
from tests.conftest import REPO


def tour_commands() -> list[str]:
    """The commands of the README's "A short tour" block, comments stripped, && split."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## A short tour\n.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README.md has no tour"
    commands = []
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+# .*$", "", line)  # a comment: "   # what it does"
        commands += [part.strip() for part in line.split(" && ") if part.strip()]
    return commands


def run_line(line: str, cwd: Path) -> Path:
    """Run one tour command in `cwd`; the folder the next one runs in (after `cd`)."""
    first, _, piped = (part.strip() for part in line.partition("|"))
    words = shlex.split(first)
    if words[0] == "cd":
        return cwd / words[1]
    if words[0] == "sqlite3":  # the sqlite3 shell, as Python's sqlite3 module
        with sqlite3.connect(cwd / words[1]) as conn:
            assert conn.execute(words[2]).fetchall() is not None
        return cwd
    if words[0] == "sed":  # `sed -i 's/OLD/NEW/' GLOB`: the WeChat template ids filled in
        _, old, new, _ = words[2].split("/")
        for path in sorted(cwd.glob(words[3])):
            path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
        return cwd
    assert words[0] == "cdp", line
    if words[1] == "init":  # into the test's folder
        init_project(cwd / words[2])
        return cwd
    result = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
    assert result.exit_code == 0, f"{line}\n{result.output}"
    if piped:  # `| jq '.key'`: the key is there
        [key] = re.fullmatch(r"jq '\.(\w+)'", piped).groups()  # type: ignore[union-attr]
        assert key in json.loads(result.stdout), line
    return cwd


@pytest.fixture(scope="module")
def toured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tour")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CDP_CONFIG", "CDP_DB"):
            patch.delenv(name, raising=False)
        cwd = folder
        for line in tour_commands():
            patch.chdir(cwd)
            cwd = run_line(line, cwd)
    return cwd


def test_every_command_of_the_readme_tour_runs_as_written(toured):
    assert len(tour_commands()) >= 20
    assert (toured / "cdp.db").exists()
    for export in ("id_mapping.csv", "vip.csv", "winback.html"):  # written into the project
        assert (toured / export).stat().st_size > 0, export


def test_the_tour_explains_the_customer_it_looked_up(toured, monkeypatch):
    monkeypatch.chdir(toured)
    [profile] = [c for c in tour_commands() if c.startswith("cdp profile ")]
    [explain] = [c for c in tour_commands() if c.startswith("cdp resolve --explain ")]
    found = CliRunner().invoke(cli, [*shlex.split(profile)[1:], "--json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["profile"]["one_id"] == shlex.split(explain)[-1]


def test_the_sample_readme_says_what_ingest_does_with_blank_lines(toured):
    """Empty lines are skipped; the line of commas is a row without a key: rejected."""
    row = next(
        line
        for line in (toured / "sample_data" / "README.md").read_text("utf-8").splitlines()
        if line.startswith("| Blank lines |")
    )
    assert "empty lines are skipped" in row and "rejected (`missing key member_no`)" in row
    with sqlite3.connect(toured / "cdp.db") as conn:
        rejects = conn.execute(
            "SELECT source, reason FROM rejects WHERE raw = '' OR raw = ',,,,,,,,,,,,'"
        ).fetchall()
    assert rejects == [("crm_members", "missing key member_no")]
