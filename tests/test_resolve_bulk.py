"""Resolve at size: a `--full` rerun costs what a first run costs (no path that grows with the
square of the customers), and the quicker ways to judge a value (the phone type, the
blocklist) say what the slower ones said."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.config import load_config
from cdp_cli.identity.normalize import _CN_TYPES, Normalizer
from cdp_cli.identity.resolve import resolve
from cdp_cli.identity.settings import BUILTIN_TYPES, IdentityRules
from cdp_cli.ingest import ingest_file
from cdp_cli.store import open_store
from tests.conftest import query

MEMBERS = 20_000
CONFIG = """store: cdp.db
region: CN
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member_no, name: name, phone: phone, email: email}
"""


def write_members(path: Path, rows: int, first: int = 0) -> None:
    """Members with a phone and an email of their own, written as exports write them: one
    customer per record, so a rerun holds as many one_ids as a store of this size can."""
    rng = random.Random(5)
    lines = ["member_no,name,phone,email"]
    for n in range(first, first + rows):
        phone = f"13{n % 10}{(n * 7_919_993 + 12_345) % 10**8:08d}"
        written = rng.choice([phone, f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}", f"0086{phone}"])
        lines.append(f"M{n:07d},member {n},{written}, Member.{n}@Example.com ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _timed_resolve(config_path: Path, full: bool) -> tuple[float, dict[str, int | str]]:
    config = load_config(config_path)
    db = open_store(config.store)
    try:
        started = time.perf_counter()
        result = resolve(db, config, full=full)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    return seconds, {
        "mode": result.mode,
        "profiles": result.profiles,
        "created": result.created,
        "merged": result.merged,
        "split": result.split,
    }


@pytest.mark.slow  # 20k records three times: CI runs it with -m slow
def test_full_rerun_of_a_resolved_store_takes_at_most_twice_the_first_run(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write_members(tmp_path / "crm.csv", MEMBERS)
    assert run("ingest", "crm.csv", "--source", "crm").exit_code == 0
    first, created = _timed_resolve(tmp_path / "cdp.yaml", full=False)
    assert created == {
        "mode": "full", "profiles": MEMBERS, "created": MEMBERS, "merged": 0, "split": 0
    }  # fmt: skip
    mapping = query(tmp_path / "cdp.db", "SELECT key, one_id FROM id_mapping ORDER BY key")
    rerun, changed = _timed_resolve(tmp_path / "cdp.yaml", full=True)
    if rerun > 2 * first:  # once more: a burst of load on a shared machine is no regression
        rerun = min(rerun, _timed_resolve(tmp_path / "cdp.yaml", full=True)[0])
    assert changed == {"mode": "full", "profiles": MEMBERS, "created": 0, "merged": 0, "split": 0}
    assert query(tmp_path / "cdp.db", "SELECT key, one_id FROM id_mapping ORDER BY key") == mapping
    assert rerun <= 2 * first, f"--full rerun {rerun:.2f} s, first run {first:.2f} s"


def _project(folder: Path, *files: Path) -> Path:
    """A project in `folder` with these member files ingested; its cdp.yaml."""
    folder.mkdir()
    config_path = folder / "cdp.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    _ingest(config_path, *files)
    return config_path


def _ingest(config_path: Path, *files: Path) -> None:
    config = load_config(config_path)
    db = open_store(config.store)
    try:
        for path in files:
            assert ingest_file(db, config.sources["crm"], path).status == "done"
    finally:
        db.close()


@pytest.mark.slow  # 20k records three times: CI runs it with -m slow
def test_full_run_with_new_customers_next_to_resolved_ones_costs_what_a_first_run_does(tmp_path):
    """Each new customer once, not once per customer already there."""
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    write_members(old, MEMBERS // 2)
    write_members(new, MEMBERS // 2, first=MEMBERS // 2)
    fresh = _project(tmp_path / "fresh", old, new)
    first, created = _timed_resolve(fresh, full=False)
    assert created["created"] == MEMBERS
    grown = _project(tmp_path / "grown", old)
    assert _timed_resolve(grown, full=False)[1]["created"] == MEMBERS // 2
    _ingest(grown, new)
    full, changed = _timed_resolve(grown, full=True)
    assert changed == {
        "mode": "full", "profiles": MEMBERS, "created": MEMBERS // 2, "merged": 0, "split": 0
    }  # fmt: skip
    assert full <= 2 * first, f"--full with new customers {full:.2f} s, first run {first:.2f} s"


def test_a_full_run_normalizes_each_distinct_value_once(tmp_path, monkeypatch):
    """A value written the same way on many records (a store's phone on every order, a member
    in two exports) is normalized once a run; and the customers are the ones a run per record
    gives."""
    asked: list[tuple[str, tuple[str | None, ...]]] = []
    normalize = Normalizer._normalize

    def counted(self: Normalizer, type_name: str, parts: tuple[str | None, ...]) -> object:
        asked.append((type_name, parts))
        return normalize(self, type_name, parts)

    monkeypatch.setattr(Normalizer, "_normalize", counted)
    members = tmp_path / "crm.csv"
    written = ["13912345678", "+86 139 1234 5678", "13912345678", "0086 13912345678"]
    rows = [f"M{n},m{n},{phone},m{n % 2}@example.com" for n, phone in enumerate(written)]
    members.write_text("member_no,name,phone,email\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = load_config(_project(tmp_path / "p", members))
    db = open_store(config.store)
    try:
        result = resolve(db, config, full=True)
    finally:
        db.close()
    assert len(asked) == len(set(asked)), "a value normalized twice"
    raws = {parts[0] for _, parts in asked}
    assert {"13912345678", "+86 139 1234 5678", "0086 13912345678"} <= raws
    assert {"m0@example.com", "m1@example.com", "M0", "M3"} <= raws
    # Every member carries the same phone, but a customer holds one member number: each
    # member is a customer of their own, and the phone joins none of them.
    assert result.profiles == 4


def test_phone_types_are_the_ones_phonenumbers_gives():
    """Every 4-digit start of a CN national number, at every length the metadata knows."""
    rng = random.Random(3)
    differ = []
    for start in range(1000, 10_000):
        for length in range(7, 13):
            national = f"{start}{rng.randrange(10 ** (length - 4)):0{length - 4}d}"
            number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national))
            if _CN_TYPES.number_type(national) != phonenumbers.number_type(number):
                differ.append(national)
    assert differ == []


def _blocked_as_before(normalizer: Normalizer, type_name: str, raw: str, normalized: str):
    """The blocklist as it was judged value by value before its checks were grouped per type
    and the normalized value's verdict cached: the reference."""
    from cdp_cli.identity.junk import JUNK_RULES
    from cdp_cli.identity.normalize import _SEPARATORS, PROJECT_BLOCKLIST

    texts = {raw.strip().lower(), normalized.lower()}
    forms = texts | {_SEPARATORS.sub("", t) for t in texts}
    project = normalizer._project
    if texts & project.values or any(p.search(f) for p in project.patterns for f in forms):
        return PROJECT_BLOCKLIST
    for rule in JUNK_RULES:
        if rule.name in normalizer.rules.default_blocklist_off or not rule.judges(type_name):
            continue
        judged = [f for f in forms if len(f) >= rule.min_length.get(type_name, 0)]
        pattern = re.compile(rule.pattern, re.IGNORECASE) if rule.pattern else None
        if texts & rule.values or (pattern and any(pattern.search(f) for f in judged)):
            return f"{rule.why} ({rule.name})"
    return None


