"""cdp from Python: Project, the library's front door, and the README's notebook code."""

from __future__ import annotations

import ast
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cdp_cli import CdpError, Project
from cdp_cli.errors import ConfigError, StoreError
from cdp_cli.scaffold import init_project
from tests.conftest import REPO, query


def readme_python() -> str:
    """The code of README.md's "Using cdp from Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using cdp from Python", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_notebook_code_runs_on_the_sample_data(tmp_path, monkeypatch, capsys):
    init_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(readme_python(), "README.md", "exec"), names)
    report = names["report"]
    db = tmp_path / "cdp.db"
    assert report.base == query(db, "SELECT count(*) FROM profiles")[0][0] > 0
    assert (
        report.customers
        == query(
            db,
            "SELECT count(*) FROM profile_tags t JOIN profile_features f USING (one_id) "
            "WHERE t.tag = 'lifecycle' AND t.value = 'at_risk' AND f.total_spent >= 300",
        )[0][0]
    )
    assert 0 < report.customers < report.base
    assert report.segment == "winback" and report.by == "city"
    assert sum(row["audience"] for row in report.portrait) == report.customers
    assert len(report.sample) == 5
    assert report.sample[0]["phone"].startswith("+86")  # as stored: the library does not mask
    printed = capsys.readouterr().out
    assert f"{report.customers} of {report.base} customers" in printed


def test_environment_is_read_by_project_and_arguments_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Project().config_path.name == "cdp.yaml"
    assert Project().store_override is None
    monkeypatch.setenv("CDP_CONFIG", str(tmp_path / "elsewhere.yaml"))
    monkeypatch.setenv("CDP_DB", "env.db")
    from_env = Project()
    assert from_env.config_path == tmp_path / "elsewhere.yaml"
    assert from_env.store_path.name == "env.db"  # without reading cdp.yaml: there is none
    given = Project("mine.yaml", store="mine.db")
    assert (str(given.config_path), str(given.store_path)) == ("mine.yaml", "mine.db")


def test_store_is_relative_to_cdp_yaml_and_config_is_read_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "cdp.yaml").write_text("store: data/store.db\n", encoding="utf-8")
    project = Project("proj/cdp.yaml")
    assert project.store_path == Path("proj/data/store.db")
    assert project.config is project.config
    assert project.tag_rules_folder == project.config.root / "tag_rules"
    assert project.outbound_folder == project.config.root / "outbound"
    with pytest.raises(StoreError, match="no store here yet"), project.store(create=False):
        pass
    (tmp_path / "proj" / "data").mkdir()
    with project.store() as db:
        assert "batches" in db.table_names()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        db.conn.execute("SELECT 1")


def test_a_missing_cdp_yaml_is_an_error_only_when_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project = Project()
    assert not project.has_config
    with pytest.raises(ConfigError, match="not found") as raised:
        project.config  # noqa: B018  (reading it is the test)
    assert isinstance(raised.value, CdpError)


def test_import_cdp_cli_stays_cheap():
    code = "import sys, cdp_cli; print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(result.stdout))
    assert not {m for m in loaded if m.split(".")[0] in ("click", "rich", "sqlite_utils")}
    assert "cdp_cli.project" not in loaded


def test_sqlite_utils_loads_without_pandas_and_numpy():
    """sqlite-utils imports pandas and numpy when installed (the extras bring them): 0.3 s
    and 65 MB in every command. cdp_cli.sqlitelib hides both while it loads; modules import
    sqlite-utils only from there, and pandas still imports after for those that need it."""
    package = REPO / "cdp_cli"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        direct = [
            node.lineno
            for node in ast.walk(tree)
            if (isinstance(node, ast.Import) and any(a.name == "sqlite_utils" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and node.module == "sqlite_utils")
        ]
        assert not direct or path.name == "sqlitelib.py", f"{path}:{direct}"
    code = "import sys, cdp_cli.cli; print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert not {"pandas", "numpy"} & set(ast.literal_eval(result.stdout))
    pytest.importorskip("pandas")
    code = "import cdp_cli.cli, pandas; print(pandas.DataFrame({'a': [1]}).shape)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "(1, 1)"
