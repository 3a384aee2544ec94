"""`cdp resolve` and `cdp profile`: who is who, on crafted records and on the sample's truth."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cdp_cli.identity.normalize import Normalizer
from cdp_cli.identity.settings import IdentityRules
from tests.conftest import SAMPLE_DATA, query

CONFIG = """
store: cdp.db
region: CN
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member, name: name, phone: phone, email: email, city: city, id_number: idno}
  shop:
    kind: orders
    key: order_id
    fields: {order_id: order_id, phone: phone, email: email, amount: amount, ordered_at: at}
  app:
    kind: events
    fields: {event: event, occurred_at: at, device_id: device, member_no: user, phone: phone}
"""

CRM_HEADER = "member,name,phone,email,city,idno\n"
SHOP_HEADER = "order_id,phone,email,amount,at\n"
APP_HEADER = "event,at,device,user,phone\n"


@pytest.fixture
def project(write):
    write("cdp.yaml", CONFIG)


def ingest(run, write, name, source, text):
    write(name, text)
    result = run("ingest", name, "-s", source, "--json")
    assert result.exit_code == 0, result.output


def resolve(run, *args):
    result = run("resolve", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_id_of(tmp_path, source, key):
    rows = query(
        tmp_path / "cdp.db", "SELECT one_id FROM id_mapping WHERE source=? AND key=?", source, key
    )
    assert rows, (source, key)
    return rows[0][0]


def test_every_written_form_of_a_phone_is_one_identifier(run, write, project, tmp_path):
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,+86 138 0013 8000,,,\n")
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,138-0013-8000,,1,2025-01-01\nO2,0086 13800138000,,1,2025-01-02\n"
        "O3,13800138000,,1,2025-01-03\nO4,86-13800138000,,1,2025-01-04\n",
    )  # fmt: skip
    resolve(run)
    assert query(tmp_path / "cdp.db", "SELECT type, value, detail FROM identifiers") == [
        ("member_no", "M1", None),
        ("phone", "+8613800138000", "mobile"),
    ]
    ids = {
        one_id_of(tmp_path, s, k)
        for s, k in [("crm", "M1"), ("shop", "O1"), ("shop", "O2"), ("shop", "O3"), ("shop", "O4")]
    }
    assert len(ids) == 1


def test_masked_blocklisted_and_invalid_values_join_no_one(run, write, project, tmp_path):
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,138****0002,,1,2025-01-01\nO2,138****0002,,1,2025-01-02\n"
        "O3,13800000000,,1,2025-01-03\nO4,13800000000,,1,2025-01-04\n"
        "O5,,test@example.com,1,2025-01-05\nO6,,test@example.com,1,2025-01-06\n"
        "O7,12345,,1,2025-01-07\nO8,12345,,1,2025-01-08\n",
    )  # fmt: skip
    result = resolve(run)
    assert result["profiles"] == 0
    assert query(
        tmp_path / "cdp.db", "SELECT count(*) FROM id_mapping WHERE one_id IS NOT NULL"
    ) == [(0,)]
    reasons = query(
        tmp_path / "cdp.db", "SELECT DISTINCT type, raw, reason FROM unusable_values ORDER BY raw"
    )
    assert reasons == [
        ("phone", "12345", "not a valid phone number"),
        ("phone", "138****0002", "masked"),
        (
            "phone",
            "13800000000",
            "blocklisted: ends in 8 or more of one digit (repeated_digits_at_end)",
        ),
        ("email", "test@example.com", "blocklisted: a test address (test_address)"),
    ]


def test_project_blocklist_and_patterns(run, write, tmp_path):
    write("cdp.yaml", CONFIG + "identity:\n  blocklist: ['13912345678', 're:@spam\\.cn$']\n")
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,+86 139 1234 5678,,1,2025-01-01\nO2,13912345678,a@spam.cn,1,2025-01-02\n",
    )  # fmt: skip
    assert resolve(run)["profiles"] == 0


def test_shared_tablet_joins_no_strangers_and_anonymous_user_merges_on_register(
    run, write, project, tmp_path
):
    events = [APP_HEADER]
    for i in range(12):  # twelve members log in on the store's tablet
        events.append(f"app_open,2025-01-01 10:{i:02d}:00,TABLET-WH001-POS,M{i},\n")
    events += [  # an anonymous user browses, then registers on their own phone
        "app_open,2025-01-02 09:00:00,ANON-DEVICE-0001,,\n",
        "view_item,2025-01-02 09:01:00,ANON-DEVICE-0001,,\n",
        "register,2025-01-03 09:00:00,ANON-DEVICE-0001,M900,13912345678\n",
        "app_open,2025-01-04 09:00:00,ANON-DEVICE-0001,M900,\n",
    ]
    ingest(run, write, "app.csv", "app", "".join(events))
    ingest(
        run,
        write,
        "crm.csv",
        "crm",
        CRM_HEADER + "M900,王芳,13912345678,,,\nM0,张伟,13700000000,,,\nM1,刘洋,13700000001,,,\n",
    )
    result = resolve(run)
    db = tmp_path / "cdp.db"
    tablet_users = query(
        db,
        "SELECT count(DISTINCT one_id) FROM id_mapping m JOIN events e ON e.source = m.source "
        "AND e.key = m.key WHERE e.device_id = 'TABLET-WH001-POS'",
    )
    assert tablet_users == [(12,)]  # each member stays themselves
    assert query(db, "SELECT status, reason FROM identifiers WHERE value = 'TABLET-WH001-POS'") == [
        ("refused", "seen with 12 customers (max_profiles_per_value 1)")
    ]
    anon = query(
        db,
        "SELECT DISTINCT m.one_id FROM id_mapping m JOIN events e ON e.source = m.source AND e.key = m.key "
        "WHERE e.device_id = 'ANON-DEVICE-0001'",
    )
    assert anon == [(one_id_of(tmp_path, "crm", "M900"),)]
    assert result["refused_links"] == 12


def test_guards_keep_one_id_number_and_member_per_customer(run, write, project, tmp_path):
    # Two members share a family email and one of them wrote the other's ID number's twin.
    ingest(
        run, write, "crm.csv", "crm",
        CRM_HEADER + "M1,王强,13700000011,family.wang@163.com,,11010519491231002X\n"
        "M2,王丽,13700000012,family.wang@163.com,,110101199003071234\n",
    )  # fmt: skip
    resolve(run)
    assert one_id_of(tmp_path, "crm", "M1") != one_id_of(tmp_path, "crm", "M2")
    explained = json.loads(
        run("resolve", "--explain", one_id_of(tmp_path, "crm", "M2"), "--json", "--unmask").stdout
    )
    assert {(r["type"], r["value"]) for r in explained["refused_links"]} == {
        ("email", "family.wang@163.com")
    }
    assert explained["refused_links"][0]["reason"] == "a customer holds at most 1 member_no"
    assert explained["refused_links"][0]["belongs_to"] == one_id_of(tmp_path, "crm", "M1")


def test_invalid_id_number_checksum_is_unusable(run, write, project, tmp_path):
    ingest(
        run,
        write,
        "crm.csv",
        "crm",
        CRM_HEADER + "M1,a,,,,110101199003071235\nM2,b,,,,110101199003071235\n",
    )
    resolve(run)
    assert one_id_of(tmp_path, "crm", "M1") != one_id_of(tmp_path, "crm", "M2")
    assert query(tmp_path / "cdp.db", "SELECT DISTINCT reason FROM unusable_values") == [
        ("not a valid resident ID number (checksum)",)
    ]


def test_one_ids_are_stable_and_merges_keep_the_older(run, write, project, tmp_path):
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    first = resolve(run)
    assert (first["mode"], first["created"]) == ("full", 1)
    li_na = one_id_of(tmp_path, "crm", "M1")
    ingest(run, write, "shop1.csv", "shop", SHOP_HEADER + "O1,,li.na@example.com,10,2025-01-01\n")
    second = resolve(run)
    assert (second["mode"], second["keys_new"], second["created"]) == ("incremental", 1, 1)
    email_only = one_id_of(tmp_path, "shop", "O1")
    assert email_only != li_na
    # An order with both: the two customers are one, and the older one_id survives.
    ingest(
        run,
        write,
        "shop2.csv",
        "shop",
        SHOP_HEADER + "O2,138 0013 8000, Li.Na@Example.COM ,20,2025-01-02\n",
    )
    third = resolve(run)
    assert (third["merged"], third["created"]) == (1, 0)
    assert {one_id_of(tmp_path, "shop", k) for k in ("O1", "O2")} == {li_na}
    assert one_id_of(tmp_path, "crm", "M1") == li_na
    assert query(
        tmp_path / "cdp.db",
        "SELECT one_id, event, other_one_id FROM id_history WHERE event = 'merged'",
    ) == [(email_only, "merged", li_na)]
    # The merged-away one_id still finds its customer.
    shown = run("profile", email_only, "--json")
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.stdout)
    assert view["profile"]["one_id"] == li_na
    assert view["merged_from"] == [email_only]
    assert view["orders"]["orders"] == 2
    # Nothing new: nothing changes, and it says so.
    again = resolve(run)
    assert (again["mode"], again["keys_new"], again["created"], again["merged"]) == (
        "unchanged",
        0,
        0,
        0,
    )


def test_incremental_touches_only_reached_components(run, write, project, tmp_path):
    ingest(
        run,
        write,
        "crm.csv",
        "crm",
        CRM_HEADER + "".join(f"M{i},n{i},137{i:08d},,,\n" for i in range(50)),
    )
    resolve(run)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000007,,10,2025-01-01\n")
    result = resolve(run)
    assert result["mode"] == "incremental"
    assert result["keys_resolved"] == 2  # the new order's key and member M7's, nothing else
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "crm", "M7")


@contextmanager
def traced_resolve(tmp_path: Path) -> Iterator[tuple[Any, list[str], Any]]:
    """`cdp resolve` in process: its result and every statement it ran, with the store open
    in the block (to explain them)."""
    from cdp_cli.config import load_config
    from cdp_cli.identity.resolve import resolve as resolve_store
    from cdp_cli.store import open_store

    db = open_store(tmp_path / "cdp.db")
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        result = resolve_store(db, load_config(tmp_path / "cdp.yaml"))
        db.conn.set_trace_callback(None)
        yield result, statements, db
    finally:
        db.close()


def test_incremental_reads_only_the_tables_new_batches_wrote_to(run, write, project, tmp_path):
    """New orders: the customers and events tables are not read again for new keys (a scan
    of each, to find none, was most of a small incremental run's own time)."""
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,a,13700000031,,,\n")
    ingest(run, write, "app.csv", "app", APP_HEADER + "open,2025-01-01,DEV000001,M1,\n")
    resolve(run)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000031,,10,2025-01-01\n")
    with traced_resolve(tmp_path) as (result, statements, _):
        pass
    assert result.mode == "incremental" and result.keys_new == 1
    reads = [s for s in statements if s.lstrip().startswith("SELECT t.identity_key")]
    assert [re.search(r"\bFROM \(?.*?\b(customers|orders|events)\b", s)[1] for s in reads] == [
        "orders"
    ]
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "crm", "M1")


