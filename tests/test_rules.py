"""The rule language, run for real on SQLite and DuckDB with the same tables and rows."""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.errors import CdpError, RuleError
from cdp_cli.rules.compiler import (
    CompiledRule,
    FunctionSpec,
    RuleSchema,
    compile_rule,
    parse_duration,
)

ENGINES = ("sqlite", "duckdb")
NOW = datetime(2024, 6, 30, 12, 0, 0)
TAGS = ("churned", "lifecycle", "vip_candidate")
SEGMENTS = ("vip", "lapsed")

# Every table both engines get. Column types are ones SQLite and DuckDB both understand.
TABLES = {
    "profiles": "one_id TEXT, city TEXT, gender TEXT, email TEXT",
    "features": (
        "one_id TEXT, total_spent_365d DOUBLE, days_since_last_order INTEGER,"
        " repurchase_cycle_days INTEGER, order_count INTEGER, days_since_registered INTEGER,"
        " birthday_this_month INTEGER, top_category TEXT, top_channel TEXT, rfm_segment TEXT"
    ),
    "tags": "one_id TEXT, tag TEXT, value TEXT",
    "events": "one_id TEXT, type TEXT, ts TEXT",
    "segment_members": "segment TEXT, one_id TEXT",
}
ROWS: dict[str, list[tuple[Any, ...]]] = {
    "profiles": [
        ("c1", "武汉", "female", "c1@example.com"),
        ("c2", "北京", "male", None),
        ("c3", "上海", "female", "c3@example.com"),
        ("c4", None, None, None),
        ("c5", "武汉", "female", "c5@example.com"),
        ("c6", "北京", "male", "c6@example.com"),
        ("c7", "广州", "male", "c7@example.com"),
    ],
    "features": [
        ("c1", 1500.0, 100, 30, 5, 400, 1, "护肤", "app", "champions"),
        ("c2", 2000.0, 10, 30, 8, 700, 0, "彩妆", "web", "loyal"),
        ("c3", 5000.0, 200, 60, 3, 900, 0, "护发", "store", "at_risk"),
        ("c4", 0.0, None, None, 0, 10, 0, None, None, "new"),
        ("c5", 999.0, 120, 100, 2, 300, 1, "香水", "App", "hibernating"),
        ("c6", 1000.0, 180, 90, 1, 50, 0, "护肤", "web", "at_risk"),
        ("c7", 0.0, None, None, 0, 45, 0, None, None, "new"),
    ],
    "tags": [
        ("c2", "churned", "true"),
        ("c1", "lifecycle", "active"),
        ("c3", "lifecycle", "at_risk"),
        ("c6", "lifecycle", "at_risk"),
    ],
    "events": [
        ("c1", "view_item", "2024-06-29T10:00:00"),
        ("c1", "view_item", "2024-06-20T10:00:00"),
        ("c1", "view_item", "2024-06-01T13:00:00"),
        ("c2", "view_item", "2024-06-28T10:00:00"),
        ("c2", "view_item", "2024-06-27T10:00:00"),
        ("c2", "view_item", "2024-05-01T10:00:00"),
        ("c2", "view_item", "2024-04-01T10:00:00"),
        ("c3", "add_to_cart", "2024-06-29T10:00:00"),
        ("c3", "add_to_cart", "2024-06-28T10:00:00"),
        ("c3", "add_to_cart", "2024-06-27T10:00:00"),
        ("c5", "view_item", "2024-06-29T11:00:00"),
        ("c5", "view_item", "2024-06-29T12:00:00"),
        ("c5", "view_item", "2024-06-15T12:00:00"),
        ("c5", "purchase", "2024-06-29T13:00:00"),
    ],
    "segment_members": [("vip", "c2"), ("vip", "c3"), ("lapsed", "c4")],
}


def _known(names: tuple[str, ...], what: str) -> Callable[[list[Any]], str | None]:
    return lambda args: None if args[0] in names else f"unknown {what} {args[0]!r}"


def _event_count(args: list[Any]) -> tuple[str, list[Any]]:
    since = (NOW - args[1]).isoformat()
    sql = "SELECT count(*) FROM events e WHERE e.one_id = p.one_id AND e.type = ? AND e.ts >= ?"
    return sql, [args[0], since]


