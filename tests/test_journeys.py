"""Journeys: enrolment, steps, every send-time guard, outbound files, and exactly once."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import REPO, query

NOW = "2026-11-15 10:30"
CONFIG = """
store: cdp.db
timezone: Asia/Shanghai
brand: {name: 花漾, url: "https://hy.example.com"}
channels:
  sms: {quiet_hours: "21:00-09:00", cost: 0.04}
  wechat: {appid: wx1, cost: 0}
frequency_cap: {per_day: 1, per_week: 3}
sources:
  crm:
    kind: customers
    key: member
    fields: {member_no: member, name: name, phone: phone, email: email, city: city,
             wechat_appid: appid, wechat_openid: openid, device_id: device}
  orders:
    kind: orders
    key: order_id
    fields: {order_id: order_id, member_no: member, amount: amount, ordered_at: at}
  events:
    kind: events
    key: id
    fields: {event: event, occurred_at: at, member_no: member}
  optouts:
    kind: consents
    fields: {phone: phone, channel: channel, status: "=opt_out", consented_at: at}
  coupons:
    kind: coupons
    key: code
    fields: {code: code, campaign: campaign, status: status, face_value: value, expires_at: expires}
"""
CRM = """member,name,phone,email,city,appid,openid,device
M1,李娜,13800000001,li@qq.com,武汉,wx1,oLiNa,
M2,王芳,13800000002,,北京,,,
M3,张敏,,,上海,,,
M4,刘洋,13800000004,,成都,,,
M5,陈静,027-87654321,,武汉,,,
M6,杨帆,13800000006,,武汉,,,
"""
COUPONS = "code,campaign,status,value,expires\nC1,TEST,available,20,2026-12-31 23:59:59\nC2,TEST,available,20,2026-12-31 23:59:59\n"
TEMPLATE = "{# test #}【{{ brand.name }}】{{ customer.name|default_name }}，{% if coupon %}券码{{ coupon.code }}{% else %}你好{% endif %} {{ link }}"
WECHAT = """{# test #}
{"touser": "{{ wechat.openid }}", "template_id": "T1", "url": "{{ link }}",
 "data": {"thing1": {"value": "{{ customer.name|default_name }}"}}}
"""


def journey(name: str, body: str) -> str:
    return f"name: {name}\n{body}"


@pytest.fixture
def project(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("orders.csv", "order_id,member,amount,at\nO1,M1,100,2026-06-01 10:00:00\n")
    write("events.csv", "id,event,at,member\nE1,register,2026-11-15 09:00:00,M6\n")
    write("optouts.csv", "phone,channel,at\n13800000004,sms,2026-01-01 10:00:00\n")
    write("coupons.csv", COUPONS)
    write("templates/sms/hello.txt", TEMPLATE)
    write("templates/wechat/hello.json", WECHAT)
    write("tag_rules/t.yaml", "- name: wuhan\n  when: \"city = '武汉'\"\n")
    for name, source in [("crm.csv", "crm"), ("orders.csv", "orders"), ("events.csv", "events"),
                         ("optouts.csv", "optouts"), ("coupons.csv", "coupons")]:  # fmt: skip
        assert run("ingest", name, "-s", source).exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", "2026-11-15").exit_code == 0
    return tmp_path


def member_one_id(tmp_path, member):
    return query(
        tmp_path / "cdp.db", "SELECT one_id FROM id_mapping WHERE source='crm' AND key=?", member
    )[0][0]


def messages(tmp_path, journey_name):
    rows = query(
        tmp_path / "cdp.db",
        "SELECT m.one_id, m.channel, m.status, m.reason, m.coupon_code FROM messages m WHERE journey = ? ORDER BY id",
        journey_name,
    )
    members = {member_one_id(tmp_path, m): m for m in ("M1", "M2", "M3", "M4", "M5", "M6")}
    return {members[r[0]]: r[1:] for r in rows}


def run_journeys(run, *args):
    result = run("journey", "run", "--now", NOW, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def traced_run(project, name):
    """One journey run through the API at NOW: its result, and the statements it ran."""
    from cdp_cli.config import load_config
    from cdp_cli.messaging.engine import run_journeys as run_api
    from cdp_cli.store import open_store

    config = load_config(project / "cdp.yaml")
    db = open_store(config.store)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    [result] = run_api(db, config, name, datetime.fromisoformat("2026-11-15T10:30:00+08:00"))
    db.close()
    return result, statements


def test_guards_fallback_optout_unreachable_and_landline(run, write, project):
    write(
        "journeys/hello.yaml",
        journey(
            "hello",
            'entry: {when: "city is not null"}\nsteps:\n  - send: {channel: wechat, fallback: [sms], template: hello}\n',
        ),
    )
    [result] = run_journeys(run)
    assert result["enrolled"] == 6
    sent = messages(project, "hello")
    assert sent["M1"][:2] == ("wechat", "written")  # has an openid of the sending account
    assert sent["M2"][:2] == ("sms", "written")  # no openid: falls back to SMS
    assert sent["M3"][1:3] == ("skipped", "unreachable (wechat: no wechat openid; sms: no phone)")
    assert sent["M4"][1:3] == ("skipped", "unreachable (wechat: no wechat openid; sms: opted out)")
    assert sent["M5"][1:3] == (
        "skipped",
        "unreachable (wechat: no wechat openid; sms: no phone)",
    )  # a landline
    sms_files = list((project / "outbound" / "sms").glob("*.csv"))
    rows = list(csv.DictReader(sms_files[0].read_text(encoding="utf-8").splitlines()))
    assert {r["to"] for r in rows} == {"+8613800000002", "+8613800000006"}
    assert all(
        r["message_id"].startswith("hello:") and r["text"].startswith("【花漾】") for r in rows
    )
    wechat = [
        json.loads(line)
        for line in next((project / "outbound" / "wechat").glob("*.jsonl"))
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    assert [(w["touser"], w["template_id"]) for w in wechat] == [("oLiNa", "T1")]


def test_opt_out_of_all_channels_is_never_bypassed(run, write, project):
    write("more_optouts.csv", "phone,channel,at\n13800000002,all,2026-02-01 10:00:00\n")
    assert run("ingest", "more_optouts.csv", "-s", "optouts").exit_code == 0
    assert run("resolve").exit_code == 0
    write(
        "journeys/tx.yaml",
        journey(
            "tx",
            "transactional: true\nentry: {when: \"city = '北京'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    run_journeys(run)
    assert messages(project, "tx")["M2"][1:3] == ("skipped", "opted out (sms: opted out)")


def test_frequency_cap_counts_marketing_and_transactional_bypasses_it(run, write, project):
    write(
        "journeys/a.yaml",
        journey(
            "a",
            "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    write(
        "journeys/b.yaml",
        journey(
            "b",
            "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    write(
        "journeys/c.yaml",
        journey(
            "c",
            "transactional: true\nentry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    results = {r["journey"]: r for r in run_journeys(run)}
    assert messages(project, "a")["M6"][1] == "written"
    assert "M6" not in messages(project, "b")  # the cap defers the message: nothing consumed
    capped = sum(m[1] == "written" for m in messages(project, "a").values())
    assert capped >= 1 and results["b"]["waiting"] == {"frequency cap": capped}
    assert messages(project, "c")["M6"][1] == "written"
    status = json.loads(run("journey", "status", "b", "--json").stdout)
    # the daily cap lifts at midnight, in the project's timezone
    assert status["waiting"] == [{"step": "steps[0]", "reason": "frequency cap",
                                  "customers": capped, "until": "2026-11-16T00:00:00+08:00"}]  # fmt: skip
    same_day = run("journey", "run", "b", "--now", "2026-11-15 20:00", "--json")
    assert json.loads(same_day.stdout)[0]["sent"] == {}
    next_day = run("journey", "run", "b", "--now", "2026-11-16 10:00", "--json")
    assert json.loads(next_day.stdout)[0]["sent"] == {"sms": capped}
    assert messages(project, "b")["M6"][1] == "written"


def test_the_weekly_cap_lifts_when_the_oldest_message_of_the_week_leaves_it(run, write, project):
    body = "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n"
    for day, name in enumerate("abcd", start=10):
        write(f"journeys/{name}.yaml", journey(name, body))
        if name != "d":
            result = run("journey", "run", name, "--now", f"2026-11-{day} 10:30", "--json")
            sent = json.loads(result.stdout)[0]["sent"]
            assert sent.get("sms", 0) >= 1
    # three a week (per_week: 3) sent on the 10th, 11th and 12th: the 4th waits for the 17th
    waits = run("journey", "run", "d", "--now", "2026-11-13 10:30", "--json")
    assert json.loads(waits.stdout)[0]["waiting"] == {"frequency cap": sent["sms"]}
    status = json.loads(run("journey", "status", "d", "--json").stdout)
    assert status["waiting"][0]["until"] == "2026-11-17T10:30:01+08:00"
    early = run("journey", "run", "d", "--now", "2026-11-17 10:30", "--json")
    assert json.loads(early.stdout)[0]["sent"] == {}
    goes = run("journey", "run", "d", "--now", "2026-11-17 10:31", "--json")
    assert json.loads(goes.stdout)[0]["sent"] == sent


def test_quiet_hours_delay_the_message_and_do_not_lose_it(run, write, project):
    write(
        "journeys/q.yaml",
        journey(
            "q",
            "entry: {when: \"city = '北京'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    [night] = json.loads(run("journey", "run", "--now", "2026-11-15 22:00", "--json").stdout)
    assert (night["deferred"], night["sent"]) == (1, {})
    [again] = json.loads(run("journey", "run", "--now", "2026-11-16 08:59", "--json").stdout)
    assert again["sent"] == {}
    [morning] = json.loads(run("journey", "run", "--now", "2026-11-16 09:00", "--json").stdout)
    assert morning["sent"] == {"sms": 1}


def test_coupon_pool_draws_unique_codes_and_an_empty_pool_is_a_clear_skip(run, write, project):
    write(
        "journeys/cp.yaml",
        journey(
            "cp",
            "entry: {when: \"city = '武汉' or city = '北京'\"}\nsteps:\n  - send: {channel: sms, template: hello, coupon: TEST}\n",
        ),
    )
    [result] = run_journeys(run)
    sent = messages(project, "cp")
    codes = [v[3] for v in sent.values() if v[1] == "written"]
    assert sorted(codes) == ["C1", "C2"]
    assert "coupon pool TEST is empty: those sends were skipped" in result["notes"]
    assert ("skipped", "coupon pool TEST is empty") in [v[1:3] for v in sent.values()]


def test_holdout_and_split_are_deterministic_and_kept_on_reentry(run, write, project):
    body = """entry: {when: "city is not null", reentry: 1d}
holdout: 50%
steps:
  - split:
      a: {share: 50%, steps: [{send: {channel: sms, template: hello}}]}
      b: {share: 50%, steps: [{send: {channel: sms, template: hello}}]}
"""
    write("journeys/s.yaml", journey("s", body))
    run_journeys(run)
    first = query(
        project / "cdp.db",
        "SELECT one_id, holdout, variant FROM journey_enrolments ORDER BY one_id",
    )
    assert {h for _, h, _ in first} == {0, 1}
    assert query(
        project / "cdp.db",
        "SELECT count(*) FROM messages m JOIN journey_enrolments e ON e.id = m.enrolment_id WHERE e.holdout = 1 AND m.status != 'skipped'",
    ) == [(0,)]
    result = run("journey", "run", "--now", "2026-11-17 10:30", "--json")
    assert json.loads(result.stdout)[0]["enrolled"] == 6  # re-entry after a day
    second = query(
        project / "cdp.db",
        "SELECT one_id, holdout, variant FROM journey_enrolments WHERE enrolment = 2 ORDER BY one_id",
    )
    assert second == first


def test_wait_then_branch_on_conversion(run, write, project):
    body = """entry: {when: "city = '武汉' or city = '北京'"}
goal: {event: order, within: 14d}
steps:
  - send: {channel: sms, template: hello}
  - wait: 3d
  - branch:
      when: "not converted"
      then: [{send: {channel: sms, template: hello}}]
"""
    write("journeys/w.yaml", journey("w", body))
    run_journeys(run)
    write("orders2.csv", "order_id,member,amount,at\nO9,M2,50,2026-11-16 12:00:00\n")
    assert run("ingest", "orders2.csv", "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    [later] = json.loads(run("journey", "run", "--now", "2026-11-18 11:00", "--json").stdout)
    assert later["converted"] == 1  # M2 ordered: converted, and ended
    db = project / "cdp.db"
    assert query(
        db, "SELECT status FROM journey_enrolments WHERE one_id = ?", member_one_id(project, "M2")
    ) == [("converted",)]
    steps = query(
        db, "SELECT one_id, step FROM messages WHERE status = 'written' ORDER BY step, one_id"
    )
    assert (member_one_id(project, "M6"), "steps[2].then[0]") in steps
    assert (member_one_id(project, "M2"), "steps[2].then[0]") not in steps


def test_dry_run_changes_nothing(run, write, project):
    write(
        "journeys/d.yaml",
        journey(
            "d",
            "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    [result] = json.loads(run("journey", "run", "--now", NOW, "--dry-run", "--json").stdout)
    assert result["sent"] == {"sms": 2} and result["messages"][0]["text"].startswith("【花漾】")
    assert query(project / "cdp.db", "SELECT count(*) FROM journey_enrolments") == [(0,)]
    assert not (project / "outbound").exists()


def ahead_of_the_clock(hours: float) -> str:
    """--now this many hours after this machine's clock, in the project's timezone."""
    return (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(hours=hours)).strftime(
        "%Y-%m-%d %H:%M"
    )


def test_a_clock_more_than_a_day_ahead_sends_nothing_and_a_dry_run_previews_it(run, write, project):
    """--now 2062 for 2026: the run would send at once what is due decades later."""
    steps = "steps:\n  - wait: 30d\n  - send: {channel: sms, template: hello}\n"
    write("journeys/d.yaml", journey("d", f"entry: {{when: \"city = '武汉'\"}}\n{steps}"))
    assert run_journeys(run)[0]["enrolled"] == 3  # at NOW: they wait 30 days
    for late in ("2062-11-15 10:30", ahead_of_the_clock(25)):
        result = run("journey", "run", "--now", late)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"Error: --now {late} is more than a day ahead of this ")
        assert "preview it with --dry-run" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert query(project / "cdp.db", "SELECT count(*) FROM journey_runs") == [(1,)]
    assert not [path for path in (project / "outbound").rglob("*") if path.is_file()]

    late = run("journey", "run", "--now", "2062-11-15 10:30", "--dry-run", "--json")
    assert json.loads(late.stdout)[0]["sent"] == {"sms": 2}  # what the refused run would send
    evening = run("journey", "run", "--now", ahead_of_the_clock(23))  # tomorrow's, tonight
    assert evening.exit_code == 0, evening.output


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "entry: {when: x = 1}\nsteps: [{send: {channel: sms, template: hello}}]\n",
            "journey j, entry: unknown field 'x'",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: fax, template: hello}}]\n",
            "steps[0].send: unknown channel 'fax'",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: 短信, template: hello}}]\n",
            "journeys/j.yaml:3: steps[0].send: unknown channel '短信' (did you mean 'sms'?)",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: SMS, template: hello}}]\n",
            "journeys/j.yaml:3: steps[0].send: unknown channel 'SMS' (did you mean 'sms'?)",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: 微信, template: hello}}]\n",
            "steps[0].send: unknown channel '微信' (did you mean 'wechat'?)",
        ),
        (
            "entry: {when: \"city = '1'\"}\n"
            "steps: [{send: {channel: wechat, fallback: {sms: 1}, template: hello}}]\n",
            "journeys/j.yaml:3: steps[0].send.fallback: expected a channel or a list of them",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: sms, template: nope}}]\n",
            "templates/sms/nope",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: sms, template: helo}}]\n",
            "templates/sms/helo.txt: no such file: the text of sms/helo (did you mean 'hello'?)",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: sms, template: -hello}}]\n",
            "journeys/j.yaml:3: steps[0].send: template '-hello' names no file in the templates folder: use lower-case",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: sms, template: ../x}}]\n",
            "steps[0].send: template '../x' names no file in the templates folder: climbs out of the templates folder",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps: [{wiat: 3d}]\n",
            "steps[0]: unknown step 'wiat' (did you mean 'wait'?)",
        ),
        ("entry: {when: \"city = '1'\"}\nsteps: [{wait: 3x}]\n", "steps[0].wait"),
        (
            "entry: {when: \"city = '1'\"}\nholdout: 150%\nsteps: [end]\n",
            "holdout: a share lies between 0% and 100%",
        ),
        (
            "entry: {when: \"city = '1'\"}\nsteps:\n  - split: {a: {share: 50%, steps: [end]}, b: {share: 40%, steps: [end]}}\n",
            "the shares add up to 90%, not 100%",
        ),
        (
            "entry: {when: \"city = '1'\", event: x}\nsteps: [end]\n",
            "entry: give exactly one of when (a rule), event, tag or schedule",
        ),
    ],
)
def test_validate_names_the_mistake(run, write, project, body, message):
    write("journeys/j.yaml", journey("j", body))
    result = run("journey", "validate")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_fallback_channel_needs_no_list(run, write, project):
    """`fallback: sms` is the list [sms], not the channels s, m and s."""
    body = "entry: {when: \"city = '1'\"}\nsteps: [{send: {channel: wechat, fallback: %s, template: hello}}]\n"
    write("journeys/one.yaml", journey("one", body % "sms"))
    write("journeys/list.yaml", journey("list", body % "[sms]"))
    result = run("journey", "validate", "--json")
    assert result.exit_code == 0, result.output
    assert {j["journey"]: j["channels"] for j in json.loads(result.stdout)} == {
        "one": ["sms", "wechat"], "list": ["sms", "wechat"],
    }  # fmt: skip


def test_shipped_journeys_and_templates_validate(run, tmp_path):
    from tests.ops_helpers import fill_wechat_template_ids

    shutil.copytree(REPO / "journeys", tmp_path / "journeys")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    shutil.copytree(REPO / "tag_rules", tmp_path / "tag_rules")
    shutil.copy(REPO / "cdp.yaml", tmp_path / "cdp.yaml")
    unfilled = run("journey", "validate")  # as shipped: the WeChat template ids to fill in
    assert unfilled.exit_code == 2
    assert "template_id REPLACE_ME_" in unfilled.stderr and "is a placeholder" in unfilled.stderr
    fill_wechat_template_ids(tmp_path)
    result = run("journey", "validate", "--json")
    assert result.exit_code == 0, result.output
    assert {j["journey"] for j in json.loads(result.stdout)} == {
        "welcome",
        "winback",
        "repurchase",
        "birthday",
        "member_day",
    }


def entered(project, name):
    return query(
        project / "cdp.db",
        "SELECT one_id, enrolment FROM journey_enrolments WHERE journey = ? ORDER BY 1, 2",
        name,
    )


def test_one_off_broadcast_sends_once_at_its_time_to_its_audience(run, write, project):
    body = """entry: {schedule: "2026-11-15 10:00", when: "city = '武汉'"}
steps:
  - send: {channel: sms, template: hello}
"""
    write("journeys/bc.yaml", journey("bc", body))
    [early] = json.loads(run("journey", "run", "--now", "2026-11-15 09:59", "--json").stdout)
    assert early["enrolled"] == 0
    [due] = run_journeys(run)
    assert due["enrolled"] == 3 and due["notes"] == ["broadcast of 2026-11-15 10:00"]
    assert {m for m in messages(project, "bc")} == {"M1", "M5", "M6"}
    [again] = json.loads(run("journey", "run", "--now", "2026-11-15 11:00", "--json").stdout)
    assert again["enrolled"] == 0
    assert query(project / "cdp.db", "SELECT occurrence, enrolled FROM journey_broadcasts") == [
        ("2026-11-15T10:00:00+08:00", 3)
    ]


def test_a_broadcast_missed_by_more_than_late_is_not_sent(run, write, project):
    body = """entry: {schedule: "2026-11-15 01:00", late: 2h}
steps: [{send: {channel: sms, template: hello}}]
"""
    write("journeys/bc.yaml", journey("bc", body))
    [result] = run_journeys(run)
    assert result["enrolled"] == 0
    assert "more than 2:00:00 late: not sent" in result["notes"][0]


def test_recurring_broadcast_enrols_everyone_again_at_each_occurrence(run, write, project):
    body = """entry: {schedule: "0 10 * * *"}
steps: [{send: {channel: sms, template: hello}}]
"""
    write("journeys/daily.yaml", journey("daily", body))
    [first] = run_journeys(run)
    assert first["enrolled"] == 6
    [same_day] = json.loads(run("journey", "run", "--now", "2026-11-15 18:00", "--json").stdout)
    assert same_day["enrolled"] == 0
    # Cron was down on the 16th and 17th: on the 18th only that day's occurrence is sent.
    [later] = json.loads(run("journey", "run", "--now", "2026-11-18 10:05", "--json").stdout)
    assert later["enrolled"] == 6
    assert {n for _, n in entered(project, "daily")} == {1, 2}
    occurrences = query(project / "cdp.db", "SELECT occurrence FROM journey_broadcasts")
    assert occurrences == [("2026-11-15T10:00:00+08:00",), ("2026-11-18T10:00:00+08:00",)]


def test_schedule_mistakes_name_the_line(run, write, project):
    write("journeys/bc.yaml", journey("bc", 'entry: {schedule: "0 25 * * *"}\nsteps: [end]\n'))
    result = run("journey", "validate")
    assert result.exit_code == 2
    assert "journeys/bc.yaml:2: entry.schedule: expected a time such as" in result.stderr
    write(
        "journeys/bc.yaml",
        journey("bc", 'entry: {schedule: "0 10 * * *", event: x}\nsteps: [end]\n'),
    )
    assert "a schedule takes an audience rule (when)" in run("journey", "validate").stderr


def test_global_control_group_gets_no_marketing_but_transactional_messages(run, write, project):
    config = (project / "cdp.yaml").read_text(encoding="utf-8")
    write("cdp.yaml", config + "control_group: {share: 50%, salt: t}\n")
    send = 'entry: {when: "city is not null"}\nsteps: [{send: {channel: sms, template: hello}}]\n'
    write("journeys/m.yaml", journey("m", send))
    write("journeys/t.yaml", journey("t", "transactional: true\n" + send))
    run_journeys(run)
    db = project / "cdp.db"
    control = dict(query(db, "SELECT one_id, control FROM journey_enrolments WHERE journey = 'm'"))
    assert set(control.values()) == {0, 1}  # 50% of six customers: some in, some out
    assert (
        dict(query(db, "SELECT one_id, control FROM journey_enrolments WHERE journey = 't'"))
        == control
    )
    for one_id, reason in query(db, "SELECT one_id, reason FROM messages WHERE journey = 'm'"):
        assert (reason == "control group") == bool(control[one_id])
    skipped_t = query(
        db, "SELECT count(*) FROM messages WHERE journey = 't' AND reason = 'control group'"
    )
    assert skipped_t == [(0,)]


def test_quiet_hours_follow_the_customers_own_timezone(run, write, project):
    write(
        "crm2.csv",
        "member,name,phone,email,city,appid,openid,device\nM7,Ann,+1 212 555 0100,,纽约,,,\n",
    )
    assert run("ingest", "crm2.csv", "-s", "crm").exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", "2026-11-15").exit_code == 0
    body = "entry: {when: \"city = '北京' or city = '纽约'\"}\nsteps: [{send: {channel: sms, template: hello}}]\n"
    write("journeys/q.yaml", journey("q", body))
    # 22:00 in Shanghai is 09:00 in New York: quiet for Beijing, not for New York.
    [night] = json.loads(run("journey", "run", "--now", "2026-11-15 22:00", "--json").stdout)
    assert (night["deferred"], night["sent"]) == (1, {"sms": 1})
    sent = query(project / "cdp.db", "SELECT address FROM messages WHERE status != 'skipped'")
    assert sent == [("+12125550100",)]
    due = query(
        project / "cdp.db", "SELECT next_at FROM journey_enrolments WHERE status = 'active'"
    )
    assert due == [("2026-11-16T09:00:00+08:00",)]


def test_batches_decide_exactly_as_one_pass(run, write, project, monkeypatch):
    from cdp_cli.messaging import engine

    body = """entry: {when: "city is not null"}
holdout: 20%
steps:
  - split:
      a: {share: 50%, steps: [{send: {channel: wechat, fallback: [sms], template: hello, coupon: TEST}}]}
      b: {share: 50%, steps: [{send: {channel: sms, template: hello}}]}
  - branch:
      when: "city = '武汉'"
      then: [{send: {channel: sms, template: hello}}]
"""
    write("journeys/s.yaml", journey("s", body))
    [whole] = json.loads(run("journey", "run", "--now", NOW, "--dry-run", "--json").stdout)
    monkeypatch.setattr(engine, "BATCH", 1)
    [one_by_one] = json.loads(run("journey", "run", "--now", NOW, "--dry-run", "--json").stdout)
    for result in (whole, one_by_one):
        result.pop("seconds")
    assert whole == one_by_one and whole["sent"]


def test_a_send_step_gives_each_message_its_own_tracked_link_and_qr(run, write, project):
    body = """entry: {when: "city = '武汉'"}
steps:
  - send:
      channel: sms
      template: hello
      link: {url: "https://hy.example.com/w?src=x", utm_campaign: spring, qr: true}
"""
    write("journeys/l.yaml", journey("l", body))
    run_journeys(run)
    rows = query(
        project / "cdp.db",
        "SELECT id, link_code, link_url, payload FROM messages WHERE status = 'written'",
    )
    assert len(rows) == 2 and len({r[1] for r in rows}) == 2
    for _, code, url, payload in rows:
        assert url == (
            "https://hy.example.com/w?src=x&utm_source=cdp&utm_medium=sms&utm_campaign=spring"
            f"&utm_content=steps%5B0%5D&c={code}"
        )
        assert url in json.loads(payload)["text"]  # the template's {{ link }} is the tracked URL
        assert (project / "outbound" / "qr" / "l" / f"{code}.png").read_bytes()[:4] == b"\x89PNG"
    [sms_file] = (project / "outbound" / "sms").glob("l-*.csv")
    with sms_file.open(encoding="utf-8") as f:
        links_in_file = [r["link"] for r in csv.DictReader(f)]
    assert sorted(links_in_file) == sorted(r[2] for r in rows)


def test_link_codes_are_lengthened_where_another_message_holds_one(run, write, project):
    from cdp_cli.messaging import links
    from cdp_cli.messaging.send import link_codes

    taken = links.short_code("j:1:s")
    db = project / "cdp.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO messages (id, run_id, journey, enrolment_id, one_id, step, status, "
        "created_at, link_code) VALUES ('other', 1, 'j', 9, 'x', 's', 'written', 'now', ?)",
        (taken,),
    )
    conn.commit()
    conn.close()

    class FakeRun:  # link_codes reads only the store
        def __init__(self, path):
            from cdp_cli.store import open_store

            self.db = open_store(path)

    codes = link_codes(FakeRun(db), ["j:1:s", "j:2:s"])
    assert codes["j:1:s"] == links.short_code("j:1:s", 9)
    assert codes["j:2:s"] == links.short_code("j:2:s")


def test_link_mistakes_name_the_line(run, write, project):
    body = 'entry: {when: "city = \'1\'"}\nsteps:\n  - send: {channel: sms, template: hello, link: {url: "ftp://x"}}\n'
    write("journeys/l.yaml", journey("l", body))
    result = run("journey", "validate")
    assert result.exit_code == 2
    assert "journeys/l.yaml:4: steps[0].send.link.url: expected an http(s) URL" in result.stderr


def test_sms_shows_the_short_link_when_the_brand_has_one(run, write, project):
    config = (project / "cdp.yaml").read_text(encoding="utf-8")
    config = config.replace(
        'url: "https://hy.example.com"}',
        'url: "https://hy.example.com", short_links: "https://hy.cn/s/"}',
    )
    write("cdp.yaml", config)
    body = 'entry: {when: "city = \'武汉\'"}\nsteps: [{send: {channel: wechat, fallback: [sms], template: hello, link: "https://hy.example.com/a"}}]\n'
    write("journeys/l.yaml", journey("l", body))
    run_journeys(run)
    rows = query(
        project / "cdp.db",
        "SELECT channel, link_code, link_url, payload FROM messages WHERE status = 'written'",
    )
    by_channel = {r[0]: r for r in rows}
    _, code, url, payload = by_channel["sms"]
    assert json.loads(payload)["text"].endswith(f" https://hy.cn/s/{code}") and url.startswith(
        "https://hy.example.com/a?"
    )
    _, code, url, payload = by_channel["wechat"]
    assert json.loads(payload)["url"] == url  # other channels carry the full tracked URL


def test_received_tells_who_got_the_first_message(run, write, project):
    body = """entry: {when: "city = '武汉' or city = '成都'"}
steps:
  - send: {channel: sms, template: hello}
  - wait: 1d
  - branch:
      when: "received"
      then: [{send: {channel: sms, template: hello}}]
"""
    write("journeys/r.yaml", journey("r", body))
    run_journeys(run)
    run("journey", "run", "--now", "2026-11-16 10:31", "--json")
    db = project / "cdp.db"
    second = {
        r[0] for r in query(db, "SELECT one_id FROM messages WHERE step = 'steps[2].then[0]'")
    }
    # M4 opted out of SMS and M5 has a landline: their first message was skipped.
    assert second == {member_one_id(project, m) for m in ("M1", "M6")}


def test_the_goal_window_opens_with_the_first_message(run, write, project):
    body = """entry: {when: "city = '北京'"}
goal: {event: order, within: 14d}
steps:
  - wait: {until: "12:00"}
  - send: {channel: sms, template: hello}
"""
    write("journeys/g.yaml", journey("g", body))
    run_journeys(run)  # 10:30: M2 enters and waits for noon
    write("orders2.csv", "order_id,member,amount,at\nO9,M2,50,2026-11-15 11:00:00\n")
    assert run("ingest", "orders2.csv", "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    [noon] = json.loads(run("journey", "run", "--now", "2026-11-15 12:00", "--json").stdout)
    assert noon["converted"] == 0 and noon["sent"] == {"sms": 1}  # ordered before the message
    write("orders3.csv", "order_id,member,amount,at\nO10,M2,50,2026-11-15 13:00:00\n")
    assert run("ingest", "orders3.csv", "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    [later] = json.loads(run("journey", "run", "--now", "2026-11-15 14:00", "--json").stdout)
    assert later["converted"] == 1


SHOP = "  shop:\n    kind: orders\n    key: order_id\n    fields: {order_id: order_id, phone: phone, amount: amount, ordered_at: at}\n"


def test_a_run_checks_conversions_since_the_last_one_as_a_check_of_everything_would(
    run, write, project
):
    """Each run converts exactly whom a check of every open enrolment against every order
    converts (a copy of the store whose runs recorded no goal): an order of a new batch (M2),
    one that arrives late, dated before the last run's clock (M1, enrolled before a member who
    joins later: M7, whose order comes the same day), one dated after that clock (M6), and an
    old order that a merge brings to an enrolled customer (M3, who gains the shop order's
    phone). Two journeys share one command's news only when they ask for the same."""
    write("cdp.yaml", CONFIG.replace("per_day: 1", "per_day: 2") + SHOP)  # g and g2 both send
    body = """entry: {when: "city is not null"}
goal: {event: order, within: 14d}
steps:
  - send: {channel: sms, template: hello}
  - wait: 1d
  - send: {channel: sms, template: hello}
"""
    write("journeys/g.yaml", journey("g", body))
    # g2 skips a day: its last check is older than g's, so it asks for more news than g does
    write("journeys/g2.yaml", journey("g2", body))
    store, everything = project / "cdp.db", project / "everything.db"
    days = {
        "2026-11-16 10:30": [
            ("orders", "order_id,member,amount,at\nO2,M2,50,2026-11-16 09:00:00\n"
             "O6,M6,80,2026-11-19 12:00:00\n"),
            ("shop", "order_id,phone,amount,at\nS1,13800000003,60,2026-11-16 08:00:00\n"),
            ("crm", "member,name,phone,email,city,appid,openid,device\n"
             "M7,王芳,13900000007,,广州,,,\n"),
        ],
        "2026-11-17 10:30": [("orders", "order_id,member,amount,at\nO7,M1,30,2026-11-16 09:30:00\n"
                              "O8,M7,40,2026-11-16 12:00:00\n")],
        "2026-11-20 10:30": [("crm", "member,name,phone,email,city,appid,openid,device\n"
                              "M3,张敏,13800000003,,上海,,,\n")],
    }  # fmt: skip
    converted, only_g = [], {"2026-11-17 10:30": ["g"]}
    for day, files in [(NOW, []), *days.items()]:
        for number, (source, text) in enumerate(files):
            write(f"{source}-{number}.csv", text)
            assert run("ingest", f"{source}-{number}.csv", "-s", source).exit_code == 0
        assert run("resolve").exit_code == 0
        assert run("tag", "--as-of", day[:10]).exit_code == 0  # a member who joins enters that day
        with sqlite3.connect(store) as original, sqlite3.connect(everything) as copy:
            original.backup(copy)  # with what the WAL holds
            copy.execute("UPDATE journey_runs SET goal = NULL")
        checks = []
        for db in (everything, store):
            result = run("--db", str(db), "journey", "run", *only_g.get(day, []), "--now", day,
                         "--json")  # fmt: skip
            assert result.exit_code == 0, result.output
            checks.append(query(db, "SELECT id, converted_at FROM journey_enrolments ORDER BY id"))
        assert checks[0] == checks[1], day
        with sqlite3.connect(store) as conn:  # this test's days pass within a second
            conn.execute("UPDATE identity_keys SET resolved_at = '2026-01-01T00:00:00+00:00'")
        converted.append({r["journey"]: r["converted"] for r in json.loads(result.stdout)}["g"])
    assert converted == [0, 1, 2, 2]  # M2 by its new order; M1 by a late one, and M7; M6, M3
    assert {
        member
        for member in ("M1", "M2", "M3", "M6", "M7")
        if query(store, "SELECT converted_at FROM journey_enrolments WHERE journey = 'g' "
                 "AND one_id = ?", member_one_id(project, member))[0][0]
    } == {"M1", "M2", "M3", "M6", "M7"}  # fmt: skip


