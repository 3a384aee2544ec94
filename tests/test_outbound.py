"""Outbound files on a real store: their exact CSV and JSONL contents, each message written
once, and the same file written again whole when a run was killed before marking its rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdp_cli.config import load_config
from cdp_cli.errors import CdpError
from cdp_cli.messaging import engine, outbox
from cdp_cli.messaging.outbox import write_outbound
from cdp_cli.store import open_store
from tests.conftest import query
from tests.test_channels import CONFIG, CRM, WECHAT

JOURNEY = """name: hi
entry: {when: "name is not null"}
steps: [{send: {channel: wechat, fallback: [sms], template: hello}}]
"""


def tagged(run, write) -> None:
    """The project's files written, its customers ingested, resolved and tagged."""
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("templates/wechat/hello.json", WECHAT)
    write("templates/sms/hello.txt", "【花漾】{{ customer.name|default_name }}, 你好")
    write("journeys/hi.yaml", JOURNEY)
    for args in (["ingest", "crm.csv", "-s", "crm"], ["resolve"], ["tag"]):
        assert run(*args).exit_code == 0


@pytest.fixture
def project(run, write, tmp_path):
    tagged(run, write)
    result = run("journey", "run", "--now", "2026-11-15 10:30", "--json")
    assert result.exit_code == 0, result.output
    return tmp_path


def ids(tmp_path) -> dict[str, str]:
    return dict(query(tmp_path / "cdp.db", "SELECT key, one_id FROM id_mapping"))


def test_the_files_hold_exactly_the_queued_messages(project) -> None:
    one = ids(project)
    enrolment = dict(query(project / "cdp.db", "SELECT one_id, id FROM journey_enrolments"))
    sms = (project / "outbound/sms/hi-20261115T103000-1.csv").read_text(encoding="utf-8")
    people = [("W2", "13800000002", "王芳"), ("W3", "13800000003", "张敏"),
              ("W4", "13800000004", "刘洋")]  # fmt: skip
    rows = sorted(
        (
            enrolment[one[m]],
            f'hi:{enrolment[one[m]]}:steps[0],+86{phone},"【花漾】{name}, 你好",'
            f"1,UCS-2,hi,steps[0],{one[m]},,",
        )
        for m, phone, name in people
    )  # in the order they were queued: by enrolment
    header = "message_id,to,text,segments,encoding,journey,step,one_id,coupon,link"
    assert sms.splitlines() == [header, *(row for _, row in rows)]
    wechat = (project / "outbound/wechat/hi-20261115T103000-1.jsonl").read_text(encoding="utf-8")
    [record] = [json.loads(line) for line in wechat.splitlines()]
    assert record == {
        "message_id": record["message_id"], "to": "oOne", "journey": "hi", "step": "steps[0]",
        "one_id": one["W1"], "coupon": None, "link": None, "touser": "oOne",
        "template_id": "T1", "url": "https://hy.example.com",
        "data": {"thing1": {"value": "李娜"}},
    }  # fmt: skip
    assert record["message_id"].startswith("hi:") and record["message_id"].endswith(":steps[0]")


def test_each_message_is_written_once_and_again_whole_after_a_kill(project) -> None:
    config = load_config(project / "cdp.yaml")
    path = project / "outbound/sms/hi-20261115T103000-1.csv"
    before = path.read_bytes()
    db = open_store(config.store)
    try:
        assert write_outbound(db, config) == []  # nothing queued: nothing written again
        assert path.read_bytes() == before
        # A run killed after the file was renamed into place but before its rows were marked
        # written leaves them queued; one killed before the rename leaves no file.
        with db.conn:
            db.conn.execute(
                "UPDATE messages SET status = 'queued', file = NULL, written_at = NULL "
                "WHERE channel = 'sms'"
            )
        path.unlink()
        assert write_outbound(db, config) == [str(config.outbound_folder / "sms" / path.name)]
        assert path.read_bytes() == before  # the same name and the same rows, whole
        statuses = db.conn.execute(
            "SELECT DISTINCT status, file FROM messages WHERE channel = 'sms'"
        )
        assert statuses.fetchall() == [("written", str(config.outbound_folder / "sms" / path.name))]
        assert not list(path.parent.glob(".*"))  # no temporary file left behind
    finally:
        db.close()


def test_the_files_of_a_run_are_marked_written_together(run, write, tmp_path, monkeypatch) -> None:
    # Both files are written before either is marked: when the second cannot be written, the
    # first one's messages stay queued too, and the next run writes both again, whole.
    tagged(run, write)
    copied: list[Path] = []
    copy_file = outbox._copy_file

    def copy_one_then_fail(path: Path, *args: Any) -> int:
        if copied:
            raise CdpError(f"cannot write {path}")
        copied.append(path)
        return copy_file(path, *args)

    with monkeypatch.context() as failing:
        failing.setattr(outbox, "_copy_file", copy_one_then_fail)
        assert run("journey", "run", "--now", "2026-11-15 10:30").exit_code == 1
    statuses = "SELECT status, count(*) FROM messages GROUP BY status"
    assert query(tmp_path / "cdp.db", statuses) == [("queued", 4)]
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM exports") == [(0,)]
    [first] = copied
    before = first.read_bytes()
    result = run("journey", "run", "--now", "2026-11-15 10:30", "--json")
    assert result.exit_code == 0, result.output
    assert query(tmp_path / "cdp.db", statuses) == [("written", 4)]
    assert first.read_bytes() == before
    files = sorted(p.name for p in (tmp_path / "outbound").rglob("*") if p.is_file())
    assert files == ["hi-20261115T103000-1.csv", "hi-20261115T103000-1.jsonl"]
    logged = (
        "SELECT e.audience, count(*) FROM exports e JOIN export_members m ON m.export_id = e.id "
    )
    assert query(tmp_path / "cdp.db", logged + "GROUP BY e.id ORDER BY 1") == [
        ("journey hi, channel sms", 3), ("journey hi, channel wechat", 1)
    ]  # fmt: skip


def test_a_run_checkpoints_once_at_its_end(run, write, tmp_path, monkeypatch) -> None:
    # The journeys' commits and the marks of their messages rewrite the same pages: no
    # automatic checkpoint after each commit, one when the run is done.
    tagged(run, write)
    seen = []
    write_outbound_ = engine.write_outbound

    def noting(db: Any, *args: Any) -> list[str]:
        seen.append(db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        return write_outbound_(db, *args)

    monkeypatch.setattr(engine, "write_outbound", noting)
    assert run("journey", "run", "--now", "2026-11-15 10:30").exit_code == 0
    assert seen == [0]
