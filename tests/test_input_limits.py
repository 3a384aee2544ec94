"""Faults a box will meet (issue 12): a row too large for memory, personal data in messages,
and a dry run that writes nothing.

A row, a value and an attrs document past `limits:` in cdp.yaml are rejects, the rows around
them kept, in flat memory; a message that quotes a row masks every cell that may be personal;
`cdp run --dry-run` takes no lock, writes no log line and creates no file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdp_cli import lock
from cdp_cli.canonical import KINDS
from cdp_cli.privacy import PERSONAL_FIELDS, mask_value, quote_cells
from tests.conftest import query
from tests.ops_helpers import drop

CONFIG = """
store: cdp.db
log: logs/cdp.log
sources:
  events:
    kind: events
    format: jsonl
    key: id
    fields: {event: event, occurred_at: at, member_no: member}
    inbox: inbox/events
  orders:
    kind: orders
    format: csv
    key: order_no
    fields: {order_id: order_no, amount: amount, ordered_at: paid_at}
  people:
    kind: customers
    format: json
    key: member
    fields: {member_no: member, name: name}
"""
SOURCE_OF = {"jsonl": "events", "csv": "orders", "json": "people"}
TABLE_OF = {"jsonl": "events", "csv": "orders", "json": "customers"}
BIG = 50 << 20  # a 50 MB line: what a broken export writes
ROW_TOO_LARGE = "too large: a row over limits.row_bytes in cdp.yaml (1,048,576 bytes)"
VALUE_TOO_LARGE = "too large: a value over limits.field_chars in cdp.yaml (65,536 characters)"
# Peak RSS a 50 MB line may add to a `cdp ingest` of the same file without it: less than one
# copy of the line. Before, the line took the process from some 45 MB to 150-290 MB, as many
# times its size as copies of it were made. (Compared with the same ingest, not as a total:
# what the process starts at depends on what is installed.)
RSS_GROWTH_LIMIT_MB = 40


@pytest.fixture
def project(write):
    write("cdp.yaml", CONFIG)


def event(key: str, **extra: object) -> str:
    return json.dumps({"id": key, "event": "view", "at": "2026-11-01 10:00:00", **extra})


def write_with_a_big_row(path: Path, fmt: str, size: int = BIG) -> None:
    """Good rows around one of `size` (50 MB), and a blank line, written without holding it."""
    with path.open("w", encoding="utf-8") as f:
        if fmt == "jsonl":  # E2 on line 2; E1, E3, E4 on lines 1, 3, 5
            f.write(event("E1") + "\n" + event("E2")[:-1] + ', "note": "')
            f.writelines("x" * (1 << 20) for _ in range(size >> 20))
            f.write('"}\n' + event("E3") + "\n\n" + event("E4") + "\n")
        elif fmt == "csv":  # O2 on line 3
            f.write("order_no,amount,paid_at,note\nO1,1,2026-11-01,a\nO2,2,2026-11-01,")
            f.writelines("y" * (1 << 20) for _ in range(size >> 20))
            f.write("\nO3,3,2026-11-01,b\n\nO4,4,2026-11-01,c\n")
        else:
            f.write('[{"member": "M1", "name": "a"},\n {"member": "M2", "name": "')
            f.writelines("z" * (1 << 20) for _ in range(size >> 20))
            f.write('"},\n {"member": "M3"}]\n')


# A process whose one child is `cdp ingest`: its peak RSS is that child's, whatever else the
# test process ran before.
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps([done.returncode, done.stdout, done.stderr,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
""".replace("import resource", "import json, resource")


def ingest_measured(folder: Path, path: Path, source: str) -> tuple[int, str, str, float]:
    """`cdp ingest` in its own process: exit code, stdout, stderr and peak RSS in MB."""
    cdp = [sys.executable, "-m", "cdp_cli", "--config", str(folder / "cdp.yaml")]
    args = [*cdp, "ingest", str(path), "-s", source, "--json", "--silent"]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True
    )
    code, stdout, stderr, rss_kb = json.loads(out.stdout)
    return code, stdout, stderr, rss_kb / 1024