def test_incremental_reads_the_resolved_tables_from_the_keys_it_reached(
    run, write, project, tmp_path
):
    """The customers a batch reaches are read through the indexes, from the few reached keys;
    no statement of an incremental run scans identity_keys or key_identifiers whole."""
    members = "".join(f"M{i},n{i},137{i:08d},,,\n" for i in range(30))
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + members)
    resolve(run)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000007,,10,2025-01-01\n")
    with traced_resolve(tmp_path) as (result, statements, db):
        scans = {
            " ".join(statement.split())
            for statement in statements
            if statement.lstrip().upper().startswith(("SELECT", "INSERT"))
            for *_, step in db.conn.execute(f"EXPLAIN QUERY PLAN {statement}")
            if re.match(r"SCAN (k|ki)\b", step)
        }
    assert result.mode == "incremental" and result.keys_resolved == 2
    assert scans == set()
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "crm", "M7")


def new_row_reads(statements: list[str], db: Any) -> dict[str, str]:
    """Each kind table an incremental run read for new keys, and how: `range` through its
    rowid, `scan` of every row."""
    reads = {}
    for statement in statements:
        if statement.lstrip().startswith("SELECT t.identity_key"):
            table = re.search(r"\bFROM \(?.*?\b(customers|orders|events|consents)\b", statement)[1]
            plan = [step for *_, step in db.conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
            by_id = r"SEARCH [tx] USING INTEGER PRIMARY KEY \(rowid>\?\)"
            reads[table] = "range" if any(re.match(by_id, step) for step in plan) else "scan"
    return reads


def test_ingest_records_the_largest_id_of_its_table_before_each_batch(
    run, write, project, tmp_path
):
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,a,13700000031,,,\nM2,b,,,,\n")
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000031,,10,2025-01-01\n")
    ingest(run, write, "crm2.csv", "crm", CRM_HEADER + "M2,b,13700000032,,,\nM3,c,,,,\n")
    assert query(
        tmp_path / "cdp.db", "SELECT kind, inserted_after, rows_inserted, rows_updated FROM batches"
    ) == [("customers", 0, 2, 0), ("orders", 0, 1, 0), ("customers", 2, 1, 1)]


def test_incremental_reads_new_rows_by_their_ids(run, write, project, tmp_path):
    """Rows that new batches inserted are read from above the smallest id those batches
    recorded, not found by a scan of every row for its batch; a failed batch (it wrote no
    rows, and recorded no id) leaves it so."""
    members = "".join(f"M{i},n{i},137{i:08d},,,\n" for i in range(30))
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + members)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000001,,10,2025-01-01\n")
    ingest(run, write, "app.csv", "app", APP_HEADER + "open,2025-01-01,DEV000001,M1,\n")
    resolve(run)
    write("bad.csv", "order_id,at\nO9,2025-01-02\n")  # no amount column: the batch fails
    assert run("ingest", "bad.csv", "-s", "shop").exit_code == 1
    ingest(run, write, "shop2.csv", "shop", SHOP_HEADER + "O2,13700000007,,10,2025-01-02\n")
    ingest(run, write, "shop3.csv", "shop", SHOP_HEADER + "O3,,m3@example.com,10,2025-01-03\n")
    ingest(run, write, "crm2.csv", "crm", CRM_HEADER + "M30,n30,,m3@example.com,,\n")
    ingest(run, write, "app2.csv", "app", APP_HEADER + "open,2025-01-02,DEV000002,M8,\n")
    with traced_resolve(tmp_path) as (result, statements, db):
        reads = new_row_reads(statements, db)
    assert reads == {"customers": "range", "orders": "range", "events": "range"}
    assert result.mode == "incremental" and result.keys_new == 4
    assert one_id_of(tmp_path, "shop", "O2") == one_id_of(tmp_path, "crm", "M7")
    assert one_id_of(tmp_path, "shop", "O3") == one_id_of(tmp_path, "crm", "M30")
    (event,) = query(tmp_path / "cdp.db", "SELECT key FROM events WHERE device_id = 'DEV000002'")
    assert one_id_of(tmp_path, "app", event[0]) == one_id_of(tmp_path, "crm", "M8")
    incremental = _partition(tmp_path / "cdp.db")
    assert resolve(run, "--full")["created"] == 0
    assert _partition(tmp_path / "cdp.db") == incremental


