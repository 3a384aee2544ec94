"""What cdp does at start-up in place of a costlier standard way, and that it answers alike.

Each shortcut here saves a few milliseconds of every command (an incremental `cdp resolve` at
100k records is mostly start-up, issue 13); each test holds it to the answer of the way it
replaces, and tests/test_startup.py's helper shows the costly module stays unloaded.
"""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from cdp_cli.config import load_config
from cdp_cli.errors import ConfigError
from cdp_cli.messaging.settings import _hour_minute
from tests.test_startup import CONFIG, loaded_by


def _strptime_or_none(text: str) -> object:
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        return None


def _hour_minute_or_none(text: str) -> object:
    try:
        return _hour_minute(text)
    except ValueError:
        return None


def test_quiet_hours_read_as_strptime_reads_them():
    """Every text strptime's %H:%M takes, and only those: one digit or two, digits of any
    script, nothing before or after."""
    written = [
        "21:00", "9:00", "09:5", "9:5", "0:0", "00:00", "23:59", "24:00", "23:60", "1:61",
        "１２:３４", "٢:٣٠", " 9:00", "9:00 ", "9:0a", "2:3", "20", "", ":", "12:345",
        "012:00", "9 : 00", "²:00", "21:00\n",
    ]  # fmt: skip
    rng = random.Random(13)
    alphabet = "0123456789:١２ a²\n"
    written += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(5000)
    ]
    for text in written:
        assert _hour_minute_or_none(text) == _strptime_or_none(text), repr(text)


@pytest.mark.parametrize("window", ["21:00-9:00", "７:30-08:00"])
def test_a_quiet_hours_window_loads(tmp_path, window):
    (tmp_path / "cdp.yaml").write_text(
        f'channels:\n  sms: {{quiet_hours: "{window}"}}\n', encoding="utf-8"
    )
    quiet = load_config(tmp_path / "cdp.yaml").sending.quiet_hours("sms")
    start, end = (_strptime_or_none(t) for t in window.split("-"))
    assert quiet is not None and (quiet.start, quiet.end) == (start, end)


def test_a_bad_quiet_hours_window_names_its_line(tmp_path):
    (tmp_path / "cdp.yaml").write_text(
        'channels:\n  sms:\n    quiet_hours: "21:00-25:00"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="expected a window such as 21:00-09:00") as caught:
        load_config(tmp_path / "cdp.yaml")
    assert caught.value.line == 3


def test_resolve_loads_neither_strptime_nor_difflib(tmp_path):
    """Quiet hours are read without _strptime; difflib is for a misspelt key only."""
    (tmp_path / "cdp.yaml").write_text(
        CONFIG + 'channels:\n  sms: {quiet_hours: "21:00-09:00"}\n', encoding="utf-8"
    )
    (tmp_path / "a.csv").write_text("member,name,phone\nM1,Li,13800138001\n", encoding="utf-8")
    loaded_by(tmp_path, "ingest", "a.csv", "--source", "crm", "--silent")
    loaded = loaded_by(tmp_path, "resolve", "--json")
    assert {"_strptime", "difflib"} & loaded == set()


def test_only_the_program_freezes_its_start_up(tmp_path, monkeypatch):
    """`cdp` (its script, python -m cdp_cli) freezes what its imports made, and a writing
    command what it loaded to take the lock; a caller of cli.main(), such as click's test
    runner, keeps its garbage collector as it was."""
    import gc
    import subprocess
    import sys

    from click.testing import CliRunner

    from cdp_cli.cli import cli

    (tmp_path / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "a.csv").write_text("member,name,phone\nM1,Li,13800138001\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    before = gc.get_freeze_count()
    for args in (["--version"], ["ingest", "a.csv", "--source", "crm", "--silent"], ["resolve"]):
        assert CliRunner().invoke(cli, args).exit_code == 0
    assert gc.get_freeze_count() == before
    code = (
        "import gc, sys; from cdp_cli.cli import cli; sys.argv = ['cdp', '--version']\n"
        "try:\n    cli(prog_name='cdp')\nexcept SystemExit:\n    print(gc.get_freeze_count() > 0)"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ran.stdout.splitlines()[-1] == "True"  # after the version line