FEATURES = (
    "total_spent_365d", "days_since_last_order", "repurchase_cycle_days", "order_count",
    "days_since_registered", "birthday_this_month", "top_category", "top_channel", "rfm_segment",
)  # fmt: skip
SCHEMA = RuleSchema(
    fields={
        **{name: f"f.{name}" for name in FEATURES},
        "city": "p.city",
        "gender": "p.gender",
        "email": "p.email",
        "spent_per_order": "f.total_spent_365d / nullif(f.order_count, 0)",
    },
    functions={
        "tag": FunctionSpec(
            "tag",
            ("string",),
            lambda args: (
                "SELECT t.value FROM tags t WHERE t.one_id = p.one_id AND t.tag = ?",
                args,
            ),
            check=_known(TAGS, "tag"),
            returns="string",
        ),
        "has_tag": FunctionSpec(
            "has_tag",
            ("string",),
            lambda args: (
                "EXISTS (SELECT 1 FROM tags t WHERE t.one_id = p.one_id AND t.tag = ?)",
                args,
            ),
            check=_known(TAGS, "tag"),
            returns="boolean",
        ),
        "event_count": FunctionSpec(
            "event_count", ("string", "duration"), _event_count, returns="number"
        ),
        "in_segment": FunctionSpec(
            "in_segment",
            ("string",),
            lambda args: (
                "EXISTS (SELECT 1 FROM segment_members s WHERE s.one_id = p.one_id AND s.segment = ?)",
                args,
            ),
            check=_known(SEGMENTS, "segment"),
            returns="boolean",
        ),
    },
)


def _connect(engine: str) -> Any:
    return sqlite3.connect(":memory:") if engine == "sqlite" else duckdb.connect()


@pytest.fixture(scope="module")
def dbs() -> Iterator[dict[str, Any]]:
    """The same tables and rows in an in-memory SQLite and an in-memory DuckDB."""
    connections = {engine: _connect(engine) for engine in ENGINES}
    for db in connections.values():
        for table, columns in TABLES.items():
            db.execute(f"CREATE TABLE {table} ({columns})")
            marks = ", ".join(["?"] * len(ROWS[table][0]))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", ROWS[table])
    yield connections
    for db in connections.values():
        db.close()


def select(dbs: dict[str, Any], engine: str, text: str) -> list[str]:
    """The one_ids a rule selects on one engine."""
    rule = compile_rule(text, SCHEMA, dialect=engine)
    sql = (
        "SELECT p.one_id FROM profiles p JOIN features f ON f.one_id = p.one_id"
        f" WHERE {rule.sql} ORDER BY p.one_id"
    )
    return [row[0] for row in dbs[engine].execute(sql, rule.params).fetchall()]


def values(dbs: dict[str, Any], engine: str, text: str) -> list[tuple[str, Any]]:
    """What a value expression gives for each customer on one engine."""
    rule = compile_rule(text, SCHEMA, dialect=engine)
    sql = (
        f"SELECT p.one_id, {rule.sql} FROM profiles p JOIN features f ON f.one_id = p.one_id"
        " ORDER BY p.one_id"
    )
    return [tuple(row) for row in dbs[engine].execute(sql, rule.params).fetchall()]