def test_dry_run_shows_who_would_get_what(run, write, project):
    body = "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n"
    write("journeys/d.yaml", journey("d", body))
    result = run("journey", "run", "--now", NOW, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "# Would send (the first 2 of 2)" in result.stdout
    lines = result.stdout.splitlines()
    shown = [line for line in lines if line.startswith("d ") and "【花漾】" in line]
    assert len(shown) == 2 and all("sms" in line for line in shown)


def test_a_run_reads_only_the_feature_and_profile_columns_its_templates_print(run, write, project):
    write(
        "templates/sms/feat.txt",
        "【花漾】{{ customer.name|default_name }} {{ features.order_count }}",
    )
    write(
        "journeys/f.yaml",
        journey("f", "entry: {when: \"city = '武汉'\"}\nsteps: [{send: {channel: sms, template: feat}}]\n"),
    )  # fmt: skip
    result, statements = traced_run(project, "f")
    assert result.sent == {"sms": 2}
    reads = [s for s in statements if "FROM profile_features WHERE one_id IN" in s]
    assert reads and all(s.startswith('SELECT "one_id", "order_count" FROM') for s in reads), reads
    profiles = [s for s in statements if "FROM profiles WHERE one_id IN" in s]
    assert profiles and all(s.startswith("SELECT one_id, name FROM") for s in profiles), profiles
    counts = query(project / "cdp.db", "SELECT order_count FROM profile_features ORDER BY 1")
    texts = query(
        project / "cdp.db",
        "SELECT payload FROM messages WHERE journey = 'f' AND status != 'skipped'",
    )
    printed = {json.loads(t)["text"].rsplit(" ", 1)[1] for (t,) in texts}
    assert printed and printed <= {str(c) for (c,) in counts}


def test_an_enrolment_is_written_once_where_the_run_leaves_it(run, write, project):
    """Customers entering a run are inserted at the step where they stop (here the wait after
    their message), never inserted at the first step and updated; ids follow the largest."""
    write("journeys/o.yaml", journey("o", "entry: {when: \"city = '武汉'\"}\nsteps: [end]\n"))
    run_journeys(run, "o")  # three enrolments before
    body = 'entry: {when: "city is not null"}\nsteps:\n  - send: {channel: sms, template: hello}\n  - wait: 2d\n'
    write("journeys/w.yaml", journey("w", body))
    result, statements = traced_run(project, "w")
    assert result.enrolled == 6
    writes = [
        s.split(" (")[0]
        for s in statements
        if "journey_enrolments" in s and not s.startswith("SELECT")
    ]
    assert writes == ["INSERT INTO journey_enrolments"] * 6, writes
    rows = query(
        project / "cdp.db",
        "SELECT id, enrolment, status, step, waiting, next_at, entered_at, ended_at "
        "FROM journey_enrolments WHERE journey = 'w' ORDER BY id",
    )
    assert [r[0] for r in rows] == [4, 5, 6, 7, 8, 9]
    assert {r[1:] for r in rows} == {
        (1, "active", "steps[1]", 1, "2026-11-17T10:30:00+08:00", "2026-11-15T10:30:00+08:00", None)
    }


def test_validate_and_run_refuse_the_same_channel_settings(run, write, project):
    """Channel settings are read with cdp.yaml: `journey validate` refuses what `run` would."""
    write("cdp.yaml", CONFIG.replace('quiet_hours: "21:00-09:00"', 'quiet_hours: "9pm to 9am"'))
    write("journeys/j.yaml", journey("j", "entry: {when: \"city = '武汉'\"}\nsteps: [end]\n"))
    expected = (
        "Error: cdp.yaml:5: channels.sms.quiet_hours: expected a window such as 21:00-09:00, "
        "got '9pm to 9am'"
    )
    for command in (["journey", "validate"], ["journey", "run", "--now", NOW]):
        result = run(*command)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == expected


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  wechat: {appid: wx1, cost: 0}", "  wechat: {appid: wx1, cost: free}",
         "cdp.yaml:6: channels.wechat.cost: expected a number, got 'free'"),
        ("  wechat: {appid: wx1, cost: 0}", "  wechat: {appid: wx1, cots: 0}",
         "cdp.yaml:6: channels.wechat: unknown key 'cots' (did you mean 'cost'?)"),
        ("  sms: {quiet_hours", "  smss: {quiet_hours",
         "cdp.yaml:5: channels: unknown channel 'smss' (did you mean 'sms'?)"),
        ("  sms: {quiet_hours", "  短信: {quiet_hours",
         "cdp.yaml:5: channels: unknown channel '短信' (did you mean 'sms'?); channels are sms, "
         "email, wechat, push"),
        ("  sms: {quiet_hours: \"21:00-09:00\", cost: 0.04}",
         "  sms: {quiet_hours: \"21:00-09:00\", appid: wx1}",
         "cdp.yaml:5: channels.sms: unknown key 'appid'"),
        ("frequency_cap: {per_day: 1, per_week: 3}", "frequency_cap: {per_day: one}",
         "cdp.yaml:7: frequency_cap.per_day: expected a whole number"),
        ("frequency_cap: {per_day: 1, per_week: 3}", "control_group: {share: 150%}",
         "cdp.yaml:7: control_group.share: expected a share such as 5%, got '150%'"),
        ("brand: {name: 花漾, url: \"https://hy.example.com\"}", "brand: 花漾",
         "cdp.yaml:3: brand: expected a mapping"),
    ],
)  # fmt: skip
def test_channel_settings_mistakes_name_the_line(run, write, project, old, new, message):
    assert old in CONFIG
    write("cdp.yaml", CONFIG.replace(old, new))
    result = run("journey", "validate")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


