"""Resolve benchmark: `cdp resolve` at 100k and 1M source records, and on 200k CRM rows, in
one run, each figure next to a baseline measured in the same run.

At each size (about 7 source records per generated customer, no events):

- the floor: a plain union-find in Python that links rows sharing a raw identifier value,
  with no normalization and no guards;
- `cdp resolve` in full on the 99% first ingested (target < 30 s, peak RSS < 1.5 GB at 1M);
- `cdp resolve --full` again on that resolved store, which a rules change also forces
  (target: no more than the first run; < 30 s at 1M);
- `cdp resolve` after the held-out 1% (the newest POS and shop orders) is ingested:
  incremental (target < 0.10 of the full run, at both sizes);
- `cdp resolve` with nothing new; and pairwise quality against the generator's truth.csv.

Then the growth factor of each figure from the small size to the large one. The CRM case is
other data: 200k members, each with their own phone (8 written forms, some invalid) and email
(mixed case, spaces), against a plain Python pass over the same CSV (regex digits, lower
case, then union-find): target <= 6x that pass. The load average is recorded before and
after each part: the box is shared, and a figure means little without it.

    python benchmarks/bench_resolve.py                       # 100k and 1M records, CRM 200k
    python benchmarks/bench_resolve.py --records 100000 --crm-rows 20000     # a quick look
    python benchmarks/bench_resolve.py --records 700000 --events 10 --crm-rows 0
        # 100k customers with 1M app events: resolve reads events per distinct identity key

With `--events N`, the generator writes N app events per customer and the newest 1% of them
is held out with the orders', so the incremental run reads new events too. The targets
printed stay the records' (the events add keys, not a separate target).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any

from common import ROOT, load_module

from cdp_cli.canonical import IDENTITY_FIELDS
from cdp_cli.config import load_config
from cdp_cli.identity.resolve import KIND_TABLES
from cdp_cli.ingest import ingest_file
from cdp_cli.readers import detect_encoding
from cdp_cli.store import open_store

CDP = Path(sys.executable).parent / "cdp"
RECORDS_PER_CUSTOMER = 7  # non-event source records the generator writes per customer
HOLD_OUT = 0.01
HELD_SOURCES = {"pos_orders": "pos_orders.csv", "shop_orders": "shop_orders.jsonl"}
HELD_EVENTS = {"app_events": "app_events.jsonl"}  # held out too when events are generated
FULL_TARGET_S = 30.0  # at 1M records, first run and --full rerun alike
RSS_TARGET_MB = 1500.0  # MB = 10**6 bytes
INCREMENTAL_TARGET = 0.10  # of the full run's time
CRM_TARGET = 6.0  # times the plain Python pass
QUIET_WAIT_S = 40 * 60


# machine(), code_version(), run_child() and fresh() are shared with the ingest benchmark.
bench = load_module("bench_ingest")


def busy_benchmarks() -> list[str]:
    """Other benchmarks (`pid command`) using CPU now: over 3 s, with their children.

    One that only waits for quiet itself (bench_tag.py waits for this one) sleeps: waiting for
    it in turn would deadlock both until their time limits."""
    found = subprocess.run(
        ["pgrep", "-af", r"bench_\w+\.py|generate\.py"], capture_output=True, text=True
    ).stdout.splitlines()
    others = {int(line.split()[0]): line for line in found if "bench_resolve" not in line}
    if not others:
        return []
    before = {pid: tree_cpu_seconds(pid) for pid in others}
    time.sleep(3)
    return [line for pid, line in others.items() if tree_cpu_seconds(pid) - before[pid] > 0.3]


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds a process, its finished children and its running descendants used."""
    ticks: dict[int, int] = {}
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # from the state on: ppid is fields[1]
        ticks[int(stat.parent.name)] = sum(int(f) for f in fields[11:15])  # u, s, cu, cs time
        children[int(fields[1])].append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(skip: bool = False) -> float:
    """The box has 2 cores: wait until no other benchmark runs, so it skews no figure here."""
    started = time.monotonic()
    while not skip and (busy := busy_benchmarks()):
        if time.monotonic() - started > QUIET_WAIT_S:
            print("still busy after 40 minutes: measuring anyway", flush=True)
            break
        print(f"another benchmark is running ({'; '.join(busy)}): waiting", flush=True)
        time.sleep(30)
    return round(time.monotonic() - started, 1)