EXAMPLES = [
    (
        "total_spent_365d >= 1000 and city in ('武汉', '北京') and not has_tag('churned')",
        ["c1", "c6"],
    ),
    ("tag('lifecycle') = 'at_risk'", ["c3", "c6"]),
    ("event_count('view_item', '30d') >= 3", ["c1", "c5"]),
    ("event_count('view_item', '2w') >= 2", ["c1", "c2", "c5"]),
    ("days_since_last_order between 91 and 180", ["c1", "c5", "c6"]),
    ("days_since_last_order > repurchase_cycle_days * 1.5", ["c1", "c3", "c6"]),
    ("order_count = 0 and days_since_registered <= 30", ["c4"]),
    ("in_segment('vip') or (gender = 'female' and birthday_this_month)", ["c1", "c2", "c3", "c5"]),
    ("city is null", ["c4"]),
    ("email is not null", ["c1", "c3", "c5", "c6", "c7"]),
    ("top_category like '护%'", ["c1", "c3", "c6"]),
    ("top_category not like '护%'", ["c2", "c5"]),
    ("not (order_count = 1)", ["c1", "c2", "c3", "c4", "c5", "c7"]),
    ("city not in ('武汉', '北京')", ["c3", "c7"]),
    ("days_since_last_order not between 91 and 180", ["c2", "c3"]),
    ("birthday_this_month", ["c1", "c5"]),
    ("not birthday_this_month", ["c2", "c3", "c4", "c6", "c7"]),
    ("birthday_this_month = true", ["c1", "c5"]),
    ("has_tag('churned') = false", ["c1", "c3", "c4", "c5", "c6", "c7"]),
    ("city = '武汉' or city = '上海' or city = '广州'", ["c1", "c3", "c5", "c7"]),
    # LIKE ignores case on both engines, as SQLite's does.
    ("top_channel like 'APP'", ["c1", "c5"]),
    ("lower(top_channel) = 'app'", ["c1", "c5"]),
    ("upper(top_channel) = 'WEB'", ["c2", "c6"]),
    # Division is a fraction on both engines, and NULL when dividing by zero.
    ("total_spent_365d / order_count > 400", ["c3", "c5", "c6"]),
    ("order_count / 2 = 2.5", ["c1"]),
    ("days_since_registered / 0 is null", ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]),
    ("spent_per_order >= 1000", ["c3", "c6"]),
    ("round(total_spent_365d / 1000) = 2", ["c1", "c2"]),
    ("round(total_spent_365d / 1000, 1) = 1.5", ["c1"]),
    ("abs(-order_count) = 8", ["c2"]),
    ("-order_count < -4", ["c1", "c2"]),
    ("coalesce(top_category, 'none') = 'none'", ["c4", "c7"]),
    (
        "case when order_count = 0 then 'new' when total_spent_365d >= 2000 then 'big'"
        " else 'other' end = 'big'",
        ["c2", "c3"],
    ),
    ("case rfm_segment when 'new' then 1 when 'at_risk' then 2 else 0 end = 2", ["c3", "c6"]),
    # Precedence is SQL's: not binds looser than =, and tighter than or.
    ("not order_count = 0 and city = '北京'", ["c2", "c6"]),
    ("city = '武汉' or city = '北京' and gender = 'male'", ["c1", "c2", "c5", "c6"]),
    ("(city = '武汉' or city = '北京') and gender = 'male'", ["c2", "c6"]),
    ("order_count + 2 * 3 = 11", ["c1"]),
    ("TRUE", ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]),
    # Digits may be grouped with _, as in Python.
    (
        "total_spent_365d >= 1_000 and city in ('武汉', '北京') and not has_tag('churned')",
        ["c1", "c6"],
    ),
    ("city = NULL", []),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_examples_select_the_same_customers_on_both_engines(
    dbs: dict[str, Any], engine: str, text: str, expected: list[str]
) -> None:
    assert select(dbs, engine, text) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_value_expressions(dbs: dict[str, Any], engine: str) -> None:
    assert values(dbs, engine, "top_channel") == [
        ("c1", "app"), ("c2", "web"), ("c3", "store"), ("c4", None), ("c5", "App"),
        ("c6", "web"), ("c7", None),
    ]  # fmt: skip
    assert [v for _, v in values(dbs, engine, "rfm_segment")] == [
        "champions", "loyal", "at_risk", "new", "hibernating", "at_risk", "new",
    ]  # fmt: skip
    assert [v for _, v in values(dbs, engine, "coalesce(top_category, 'none')")] == [
        "护肤", "彩妆", "护发", "none", "香水", "护肤", "none",
    ]  # fmt: skip
    assert [v for _, v in values(dbs, engine, "tag('lifecycle')")] == [
        "active", None, "at_risk", None, None, "at_risk", None,
    ]  # fmt: skip
    assert [v for _, v in values(dbs, engine, "'constant'")] == ["constant"] * 7


def _tag_holds(args: list[Any], texts: list[str] | None) -> tuple[str, list[Any]] | None:
    """tag() compared with text, as a set of one_ids (what vocabulary.py does over the base)."""
    if texts is None:
        return None
    marks = ", ".join("?" * len(texts))
    sql = f"p.one_id IN (SELECT t.one_id FROM tags t WHERE t.tag = ? AND t.value IN ({marks}))"
    return sql, [args[0], *texts]


AS_SETS = RuleSchema(
    SCHEMA.fields, {**SCHEMA.functions, "tag": replace(SCHEMA.functions["tag"], holds=_tag_holds)}
)
# c1 is active, c3 and c6 at risk, the others have no lifecycle: false and null differ under
# not, in a comparison or a case, so only the rule's own and/or chain may take the set.
HOLDS = [
    ("tag('lifecycle') = 'at_risk'", True, ["c3", "c6"]),
    ("'at_risk' = tag('lifecycle') and city = '北京'", True, ["c6"]),
    ("tag('lifecycle') in ('active', 'at_risk') or has_tag('churned')", True, ["c1", "c2", "c3", "c6"]),
    ("(city = '上海' or (tag('lifecycle') = 'active'))", True, ["c1", "c3"]),
    ("not tag('lifecycle') = 'at_risk'", False, ["c1"]),
    ("not (tag('lifecycle') = 'active' or city = '北京')", False, ["c3"]),
    ("(tag('lifecycle') = 'active') = false", False, ["c3", "c6"]),
    ("case when tag('lifecycle') = 'active' then 0 else 1 end = 1", False, ["c2", "c3", "c4", "c5", "c6", "c7"]),
    ("tag('lifecycle') <> 'active'", False, ["c3", "c6"]),
    ("tag('lifecycle') in ('active', null)", False, ["c1"]),
    ("tag('lifecycle') is null", False, ["c2", "c4", "c5", "c7"]),
]  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("text", "as_set", "expected"), HOLDS)
def test_a_selecting_rule_compares_tags_as_sets_only_where_false_and_null_select_alike(
    dbs: dict[str, Any], engine: str, text: str, as_set: bool, expected: list[str]
) -> None:
    rule = compile_rule(text, AS_SETS, engine, condition=True)
    assert ("t.value IN" in rule.sql) == as_set
    assert rule.calls == compile_rule(text, SCHEMA, engine).calls
    sql = (
        "SELECT p.one_id FROM profiles p JOIN features f ON f.one_id = p.one_id"
        f" WHERE {rule.sql} ORDER BY p.one_id"
    )
    assert [row[0] for row in dbs[engine].execute(sql, rule.params).fetchall()] == expected
    assert select(dbs, engine, text) == expected
    # A rule read as a value (a portrait's `by`) keeps the null: no set.
    assert "t.value IN" not in compile_rule(text, AS_SETS, engine).sql


