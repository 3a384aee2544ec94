"""`cdp ingest`: mapping, typing, rejects, idempotency, encodings and atomicity, on real files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp_cli.canonical import KINDS
from tests.conftest import query
from tests.killharness import env

CONFIG = """
store: cdp.db
region: CN
timezone: Asia/Shanghai
sources:
  crm:
    kind: customers
    key: member_no
    fields:
      member_no: 会员编号
      name: 姓名
      gender: 性别
      phone: 手机号
      birthday: {from: 生日, formats: ["%Y%m%d"]}
      city: {from: 城市, values: {武汉市: 武汉, wuhan: 武汉}}
      job_title: {from: 职位, values: {首席营销官: CMO}}
      registered_at: 注册时间
      store: "=crm"
  orders:
    kind: orders
    key: order_id
    fields:
      order_id: order_id
      phone: buyer.mobile
      email: buyer.email
      ordered_at: created
      amount: payment
      channel: platform
    items:
      from: items
      fields: {quantity: qty}
  events:
    kind: events
    fields: {event: event, occurred_at: ts, device_id: device_id, properties: properties}
  pos:
    kind: orders
    key: order_no
    fields: {order_id: order_no, amount: amount, ordered_at: paid_at, phone: member_phone}
"""

CRM_HEADER = "会员编号,姓名,性别,手机号,生日,城市,职位,注册时间,积分\r\n"
CRM = (
    "\ufeff"
    + CRM_HEADER
    + "M1,李娜,女,+86 138 0013 8000,1990-05-12,武汉市,首席营销官,2024/03/05 10:12:00,100\r\n"
    "M2,王芳,女,13912345678,19900512,Wuhan,CMO,2024-03-05 10:12,\r\n"
)


@pytest.fixture
def project(write):
    write("cdp.yaml", CONFIG)


def ingest(run, *args):
    result = run("ingest", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return result


def test_maps_types_and_keeps_unmapped_columns(run, write, project, tmp_path):
    write("crm.csv", CRM)
    result = ingest(run, "crm.csv", "--source", "crm")
    [summary] = json.loads(result.stdout)
    assert (summary["status"], summary["inserted"], summary["rejected"]) == ("done", 2, 0)
    assert summary["encoding"] == "utf-8-sig"
    rows = query(
        tmp_path / "cdp.db",
        "SELECT key, name, gender, phone, birthday, city, job_title, registered_at, store, attrs, "
        "line FROM customers ORDER BY key",
    )
    assert rows == [
        ("M1", "李娜", "female", "+86 138 0013 8000", "1990-05-12", "武汉", "CMO",
         "2024-03-05T10:12:00+08:00", "crm", '{"积分":"100"}', 2),
        ("M2", "王芳", "female", "13912345678", "1990-05-12", "武汉", "CMO",
         "2024-03-05T10:12:00+08:00", "crm", None, 3),
    ]  # fmt: skip


def test_every_kind_of_bad_row_is_quarantined_and_good_rows_kept(run, write, project, tmp_path):
    write(
        "pos.csv",
        "order_no,amount,paid_at,member_phone\n"
        "P1,299.00,2025-06-01 14:03:22,13800138000\n"
        "P2,N/A,2025-06-01 14:03:22,\n"
        'P3,"12,5x",2025-06-01 14:03:22,\n'
        "P4,10,2025-13-45 25:61:00,\n"
        "P5,10\n"
        "P6,10,2025-06-01,1,extra\n"
        ",10,2025-06-01,\n"
        "\n"
        'P7,"1,299.50",2025-06-01,\n',
    )
    result = ingest(run, "pos.csv", "-s", "pos")
    [summary] = json.loads(result.stdout)
    assert (summary["inserted"], summary["rejected"], summary["skipped"]) == (2, 6, 1)
    rejects = query(
        tmp_path / "cdp.db", "SELECT line, problem, field, reason, raw FROM rejects ORDER BY line"
    )
    assert rejects == [
        (3, "bad_number", "amount", "amount: 'N/A' is not a number", "P2,N/A,2025-06-01 14:03:22,"),
        (4, "bad_number", "amount", "amount: '12,5x' is not a number", "P3,12,5x,2025-06-01 14:03:22,"),
        (5, "bad_timestamp", "ordered_at",
         "ordered_at: '2025-13-45 25:61:00' is not a date and time cdp can read",
         "P4,10,2025-13-45 25:61:00,"),
        (6, "column_count", None, "expected 4 columns, found 2", "P5,10"),
        (7, "column_count", None, "expected 4 columns, found 5", "P6,10,2025-06-01,1,extra"),
        (8, "missing_key", None, "missing key order_no", ",10,2025-06-01,"),
    ]  # fmt: skip
    assert query(tmp_path / "cdp.db", "SELECT key, amount FROM orders ORDER BY key") == [
        ("P1", 299.0),
        ("P7", 1299.5),
    ]


def test_bad_json_lines_are_quarantined(run, write, project, tmp_path):
    write(
        "orders.jsonl",
        '{"order_id":"O1","created":"2025-06-01T14:03:22+08:00","payment":"299.00",'
        '"buyer":{"mobile":"138****0002","nick":"小李"},"items":[{"sku":"S1","price":"99","qty":2,"color":"红"}]}\n'
        '{"order_id":"O2","created":"yesterday","payment":"1"}\n'
        '{"order_id":"O3","created":"2025-06-01","payment":"abc"}\n'
        "\n"
        '{"order_id": "O4", "platform": "tmall", "crea\n'
        "[1, 2]\n"
        '{"created":"2025-06-01","payment":"1"}\n',
    )
    [summary] = json.loads(ingest(run, "orders.jsonl", "-s", "orders").stdout)
    assert (summary["inserted"], summary["rejected"], summary["skipped"]) == (1, 5, 1)
    assert summary["reject_reasons"] == {
        "bad_timestamp": 1, "bad_number": 1, "invalid_json": 1, "not_an_object": 1, "missing_key": 1,
    }  # fmt: skip
    db = tmp_path / "cdp.db"
    raw = query(db, "SELECT raw FROM rejects WHERE line = 5")
    assert raw == [('{"order_id": "O4", "platform": "tmall", "crea',)]
    [(phone, items, attrs)] = query(db, "SELECT phone, items, attrs FROM orders")
    assert phone == "138****0002"  # kept as written; resolve decides it identifies no one
    assert json.loads(items) == [
        {"sku": "S1", "name": None, "category": None, "price": 99.0, "quantity": 2.0, "color": "红"}
    ]
    assert json.loads(attrs) == {"buyer": {"nick": "小李"}}
    assert query(db, "SELECT sku, price, quantity FROM order_items") == [("S1", 99.0, 2.0)]


def test_optional_value_that_does_not_parse_keeps_the_row(run, write, project, tmp_path):
    write("crm.csv", CRM_HEADER + "M1,李娜,女,138,1990-02-30,武汉,,,\n")
    [summary] = json.loads(ingest(run, "crm.csv", "-s", "crm").stdout)
    assert (summary["inserted"], summary["rejected"]) == (1, 0)
    [(birthday, attrs)] = query(tmp_path / "cdp.db", "SELECT birthday, attrs FROM customers")
    assert birthday is None
    assert json.loads(attrs) == {"_invalid": {"birthday": "1990-02-30"}}
    status = json.loads(run("status", "--json").stdout)
    quality = {(q["source"], q["field"]): q for q in status["fields"]}
    assert quality["crm", "birthday"]["invalid_rate"] == 1.0
    assert quality["crm", "phone"]["invalid_rate"] == 1.0  # '138' is no phone number
    assert quality["crm", "name"]["fill_rate"] == 1.0


def test_same_file_twice_is_a_noop_and_force_redoes_it(run, write, project, tmp_path):
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    [again] = json.loads(ingest(run, "crm.csv", "-s", "crm").stdout)
    assert again["status"] == "skipped"
    assert again["message"] == "seen in batch 1"
    [forced] = json.loads(ingest(run, "crm.csv", "-s", "crm", "--force").stdout)
    assert (forced["status"], forced["inserted"], forced["updated"], forced["unchanged"]) == (
        "done", 0, 0, 2,
    )  # fmt: skip
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM customers") == [(2,)]


def test_changed_row_updates_and_duplicates_never_appear(run, write, project, tmp_path):
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    write(
        "crm2.csv",
        CRM_HEADER + "M1,李娜,女,13800138000,1990-05-12,北京,CMO,2024/03/05 10:12:00,100\r\n"
        "M3,张敏,女,13700000001,,成都,,2024/06/01 09:00:00,\r\n"
        "M3,张敏,女,13700000001,,成都,,2024/06/01 09:00:00,\r\n",
    )
    [summary] = json.loads(ingest(run, "crm2.csv", "-s", "crm").stdout)
    assert (summary["inserted"], summary["updated"], summary["unchanged"]) == (1, 1, 1)
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT key, city, batch_id FROM customers ORDER BY key") == [
        ("M1", "北京", 2),
        ("M2", "武汉", 1),
        ("M3", "成都", 2),
    ]


def test_gbk_file_is_detected_and_undecodable_line_rejected(run, write, project, tmp_path):
    body = CRM_HEADER + "M1,李娜,女,13800138000,1990-05-12,武汉,教师,2024/03/05 10:12:00,1\r\n"
    data = (
        body.encode("gbk")
        + "M2,王".encode("gbk")
        + b"\xff\xfe\xff"
        + "芳,女,1,,,,,\r\n".encode("gbk")
    )
    data += "M3,张伟,男,13700000001,,北京,,,\r\n".encode("gbk")
    write("legacy.csv", data)
    [summary] = json.loads(ingest(run, "legacy.csv", "-s", "crm").stdout)
    assert summary["encoding"] == "gb18030"
    assert (summary["inserted"], summary["rejected"]) == (2, 1)
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT name FROM customers ORDER BY key") == [("李娜",), ("张伟",)]
    [(line, reason, raw)] = query(db, "SELECT line, reason, raw FROM rejects")
    assert (line, reason) == (3, "bytes that do not decode as gb18030")
    assert "\\xff" in raw


def test_declared_encoding_wins(run, write, tmp_path):
    write(
        "cdp.yaml",
        CONFIG.replace("    key: member_no\n", "    key: member_no\n    encoding: gbk\n", 1),
    )
    write("crm.csv", (CRM_HEADER + "M1,李娜,女,1,,,,,\r\n").encode("gbk"))
    [summary] = json.loads(ingest(run, "crm.csv", "-s", "crm").stdout)
    assert (summary["encoding"], summary["inserted"]) == ("gbk", 1)


def test_events_without_key_are_known_by_content(run, write, project, tmp_path):
    line = '{"event":"view_item","ts":1748757802123,"device_id":"D1","properties":{"sku":"S1"}}\n'
    write("events.jsonl", line + line + line.replace("S1", "S2"))
    [summary] = json.loads(ingest(run, "events.jsonl", "-s", "events").stdout)
    assert (summary["inserted"], summary["unchanged"]) == (2, 1)
    rows = query(tmp_path / "cdp.db", "SELECT occurred_at, properties FROM events ORDER BY id")
    assert rows == [
        ("2025-06-01T14:03:22.123+08:00", '{"sku":"S1"}'),
        ("2025-06-01T14:03:22.123+08:00", '{"sku":"S2"}'),
    ]


def test_json_array_file(run, write, project, tmp_path):
    write(
        "orders.json",
        json.dumps(
            [
                {"order_id": "A1", "created": "2025-01-01 08:00:00", "payment": 10},
                {"order_id": "A2", "created": 1735689600, "payment": "20.5"},
                "not an object",
            ]
        ),
    )
    [summary] = json.loads(ingest(run, "orders.json", "-s", "orders").stdout)
    assert (summary["inserted"], summary["rejected"]) == (2, 1)
    assert query(
        tmp_path / "cdp.db", "SELECT key, ordered_at, amount FROM orders ORDER BY key"
    ) == [
        ("A1", "2025-01-01T08:00:00+08:00", 10.0),
        ("A2", "2025-01-01T08:00:00+08:00", 20.5),
    ]


def test_strict_exits_1_when_rows_were_rejected(run, write, project):
    write("pos.csv", "order_no,amount,paid_at,member_phone\nP1,oops,2025-06-01,\n")
    result = run("ingest", "pos.csv", "-s", "pos", "--strict")
    assert result.exit_code == 1
    assert result.stderr.endswith("Error: 1 rows were rejected (--strict); see `cdp status`\n")


def test_a_headerless_file_is_refused_with_its_first_row_masked(run, write, project, tmp_path):
    write("noheader.csv", "M9,李娜,13800138000,li.na@example.com,2025-01-01\n")
    result = run("ingest", "noheader.csv", "-s", "crm")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "its first line holds none of the columns cdp.yaml maps: is the header row missing? "
        "It reads: M***, 李***, 138****8000, l***@example.com, 2***\n"
    )
    assert "13800138000" not in result.stderr and "li.na@" not in result.stderr
    assert "李娜" not in result.stderr and "M9" not in result.stderr


def test_file_level_errors_are_one_line_and_keep_what_was_stored(run, write, project, tmp_path):
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    write("bad.csv", "会员编号,name\nM9,x\n")
    result = run("ingest", "bad.csv", "-s", "crm")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'bad.csv'}: column '姓名' (for name) is not in the header; "
        "the columns are: 会员编号, name\n"
    )
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT count(*) FROM customers") == [(2,)]
    assert query(db, "SELECT status FROM batches ORDER BY id") == [("done",), ("failed",)]
    missing = run("ingest", "nope.csv", "-s", "crm")
    assert missing.exit_code == 1
    assert missing.stderr == f"Error: {tmp_path / 'nope.csv'}: file not found\n"
    no_source = run("ingest", "crm.csv")
    assert (no_source.exit_code, no_source.stderr) == (
        2, "Error: name the source these files come from with --source\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "source", "content"),
    [
        ("empty.csv", "pos", b""),
        ("bom.csv", "pos", b"\xef\xbb\xbf \r\n\r\n"),
        ("empty.json", "orders", b""),
        ("spaces.json", "orders", b"\xef\xbb\xbf\n  \t\n"),
        ("empty.jsonl", "orders", b""),
        ("blank.jsonl", "orders", b"\n \n\n"),
    ],
)
def test_an_empty_file_is_refused_as_empty_and_keeps_what_was_stored(
    run, write, project, tmp_path, name, source, content
):
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    write(name, content)
    result = run("ingest", name, "-s", source)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {tmp_path / name}: the file is empty\n",
    )  # fmt: skip
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT count(*) FROM customers") == [(2,)]
    assert query(db, "SELECT status, error FROM batches ORDER BY id") == [
        ("done", None),
        ("failed", "the file is empty"),
    ]


def _zipped(name: str, text: str) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, text)
    return buffer.getvalue()


XLSX_SAID = (
    "a ZIP archive, as an Excel .xlsx workbook is: save the sheet as CSV UTF-8 "
    "(Excel: File > Save As), or unzip it"
)


@pytest.mark.parametrize(
    ("name", "source", "content", "said"),
    [
        ("members.xlsx", "crm", _zipped("xl/workbook.xml", "<workbook/>"), XLSX_SAID),
        ("members.csv", "crm", _zipped("xl/workbook.xml", "<workbook/>"), XLSX_SAID),
        ("members.xls", "crm", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500),
         "an Excel 97-2003 workbook (.xls): save the sheet as CSV UTF-8 (Excel: File > Save As)"),
        ("orders.jsonl", "orders", gzip.compress(b'{"order_id": "O1"}\n'),
         "compressed with gzip: decompress it first (gunzip)"),
        ("orders.json", "orders", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document, not an export"),
    ],
    ids=["xlsx", "xlsx-named-csv", "xls", "gzip", "pdf"],  # the zip and gzip bytes hold times
)  # fmt: skip
def test_a_workbook_archive_or_other_binary_file_is_named_for_what_it_is(
    run, write, project, tmp_path, name, source, content, said
):
    """Named so whether its extension is one cdp reads (then as a failed batch) or not."""
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    write(name, content)
    result = run("ingest", name, "-s", source)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {tmp_path / name}: the file is {said}\n",
    )
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT count(*) FROM customers") == [(2,)]
    failed = (
        [("failed", f"the file is {said}")] if name.endswith((".csv", ".json", ".jsonl")) else []
    )
    assert query(db, "SELECT status, error FROM batches ORDER BY id") == [("done", None), *failed]


def test_the_store_given_as_an_export_is_refused_untouched(run, write, project, tmp_path):
    write("crm.csv", CRM)
    ingest(run, "crm.csv", "-s", "crm")
    store = tmp_path / "cdp.db"
    result = run("ingest", str(store), "-s", "crm")
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: {store}: the file is a SQLite database (a cdp store?), not an export\n"
    )
    assert query(store, "SELECT count(*) FROM customers") == [(2,)]


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_delimiter_not_declared_is_told_from_the_header_line(
    run, write, project, tmp_path, delimiter
):
    write(
        "pos.csv",
        delimiter.join(["order_no", "amount", '"paid_at"', "member_phone"]) + "\n"
        + delimiter.join(["P1", "15", "2025-06-01 14:03:22", "13800138000"]) + "\n",
    )  # fmt: skip
    [summary] = json.loads(ingest(run, "pos.csv", "-s", "pos").stdout)
    assert (summary["status"], summary["inserted"], summary["rejected"]) == ("done", 1, 0)
    assert query(tmp_path / "cdp.db", "SELECT key, amount, phone FROM orders") == [
        ("P1", 15.0, "13800138000")
    ]


def test_a_delimiter_that_cannot_be_told_is_an_error_naming_the_option(
    run, write, project, tmp_path
):
    write("pos.csv", "order_no;amount|paid_at;member_phone\nP1;1;2025-06-01;\n")
    result = run("ingest", "pos.csv", "-s", "pos")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {tmp_path / 'pos.csv'}: column 'order_no' (for order_id) is not in the "
        "header; the columns are: order_no;amount|paid_at;member_phone (read as one column, "
        "split on commas: if the file is separated by another character, set `delimiter:` "
        "for source 'pos' in cdp.yaml)\n",
    )
    write(
        "cdp.yaml", CONFIG.replace("    key: order_no\n", "    key: order_no\n    delimiter: ';'\n")
    )
    declared = run("ingest", "pos.csv", "-s", "pos")  # as declared, not told from the file
    assert declared.exit_code == 1
    assert declared.stderr.endswith("the columns are: order_no, amount|paid_at, member_phone\n")


def test_ingest_without_files_reads_declared_files(run, write, tmp_path):
    write(
        "cdp.yaml",
        CONFIG.replace("    key: member_no\n", "    key: member_no\n    files: in/*.csv\n", 1),
    )
    write("in/a.csv", CRM)
    write("in/b.csv", CRM_HEADER + "M5,赵六,男,13700000005,,,,,\n")
    results = json.loads(ingest(run).stdout)
    assert [(r["source"], os.path.basename(r["file"]), r["inserted"]) for r in results] == [
        ("crm", "a.csv", 2),
        ("crm", "b.csv", 1),
    ]


def _big_csv(path, rows):
    with path.open("w", encoding="utf-8") as f:
        f.write("order_no,amount,paid_at,member_phone\n")
        for i in range(rows):
            f.write(f"P{i},{i % 1000}.5,2025-06-01 14:03:22,138{i % 100000000:08d}\n")


def _cdp_killpoint(folder, args, **environ) -> subprocess.CompletedProcess[str]:
    """`cdp ARGS` in folder, in a process of its own, with tests/killpoint.py's hook."""
    return subprocess.run(
        [sys.executable, "-m", "tests.killpoint", *args],
        cwd=folder, env={**env(), **environ}, capture_output=True, text=True,
    )  # fmt: skip