# ---------------------------------------------------------------------------------------------
# Data: generated once, 99% in batch1/, the held-out 1% in batch2/


def held_sources(events: int) -> dict[str, str]:
    """The sources whose newest 1% is held out: orders, and app events when there are any."""
    return {**HELD_SOURCES, **HELD_EVENTS} if events else HELD_SOURCES


def prepare_data(data: Path, customers: int, reuse: bool, events: int = 0) -> dict[str, int]:
    """Generate the exports, with `events` app events per customer (none by default: the
    records' target is without them); data lines per file."""
    counts_file = data / "counts.json"
    data.mkdir(parents=True, exist_ok=True)
    if reuse and counts_file.exists():
        print(f"reusing data in {data}", flush=True)
        return json.loads(counts_file.read_text())
    print(f"generating {customers:,} customers, {customers * events:,} events, into {data} ...")
    started = time.perf_counter()
    counts = bench.load_generator().generate(data, customers, events=customers * events)
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
    counts_file.write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def split_tail(src: Path, head: Path, tail: Path, rows: int) -> None:
    """The last `rows` records of a file go to `tail` (after the same header line, for a CSV),
    the others to `head`, byte for byte. The generator writes one record a line in both held
    files; a quote in the CSV could break that, so none is allowed."""
    lines = src.read_bytes().splitlines(keepends=True)
    header = lines[:1] if src.suffix == ".csv" else []
    if src.suffix == ".csv" and any(b'"' in line for line in lines):
        sys.exit(f"{src}: quoted fields; split it with the csv module instead")
    body = lines[len(header) :]
    head.write_bytes(b"".join(header + body[: len(body) - rows]))
    tail.write_bytes(b"".join(header + body[len(body) - rows :]))


def hold_out(data: Path, counts: dict[str, int], events: int = 0) -> dict[str, Any]:
    """batch1/: every export (symlinked) but the held files' last rows; batch2/: those rows.

    The generator writes people in blocks, each block's rows in time order, so the held rows
    are the latest orders of the last people generated, whose CRM and WeChat records are in
    batch1/: what a nightly export brings, mostly for customers known already."""
    records = sum(n for name, n in counts.items() if name != "truth.csv")
    held_total = round(records * HOLD_OUT)
    held_files = list(held_sources(events).values())
    in_held = sum(counts[name] for name in held_files)
    held = {name: round(held_total * counts[name] / in_held) for name in held_files[:-1]}
    held[held_files[-1]] = held_total - sum(held.values())
    batch1, batch2 = data / "batch1", data / "batch2"
    for folder in (batch1, batch2):
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    for name in counts:
        if name in held:
            split_tail(data / name, batch1 / name, batch2 / name, held[name])
        elif name != "truth.csv":
            (batch1 / name).symlink_to(data / name)
    return {"records": records, "held_out": held, "batch1": str(batch1), "batch2": str(batch2)}


def write_config(workdir: Path, batch1: Path) -> Path:
    """The repo-root cdp.yaml, its store in the workdir and its files from batch1/."""
    text = (ROOT / "cdp.yaml").read_text(encoding="utf-8")
    text, found = re.subn(r"(?m)^store:\s*\S+", "store: cdp.db", text)
    if found != 1 or "sample_data/" not in text:
        sys.exit(f"{ROOT / 'cdp.yaml'} changed shape: adapt write_config")
    text = text.replace("sample_data/", f"{batch1.relative_to(workdir)}/")
    path = workdir / "cdp.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    missing = [f for s in config.sources.values() for f in s.files if not (workdir / f).exists()]
    if missing:
        sys.exit(f"{path}: files not found: {missing}")
    return path


