"""Ingest benchmark: `cdp ingest` against the plainest possible load and against sqlite-utils.

cdp's ingest maps, parses and upserts every row; how much that costs only means something next
to what the same machine does with the same file and no work at all (csv.reader or json.loads
plus one executemany: the baseline) and next to a common tool (sqlite-utils insert: the peer,
with --peer). All of them run here, in one run, at two sizes (100k and 1M customers, with 10
events per customer), on data from benchmarks/generate.py, so the ratios compare like with
like. Targets (issue 13): customers and events at >= 0.40 of the baseline's rows/s, growth
from the small size to the large <= 11x for 10x the rows, and peak RSS < 300 MB for customers.

    python benchmarks/bench_ingest.py --quick            # 10k and 100k customers
    python benchmarks/bench_ingest.py                    # 100k and 1M customers, 1M and 10M events
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from common import BIN, ROOT, code_version, load_generator, machine, run_measured

CONFIG = ROOT / "benchmarks" / "configs" / "cdp.yaml"
RATIO_TARGET = 0.40
RSS_TARGET_MB = 300.0  # MB = 10**6 bytes; for the customers file
GROWTH_TARGET = 11.0  # seconds at the large size over the small one, for 10x the rows
EVENTS_PER_CUSTOMER = 10
PEER_PROBE_ROWS = 100_000
PEER_TIME_LIMIT = 600.0  # seconds: beyond this the peer is timed on its first PEER_PROBE_ROWS
CDP = [BIN / "cdp"]  # the cdp timed; --cdp names another (an older checkout's, to compare)
EVENT_FIELDS = ("event_id", "event", "ts", "device_id", "user_id", "platform")


@dataclass
class Measurement:
    """One timed load of one file; `rss_mb` is the loading process's peak, where measured."""

    file: str
    method: str
    rows: int
    seconds: float
    rss_mb: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    customers: int = 0  # the size of the generated data this was measured on

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------
# Data and environment


def ensure_data(data_dir: Path, customers: int, events: int, reuse: bool) -> dict[str, Any]:
    """Generate the exports, or reuse them under --skip-generate when they are there: whole,
    as counts.json says, written last (a killed run leaves none, as the other runners do)."""
    counts_file = data_dir / "counts.json"
    if reuse and counts_file.exists():
        print(f"reusing data in {data_dir}", flush=True)
        return {"reused": True}
    print(f"generating {customers:,} customers, {events:,} events into {data_dir} ...", flush=True)
    started = time.perf_counter()
    counts = load_generator().generate(data_dir, customers, events)
    seconds = round(time.perf_counter() - started, 1)
    counts_file.write_text(json.dumps(counts, indent=2) + "\n")
    print(f"generated in {seconds} s", flush=True)
    return {"reused": False, "seconds": seconds, "lines": counts}


def check_config() -> None:
    """The bench config must map sources exactly as the root cdp.yaml does, or it measures
    something else; only `files:` and `store:` may differ."""
    from cdp_cli.config import load_config

    ours, root = load_config(CONFIG), load_config(ROOT / "cdp.yaml")

    def strip(config: Any) -> Any:
        sources = {n: replace(s, files=()) for n, s in config.sources.items()}
        return (config.region, config.timezone, sources)

    if strip(ours) != strip(root):
        sys.exit(f"{CONFIG} no longer matches {ROOT / 'cdp.yaml'}: copy its sources again")


def fresh(*paths: Path) -> None:
    """Delete a database and its WAL files, so each measurement starts from an empty store."""
    for path in paths:
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The loads


def baseline_csv(path: Path, db_path: Path) -> Measurement:
    """csv.reader + one executemany into TEXT columns: the floor any CSV loader pays."""
    fresh(db_path)
    started = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        columns = ", ".join('"{}" TEXT'.format(c.replace('"', '""')) for c in header)
        conn.execute(f"CREATE TABLE t ({columns})")
        conn.execute("BEGIN")
        cursor = conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(header))})", reader)
        conn.execute("COMMIT")
    rows = cursor.rowcount
    conn.close()
    return Measurement(path.name, "baseline", rows, time.perf_counter() - started)


