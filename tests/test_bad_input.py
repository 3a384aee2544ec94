"""Bad input through the CLI, as users and their exports produce it: malformed CSV, JSON and
JSON Lines, wrong encodings, huge fields, control characters and NUL bytes, broken cdp.yaml,
tag and journey files, bad rules and bad templates.

Whatever the input: exit 0, or exit 1 or 2 with exactly one line on stderr that names the
file (and line where there is one); never a traceback or an internal error; and the data
stored before is untouched (tests/hostile.py has the checks).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, query
from tests.hostile import (
    AS_OF,
    FUZZ_SOURCES,
    JOURNEY,
    NOW,
    TAGS,
    build_project,
    cdp,
    clean_outcome,
    copy_project,
    one_line_error,
    store_digest,
    write,
)

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("bad-input") / "project")


@pytest.fixture
def project(base: Path, tmp_path: Path) -> Path:
    return copy_project(base, tmp_path / "project")


@pytest.fixture(scope="module")
def fuzzed(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project every fuzz example of a module ingests into (fresh file names each time)."""
    return copy_project(base, tmp_path_factory.mktemp("fuzzed") / "project")


_counter = iter(range(10**9))


def ingest_fuzz(folder: Path, source: str, data: bytes, suffix: str) -> None:
    """Ingest `data` as a new file of a fuzz source: a clear outcome, earlier data untouched."""
    before = store_digest(folder, FUZZ_SOURCES)
    path = folder / "in" / f"fuzz-{next(_counter)}.{suffix}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    result = cdp(folder, "ingest", str(path), "-s", source, "--silent", "--json")
    clean_outcome(result, (1,), names=(str(path),))
    if result.exit_code == 0:
        [done] = json.loads(result.stdout)
        assert done["status"] in ("done", "skipped"), done  # skipped: the same bytes again
        counted = done["inserted"] + done["updated"] + done["unchanged"] + done["rejected"]
        assert counted == done["rows_read"], done
    assert store_digest(folder, FUZZ_SOURCES) == before


# ---------------------------------------------------------------------------------------------
# Data files

NASTY_CELLS = [
    "", " ", "\x00", "\r", "\n", "\r\n", '"', '""', ",", ";", "\t", "\x1b[31m", "\ufeff",
    "\u2028", "[/]", "=cmd|' /C calc'!A0", "𠀀𠀁", "١٢٣", "1e309", "NaN", "-0", "9" * 400,
    "2025-02-30", "0000-00-00 00:00:00", "1" * 20, "\\", "\x7f", "\x85", "�",
]  # fmt: skip
cells = st.one_of(
    st.text(max_size=24),
    st.sampled_from(NASTY_CELLS),
    st.from_regex(r"-?\d{1,14}(\.\d{1,6})?", fullmatch=True),
    st.dates().map(str),
)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "gb18030", "latin-1"]


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = ["order_no", "amount", "paid_at", "member_phone", "store"]
    if draw(st.booleans()):
        header = draw(st.permutations(header + ["extra", "order_no"][: draw(st.integers(0, 2))]))
    rows = draw(st.lists(st.lists(cells, max_size=7), max_size=12))
    if draw(st.booleans()):  # written by a CSV writer: odd content, well quoted
        out = io.StringIO()
        csv.writer(out).writerows([header, *rows])
        text = out.getvalue()
    else:  # joined by hand: stray quotes, ragged rows
        text = "\n".join(",".join(row) for row in [header, *rows])
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    junk = draw(st.binary(max_size=40))
    at = draw(st.integers(0, len(data)))
    return data[:at] + junk + data[at:] if draw(st.booleans()) else data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(NASTY_CELLS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
event_rows = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(max_size=8),
        "event": json_values | st.sampled_from(["view", "order", ""]),
        "at": json_values | st.sampled_from(["2026-11-01 10:00:00", "1731675029978", "x"]),
        "user": st.fixed_dictionaries({}, optional={"member": json_values}) | json_values,
        "props": json_values,
    },
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.one_of(
                event_rows.map(lambda row: json.dumps(row, ensure_ascii=draw(st.booleans()))),
                json_values.map(json.dumps),
                st.text(max_size=30),
                st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
                st.integers(1, 3000).map(
                    lambda n: '{"id": "d", "props": ' + "[" * n + "]" * n + "}"
                ),
            ),
            max_size=10,
        )
    )
    data = "\n".join(lines).encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


