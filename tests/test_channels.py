"""The channel registry: every channel's facts in one place, the payloads its builders make,
and one addressing rule that the send step and the reports' reachable counts both follow."""

from __future__ import annotations

import json

import pytest

from cdp_cli.errors import TemplateError
from cdp_cli.messaging.channels import (
    ADDRESS_TYPES,
    CHANNEL_NAMES,
    CHANNELS,
    CONSENT_CHANNELS,
    Rendered,
    email_message,
    opted_out_channels,
)
from cdp_cli.messaging.links import short_code, unsubscribe_url
from tests.conftest import query

CONFIG = """
store: cdp.db
brand: {name: 花漾, url: "https://hy.example.com"}
channels:
  sms: {cost: 0.04}
  wechat: {appid: wx1, cost: 0}
sources:
  crm:
    kind: customers
    key: member
    fields: {member_no: member, name: name, phone: phone, wechat_appid: appid,
             wechat_openid: openid}
"""
# W1 follows the sending account; W2's openid is for 'WX1', another account as far as WeChat
# (and the send step) is concerned; W3 follows a third account; W4 has no openid at all.
CRM = """member,name,phone,appid,openid
W1,李娜,13800000001,wx1,oOne
W2,王芳,13800000002,WX1,oTwo
W3,张敏,13800000003,wx2,oThree
W4,刘洋,13800000004,,
"""
WECHAT = """{"touser": "{{ wechat.openid }}", "template_id": "T1", "url": "{{ link }}",
 "data": {"thing1": {"value": "{{ customer.name|default_name }}"}}}
"""


def test_every_channel_has_all_its_facts() -> None:
    assert CHANNEL_NAMES == ("sms", "email", "wechat", "push")
    assert CONSENT_CHANNELS == ("sms", "email", "wechat", "push", "all")
    assert ADDRESS_TYPES == ("phone", "email", "wechat_openid", "device_id")
    facts = {
        name: (c.address_type, c.file_format, dict(c.parts), c.file_columns)
        for name, c in CHANNELS.items()
    }
    assert facts == {
        "sms": ("phone", "csv", {"text": ".txt"}, ("text", "segments", "encoding")),
        "email": (
            "email", "jsonl", {"subject": ".subject.txt", "html": ".html", "text": ".txt"}, (),
        ),
        "wechat": ("wechat_openid", "jsonl", {"json": ".json"}, ()),
        "push": ("device_id", "jsonl", {"json": ".json"}, ()),
    }  # fmt: skip
    for channel in CHANNELS.values():
        assert channel.file_format in ("csv", "jsonl")
        assert (channel.file_format == "csv") == bool(channel.file_columns)
        assert channel.suffixes() == sorted(set(channel.parts.values()), key=len, reverse=True)
    assert CHANNELS["email"].suffixes()[0] == ".subject.txt"  # matched before .txt
    assert opted_out_channels("all") == CHANNEL_NAMES
    assert opted_out_channels("sms") == ("sms",)


@pytest.mark.parametrize(
    ("channel", "type_name", "value", "detail", "appid", "reaches"),
    [
        ("sms", "phone", "+8613800000001", "mobile", None, True),
        ("sms", "phone", "+862787654321", "fixed_line", None, False),  # a landline
        ("sms", "phone", "+8613800000001", "fixed_line_or_mobile", None, True),
        ("sms", "email", "li@qq.com", None, None, False),
        ("email", "email", "li@qq.com", None, "wx1", True),
        ("wechat", "wechat_openid", "wx1:oOne", None, "wx1", True),
        ("wechat", "wechat_openid", "WX1:oTwo", None, "wx1", False),  # another account
        ("wechat", "wechat_openid", "wx10:oX", None, "wx1", False),
        ("wechat", "wechat_openid", "wx2:oThree", None, None, True),  # no account configured
        ("push", "device_id", "A8C1", None, "wx1", True),
    ],
)
def test_the_addressing_rule(channel, type_name, value, detail, appid, reaches) -> None:
    assert CHANNELS[channel].reaches(type_name, value, detail, appid) is reaches