def baseline_events(path: Path, db_path: Path) -> Measurement:
    """json.loads per line + one executemany of the top-level fields: the JSONL floor."""
    fresh(db_path)
    started = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(f"CREATE TABLE t ({', '.join(f'{c} TEXT' for c in EVENT_FIELDS)}, properties)")

    def rows() -> Iterator[tuple[Any, ...]]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                yield (*(obj.get(c) for c in EVENT_FIELDS), json.dumps(obj.get("properties")))

    conn.execute("BEGIN")
    cursor = conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", rows())
    conn.execute("COMMIT")
    count = cursor.rowcount
    conn.close()
    return Measurement(path.name, "baseline", count, time.perf_counter() - started)


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command to its end, or exit with its error: its wall seconds, its own peak RSS in
    MB and its stdout (common.run_measured)."""
    run = run_measured(cmd)
    if run.returncode:
        sys.exit(f"failed ({run.returncode}): {shlex.join(cmd)}\n{run.stderr[-3000:]}")
    return run.seconds, run.peak_rss_mb, run.stdout


def head_csv(path: Path, out: Path, rows: int) -> None:
    """The header and first `rows` records of a CSV, byte for byte (BOM included)."""
    with path.open("rb") as src, out.open("wb") as dst:

        def lines() -> Iterator[str]:
            for line in src:  # csv.reader asks for exactly the lines each record spans
                dst.write(line)
                yield line.decode("utf-8-sig")

        reader = csv.reader(lines())
        for _ in range(rows + 1):
            next(reader)


def peer(path: Path, db_path: Path, rows: int, workdir: Path) -> Measurement:
    """sqlite-utils insert --csv, on the whole file unless that would pass PEER_TIME_LIMIT."""
    cmd = [str(BIN / "sqlite-utils"), "insert", str(db_path), "t"]
    note = ""
    target, target_rows = path, rows
    if rows > PEER_PROBE_ROWS:
        probe = workdir / f"head-{path.name}"
        head_csv(path, probe, PEER_PROBE_ROWS)
        fresh(db_path)
        seconds, _, _ = run_child([*cmd, str(probe), "--csv"])
        estimate = seconds * rows / PEER_PROBE_ROWS
        if estimate > PEER_TIME_LIMIT:
            target, target_rows = probe, PEER_PROBE_ROWS
            note = f"first {PEER_PROBE_ROWS:,} rows only (whole file: ~{estimate:.0f} s)"
    fresh(db_path)
    seconds, rss, _ = run_child([*cmd, str(target), "--csv"])
    return Measurement(path.name, "sqlite-utils", target_rows, seconds, rss, note)


def cdp_ingest(path: Path, source: str, store: Path, force: bool = False) -> Measurement:
    """`cdp ingest FILE --source NAME` as a user runs it: a fresh process, its wall time."""
    from cdp_cli.config import load_config

    db_args = [] if store == load_config(CONFIG).store.resolve() else ["--db", str(store)]
    cmd = [str(CDP[0]), "--config", str(CONFIG), *db_args, "ingest", str(path)]
    cmd += ["--source", source, "--silent", "--json", *(["--force"] if force else [])]
    code = code_version()
    seconds, rss, stdout = run_child(cmd)
    result = json.loads(stdout)[0]
    if result["status"] != "done":
        sys.exit(f"cdp ingest did not ingest {path}: {result}")
    counts = ("rows_read", "inserted", "updated", "unchanged", "rejected", "seconds")
    return Measurement(
        path.name,
        "cdp --force (rerun)" if force else "cdp",
        result["rows_read"],
        seconds,
        rss,
        detail={**{k: result[k] for k in counts}, "code": code},
    )


# ---------------------------------------------------------------------------------------------
# Report


def check_targets(
    m: Measurement, base: Measurement, ratio_target: float, rss_target: float | None
) -> None:
    """Record PASS/FAIL on a cdp measurement: rows/s against the baseline's, and peak RSS."""
    ratio = m.rows_per_s / base.rows_per_s
    ratio_ok = ratio >= ratio_target
    rss_ok = rss_target is None or (m.rss_mb is not None and m.rss_mb < rss_target)
    m.detail["targets"] = {
        "ratio": round(ratio, 3),
        "ratio_target": ratio_target,
        "rss_mb": m.rss_mb,
        "rss_target_mb": rss_target,
        "pass": ratio_ok and rss_ok,
    }
    rss = "" if rss_target is None else f", RSS {m.rss_mb:.0f} MB (target < {rss_target:.0f})"
    m.note = (
        f"{'PASS' if ratio_ok and rss_ok else 'FAIL'}: ratio {ratio:.2f} "
        f"(target >= {ratio_target}){rss}"
    )


def growth(measurements: list[Measurement], small: int, large: int) -> list[dict[str, Any]]:
    """Seconds at the large size over the small one, per file and method (10x the rows)."""
    by_key = {(m.customers, m.file, m.method): m for m in measurements}
    rows = []
    for (size, file, method), m in by_key.items():
        before = by_key.get((small, file, method))
        if size != large or before is None:
            continue
        factor = m.seconds / before.seconds
        rows.append(
            {
                "file": file,
                "method": method,
                "rows": f"{before.rows:,} -> {m.rows:,}",
                "rows_factor": round(m.rows / before.rows, 2),
                "seconds_factor": round(factor, 2),
                "verdict": (
                    f"{'PASS' if factor <= GROWTH_TARGET else 'FAIL'} (target <= {GROWTH_TARGET})"
                    if method.startswith("cdp")
                    else ""
                ),
            }
        )
    return rows