@st.composite
def json_files(draw: st.DrawFn) -> bytes:
    items = draw(
        st.lists(
            json_values
            | st.fixed_dictionaries(
                {"member": st.text(max_size=6)},
                optional={"name": json_values, "phone": json_values},
            ),
            max_size=8,
        )
    )
    text = json.dumps(items)
    if draw(st.booleans()):
        depth = draw(st.integers(1, 5000))
        text = text[:-1] + ("," if items else "") + "[" * depth + "]" * depth + "]"
    cut = draw(st.integers(0, len(text)))
    return (text[:cut] if draw(st.booleans()) else text).encode(
        draw(st.sampled_from(ENCODINGS)), errors="replace"
    )


@settings(FUZZ, max_examples=60)
@given(data=csv_files())
def test_malformed_csv(fuzzed: Path, data: bytes) -> None:
    ingest_fuzz(fuzzed, "fuzz_csv", data, "csv")


@settings(FUZZ, max_examples=50)
@given(data=jsonl_files())
def test_malformed_json_lines(fuzzed: Path, data: bytes) -> None:
    ingest_fuzz(fuzzed, "fuzz_jsonl", data, "jsonl")


@settings(FUZZ, max_examples=40)
@given(data=json_files())
def test_malformed_json_arrays(fuzzed: Path, data: bytes) -> None:
    ingest_fuzz(fuzzed, "fuzz_json", data, "json")


@settings(FUZZ, max_examples=30)
@given(data=st.binary(max_size=600), source=st.sampled_from(FUZZ_SOURCES))
def test_random_bytes(fuzzed: Path, data: bytes, source: str) -> None:
    ingest_fuzz(
        fuzzed,
        source,
        data,
        {"fuzz_csv": "csv", "fuzz_jsonl": "jsonl", "fuzz_json": "json"}[source],
    )


def test_huge_fields_are_stored_or_rejected_and_the_rest_kept(project: Path) -> None:
    """Under limits raised to 16 MiB a cell, a 10 MB cell is stored (and resolves); a 20 MB
    one is over the limit and rejected with the reason; the rows around them are kept. (The
    default limits refuse both: tests/test_input_limits.py.)"""
    config = project / "cdp.yaml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + "limits: {row_bytes: 33554432, field_chars: 16777216, attrs_bytes: 16777216}\n",
        encoding="utf-8",
    )
    header = "order_no,amount,paid_at,member_phone,store\n"
    path = project / "huge.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write(header + f"H1,1,2026-01-01,{'1' * (10 << 20)},s\n")
        f.write(f"H2,1,2026-01-01,,{'x' * (20 << 20)}\nH3,2,2026-01-01,13800000009,s\n")
    jsonl = project / "huge.jsonl"
    jsonl.write_text(
        json.dumps(
            {"id": "J1", "event": "view", "at": "2026-11-01", "props": {"note": "y" * (10 << 20)}}
        )
        + "\n",
        encoding="utf-8",
    )
    before = store_digest(project, FUZZ_SOURCES)
    started = time.monotonic()
    result = cdp(project, "ingest", str(path), "-s", "fuzz_csv", "--json", "--silent")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["reject_reasons"] == {"too_large": 1}
    result = cdp(project, "ingest", str(jsonl), "-s", "fuzz_jsonl", "--json", "--silent")
    assert json.loads(result.stdout)[0]["inserted"] == 1, result.output
    assert query(
        project / "cdp.db",
        "SELECT key, length(phone) FROM orders WHERE source = 'fuzz_csv' ORDER BY key",
    ) == [("H1", 10 << 20), ("H3", 11)]
    assert query(project / "cdp.db", "SELECT reason FROM rejects WHERE source = 'fuzz_csv'") == [
        ("too large: a value over limits.field_chars in cdp.yaml (16,777,216 characters)",)
    ]
    assert (
        cdp(project, "resolve").exit_code == 0
    )  # a 10 MB "phone" is a value that identifies no one
    assert time.monotonic() - started < 60
    assert store_digest(project, FUZZ_SOURCES)["customers"] == before["customers"]