EXPIRING = (
    "code,campaign,status,value,expires\n"
    "S1,SOON,available,20,2026-11-10 23:59:59\n"  # expired before the send
    "S2,SOON,available,20,2026-11-16 23:59:59\n"  # a day and a half left at NOW
    "S3,SOON,available,20,2026-11-19 23:59:59\n"  # four days and a half left
    "S4,SOON,issued,20,2027-01-31 23:59:59\n"
)


def test_a_pool_never_issues_a_code_expired_or_expiring_within_min_days_left(run, write, project):
    write("expiring.csv", EXPIRING)
    assert run("ingest", "expiring.csv", "-s", "coupons").exit_code == 0
    steps = "steps:\n  - send: {channel: sms, template: hello, coupon: SOON}\n"
    write("journeys/a.yaml", journey("a", "entry: {when: \"city = '武汉'\"}\n" + steps))
    write("journeys/b.yaml", journey("b", "entry: {when: \"city = '北京'\"}\n" + steps.replace(
        "coupon: SOON", "coupon: {pool: SOON, min_days_left: 5}")))  # fmt: skip
    write("journeys/c.yaml", journey("c", "entry: {when: \"city = '成都'\"}\n" + steps.replace(
        "coupon: SOON", "coupon: {pool: SOON, min_days_left: 0}")))  # fmt: skip
    results = {r["journey"]: r for r in run_journeys(run)}
    a, b, c = messages(project, "a"), messages(project, "b"), messages(project, "c")
    # M1 (武汉) draws S3 (valid 4.5 days, over the default 3); M6 finds none valid for 3 days.
    assert a["M1"] == ("sms", "written", None, "S3")
    assert a["M6"][1:3] == ("skipped", "coupon pool SOON has no code valid for 3 more days")
    assert results["a"]["notes"] == [
        "coupon pool SOON has no code valid for 3 more days: those sends were skipped"
    ]
    assert b["M2"][1:3] == ("skipped", "coupon pool SOON has no code valid for 5 more days")
    assert c["M4"][1:] == ("skipped", "opted out (sms: opted out)", None)  # M4 opted out of SMS
    issued = query(project / "cdp.db", "SELECT code FROM coupon_issues ORDER BY code")
    assert issued == [("S3",)]  # never S1 (expired) nor S2 (expiring within 3 days)