def test_a_set_keeps_the_errors_of_the_call() -> None:
    text = "city = 'x' and tag('nope') = 'a'"
    errors = []
    for schema, condition in ((SCHEMA, False), (AS_SETS, True)):
        with pytest.raises(RuleError) as caught:
            compile_rule(text, schema, condition=condition)
        errors.append((caught.value.message, caught.value.column))
    assert errors[0] == errors[1] == ("unknown tag 'nope'", 16)


def test_compiled_rule_records_text_fields_and_calls() -> None:
    text = "total_spent_365d >= 1000 and city in ('武汉', '北京') and not has_tag('churned')"
    rule = compile_rule(text, SCHEMA)
    assert rule == CompiledRule(
        text=text,
        sql=(
            "((f.total_spent_365d >= ?) AND ((p.city IN (?, ?)) AND (NOT (EXISTS (SELECT 1 FROM"
            " tags t WHERE t.one_id = p.one_id AND t.tag = ?)))))"
        ),
        params=[1000, "武汉", "北京", "churned"],
        fields=frozenset({"total_spent_365d", "city"}),
        calls=frozenset({"has_tag"}),
    )
    assert compile_rule("coalesce(top_category, 'none')", SCHEMA).calls == frozenset()


def test_dialects_differ_only_where_the_engines_do() -> None:
    like = "top_category like '护%' and order_count / 2 > 1"
    assert compile_rule(like, SCHEMA, "sqlite").sql == (
        "((f.top_category LIKE ?) AND ((CAST(f.order_count AS REAL) / NULLIF(?, 0)) > ?))"
    )
    assert compile_rule(like, SCHEMA, "duckdb").sql == (
        "((f.top_category ILIKE ?) AND ((f.order_count / NULLIF(?, 0)) > ?))"
    )
    with pytest.raises(ValueError, match="dialect must be one of sqlite, duckdb, not 'mysql'"):
        compile_rule("city is null", SCHEMA, "mysql")


def test_schema_expressions_that_are_not_plain_names_are_bracketed() -> None:
    rule = compile_rule("spent_per_order * 2 > 10", SCHEMA)
    assert rule.sql == "(((f.total_spent_365d / nullif(f.order_count, 0)) * ?) > ?)"