def test_deep_nesting_is_one_reject_in_little_memory_and_time(project: Path) -> None:
    """100,000 nested brackets: one rejected row, not a file that fails (JSON Lines hit
    Python's recursion limit) or a process the kernel kills (ijson.items needed gigabytes)."""
    deep = "[" * 100_000 + "]" * 100_000
    (project / "deep.json").write_text(
        f'[{{"member": "D1"}}, {deep}, {{"member": "D2"}}]', encoding="utf-8"
    )
    lines = [
        {"id": "E1", "event": "view", "at": "2026-11-01"},
        {"id": "E2", "event": "view", "at": "2026-11-01"},
    ]
    (project / "deep.jsonl").write_text(
        json.dumps(lines[0]) + f'\n{{"id": "E3", "props": {deep}}}\n' + json.dumps(lines[1]) + "\n",
        encoding="utf-8",
    )
    started = time.monotonic()
    for name, source in (("deep.json", "fuzz_json"), ("deep.jsonl", "fuzz_jsonl")):
        result = cdp(project, "ingest", str(project / name), "-s", source, "--json", "--silent")
        assert result.exit_code == 0, result.output
        [done] = json.loads(result.stdout)
        assert (done["inserted"], done["reject_reasons"]) == (2, {"invalid_json": 1}), done
    assert time.monotonic() - started < 10
    assert query(
        project / "cdp.db",
        "SELECT source, line, reason FROM rejects WHERE source LIKE 'fuzz%' ORDER BY source",
    ) == [
        ("fuzz_json", 2, "JSON nested more than 64 levels deep"),
        ("fuzz_jsonl", 2, "JSON nested more than 64 levels deep"),
    ]


def test_a_short_gbk_export_with_a_broken_line_is_read_as_gbk(project: Path) -> None:
    """A detector took a few lines of GBK for a Cyrillic code page; UTF-8 and GBK come first."""
    lines = (
        (REPO / "sample_data" / "crm_members_legacy_gbk.csv").read_bytes().splitlines(keepends=True)
    )
    short = project / "short_gbk.csv"
    short.write_bytes(b"".join(lines[:1] + lines[1::8]))  # the broken line 2 is among them
    write(
        project,
        "cdp.yaml",
        (project / "cdp.yaml").read_text(encoding="utf-8")
        + """
  legacy:
    kind: customers
    key: member_no
    fields: {member_no: 会员编号, name: 姓名, phone: 手机号}
""",
    )
    result = cdp(project, "ingest", str(short), "-s", "legacy", "--json", "--silent")
    assert result.exit_code == 0, result.output
    [done] = json.loads(result.stdout)
    assert (done["encoding"], done["rejected"]) == ("gb18030", 1), done
    names = [
        r[0]
        for r in query(project / "cdp.db", "SELECT name FROM customers WHERE source = 'legacy'")
    ]
    assert len(names) == done["inserted"] > 10
    assert all(re.fullmatch(r"[\u4e00-\u9fff·]+", name) for name in names), names  # not Cyrillic


@pytest.mark.parametrize(
    ("encoding", "read"),
    [
        ("utf-16", True),  # with a BOM: read as UTF-16
        ("utf-8-sig", True),
        ("gb18030", True),
        ("latin-1", True),  # the line that does not decode as UTF-8 or GBK is a reject
        ("utf-16-le", False),  # no BOM: read as UTF-8, so the header does not match
    ],
)
def test_encodings(project: Path, encoding: str, read: bool) -> None:
    text = "order_no,amount,paid_at,member_phone,store\nE1,1,2026-01-01,,Café Zürich\nE2,2,2026-01-02,,武汉店\n"
    path = project / f"{encoding}.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    before = store_digest(project, FUZZ_SOURCES)
    result = cdp(project, "ingest", str(path), "-s", "fuzz_csv", "--json", "--silent")
    if read:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["rows_read"] == 2
    else:
        line = one_line_error(result, (1,), names=(str(path), "is not in the header"))
        assert "\x00" not in line and "\\x00" in line  # the NUL bytes shown, escaped
    assert store_digest(project, FUZZ_SOURCES) == before