def ingest_files(
    config_path: Path, files: dict[str, Path] | None = None, notes: list[str] | None = None
) -> dict[str, Any]:
    """Every declared file (files=None), or the given file per source, in this process.

    `encoding: auto` reads the legacy CRM export as GBK only when its sample decodes as such;
    when the guess is another codec (the sample can end inside a character, and the detector
    then rules GB18030 out), that file is read as gb18030, and a note says so, so that the
    benchmark measures resolve rather than stopping at a known ingest problem."""
    notes = [] if notes is None else notes
    config = load_config(config_path)
    db = open_store(config.store)
    todo = [
        (source, path)
        for source in config.sources.values()
        for path in (config.files_of(source) if files is None else [files.get(source.name)])
        if path is not None and path.stat().st_size  # no events generated: an empty file
    ]
    started = time.perf_counter()
    results = []
    for source, path in todo:
        guess = detect_encoding(path, source.encoding)
        if "gbk" in path.name and guess != "gb18030":
            notes.append(f"cdp's encoding: auto guessed {guess} for {path.name}: read as gb18030")
            print(f"note: {notes[-1]}", flush=True)
            source = replace(source, encoding="gb18030")
        results.append(ingest_file(db, source, path))
    seconds = time.perf_counter() - started
    db.close()
    failed = [r for r in results if r.status != "done"]
    if failed:
        sys.exit(f"ingest failed: {[r.as_dict() for r in failed]}")
    rows = sum(r.rows_read for r in results)
    rejected = sum(r.rejected for r in results)
    return {"rows_read": rows, "rejected": rejected, "seconds": round(seconds, 2)}


# ---------------------------------------------------------------------------------------------
# The baseline and cdp


def baseline_union_find(store: Path) -> dict[str, Any]:
    """Link the rows of every table that share a raw non-empty identity value (openids within
    their appid), with no normalization and no guards: the floor any resolver pays to read the
    same records and join them. Timed twice: reading only, then reading and joining."""
    columns = [f.name for f in IDENTITY_FIELDS if f.name not in ("wechat_appid", "wechat_openid")]
    select = ", ".join([*columns, "wechat_appid || '|' || wechat_openid"])
    sqls = [f"SELECT {select} FROM {table}" for table in KIND_TABLES]
    conn = sqlite3.connect(store)

    started = time.perf_counter()
    rows = sum(1 for sql in sqls for _ in conn.execute(sql))
    read_seconds = time.perf_counter() - started

    started = time.perf_counter()
    parent: list[int] = []
    first: list[dict[str, int]] = [{} for _ in range(len(columns) + 1)]  # value -> 1st row
    for sql in sqls:
        for row in conn.execute(sql):
            node = len(parent)
            parent.append(node)
            for seen, value in zip(first, row, strict=True):
                if not value:
                    continue
                other = seen.setdefault(value, node)
                if other == node:
                    continue
                a, b = node, other  # find both roots, halving paths on the way
                while parent[a] != a:
                    parent[a] = a = parent[parent[a]]
                while parent[b] != b:
                    parent[b] = b = parent[parent[b]]
                if a != b:
                    parent[b] = a
    seconds = time.perf_counter() - started
    conn.close()
    groups = sum(1 for node, up in enumerate(parent) if node == up)
    return {"rows": rows, "read_seconds": read_seconds, "seconds": seconds, "groups": groups}


def cdp_resolve(config: Path, *args: str) -> dict[str, Any]:
    """`cdp resolve --json` as a user runs it: a fresh process, its wall time and peak RSS,
    and the seconds resolve itself reports (without the interpreter's start-up and imports)."""
    seconds, rss_mb, stdout = bench.run_child(
        [str(CDP), "--config", str(config), "resolve", "--json", *args]
    )
    result = json.loads(stdout)
    return {
        "seconds": seconds,
        "rss_mb": rss_mb,
        "in_process_s": result["seconds"],
        "result": result,
    }


