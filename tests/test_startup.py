"""What a cdp command imports before it does any work: only what it uses.

At 100k records an incremental `cdp resolve` spends most of its time starting: the interpreter
and the imports (issue 13). Each test here runs the command in a fresh interpreter and reads
sys.modules after it, so a heavy import moved back to the top of a module shows here as the
module's name, not as a timing that depends on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# Libraries some commands need and others must not pay for: rule parsing, email validation,
# ID-number checksums, templates, terminal tables.
NOT_FOR_RESOLVE = ("sqlglot", "email_validator", "stdnum", "jinja2", "rich")

# cdp ARGS in this interpreter, then the names in sys.modules to the file named by argv[1].
RUN_CDP = """
import json, sys
from cdp_cli.cli import cli
out, args = sys.argv[1], sys.argv[2:]
try:
    cli(args, prog_name="cdp")
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""


def loaded_by(cwd: Path, *args: str) -> set[str]:
    """The modules `cdp ARGS` (run in folder cwd, in a new interpreter) had loaded at its end."""
    out = cwd / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", RUN_CDP, str(out), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ.copy(),  # the test's: CDP_DEBUG set, CDP_CONFIG and CDP_DB not
    )
    assert result.returncode == 0, result.stderr
    ran = json.loads(out.read_text(encoding="utf-8"))
    assert ran["exit"] in (0, None), result.stderr
    return set(ran["modules"])


def packages(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in names}


def test_version_loads_neither_the_project_nor_the_store_modules(tmp_path):
    loaded = loaded_by(tmp_path, "--version")
    heavy = (*NOT_FOR_RESOLVE, "yaml", "phonenumbers", "sqlite_utils", "dateutil", "pluggy")
    assert packages(loaded, heavy) == set()
    assert {"cdp_cli.config", "cdp_cli.store", "cdp_cli.schema"} & loaded == set()


CONFIG = """\
store: cdp.db
identity:
  blocklist: ["+8613800000000", "N/A"]
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member, name: name, phone: phone}
"""


def test_resolve_without_emails_or_id_numbers_loads_no_validator(tmp_path):
    """A blocklist's phone number and word are not emails: judging them needs no
    email-validator; no row holds an email or an ID number; --json prints no table."""
    (tmp_path / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "a.csv").write_text(
        "member,name,phone\nM1,Li,13800138001\nM2,Wang,138-0013-8002\n", encoding="utf-8"
    )
    (tmp_path / "b.csv").write_text("member,name,phone\nM3,Zhao,13800138003\n", encoding="utf-8")
    loaded_by(tmp_path, "ingest", "a.csv", "--source", "crm", "--silent")
    full = loaded_by(tmp_path, "resolve", "--json")
    loaded_by(tmp_path, "ingest", "b.csv", "--source", "crm", "--silent")
    incremental = loaded_by(tmp_path, "resolve", "--json")
    for loaded in (full, incremental):
        assert "cdp_cli.identity.normalize" in loaded  # keys were read and normalized
        assert packages(loaded, NOT_FOR_RESOLVE) == set()
        assert "dateutil.parser._parser" not in loaded  # sqlite-utils' recipes: never run
        assert "importlib.metadata" not in loaded  # no plugin's entry points looked for
        assert {"cdp_cli.identity.match", "logging"} & loaded == set()  # the project matches no one
        others = {m for m in loaded if m.startswith("cdp_cli.cli.")} - {"cdp_cli.cli.identity"}
        assert others <= {"cdp_cli.cli.output", "cdp_cli.cli.options"}  # no other command's module
    runs = subprocess.run(
        ["sqlite3", str(tmp_path / "cdp.db"), "SELECT mode FROM resolve_runs ORDER BY id"],
        capture_output=True,
        text=True,
    )
    if runs.returncode == 0:  # the sqlite3 shell is there
        assert runs.stdout.split() == ["full", "incremental"]


def test_resolve_with_nothing_new_loads_no_phone_library(tmp_path):
    (tmp_path / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "a.csv").write_text("member,name,phone\nM1,Li,13800138001\n", encoding="utf-8")
    loaded_by(tmp_path, "ingest", "a.csv", "--source", "crm", "--silent")
    assert "phonenumbers" in loaded_by(tmp_path, "resolve", "--json")
    again = loaded_by(tmp_path, "resolve", "--json")
    assert packages(again, (*NOT_FOR_RESOLVE, "phonenumbers")) == set()
    assert "cdp_cli.identity.normalize" not in again


def test_a_mistyped_command_is_answered_with_the_close_names(tmp_path):
    """Commands load on first use; click's suggestion still knows every one of them."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_CDP, str(tmp_path / "m.json"), "resolvx"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["exit"] == 2
    assert "No such command 'resolvx'. Did you mean 'resolve'?" in result.stderr


def test_an_email_without_an_at_sign_is_refused_without_the_validator():
    """email_key's shortcut says what email-validator says of such a value."""
    from email_validator import EmailNotValidError, validate_email

    from cdp_cli.identity.normalize import email_key

    for raw in ("+8613800000000", "N/A", "li.na(at)example.com", "李娜", "-"):
        email_key.cache_clear()
        assert email_key(raw) is None
        try:
            validate_email(raw, check_deliverability=False)
        except EmailNotValidError:
            pass
        else:
            raise AssertionError(raw)


def test_special_use_domains_are_email_validators():
    import email_validator

    from cdp_cli.identity.normalize import _SPECIAL_USE_DOMAINS

    assert set(email_validator.SPECIAL_USE_DOMAIN_NAMES) == _SPECIAL_USE_DOMAINS


def test_the_default_region_is_one_phonenumbers_knows():
    """cdp.yaml's region is checked against phonenumbers unless it is the default."""
    import phonenumbers

    from cdp_cli.config import DEFAULT_REGION

    assert DEFAULT_REGION in phonenumbers.SUPPORTED_REGIONS


def test_sqlite_utils_recipes_still_parse_dates_after_the_lazy_import():
    """dateutil's parser loads on first use, for whoever uses it."""
    from cdp_cli.sqlitelib import sqlite_utils

    assert sqlite_utils.recipes.parsedate("5 Jan 2026") == "2026-01-05"
    assert sqlite_utils.recipes.parsedatetime("2026-01-05 10:30") == "2026-01-05T10:30:00"


def test_the_store_opens_without_sqlite_utils_plugins(tmp_path):
    """Loading them reads every installed distribution's entry points, in every command."""
    code = (
        "import sys; from pathlib import Path; from cdp_cli.store import open_store; "
        f"open_store(Path({str(tmp_path / 'cdp.db')!r})).close(); "
        "import sqlite_utils.plugins as p; print(p._plugins_loaded, 'importlib.metadata' in "
        "sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.split() == ["False", "False"]