def test_control_characters_in_values_and_names_stay_on_their_line(project: Path) -> None:
    """Customers named "[/]", "[bold]...\\n..." and with terminal escapes print as text, each
    row on one line (rich read "[/]" as markup and crashed); a file name with a newline makes
    a one-line error."""
    for member in ("M3", "M4", "M5"):
        one_id = query(
            project / "cdp.db",
            "SELECT one_id FROM id_mapping WHERE source = 'crm' AND key = ?",
            member,
        )[0][0]
        result = cdp(project, "profile", one_id)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout
    shown = cdp(
        project,
        "profile",
        query(project / "cdp.db", "SELECT one_id FROM id_mapping WHERE key = 'M4'")[0][0],
    ).stdout
    assert "[bold]陈静\\n换行" in shown
    sample = cdp(project, "segment", "--rule", "city is not null", "--sample", "6")
    assert sample.exit_code == 0 and "[/]" in sample.stdout and "\\x1b[31m红" in sample.stdout
    odd = project / "bad\nname\x1b[2J.csv"
    one_line_error(
        cdp(project, "ingest", str(odd), "-s", "fuzz_csv"),
        (1,),
        names=("bad\\nname\\x1b[2J.csv: file not found",),
    )


# ---------------------------------------------------------------------------------------------
# Files the user writes: cdp.yaml, tag rules, journeys, templates

YAML_NOISE = st.sampled_from(
    [
        *list(":-[]{}#&*!|>'\"%@`,?\t\n "),
        "  ",
        "\n  ",
        "- ",
        ": ",
        "\x00",
        "\x85",
        "中",
        "é",
        "1e3",
        "no",
        "~",
        "!!python/object:os.system",
        "&a",
        "*a",
        "<<: *a",
        "---",
        "...",
    ]
)