def rss_without_the_big_row(folder: Path, fmt: str, source: str) -> float:
    """The peak RSS of the same ingest, in another store, of a file of the same rows but a
    small one for the big."""
    small = folder / "small"
    small.mkdir()
    (small / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    path = small / f"small.{fmt}"
    write_with_a_big_row(path, fmt, size=1 << 20)
    return ingest_measured(small, path, source)[3]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_50_mb_row_is_one_reject_in_flat_memory(tmp_path, project, fmt):
    path = tmp_path / f"big.{fmt}"
    write_with_a_big_row(path, fmt)

    code, stdout, stderr, rss_mb = ingest_measured(tmp_path, path, SOURCE_OF[fmt])

    assert code == 0, stderr
    [done] = json.loads(stdout)
    assert (done["inserted"], done["skipped"], done["reject_reasons"]) == (3, 1, {"too_large": 1})
    assert rss_mb - rss_without_the_big_row(tmp_path, fmt, SOURCE_OF[fmt]) < RSS_GROWTH_LIMIT_MB
    db = tmp_path / "cdp.db"
    lines = {"jsonl": [("E1", 1), ("E3", 3), ("E4", 5)], "csv": [("O1", 2), ("O3", 4), ("O4", 6)]}
    assert query(db, f"SELECT key, line FROM {TABLE_OF[fmt]} ORDER BY key") == lines[fmt]
    big_line = {"jsonl": 2, "csv": 3}[fmt]
    assert query(db, "SELECT line, problem, reason, raw FROM rejects") == [
        (big_line, "too_large", ROW_TOO_LARGE, None)
    ]


def test_a_50_mb_item_of_a_json_array_fails_the_file_in_flat_memory(tmp_path, project):
    """The items after a JSON array's huge item cannot be found without reading it: the file
    fails whole, and the message points at JSON Lines."""
    path = tmp_path / "big.json"
    write_with_a_big_row(path, "json")

    code, _, stderr, rss_mb = ingest_measured(tmp_path, path, "people")

    assert code == 1
    assert stderr == (
        f"Error: {path}: item 2 of the JSON array is over limits.row_bytes in cdp.yaml "
        "(1,048,576 bytes), and the items after it cannot be reached without reading it whole: "
        "raise the limit, or export JSON Lines (one object a line), where a row too large is "
        "one reject and the rest is kept\n"
    )
    assert rss_mb - rss_without_the_big_row(tmp_path, "json", "people") < RSS_GROWTH_LIMIT_MB
    assert query(tmp_path / "cdp.db", "SELECT status FROM batches") == [("failed",)]
    assert query(tmp_path / "cdp.db", "SELECT count(*) FROM customers") == [(0,)]


def ingest(run, path: str, source: str) -> dict:
    result = run("ingest", path, "-s", source, "--json", "--silent")
    assert result.exit_code == 0, result.output
    [done] = json.loads(result.stdout)
    return done


def rejects(tmp_path: Path) -> list[tuple]:
    return query(tmp_path / "cdp.db", "SELECT source, line, problem, field, reason FROM rejects")


LONG = "長" * 70_000  # over the 65,536 characters of a value, well under a row's 1 MiB


def test_a_value_over_the_field_limit_is_a_reject_in_every_format(run, write, project, tmp_path):
    write("long.csv", f"order_no,amount,paid_at,note\nO1,1,2026-11-01,{LONG}\nO2,2,2026-11-01,b\n")
    write("long.jsonl", event("E1", props={"note": LONG}) + "\n" + event("E2") + "\n")
    write("long.json", json.dumps([{"member": "M1", "x": [LONG]}, {"member": "M2"}]))
    write("key.jsonl", json.dumps({"id": "E3", "event": "v", "at": "2026-11-01", LONG: 1}))

    for name, source in [("long.csv", "orders"), ("long.jsonl", "events"),
                         ("long.json", "people"), ("key.jsonl", "events")]:  # fmt: skip
        assert ingest(run, name, source)["reject_reasons"] == {"too_large": 1}, name

    assert rejects(tmp_path) == [
        ("orders", 2, "too_large", None, VALUE_TOO_LARGE),
        ("events", 1, "too_large", None, VALUE_TOO_LARGE),
        ("people", 1, "too_large", None, VALUE_TOO_LARGE),
        ("events", 1, "too_large", None, VALUE_TOO_LARGE),
    ]
    db = tmp_path / "cdp.db"
    assert query(db, "SELECT key, line FROM orders") == [("O2", 3)]
    assert query(db, "SELECT key, line FROM events") == [("E2", 2)]
    assert query(db, "SELECT key, line FROM customers") == [("M2", 2)]
    assert csv.field_size_limit() == 128 * 1024  # the csv module's own, put back


def test_a_number_too_long_for_python_is_a_reject_not_an_internal_error(
    run, write, project, tmp_path
):
    write("digits.jsonl", event("E1")[:-1] + ', "n": ' + "1" * 5000 + "}\n" + event("E2") + "\n")
    assert ingest(run, "digits.jsonl", "events")["reject_reasons"] == {"invalid_json": 1}
    assert rejects(tmp_path) == [
        ("events", 1, "invalid_json", None, "invalid JSON: a number of more than 4,300 digits")
    ]


def test_unmapped_columns_over_the_attrs_limit_are_a_reject(run, write, project, tmp_path):
    wide = {f"extra{i}": "w" * 60_000 for i in range(5)}  # 300 KB of attrs, each value short
    write("wide.jsonl", event("E1", **wide) + "\n" + event("E2", extra="small") + "\n")

    assert ingest(run, "wide.jsonl", "events")["reject_reasons"] == {"too_large": 1}

    assert query(tmp_path / "cdp.db", "SELECT line, field, reason, raw FROM rejects") == [
        (1, "attrs", "too large: the columns cdp.yaml does not map (attrs) are over "
         "limits.attrs_bytes in cdp.yaml (262,144 bytes)", None),
    ]  # fmt: skip
    assert query(tmp_path / "cdp.db", "SELECT key, attrs FROM events") == [
        ("E2", '{"extra":"small"}')
    ]


def test_limits_set_in_cdp_yaml_bound_csv_rows_of_several_lines_and_in_bytes(run, write, tmp_path):
    write("cdp.yaml", CONFIG + "limits: {row_bytes: 200, field_chars: 100, attrs_bytes: 1000}\n")
    x, y, z = "x" * 90, "y" * 90, "z" * 90
    write(
        "small.csv",
        "order_no,amount,paid_at,a,b,c\n"
        "O1,1,2026-11-01,a,b,c\n"
        f'O2,2,2026-11-01,"{x}\n","{y}\n","{z}"\n'  # lines 3-5: 290 characters, cells of 91
        f"O3,3,2026-11-01,{'中' * 70},b,c\n"  # line 6: 70 characters, 229 bytes of UTF-8
        "O4,4,2026-11-01,a,b,c\n",
    )
    write("header.csv", "order_no,amount,paid_at," + ",".join(f"c{i}" for i in range(60)) + "\n")

    assert ingest(run, "small.csv", "orders")["reject_reasons"] == {"too_large": 2}
    limited = "too large: a row over limits.row_bytes in cdp.yaml (200 bytes)"
    assert rejects(tmp_path) == [
        ("orders", 3, "too_large", None, limited),
        ("orders", 6, "too_large", None, limited),
    ]
    assert query(tmp_path / "cdp.db", "SELECT key, line FROM orders ORDER BY key") == [
        ("O1", 2), ("O4", 7),
    ]  # fmt: skip
    result = run("ingest", "header.csv", "-s", "orders")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "header.csv: line 1: the header is over limits.row_bytes in cdp.yaml (200 bytes)\n"
    )