def cdp_startup() -> dict[str, Any]:
    """`cdp --version`: the interpreter and imports every command pays before any work."""
    seconds, rss_mb, _ = bench.run_child([str(CDP), "--version"])
    return {"seconds": seconds, "rss_mb": rss_mb}


# ---------------------------------------------------------------------------------------------
# Quality against truth.csv


def pairs(counts: Iterable[int]) -> int:
    return sum(n * (n - 1) // 2 for n in counts)


def score(both: int, found: int, true: int) -> dict[str, Any]:
    return {
        "precision": both / found if found else 1.0,
        "recall": both / true if true else 1.0,
        "pairs_true": true,
        "pairs_found": found,
        "pairs_both": both,
    }


def evaluate(store: Path, truth: Path) -> dict[str, Any]:
    """Pairwise precision and recall of the store's one_ids against truth.csv.

    A record is scored when truth names its person and it is in the store (the held-out rows
    are not, before they are ingested). Truth keys are mapped to store keys as in
    tests/test_resolve.py: the legacy CRM export is source crm_members, an openid key is
    `appid|openid`; opt-outs have content-hash keys and are left out. Records without a one_id
    are singletons. "Deterministic" pairs are those whose records carry the same normalized
    identifier (cdp's key_identifiers): the links cdp has direct evidence for, as opposed to
    the transitive ones the union-find adds.
    """
    person: dict[tuple[str, str], str] = {}
    conflicts = 0
    with truth.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            source = "crm_members" if row["source"] == "crm_members_legacy_gbk" else row["source"]
            if source == "optouts":
                continue
            key = row["key"].replace(":", "|") if source == "wechat_followers" else row["key"]
            conflicts += person.setdefault((source, key), row["person_id"]) != row["person_id"]
    conn = sqlite3.connect(store)
    cells: Counter[tuple[str, str]] = Counter()  # (one_id or a singleton, person)
    by_key: dict[int, Counter[str]] = defaultdict(Counter)  # identity key -> persons
    one_id_of: dict[int, str | None] = {}
    scored = 0
    identified: Counter[str] = Counter()  # persons of the records that have a one_id
    for table in KIND_TABLES:
        sql = (
            f"SELECT t.source, t.key, t.identity_key, k.one_id FROM {table} t "
            "LEFT JOIN identity_keys k ON k.key = t.identity_key"
        )
        for source, key, identity_key, one_id in conn.execute(sql):
            pid = person.get((source, key))
            if pid is None:
                continue
            scored += 1
            cells[(one_id or f"alone:{source}:{key}", pid)] += 1
            identified[pid] += one_id is not None
            if identity_key is not None:
                by_key[identity_key][pid] += 1
                one_id_of[identity_key] = one_id
    clusters: Counter[str] = Counter()
    persons: Counter[str] = Counter()
    for (one_id, pid), n in cells.items():
        clusters[one_id] += n
        persons[pid] += n
    overall = score(pairs(cells.values()), pairs(clusters.values()), pairs(persons.values()))
    # Records with no usable identifier (a marketplace's masked phone) can join no one: the
    # recall cdp would reach if it joined every record that has a one_id to its person.
    overall["recall_ceiling"] = pairs(identified.values()) / overall["pairs_true"]

    keys_of: dict[int, list[int]] = defaultdict(list)  # identifier -> the scored keys with it
    for key, ident in conn.execute("SELECT key, identifier_id FROM key_identifiers"):
        if key in by_key:
            keys_of[ident].append(key)
    conn.close()
    key_pairs = {pair for keys in keys_of.values() for pair in combinations(sorted(keys), 2)}
    true = found = both = 0  # over record pairs that share an identifier

    def add(same: int, total: int, joined: bool) -> None:
        nonlocal true, found, both
        true += same
        if joined:
            found += total
            both += same

    for key in {k for keys in keys_of.values() for k in keys}:  # records of one key
        persons = by_key[key]
        add(pairs(persons.values()), pairs([persons.total()]), one_id_of[key] is not None)
    for a, b in key_pairs:
        pa, pb = by_key[a], by_key[b]
        same = sum(n * pb[p] for p, n in pa.items() if p in pb)
        add(
            same, pa.total() * pb.total(), one_id_of[a] is not None and one_id_of[a] == one_id_of[b]
        )
    return {
        "records_scored": scored,
        "records_without_one_id": scored - identified.total(),
        "truth_conflicts": conflicts,
        "overall": overall,
        "deterministic": score(both, found, true),
    }


# ---------------------------------------------------------------------------------------------
# The CRM case: every member their own phone and email


CRM_CONFIG = """store: cdp.db
region: CN
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member_no, name: name, phone: phone, email: email}
"""


def write_crm(path: Path, rows: int, seed: int = 13) -> None:
    """`rows` members, each with a phone of their own in one of the generator's 8 written
    forms (1 in 20 invalid: masked, too short or long, not a mobile prefix) and an email of
    their own in mixed case with spaces around it."""
    rng = random.Random(seed)
    messy_phone = bench.load_generator().messy_phone
    prefixes = ("130", "135", "138", "139", "150", "158", "177", "186", "188", "199")
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["member_no", "name", "phone", "email"])
        for n in range(rows):
            phone = f"{prefixes[n % len(prefixes)]}{(n * 7_919_993 + 12_345) % 10**8:08d}"
            if rng.random() < 0.05:
                written = rng.choice(invalid_forms(phone))
            else:
                written = messy_phone(phone, rng.random())
            local = "".join(c.upper() if rng.random() < 0.3 else c for c in f"member.{n}")
            domain = rng.choice(("qq.com", "163.com", "Example.CN", "GMAIL.com"))
            email = f"{' ' * rng.randint(0, 2)}{local}@{domain}{' ' * rng.randint(0, 2)}"
            out.writerow([f"M{n:07d}", f"name {n}", written, email])