@st.composite
def mutations(draw: st.DrawFn, text: str) -> str:
    """A YAML file as a hurried edit leaves it: characters in, a span out, a line doubled,
    swapped or cut short."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["insert", "delete", "double", "swap", "truncate"]))
        at = draw(st.integers(0, len(text)))
        if kind == "insert":
            text = (
                text[:at] + "".join(draw(st.lists(YAML_NOISE, min_size=1, max_size=4))) + text[at:]
            )
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif kind == "truncate":
            text = text[:at]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "double":
                lines.insert(i, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


def _run_mutated(
    folder: Path, relative: str, text: str, command: tuple[str, ...], names: tuple[str, ...]
) -> None:
    path = folder / relative
    original = path.read_text(encoding="utf-8")
    before = store_digest(folder)
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = cdp(folder, *command)
        clean_outcome(result, (1, 2), names=names if result.exit_code == 2 else ())
        if result.exit_code != 0:
            assert store_digest(folder) == before
    finally:
        path.write_text(original, encoding="utf-8")


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_broken_cdp_yaml(fuzzed: Path, data: st.DataObject) -> None:
    text = data.draw(mutations((fuzzed / "cdp.yaml").read_text(encoding="utf-8")))
    _run_mutated(fuzzed, "cdp.yaml", text, ("resolve",), names=("cdp.yaml",))


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_broken_tag_files(project: Path, data: st.DataObject) -> None:
    text = data.draw(mutations(TAGS))
    _run_mutated(
        project,
        "tag_rules/tags.yaml",
        text,
        ("tag", "--as-of", AS_OF, "--silent"),
        names=("tag_rules/tags.yaml",),
    )


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_broken_journey_files(project: Path, data: st.DataObject) -> None:
    text = data.draw(mutations(JOURNEY.lstrip("\n")))
    command = ("journey", "run", "--now", NOW)
    _run_mutated(project, "journeys/hello.yaml", text, command, names=("journeys/hello.yaml",))


RULE_WORDS = [
    "total_spent", "city", "name", "order_count", "days_since_last_order", ">=", "<", "=", "!=",
    "<>", "and", "or", "not", "(", ")", "'武汉'", "'x'", "''", "1", "2.5", "-3", "1e400", ",",
    "is", "null", "in", "between", "like", "'%'", "tag('wuhan')", "has_tag('spender')", "tag(",
    "in_segment('wuhan_people')", "event_count('view', '30d')", "'30d'", "*", "+", "-", "/",
    "||", "case", "when", "then", "else", "end", "select", "from", ";", "--", "/*", "*/", "?",
    ":x", "$1", "@a", "`", '"', "true", "false", "\x00", "\n",
]  # fmt: skip


@settings(FUZZ, max_examples=80)
@given(
    words=st.lists(st.sampled_from(RULE_WORDS), min_size=1, max_size=10)
    | st.lists(st.text(max_size=8), max_size=3)
)
def test_bad_rules(fuzzed: Path, words: list[str]) -> None:
    rule = " ".join(words)
    before = store_digest(fuzzed)
    result = cdp(fuzzed, "segment", "--rule", rule, "--json")
    clean_outcome(result, (2,))
    assert store_digest(fuzzed) == before


TEMPLATE_WORDS = [
    "{{", "}}", "{%", "%}", "{#", "#}", "customer.name", "customer", "|default_name", "|upper",
    "|money", "|date('short')", "|join(',')", "for", "x", "in", "range(3)", "endfor", "if",
    "endif", "else", "set", "=", "macro", "m()", "endmacro", "call", "endcall", "(", ")", ".",
    "[", "]", "'", '"', "~", "*", "10", "1/0", "【", "】", "coupon.code", "loop.index", "raw",
    "endraw", "include", "'sms/t.txt'", "'sms/hello.txt'", "extends", "block", "endblock",
    "__class__", "self", "\n", " ", "None", "tags", "features.total_spent",
]  # fmt: skip


@settings(FUZZ, max_examples=80)
@given(words=st.lists(st.sampled_from(TEMPLATE_WORDS), min_size=1, max_size=14))
def test_bad_templates(project: Path, words: list[str]) -> None:
    write(project, "templates/sms/t.txt", "【花漾】" + "".join(words))
    result = cdp(project, "journey", "validate")
    clean_outcome(result, (2,), names=("templates/sms/t.txt",))


def test_broken_files_name_file_and_line(project: Path) -> None:
    cases = [
        ("cdp.yaml", "sources:\n  crm:\n    kind: customers\n   key: member\n", ("resolve",), "cdp.yaml:4: invalid YAML, column 4"),
        ("cdp.yaml", "sources: [\n", ("resolve",), "cdp.yaml:2: invalid YAML, column 1"),
        ("cdp.yaml", "store: a\nstore: b\n", ("resolve",), "cdp.yaml:2: duplicate key 'store'"),
        ("cdp.yaml", "\tstore: a\n", ("resolve",), "cdp.yaml:1: invalid YAML, column 1: found character '\\t' that cannot start any token"),
        ("cdp.yaml", "!!python/object/apply:os.system ['true']\n", ("resolve",), "cdp.yaml:1: invalid YAML, column 1: could not determine a constructor for the tag"),
        ("cdp.yaml", b"store: \xff\xfe\n", ("resolve",), "cdp.yaml: not UTF-8 text (invalid start byte at byte 7)"),
        ("cdp.yaml", "store: a\nregion: \x00\n", ("resolve",), "cdp.yaml:2: invalid YAML, column 9: character '\\x00' is not allowed"),
        ("tag_rules/tags.yaml", "- name: a\n  when: \"city = \"\n", ("tag", "--as-of", AS_OF), "tag_rules/tags.yaml:1: tag a:"),
        ("tag_rules/tags.yaml", "- name: a\n  when: x\n- name: a\n  when: y\n", ("tag", "--as-of", AS_OF), "tag_rules/tags.yaml:3: tag 'a' is defined twice"),
        ("journeys/hello.yaml", "name: hello\nentry: {when: \"city is not null\"}\nsteps:\n  - sned: {}\n", ("journey", "run", "--now", NOW), "journeys/hello.yaml:4: steps[0]: unknown step 'sned' (did you mean 'send'?)"),
        ("templates/sms/hello.txt", "hi {{ customer.name }\n", ("journey", "run", "--now", NOW), "templates/sms/hello.txt:1: syntax error"),
        ("templates/sms/hello.txt", "hi\n{{ customer.nam }}\n", ("journey", "run", "--now", NOW), "templates/sms/hello.txt:2: undefined"),
    ]  # fmt: skip
    for relative, text, command, message in cases:
        path = project / relative
        original = path.read_bytes()
        before = store_digest(project)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        line = one_line_error(cdp(project, *command), (2,))
        assert f"{project / relative.split(':')[0]}" in line, line
        assert message in line, (message, line)
        assert store_digest(project) == before
        path.write_bytes(original)


def test_a_broken_journey_stops_the_run_before_any_journey_changes_anything(project: Path) -> None:
    write(project, "journeys/zz_broken.yaml", JOURNEY.replace("hello", "zz_broken"))
    write(project, "templates/sms/zz_broken.txt", "{{ oops")
    before = store_digest(project)
    line = one_line_error(cdp(project, "journey", "run", "--now", NOW), (2,))
    assert "templates/sms/zz_broken.txt" in line
    assert store_digest(project) == before  # hello ran first and queued its messages