@pytest.mark.parametrize(
    ("limits", "line", "message"),
    [
        ("limits: {row_bytes: 0}", 1, "limits.row_bytes: expected a whole number from 1 to "
         "1_000_000_000"),
        ("limits:\n  field_chars: 1_000\n  attrs_bytes: lots\n", 3,
         "limits.attrs_bytes: expected a whole number from 1 to 1_000_000_000"),
        ("limits: {row_bytes: null}", 1, "limits.row_bytes: expected a whole number"),
        ("limits: {row_byte: 5}", 1, "limits: unknown key 'row_byte' (did you mean "
         "'row_bytes'?)"),
        ("limits: 1048576", 1, "limits: expected a mapping such as {row_bytes: 1048576}"),
    ],
)  # fmt: skip
def test_limits_are_checked_when_cdp_yaml_loads(run, write, limits, line, message):
    write("cdp.yaml", limits + "\n" + CONFIG)
    result = run("ingest")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cdp.yaml:{line}: {message}")


# ---------------------------------------------------------------------------------------------
# Personal data in messages


def test_no_field_a_reject_quotes_is_personal():
    """A reject's reason quotes the value of a required field that does not parse
    ("amount: 'oops' is not a number"), or of one whose unknown values reject the row (a
    consent's purpose): never, then, a personal value."""
    quoted = {
        f.name for kind in KINDS.values() for f in kind.all_fields if f.required or f.refuse_unknown
    }
    assert {"amount", "purpose"} <= quoted
    assert not quoted & PERSONAL_FIELDS


