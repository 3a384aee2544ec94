"""The set path (ingest_set: a CSV file mapped in SQL) stores exactly what RowMapper would.

Random CSV files, messy the way exports are (cells padded with any kind of space, dates and
times in every form, invalid ones, synonyms in any case, keys repeated, rows of the wrong
width), are ingested twice: once as set work, once row by row with RowMapper. The stores
must hold the same rows, rejects and batch counts, and ingest must say the same.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp_cli import ingest_set
from cdp_cli.config import load_config
from cdp_cli.identity.normalize import identity_key
from cdp_cli.mapping import RowMapper
from tests.ingest_compare import store_after

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
      gender: {from: 性别, values: {先生: male, Ms: female}}
      phone: 手机号
      email: 邮箱
      birthday: {from: 生日, formats: ["%Y%m%d"]}
      city: {from: 城市, values: {武汉市: 武汉, Wuhan: 武汉}}
      registered_at: 注册时间
      store: "=crm"
  optins:
    kind: consents
    key: [phone, channel]
    fields: {phone: phone, channel: channel, status: status, consented_at: at, purpose: purpose}
  coupons:
    kind: coupons
    key: code
    fields: {code: code, campaign: campaign, face_value: value, issued_at: issued,
             member_no: member}
"""

SPACES = st.sampled_from(["", "", "", " ", "  ", "\t", "\u3000", "\xa0", "\u2028", "\x1f"])
# From 1985: Shanghai kept summer time from 1986 to 1991, so offsets change within the range.
TIMES = st.datetimes(min_value=datetime(1985, 1, 1), max_value=datetime(2031, 12, 31))
TIME_FORMS = ["%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
              "%Y/%m/%d %H:%M", "%Y%m%d", "%Y年%m月%d日", "%Y-%m-%d %H:%M:%S.%f"]  # fmt: skip
ODD_TIMES = [
    "2022-02-30 10:00:00", "2022/01/25 24:00:00", "2022-01-25 09:60:00", "2022-01-25 09:55:61",
    "2022/01-25 09:55:00", "2022-01-25 09:55:0", "1643075700", "1643075700000", "0000-01-01 00:00",
    "２０２２-01-25 09:55:00", "2022-01-25 09:55:00Z", "2022-01-25 09:55:00+09:00", "x", "",
    "2022-01-25 9:55:00", "2022-01-25_09:55:00", "1986-05-04 02:30:00", "1991-09-15 01:30",
]  # fmt: skip


def padded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(SPACES, values, SPACES).map("".join)


def any_of(*forms: str) -> st.SearchStrategy[str]:
    return padded(st.one_of(st.sampled_from(forms), st.text(max_size=5)))


# Epoch seconds and milliseconds as WeChat and app exports write them (10 or 13 digits, read
# in SQL), with leading zeros, in full-width digits (str.isdigit takes them: Python reads
# those), and of other lengths (no epoch: the general parser's).
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
EPOCHS = st.one_of(
    st.builds(lambda t, ms: str(int(t.timestamp() * (1000 if ms else 1))), TIMES, st.booleans()),
    st.builds(
        lambda n, width: str(n).zfill(width), st.integers(0, 10**13 - 1), st.sampled_from([10, 13])
    ),
    st.integers(0, 10**14).map(str),
    st.integers(10**9, 10**13 - 1).map(lambda n: str(n).translate(FULL_WIDTH)),
)


def timestamps() -> st.SearchStrategy[str]:
    written = st.builds(lambda t, f: t.strftime(f), TIMES, st.sampled_from(TIME_FORMS))
    return padded(st.one_of(written, st.sampled_from(ODD_TIMES), EPOCHS))


COLUMNS: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "crm": {
        "会员编号": any_of("M1", "M2", "M3", "m1", ""),
        "姓名": any_of("张萍", "O'Neil", 'say "hi"', "a,b", "line\nbreak", "\x00"),
        "性别": any_of("男", "女", "M", "f", "先生", "ms", "MS", "Female", "other", ""),
        "手机号": any_of("13800138000", "+86 138 0013 8000", ""),
        "邮箱": any_of("a@example.com", "A@Example.com", ""),
        "生日": any_of("1990-02-28", "1990-02-30", "19900228", "1990/2/28", "1990.02.28", "ß"),
        "城市": any_of("武汉市", "wuhan", "WUHAN", "北京", "ǅ", ""),
        "注册时间": timestamps(),
        "积分": any_of("100", "", "\\", "\u2028", "é", "\x00"),
        "": any_of("unnamed", ""),
    },
    "optins": {
        "phone": any_of("13800138000", "13900139000", ""),
        "channel": any_of("sms", "SMS", "短信", "email", "fax", ""),
        "status": any_of("opt_in", "opt-out", "订阅", "maybe", ""),
        "at": timestamps(),
        "purpose": any_of("marketing", "营销", "service", "spam", ""),
        "note": any_of("x", "", "\x00 "),
    },
    "coupons": {
        "code": any_of("C1", "C2", "c1", ""),
        "campaign": any_of("spring", ""),
        "value": any_of("10", "9.90", "¥1,299.50", "1_000", "nan", "inf", "1e3", "N/A", ""),
        "issued": timestamps(),
        "member": any_of("M1", ""),
    },
}