def print_table(measurements: list[Measurement], baselines: dict[Any, Measurement]) -> None:
    header = ["size", "file", "method", "rows", "seconds", "rows/s", "x baseline", "peak RSS",
              "note"]  # fmt: skip
    lines = [header]
    for m in measurements:
        base = baselines[m.customers, m.file]
        lines.append(
            [
                f"{m.customers:,}",
                m.file,
                m.method,
                f"{m.rows:,}",
                f"{m.seconds:.2f}",
                f"{m.rows_per_s:,.0f}",
                f"{m.rows_per_s / base.rows_per_s:.2f}",
                "-" if m.rss_mb is None else f"{m.rss_mb:.0f} MB",
                m.note,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [
            cell.rjust(width) if i in (0, 3, 4, 5, 6, 7) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def measure_size(
    customers: int, args: argparse.Namespace, workdir: Path, report: dict[str, Any]
) -> list[Measurement]:
    """Every load at one size: customers (baseline, peer, cdp, cdp --force), then events."""
    events_n = customers * EVENTS_PER_CUSTOMER
    data = args.data_dir / f"data-{customers}c-{events_n}e"
    report["data"][str(customers)] = {
        "dir": str(data),
        **ensure_data(data, customers, events_n, args.skip_generate),
    }
    customers_file, events_file = data / "crm_members.csv", data / "app_events.jsonl"
    store, base_db, peer_db = workdir / "cdp.db", workdir / "baseline.db", workdir / "peer.db"
    measurements: list[Measurement] = []

    def measure(label: str, m: Measurement) -> Measurement:
        m.customers = customers
        print(
            f"{customers:>9,} {label:24s} {m.rows:>12,} rows {m.seconds:8.2f} s "
            f"{m.rows_per_s:>10,.0f}/s" + ("" if m.rss_mb is None else f" {m.rss_mb:6.0f} MB"),
            flush=True,
        )
        measurements.append(m)
        return m

    if args.only in (None, "customers"):
        base_c = measure("customers baseline", baseline_csv(customers_file, base_db))
        if args.peer:
            measure("customers sqlite-utils", peer(customers_file, peer_db, base_c.rows, workdir))
        fresh(store)
        cdp_c = measure("customers cdp", cdp_ingest(customers_file, "crm_members", store))
        measure("customers cdp --force", cdp_ingest(customers_file, "crm_members", store, True))
        check_targets(cdp_c, base_c, RATIO_TARGET, RSS_TARGET_MB)
    if args.only in (None, "events"):
        base_e = measure("events baseline", baseline_events(events_file, base_db))
        fresh(store, base_db, peer_db)
        cdp_e = measure("events cdp", cdp_ingest(events_file, "app_events", store))
        check_targets(cdp_e, base_e, RATIO_TARGET, None)
    if not args.keep_store:
        fresh(store)
    return measurements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes", default="100000,1000000", help="customers per run, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="--sizes 10000,100000")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--data-dir", type=Path, help="where the generated data is (default: workdir)"
    )
    parser.add_argument("--skip-generate", action="store_true", help="reuse data already there")
    parser.add_argument("--peer", action="store_true", help="also time sqlite-utils insert --csv")
    parser.add_argument("--only", choices=["customers", "events"], help="one file of the two")
    parser.add_argument(
        "--cdp", type=Path, default=CDP[0], help="the cdp executable to time (default: this venv's)"
    )
    parser.add_argument(
        "--keep-store", action="store_true", help="keep the events store of the last size"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "10000,100000"
    sizes = sorted(int(n) for n in args.sizes.split(","))
    CDP[0] = args.cdp.absolute()
    check_config()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args.data_dir = (args.data_dir or workdir).resolve()
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "code": code_version(),
        "cdp": str(CDP[0]),
        "sizes": sizes,
        "data": {},
    }
    print("measuring (each line prints when its load is done)", flush=True)
    measurements: list[Measurement] = []
    for customers in sizes:
        measurements += measure_size(customers, args, workdir, report)
    report["load_average_at_end"] = os.getloadavg()
    baselines = {(m.customers, m.file): m for m in measurements if m.method == "baseline"}
    print()
    print_table(measurements, baselines)
    report["growth"] = growth(measurements, sizes[0], sizes[-1]) if len(sizes) > 1 else []
    if report["growth"]:
        print(f"\ngrowth {sizes[0]:,} -> {sizes[-1]:,} customers (seconds, for the rows shown):")
        for g in report["growth"]:
            print(
                f"  {g['file']:18s} {g['method']:20s} {g['rows']:>24s}  "
                f"x{g['seconds_factor']:<6} {g['verdict']}"
            )
    start, end = report["machine"]["load_average_at_start"], report["load_average_at_end"]
    print(f"load average: {start[0]:.1f} at the start, {end[0]:.1f} at the end")
    report["measurements"] = [
        {
            **asdict(m),
            "rows_per_s": round(m.rows_per_s),
            "ratio_to_baseline": round(m.rows_per_s / baselines[m.customers, m.file].rows_per_s, 3),
        }
        for m in measurements
    ]
    out = workdir / ("results-quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