def invalid_forms(phone: str) -> tuple[str, ...]:
    """What a CRM holds where a mobile should be: masked, a digit short or over, too short
    for any number, or a mobile's digits behind a prefix no mobile has."""
    return (f"{phone[:3]}****{phone[7:]}", phone[:-1], phone + "0", "12345", "10" + phone[2:])


_NOT_DIGITS = re.compile(r"\D")


def crm_baseline(path: Path) -> dict[str, Any]:
    """The plain pass the CRM case is measured against: read the CSV, keep a phone's digits
    (its last 11) and an email lower-cased and trimmed, and join members that share one."""
    started = time.perf_counter()
    parent: list[int] = []
    first: list[dict[str, int]] = [{}, {}, {}]  # value -> the first row with it, per column
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for member_no, _name, phone, email in reader:
            node = len(parent)
            parent.append(node)
            values = (member_no, _NOT_DIGITS.sub("", phone)[-11:], email.strip().lower())
            for seen, value in zip(first, values, strict=True):
                if not value:
                    continue
                other = seen.setdefault(value, node)
                if other == node:
                    continue
                a, b = node, other
                while parent[a] != a:
                    parent[a] = a = parent[parent[a]]
                while parent[b] != b:
                    parent[b] = b = parent[parent[b]]
                if a != b:
                    parent[b] = a
    seconds = time.perf_counter() - started
    groups = sum(1 for node, up in enumerate(parent) if node == up)
    return {"seconds": seconds, "rows": len(parent), "groups": groups}


