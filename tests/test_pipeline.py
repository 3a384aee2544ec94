"""`cdp run`: inbox files in, then resolve, tag and journeys; one summary; the log file."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.config import load_config
from cdp_cli.oplog import for_log, format_fields, scrub
from tests.conftest import SAMPLE_DATA, query
from tests.ops_helpers import drop, make_project, sample_run_once

NOW = ("--now", "2026-11-15 10:30")
POS_HEADER = SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes().split(b"\n", 1)[0]


def pos_export(day: str, rows: int = 3) -> bytes:
    """A new POS export: sample rows under new order numbers."""
    lines = SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes().split(b"\n")[1 : rows + 1]
    renamed = [re.sub(rb"^([A-Z]+\d+)-\d+-", rb"\1-" + day.encode() + b"-", x) for x in lines]
    return b"\n".join([POS_HEADER, *renamed]) + b"\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return sample_run_once(tmp_path_factory)


@pytest.fixture
def project(base, tmp_path, monkeypatch):
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_json(run, *args):
    result = run("run", *NOW, "--json", *args)
    return result, json.loads(result.stdout)


def statuses(report):
    return {f["file"].rsplit("/", 1)[-1]: f["status"] for f in report["files"]}


def test_new_files_are_ingested_and_moved_old_and_bad_ones_are_not(run, project):
    pos = project / "inbox/pos"
    drop(pos / "pos-old.csv", SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes())  # ingested
    drop(pos / "pos-0616.csv", pos_export("20261116"))
    drop(pos / "pos-0616_copy.csv", pos_export("20261116"))  # the same export, twice
    drop(pos / "pos-0617.xlsx", b"PK\x03\x04 not a csv")  # cannot be read: to failed/
    drop(pos / "pos-0618.csv", pos_export("20261118"), age=0)  # still being copied in
    drop(pos / ".pos-0619.csv", pos_export("20261119"))  # hidden while uploading
    drop(pos / "pos-0620.csv.part", pos_export("20261120"))  # a partial download
    batches = query(project / "cdp.db", "SELECT count(*) FROM batches")[0][0]

    result, report = run_json(run)

    assert result.exit_code == 1
    assert statuses(report) == {
        "pos-0616_copy.csv": "duplicate", "pos-0616.csv": "ingested", "pos-0617.xlsx": "failed",
        "pos-0618.csv": "waiting", "pos-old.csv": "duplicate",
    }  # fmt: skip
    assert sorted(p.name for p in (pos / "done").iterdir()) == [
        "pos-0616.csv", "pos-0616_copy.csv", "pos-old.csv",
    ]  # fmt: skip
    assert [p.name for p in (pos / "failed").iterdir()] == ["pos-0617.xlsx"]
    assert sorted(p.name for p in pos.iterdir() if p.is_file()) == [
        ".pos-0619.csv", "pos-0618.csv", "pos-0620.csv.part",
    ]  # fmt: skip
    assert query(project / "cdp.db", "SELECT count(*) FROM batches")[0][0] == batches + 1
    assert (
        query(project / "cdp.db", "SELECT count(*) FROM orders WHERE key LIKE '%-20261116-%'")[0][0]
        == 3
    )
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["ingest"]["status"] == "failed"
    assert stages["ingest"]["counts"] == {
        "files": 4, "ingested": 1, "duplicates": 2, "failed": 1, "waiting": 1, "rows_read": 3,
        "rows_new": 3, "rows_updated": 0, "rejected": 0,
    }  # fmt: skip
    assert (
        "pos-0617.xlsx: the file is a ZIP archive, as an Excel .xlsx workbook is"
        in stages["ingest"]["error"]
    )
    # one bad file does not stop the run: the stages after ingest ran on what did land
    assert [stages[s]["status"] for s in ("resolve", "tag", "journeys")] == ["done"] * 3
    assert "ingest: pos_orders: pos-0617.xlsx: the file is a ZIP archive" in result.stderr
    assert report["failed"] == ["ingest"] and report["ok"] is False


def test_second_run_does_nothing_new(run, project):
    drop(project / "inbox/pos/pos-0616.csv", pos_export("20261116"))
    first, report = run_json(run)
    assert first.exit_code == 0, first.output
    assert statuses(report) == {"pos-0616.csv": "ingested"}
    counts = "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM tag_changes), "
    counts += "(SELECT count(*) FROM messages), (SELECT count(*) FROM journey_enrolments)"
    before = query(project / "cdp.db", counts)

    second, report = run_json(run)

    assert second.exit_code == 0, second.output
    assert report["files"] == []
    stages = {s["stage"]: s["counts"] for s in report["stages"]}
    assert stages["ingest"]["files"] == 0
    assert stages["resolve"]["mode"] == "unchanged"
    assert (stages["tag"]["changed"], stages["tag"]["removed"]) == (0, 0)
    assert (stages["journeys"]["entered"], stages["journeys"]["sent"]) == (0, 0)
    assert query(project / "cdp.db", counts) == before


def test_a_failing_stage_exits_1_after_the_others_ran(run, project):
    drop(project / "inbox/pos/pos-0616.csv", pos_export("20261116"))
    (project / "tag_rules/zz_broken.yaml").write_text("- name: broken\n  when: 'orders >'\n")

    result, report = run_json(run)

    assert result.exit_code == 1
    stages = {s["stage"]: s for s in report["stages"]}
    assert {name: s["status"] for name, s in stages.items()} == {
        "ingest": "done", "resolve": "done", "tag": "failed", "journeys": "done",
    }  # fmt: skip
    assert stages["tag"]["error"].startswith("tag_rules/zz_broken.yaml:1: tag broken:")
    assert stages["ingest"]["counts"]["ingested"] == 1
    assert stages["journeys"]["counts"]["journeys"] == len(list(project.glob("journeys/*.yaml")))
    assert result.stderr.startswith("Error: tag: tag_rules/zz_broken.yaml:1: tag broken:")
    log = (project / "logs/cdp.log").read_text(encoding="utf-8")
    assert re.search(r" stage=tag status=failed seconds=[\d.]+ error=\"tag_rules/zz_broken", log)
    assert re.search(r" stage=run status=failed failed=tag seconds=", log)
    # A stage's failure is no damage (that ends every command on its own): the store is as
    # this run left it, and the next run reads no page again to know it.
    assert run_json(run)[1]["pages_read"] is False


def test_tag_is_skipped_when_resolve_fails_and_journeys_still_run(run, project, monkeypatch):
    conn = sqlite3.connect(project / "cdp.db")
    conn.execute("DROP TABLE replaced_identity_keys")  # damaged: resolve cannot run
    conn.close()
    monkeypatch.delenv("CDP_DEBUG")  # as a user meets it: one line, no traceback

    result, report = run_json(run)

    assert result.exit_code == 1
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["resolve"]["status"] == "failed"
    assert stages["resolve"]["error"] == (
        "internal error: OperationalError: no such table: replaced_identity_keys"
    )
    assert stages["tag"]["status"] == "skipped"
    assert stages["tag"]["note"].startswith("resolve failed")
    assert stages["journeys"]["status"] == "done"
    log = (project / "logs/cdp.log").read_text(encoding="utf-8")
    # the log keeps only the type of an unexpected error: its text could quote anything
    assert "stage=resolve status=failed seconds=" in log
    assert 'error="internal error: OperationalError"' in log
    assert "stage=tag status=skipped" in log


def test_an_unexpected_error_is_raised_under_cdp_debug_after_the_run(run, project):
    conn = sqlite3.connect(project / "cdp.db")
    conn.execute("DROP TABLE replaced_identity_keys")
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="replaced_identity_keys"):
        run("run", *NOW)
    log = (project / "logs/cdp.log").read_text(encoding="utf-8")
    assert "stage=journeys status=done" in log  # the run went on before the bug surfaced


def test_a_file_that_meets_an_unexpected_error_stays_and_the_others_go_on(
    run, project, monkeypatch
):
    conn = sqlite3.connect(project / "cdp.db")
    conn.execute("DROP TABLE rejects")  # a damaged store: a file with a bad row cannot land
    conn.close()
    monkeypatch.delenv("CDP_DEBUG")
    bad_row = b"BJ002-20261116-9999,BJ002,store,13633789446,not a time,1.00,1,x,y,z\n"
    drop(project / "inbox/pos/a.csv", pos_export("20261116") + bad_row)
    drop(project / "inbox/pos/b.csv", pos_export("20261117"))

    result, report = run_json(run)

    assert result.exit_code == 1
    assert statuses(report) == {"a.csv": "failed", "b.csv": "ingested"}
    assert report["files"][0]["message"] == (
        "internal error: OperationalError: no such table: rejects"
    )
    assert (project / "inbox/pos/a.csv").exists()  # not the file's fault: tried again next run
    assert (project / "inbox/pos/done/b.csv").exists()
    log = (project / "logs/cdp.log").read_text(encoding="utf-8")
    assert "file=a.csv status=failed seconds=" in log
    assert 'error="internal error: OperationalError"\n' in log


def test_dry_run_lists_the_inbox_and_changes_nothing(run, project):
    drop(project / "inbox/pos/pos-old.csv", SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes())
    drop(project / "inbox/pos/pos-0616.csv", pos_export("20261116"))
    drop(project / "inbox/pos/pos-0618.csv", pos_export("20261118"), age=0)
    before = query(project / "cdp.db", "SELECT count(*) FROM batches")

    result, report = run_json(run, "--dry-run")

    assert result.exit_code == 0
    assert statuses(report) == {
        "pos-0616.csv": "new", "pos-0618.csv": "waiting", "pos-old.csv": "duplicate",
    }  # fmt: skip
    assert [s["status"] for s in report["stages"]] == ["done", "skipped", "skipped", "skipped"]
    assert sorted(p.name for p in (project / "inbox/pos").iterdir()) == [
        "pos-0616.csv", "pos-0618.csv", "pos-old.csv",
    ]  # fmt: skip
    assert query(project / "cdp.db", "SELECT count(*) FROM batches") == before
    assert not (project / "logs/cdp.log").exists()


def test_a_clock_more_than_a_day_ahead_stops_the_run_before_any_stage(run, project):
    drop(project / "inbox/pos/pos-0616.csv", pos_export("20261116"))
    before = query(project / "cdp.db", "SELECT count(*) FROM batches")

    result = run("run", "--now", "2062-11-15 10:30")

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --now 2062-11-15 10:30 is more than a day ahead")
    assert query(project / "cdp.db", "SELECT count(*) FROM batches") == before
    assert (project / "inbox/pos/pos-0616.csv").exists()
    preview = run("run", "--dry-run", "--now", "2062-11-15 10:30", "--json")
    assert preview.exit_code == 0, preview.output
    assert statuses(json.loads(preview.stdout)) == {"pos-0616.csv": "new"}


def test_a_file_whose_name_is_taken_in_done_keeps_both(run, project):
    drop(project / "inbox/pos/done/pos.csv", b"an earlier export of the same name")
    drop(project / "inbox/pos/pos.csv", pos_export("20261116"))
    result, report = run_json(run)
    assert result.exit_code == 0, result.output
    assert report["files"][0]["moved_to"].endswith("inbox/pos/done/pos~2.csv")
    assert (
        project / "inbox/pos/done/pos.csv"
    ).read_bytes() == b"an earlier export of the same name"


def test_a_missing_inbox_folder_fails_ingest_only(run, project):
    shutil.rmtree(project / "inbox/shop")
    drop(project / "inbox/pos/pos-0616.csv", pos_export("20261116"))
    result, report = run_json(run)
    assert result.exit_code == 1
    ingest = report["stages"][0]
    assert ingest["status"] == "failed"
    assert ingest["error"] == (
        "inbox/shop: inbox folder does not exist (sources.shop_orders.inbox in cdp.yaml)"
    )
    assert statuses(report) == {"pos-0616.csv": "ingested"}
    assert [s["status"] for s in report["stages"][1:]] == ["done"] * 3


def test_a_file_two_inboxes_match_is_left_alone(tmp_path, run):
    make_project(tmp_path, {"pos_orders": "inbox/pos", "crm_members": "inbox/pos"})
    drop(tmp_path / "inbox/pos/export.csv", pos_export("20261116"))
    result = run("run", *NOW, "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1
    assert report["files"][0]["status"] == "failed"
    assert report["files"][0]["message"].startswith("matched by the inboxes of crm_members and")
    assert (tmp_path / "inbox/pos/export.csv").exists()


def test_without_inboxes_ingest_is_skipped(tmp_path, run):
    make_project(tmp_path, inboxes={})
    result = run("run", *NOW)
    assert result.exit_code == 0, result.output
    assert re.search(r"ingest +skipped +no source declares an inbox", result.stdout)
    assert re.search(r"journeys +done +\d+ journeys: 0 entered", result.stdout)


# ---------------------------------------------------------------------------------------------
# the log file


def personal_values() -> set[str]:
    """Every phone (as digits), email, name and nickname in the sample data."""
    values: set[str] = set()
    for path in SAMPLE_DATA.iterdir():
        text = path.read_bytes().decode("gb18030" if "gbk" in path.name else "utf-8-sig", "replace")
        values |= {e.lower() for e in re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)}
        values |= set(re.findall(r"1[3-9]\d{9}", re.sub(r"(?<=\d)[ -](?=\d)", "", text)))
        if path.suffix == ".csv":
            for row in csv.DictReader(text.splitlines()):
                values |= {row[c] for c in ("姓名", "nickname") if row.get(c)}
    assert len(values) > 3000
    return values


def test_the_log_has_a_line_per_stage_and_no_personal_data(tmp_path, run):
    inboxes = {name: f"inbox/{name}" for name in (
        "crm_members", "pos_orders", "shop_orders", "app_events", "wechat_followers", "coupons",
        "optouts")}  # fmt: skip
    make_project(tmp_path, inboxes)
    for name, inbox in inboxes.items():
        files = load_config(tmp_path / "cdp.yaml").sources[name].files
        for number, file in enumerate(files):
            drop(
                tmp_path / inbox / f"{number}-{file.rsplit('/', 1)[-1]}",
                (tmp_path / file).read_bytes(),
            )
    # a file without its header row: the error quotes its first row, a customer's data
    rows = SAMPLE_DATA.joinpath("crm_members.csv").read_bytes().split(b"\n")[1:6]
    drop(tmp_path / "inbox/crm_members/9-no-header.csv", b"\n".join(rows))

    result = run("run", *NOW)

    assert result.exit_code == 1
    # the terminal (cron mails it) shows the first row masked: names and numbers too
    assert "It reads: M***, 李***, 女***, 138****8000" in result.stderr
    assert "13800138000" not in result.stderr and "李娜" not in result.stderr
    assert not {value for value in personal_values() if value in result.stderr.lower()}
    log = (tmp_path / "logs/cdp.log").read_text(encoding="utf-8")
    lines = log.splitlines()
    assert [re.search(r" stage=(\S+)", line)[1] for line in lines] == (
        ["run"] + ["ingest"] * 10 + ["resolve", "tag", "journeys", "run"]
    )
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d pid=\d+ stage=", x) for x in lines
    )
    assert re.search(r"stage=journeys status=done journeys=\d+ entered=\d+ sent=[1-9]", log)
    assert "file=9-no-header.csv status=failed" in log
    assert "error=\"column '…' (for member_no) is not in the header\"" in log
    found = {value for value in personal_values() if value in log.lower()}
    assert not found


PHONE_FORMS = [
    lambda p: p, lambda p: f"+86{p}", lambda p: f"+86 {p[:3]} {p[3:7]} {p[7:]}",
    lambda p: f"{p[:3]}-{p[3:7]}-{p[7:]}", lambda p: f"0086 {p}",
]  # fmt: skip


@given(
    before=st.sampled_from(["", "line 12: ", "the columns are: M0000001, ", "(", "值："]),
    phone=st.from_regex(r"1[3-9]\d{9}", fullmatch=True),
    form=st.sampled_from(PHONE_FORMS),
    email=st.emails(),
)
@settings(max_examples=60, deadline=None)
def test_scrub_removes_phones_and_emails_from_any_message(before, phone, form, email):
    text = scrub(f"{before}{form(phone)}, {email}; as of 2026-11-15, 3 rows")
    assert phone[-8:] not in text.replace(" ", "").replace("-", "")
    assert email not in text
    assert text.endswith("; as of 2026-11-15, 3 rows")  # dates and counts stay


def test_for_log_keeps_the_gist_of_a_message():
    assert for_log("column '会员编号' is missing; the columns are: M1, 李娜") == (
        "column '…' is missing"
    )
    assert for_log('money: "张三" is not an amount') == "money: '…' is not an amount"
    # numbers that are part of a name are not phone numbers: dated file names stay readable
    assert (
        scrub("pos-20261118.csv: M0000001, 13800138000") == "pos-20261118.csv: M0000001, <number>"
    )


def test_log_values_with_spaces_quotes_or_newlines_stay_on_one_line():
    line = format_fields(
        {"stage": "tag", "seconds": 0.5, "error": 'a "b"\nc', "note": None, "ok": True, "x": ""}
    )
    assert line == 'stage=tag seconds=0.500 error="a \\"b\\"\\nc" ok=true x=""'


# ---------------------------------------------------------------------------------------------
# cdp.yaml


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("inbox: 3", "sources.pos_orders.inbox: expected a folder, or a mapping with folder:"),
        ("inbox: {folder: in, pattern: 'a/*.csv'}", "sources.pos_orders.inbox.pattern: expected"
         " a file name pattern such as '*.csv', without folders"),
        ("inbox: {folder: in, settle_seconds: -1}",
         "sources.pos_orders.inbox.settle_seconds: expected a whole number of 0 or more"),
        ("inbox: {foldr: in}", "sources.pos_orders.inbox: unknown key 'foldr' (did you mean"
         " 'folder'?)"),
    ],
)  # fmt: skip
def test_inbox_mistakes_name_the_line(run, tmp_path, setting, message):
    make_project(tmp_path, {"pos_orders": setting.removeprefix("inbox: ")})
    line = next(
        n for n, text in enumerate((tmp_path / "cdp.yaml").read_text().splitlines(), 1)
        if text.strip() == setting
    )  # fmt: skip
    result = run("run")
    assert result.exit_code == 2
    assert result.stderr == f"Error: cdp.yaml:{line}: {message}\n"


def test_log_must_be_a_path(run, tmp_path):
    make_project(tmp_path, log="[a, b]")
    line = (tmp_path / "cdp.yaml").read_text().splitlines().index("log: [a, b]") + 1
    result = run("run")
    assert result.exit_code == 2
    assert result.stderr == f"Error: cdp.yaml:{line}: log: expected the path of a file\n"


def test_inbox_short_and_long_forms(tmp_path):
    make_project(tmp_path)
    config = load_config(tmp_path / "cdp.yaml")
    pos, shop = config.sources["pos_orders"].inbox, config.sources["shop_orders"].inbox
    assert (pos.folder, pos.pattern, pos.settle_seconds) == ("inbox/pos", "*", 60)
    assert (shop.folder, shop.pattern) == ("inbox/shop", "*.jsonl")
    assert config.inbox_folder(config.sources["pos_orders"]) == tmp_path / "inbox/pos"
    assert config.log_path == tmp_path / "logs/cdp.log"


def test_an_inbox_file_never_brings_a_forgotten_person_back(run, project):
    assert run("forget", "--phone", "13800138000", "--yes").exit_code == 0
    line = next(
        x
        for x in SAMPLE_DATA.joinpath("pos_orders.csv").read_bytes().split(b"\n")
        if b"138-0013-8000" in x
    )
    drop(project / "inbox/pos/pos-again.csv", POS_HEADER + b"\n" + line + b"\n")
    _, report = run_json(run)
    assert statuses(report) == {"pos-again.csv": "ingested"}
    batch = "SELECT rows_inserted, rows_rejected FROM batches WHERE file LIKE '%pos-again.csv'"
    assert query(project / "cdp.db", batch) == [(0, 1)]  # refused at ingest: it never landed
    assert b"138-0013-8000" not in (project / "cdp.db").read_bytes()