def test_a_consent_recorded_by_hand_is_read_by_its_id(run, write, project, tmp_path):
    """`cdp consent` writes a batch of its own, recording where its row goes as ingest does."""
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,a,13700000031,,,\n")
    resolve(run)
    assert run("consent", "--phone", "13700000031", "--channel", "sms", "--opt-out").exit_code == 0
    assert run("consent", "--phone", "13700000032", "--channel", "sms", "--opt-out").exit_code == 0
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000032,,10,2025-01-01\n")
    assert query(tmp_path / "cdp.db", "SELECT kind, inserted_after FROM batches WHERE id > 1") == [
        ("consents", 0),
        ("consents", 1),
        ("orders", 0),
    ]
    with traced_resolve(tmp_path) as (result, statements, db):
        reads = new_row_reads(statements, db)
    assert reads == {"orders": "range", "consents": "range"}
    assert result.mode == "incremental"
    assert one_id_of(tmp_path, "manual", "2") == one_id_of(tmp_path, "crm", "M1")


def test_a_batch_that_updated_rows_in_place_has_its_table_scanned(run, write, project, tmp_path):
    """An updated row keeps its id, below the batch's new rows: its new key is found only by
    the scan for the batch's id, which the table gets when any new batch updated rows."""
    members = "".join(f"M{i},n{i},137{i:08d},,,\n" for i in range(10))
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + members)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000001,,10,2025-01-01\n")
    resolve(run)
    # O1 now carries M3's phone (updated in place, id 1), O2 is new (id 2); M10 is new too.
    ingest(run, write, "crm2.csv", "crm", CRM_HEADER + "M10,n10,,m10@example.com,,\n")
    shop = "O1,13700000003,,10,2025-01-01\nO2,13700000005,,10,2025-01-02\n"
    ingest(run, write, "shop2.csv", "shop", SHOP_HEADER + shop)
    with traced_resolve(tmp_path) as (result, statements, db):
        reads = new_row_reads(statements, db)
    assert reads == {"customers": "range", "orders": "scan"}
    assert result.mode == "incremental" and result.keys_new == 3
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "crm", "M3")
    assert one_id_of(tmp_path, "shop", "O2") == one_id_of(tmp_path, "crm", "M5")
    incremental = _partition(tmp_path / "cdp.db")
    full = resolve(run, "--full")
    assert (full["created"], full["merged"], full["split"]) == (0, 0, 0)
    assert _partition(tmp_path / "cdp.db") == incremental


