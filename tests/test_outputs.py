"""Output files the user names (--export, --html): written where they can be, never over the
project's own files, and a path that cannot be written is one line, not an internal error."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cdp_cli import CdpError, Project
from cdp_cli.cli import cli
from cdp_cli.files import write_text
from cdp_cli.identity.resolve import resolve
from cdp_cli.ingest import ingest
from cdp_cli.messaging.engine import run_journeys
from cdp_cli.messaging.links import short_code
from cdp_cli.scaffold import init_project
from cdp_cli.tags import run_tags

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Every option that writes a file the user names, with the commands that carry it.
OUTPUTS = {
    "segment --export": (["segment", "winback", "--export"], ".csv"),
    "resolve --export": (["resolve", "--export"], ".csv"),
    "report overview --html": (["report", "overview", "--html"], ".html"),
    "report journey --html": (["report", "journey", "winback", "--html"], ".html"),
    "report funnel --html": (["report", "funnel", "--steps", "view_item,order", "--html"], ".html"),
    "report lifecycle --html": (["report", "lifecycle", "--html"], ".html"),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("outputs")
    init_project(folder)
    project = Project(folder / "cdp.yaml")
    with project.store() as db:
        ingest(db, project.config)
        resolve(db, project.config)
        run_tags(db, project.tag_rules_folder, date(2026, 11, 15))
        run_journeys(db, project.config, now=datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    (folder / "reports").mkdir()
    (folder / "to-store.html").symlink_to(folder / "cdp.db")
    (folder / "to-store.csv").symlink_to(folder / "cdp.db")
    (folder / "same").symlink_to(folder)
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    """The project's own files, byte for byte."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.parent.name != "reports"]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cdp(folder: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.chdir(folder)
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# An export's name must end in .csv or .jsonl, which says no first to cdp.db or cdp.yaml.
EXPORT_NAME = "the export is written as .csv or .jsonl"
REFUSED = [
    ("nowhere/out{ext}", "nowhere/out{ext}: the folder nowhere does not exist", None),
    ("notes.txt/out{ext}", "notes.txt/out{ext}: notes.txt is not a folder", None),
    ("cdp.db", "cdp.db is the project's store; an output never overwrites it", EXPORT_NAME),
    (
        "cdp.db-wal",
        "cdp.db-wal is the store's -wal file; an output never overwrites it",
        EXPORT_NAME,
    ),
    (
        "cdp.db-shm",
        "cdp.db-shm is the store's -shm file; an output never overwrites it",
        EXPORT_NAME,
    ),
    ("cdp.yaml", "cdp.yaml is the project's cdp.yaml; an output never overwrites it", EXPORT_NAME),
    ("same/cdp.db", "same/cdp.db (which is {folder}/cdp.db) is the project's store", EXPORT_NAME),
    ("to-store{ext}", "to-store{ext} (which is {folder}/cdp.db) is the project's store", None),
    ("sample_data/crm_members.csv", "is an input file of source crm_members", None),
    ("outbound/out{ext}", "is in outbound/, the journeys' outbound files", None),
]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize(("target", "message", "export_message"), REFUSED)
def test_an_output_never_lands_on_the_project_or_nowhere(
    sample, monkeypatch, output, target, message, export_message
):
    args, ext = OUTPUTS[output]
    if export_message and "--export" in args:
        message = export_message
    before = fingerprint(sample)
    target = target.format(ext=ext)
    result = cdp(sample, monkeypatch, *args, target)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and "internal error" not in line
    assert message.format(ext=ext, folder=sample.resolve()) in line
    assert fingerprint(sample) == before
    assert (sample / f"to-store{ext}").is_symlink()


@pytest.mark.parametrize("output", [o for o in OUTPUTS if o.endswith("--html")])
def test_html_never_overwrites_a_file_of_another_kind(sample, monkeypatch, output):
    args, _ = OUTPUTS[output]
    result = cdp(sample, monkeypatch, *args, "notes.txt")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: notes.txt exists and is not a .html or .htm file; an output never overwrites it\n"
    )
    assert (sample / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("output", OUTPUTS)
def test_an_output_in_an_existing_folder_is_written(sample, monkeypatch, output):
    args, ext = OUTPUTS[output]
    target = sample / "reports" / f"{output.split()[0]}-{output.split()[1]}{ext}"
    target.write_text("an older one", encoding="utf-8")  # the same kind of file: replaced
    result = cdp(sample, monkeypatch, *args, str(target.relative_to(sample)))
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") != "an older one"


def test_a_file_that_cannot_be_written_is_a_cdp_error_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    with pytest.raises(CdpError, match=r"cannot write .*a-file/x.html: Not a directory"):
        write_text(tmp_path / "a-file" / "x.html", "<p>")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def _no_escapes(text: str, where: str) -> None:
    """Chinese text as UTF-8 characters, readable in any editor; never \\uXXXX escapes."""
    assert re.search("[\u4e00-\u9fff]", text), f"{where}: no Chinese text to check"
    assert "\\u" not in text, f"{where}: \\u escapes"


def test_json_lines_and_json_outputs_are_utf8_without_escapes(sample, monkeypatch):
    """The sample is Chinese: exports, outbound files and --json keep it as characters."""
    for args, name in [
        (["segment", "winback", "--export", "reports/winback.jsonl",
          "--fields", "one_id,name,city"], "reports/winback.jsonl"),
        (["resolve", "--export", "reports/ids.jsonl"], None),
    ]:  # fmt: skip
        result = cdp(sample, monkeypatch, *args)
        assert result.exit_code == 0, result.output
        if name:
            _no_escapes((sample / name).read_bytes().decode("utf-8"), name)
    outbound = sorted((sample / "outbound").rglob("*.jsonl"))
    assert outbound
    for path in outbound:
        _no_escapes(path.read_bytes().decode("utf-8"), str(path))
    for args in (["segment", "winback", "--by", "city", "--json"],):
        result = cdp(sample, monkeypatch, *args)
        assert result.exit_code == 0, result.output
        _no_escapes(result.stdout, " ".join(args))


def test_the_sample_emails_carry_an_unsubscribe_link_from_the_brand_url(sample):
    """cdp.yaml's brand url makes the link; the outbound row's message_id says whose it is."""
    records = [
        json.loads(line)
        for path in sorted((sample / "outbound" / "email").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert records
    for record in records:
        url = f"https://www.huayang.example.com/unsubscribe?m={short_code(record['message_id'])}"
        assert record["list_unsubscribe"] == f"<{url}>"
        assert url in record["html"] and url in record["text"]


def test_counts_read_as_english():
    from cdp_cli.cli.output import fmt_count

    assert fmt_count(1, "probable link") == "1 probable link"
    assert fmt_count(0, "pair") == "0 pairs"
    assert fmt_count(1200, "pair") == "1,200 pairs"