def test_a_cell_of_unknown_field_is_masked_whatever_it_holds():
    assert [mask_value(v) for v in ("M0000001", "李娜", "13800138000", "li@x.com", " ")] == [
        "M***", "李***", "138****8000", "l***@x.com", " ",
    ]  # fmt: skip
    assert quote_cells(["会员编号", "phone 13800138000"], header=True) == (
        "会员编号, phone 138****8000"
    )


def test_duplicate_columns_of_a_first_row_of_data_are_masked(run, write, project):
    write("noheader.csv", "O1,李娜,李娜,13800138000,13800138000\n")
    write("header.csv", "order_no,amount,paid_at,note,note\n")
    result = run("ingest", "noheader.csv", "-s", "orders")
    assert result.exit_code == 1
    assert result.stderr.endswith("line 1: duplicate column names: 138****8000, 李***\n")
    assert "李娜" not in result.stderr
    result = run("ingest", "header.csv", "-s", "orders")
    assert result.stderr.endswith("line 1: duplicate column names: note\n")


def test_a_header_split_on_the_wrong_delimiter_is_still_known_and_shown(run, write, project):
    write("semi.csv", "order_no;amount;paid_at\nO1;1;2026-11-01\n")
    write("cdp.yaml", CONFIG.replace("format: csv", "format: csv\n    delimiter: ','"))
    result = run("ingest", "semi.csv", "-s", "orders")
    assert result.exit_code == 1
    assert "the columns are: order_no;amount;paid_at (read as one column" in result.stderr


def test_a_broken_json_array_reject_does_not_quote_the_row(run, write, project, tmp_path):
    write("broken.json", '[{"member": "M1"}, {"member": "M2", "name": "李娜" "x"}]')
    assert ingest(run, "broken.json", "people")["reject_reasons"] == {"invalid_json": 1}
    [(reason,)] = query(tmp_path / "cdp.db", "SELECT reason FROM rejects")
    assert reason == (
        "invalid JSON after item 1: parse error: after key and value, inside map, "
        "I expect ',' or '}'"
    )


# ---------------------------------------------------------------------------------------------
# A dry run writes nothing


def files_in(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_dry_run_of_a_new_project_creates_no_file(run, project, tmp_path):
    drop(tmp_path / "inbox/events/e.jsonl", (event("E1") + "\n").encode())
    before = files_in(tmp_path)

    result = run("run", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    assert [f["status"] for f in json.loads(result.stdout)["files"]] == ["new"]
    assert files_in(tmp_path) == before  # no store, no lock file, no log


def test_a_dry_run_while_the_store_is_busy_runs_and_writes_nothing(run, write, project, tmp_path):
    write("old.jsonl", event("E1") + "\n")
    ingest(run, "old.jsonl", "events")
    drop(tmp_path / "inbox/events/new.jsonl", (event("E2") + "\n").encode())
    with lock.acquire(tmp_path / "cdp.db", command="cdp run"):
        before = files_in(tmp_path)

        dry = run("run", "--dry-run", "--json")
        journeys = run("journey", "run", "--dry-run")
        real = run("run")

        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.stdout)["stages"][0]["status"] == "done"
        assert journeys.exit_code == 1 and "store is busy" in journeys.stderr
        assert real.exit_code == 1 and "store is busy" in real.stderr
        after = files_in(tmp_path)
    log = after.pop(tmp_path / "logs/cdp.log").decode().splitlines()
    assert len(log) == 1 and 'command="cdp run" wait=0.000' in log[0]  # the real run's alone
    assert after == before
