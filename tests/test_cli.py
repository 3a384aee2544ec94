"""The command line as a user meets it: init, help, exit codes, docs, layering."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cdp_cli.cli import cli
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "docs"))
import cli_reference


def all_commands() -> list[tuple[list[str], click.Command]]:
    return [(["cdp"], cli), *cli_reference._commands(cli, ["cdp"])]


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path[1:], "--help"])
    assert result.exit_code == 0
    command = dict((tuple(p), c) for p, c in all_commands())[tuple(path)]
    assert command.help and len(command.help.strip()) > 20
    assert "Example" in result.output or path == ["cdp"]


def test_docs_cli_md_is_up_to_date():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == cli_reference.render(), (
        "docs/cli.md is stale: run `python docs/cli_reference.py`"
    )


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
def test_the_reference_shows_each_command_as_it_is_typed(path):
    """`cdp journey run`, as in a shell: not `cdp cdp journey run`."""
    command = dict((tuple(p), c) for p, c in all_commands())[tuple(path)]
    usage = cli_reference.help_text(path, command).splitlines()[0]
    assert usage.startswith(f"Usage: {' '.join(path)} "), usage


def test_library_modules_do_not_import_click_or_rich():
    """The library is what a notebook calls; only the CLI layer, cdp_cli/cli/, may know about
    the terminal."""
    package = REPO / "cdp_cli"
    library = [
        path for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).parts[0] != "cli" and path.name != "__main__.py"
    ]  # fmt: skip
    assert package / "identity" / "profiles.py" in library
    for path in library:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }  # fmt: skip
        name = str(path.relative_to(package))
        assert not {m.split(".")[0] for m in modules} & {"click", "rich"}, name
        assert not {m for m in modules if m == "cdp_cli.cli" or m.startswith("cdp_cli.cli.")}, name
        from_cdp_cli = {
            alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "cdp_cli"
            for alias in node.names
        }  # fmt: skip
        assert "cli" not in from_cdp_cli, name
    code = "import sys, cdp_cli.demo, cdp_cli.messaging.engine; print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(result.stdout))
    assert "cdp_cli.messaging.engine" in loaded and "cdp_cli.demo" in loaded
    # (click is loaded: sqlite_utils imports it)
    assert not {m for m in loaded if m.split(".")[0] == "rich" or m.startswith("cdp_cli.cli")}


def test_python_dash_m_works():
    result = subprocess.run(
        [sys.executable, "-m", "cdp_cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("cdp, version ")


def test_init_scaffolds_a_working_project_and_refuses_to_overwrite(run, tmp_path):
    result = run("init", "brand")
    assert result.exit_code == 0, result.output
    project = tmp_path / "brand"
    for name in ("cdp.yaml", "tag_rules", "journeys", "templates", "sample_data/crm_members.csv"):
        assert (project / name).exists(), name
    (project / "cdp.yaml").write_text("# mine\n", encoding="utf-8")
    again = run("init", "brand")
    assert again.exit_code == 1
    assert "already exist; --force overwrites them" in again.stderr
    assert (project / "cdp.yaml").read_text(encoding="utf-8") == "# mine\n"
    forced = run("init", "brand", "--force", "--json")
    assert forced.exit_code == 0
    assert "brand/cdp.yaml" in json.loads(forced.stdout)["files"]
    assert (project / "cdp.yaml").read_text(encoding="utf-8").startswith("# cdp.yaml")


def test_scaffolded_project_ingests_its_sample_data(run, tmp_path, monkeypatch):
    run("init", "brand")
    monkeypatch.chdir(tmp_path / "brand")
    result = CliRunner().invoke(cli, ["ingest", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert {r["source"] for r in results} == {
        "crm_members", "pos_orders", "shop_orders", "app_events", "wechat_followers", "coupons",
        "optouts",
    }  # fmt: skip
    assert all(r["status"] == "done" and r["inserted"] > 0 for r in results)


def test_usage_errors_exit_2(run):
    result = run("ingest", "--no-such-option")
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_unexpected_errors_are_one_line_without_debug(tmp_path, monkeypatch):
    monkeypatch.delenv("CDP_DEBUG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cdp.yaml").write_text("store: cdp.db\n", encoding="utf-8")
    (tmp_path / "cdp.db").write_bytes(b"this is not a database, just bytes" * 100)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_status_without_store_says_so(run, write):
    write("cdp.yaml", "store: cdp.db\n")
    result = run("status")
    assert result.exit_code == 1
    assert result.stderr == "Error: cdp.db: no store here yet; run `cdp ingest` first\n"


def test_status_is_plain_without_a_terminal(run, write):
    write(
        "cdp.yaml", "sources:\n  crm:\n    kind: customers\n    key: id\n    fields: {phone: p}\n"
    )
    write("a.csv", "id,p\n1,13800138000\n2,138****0002\n")
    assert run("ingest", "a.csv", "-s", "crm").exit_code == 0
    result = run("status")
    assert result.exit_code == 0
    assert "# Sources" in result.stdout
    assert "\x1b[" not in result.stdout and "━" not in result.stdout
    status = json.loads(run("status", "--json").stdout)
    assert status["tables"]["customers"] == 2
    phone = next(q for q in status["fields"] if q["field"] == "phone")
    assert (phone["filled"], phone["invalid"], phone["invalid_rate"]) == (2, 1, 0.5)
    assert status["sources"][0]["last_batch"] == 1


def test_every_canonical_field_is_documented():
    from cdp_cli.canonical import ITEM_FIELDS, KINDS

    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    names = {f.name for kind in KINDS.values() for f in kind.all_fields} | {
        f.name for f in ITEM_FIELDS
    }
    assert {name for name in names if f"`{name}`" not in text} == set()


def test_numeric_options_refuse_nonsense(run):
    result = run("segment", "city = 'x'", "--sample", "-5")
    assert result.exit_code == 2
    assert "Invalid value for '--sample': -5 is not in the range x>=0." in result.stderr