def test_killed_mid_file_stores_nothing_and_rerun_ingests_it_whole(write, project, tmp_path):
    """SIGKILL halfway through a file's rows (at a kill point: see tests/killpoint.py)."""
    _big_csv(tmp_path / "big.csv", 2_000)
    args = ["ingest", "big.csv", "-s", "pos", "--silent"]
    counted = tmp_path / "counted"  # a copy, run once to its end to list its kill points
    counted.mkdir()
    for name in ("cdp.yaml", "big.csv"):
        shutil.copy(tmp_path / name, counted / name)
    points = tmp_path / "points"
    assert _cdp_killpoint(counted, args, CDP_KILL_COUNT=str(points)).returncode == 0
    passed = points.read_text(encoding="utf-8").splitlines()
    inserts = [number for number, p in enumerate(passed, start=1) if p == "1 INSERT"]
    assert len(inserts) >= 2_000  # a row each, all inside a transaction
    killed = _cdp_killpoint(tmp_path, args, CDP_KILL_AT=str(inserts[len(inserts) // 2]))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT count(*) FROM orders") == [(0,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    rerun = _cdp_killpoint(tmp_path, args)
    assert rerun.returncode == 0, rerun.stderr
    assert query(db, "SELECT count(*) FROM orders") == [(2_000,)]
    assert query(db, "SELECT status FROM batches ORDER BY id") == [("aborted",), ("done",)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=400)
    | st.lists(st.text(max_size=30), max_size=8).map(lambda lines: "\n".join(lines).encode()),
    fmt=st.sampled_from(["csv", "jsonl"]),
)
def test_any_bytes_end_in_a_clear_outcome_and_keep_stored_rows(tmp_path_factory, data, fmt):
    """Whatever the file holds: exit 0 or 1, never a traceback, nothing stored before lost."""
    from click.testing import CliRunner

    from cdp_cli.cli import cli

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "cdp.yaml").write_text(
        CONFIG.replace("store: cdp.db", f"store: {folder / 'cdp.db'}"), encoding="utf-8"
    )
    good = folder / "good.csv"
    good.write_text("order_no,amount,paid_at,member_phone\nP1,1,2025-01-01,\n", encoding="utf-8")
    source = "pos" if fmt == "csv" else "orders"
    runner = CliRunner()
    config = ["--config", str(folder / "cdp.yaml")]
    assert runner.invoke(cli, [*config, "ingest", str(good), "-s", "pos"]).exit_code == 0
    bad = folder / f"input.{fmt}"
    bad.write_bytes(data)
    result = runner.invoke(cli, [*config, "ingest", str(bad), "-s", source], catch_exceptions=True)
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert query(folder / "cdp.db", "SELECT key FROM orders WHERE source='pos' AND key='P1'") == [
        ("P1",)
    ]
    assert query(folder / "cdp.db", "PRAGMA integrity_check") == [("ok",)]


# ---------------------------------------------------------------------------------------------
# Required fields, as docs/config.md documents them (canonical.py), for every kind

SAMPLE_VALUES = {"timestamp": "2025-01-01 10:00", "number": "12.5", "text": "sms"}
REQUIRED = [
    (kind.name, f.name)
    for kind in KINDS.values()
    for f in kind.fields
    if f.required or f.required_if
]  # every kind's required fields: an event's type, a consent's channel and an opt-in's time, ...


def required_config(kind_name: str, fmt: str) -> str:
    fields = [f.name for f in KINDS[kind_name].fields if f.required or f.required_if] + ["phone"]
    mapping = ", ".join(f"{name}: {name}" for name in fields)
    return f"store: cdp.db\nsources:\n  src:\n    kind: {kind_name}\n    format: {fmt}\n    fields: {{{mapping}}}\n"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(("kind_name", "missing"), REQUIRED)
def test_a_row_without_a_required_field_goes_to_rejects(
    run, write, tmp_path, kind_name, missing, fmt
):
    kind = KINDS[kind_name]
    write("cdp.yaml", required_config(kind_name, fmt))
    full = {
        f.name: f.choices[0] if f.choices else SAMPLE_VALUES[f.type]
        for f in kind.fields
        if f.required or f.required_if
    }  # a consent's first status is opt_in, which needs its time
    full["phone"] = "13800138000"
    spec = kind.field(missing)
    assert spec is not None
    reason = f"{missing}: missing"
    if spec.required_if:
        reason += f" (required when {spec.required_if[1]})"
    rows = [full, {**full, missing: "  "}, {k: v for k, v in full.items() if k != missing}]
    if fmt == "csv":
        names = list(full)
        text = (
            ",".join(names) + "\n" + "\n".join(",".join(r.get(n, "") for n in names) for r in rows)
        )
        write("in.csv", text + "\n")
    else:
        write("in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ingest(run, f"in.{fmt}", "-s", "src")
    db = tmp_path / "cdp.db"
    assert query(db, f"SELECT count(*) FROM {kind.table}") == [(1,)]
    assert (
        query(db, "SELECT problem, field, reason FROM rejects")
        == [("missing", missing, reason)] * 2
    )