def test_new_rows_in_ids_freed_by_forget_are_read(run, write, project, tmp_path):
    """`cdp forget` deletes the customer row with the largest id; the next batch inserts
    from the largest id left, into an id a resolved row had, and its rows are read (a bound
    kept from the last run, not from the batch, would miss the first of them)."""
    members = "".join(f"M{i},n{i},137{i:08d},,,\n" for i in range(5))
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + members)
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13800000001,,10,2025-01-01\n")
    resolve(run)
    ingest(run, write, "crm2.csv", "crm", CRM_HEADER + "M5,n5,13700000005,,,\nM6,n6,,,,\n")
    resolve(run)
    assert run("forget", one_id_of(tmp_path, "crm", "M6"), "--yes").exit_code == 0
    ingest(run, write, "crm3.csv", "crm", CRM_HEADER + "M7,n7,13800000001,,,\nM8,n8,,,,\n")
    db = tmp_path / "cdp.db"
    new_ids = [("M5", 6), ("M7", 7), ("M8", 8)]  # M7 in the id M6 had
    assert query(db, "SELECT key, id FROM customers WHERE id > 5") == new_ids
    assert query(db, "SELECT inserted_after FROM batches ORDER BY id DESC LIMIT 1") == [(6,)]
    with traced_resolve(tmp_path) as (result, statements, store):
        reads = new_row_reads(statements, store)
    assert reads == {"customers": "range"}
    assert result.mode == "incremental" and result.keys_new == 2
    assert one_id_of(tmp_path, "crm", "M7") == one_id_of(tmp_path, "shop", "O1")
    incremental = _partition(db)
    assert resolve(run, "--full")["created"] == 0
    assert _partition(db) == incremental