@pytest.mark.parametrize(
    "engine_type", ["INTEGER", "BOOLEAN"], ids=["integer column", "boolean column"]
)
def test_bare_boolean_fields_work_on_duckdb_whatever_the_column_type(engine_type: str) -> None:
    # DuckDB tests an integer as a condition like SQLite (0 false, else true, NULL unknown),
    # so a bare field needs no `<> 0`, and the same SQL serves a BOOLEAN column.
    schema = RuleSchema({"flag": "t.flag", "n": "t.n"}, {})
    db = duckdb.connect()
    db.execute(f"CREATE TABLE t (id INTEGER, flag {engine_type}, n INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, 1, 5), (2, 0, 5), (3, None, 1)])
    expected = {
        "flag": [1], "not flag": [2], "flag = true": [1], "flag = false": [2],
        "flag and n = 5": [1], "flag or n = 1": [1, 3], "not flag or flag": [1, 2],
        "case when flag then 1 else 0 end = 0": [2, 3], "flag is null": [3],
    }  # fmt: skip
    for text, ids in expected.items():
        rule = compile_rule(text, schema, "duckdb")
        rows = db.execute(f"SELECT id FROM t WHERE {rule.sql} ORDER BY id", rule.params)
        assert [r[0] for r in rows.fetchall()] == ids, text
    db.close()


ERRORS = [
    ("totl_spent_365d > 1", "unknown field 'totl_spent_365d' (did you mean 'total_spent_365d'?)"),
    ("citty = '武汉'", "unknown field 'citty' (did you mean 'city'?)"),
    ("shoe_size > 40", "unknown field 'shoe_size'"),
    ("foo(1) > 1", "unknown function 'foo'"),
    ("has_tags('churned')", "unknown function 'has_tags' (did you mean 'has_tag'?)"),
    ("count(*) > 1", "unknown function 'count' (did you mean 'event_count'?)"),
    ("date('now') > 1", "unknown function 'date'"),
    ("has_tag", "has_tag is a function; call it as has_tag(...)"),
    ("has_tag('nope')", "unknown tag 'nope'"),
    ("in_segment('vipp')", "unknown segment 'vipp'"),
    ("has_tag()", "has_tag() takes 1 argument (string), got 0"),
    ("has_tag('churned', 'x')", "has_tag() takes 1 argument (string), got 2"),
    (
        "event_count('view_item') > 1",
        "event_count() takes 2 arguments (string, duration), got 1",
    ),
    ("has_tag(1)", "has_tag() argument 1 must be a quoted string, as in 'vip'"),
    ("has_tag(churned)", "has_tag() argument 1 must be a quoted string, as in 'churned'"),
    ("has_tag(lower('x'))", "has_tag() argument 1 must be a quoted string, as in 'vip'"),
    (
        "event_count('view_item', 30) > 1",
        "event_count() argument 2 must be a duration, as in '30d'",
    ),
    (
        "event_count('view_item', '30 days') > 1",
        "event_count() argument 2: invalid duration '30 days': expected a whole number above 0"
        " and a unit (m minutes, h hours, d days, w weeks), as in '30d'",
    ),
    ("t.city = 'x'", "qualified name 't.city' is not allowed; write the field name alone"),
    (
        "main.t.city = 'x'",
        "qualified name 'main.t.city' is not allowed; write the field name alone",
    ),
    ("city in (select city from profiles)", "subqueries are not allowed in a rule"),
    ("exists (select 1)", "subqueries are not allowed in a rule"),
    ("(select 1) = 1", "subqueries are not allowed in a rule"),
    ("select 1", "subqueries are not allowed in a rule"),
    ("1; drop table x", "syntax error at column 2: unexpected ';' (a rule is a single expression)"),
    (
        "city = 'x'; drop table profiles",
        "syntax error at column 11: unexpected ';' (a rule is a single expression)",
    ),
    ("city = 'x';", "syntax error at column 11: unexpected ';' (a rule is a single expression)"),
    ("'a' || (select city from profiles)", "'||' is not allowed in a rule"),
    ("city = 'a' || 'b'", "'||' is not allowed in a rule"),
    (
        "city = “北京”",
        "syntax error at column 8: '“' is not part of the rule language; write \"'\"",
    ),
    (
        "total_spent ≥ 1000",
        "syntax error at column 13: '≥' is not part of the rule language; write '>='",
    ),
    (
        "city in ('北京'，'武汉')",
        "syntax error at column 14: '，' is not part of the rule language; write ','",
    ),
    (
        "（city = '北京'）",
        "syntax error at column 1: '（' is not part of the rule language; write '('",
    ),
    (
        "city = '北京' && total_spent > 1",
        "syntax error at column 13: '&&' is not part of the rule language; write 'and'",
    ),
    ("city = 'a' 'b'", "not allowed in a rule: concat('a', 'b')"),
    ("city = 'a' -- and 1 = 1", "comments are not allowed in a rule"),
    ("city /* x */ = 'a'", "comments are not allowed in a rule"),
    ("city = 'x' or 1 = 1 --'", "comments are not allowed in a rule"),
    ("*", "'*' is not allowed in a rule"),
    ("city = ?", "parameters are not allowed in a rule; write the value itself"),
    ("city = :name", "parameters are not allowed in a rule; write the value itself"),
    ("cast(order_count as text) = '1'", "not allowed in a rule: CAST(order_count AS TEXT)"),
    ("city regexp 'x'", "not allowed in a rule: city REGEXP 'x'"),
    ("city glob 'x*'", "not allowed in a rule: city GLOB 'x*'"),
    ("order_count % 2 = 0", "not allowed in a rule: order_count % 2"),
    ("city like 'a!%' escape '!'", "not allowed in a rule: city LIKE 'a!%' ESCAPE '!'"),
    ("city is 'x'", "'is' only tests for null: write x is null or x is not null"),
    ("birthday_this_month is true", "'is' only tests for null: write x is null or x is not null"),
    (
        "tag('lifecycle') and city is null",
        "tag('lifecycle') is text, not a condition; compare it, as in tag('lifecycle') = '...'",
    ),
    ("not 'yes'", "'yes' is text, not a condition; compare it, as in 'yes' = '...'"),
    ("'a' + 1 > 0", "cannot do arithmetic on text: 'a'"),
    ("-'a' > 0", "cannot do arithmetic on text: 'a'"),
    (
        "1 < total_spent_365d < 5",
        "comparisons cannot be chained; join them with and, as in 1 < x and x < 5",
    ),
    ('city = "武汉"', "\"武汉\" is not a field; text goes in single quotes: '武汉'"),
    ("\"city\" = '武汉'", 'write field names without quotes: city, not "city"'),
    ("city in ()", "in () needs at least one value"),
    ("city in ('武汉', city)", "in (...) takes a list of values, as in city in ('武汉', '北京')"),
    ("total_spent_365d > 1e999", "number too large: 1e999"),
    ("total_spent_365d > 99999999999999999999", "number too large: 99999999999999999999"),
    ("order_count = 1 order_count = 2", "syntax error at column 29: unexpected '='"),
    ("city = 'abc", "syntax error at column 8: unclosed quote"),
    ("city = '武汉' and", "syntax error at column 13: incomplete expression at 'and'"),
    ("order_count >", "syntax error at column 13: incomplete expression at '>'"),
    ("(city is null", "syntax error at column 10: missing ')'"),
    (
        "city is null\n  and city =",
        "syntax error at line 2, column 12: incomplete expression at '='",
    ),
    ("lower(city, 'x') = 'a'", "syntax error at column 16: too many arguments"),
    ("", "rule is empty"),
    ("   ", "rule is empty"),
    ("x" * 10_001, "rule is too long (10001 characters; the limit is 10000)"),
    ("(" * 51 + "city is null" + ")" * 51, "rule is nested too deeply (more than 50 levels)"),
    ("not " * 60 + "city is null", "rule is nested too deeply (more than 50 levels)"),
    ("not " * 2400 + "city is null", "rule is nested too deeply (more than 50 levels)"),
    ("(" * 3000 + "city is null" + ")" * 3000, "rule is nested too deeply (more than 50 levels)"),
    ("order_count" + " + 1" * 60 + " > 0", "rule is nested too deeply (more than 50 levels)"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_invalid_rules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule(text, SCHEMA)
    assert caught.value.message == message
    assert str(caught.value) == message
    assert caught.value.rule == text


@pytest.mark.parametrize("value", ["北京（朝阳）", "“好物”≥ 1，2", "it''s （", "a && b"])
def test_look_alike_characters_inside_a_quoted_value_are_the_value(value: str) -> None:
    compiled = compile_rule(f"city = '{value}' or city = 'x'", SCHEMA)
    assert compiled.params[0] == value.replace("''", "'")


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("totl_spent_365d > 1", 1),
        ("city = '武汉' and totl > 1", 17),
        ("order_count > 1 and has_tag('nope')", 21),
        ("city = 'x' and event_count('view_item', '3x') > 1", 41),
        ("city = 'abc", 8),
        ("city is null\n  and city =", 25),
    ],
)
def test_errors_carry_the_column(text: str, column: int) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule(text, SCHEMA)
    assert caught.value.column == column


def test_rule_error_is_a_usage_level_cdp_error_callers_can_prefix() -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule("citty = 'x'", SCHEMA)
    exc = caught.value
    assert isinstance(exc, CdpError)
    assert exc.exit_code == 2
    wrapped = RuleError(f"tag_rules/a.yaml:3: tag vip: {exc.message}")
    assert (
        str(wrapped) == "tag_rules/a.yaml:3: tag vip: unknown field 'citty' (did you mean 'city'?)"
    )


def test_deep_but_allowed_rules_and_long_chains_compile_and_run(dbs: dict[str, Any]) -> None:
    nested = "(" * 20 + "not (city is null)" + ")" * 20
    for engine in ENGINES:
        assert select(dbs, engine, nested) == ["c1", "c2", "c3", "c5", "c6", "c7"]
    # A long chain of or is not nesting, and is emitted balanced: SQLite refuses expression
    # trees deeper than 1000, which a flat chain of 1,100 terms would be.
    chain = " or ".join(["c='x'"] * 1099 + ["c='上海'"])
    assert len(chain) < 10_000
    for engine in ENGINES:
        rule = compile_rule(chain, RuleSchema({"c": "p.city"}, {}), engine)
        sql = f"SELECT one_id FROM profiles p WHERE {rule.sql}"
        assert dbs[engine].execute(sql, rule.params).fetchall() == [("c3",)]


INJECTIONS = [
    "city = 'x'' or 1=1 --'",
    "city = 'x'' or ''1''=''1'",
    "city = '''; drop table profiles; --'",
    "city = 'x\\' or 1=1 --'",
    "city in ('a'') or (1=1', 'b')",
    "has_tag('churned'' or 1=1 or t.tag = ''x')",
    "city = '\"; drop table profiles; --'",
    "city like '%'' union select one_id from tags --'",
    "city = 'x' or 1=1 --'",
    "city = 'x' union select 1",
    "city = char(39) || 'x'",
    "city = 'x' /* '",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_payloads_are_refused_or_only_parameters(dbs: dict[str, Any], text: str) -> None:
    try:
        rule = compile_rule(text, SCHEMA)
    except RuleError:
        return
    assert "'" not in rule.sql
    assert '"' not in rule.sql
    assert "--" not in rule.sql
    assert rule.sql.count("?") == len(rule.params)
    for engine in ENGINES:
        select(dbs, engine, text)
        assert dbs[engine].execute("SELECT count(*) FROM profiles").fetchone()[0] == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("90m", timedelta(minutes=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "30D", " 30d", "3.5d", "-3d", "0d", "1y"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(RuleError, match=rf"^invalid duration {text!r}: expected a whole number"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["999999999w", "999999d", "36501d", "5215w"])
def test_parse_duration_refuses_durations_no_date_reaches(text: str) -> None:
    """Beyond timedelta, or past what a window or a wait can add to a date (100 years)."""
    with pytest.raises(RuleError) as caught:
        parse_duration(text)
    assert caught.value.message == (
        f"invalid duration {text!r}: too long (at most 100 years, 36500d)"
    )


def test_schema_functions_may_share_a_name_with_an_sql_function() -> None:
    # sqlglot parses length(...) and left(...) into its own node types, not Anonymous.
    schema = RuleSchema(
        {},
        {
            "length": FunctionSpec("length", ("string",), lambda args: ("f(?)", args)),
            "left": FunctionSpec("left", ("string", "number"), lambda args: ("g(?, ?)", args)),
        },
    )
    rule = compile_rule("length('x') > left('y', 3)", schema)
    assert (rule.sql, rule.params) == ("((f(?)) > (g(?, ?)))", ["x", "y", 3])
    assert rule.calls == frozenset({"length", "left"})


def test_function_specs_refuse_unknown_argument_kinds() -> None:
    with pytest.raises(ValueError, match="function f: unknown argument kind 'date'"):
        FunctionSpec("f", ("date",), lambda args: ("?", args))


# Anything typed at a rule prompt either compiles or is a RuleError, never another exception.
RULE_WORDS = [
    "city", "order_count", "has_tag", "tag", "event_count", "coalesce", "round", "lower", "(",
    ")", ",", "'武汉'", "'30d'", "'churned'", "1", "-", "+", "*", "/", "%", "=", "<>", "!=", "<",
    ">=", "and", "or", "not", "in", "between", "is", "null", "like", "case", "when", "then",
    "else", "end", "true", "select", "from", ";", "--", "/*", "*/", "'", '"', "||", ".", "?",
    "1e999", "x'00'", "cast", "as", "exists", "::", "[", "]", "`", "\\", "\n", "0x1f", "$1",
    "//", "<=>", "escape", "left", "count", "is not", "not like", "||", ":x", "@x", "interval",
]  # fmt: skip


def _check_any_text(text: str) -> None:
    try:
        rule = compile_rule(text, SCHEMA)
    except RuleError as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert "'" not in rule.sql
    assert rule.sql.count("?") == len(rule.params)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_random_text_is_compiled_or_refused(text: str) -> None:
    _check_any_text(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(RULE_WORDS), max_size=25).map(" ".join))
def test_random_rule_words_are_compiled_or_refused(text: str) -> None:
    _check_any_text(text)


# Valid rules from a small grammar, evaluated by Python with SQL's three-valued logic and
# compared with both engines. A value is None (NULL), an int or a float.
GRID = (None, -2, 0, 1, 3, 7)
GRID_ROWS = [
    (i, x, y, (None, 5)[i % 2], (None, 0, 1)[i % 3])
    for i, (x, y) in enumerate((x, y) for x in GRID for y in GRID for _ in range(2))
]
GRID_SCHEMA = RuleSchema({name: f"g.{name}" for name in ("x", "y", "z", "b")}, {})
COMPARE = {"=": operator.eq, "!=": operator.ne, "<>": operator.ne, "<": operator.lt,
           "<=": operator.le, ">": operator.gt, ">=": operator.ge}  # fmt: skip


@pytest.fixture(scope="module")
def grid() -> Iterator[dict[str, Any]]:
    connections = {engine: _connect(engine) for engine in ENGINES}
    for db in connections.values():
        db.execute("CREATE TABLE g (id INTEGER, x INTEGER, y INTEGER, z INTEGER, b INTEGER)")
        db.executemany("INSERT INTO g VALUES (?, ?, ?, ?, ?)", GRID_ROWS)
    yield connections
    for db in connections.values():
        db.close()


def _values(depth: int) -> st.SearchStrategy[tuple[Any, ...]]:
    leaves = st.one_of(
        st.sampled_from(["x", "y", "z"]).map(lambda name: ("field", name)),
        st.integers(0, 20).map(lambda n: ("number", n)),
        st.just(("null",)),
    )
    if depth == 0:
        return leaves
    inner = _values(depth - 1)
    return st.one_of(
        leaves,
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("arith"), st.sampled_from("+-*/"), inner, inner),
    )


def _conditions(depth: int) -> st.SearchStrategy[tuple[Any, ...]]:
    value = _values(2)
    leaves = st.one_of(
        st.tuples(st.just("compare"), st.sampled_from(sorted(COMPARE)), value, value),
        st.tuples(st.just("between"), value, value, value),
        st.tuples(st.just("in"), value, st.lists(st.integers(-3, 8), min_size=1, max_size=4)),
        st.tuples(st.just("is null"), value, st.booleans()),
        st.tuples(st.just("bool"), st.booleans()),
        st.just(("flag",)),
    )
    if depth == 0:
        return leaves
    inner = _conditions(depth - 1)
    return st.one_of(
        leaves,
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
    )


def _render(node: tuple[Any, ...]) -> str:
    kind = node[0]
    if kind == "field":
        return node[1]
    if kind == "number":
        return str(node[1])
    if kind == "null":
        return "null"
    if kind == "neg":
        return f"-({_render(node[1])})"
    if kind in ("arith", "compare"):
        return f"({_render(node[2])} {node[1]} {_render(node[3])})"
    if kind == "between":
        return f"({_render(node[1])} between {_render(node[2])} and {_render(node[3])})"
    if kind == "in":
        return f"({_render(node[1])} in ({', '.join(map(str, node[2]))}))"
    if kind == "is null":
        return f"({_render(node[1])} is {'not ' if node[2] else ''}null)"
    if kind == "bool":
        return "true" if node[1] else "false"
    if kind == "flag":
        return "b"
    if kind == "not":
        return f"not ({_render(node[1])})"
    return f"({_render(node[1])} {kind} {_render(node[2])})"


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _evaluate(node: tuple[Any, ...], row: dict[str, Any]) -> Any:
    kind = node[0]
    if kind == "field":
        return row[node[1]]
    if kind == "number":
        return node[1]
    if kind in ("null",):
        return None
    if kind == "neg":
        value = _evaluate(node[1], row)
        return None if value is None else -value
    if kind == "arith":
        a, b = _evaluate(node[2], row), _evaluate(node[3], row)
        if a is None or b is None or (node[1] == "/" and b == 0):
            return None
        return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[
            node[1]
        ](a, b)
    if kind == "compare":
        a, b = _evaluate(node[2], row), _evaluate(node[3], row)
        return None if a is None or b is None else COMPARE[node[1]](a, b)
    if kind == "between":
        value, low, high = (_evaluate(n, row) for n in node[1:])
        above = None if value is None or low is None else value >= low
        below = None if value is None or high is None else value <= high
        return _and(above, below)
    if kind == "in":
        value = _evaluate(node[1], row)
        return None if value is None else value in node[2]
    if kind == "is null":
        return (_evaluate(node[1], row) is None) != node[2]
    if kind == "bool":
        return node[1]
    if kind == "flag":
        return None if row["b"] is None else row["b"] != 0
    if kind == "not":
        value = _evaluate(node[1], row)
        return None if value is None else not value
    combine = _and if kind == "and" else _or
    return combine(_evaluate(node[1], row), _evaluate(node[2], row))


@settings(max_examples=300, deadline=None)
@given(_conditions(3))
def test_valid_rules_select_what_python_evaluates(
    grid: dict[str, Any], tree: tuple[Any, ...]
) -> None:
    text = _render(tree)
    expected = [
        row[0]
        for row in GRID_ROWS
        if _evaluate(tree, dict(zip(("id", "x", "y", "z", "b"), row, strict=True))) is True
    ]
    for engine in ENGINES:
        rule = compile_rule(text, GRID_SCHEMA, engine)
        sql = f"SELECT id FROM g WHERE {rule.sql} ORDER BY id"
        assert [r[0] for r in grid[engine].execute(sql, rule.params).fetchall()] == expected, (
            engine,
            text,
            rule.sql,
        )


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        ("tag('a') = 'x'", [("a", "x")]),
        ("'x' <> tag('a') and total_spent > 3", [("a", "x")]),
        ("tag('a') in ('x', 'y') or has_tag('b')", [("a", "x"), ("a", "y")]),
        ("TAG('a') = 'x'", [("a", "x")]),
        ("tag('a') = 3 or tag(city) = 'x' or city = 'x'", []),
        ("tag('a' = ", []),  # a rule that does not parse names nothing; compiling says why
    ],
)
def test_compared_calls_finds_the_text_a_call_is_compared_with(rule, found):
    from cdp_cli.rules.compiler import compared_calls

    assert compared_calls(rule, "tag") == found