def crm_case(workdir: Path, rows: int, no_wait: bool) -> dict[str, Any]:
    """The CRM file ingested (not timed), then `cdp resolve` against the plain pass."""
    folder = workdir / f"crm-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "crm.csv"
    write_crm(csv_path, rows)
    config = folder / "cdp.yaml"
    config.write_text(CRM_CONFIG, encoding="utf-8")
    bench.fresh(folder / "cdp.db")
    load_before = os.getloadavg()
    ingested = ingest_files(config, {"crm": csv_path})
    wait_for_quiet(no_wait)
    base = min((crm_baseline(csv_path) for _ in range(3)), key=lambda b: b["seconds"])
    cdp = cdp_resolve(config)
    floor = write_floor(folder / "cdp.db", folder / "floor.db")
    profiles = cdp["result"]["profiles"]
    return {
        "rows": rows,
        "ingest": ingested,
        "baseline": base,
        "cdp": cdp,
        "write_floor": floor,
        "ratio": cdp["seconds"] / base["seconds"],
        "ratio_in_process": cdp["in_process_s"] / base["seconds"],
        "write_floor_ratio": floor["seconds"] / base["seconds"],
        "profiles": profiles,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


WRITTEN_TABLES = ("identity_keys", "identifiers", "key_identifiers", "profiles", "id_history")


def write_floor(store: Path, scratch: Path) -> dict[str, Any]:
    """What SQLite alone takes to write the rows a resolve wrote: each table's rows, read
    from the resolved store first (not timed), inserted with one executemany per table into
    tables of the same columns without any index or key, in one transaction. No resolve can
    take less, whatever the plain pass takes."""
    source = sqlite3.connect(store)
    tables = {t: source.execute(f"SELECT * FROM {t}").fetchall() for t in WRITTEN_TABLES}
    columns = {t: len(source.execute(f"SELECT * FROM {t} LIMIT 0").description) for t in tables}
    source.close()
    bench.fresh(scratch)
    conn = sqlite3.connect(scratch, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    conn.execute("BEGIN")
    for table, rows in tables.items():
        names = ", ".join(f"c{i}" for i in range(columns[table]))
        conn.execute(f"CREATE TABLE {table} ({names})")
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * columns[table])})", rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    bench.fresh(scratch)
    return {"seconds": seconds, "rows": {t: len(rows) for t, rows in tables.items()}}


# ---------------------------------------------------------------------------------------------
# One size


def run_size(args: argparse.Namespace, records: int) -> dict[str, Any]:
    """Every figure at one size, into a dict: the steps, their ratios and the quality."""
    customers = round(records / RECORDS_PER_CUSTOMER)
    events = args.events
    workdir = args.workdir.resolve() / (f"{records}-{events}e" if events else f"{records}")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / (
        f"data-{customers}c-{customers * events}e" if events else f"data-{customers}c"
    )
    counts = prepare_data(data, customers, args.skip_generate, events)
    held = hold_out(data, counts, events)
    config = write_config(workdir, data / "batch1")
    store = workdir / "cdp.db"
    bench.fresh(store)
    notes: list[str] = []
    steps: dict[str, dict[str, Any]] = {}
    load = {"before": os.getloadavg()}

    def step(name: str, result: dict[str, Any]) -> dict[str, Any]:
        rss = f", peak RSS {result['rss_mb']:.0f} MB" if result.get("rss_mb") else ""
        inside = f" ({result['in_process_s']:.2f} s in resolve)" if "in_process_s" in result else ""
        load_now = os.getloadavg()[0]
        print(f"{records:,} {name}: {result['seconds']:.2f} s{inside}{rss}, load {load_now:.1f}")
        steps[name] = {**result, "load_average_1m_after": load_now}
        return result

    print(f"ingesting {held['records']:,} records but the held-out 1% ...", flush=True)
    step("ingest 99%", ingest_files(config, notes=notes))
    wait_for_quiet(args.no_wait)
    base = baseline_union_find(store)
    step("baseline: read rows only", {"seconds": base["read_seconds"]})
    step("baseline: read + union-find", base)
    wait_for_quiet(args.no_wait)
    full = step("full", cdp_resolve(config))
    quality = {"after full resolve": evaluate(store, data / "truth.csv")}
    wait_for_quiet(args.no_wait)
    rerun = step("--full rerun", cdp_resolve(config, "--full"))
    batch2 = Path(held["batch2"])
    step(
        "ingest held-out 1%",
        ingest_files(config, {s: batch2 / f for s, f in held_sources(events).items()}, notes),
    )
    wait_for_quiet(args.no_wait)
    incremental = step("incremental", cdp_resolve(config))
    wait_for_quiet(args.no_wait)
    step("nothing new", cdp_resolve(config))
    step("start-up (cdp --version)", cdp_startup())
    quality["after incremental resolve"] = evaluate(store, data / "truth.csv")
    load["after"] = os.getloadavg()
    return {
        "records": held["records"],
        "customers": customers,
        "data": {"dir": str(data), "counts": counts, **held},
        "notes": notes,
        "load_average": load,
        "steps": steps,
        "ratios": {
            "full / baseline": full["seconds"] / base["seconds"],
            "rerun / full": rerun["seconds"] / full["seconds"],
            "rerun / full, in resolve": rerun["in_process_s"] / full["in_process_s"],
            "incremental / full": incremental["seconds"] / full["seconds"],
            "incremental / full, in resolve": incremental["in_process_s"] / full["in_process_s"],
        },
        "modes": [r["result"]["mode"] for r in (full, rerun, incremental)],
        "quality": quality,
    }