@st.composite
def csv_files(draw: st.DrawFn, source: str) -> bytes:
    """A CSV export of `source`: a header, rows (some short or long), blank lines."""
    columns = COLUMNS[source]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(list(columns))
    for _ in range(draw(st.integers(0, 10))):
        shape = draw(st.sampled_from(["row"] * 8 + ["short", "long", "blank"]))
        row = [draw(strategy) for strategy in columns.values()]
        if shape == "short":
            row = row[:-1]
        elif shape == "long":
            row.append("extra")
        elif shape == "blank":
            row = []
        writer.writerow(row)
    return out.getvalue().encode("utf-8")


def check_same(source: str, files: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        as_sets = store_after(Path(folder), CONFIG, source, files, "csv", set_work=True)
        by_rows = store_after(Path(folder), CONFIG, source, files, "csv", set_work=False)
    assert as_sets == by_rows


@pytest.mark.parametrize("source", sorted(COLUMNS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_set_path_stores_what_rowmapper_would(source: str, data: st.DataObject) -> None:
    files = data.draw(st.lists(csv_files(source), min_size=1, max_size=2))
    check_same(source, files)


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(COLUMNS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_set_path_stores_what_rowmapper_would_at_length(
    source: str, data: st.DataObject
) -> None:
    files = data.draw(st.lists(csv_files(source), min_size=1, max_size=3))
    check_same(source, files)


def test_the_set_path_takes_these_sources_so_the_comparison_means_something(
    tmp_path: Path,
) -> None:
    (tmp_path / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    config = load_config(tmp_path / "cdp.yaml")
    for source, columns in COLUMNS.items():
        header = list(columns)
        mapper = RowMapper(config.source(source), header)
        assert ingest_set.plan_for(mapper, header, 1 << 18) is not None, source


def test_a_file_with_rows_sql_does_not_take_lands_as_rowmapper_has_it(tmp_path: Path) -> None:
    """Padded cells, a bad date, a synonym in capitals and a duplicate key, in one file."""
    content = (
        "会员编号,姓名,性别,手机号,邮箱,生日,城市,注册时间,积分,\r\n"
        "M1,张萍,女, 138 ,,1990-02-30,WUHAN,2022/01/25 09:55:00, 7 ,x\r\n"
        "M2,李,先生,,,19900228,北京,2022-01-25 24:00:00,,\r\n"
        "M1,张萍,F,,a@b.c,1990-02-28,武汉市,1643075700,1,\r\n"
        " ,nobody,,,,,,,,\r\n"
    ).encode()
    check_same("crm", [content])
    with tempfile.TemporaryDirectory() as folder:
        stored = store_after(Path(folder), CONFIG, "crm", [content], "csv", set_work=True)
    # once from the file, once from it ingested again with --force (M1's identity fields
    # change twice in it: its replaced keys are recorded once, not a UNIQUE error)
    assert [r[3:7] for r in stored["rejects"]] == [
        (5, "missing_key", None, "missing key member_no")
    ] * 2
    assert len(stored["rows"]) == 2


def test_a_cell_the_project_does_not_map_keeps_its_nul_character_in_attrs(
    tmp_path: Path,
) -> None:
    """A padded cell is read back from the row as written, where SQLite's text would end at
    the NUL: the set path wrote {"note": ""} for "\x00 " (found by the slow run)."""
    content = (
        b"phone,channel,status,at,purpose,note\r\n"
        b"13800138000,sms,opt_in,2022-01-01 10:00:00,, a\x00b \r\n"
    )
    check_same("optins", [content])
    stored = store_after(tmp_path, CONFIG, "optins", [content], "csv", set_work=True)
    assert [json.loads(r[-4]) for r in stored["rows"]] == [{"note": " a\x00b "}]


@given(st.lists(st.one_of(st.just(""), st.text(max_size=4)), min_size=1, max_size=4))
def test_the_staged_identity_key_is_identity_key(cells: list[str]) -> None:
    names = ["member_no", "phone", "email", "wechat_unionid"][: len(cells)]
    key = ingest_set._identity_of_cells([(name, i) for i, name in enumerate(names)])
    assert key(cells) == identity_key([(n, v or None) for n, v in zip(names, cells, strict=True)])
