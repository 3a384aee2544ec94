"""What cdp does at start-up in place of a costlier standard way, and that it answers alike.

Each shortcut here saves a few milliseconds of every command (an incremental `cdp resolve` at
100k records is mostly start-up, issue 13); each test holds it to the answer of the way it
replaces, and tests/test_startup.py's helper shows the costly module stays unloaded.
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.config import load_config
from cdp_cli.errors import ConfigError
from cdp_cli.messaging.settings import _hour_minute
from tests.conftest import REPO
from tests.test_startup import CONFIG, loaded_by

# cdp.yaml, tag rules and journeys as `cdp init` writes them.
SHIPPED_YAML = [
    REPO / "cdp.yaml",
    *sorted((REPO / "tag_rules").glob("*.yaml")),
    *sorted((REPO / "journeys").glob("*.yaml")),
]


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


def _both_ways(path):
    """load_yaml(path) with libyaml where it may, and with PyYAML's own loader alone."""
    from cdp_cli import yamlfile
    from cdp_cli.errors import FileError

    def load():
        try:
            return "ok", _lines(yamlfile.load_yaml(path))
        except FileError as exc:
            return "error", exc.message, exc.line

    fast = load()
    only_pyyaml = yamlfile._libyaml_reads_alike
    try:
        yamlfile._libyaml_reads_alike = lambda text: False
        return fast, load()
    finally:
        yamlfile._libyaml_reads_alike = only_pyyaml


def _lines(value):
    """A loaded document with each mapping's and list's file and lines, to compare."""
    from cdp_cli.yamlfile import YamlList, YamlMap

    if isinstance(value, YamlMap):
        items = tuple((_lines(k), _lines(v), value.key_lines.get(k)) for k, v in value.items())
        return ("map", value.path, value.line, items)
    if isinstance(value, YamlList):
        return ("list", value.path, value.line, tuple(_lines(v) for v in value))
    return (type(value).__name__, repr(value))


def test_the_shipped_yaml_files_read_alike_with_libyaml():
    """cdp.yaml, tag rules and journeys as `cdp init` writes them: libyaml reads them all,
    to the same values on the same lines."""
    from cdp_cli import yamlfile

    for path in SHIPPED_YAML:
        assert yamlfile._libyaml_reads_alike(path.read_text(encoding="utf-8-sig")), path
        fast, slow = _both_ways(path)
        assert fast == slow and fast[0] == "ok", path


@pytest.mark.parametrize(
    "text",
    [
        "key: !\n",  # libyaml: '', PyYAML: None
        "text: |#\n  a\n",  # libyaml takes the header, PyYAML refuses it
        "a: 1\n\tb: 2\n",  # a tab
        "a: {b: 1}\n\ufeffc: 2\n",  # a byte-order mark inside
        "a:\u3000b\n",  # an ideographic space
        "a: {pr?ice: 1}\n",  # PyYAML ends a plain scalar at ? in a flow collection
        "a: {?b: 1}\n",
        "? a\n: 1\n",  # an explicit key
        "a: &x 1\nb: *x\n",  # an anchor and an alias
        "%YAML 1.1\n---\na: 1\n",  # a directive
        "a: 1\r\nb: 2\r\n",  # Windows line ends
        "a: 1\nb: [1, 2\n",  # not YAML: both say so, in PyYAML's words
        "a: 1\na: 2\n",  # a duplicate key, on its line
        "a: \x7f\n",  # unprintable
        "城市: {武汉市: 武汉, beijing: 北京}\nb: [x, 'y', \"z\\u00e9\"]\nc: 5%\nd: 2026-01-01\n",
    ],
)
def test_a_text_libyaml_may_read_otherwise_is_read_as_pyyaml_reads_it(tmp_path, text):
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    fast, slow = _both_ways(path)
    assert fast == slow


def test_the_channel_names_are_the_registrys():
    """Reading cdp.yaml knows the channels by channel_names, without the registry's module."""
    from cdp_cli.messaging import channel_names
    from cdp_cli.messaging.channels import CHANNELS

    assert tuple(CHANNELS) == channel_names.CHANNEL_NAMES
    scoped = {name for name, channel in CHANNELS.items() if channel.scoped_by_appid}
    assert scoped == channel_names.SCOPED_BY_APPID
    assert (*CHANNELS, "all") == channel_names.CONSENT_CHANNELS


def test_resolve_loads_no_channel_registry(tmp_path):
    (tmp_path / "cdp.yaml").write_text(
        CONFIG + "channels:\n  wechat: {appid: wx1}\n  sms: {cost: 0.04}\n", encoding="utf-8"
    )
    (tmp_path / "a.csv").write_text("member,name,phone\nM1,Li,13800138001\n", encoding="utf-8")
    loaded_by(tmp_path, "ingest", "a.csv", "--source", "crm", "--silent")
    assert "cdp_cli.messaging.channels" not in loaded_by(tmp_path, "resolve", "--json")


# Fragments whose insertion changes how YAML reads a text (the helper's differential fuzzing
# drew edits from these).
_FRAGMENTS = [
    *" \n\t:-#'\"{}[],|>!&*?%@`\\abc1.\u3000\ufeff\x85\u2028中\r",
    "\n  ", ": ", "- ", "  ", "\n- ", "[]", "~", "null", "yes", "0x1", "1e3", "2026-01-01",
    "<<: ", "=", "\\n", "\\u00e9", "\\x",
]  # fmt: skip


SHIPPED_TEXTS = [path.read_text(encoding="utf-8-sig") for path in SHIPPED_YAML]


@st.composite
def _edited_yaml(draw: st.DrawFn) -> str:
    """A shipped YAML file with one to four characters or fragments inserted, deleted or
    replaced: mostly still YAML, at times not, as a hand-edited file is."""
    text = list(draw(st.sampled_from(SHIPPED_TEXTS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert" or at == len(text):
            text.insert(at, draw(st.sampled_from(_FRAGMENTS)))
        elif action == "delete":
            del text[at]
        else:
            text[at] = draw(st.sampled_from(_FRAGMENTS))
    return "".join(text).removeprefix("\ufeff")


def _read_both_ways(text: str) -> tuple[object, object]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edited.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return _both_ways(path)


@settings(max_examples=60, deadline=None)
@given(_edited_yaml())
def test_an_edited_yaml_file_reads_alike_either_way(text):
    """Whichever way load_yaml takes, the same values, types and lines, or the same error on
    the same line (70,000 such edits were compared before the libyaml path landed)."""
    fast, slow = _read_both_ways(text)
    assert fast == slow


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(_edited_yaml())
def test_many_edited_yaml_files_read_alike_either_way(text):
    fast, slow = _read_both_ways(text)
    assert fast == slow