# ---------------------------------------------------------------------------------------------
# Report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_table(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        columns = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in columns]
        print("  ".join(cells).rstrip())


def report_size(size: dict[str, Any]) -> None:
    lines = []
    for name, step in size["steps"].items():
        rss, inside = step.get("rss_mb"), step.get("in_process_s")
        lines.append(
            [
                name,
                f"{step['seconds']:.2f}",
                "" if inside is None else f"{inside:.2f}",
                "" if rss is None else f"{rss:.0f} MB",
                f"{step['load_average_1m_after']:.1f}",
            ]
        )
    load = size["load_average"]
    print(
        f"\n{size['records']:,} records ({size['customers']:,} customers), load average "
        f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after"
    )
    print_table(["step", "seconds", "in resolve", "peak RSS", "load after"], lines)
    lines = []
    for when, q in size["quality"].items():
        for scope in ("overall", "deterministic"):
            s = q[scope]
            ceiling = s.get("recall_ceiling")
            lines.append(
                [
                    f"{when}, {scope}",
                    f"{q['records_scored']:,}",
                    f"{s['precision']:.6f}",
                    f"{s['recall']:.6f}",
                    "-" if ceiling is None else f"{ceiling:.6f}",
                ]
            )
    print()
    print_table(["quality", "records", "precision", "recall", "recall ceiling"], lines)


def summary(sizes: list[dict[str, Any]], crm: dict[str, Any] | None) -> dict[str, Any]:
    """Each figure of the issue's table per size, its growth, and the verdicts (at the
    largest size for absolute targets, at every size for ratios)."""
    first, last = sizes[0], sizes[-1]

    def figure(size: dict[str, Any], step: str, key: str = "seconds") -> float:
        return size["steps"][step][key]

    rows: dict[str, list[float]] = {
        "baseline union-find s": [figure(s, "baseline: read + union-find") for s in sizes],
        "full s": [figure(s, "full") for s in sizes],
        "full s in resolve": [figure(s, "full", "in_process_s") for s in sizes],
        "full peak RSS MB": [figure(s, "full", "rss_mb") for s in sizes],
        "--full rerun s": [figure(s, "--full rerun") for s in sizes],
        "--full rerun peak RSS MB": [figure(s, "--full rerun", "rss_mb") for s in sizes],
        "rerun / full": [s["ratios"]["rerun / full"] for s in sizes],
        "incremental s": [figure(s, "incremental") for s in sizes],
        "incremental / full": [s["ratios"]["incremental / full"] for s in sizes],
        "incremental / full, in resolve": [
            s["ratios"]["incremental / full, in resolve"] for s in sizes
        ],
    }
    growth = {name: values[-1] / values[0] for name, values in rows.items() if values[0]}
    verdicts = {
        "full < 30 s": figure(last, "full") < FULL_TARGET_S,
        "full RSS < 1.5 GB": figure(last, "full", "rss_mb") < RSS_TARGET_MB,
        "--full rerun < 30 s": figure(last, "--full rerun") < FULL_TARGET_S,
        "incremental < 0.10 of full, every size": all(
            r < INCREMENTAL_TARGET for r in rows["incremental / full"]
        ),
        "incremental < 0.10 of full in resolve, every size": all(
            r < INCREMENTAL_TARGET for r in rows["incremental / full, in resolve"]
        ),
        "modes full, full, incremental": all(
            s["modes"] == ["full", "full", "incremental"] for s in sizes
        ),
        "deterministic precision 1.0": all(
            s["quality"]["after full resolve"]["deterministic"]["precision"] == 1.0 for s in sizes
        ),
    }
    if crm:
        verdicts["CRM <= 6x the plain pass"] = crm["ratio"] <= CRM_TARGET
    return {
        "sizes": [s["records"] for s in sizes],
        "figures": rows,
        "growth": growth,
        "growth_of_records": last["records"] / first["records"],
        "pass": verdicts,
    }