def test_rule_change_splits_and_records_it(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    ingest(
        run, write, "crm.csv", "crm",
        CRM_HEADER + "M1,a,13700000021,shared@qq.com,,\nM2,b,,shared@qq.com,,\n",
    )  # fmt: skip
    resolve(run)
    together = one_id_of(tmp_path, "crm", "M1")
    assert one_id_of(tmp_path, "crm", "M2") != together  # one member number per customer
    ingest(
        run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13700000021,shared@qq.com,1,2025-01-01\n"
    )
    resolve(run)
    before = one_id_of(tmp_path, "shop", "O1")
    write("cdp.yaml", CONFIG + "identity:\n  blocklist: ['shared@qq.com']\n")
    result = resolve(run)
    assert "the identity rules changed" in result["notes"][0]
    assert result["mode"] == "full"
    assert one_id_of(tmp_path, "shop", "O1") == before == one_id_of(tmp_path, "crm", "M1")
    assert query(tmp_path / "cdp.db", "SELECT status FROM identifiers WHERE type = 'email'") == []


def test_split_gets_new_one_id_with_history(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    ingest(
        run, write, "crm.csv", "crm",
        CRM_HEADER + "M1,a,13700000031,,,\nM2,b,,x@qq.com,,\n",
    )  # fmt: skip
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,13700000031,x@qq.com,1,2025-01-01\nO2,13700000031,,1,2025-01-02\n"
        "O3,,x@qq.com,1,2025-01-03\n",
    )  # fmt: skip
    resolve(run)
    assert one_id_of(tmp_path, "crm", "M2") != one_id_of(tmp_path, "crm", "M1")  # member guard
    whole = one_id_of(tmp_path, "shop", "O1")
    assert {one_id_of(tmp_path, "shop", k) for k in ("O1", "O2")} == {whole}
    # Blocklisting the phone cuts M1 off, and lets M2 (no longer kept out by M1's member
    # number) join O1 and O3 through the email. Both one_ids were created in the same run,
    # so the lower-numbered, older one survives; M1 gets a new one, split from O1's.
    m2_before = one_id_of(tmp_path, "crm", "M2")
    assert m2_before < whole
    write("cdp.yaml", CONFIG + "identity:\n  blocklist: ['13700000031']\n")
    result = resolve(run)
    assert (result["split"], result["merged"]) == (1, 1)
    assert {
        one_id_of(tmp_path, s, k) for s, k in [("shop", "O1"), ("shop", "O3"), ("crm", "M2")]
    } == {m2_before}
    m1 = one_id_of(tmp_path, "crm", "M1")
    history = query(
        tmp_path / "cdp.db",
        "SELECT one_id, event, other_one_id FROM id_history WHERE event != 'created'",
    )
    assert sorted(history) == sorted([(whole, "merged", m2_before), (m1, "split", whole)])
    assert one_id_of(tmp_path, "shop", "O2") is None  # nothing left on it identifies anyone
    shown = json.loads(run("profile", whole, "--json").stdout)
    assert shown["profile"]["one_id"] == m2_before


def test_an_incremental_split_into_equal_parts_decides_as_a_full_run(run, write, project, tmp_path):
    """A re-ingested order drops the phone that joined it to another: two parts of one key
    each, and both keys had the one_id. The part with the smallest identity key keeps it,
    whichever the run loaded first (an incremental run loads a customer's old keys before
    new ones; a full run, each table in key order)."""
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,13700000061,a@qq.com,1,2025-01-01\nO2,13700000061,b@qq.com,1,2025-01-01\n",
    )  # fmt: skip
    resolve(run)
    whole = one_id_of(tmp_path, "shop", "O1")
    ingest(run, write, "fix.csv", "shop", SHOP_HEADER + "O1,,a@qq.com,1,2025-01-01\n")
    result = resolve(run)
    assert result["mode"] == "incremental" and result["split"] == 1
    keys = dict(query(tmp_path / "cdp.db", "SELECT key, identity_key FROM orders"))
    keeper = min(keys, key=keys.__getitem__)
    other = ({"O1", "O2"} - {keeper}).pop()
    after = {order: one_id_of(tmp_path, "shop", order) for order in keys}
    assert after[keeper] == whole and after[other] not in (None, whole)
    assert resolve(run, "--full")["created"] == 0
    assert {order: one_id_of(tmp_path, "shop", order) for order in keys} == after


