"""Message templates: every shipped file renders and validates; the sandbox refuses escapes,
mutation and runaway templates within a bounded time; the channels build the payloads their
APIs take; SMS segments are counted right."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp_cli.errors import TemplateError
from cdp_cli.features import FEATURES
from cdp_cli.messaging.channels import GSM7_BASIC, GSM7_EXTENSION, sms_segments, split_sms
from cdp_cli.messaging.filters import default_name, format_date, money
from cdp_cli.messaging.fixtures import example_context
from cdp_cli.messaging.sandbox import PYTHON_REPR, Limits, printed_object
from cdp_cli.messaging.templates import TemplateStore
from tests.conftest import REPO

SHIPPED = REPO / "templates"
SHIPPED_TEMPLATES = TemplateStore(SHIPPED).templates()
NEEDS_COUPON = {"winback_coupon", "winback_reminder"}


def make_store(tmp_path: Path, files: dict[str, str], **options: Any) -> TemplateStore:
    """Templates written under tmp_path/templates, as a project would hold them."""
    root = tmp_path / "templates"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateStore(root, **options)


def sms_error(tmp_path: Path, source: str, context: dict[str, Any] | None = None) -> str:
    store = make_store(tmp_path, {"sms/t.txt": source})
    with pytest.raises(TemplateError) as caught:
        store.render("sms", "t", example_context() if context is None else context)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# The shipped templates


def test_the_sample_journeys_have_their_templates() -> None:
    assert SHIPPED_TEMPLATES == [
        ("email", "member_day"), ("email", "welcome"), ("email", "welcome_nudge"),
        ("email", "winback_coupon"),
        ("push", "repurchase_reminder"),
        ("sms", "birthday_greeting"), ("sms", "member_day"), ("sms", "repurchase_reminder"),
        ("sms", "welcome"), ("sms", "welcome_nudge"),
        ("sms", "winback_coupon"), ("sms", "winback_reminder"),
        ("wechat", "birthday_greeting"), ("wechat", "welcome"), ("wechat", "winback_coupon"),
    ]  # fmt: skip


@pytest.mark.parametrize(("channel", "name"), SHIPPED_TEMPLATES)
def test_shipped_template_renders_and_validates(channel: str, name: str) -> None:
    message = TemplateStore(SHIPPED).validate(channel, name, example_context())
    assert message.template == f"{channel}/{name}"
    assert message.warnings == ()
    text = json.dumps(message.body, ensure_ascii=False)
    assert "李娜" in text
    if channel in ("sms", "email"):  # WeChat and push come from the brand's account and app
        assert "花漾" in text
    assert "None" not in text and "{{" not in text and "{%" not in text


@pytest.mark.parametrize(("channel", "name"), SHIPPED_TEMPLATES)
def test_shipped_template_needs_no_optional_value(channel: str, name: str) -> None:
    """A customer without a name or a favourite category still gets a warm message."""
    context = example_context()
    context["customer"]["name"] = None
    context["features"]["top_category"] = None
    if name not in NEEDS_COUPON:
        context["coupon"] = None
    message = TemplateStore(SHIPPED).validate(channel, name, context)
    text = json.dumps(message.body, ensure_ascii=False)
    assert "顾客" in text and "None" not in text
    assert ("HY-WB7K2Q" in text) == (name in NEEDS_COUPON)


def test_the_winback_reminder_states_the_coupons_own_expiry_date() -> None:
    """Sent three days after a code valid for months, it says until when, not "expires soon"."""
    context = example_context()
    context["coupon"] = {**context["coupon"], "expires_at": "2027-05-13 23:59:59"}
    text = TemplateStore(SHIPPED).validate("sms", "winback_reminder", context).body["text"]
    assert "2027年5月13日前下单都能用" in text
    assert "到期" not in text  # no deadline the coupon does not have


def test_winback_without_a_coupon_fails_naming_the_line() -> None:
    context = example_context()
    context["coupon"] = None
    with pytest.raises(TemplateError) as caught:
        TemplateStore(SHIPPED).render("sms", "winback_reminder", context)
    assert str(caught.value) == (
        f"{SHIPPED}/sms/winback_reminder.txt:2: undefined: 'None' has no attribute 'face_value'"
    )


def test_validate_all_checks_every_shipped_file() -> None:
    messages = TemplateStore(SHIPPED).validate_all()
    used = {Path(f) for m in messages for f in m.files.values()}
    files = {p for p in SHIPPED.rglob("*") if p.is_file() and p.suffix != ".md"}
    assert files - used == {SHIPPED / "email" / "_layout.html"}  # a partial, compiled alone


def test_the_sample_has_every_feature() -> None:
    assert set(example_context()["features"]) == set(FEATURES)


def test_shipped_sms_fit_two_segments() -> None:
    for channel, name in SHIPPED_TEMPLATES:
        if channel == "sms":
            body = TemplateStore(SHIPPED).render(channel, name, example_context()).body
            assert (body["segments"], body["encoding"]) == (2, "UCS-2"), name
            assert body["text"].startswith("【花漾】") and body["text"].endswith("拒收请回复R")


# ---------------------------------------------------------------------------------------------
# Errors name the file and the line


def test_a_missing_variable_names_file_and_line(tmp_path: Path) -> None:
    message = sms_error(tmp_path, "【花漾】\n{{ customer.name }}，\n{{ customr.city }}")
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:3: undefined: 'customr' is undefined "
        "(did you mean 'customer'?)"
    )
    alone = sms_error(tmp_path, "{{ nmae }}")  # a key of one of the values, the customer's first
    assert alone.endswith("undefined: 'nmae' is undefined (did you mean 'customer.name'?)")
    unknown = sms_error(tmp_path, "{{ zzz }}")
    assert unknown.endswith("undefined: 'zzz' is undefined")


def test_a_missing_key_names_file_and_line(tmp_path: Path) -> None:
    message = sms_error(tmp_path, "hi\n{{ customer.nickname }}")
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:2: undefined: 'dict object' has no attribute 'nickname' "
        "(did you mean 'name'?)"
    )
    code = sms_error(tmp_path, "{{ coupon.cdoe }}")
    assert code.endswith("has no attribute 'cdoe' (did you mean 'code'?)")


def test_an_unknown_filter_names_the_closest(tmp_path: Path) -> None:
    message = sms_error(tmp_path, "{{ customer.name|uper }}")
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:1: syntax error: No filter named 'uper'. "
        "(did you mean 'upper'?)"
    )


def test_a_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = sms_error(tmp_path, "one\ntwo\n{% if customer.name %}three")
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:3: syntax error: Unexpected end of template. Jinja was "
        "looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block that "
        "needs to be closed is 'if'."
    )


def test_an_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    store = make_store(
        tmp_path,
        {"sms/t.txt": "a {% include 'sms/_part.txt' %}", "sms/_part.txt": "x\n{{ 1 / 0 }}"},
    )
    with pytest.raises(TemplateError) as caught:
        store.render("sms", "t", example_context())
    assert str(caught.value) == (
        f"{tmp_path}/templates/sms/_part.txt:2: ZeroDivisionError: division by zero"
    )


def test_printing_none_is_an_error_with_a_hint(tmp_path: Path) -> None:
    context = example_context()
    context["customer"]["city"] = None
    message = sms_error(tmp_path, "{{ customer.city }}", context)
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:1: prints None (the customer has no such value); give a "
        "fallback, e.g. {{ customer.city or '您所在的城市' }}"
    )


def test_template_errors_are_usage_errors() -> None:
    assert TemplateError("x", "y").exit_code == 2


# ---------------------------------------------------------------------------------------------
# Names and paths


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../secret", "climbs out of the templates folder with '..'"),
        ("a/../../secret", "climbs out of the templates folder with '..'"),
        ("/etc/passwd", "is an absolute path; name templates relative to the templates folder"),
        ("C:/secret", "is an absolute path; name templates relative to the templates folder"),
        ("..\\secret", "contains a backslash; write paths with /"),
    ],
)
def test_path_traversal_in_a_name_is_refused(tmp_path: Path, name: str, problem: str) -> None:
    store = make_store(tmp_path, {"sms/ok.txt": "hi"})
    with pytest.raises(TemplateError) as caught:
        store.render("sms", name, example_context())
    assert str(caught.value) == f"{tmp_path}/templates/sms: template name {name!r}: {problem}"


def test_path_traversal_in_an_include_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("password")
    message = sms_error(tmp_path, "hi\n{% include '../secret.txt' %}")
    assert message == (
        f"{tmp_path}/templates/sms/t.txt:2: template name '../secret.txt' climbs out of the "
        "templates folder with '..'"
    )


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("password")
    store = make_store(tmp_path, {"sms/t.txt": "hi {% include 'sms/_link.txt' %}"})
    (tmp_path / "templates" / "sms" / "_link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(TemplateError) as caught:
        store.render("sms", "t", example_context())
    assert str(caught.value) == (
        f"{tmp_path}/templates/sms/t.txt:1: template 'sms/_link.txt' is outside the templates folder"
    )


def test_unknown_channel_and_missing_file(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"email/w.subject.txt": "hi", "email/w.html": "<p>hi</p>"})
    with pytest.raises(TemplateError, match=r"unknown channel 'fax'; channels are sms, email"):
        store.render("fax", "w", example_context())
    with pytest.raises(TemplateError) as caught:
        store.render("email", "w", example_context())
    assert (
        str(caught.value) == f"{tmp_path}/templates/email/w.txt: no such file: the text of email/w"
    )


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("stray.txt", "templates go in templates/<channel>/<name>.<ext>, channels being sms, "
         "email, wechat, push"),
        ("fax/welcome.txt", "templates go in templates/<channel>/<name>.<ext>, channels being "
         "sms, email, wechat, push"),
        ("sms/deep/welcome.txt", "templates go in templates/<channel>/<name>.<ext>, channels "
         "being sms, email, wechat, push"),
        ("sms/welcome.html", "sms templates are named <name>.txt, the name in lower-case "
         "letters, digits, _ and -"),
        ("sms/Welcome.txt", "sms templates are named <name>.txt, the name in lower-case "
         "letters, digits, _ and -"),
    ],
)  # fmt: skip
def test_validate_all_refuses_a_file_out_of_place(tmp_path: Path, path: str, problem: str) -> None:
    store = make_store(tmp_path, {path: "hi", "README.md": "# notes"})
    with pytest.raises(TemplateError) as caught:
        store.validate_all()
    assert str(caught.value) == f"{tmp_path}/templates/{path}: {problem}"


def test_validate_all_compiles_partials(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"email/_footer.html": "a\n{% endif %}"})
    with pytest.raises(TemplateError) as caught:
        store.validate_all()
    assert str(caught.value) == (
        f"{tmp_path}/templates/email/_footer.html:2: syntax error: Encountered unknown tag 'endif'."
    )


# ---------------------------------------------------------------------------------------------
# The sandbox: no internals, no mutation


SANDBOX = "refused by the sandbox: access to attribute"
PRINTS = "print one of its values instead"
ESCAPES = [
    ("{{ customer.__class__ }}", SANDBOX),
    ("{{ customer['__class__'] }}", SANDBOX),
    ("{{ customer|attr('__class__') }}", SANDBOX),
    ("{{ cycler.__init__.__globals__ }}", SANDBOX),
    ("{{ joiner.__init__.__globals__.os }}", SANDBOX),
    ("{{ namespace.__init__.__globals__ }}", SANDBOX),
    ("{{ range.__globals__ }}", SANDBOX),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", SANDBOX),
    ("{{ customer.items.__self__ }}", SANDBOX),
    ("{{ self.__init__.__globals__ }}", SANDBOX),
    ("{{ '{0.__class__}'.format(customer) }}", SANDBOX),
    ("{{ lipsum.__globals__ }}", "undefined: 'lipsum' is undefined"),
    ("{{ config.items() }}", "undefined: 'config' is undefined"),
    ("{{ request.application.__globals__ }}", "undefined: 'request' is undefined"),
    ("{{ ('a'|attr('expandtabs'))(4) }}", "str.expandtabs() is not available in templates"),
    ("{{ 'a'.encode() }}", "str.encode() is not available in templates"),
    ("{{ cycler }}", PRINTS),
    ("{{ customer.items }}", PRINTS),
    ("{{ customer }}", "prints a mapping; " + PRINTS),
    ("{{ 'x' ~ customer.items }}", PRINTS),
    ("{{ '%s' % customer.items }}", PRINTS),
    ("{{ '{}'.format(cycler) }}", PRINTS),
    ("{{ [customer.items]|join }}", PRINTS),
    ("{{ customer.items|string }}", PRINTS),
    ("{{ {'a': customer.items}|tojson }}", "is not JSON serializable"),
]


@pytest.mark.parametrize(("source", "reason"), ESCAPES)
def test_sandbox_escapes_are_refused(tmp_path: Path, source: str, reason: str) -> None:
    message = sms_error(tmp_path, f"【花漾】\n{source}")
    assert message.startswith(f"{tmp_path}/templates/sms/t.txt:2: "), message
    assert reason in message


MUTATIONS = [
    "{{ customer.update({'name': 'x'}) }}",
    "{{ customer.clear() }}",
    "{{ tags.pop('lifecycle') }}",
    "{{ features.setdefault('vip', 1) }}",
    "{{ coupon.__setitem__('code', 'FREE') }}",
    "{{ customer.get('records', []).append(1) }}",
    "{% set customer.name = 'x' %}",
    "{% set ns = namespace(c=customer) %}{{ ns.c.update({'a': 1}) }}",
    "{{ customer.values()|list|attr('append') }}",
]


@pytest.mark.parametrize("source", MUTATIONS)
def test_templates_cannot_change_their_data(tmp_path: Path, source: str) -> None:
    context = example_context()
    context["customer"]["records"] = [1, 2]
    before = copy.deepcopy(context)
    with pytest.raises(TemplateError):
        make_store(tmp_path, {"sms/t.txt": f"hi {source}"}).render("sms", "t", context)
    assert context == before


def test_rendering_every_shipped_template_leaves_the_data_as_it_was() -> None:
    context = example_context()
    before = copy.deepcopy(context)
    for channel, name in SHIPPED_TEMPLATES:
        TemplateStore(SHIPPED).render(channel, name, context)
    assert context == before


# ---------------------------------------------------------------------------------------------
# Runaway templates fail that one message, quickly


HOSTILE = [
    ("{% for i in range(10**9) %}x{% endfor %}", "range() of 1,000,000,000 numbers"),
    ("{{ 'x' * 10**9 }}", "builds a value of 1,000,000,000 characters"),
    ("{{ 10**9 * 'x' }}", "builds a value of 1,000,000,000 characters"),
    ("{{ [1] * 10**9 }}", "builds a value of 1,000,000,000 characters"),
    ("{{ 2 ** 100000 }}", "raises a number to a power larger than 4096 bits"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "calls nest more than 50 deep"),
    (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(45) }}",
        "took more than 1 s to render",
    ),
    (
        "{% set r = range(10000)|list %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
        "took more than 1 s to render",
    ),
    (
        "{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "took more than 1 s to render",
    ),
    (
        "{% set s %}{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}"
        "{% endfor %}{% endset %}{{ s|length }}",
        "took more than 1 s to render",
    ),
    (
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "calls nest more than 50 deep",
    ),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "builds a value of 131,072 characters",
    ),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "builds a value of 131,072 characters",
    ),
    ("{% for i in range(10000) %}{{ 'x' * 10 }}{% endfor %}", "renders to more than 64 KiB"),
    ("{{ 'x'|center(10**9) }}", "builds a value of 1,000,000,000 characters"),
    ("{{ 'x'.ljust(10**9) }}", "builds a value of 1,000,000,000 characters"),
    ("{{ ('x' * 60000)|replace('x', 'y' * 60000) }}", "builds a value of 3,600,000,000"),
    ("{{ ('x' * 60000).replace('x', 'y' * 60000) }}", "builds a value of 3,600,000,000"),
    ("{{ range(10000)|map('string')|join('x' * 60000) }}", "builds a value of 599,940,000"),
    ("{{ ('x' * 60000)|indent('y' * 60000) }}", "builds a value of"),
    ("{{ ('x\n' * 30000)|wordwrap(1, wrapstring='y' * 60000) }}", "builds a value of"),
    ("{{ '%999999999s'|format(1) }}", "builds a value of"),
    ("{{ '%999999999s' % 1 }}", "builds a value of"),
    ("{{ '{:999999999}'.format(1) }}", "builds a value of"),
    ("{{ '{:{}}'.format('x', 10**9) }}", "builds a value of"),
    ("{{ '%*s' % (10**9, 'x') }}", "builds a value of"),
    ("{{ [1]|batch(linecount=10**9, fill_with=0)|list }}", "builds a value of 1,000,000,000"),
    ("{{ 'x'|indent(width=10**9) }}", "builds a value of"),
    ("{{ ('\t' * 60000).expandtabs(60000) }}", "str.expandtabs() is not available in templates"),
    ("{{ [1]|batch(10**9, 0)|list }}", "builds a value of 1,000,000,000"),
    ("{{ range(10)|slice(10**9)|list }}", "builds a value of 1,000,000,000"),
    (
        "{% for i in range(10000) %}{% set x = range(10000)|list %}{% endfor %}",
        "builds more than 1,048,576 characters or items in all",
    ),
    ("x{% include 'sms/t.txt' %}", "macros or includes call each other too deeply"),
]


@pytest.mark.parametrize(("source", "error"), HOSTILE)
def test_runaway_templates_fail_quickly(tmp_path: Path, source: str, error: str) -> None:
    started = time.monotonic()
    message = sms_error(tmp_path, source)
    # Each stops within the renderer's 1 s budget, not after minutes or never; 10 s leaves a
    # busy box room (self-inclusion once took 2.2 s under the full suite).
    assert time.monotonic() - started < 10
    assert message.startswith(f"{tmp_path}/templates/sms/t.txt"), message
    # self-inclusion recurses a thousand deep in 0.06 s, or on a busy machine now and then runs
    # out of its second first: either is its one clear line
    too_deep = error == "macros or includes call each other too deeply"
    assert error in message or (too_deep and "took more than 1 s to render" in message), message


def test_limits_are_configurable(tmp_path: Path) -> None:
    store = make_store(
        tmp_path, {"sms/t.txt": "{% for i in range(200) %}x{% endfor %}"},
        limits=Limits(range_items=100),
    )  # fmt: skip
    with pytest.raises(TemplateError, match=r"a template may use at most 100$"):
        store.render("sms", "t", example_context())


def test_a_runaway_template_cannot_hang_compilation(tmp_path: Path) -> None:
    """Constant expressions are not folded while compiling, where nothing is metered."""
    store = make_store(tmp_path, {"sms/_p.txt": "{% if 'x'|center(10**9) %}{% endif %}"})
    started = time.monotonic()
    store.validate_all()
    assert time.monotonic() - started < 2


def test_templates_do_not_import_the_cli() -> None:
    code = "import sys, cdp_cli.messaging.templates; print(sorted({'click', 'rich'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        (1299, (), "¥1,299.00"),
        ("598.00", (), "¥598.00"),
        (1299, ("USD",), "$1,299.00"),
        (12.345, (), "¥12.35"),
        (-12.5, (), "-¥12.50"),
        (30.0, ("CNY", None), "¥30"),
        (9.9, ("CNY", None), "¥9.90"),
        (1234567, ("CNY", 0), "¥1,234,567"),
    ],
)
def test_money(value: Any, args: tuple[Any, ...], expected: str) -> None:
    assert money(value, *args) == expected


@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        ("2026-11-15", (), "2026年11月15日"),
        ("2026-11-05T20:00:00+08:00", (), "2026年11月5日"),
        ("2026-11-30 23:59:59", ("short",), "11月30日"),
        ("2026-11-30 23:59:59", ("datetime",), "2026年11月30日 23:59"),
        ("2024/11/20 14:00:00", ("%Y-%m-%d",), "2024-11-20"),
        ("2026-01-02T03:04:05Z", ("%m/%d %H:%M",), "01/02 03:04"),
    ],
)
def test_date(value: str, args: tuple[str, ...], expected: str) -> None:
    assert format_date(value, *args) == expected


def test_filter_errors_name_the_filter(tmp_path: Path) -> None:
    assert sms_error(tmp_path, "{{ 'abc'|money }}").endswith(":1: money: 'a***' is not an amount")
    assert sms_error(tmp_path, "{{ 1|money('XYZ') }}").endswith(
        ":1: money: unknown currency 'XYZ'; use one of CNY, RMB, USD, HKD, EUR"
    )
    assert sms_error(tmp_path, "{{ 5|dictsort }}").endswith(
        ":1: AttributeError: 'int' object has no attribute 'items'"
    )
    assert sms_error(tmp_path, "{{ 'soon'|date }}").endswith(
        ":1: date: cannot read 's***' as a date or an ISO timestamp"
    )


def test_a_filter_error_masks_the_customers_value(tmp_path: Path) -> None:
    """The error becomes a skipped message's reason, which reports print: a name or a phone
    given to a filter is masked there; numbers are not personal and are shown."""
    context = {**example_context(), "customer": {"name": "李娜", "phone": "13800138000"}}
    assert sms_error(tmp_path, "{{ customer.name|money }}", context).endswith(
        ":1: money: '李***' is not an amount"
    )
    assert sms_error(tmp_path, "{{ customer.phone|date }}", context).endswith(
        ":1: date: cannot read '138****8000' as a date or an ISO timestamp"
    )
    assert sms_error(tmp_path, "{{ 12.5|money(digits=9) }}").endswith(
        ":1: money: cannot show 12.5 with 9 digits"
    )


def test_names_and_masks(tmp_path: Path) -> None:
    assert default_name(None) == "顾客" and default_name("  ") == "顾客"
    assert default_name("李娜") == "李娜"
    source = "{{ '+8613800138000'|mask_phone }} {{ 'li.na@example.com'|mask_email }}"
    store = make_store(tmp_path, {"sms/t.txt": source})
    assert store.render("sms", "t", example_context()).body["text"] == (
        "138****8000 l***@example.com"
    )


# ---------------------------------------------------------------------------------------------
# SMS segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (0, "GSM-7")),
        ("a" * 160, (1, "GSM-7")),
        ("a" * 161, (2, "GSM-7")),
        ("a" * 306, (2, "GSM-7")),
        ("a" * 307, (3, "GSM-7")),
        ("中" * 70, (1, "UCS-2")),
        ("中" * 71, (2, "UCS-2")),
        ("中" * 134, (2, "UCS-2")),
        ("中" * 135, (3, "UCS-2")),
        ("a" * 159 + "中", (3, "UCS-2")),  # one Chinese character makes it all UCS-2
        ("€" * 80, (1, "GSM-7")),  # '€' is in the extension table: two septets
        ("€" * 81, (2, "GSM-7")),
        ("a" * 159 + "€", (2, "GSM-7")),
        ("a" * 152 + "[" + "a" * 9, (2, "GSM-7")),  # the escape pair is not split
        ("😀" * 35, (1, "UCS-2")),  # an emoji is a surrogate pair: two units
        ("😀" * 36, (2, "UCS-2")),
    ],
)
def test_sms_segments_on_known_examples(text: str, expected: tuple[int, str]) -> None:
    assert sms_segments(text) == expected


def test_split_keeps_escape_pairs_whole() -> None:
    parts = split_sms("a" * 152 + "[" + "a" * 9)
    assert parts == ["a" * 152, "[" + "a" * 9]


GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
SMS_TEXT = st.text(
    st.one_of(
        st.sampled_from(GSM_CHARS),
        st.sampled_from("中文花漾【】，。！😀🎂"),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=500,
)


def _units(text: str) -> tuple[int, int, int]:
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        return sum(2 if c in GSM7_EXTENSION else 1 for c in text), 160, 153
    return len(text.encode("utf-16-le")) // 2, 70, 67


@given(SMS_TEXT)
def test_sms_segments_properties(text: str) -> None:
    count, encoding = sms_segments(text)
    units, single, per_part = _units(text)
    assert encoding == ("GSM-7" if single == 160 else "UCS-2")
    if units <= single:
        assert count == (1 if text else 0)
    else:  # two-unit characters never straddle parts, so a part may hold one unit less
        assert math.ceil(units / per_part) <= count <= math.ceil(units / (per_part - 1))


@given(SMS_TEXT)
def test_split_sms_properties(text: str) -> None:
    parts = split_sms(text)
    assert "".join(parts) == text
    assert len(parts) == sms_segments(text)[0]
    _, single, per_part = _units(text)
    for part in parts if len(parts) > 1 else []:
        if single == 160:
            assert sum(2 if c in GSM7_EXTENSION else 1 for c in part) <= per_part
        else:
            assert len(part.encode("utf-16-le")) // 2 <= per_part


@given(SMS_TEXT, st.sampled_from(["a", "€", "中", "😀", "\n"]))
def test_a_longer_sms_never_takes_fewer_segments(text: str, extra: str) -> None:
    assert sms_segments(text + extra)[0] >= sms_segments(text)[0]


# Texts made of the pieces of a printed Python object, and any other characters.
REPR_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["<", "&lt;", "&", "class ", "object at 0x", "0x1f", "jinja2.", "Macro "]),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=30,
).map("".join)


@given(REPR_TEXT)
def test_printed_object_finds_what_the_pattern_finds(text: str) -> None:
    """printed_object skips the search for a text that cannot match: it must find the same."""
    found, expected = printed_object(text), PYTHON_REPR.search(text)
    assert (found and found.span()) == (expected and expected.span())


def test_an_sms_over_the_limit_warns_and_fails_validation(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"sms/long.txt": "【花漾】" + "好" * 200})
    message = store.render("sms", "long", example_context())
    assert message.warnings == (
        "the SMS is 4 segments (204 characters, UCS-2), more than the 3 allowed",
    )
    with pytest.raises(TemplateError) as caught:
        store.validate("sms", "long", example_context())
    assert str(caught.value) == f"{tmp_path}/templates/sms/long.txt: {message.warnings[0]}"
    roomy = TemplateStore(tmp_path / "templates", sms_max_segments=4)
    assert roomy.validate("sms", "long", example_context()).body["segments"] == 4


def test_an_empty_sms_is_an_error(tmp_path: Path) -> None:
    assert sms_error(tmp_path, "{% if false %}x{% endif %}\n") == (
        f"{tmp_path}/templates/sms/t.txt: renders to an empty SMS"
    )


# ---------------------------------------------------------------------------------------------
# Email, WeChat and push payloads


EMAIL = {
    "email/w.subject.txt": "{{ customer.name|default_name }}，欢迎\n",
    "email/w.html": "<p>{{ customer.name }}</p>",
    "email/w.txt": "{{ customer.name }}\n",
}


def test_email_payload_escapes_html_only(tmp_path: Path) -> None:
    context = example_context()
    context["customer"]["name"] = "<b>李娜</b>"
    context["unsubscribe"] = None  # a brand without a url: no unsubscribe link to demand
    message = make_store(tmp_path, EMAIL).render("email", "w", context)
    assert message.body == {
        "subject": "<b>李娜</b>，欢迎",
        "html": "<p>&lt;b&gt;李娜&lt;/b&gt;</p>",
        "text": "<b>李娜</b>\n",
    }
    assert message.files == {
        "subject": f"{tmp_path}/templates/email/w.subject.txt",
        "html": f"{tmp_path}/templates/email/w.html",
        "text": f"{tmp_path}/templates/email/w.txt",
    }


def test_a_subject_cannot_forge_headers(tmp_path: Path) -> None:
    context = example_context()
    context["customer"]["name"] = "李娜\nBcc: all@example.com"
    with pytest.raises(TemplateError) as caught:
        make_store(tmp_path, EMAIL).render("email", "w", context)
    assert str(caught.value) == (
        f"{tmp_path}/templates/email/w.subject.txt: the subject must be one line, without "
        "control characters"
    )


WECHAT = """{
  "appid": "wx8a3f5e2b1c9d4e70",
  "touser": "{{ wechat.openid }}",
  "template_id": "TPL1",
  "url": "{{ link }}",
  "data": {
    "thing1": {"value": "{{ customer.name|default_name }}", "color": "#D9667A"},
    "character_string2": {"value": "{{ coupon.code }}"}
  }
}"""


def test_wechat_payload_is_what_the_api_takes(tmp_path: Path) -> None:
    context = example_context()
    context["customer"]["name"] = 'Li "Na"'  # a quote cannot break the JSON
    message = make_store(tmp_path, {"wechat/c.json": WECHAT}).render("wechat", "c", context)
    assert message.body == {
        "touser": "oXq3ZtZ9Y8TC8XTbcwT1W-lO3kJY",
        "template_id": "TPL1",
        "url": "https://hy.example.com/t/8Kq2xZ",
        "data": {
            "thing1": {"value": 'Li "Na"', "color": "#D9667A"},
            "character_string2": {"value": "HY-WB7K2Q"},
        },
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('"{{ wechat.openid }}"', '"oTESTER"'),
         "touser is 'oTESTER', not the customer's openid: write \"{{ wechat.openid }}\""),
        (('"wx8a3f5e2b1c9d4e70"', '"wxOTHER"'),
         "the template belongs to official account 'wxOTHER', but the customer's openid is for "
         "'wx8a3f5e2b1c9d4e70'"),
        (('"TPL1"', '""'), "template_id must be non-empty text"),
        (('"url"', '"link"'), "unknown key 'link'; keys are touser, template_id, url, "
         "miniprogram, data, appid"),
        (('"#D9667A"', '"red"'), "data.thing1.color must look like #FF6600, got 'red'"),
        (('"value": "{{ coupon.code }}"', '"v": 1'), 'data.character_string2 must be {"value": "…"}'),
        (('"TPL1",', '"TPL1"'), "renders to invalid JSON: Expecting ',' delimiter (line 5, "
         "column 3 of the rendered text)"),
    ],
)  # fmt: skip
def test_wechat_payload_problems(tmp_path: Path, change: tuple[str, str], problem: str) -> None:
    store = make_store(tmp_path, {"wechat/c.json": WECHAT.replace(*change)})
    with pytest.raises(TemplateError) as caught:
        store.render("wechat", "c", example_context())
    assert str(caught.value) == f"{tmp_path}/templates/wechat/c.json: {problem}"


def test_a_wechat_field_wechat_would_cut_warns(tmp_path: Path) -> None:
    context = example_context()
    context["customer"]["name"] = "一位名字特别特别特别特别特别长的老顾客朋友"
    store = make_store(tmp_path, {"wechat/c.json": WECHAT})
    assert store.render("wechat", "c", context).warnings == (
        "data.thing1 is 21 characters; WeChat shows 20 and cuts the rest: "
        "'一位名字特别特别特别特别特别长的老顾客朋友'",
    )
    with pytest.raises(TemplateError, match=r"data\.thing1 is 21 characters"):
        store.validate("wechat", "c", context)


PUSH = '{"device": "{{ device }}", "title": "补货啦", "body": "{{ customer.name }}，点我", "url": "{{ link }}"}'


def test_push_payload(tmp_path: Path) -> None:
    message = make_store(tmp_path, {"push/p.json": PUSH}).render("push", "p", example_context())
    assert message.body == {
        "device": "A8C13E74-23DC-41E1-8A3F-9E9D34761E67",
        "title": "补货啦",
        "body": "李娜，点我",
        "url": "https://hy.example.com/t/8Kq2xZ",
    }


def test_push_to_another_device_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"push/p.json": PUSH.replace("{{ device }}", "TEST-DEVICE")})
    with pytest.raises(TemplateError) as caught:
        store.render("push", "p", example_context())
    assert str(caught.value) == (
        f"{tmp_path}/templates/push/p.json: device is 'TEST-DEVICE', not the customer's device: "
        'write "{{ device }}"'
    )


def test_remembered_filters_answer_as_the_plain_ones(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"sms/m.txt": "{{ a|money }} {{ b|date('short') }}"})
    assert store.render("sms", "m", {"a": 1, "b": "2026-05-13"}).body["text"] == "¥1.00 5月13日"
    with pytest.raises(TemplateError, match="not an amount"):
        store.render("sms", "m", {"a": True, "b": "2026-05-13"})  # True is not remembered as 1
    with pytest.raises(TemplateError, match="not an amount"):
        store.render("sms", "m", {"a": [1], "b": "2026-05-13"})  # unhashable: not remembered


# ---------------------------------------------------------------------------------------------
# What a template reads: a journey run reads only those feature columns


@pytest.mark.parametrize(
    ("source", "used"),
    [
        ("{{ features.top_category }} {{ features['total_spent'] | money }}", {"top_category", "total_spent"}),
        ("{% if features.order_count > 1 %}again{% endif %}{{ customer.name }}", {"order_count"}),
        ("{{ customer.name }}", set()),
        ("{{ features }}", None),
        ("{{ features.get('top_category') }}", None),
        ("{% for k, v in features.items() %}{{ v }}{% endfor %}", None),
        ("{% for key in features %}{{ key }}{% endfor %}", None),
        ("{% set k = 'x' %}{{ features[k] }}", None),
        ("{{ features[0] }}", None),
        ("{% set features = {} %}{{ features.x }}", None),
        ("{{ features.x }}{% include 'sms/_part.txt' %}", None),
        ("{{ features.x ", None),  # a syntax error: rendering reports it
    ],
)  # fmt: skip
def test_fields_a_template_reads(tmp_path: Path, source: str, used: set[str] | None) -> None:
    store = make_store(tmp_path, {"sms/t.txt": source, "sms/_part.txt": "{{ features.y }}"})
    assert store.fields_used("sms", "t", "features") == used