def report_summary(result: dict[str, Any], crm: dict[str, Any] | None) -> None:
    sizes = result["sizes"]
    header = ["figure", *(f"{n:,} records" for n in sizes)]
    if len(sizes) > 1:
        header.append(f"growth (records x{result['growth_of_records']:.1f})")
    lines = []
    for name, values in result["figures"].items():
        line = [name, *(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in values)]
        if len(sizes) > 1:
            line.append(f"{result['growth'].get(name, 0):.1f}x")
        lines.append(line)
    print()
    print_table(header, lines)
    if crm:
        base, cdp = crm["baseline"], crm["cdp"]
        print(
            f"\nCRM, {crm['rows']:,} rows ({crm['profiles']:,} profiles): plain pass "
            f"{base['seconds']:.2f} s, cdp resolve {cdp['seconds']:.2f} s "
            f"({cdp['in_process_s']:.2f} s in resolve), peak RSS {cdp['rss_mb']:.0f} MB: "
            f"{crm['ratio']:.1f}x ({crm['ratio_in_process']:.1f}x in resolve), target "
            f"<= {CRM_TARGET:.0f}x; writing its {sum(crm['write_floor']['rows'].values()):,} "
            f"rows alone: {crm['write_floor']['seconds']:.2f} s, "
            f"{crm['write_floor_ratio']:.1f}x; load {crm['load_average']['before'][0]:.1f} "
            f"before, {crm['load_average']['after'][0]:.1f} after"
        )
    print()
    for name, ok in result["pass"].items():
        print(f"{verdict(ok)}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--records",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100_000, 1_000_000],
        help="source records per size, comma-separated (default 100000,1000000)",
    )
    parser.add_argument("--crm-rows", type=int, default=200_000, help="0: no CRM case")
    parser.add_argument(
        "--events",
        type=int,
        default=0,
        help="app events per generated customer (default 0; 10 is the pipeline's 10M at 1M "
        "customers); their newest 1%% is held out with the orders'",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "resolve")
    parser.add_argument("--skip-generate", action="store_true", help="reuse data already there")
    parser.add_argument("--results", type=Path, help="default benchmarks/out/resolve-results.json")
    parser.add_argument(
        "--no-wait", action="store_true", help="measure even while other benchmarks run (debug)"
    )
    args = parser.parse_args(argv)
    results = args.results or ROOT / "benchmarks" / "out" / "resolve-results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": bench.machine(),
        "code": bench.code_version(),
    }
    sizes = [run_size(args, records) for records in sorted(args.records)]
    crm = crm_case(args.workdir.resolve(), args.crm_rows, args.no_wait) if args.crm_rows else None
    report.update(
        sizes=sizes,
        crm=crm,
        summary=summary(sizes, crm),
        load_average_at_end=os.getloadavg(),
    )
    for size in sizes:
        report_size(size)
    report_summary(report["summary"], crm)
    results.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