junk_like = st.text(alphabet="01 9-x.@+Tt", max_size=12) | st.sampled_from(
    ["null", " N/A ", "test@qq.com", "13912345678", "+86 139 1234 5678", "1111-1111", "a@spam.cn"]
)
RULES = [
    IdentityRules(),
    IdentityRules(blocklist=("13912345678", r"re:^9+$", r"re:@spam\.cn$")),
    IdentityRules(default_blocklist_off=("repeated_character",)),
]


@settings(max_examples=500)
@given(
    st.sampled_from(range(len(RULES))),
    st.sampled_from([t.name for t in BUILTIN_TYPES]),
    st.lists(st.tuples(junk_like, junk_like), min_size=1, max_size=4),
)
def test_blocklist_verdicts_are_the_ones_judged_value_by_value(rules, type_name, values):
    """Raw values that share a normalized one (the verdict cached for it) included."""
    normalizer = Normalizer(RULES[rules], "CN")
    for raw, normalized in values:
        for written in (raw, normalized + " ", raw.upper()):
            expected = _blocked_as_before(normalizer, type_name, written, normalized)
            assert normalizer.blocked(type_name, written, normalized) == expected


staged_keys = st.lists(
    st.tuples(
        st.integers(-3, 3),  # identity keys repeat: the same record read from two tables
        st.lists(
            st.tuples(
                st.sampled_from(["email", "member_no", "phone"]),
                st.text(alphabet="ab1", min_size=1, max_size=3),
                st.sampled_from([None, "mobile", "fixed"]),
            ),
            max_size=3,
        ),
    ),
    max_size=8,
)


@settings(max_examples=300)
@given(staged_keys, st.data())
def test_the_graph_numbers_keys_as_staged_and_identifiers_by_type_and_value(keys, data):
    """Graph.load against the numbering resolve had before it: key nodes in the order keys
    first came, identifier ids in (type, value) order, each identifier's key nodes once and
    in key order, a value's detail its largest. The keys after a split point are staged as a
    second process's (keys_worker.py), mixed in anywhere among the first's: they number as
    if they had come after them all."""
    import sqlite3

    from cdp_cli.identity.graph import Graph, stage

    split = data.draw(st.integers(0, len(keys)))
    first, second = keys[:split], keys[split:]
    mixed = []
    for second_next in data.draw(st.lists(st.booleans(), min_size=len(keys), max_size=len(keys))):
        if first and not (second_next and second):
            mixed.append((0, *first.pop(0)))
        else:
            mixed.append((1, *second.pop(0)))
    conn = sqlite3.connect(":memory:")
    stage(conn, mixed)
    graph = Graph.load(conn, BUILTIN_TYPES)
    order = list(dict.fromkeys(key for key, _ in keys))
    assert list(graph.key_of) == order
    carried: dict[tuple[str, str], set[int]] = {}
    details: dict[tuple[str, str], list[str]] = {}
    for key, found in keys:
        for type_name, value, detail in found:
            carried.setdefault((type_name, value), set()).add(key)
            details.setdefault((type_name, value), []).extend([detail] if detail else [])
    idents = sorted(carried)
    stored = conn.execute("SELECT id, type, value, detail FROM graph_idents ORDER BY id")
    assert [tuple(row) for row in stored] == [
        (n, t, v, max(details[(t, v)], default=None)) for n, (t, v) in enumerate(idents, 1)
    ]
    node = {key: n for n, key in enumerate(order)}
    for n, ident in enumerate(idents, 1):
        assert list(graph.keys_of(graph.base + n)) == [node[k] for k in sorted(carried[ident])]
    ranges: dict[str, tuple[int, int]] = {}
    for n, (type_name, _) in enumerate(idents, 1):
        ranges[type_name] = (ranges.get(type_name, (n, n))[0], n)
    assert graph.ranges == ranges