def test_payloads_are_built_by_each_channels_builder() -> None:
    def build(channel: str, context: dict | None = None, **parts: str):
        files = {part: f"{channel}/t{suffix}" for part, suffix in CHANNELS[channel].parts.items()}
        return CHANNELS[channel].payload(Rendered(parts, files, context or {}))

    sms = build("sms", text=" 【花漾】你好 \n")
    assert (sms.channel, sms.body) == ("sms", {"text": "【花漾】你好", "segments": 1,
                                               "encoding": "UCS-2"})  # fmt: skip
    email = build("email", subject="Hi", html="<p>Hi</p>", text="Hi")
    assert email.body == {"subject": "Hi", "html": "<p>Hi</p>", "text": "Hi\n"}
    assert email.files == {"subject": "email/t.subject.txt", "html": "email/t.html",
                           "text": "email/t.txt"}  # fmt: skip
    wechat_json = json.dumps({"touser": "oOne", "template_id": "T1", "url": "https://x.cn",
                              "appid": "wx1", "data": {"thing1": {"value": "李娜"}}})  # fmt: skip
    wechat = build("wechat", {"wechat": {"openid": "oOne", "appid": "wx1"}}, json=wechat_json)
    assert wechat.body == {"touser": "oOne", "template_id": "T1", "url": "https://x.cn",
                           "data": {"thing1": {"value": "李娜"}}}  # fmt: skip
    with pytest.raises(TemplateError, match=r"wechat/t\.json: the template belongs to official"):
        build("wechat", {"wechat": {"openid": "oOne", "appid": "wx2"}}, json=wechat_json)
    push_json = '{"title": "Hi", "body": "你好", "device": "D1"}'
    push = build("push", {"device": "D1"}, json=push_json)
    assert push.body == {"title": "Hi", "body": "你好", "device": "D1"}
    with pytest.raises(TemplateError, match=r"push/t\.json: the customer has no device"):
        build("push", {}, json=push_json)


def test_reports_count_as_reachable_exactly_who_a_journey_reaches(run, write, tmp_path) -> None:
    """The overview's reachable count for WeChat applies the send step's appid rule: an openid
    of 'WX1' is not one of account 'wx1' (the report used to match it with a LIKE)."""
    write("cdp.yaml", CONFIG)
    write("crm.csv", CRM)
    write("templates/wechat/hello.json", WECHAT)
    write("templates/sms/hello.txt", "【花漾】{{ customer.name|default_name }}你好")
    write(
        "journeys/hi.yaml",
        'name: hi\nentry: {when: "name is not null"}\n'
        "steps: [{send: {channel: wechat, template: hello}}]\n",
    )
    assert run("ingest", "crm.csv", "-s", "crm").exit_code == 0
    assert run("resolve").exit_code == 0
    assert run("tag").exit_code == 0
    report = json.loads(run("report", "overview", "--json").stdout)
    reach = {r["channel"]: (r["with_address"], r["reachable"]) for r in report["reachable"]}
    assert reach["wechat"] == (1, 1)
    result = run("journey", "run", "--now", "2026-11-15 10:30", "--json")
    assert result.exit_code == 0, result.output
    [journey] = json.loads(result.stdout)
    assert journey["sent"] == {"wechat": reach["wechat"][1]}
    assert journey["skipped"] == {"unreachable": 3}
    sent_to = query(tmp_path / "cdp.db", "SELECT address FROM messages WHERE status = 'written'")
    assert sent_to == [("oOne",)]


def test_an_email_carries_its_unsubscribe_link_and_list_unsubscribe_header() -> None:
    url = unsubscribe_url("https://hy.example.com/", "winback:7:steps[0]")
    assert url == f"https://hy.example.com/unsubscribe?m={short_code('winback:7:steps[0]')}"
    assert unsubscribe_url("", "winback:7:steps[0]") is None  # no brand url, no link
    html, text = f'<a href="{url}">退订</a>', f"退订：{url}"
    body = email_message("你好", html, text, unsubscribe=url).body
    assert body["list_unsubscribe"] == f"<{url}>"
    assert body["list_unsubscribe_post"] == "List-Unsubscribe=One-Click"
    for without, part in ((("<p>hi</p>", text), "html"), ((html, "hi"), "text")):
        with pytest.raises(TemplateError) as caught:
            email_message("你好", *without, unsubscribe=url)
        assert (
            str(caught.value) == f"{part}: carries no unsubscribe link: print {{{{ unsubscribe }}}}"
        )