def test_a_coupon_step_says_what_is_wrong_with_its_coupon(run, write, project):
    write("journeys/j.yaml", journey("j", "entry: {when: \"city = '武汉'\"}\nsteps:\n"
          "  - send: {channel: sms, template: hello, coupon: {pool: TEST, min_days_left: -1}}\n"))  # fmt: skip
    result = run("journey", "validate")
    assert result.exit_code == 2
    assert "steps[0].send.coupon.min_days_left: expected a whole number of days, 0 or more" in (
        result.stderr
    )


def test_validate_warns_when_a_pool_holds_fewer_codes_than_the_journey_would_reach(
    run, write, project
):
    write("later.csv", "code,campaign,status,value,expires\n"
          "L1,LATER,available,20,2099-12-31 23:59:59\nL2,LATER,available,20,2099-12-31\n")  # fmt: skip
    assert run("ingest", "later.csv", "-s", "coupons").exit_code == 0
    write("journeys/w.yaml", journey("w", "entry: {when: \"city = '武汉'\"}\nsteps:\n"
          "  - send: {channel: sms, template: hello, coupon: LATER}\n"))  # fmt: skip
    write("journeys/bj.yaml", journey("bj", "entry: {when: \"city = '北京'\"}\nsteps:\n"
          "  - send: {channel: sms, template: hello, coupon: LATER}\n"))  # fmt: skip
    result = run("journey", "validate", "--json")
    assert result.exit_code == 0, result.output
    warnings = {j["journey"]: j["warnings"] for j in json.loads(result.stdout)}
    # 武汉: M1, M5, M6, three customers for two codes; 北京: M2 alone, one for two.
    assert warnings == {"w": [
        "journey w, step steps[0]: coupon pool LATER has 2 codes valid for 3 more days, "
        "fewer than the 3 customers the journey would enrol now"], "bj": []}  # fmt: skip
    assert (
        "Warning: journey w, step steps[0]: coupon pool LATER has 2 codes"
        in run("journey", "validate").stderr
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The shipped project on the sample data, ingested, resolved and tagged; no journey run."""
    from tests.ops_helpers import sample_tagged_once

    return sample_tagged_once(tmp_path_factory)


def sample_copy(sample, tmp_path) -> Path:
    folder = tmp_path / "project"
    shutil.copytree(sample, folder)
    return folder


def test_a_dry_run_predicts_exactly_what_the_run_sends_on_the_sample(sample, tmp_path):
    from tests.ops_helpers import cdp

    folder = sample_copy(sample, tmp_path)
    dry = cdp(folder, "journey", "run", "--now", NOW, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    predicted = sorted(
        (m["one_id"], r["journey"], m["step"], m["channel"])
        for r in json.loads(dry.stdout)
        for m in r["messages"]
    )
    counted = sum(sum(r["sent"].values()) for r in json.loads(dry.stdout))
    assert counted == len(predicted)  # every message is listed, none only counted
    assert query(folder / "cdp.db", "SELECT count(*) FROM messages") == [(0,)]
    real = cdp(folder, "journey", "run", "--now", NOW, "--json")
    assert real.returncode == 0, real.stderr
    sent = sorted(query(folder / "cdp.db", "SELECT one_id, journey, step, channel FROM messages "
                        "WHERE status != 'skipped'"))  # fmt: skip
    assert len(sent) > 100  # journeys of the sample that share the frequency cap
    assert predicted == sent


def test_the_sample_sends_no_marketing_push_or_wechat_in_quiet_hours(sample, tmp_path):
    """Every channel has quiet hours for marketing, in the customer's timezone; at 05:03 the
    sample's push and WeChat messages wait until 09:00, and go then."""
    from tests.ops_helpers import cdp

    folder = sample_copy(sample, tmp_path)
    early = cdp(folder, "journey", "run", "--now", "2026-11-15 05:03", "--json")
    assert early.returncode == 0, early.stderr
    assert all(not r["sent"] for r in json.loads(early.stdout))
    assert sum(r["deferred"] for r in json.loads(early.stdout)) > 0
    later = cdp(folder, "journey", "run", "--now", "2026-11-15 09:00", "--json")
    sent = {c for r in json.loads(later.stdout) for c, n in r["sent"].items() if n}
    assert {"push", "wechat"} <= sent


def test_quiet_hours_off_and_transactional_messages_on_channels_without_their_own(
    run, write, project
):
    write("templates/push/hello.json", '{"title": "嗨", "body": "你好", "device": "{{ device }}"}')
    write("crm_push.csv", "member,name,phone,email,city,appid,openid,device\n"
          "P1,推,,,南京,,,DEVICE-0001\nP2,送,,,南京,,,DEVICE-0002\n")  # fmt: skip
    assert run("ingest", "crm_push.csv", "-s", "crm").exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag", "--as-of", "2026-11-15").exit_code == 0
    steps = "entry: {when: \"city = '南京'\"}\nsteps:\n  - send: {channel: push, template: hello}\n"
    write("journeys/m.yaml", journey("m", steps))
    write("journeys/t.yaml", journey("t", "transactional: true\n" + steps))
    [m, t] = sorted(run_journeys(run, "--now", "2026-11-15 23:00")[0:2], key=lambda r: r["journey"])
    assert (m["journey"], m["deferred"], m["sent"]) == ("m", 2, {})  # marketing waits
    assert (t["journey"], t["sent"]) == ("t", {"push": 2})  # transactional does not
    write(
        "cdp.yaml",
        CONFIG.replace(
            "  wechat: {appid: wx1", "  push: {quiet_hours: off}\n  wechat: {appid: wx1"
        ),
    )
    write("journeys/m2.yaml", journey("m2", steps))  # m's messages wait until 09:00 already
    [again] = run_journeys(run, "m2", "--now", "2026-11-15 23:30")
    assert again["sent"] == {"push": 2}


def test_a_reminder_never_prints_a_coupon_that_has_expired_since(run, write, project):
    write("expiring.csv", "code,campaign,status,value,expires\n"
          "R1,REMIND,available,20,2026-11-19 23:59:59\nR2,REMIND,available,20,2026-11-19 23:59:59\n")  # fmt: skip
    assert run("ingest", "expiring.csv", "-s", "coupons").exit_code == 0
    write("templates/sms/plain.txt", "【花漾】{{ customer.name|default_name }}，新品上市")
    write("journeys/r.yaml", journey("r", "entry: {when: \"city = '北京'\"}\nsteps:\n"
          "  - send: {channel: sms, template: hello, coupon: REMIND}\n"
          "  - wait: 7d\n"
          "  - send: {channel: sms, template: hello}\n"
          "  - send: {channel: sms, template: plain}\n"))  # fmt: skip
    write("cdp.yaml", CONFIG.replace("frequency_cap: {per_day: 1, per_week: 3}", ""))
    run_journeys(run)
    run_journeys(run, "--now", "2026-11-22 10:30")
    rows = query(project / "cdp.db", "SELECT step, status, reason, coupon_code FROM messages "
                 "WHERE journey = 'r' ORDER BY step")  # fmt: skip
    assert rows == [
        ("steps[0]", "written", None, "R1"),
        ("steps[2]", "skipped", "coupon expired (the code an earlier step sent, R1)", None),
        ("steps[3]", "written", None, "R1"),  # prints no coupon: goes (the code kept, as before)
    ]


def test_status_names_steps_and_shows_who_waits_for_quiet_hours(run, write, project):
    write(
        "journeys/q.yaml",
        journey(
            "q",
            "entry: {when: \"city = '北京'\"}\nsteps:\n"
            "  - name: night_sms\n    send: {channel: sms, template: hello}\n",
        ),
    )
    assert run("journey", "run", "--now", "2026-11-15 22:00").exit_code == 0
    status = json.loads(run("journey", "status", "q", "--json").stdout)
    assert status["active_at"] == {"night_sms": 1}
    assert status["waiting"] == [
        {"step": "night_sms", "reason": "quiet hours", "customers": 1,
         "until": "2026-11-16T09:00:00+08:00"}
    ]  # fmt: skip
    text = run("journey", "status", "q").stdout
    assert "Waiting at a send step" in text and "quiet hours" in text
    assert run("journey", "run", "--now", "2026-11-16 09:00").exit_code == 0
    status = json.loads(run("journey", "status", "q", "--json").stdout)
    assert status["waiting"] == []
    assert [(s["step"], s["sent"]) for s in status["steps"]] == [("night_sms", {"sms": 1})]
    report = json.loads(run("report", "journey", "q", "--json").stdout)
    assert [s["step"] for s in report["steps"]] == ["night_sms"]


def test_a_step_name_is_checked_like_other_names(run, write, project):
    body = (
        "entry: {when: \"city = '北京'\"}\nsteps:\n"
        "  - name: NAME\n    send: {channel: sms, template: hello}\n"
    )
    write("journeys/q.yaml", journey("q", body.replace("NAME", "'bad name'")))
    result = run("journey", "validate")
    assert result.exit_code != 0
    assert "steps[0].name must be" in result.stderr
    write("journeys/q.yaml", journey("q", (body + body.split("steps:\n")[1]).replace("NAME", "a")))
    result = run("journey", "validate")
    assert "steps[1]: name 'a' is taken by steps[0]" in result.stderr


def test_status_of_no_such_journey_says_so(run, write, project):
    result = run("journey", "status", "nosuch")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no journey named 'nosuch'" in result.stderr
    write("journeys/hello.yaml", journey("hello", "entry: {when: \"city = '1'\"}\nsteps: [end]\n"))
    for command in (["journey", "status"], ["journey", "run", "--dry-run"]):
        typo = run(*command, "Helo")
        assert typo.exit_code == 1
        assert typo.stderr.endswith("(did you mean 'hello'?)\n"), typo.stderr


# ---------------------------------------------------------------------------------------------
# The project's fault is not the customer's: validate refuses it; a run holds the customer
# at the step (no message recorded, the step not used up), exits 1, and sends after the fix


def enrolment_steps(project, name):
    return query(
        project / "cdp.db",
        "SELECT one_id, status, step FROM journey_enrolments WHERE journey = ? ORDER BY 1",
        name,
    )


def test_a_typo_in_a_coupon_pool_holds_customers_until_it_is_fixed(run, write, project):
    body = "entry: {when: \"city = '北京'\"}\nsteps:\n  - send: {channel: sms, template: hello, coupon: TSET}\n"
    write("journeys/typo.yaml", journey("typo", body))
    problem = (
        "coupon pool TSET does not exist: the coupons source holds no code of that campaign "
        "(did you mean 'TEST'?)"
    )
    validated = run("journey", "validate")
    assert validated.exit_code == 2
    assert f"journey typo, step steps[0]: {problem}" in validated.stderr
    result = run("journey", "run", "--now", NOW, "--json")
    assert result.exit_code == 1
    [summary] = json.loads(result.stdout)
    assert summary["held"] == {problem: 1} and summary["skipped"] == {}
    assert result.stderr.strip().splitlines() == [
        f"Error: journey typo: 1 customers wait at their step: {problem}; fix it and run again"
    ]
    assert messages(project, "typo") == {}  # nothing recorded: the step is not used up
    assert enrolment_steps(project, "typo") == [
        (member_one_id(project, "M2"), "active", "steps[0]")
    ]
    status = json.loads(run("journey", "status", "typo", "--json").stdout)
    assert status["waiting"] == [{"step": "steps[0]", "reason": problem, "customers": 1,
                                  "until": "2026-11-15T10:30:00+08:00"}]  # fmt: skip
    write("journeys/typo.yaml", journey("typo", body.replace("TSET", "TEST")))
    assert run("journey", "validate").exit_code == 0
    [fixed] = run_journeys(run)
    assert fixed["sent"] == {"sms": 1} and fixed["held"] == {}
    assert messages(project, "typo")["M2"] == ("sms", "written", None, "C1")


def test_a_placeholder_wechat_template_id_holds_its_customers_alone(run, write, project):
    write("templates/wechat/notice.json", WECHAT.replace('"T1"', '"REPLACE_ME_notice"'))
    write("templates/sms/notice.txt", TEMPLATE)
    body = "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: wechat, fallback: [sms], template: notice, coupon: TEST}\n"
    write("journeys/ph.yaml", journey("ph", body))
    problem = (
        "template wechat/notice: template_id REPLACE_ME_notice is a placeholder "
        "(replace it with your official account's template ID)"
    )
    validated = run("journey", "validate")
    assert validated.exit_code == 2 and problem in validated.stderr
    result = run("journey", "run", "--now", NOW, "--json")
    assert result.exit_code == 1 and problem in result.stderr
    sent = messages(project, "ph")
    # M1 (an openid) waits; M6 goes by SMS; M5 (a landline) is skipped, the customer's lot.
    assert "M1" not in sent
    assert sent["M6"][:2] == ("sms", "written")
    assert sent["M5"][1] == "skipped"
    issued = query(project / "cdp.db", "SELECT code FROM coupon_issues ORDER BY code")
    assert issued == [("C1",)]  # the code drawn for M1 went back to the pool
    write("templates/wechat/notice.json", WECHAT)
    [fixed] = run_journeys(run)
    assert fixed["sent"] == {"wechat": 1} and fixed["held"] == {}
    assert messages(project, "ph")["M1"] == ("wechat", "written", None, "C2")


def _paths(steps: tuple) -> list[list]:
    """Every sequence of send steps one customer can go down."""
    from cdp_cli.messaging.journeys import Branch, Send, Split

    paths: list[list] = [[]]
    for step in steps:
        if isinstance(step, Send):
            paths = [[*p, step] for p in paths]
        elif isinstance(step, Branch):
            tails = _paths(step.then) + _paths(step.otherwise)
            paths = [[*p, *t] for p in paths for t in tails]
        elif isinstance(step, Split):
            tails = [t for _, _, sub in step.variants for t in _paths(sub)]
            paths = [[*p, *t] for p in paths for t in tails]
    return paths


def test_no_shipped_journey_can_send_a_customer_the_same_sms_twice():
    """Welcome's follow-up fell back to the welcome SMS that its first step may have sent."""
    from cdp_cli.messaging.journeys import load_journeys

    journeys = load_journeys(REPO / "journeys")
    assert "welcome" in journeys
    for journey in journeys.values():
        for path in _paths(journey.steps):
            sms = [s.template for s in path if "sms" in (s.channel, *s.fallback)]
            assert len(sms) == len(set(sms)), f"{journey.name} may send SMS {sms} twice"


# ---------------------------------------------------------------------------------------------
# A tag value the tag never takes enrols no one, without an error: validate warns


def test_validate_warns_of_tag_values_the_tag_never_takes(run, write, project):
    write(
        "tag_rules/life.yaml",
        "- name: lifecycle\n  cases:\n"
        "    - {value: active, when: \"city = '北京'\"}\n"
        "    - {value: at_risk, when: \"city = '武汉'\"}\n",
    )
    write(
        "journeys/typo.yaml",
        journey(
            "typo",
            "entry: {when: \"tag('lifecycle') = 'at_rsk' or tag('wuhan') = 'yes'\"}\n"
            "steps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    write(
        "journeys/change.yaml",
        journey(
            "change",
            "entry: {tag: lifecycle, value: actve}\nsteps:\n"
            "  - branch: {when: \"tag('lifecycle') in ('active', 'churned')\", then: [{end: {}}]}\n"
            "  - send: {channel: sms, template: hello}\n",
        ),
    )
    result = run("journey", "validate", "--json")
    assert result.exit_code == 0, result.output
    warnings = {j["journey"]: j["warnings"] for j in json.loads(result.stdout)}
    assert warnings["typo"] == [
        "journey typo, entry: tag lifecycle never takes the value 'at_rsk' (did you mean "
        "'at_risk'?); its values: active, at_risk",
        "journey typo, entry: tag wuhan never takes the value 'yes'; its values: true",
    ]
    assert warnings["change"] == [
        "journey change, steps[0]: tag lifecycle never takes the value 'churned'; "
        "its values: active, at_risk",
        "journey change, entry: tag lifecycle never takes the value 'actve' (did you mean "
        "'active'?); its values: active, at_risk",
    ]
    assert "Warning: journey typo, entry: tag lifecycle never takes" in result.stderr
    write(
        "journeys/typo.yaml",
        journey(
            "typo",
            "entry: {when: \"tag('lifecycle') = 'at_risk'\"}\nsteps:\n  - send: {channel: sms, template: hello}\n",
        ),
    )
    fixed = json.loads(run("journey", "validate", "--json").stdout)
    assert [j["warnings"] for j in fixed if j["journey"] == "typo"] == [[]]


def test_the_shipped_journeys_name_only_tag_values_their_tags_take():
    from cdp_cli.config import load_config
    from cdp_cli.messaging.engine import journey_tag_value_warnings
    from cdp_cli.messaging.journeys import load_journeys

    config = load_config(REPO / "cdp.yaml")
    journeys = list(load_journeys(config.journeys_folder).values())
    assert journeys and journey_tag_value_warnings(config, journeys) == {}


def test_a_template_that_fails_for_everyone_holds_them_until_it_is_fixed(run, write, project):
    """`journey validate` renders with a sample customer who has a coupon; a step without
    one fails for every real customer: the project's fault, so they wait at the step."""
    write(
        "templates/sms/code.txt", "【花漾】{{ customer.name|default_name }}，券码{{ coupon.code }}"
    )
    body = "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: code}\n"
    write("journeys/nocode.yaml", journey("nocode", body))
    assert run("journey", "validate").exit_code == 0
    result = run("journey", "run", "--now", NOW, "--json")
    assert result.exit_code == 1, result.output
    [summary] = json.loads(result.stdout)
    problem = "template templates/sms/code.txt:1: undefined: 'None' has no attribute 'code'"
    assert summary["held"] == {problem: 2} and summary["sent"] == {}
    assert f"journey nocode: 2 customers wait at their step: {problem}" in result.stderr
    assert set(messages(project, "nocode")) == {"M5"}  # a landline: unreachable, the customer's lot
    status = json.loads(run("journey", "status", "nocode", "--json").stdout)
    assert [(w["reason"], w["customers"]) for w in status["waiting"]] == [(problem, 2)]
    write(
        "templates/sms/code.txt",
        "【花漾】{{ customer.name|default_name }}{% if coupon %}，券码{{ coupon.code }}{% endif %}",
    )
    [fixed] = run_journeys(run)
    assert fixed["sent"] == {"sms": 2} and fixed["held"] == {}


def test_a_template_that_fails_for_some_customers_skips_their_messages(run, write, project):
    """Where it renders for others, a failure comes from the customer's own data (M6 has no
    order to print): that message is skipped with the reason, the others go."""
    write("templates/sms/last.txt", "【花漾】上次购买：{{ features.last_order_at[:10] }}")
    body = "entry: {when: \"city = '武汉'\"}\nsteps:\n  - send: {channel: sms, template: last}\n"
    write("journeys/last.yaml", journey("last", body))
    [summary] = run_journeys(run)
    assert summary["sent"] == {"sms": 1} and summary["held"] == {}
    sent = messages(project, "last")
    assert sent["M1"][1] == "written"
    assert sent["M6"][1] == "skipped" and sent["M6"][2].startswith("template: ")


def test_recent_goal_events_are_kept_only_for_a_journey_that_asks_for_no_more(run, write, project):
    """The recent goal events one journey read are reused by the next journey of the command
    only when they hold all it asks for: an older day or an earlier batch reads them again."""
    from cdp_cli.messaging.conversions import RECENT, _Recent, forget_kept, goal_events
    from cdp_cli.store import open_store

    write("o2.csv", "order_id,member,amount,at\nO2,M2,50,2026-11-10 09:00:00\n")
    write("o3.csv", "order_id,member,amount,at\nO3,M3,50,2026-11-14 09:00:00\n")
    for name in ("o2.csv", "o3.csv"):
        assert run("ingest", name, "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    db = open_store(project / "cdp.db")
    batch = db.conn.execute("SELECT max(id) FROM batches").fetchone()[0]
    recent = _Recent(db.conn, *goal_events("order"), batch)

    def held() -> set[str]:
        ats = db.conn.execute(f"SELECT substr(at, 1, 10) FROM {RECENT}").fetchall()
        return {a for (a,) in ats}

    recent.cover(batch, "2026-11-14")
    assert held() == {"2026-11-14"}
    recent.cover(batch, "2026-11-01")  # an older day
    assert held() == {"2026-11-10", "2026-11-14"}
    recent.cover(batch, "2026-11-14")  # asks for less: kept
    assert held() == {"2026-11-10", "2026-11-14"}
    recent.cover(batch - 1, "2026-11-14")  # an earlier batch: read again, as much as before
    assert held() == {"2026-11-10", "2026-11-14"}
    recent.cover(0, "2026-11-14")  # every batch: the fixture's order of June too
    assert held() == {"2026-06-01", "2026-11-10", "2026-11-14"}
    write("o4.csv", "order_id,member,amount,at\nO4,M4,50,2026-11-15 09:00:00\n")
    assert run("ingest", "o4.csv", "-s", "orders").exit_code == 0
    assert run("resolve").exit_code == 0
    forget_kept(db.conn)  # a later command on the same connection reads them again
    recent.cover(0, "2026-11-14")
    assert held() == {"2026-06-01", "2026-11-10", "2026-11-14", "2026-11-15"}
    db.conn.close()


def test_customers_whose_keys_moved_are_kept_only_for_a_journey_that_asks_for_no_more(project):
    from cdp_cli.messaging.conversions import MOVED, _cover_moved
    from cdp_cli.store import open_store

    db = open_store(project / "cdp.db")
    conn = db.conn
    conn.execute("UPDATE identity_keys SET resolved_at = '2026-01-01T00:00:00+00:00'")
    for member, at in [("M2", "2026-06-01T00:00:00+00:00"), ("M3", "2026-09-01T08:00:00+08:00")]:
        conn.execute(
            "UPDATE identity_keys SET resolved_at = ? WHERE one_id = ?",
            (at, member_one_id(project, member)),
        )

    def moved(since: str) -> set[str]:
        _cover_moved(conn, since)
        rows = conn.execute(f"SELECT one_id FROM {MOVED} WHERE at >= julianday(?)", (since,))
        names = {member_one_id(project, m): m for m in ("M1", "M2", "M3", "M4", "M5", "M6")}
        return {names[one_id] for (one_id,) in rows}

    assert moved("2026-08-31T23:00:00+00:00") == {"M3"}  # 08:00 in Shanghai is midnight UTC
    assert moved("2026-09-01T01:00:00+00:00") == set()
    assert moved("2026-05-01T00:00:00+00:00") == {"M2", "M3"}  # an older time: read again
    assert moved("2026-08-01T00:00:00+00:00") == {"M3"}
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert moved("2026-01-01T00:00:00+00:00") == {"M1", "M2", "M3", "M4", "M5", "M6"}
    conn.set_trace_callback(None)
    [fill] = [s for s in statements if s.startswith(f"INSERT INTO {MOVED}")]
    plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {fill}"))
    assert "SCAN identity_keys" in plan, plan  # one pass, not every key's row in one_id order
    conn.close()


def test_entry_and_exit_rules_read_tags_as_sets_from_the_tag_index(run, write, project):
    """Over the whole base, a tag is one read of the (tag, value) index, as in a segment,
    not a lookup per customer; the same customers enter."""
    body = (
        "entry: {when: \"tag('wuhan') = 'true'\"}\n"
        "exit: \"has_tag('wuhan') and city = '北京'\"\n"
        "steps: [{send: {channel: sms, template: hello}}]\n"
    )
    write("journeys/w.yaml", journey("w", body))
    result, statements = traced_run(project, "w")
    assert result.enrolled == 3  # the fixture's three members in Wuhan
    rules = [s for s in statements if "FROM profiles p JOIN profile_features f" in s]
    assert len(rules) == 2 and all("p.one_id IN (SELECT t.one_id FROM profile_tags t" in s
                                   for s in rules), rules  # fmt: skip
    assert not any("WHERE t.one_id = p.one_id" in s for s in rules)
