"""What tests/test_bad_input.py and tests/test_security.py share: a small project with data
stored, cdp run as a user runs it, and the checks a failure must pass.

A user's mistake ends in exactly one line on stderr, "Error: ...", naming the file (and line
where there is one), with exit 1 (data) or 2 (usage, a file the user wrote); never a
traceback, never an internal object's name; and what was stored before is left as it was.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import textwrap
from pathlib import Path

from click.testing import CliRunner, Result

from cdp_cli.cli import cli

NOW = "2026-11-15 10:30"
AS_OF = "2026-11-15"
CONFIG = """
store: cdp.db
region: CN
timezone: Asia/Shanghai
brand: {name: 花漾, url: "https://hy.example.com"}
channels:
  sms: {cost: 0.04}
sources:
  crm:
    kind: customers
    key: member
    fields: {member_no: member, name: name, phone: phone, city: city}
  pos:
    kind: orders
    key: order_no
    fields: {order_id: order_no, member_no: member, amount: amount, ordered_at: paid_at}
  fuzz_csv:
    kind: orders
    format: csv
    key: order_no
    fields: {order_id: order_no, amount: amount, ordered_at: paid_at, phone: member_phone,
             store: store}
  fuzz_jsonl:
    kind: events
    format: jsonl
    key: id
    fields: {event: event, occurred_at: at, member_no: user.member, properties: props}
  fuzz_json:
    kind: customers
    format: json
    key: member
    fields: {member_no: member, name: name, phone: phone, birthday: birthday}
"""
FUZZ_SOURCES = ("fuzz_csv", "fuzz_jsonl", "fuzz_json")
CRM = """member,name,phone,city
M1,李娜,13800000001,武汉
M2,王芳,13800000002,北京
M3,[/],13800000003,武汉
M4,"[bold]陈静
换行",13800000004,上海
M5,\x1b[31m红\x1b[0m,13800000005,成都
M6,杨帆,13800000006,武汉
"""
ORDERS = """order_no,member,amount,paid_at
O1,M1,100,2026-06-01 10:00:00
O2,M2,250.5,2026-10-01 10:00:00
O3,M6,30,2026-11-10 10:00:00
"""
TAGS = """
- name: wuhan
  when: "city = '武汉'"
- name: spender
  cases:
    - {value: big, when: "total_spent >= 200"}
    - {value: small, when: "total_spent > 0"}
"""
SEGMENTS = """
- name: wuhan_people
  rule: "has_tag('wuhan')"
"""
JOURNEY = """
name: hello
entry: {when: "city is not null"}
steps:
  - send: {channel: sms, template: hello}
"""
TEMPLATE = "【{{ brand.name }}】{{ customer.name|default_name }}，您好 {{ link }}"
# What no message may show: our objects, an address, a traceback, a path inside the program.
INTERNALS = re.compile(
    r"<cdp_cli|\bcdp_cli\.|object at 0x|Traceback|File \"|\.py\b|site-packages|\bsqlite3\."
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def cdp(folder: Path, *args: str, input: str | None = None) -> Result:
    """`cdp --config FOLDER/cdp.yaml ARGS` as a user runs it: without CDP_DEBUG, so that a
    bug shows as the one-line 'internal error' users get (which the checks refuse)."""
    return CliRunner().invoke(
        cli,
        ["--config", str(folder / "cdp.yaml"), *args],
        input=input,
        env={"CDP_DEBUG": None, "CDP_CONFIG": None, "CDP_DB": None},
        catch_exceptions=True,
    )


def build_project(folder: Path) -> Path:
    """Customers, orders, resolved, tagged, a journey and its template: data to protect."""
    write(folder, "cdp.yaml", CONFIG)
    write(folder, "crm.csv", CRM)
    write(folder, "orders.csv", ORDERS)
    write(folder, "tag_rules/tags.yaml", TAGS)
    write(folder, "tag_rules/segments.yaml", SEGMENTS)
    write(folder, "journeys/hello.yaml", JOURNEY)
    write(folder, "templates/sms/hello.txt", TEMPLATE)
    for args in (
        ("ingest", str(folder / "crm.csv"), "-s", "crm", "--silent"),
        ("ingest", str(folder / "orders.csv"), "-s", "pos", "--silent"),
        ("resolve",),
        ("tag", "--as-of", AS_OF, "--silent"),
    ):
        result = cdp(folder, *args)
        assert result.exit_code == 0, result.output
    return folder


def copy_project(base: Path, folder: Path) -> Path:
    shutil.copytree(base, folder)
    return folder


def one_line_error(
    result: Result, codes: tuple[int, ...] = (1, 2), names: tuple[str, ...] = ()
) -> str:
    """The failure's one line, after checking it is one: exit code, no traceback, no
    internals, and the names (file, line) it must mention."""
    assert result.exit_code in codes, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: ") and "internal error" not in line, line
    assert not INTERNALS.search(line), line
    for name in names:
        assert name in line, (name, line)
    return line


def clean_outcome(result: Result, codes: tuple[int, ...], names: tuple[str, ...] = ()) -> None:
    """Success, or a failure as one_line_error checks it."""
    if result.exit_code == 0:
        assert result.exception is None, repr(result.exception)
        return
    one_line_error(result, codes, names)


def store_digest(folder: Path, skip_sources: tuple[str, ...] = ()) -> dict[str, tuple[int, str]]:
    """Rows and a checksum per table, leaving out rows of `skip_sources` (where a table has a
    source column, and the keys their updates leave, which the triggers note for resolve and
    tags): what must be the
    same after a command that failed or touched only those sources."""
    conn = sqlite3.connect(folder / "cdp.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
            if not (skip_sources and r[0] in ("replaced_identity_keys", "feature_left_keys"))
        ]
        digest = {}
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            where, params = "", list(skip_sources)
            if "source" in columns and skip_sources:
                where = f" WHERE source NOT IN ({', '.join('?' * len(skip_sources))})"
            else:
                params = []
            rows = sorted(repr(r) for r in conn.execute(f"SELECT * FROM {table}{where}", params))
            digest[table] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
        return digest
    finally:
        conn.close()


def outbound_files(folder: Path) -> list[str]:
    root = folder / "outbound"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