def test_non_joining_identifier_keeps_records_apart(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    ingest(
        run, write, "shop.csv", "shop",
        SHOP_HEADER + "O1,13700000041,x@qq.com,1,2025-01-01\nO2,13700000041,,1,2025-01-02\n"
        "O3,13700000041,,1,2025-01-02\nO4,,x@qq.com,1,2025-01-03\nO5,,y@qq.com,1,2025-01-04\n",
    )  # fmt: skip
    resolve(run)
    whole = one_id_of(tmp_path, "shop", "O1")
    assert {one_id_of(tmp_path, "shop", k) for k in ("O1", "O2", "O3", "O4")} == {whole}
    write("cdp.yaml", CONFIG + "identity:\n  email: {join: false}\n")
    resolve(run)
    assert {one_id_of(tmp_path, "shop", k) for k in ("O1", "O2", "O3")} == {whole}
    split = one_id_of(tmp_path, "shop", "O4")
    assert split not in (None, whole)  # a customer known by its email, linked to no one
    assert query(
        tmp_path / "cdp.db",
        "SELECT one_id, event, other_one_id FROM id_history WHERE event = 'split'",
    ) == [(split, "split", whole)]
    assert query(
        tmp_path / "cdp.db",
        "SELECT value, status, one_id FROM identifiers WHERE type = 'email' ORDER BY value",
    ) == [
        ("x@qq.com", "refused", None),
        ("y@qq.com", "linked", one_id_of(tmp_path, "shop", "O5")),
    ]


def test_composite_identifier_declared_in_config(run, write, tmp_path):
    write(
        "cdp.yaml",
        CONFIG.replace(
            "key: member_no\n    fields: {member_no: member, name: name,",
            "key: member\n    fields: {birthday: bday, name: name,",
        )
        + "identity:\n  name_birthday: {fields: [name, birthday], max_per_profile: 1}\n",
    )
    ingest(
        run,
        write,
        "crm.csv",
        "crm",
        "member,name,bday,phone,email,city,idno\nM1,李 娜,1990-05-12,,,,\nM2,李娜,1990/5/12,,,,\nM3,李娜,1991-01-01,,,,\n",
    )
    resolve(run)
    assert (
        one_id_of(tmp_path, "crm", "M1")
        == one_id_of(tmp_path, "crm", "M2")
        != one_id_of(tmp_path, "crm", "M3")
    )


def test_golden_record_survivorship_and_lineage(run, write, tmp_path):
    write(
        "cdp.yaml",
        CONFIG.replace(
            "  shop:",
            "  crm_old:\n    kind: customers\n    key: member\n    fields: {name: name, phone: phone, city: city}\n  shop:",
        )
        + "identity:\n  source_priority: [crm]\n",
    )
    ingest(run, write, "old.csv", "crm_old", "member,name,phone,city\nX1,李娜娜,13800138000,北京\n")
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    ingest(
        run, write, "old2.csv", "crm_old", "member,name,phone,city\nX1,李娜娜,13800138000,上海\n"
    )
    resolve(run)
    view = json.loads(run("profile", "--phone", "138 0013 8000", "--json", "--unmask").stdout)
    profile = view["profile"]
    assert (profile["name"], profile["city"]) == ("李娜", "上海")  # priority source; latest city
    assert profile["lineage"] == {"name": "crm:M1", "city": "crm_old:X1"}
    assert profile["phones"] == ["+8613800138000"]
    assert sorted(profile["sources"]) == ["crm", "crm_old"]


GOLDEN_REFERENCE = """
SELECT one_id, source || ':' || key FROM (
  SELECT k.one_id, t.source, t.key, row_number() OVER (
    PARTITION BY k.one_id
    ORDER BY CASE t.source WHEN 'crm' THEN 0 ELSE 1 END, t.batch_id DESC, t.line DESC) AS rn
  FROM customers t JOIN identity_keys k ON k.key = t.identity_key
  WHERE t.{field} IS NOT NULL)
WHERE rn = 1
"""


def test_each_golden_field_comes_from_the_first_record_that_has_it(run, write, tmp_path):
    """Priority source first, then the newest batch, then the last line of a file: checked
    against that order written as a window, per field, with gaps that make the four fields
    come from different records."""
    write(
        "cdp.yaml",
        CONFIG.replace(
            "  shop:",
            "  crm_old:\n    kind: customers\n    key: member\n"
            "    fields: {name: name, phone: phone, city: city}\n  shop:",
        )
        + "identity:\n  source_priority: [crm]\n",
    )
    ingest(
        run, write, "old.csv", "crm_old",
        "member,name,phone,city\nX1,甲,13800138000,北京\nX2,,13800138000,上海\n"
        "X3,乙,13800138001,\nX4,,13800138001,广州\n",
    )  # fmt: skip
    ingest(
        run, write, "crm.csv", "crm",
        CRM_HEADER + "M1,,13800138000,,,\nM2,丙,13800138000,,,\nM3,,13800138001,,深圳,\n",
    )  # fmt: skip
    ingest(run, write, "old2.csv", "crm_old", "member,name,phone,city\nX5,丁,13800138001,\n")
    resolve(run)
    store = tmp_path / "cdp.db"
    lineage = dict(query(store, "SELECT one_id, lineage FROM profiles"))
    for field in ("name", "city"):
        expected = dict(query(store, GOLDEN_REFERENCE.format(field=field)))
        found = {
            one_id: origins[field]
            for one_id, text in lineage.items()
            if field in (origins := json.loads(text))
        }
        assert found == expected, field
    golden = query(store, "SELECT name, city FROM profiles WHERE name IS NOT NULL ORDER BY name")
    assert golden == [("丁", "深圳"), ("丙", "上海")]  # 上海: the later line of old.csv


def test_profile_masks_by_default_and_finds_by_any_identifier(run, write, project, tmp_path):
    ingest(
        run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,Li.Na@Example.com,武汉,\n"
    )
    resolve(run)
    masked = run("profile", "--email", "li.na@example.com")
    assert masked.exit_code == 0, masked.output
    assert "138****8000" in masked.stdout and "l***@example.com" in masked.stdout
    assert "13800138000" not in masked.stdout and "li.na@" not in masked.stdout
    unmasked = json.loads(run("profile", "--phone", "+86 13800138000", "--unmask", "--json").stdout)
    assert unmasked["profile"]["emails"] == ["li.na@example.com"]
    missing = run("profile", "--phone", "13900000001")
    assert (missing.exit_code, missing.stderr) == (
        1,
        "Error: no customer has the phone 139****0001\n",
    )
    both = run("profile", "C1", "--phone", "1")
    assert both.exit_code == 2


@pytest.mark.parametrize("command", [["profile"], ["forget", "--yes"], ["consent"]])
def test_a_lookup_by_a_phone_or_email_that_is_not_one_says_so_masked(run, write, project, command):
    """Every command that looks a customer up (one home: profiles.find_one_id)."""
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    resolve(run)
    for args, error in [
        (["--phone", "12345"], "phone *****: not a valid phone number"),
        (["--phone", "1380013800"], "phone 138***3800: not a valid phone number"),
        (["--email", "li.na@example"], "email l***@example: not a valid email address"),
        (["--email", "li.na"], "email ***: not a valid email address"),
    ]:
        result = run(*command, *args)
        assert (result.exit_code, result.stderr) == (2, f"Error: {error}\n"), args


def test_export_mapping_csv_and_jsonl(run, write, project, tmp_path):
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    ingest(
        run,
        write,
        "shop.csv",
        "shop",
        SHOP_HEADER + "O1,13800138000,,1,2025-01-01\nO2,,,1,2025-01-01\n",
    )
    result = run("resolve", "--export", "map.csv")
    assert result.exit_code == 0, result.output
    with (tmp_path / "map.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["key"]) for r in rows] == [
        ("crm", "M1"),
        ("shop", "O1"),
        ("shop", "O2"),
    ]
    assert rows[0]["one_id"] == rows[1]["one_id"] != "" and rows[2]["one_id"] == ""
    assert run("resolve", "--export", "map.jsonl").exit_code == 0
    lines = (tmp_path / "map.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "kind": "customers",
        "source": "crm",
        "key": "M1",
        "one_id": rows[0]["one_id"],
    }
    bad = run("resolve", "--export", "map.xlsx")
    assert (bad.exit_code, bad.stderr) == (
        2,
        "Error: map.xlsx: the export is written as .csv or .jsonl\n",
    )


def test_sample_data_against_its_truth(run, tmp_path):
    """No false merge anywhere in the sample (precision 1.0), and most true pairs found."""
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    shutil.copy(SAMPLE_DATA.parent / "cdp.yaml", tmp_path / "cdp.yaml")
    assert run("ingest").exit_code == 0
    resolve(run)
    mapping = dict(
        ((source, key), one_id)
        for source, key, one_id in query(
            tmp_path / "cdp.db", "SELECT source, key, one_id FROM id_mapping"
        )
    )
    pairs_seen = []
    with (SAMPLE_DATA / "truth.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            source = "crm_members" if row["source"] == "crm_members_legacy_gbk" else row["source"]
            key = row["key"].replace(":", "|") if source == "wechat_followers" else row["key"]
            if source == "optouts":
                continue
            one_id = mapping[(source, key)] or f"alone:{source}:{key}"
            pairs_seen.append((one_id, row["person_id"]))

    def pairs(counter: Counter) -> int:
        return sum(n * (n - 1) // 2 for n in counter.values())

    together = pairs(Counter(pairs_seen))
    precision = together / pairs(Counter(o for o, _ in pairs_seen))
    recall = together / pairs(Counter(p for _, p in pairs_seen))
    assert precision == 1.0
    assert recall > 0.9


def _partition(db) -> set[frozenset]:
    groups: dict[str, set] = {}
    for source, key, one_id in query(
        db, "SELECT source, key, one_id FROM id_mapping WHERE one_id IS NOT NULL"
    ):
        groups.setdefault(one_id, set()).add((source, key))
    return {frozenset(g) for g in groups.values()}


def test_incremental_runs_over_the_sample_agree_with_one_full_run(run, tmp_path):
    """Source by source, resolving after each: one_ids never change except by a recorded
    merge, and the end result is the partition one full run finds."""
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    shutil.copy(SAMPLE_DATA.parent / "cdp.yaml", tmp_path / "cdp.yaml")
    db = tmp_path / "cdp.db"
    seen: dict[tuple[str, str], str] = {}
    order = [
        "app_events",
        "wechat_followers",
        "pos_orders",
        "crm_members",
        "shop_orders",
        "coupons",
        "optouts",
    ]
    for source in order:
        assert run("ingest", "--source", source).exit_code == 0
        resolve(run)
        merged = dict(
            query(db, "SELECT one_id, other_one_id FROM id_history WHERE event = 'merged'")
        )
        for s, k, one_id in query(
            db, "SELECT source, key, one_id FROM id_mapping WHERE one_id IS NOT NULL"
        ):
            before = seen.get((s, k))
            while before in merged:
                before = merged[before]
            assert before in (None, one_id), (s, k, before, one_id)
            seen[(s, k)] = one_id
    incremental = _partition(db)
    assert query(db, "SELECT count(*) FROM id_history WHERE event = 'split'") == [(0,)]
    result = resolve(run, "--full")
    assert result["mode"] == "full" and (result["created"], result["merged"], result["split"]) == (
        0,
        0,
        0,
    )
    assert _partition(db) == incremental


def test_changed_phone_on_reingest_keeps_the_one_id_and_drops_the_old_phone(
    run, write, project, tmp_path
):
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13911112222,,1,2025-01-01\n")
    resolve(run)
    li_na = one_id_of(tmp_path, "crm", "M1")
    ingest(run, write, "crm2.csv", "crm", CRM_HEADER + "M1,李娜,13911112222,,,\n")  # a new phone
    result = resolve(run)
    assert result["mode"] == "incremental"
    assert one_id_of(tmp_path, "crm", "M1") == li_na  # the record keeps its one_id
    assert one_id_of(tmp_path, "shop", "O1") == li_na  # and now links the order with that phone
    gone = run("profile", "--phone", "13800138000")
    assert (gone.exit_code, gone.stderr) == (1, "Error: no customer has the phone 138****8000\n")
    assert json.loads(run("profile", li_na, "--json", "--unmask").stdout)["profile"]["phones"] == [
        "+8613911112222"
    ]
    full = resolve(run, "--full")
    assert (full["created"], full["merged"], full["split"]) == (0, 0, 0)
    assert one_id_of(tmp_path, "crm", "M1") == li_na


def test_a_phone_changed_back_and_forth_between_resolves_is_ingested_every_time(
    run, write, project, tmp_path
):
    """A -> B -> A -> B over four daily exports with no resolve between: the fourth change
    records a pair already recorded, which the upsert's conflict handling once made a UNIQUE
    error that failed the file."""
    ingest(run, write, "crm.csv", "crm", CRM_HEADER + "M1,李娜,13800138000,,,\n")
    resolve(run)
    li_na = one_id_of(tmp_path, "crm", "M1")
    for day, phone in enumerate(["13911112222", "13800138000", "13911112222"], start=2):
        ingest(run, write, f"crm{day}.csv", "crm", CRM_HEADER + f"M1,李娜,{phone},,{day}号,\n")
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM replaced_identity_keys") == [(2,)]
    resolve(run)
    assert one_id_of(tmp_path, "crm", "M1") == li_na
    assert json.loads(run("profile", li_na, "--json", "--unmask").stdout)["profile"]["phones"] == [
        "+8613911112222"
    ]


def test_record_that_loses_its_only_identifier_is_recorded_as_removed(
    run, write, project, tmp_path
):
    ingest(run, write, "shop.csv", "shop", SHOP_HEADER + "O1,13911112222,,1,2025-01-01\n")
    resolve(run)
    before = one_id_of(tmp_path, "shop", "O1")
    ingest(run, write, "shop2.csv", "shop", SHOP_HEADER + "O1,139****2222,,1,2025-01-01\n")
    resolve(run)
    assert one_id_of(tmp_path, "shop", "O1") is None
    assert query(
        tmp_path / "cdp.db", "SELECT one_id, event FROM id_history WHERE event = 'removed'"
    ) == [(before, "removed")]
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles") == [(0,)]


# ---------------------------------------------------------------------------------------------
# The default blocklist: by identifier type and length, each rule named and able to be turned off

MEMBERS_CONFIG = """
store: cdp.db
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member, name: name, device_id: device}
  shop:
    kind: orders
    key: order_id
    fields: {order_id: order_id, member_no: member, amount: amount, ordered_at: at}
"""


def test_member_numbers_1_to_100000_are_never_set_aside():
    normalizer = Normalizer(IdentityRules(), "CN")
    for type_name in ("member_no", "user_id"):
        set_aside = [
            (n, rejected)
            for n in range(1, 100_001)
            for rejected in normalizer.identifiers({type_name: str(n)})[1]
        ]
        assert set_aside == []


@pytest.mark.parametrize(
    ("type_name", "value", "rule"),
    [
        ("phone", "13800000000", "repeated_digits_at_end"),
        ("phone", "+86 138 0000 0000", "repeated_digits_at_end"),
        ("device_id", "1111111", "repeated_character"),
        ("device_id", "00000000-0000-0000-0000-000000000000", "repeated_character"),
        ("wechat_unionid", "xxxxxxxx", "repeated_character"),
        ("member_no", "00000000", "repeated_character"),  # 8 or more: a placeholder again
        ("member_no", "1111-1111", "repeated_character"),
        ("user_id", "null", "placeholder"),
        ("member_no", "未知", "placeholder"),
        ("email", "noreply@huayang.com", "test_address"),
    ],
)
def test_the_default_rules_still_catch_junk_of_the_types_they_judge(type_name, value, rule):
    _, [rejected] = Normalizer(IdentityRules(), "CN").identifiers({type_name: value})
    assert rejected.reason.startswith("blocklisted: ") and rejected.reason.endswith(f"({rule})")


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("member_no", "1111"),
        ("member_no", "2222222"),
        ("user_id", "9999"),
        ("member_no", "M100000000"),
    ],
)
def test_numbering_schemes_keep_their_repeated_digits(type_name, value):
    assert Normalizer(IdentityRules(), "CN").identifiers({type_name: value}) == (
        [(type_name, value, None)],
        [],
    )


def test_member_1111_keeps_its_orders_and_resolve_and_status_show_what_was_set_aside(
    run, write, tmp_path
):
    write("cdp.yaml", MEMBERS_CONFIG)
    ingest(run, write, "crm.csv", "crm",
           "member,name,device\n1111,李娜,\n2222,王强,\n00000000,占位,AAAAAA\n")  # fmt: skip
    ingest(run, write, "shop.csv", "shop",
           "order_id,member,amount,at\nO1,1111,10,2025-01-01\nO2,1111,20,2025-01-02\n"
           "O3,2222,30,2025-01-03\n")  # fmt: skip
    result = resolve(run)
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "shop", "O2")
    assert one_id_of(tmp_path, "shop", "O1") == one_id_of(tmp_path, "crm", "1111")
    assert one_id_of(tmp_path, "shop", "O3") == one_id_of(tmp_path, "crm", "2222")
    why = "blocklisted: one character repeated (repeated_character)"
    expected = [
        {"type": "device_id", "reason": why, "values": 1, "identity_keys": 1},
        {"type": "member_no", "reason": why, "values": 1, "identity_keys": 1},
    ]
    assert result["set_aside"] == expected
    status = run("status", "--json")
    assert json.loads(status.stdout)["set_aside"] == expected
    for shown in (run("resolve").stdout, run("status").stdout):
        assert re.search(rf"^member_no +{re.escape(why)} +1$", shown, re.M), shown

    # Turned off, the rule sets nothing aside: 00000000 is a member like any other.
    write(
        "cdp.yaml", MEMBERS_CONFIG + "identity:\n  default_blocklist: {repeated_character: false}\n"
    )
    result = resolve(run)
    assert result["set_aside"] == []
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM profiles") == [(3,)]


def test_an_unknown_default_blocklist_rule_names_the_line(run, write):
    write("cdp.yaml", MEMBERS_CONFIG + "identity:\n  default_blocklist: {repeated_char: false}\n")
    result = run("resolve")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: cdp.yaml:12: identity.default_blocklist: no rule named 'repeated_char' "
        "(did you mean 'repeated_character'?) (rules: placeholder, repeated_character, "
        "repeated_digits_at_end, test_address)\n"
    )
