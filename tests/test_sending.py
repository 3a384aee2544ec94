"""The send step's guards and coupon pools, through the library on a real store: opt-outs,
reachability with the WeChat appid rule, the frequency cap, quiet hours in the customer's own
timezone, and a pool that runs dry."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from cdp_cli.config import load_config
from cdp_cli.messaging.coupons import AVAILABLE_CODES, CouponPool, empty_pool_reason
from cdp_cli.messaging.guards import (
    Customers,
    QuietHoursOfRun,
    customer_zone,
    reach,
)
from cdp_cli.store import open_store
from tests.conftest import query
from tests.test_channels import CONFIG as BASE_CONFIG

CONFIG = (
    BASE_CONFIG.replace("sms: {cost: 0.04}", 'sms: {cost: 0.04, quiet_hours: "21:00-09:00"}')
    + """  optouts:
    kind: consents
    fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at}
  coupons:
    kind: coupons
    key: code
    fields: {code: code, campaign: campaign, status: status}
frequency_cap: {per_day: 1}
"""
)
# L1 is in New York (+1 212); O1 opted out of SMS, O2 of everything.
CRM = """member,name,phone,appid,openid
W1,李娜,13800000001,wx1,oOne
W2,王芳,13800000002,WX1,oTwo
L1,Anna,+1 212 555 0100,,
O1,张敏,13800000003,,
O2,刘洋,13800000004,wx1,oFour
"""
OPTOUTS = "phone,channel,at\n13800000003,sms,2026-01-01 10:00:00\n13800000004,all,2026-01-01\n"
COUPONS = "code,campaign,status\nB2,SPRING,available\nB1,SPRING,available\nX1,SPRING,redeemed\n"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def store(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    for name, text, source in [("crm.csv", CRM, "crm"), ("optouts.csv", OPTOUTS, "optouts"),
                               ("coupons.csv", COUPONS, "coupons")]:  # fmt: skip
        write(name, text)
        assert run("ingest", name, "-s", source).exit_code == 0
    assert run("resolve").exit_code == 0
    config = load_config(tmp_path / "cdp.yaml")
    db = open_store(config.store)
    yield config, db
    db.close()


def one_ids(db) -> dict[str, str]:
    rows = db.conn.execute("SELECT key, one_id FROM id_mapping WHERE source = 'crm'")
    return dict(rows.fetchall())


def load(config, db, now: datetime) -> tuple[Customers, dict[str, str]]:
    ids = one_ids(db)
    return Customers.load(db, list(ids.values()), now, config.sending), ids


def test_opt_outs_and_reachability_with_fallback(store) -> None:
    config, db = store
    customers, ids = load(config, db, datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    appid = config.sending.wechat_appid

    def where(member: str, *channels: str):
        found = reach(customers, ids[member], channels, appid)
        return found.skip or (found.channel, found.address)

    assert where("W1", "wechat", "sms") == ("wechat", "wx1:oOne")
    # W2's openid belongs to 'WX1', not the sending account: SMS is the fallback.
    assert where("W2", "wechat", "sms") == ("sms", "+8613800000002")
    assert where("W2", "wechat") == "unreachable (wechat: no wechat openid)"
    assert where("O1", "sms") == "opted out (sms: opted out)"
    assert where("O1", "sms", "email") == "unreachable (sms: opted out; email: no email)"
    assert where("O2", "wechat", "sms") == "opted out (wechat: opted out; sms: opted out)"


def test_the_frequency_cap_counts_what_was_sent(store) -> None:
    config, db = store
    customers, ids = load(config, db, datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    assert config.sending.per_day == 1
    now = datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI)
    assert customers.cap_lifts(ids["W1"], config.sending, now) is None
    customers.count_sent(ids["W1"], now)
    # the day's cap lifts at the next midnight of the project's timezone
    assert customers.cap_lifts(ids["W1"], config.sending, now) == "2026-11-16T00:00:00+08:00"
    assert customers.cap_lifts(ids["W2"], config.sending, now) is None


def quiet_until(customers, one_id, channel, now, settings, transactional=False) -> str | None:
    return QuietHoursOfRun(now, settings, transactional).until(customers, one_id, channel)


def test_quiet_hours_defer_in_the_customers_own_timezone(store) -> None:
    config, db = store
    night = datetime(2026, 11, 15, 23, 30, tzinfo=SHANGHAI)  # 10:30 in New York
    customers, ids = load(config, db, night)
    settings = config.sending
    assert customer_zone("+12125550100", settings.zone) == ZoneInfo("America/New_York")
    assert quiet_until(customers, ids["W1"], "sms", night, settings) == "2026-11-16T09:00:00+08:00"
    assert quiet_until(customers, ids["L1"], "sms", night, settings) is None
    # WeChat sets no quiet hours of its own: marketing waits out the default 21:00-09:00, a
    # transactional message goes (the change: before, WeChat and push never waited).
    assert quiet_until(customers, ids["W1"], "wechat", night, settings) == (
        "2026-11-16T09:00:00+08:00"
    )
    assert quiet_until(customers, ids["W1"], "wechat", night, settings, transactional=True) is None
    assert quiet_until(customers, ids["W1"], "sms", night, settings, transactional=True) == (
        "2026-11-16T09:00:00+08:00"  # set in cdp.yaml: transactional messages obey it, as before
    )
    noon = datetime(2026, 11, 16, 12, 0, tzinfo=SHANGHAI)  # 23:00 in New York: quiet there
    assert quiet_until(customers, ids["W1"], "sms", noon, settings) is None
    assert quiet_until(customers, ids["L1"], "sms", noon, settings) == (
        "2026-11-16T22:00:00+08:00"  # 09:00 in New York
    )


def test_a_runs_quiet_hours_answer_each_message_as_alone_once_per_channel_and_zone(store) -> None:
    config, db = store
    settings = config.sending
    for now in (datetime(2026, 11, 15, 23, 30, tzinfo=SHANGHAI),
                datetime(2026, 11, 16, 12, 0, tzinfo=SHANGHAI)):  # fmt: skip
        customers, ids = load(config, db, now)
        for transactional in (False, True):
            run = QuietHoursOfRun(now, settings, transactional)
            for one_id in ids.values():
                for channel in ("sms", "wechat"):
                    expected = quiet_until(customers, one_id, channel, now, settings, transactional)
                    assert run.until(customers, one_id, channel) == expected
            zones = {customer_zone(customers.phones.get(i), settings.zone) for i in ids.values()}
            assert len(run.known) == 2 * len(zones)  # per channel and timezone, not per message


def test_a_coupon_pool_draws_unissued_codes_in_order_until_it_is_empty(store) -> None:
    _, db = store
    pool = CouponPool(db, "SPRING", datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    first = pool.draw()
    assert first is not None and first["code"] == "B1"
    pool.put_back(first)  # its message failed to render: the code is drawn again
    assert [pool.draw()["code"], pool.draw()["code"]] == ["B1", "B2"]  # type: ignore[index]
    assert pool.draw() is None  # X1 was redeemed: never drawn
    assert empty_pool_reason("SPRING") == "coupon pool SPRING is empty"


def test_a_pool_reads_its_available_codes_alone(store) -> None:
    """A draw walks the pool's available codes, not every issued or redeemed one before them
    (at 1M: 460,000 rows read for each block of 2,000)."""
    _, db = store
    plans = [
        " ".join(r[3] for r in db.conn.execute(f"EXPLAIN QUERY PLAN SELECT code {AVAILABLE_CODES}"
                                                f"{tail}", params))
        for tail, params in [("AND code > ? ORDER BY code LIMIT 9", ("SPRING", "")), ("", ("S",))]
    ]  # fmt: skip
    assert all("USING INDEX coupons_available (campaign=?" in plan for plan in plans), plans


def test_an_exhausted_pool_skips_the_rest_with_its_reason(run, write, store) -> None:
    write("templates/sms/c.txt", "【花漾】券码{{ coupon.code }}")
    write(
        "journeys/c.yaml",
        'name: c\nentry: {when: "name is not null"}\n'
        "steps: [{send: {channel: sms, template: c, coupon: SPRING}}]\n",
    )
    assert run("tag").exit_code == 0
    _, db = store
    with db.conn:
        db.conn.execute("UPDATE coupons SET status = 'redeemed' WHERE code = 'B2'")
    result = run("journey", "run", "--now", "2026-11-15 10:30", "--json")
    assert result.exit_code == 0, result.output
    [journey] = json.loads(result.stdout)
    # W1 draws B1, W2 finds the pool empty; L1 waits out New York's night (21:30 there);
    # O1 and O2 opted out.
    assert journey["deferred"] == 1
    assert journey["notes"] == ["coupon pool SPRING is empty: those sends were skipped"]
    messages = db.conn.execute("SELECT one_id, status, reason, coupon_code FROM messages")
    ids = {one_id: member for member, one_id in one_ids(db).items()}
    assert sorted((ids[m[0]], *m[1:]) for m in messages) == [
        ("O1", "skipped", "opted out (sms: opted out)", None),
        ("O2", "skipped", "opted out (sms: opted out)", None),
        ("W1", "written", None, "B1"),
        ("W2", "skipped", "coupon pool SPRING is empty", None),
    ]


def test_an_sms_costs_its_cost_per_billed_segment(run, write, store) -> None:
    """100 Chinese characters are 2 UCS-2 segments: the operator bills, and cdp records, 2 x 0.04."""
    write("templates/sms/long.txt", "【花漾】" + "好" * 96)
    write(
        "journeys/long.yaml",
        'name: long\nentry: {when: "name is not null"}\n'
        "steps: [{send: {channel: sms, template: long}}]\n",
    )
    assert run("tag").exit_code == 0
    result = run("journey", "run", "--now", "2026-11-15 10:30")
    assert result.exit_code == 0, result.output
    _, db = store
    sent = db.conn.execute(
        "SELECT payload, cost FROM messages WHERE status != 'skipped' AND channel = 'sms'"
    ).fetchall()
    assert sent
    for payload, cost in sent:
        assert json.loads(payload)["segments"] == 2
        assert cost == pytest.approx(0.08)


# ---------------------------------------------------------------------------------------------
# Values cdp acts on: a consent's channel and status, a coupon's status


def test_a_consent_channel_cdp_cannot_map_is_a_reject_never_a_silent_no_op(
    run, write, store, tmp_path
) -> None:
    config_text = (tmp_path / "cdp.yaml").read_text(encoding="utf-8")
    write("cdp.yaml", config_text.replace(
        "fields: {phone: phone, channel: channel,",
        "fields: {phone: phone, channel: {from: channel, values: {text message: sms}},",
    ))  # fmt: skip
    write("more.csv", "phone,channel,at\n"
          "13800000001,短信,2026-02-01\n13800000002,smss,2026-02-01\n"
          "13800000002,,2026-02-01\n+1 212 555 0100,Text Message,2026-02-01\n"
          "13800000003,邮箱,2026-02-01\n13800000003,微信,2026-02-01\n"
          "13800000003,APP,2026-02-01\n13800000003,全部,2026-02-01\n")  # fmt: skip
    result = run("ingest", "more.csv", "-s", "optouts", "--json")
    assert result.exit_code == 0, result.output
    [ingested] = json.loads(result.stdout)
    assert (ingested["inserted"], ingested["rejected"]) == (6, 2)
    assert run("resolve").exit_code == 0
    config, db = store
    rejects = db.conn.execute(
        "SELECT line, problem, field, reason FROM rejects WHERE source = 'optouts' ORDER BY line"
    ).fetchall()
    assert rejects == [
        (3, "unknown_value", "channel", "channel: 'smss' is not one of sms, email, wechat, "
         "push, all; map it with `values:` on the field in cdp.yaml"),
        (4, "missing", "channel", "channel: missing"),
    ]  # fmt: skip
    stored = db.conn.execute(
        "SELECT channel FROM consents WHERE batch_id = ? ORDER BY id", (ingested["batch_id"],)
    ).fetchall()
    assert [c for (c,) in stored] == ["sms", "sms", "email", "wechat", "push", "all"]
    customers, ids = load(config, db, datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    appid = config.sending.wechat_appid
    assert reach(customers, ids["W1"], ("sms",), appid).skip == "opted out (sms: opted out)"
    assert reach(customers, ids["L1"], ("sms",), appid).skip == "opted out (sms: opted out)"
    assert reach(customers, ids["W2"], ("sms",), appid).channel == "sms"  # rejects opt out none
    status = json.loads(run("status", "--json").stdout)
    assert status["rejects"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("channel: channel,", "channel: {from: channel, values: {短讯: smss}},",
         "cdp.yaml:14: sources.optouts.fields.channel: '短讯' means 'smss', which is not one of "
         "sms, email, wechat, push, all (did you mean 'sms'?)"),
        ('status: "=opt_out"', 'status: "=unsubscribed"',
         "cdp.yaml:14: sources.optouts.fields.status: 'unsubscribed' means 'unsubscribed', "
         "which is not one of opt_in, opt_out"),
    ],
)  # fmt: skip
def test_a_mapping_onto_a_value_cdp_does_not_act_on_is_refused_when_cdp_yaml_loads(
    run, write, old, new, message
) -> None:
    assert old in CONFIG
    write("cdp.yaml", CONFIG.replace(old, new))
    result = run("status")
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_a_coupon_status_cdp_cannot_map_is_counted_invalid_and_never_drawn(
    run, write, store
) -> None:
    write("more_coupons.csv", "code,campaign,status\nA1,SPRING,可用\nA2,SPRING,AVAILABLE\n")
    assert run("ingest", "more_coupons.csv", "-s", "coupons").exit_code == 0
    _, db = store
    rows = db.conn.execute(
        "SELECT code, status, attrs FROM coupons WHERE code IN ('A1', 'A2') ORDER BY code"
    ).fetchall()
    assert rows == [("A1", None, '{"_invalid":{"status":"可用"}}'), ("A2", "available", None)]
    pool = CouponPool(db, "SPRING", datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI))
    assert [pool.draw()["code"] for _ in range(3)] == ["A2", "B1", "B2"]  # type: ignore[index]


def test_a_consent_purpose_decides_which_journeys_obey_it(run, write, store, tmp_path) -> None:
    """A marketing opt-out stops marketing, not an order-shipped SMS; a service opt-out the
    reverse; no purpose, or `all`, both. A purpose cdp cannot map is a reject."""
    config_text = (tmp_path / "cdp.yaml").read_text(encoding="utf-8")
    write("cdp.yaml", config_text.replace(
        'fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at}',
        'fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at, '
        "purpose: purpose}",
    ))  # fmt: skip
    write("purposes.csv", "phone,channel,at,purpose\n"
          "13800000001,sms,2026-02-01,营销\n13800000002,sms,2026-02-01,transactional\n"
          "+1 212 555 0100,sms,2026-02-01,newsletter\n")  # fmt: skip
    result = run("ingest", "purposes.csv", "-s", "optouts", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["rejected"] == 1
    config, db = store
    [(reason,)] = db.conn.execute("SELECT reason FROM rejects WHERE field = 'purpose'").fetchall()
    assert reason.startswith("purpose: 'newsletter' is not one of marketing, service, all")
    assert run("resolve").exit_code == 0
    ids = one_ids(db)
    now = datetime(2026, 11, 15, 10, 30, tzinfo=SHANGHAI)
    appid = config.sending.wechat_appid
    for transactional, blocked in ((False, {"W1", "O1", "O2"}), (True, {"W2", "O1", "O2"})):
        customers = Customers.load(db, list(ids.values()), now, config.sending, transactional)
        opted_out = {
            m for m in ("W1", "W2", "L1", "O1", "O2")
            if reach(customers, ids[m], ("sms",), appid).skip
        }  # fmt: skip
        assert opted_out == blocked, transactional


def test_an_opt_in_needs_its_time_and_an_opt_out_is_kept_without_one(run, write, tmp_path):
    write("cdp.yaml", "store: cdp.db\nsources:\n  c:\n    kind: consents\n"
          "    fields: {phone: phone, channel: channel, status: status, consented_at: at}\n")  # fmt: skip
    write("c.csv", "phone,channel,status,at\n13800000001,sms,opt_out,\n"
          "13800000001,sms,opt_in,\n13800000001,sms,opt_in,2026-03-01 10:00\n")  # fmt: skip
    result = run("ingest", "c.csv", "-s", "c", "--json")
    assert result.exit_code == 0, result.output
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT status, consented_at FROM consents ORDER BY id") == [
        ("opt_out", None),
        ("opt_in", "2026-03-01T10:00:00+08:00"),
    ]
    assert query(db, "SELECT line, reason FROM rejects") == [
        (3, "consented_at: missing (required when opt_in)")
    ]


def test_consents_stored_before_they_were_checked_are_mapped_or_moved_to_rejects(
    tmp_path,
) -> None:
    """A store from before migration 11 holding `短信`, `smss`, an empty channel and an opt-in
    without a time: opening it maps the first and moves the others to rejects."""
    import sqlite3

    from cdp_cli.schema import MIGRATIONS

    path = tmp_path / "old.db"
    db = open_store(path)
    conn = db.conn
    conn.execute("DELETE FROM schema_migrations WHERE version = 11")
    conn.execute("ALTER TABLE consents DROP COLUMN purpose")
    conn.execute(
        "INSERT INTO batches (id, source, kind, file, sha256, size, status, started_at) "
        "VALUES (1, 'optouts', 'consents', 'o.csv', 'x', 1, 'done', '2026-01-01')"
    )
    rows = [("短信", "opt_out", "2026-01-01"), ("smss", "opt_out", "2026-01-01"),
            (None, "opt_out", "2026-01-01"), ("SMS", "opt_in", None)]  # fmt: skip
    for line, (channel, status, at) in enumerate(rows, start=2):
        conn.execute(
            "INSERT INTO consents (source, key, channel, status, consented_at, phone, batch_id, "
            "line) VALUES ('optouts', ?, ?, ?, ?, '13800000001', 1, ?)",
            (str(line), channel, status, at, line),
        )
    db.close()
    assert MIGRATIONS[-1][0] >= 11
    open_store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT line, channel, purpose FROM consents").fetchall() == [
        (2, "sms", None)
    ]
    rejects = conn.execute("SELECT line, problem, field, reason FROM rejects ORDER BY line")
    assert rejects.fetchall() == [
        (3, "unknown_value", "channel", "channel: 'smss' is not one of sms, email, wechat, push, "
         "all (stored before cdp checked it)"),
        (4, "missing", "channel", "channel: missing (stored before cdp checked it)"),
        (5, "missing", "consented_at", "consented_at: missing (required when opt_in) (stored "
         "before cdp checked it)"),
    ]  # fmt: skip
    assert conn.execute("SELECT rows_rejected FROM batches").fetchall() == [(3,)]
