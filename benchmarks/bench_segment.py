"""Segment benchmark: `cdp segment` at 100k and 1M customers, against one SQL COUNT per rule.

A segment's time means something only next to what the same machine pays for the same answer
written by hand: one `SELECT count(*)` through sqlite3 with the rule as plain SQL (the
baseline), timed in the same run. cdp is timed as a user runs it, a fresh process each time,
start-up included, with its peak RSS; the load average is noted next to every figure, since
other work shares the machine.

The stores are built once and cached (generate, ingest, resolve, then `cdp tag` with
bench_tag.py's 60 tags), under /tmp/cdp-bench-segment by default: a 1M store takes about an
hour to build, so later runs reuse it (`--rebuild` builds it again).

    python benchmarks/bench_segment.py                      # 100k and 1M
    python benchmarks/bench_segment.py --sizes 100000       # 100k only
    python benchmarks/bench_segment.py --before main        # also time main's cdp_cli
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import ROOT, before_code, load_module

CDP = Path(sys.executable).parent / "cdp"
CACHE = Path("/tmp/cdp-bench-segment")
REPEATS = 5  # each timing: the median of this many
TARGETS_S = {"plain": 1.0, "tags": 1.5}  # issue 14, at 1M profiles, CLI start included


# build_store(), write_rules(), generated_tags(), cdp_tag(), store_facts() and warm() come
# from the tag benchmark; machine(), code_version() and ensure_data() from the ingest one.
tag_bench = load_module("bench_tag")
bench = tag_bench.bench


# ---------------------------------------------------------------------------------------------
# The rules, each as cdp reads it and as the baseline's hand-written WHERE clause over
# profiles p, profile_features f and profile_tags

FROM = "profiles p JOIN profile_features f ON f.one_id = p.one_id"


def has_tag(name: str) -> str:
    return f"p.one_id IN (SELECT one_id FROM profile_tags WHERE tag = '{name}')"


def tag_in(name: str, *values: str) -> str:
    listed = ", ".join(f"'{v}'" for v in values)
    chosen = f"tag = '{name}' AND value IN ({listed})"
    return f"p.one_id IN (SELECT one_id FROM profile_tags WHERE {chosen})"


RULES: dict[str, tuple[str, str, str]] = {
    # name: (kind, cdp rule, baseline WHERE); kind "plain" or "tags" picks the target
    "plain": (
        "plain",
        "total_spent_365d >= 1000 and city in ('武汉', '北京')",
        "f.total_spent_365d >= 1000 AND p.city IN ('武汉', '北京')",
    ),
    "rare": (  # few match: a sample in one_id order walked every profile to find ten
        "plain",
        "total_spent_365d >= 20000 and city = '武汉'",
        "f.total_spent_365d >= 20000 AND p.city = '武汉'",
    ),
    "none": (
        "plain",
        "total_spent < 0",
        "f.total_spent < 0",
    ),
    "bench_tag": (  # bench_tag.py's SEGMENT_RULE
        "tags",
        "total_spent_365d >= 1000 and city in ('武汉', '北京') and not has_tag('dormant')",
        f"f.total_spent_365d >= 1000 AND p.city IN ('武汉', '北京') AND NOT {has_tag('dormant')}",
    ),
    "vip": (  # tag_rules/segments.yaml's vip
        "tags",
        "has_tag('high_value') and tag('lifecycle') in ('active', 'new')",
        f"{has_tag('high_value')} AND {tag_in('lifecycle', 'active', 'new')}",
    ),
    "winback": (  # tag_rules/segments.yaml's winback
        "tags",
        "tag('lifecycle') = 'at_risk' and total_spent >= 300",
        f"{tag_in('lifecycle', 'at_risk')} AND f.total_spent >= 300",
    ),
}
# How each rule is asked: the default (a table and a sample of 10), --json (the sample too),
# and --sample 0 --json (the count alone).
MODES: dict[str, list[str]] = {
    "table": [],
    "json": ["--json"],
    "count": ["--sample", "0", "--json"],
}


# ---------------------------------------------------------------------------------------------
# The stores


def build(size: int, events_per_customer: int, rebuild: bool) -> dict[str, Any]:
    """CACHE/<size>/cdp.db: generated data ingested, resolved and tagged; built once, reused
    while its build.json says it finished."""
    workdir = CACHE / str(size)
    stamp = workdir / "build.json"
    if stamp.exists() and not rebuild:
        print(f"reusing the store in {workdir}", flush=True)
        return {**json.loads(stamp.read_text()), "reused": True}
    stamp.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    events = size * events_per_customer
    data = CACHE / f"data-{size}c-{events}e"
    started = time.perf_counter()
    generated = bench.ensure_data(data, size, events, True)
    built = tag_bench.build_store(workdir, data, False, True)
    tag_bench.write_rules(workdir, tag_bench.generated_tags())
    tagged = tag_bench.cdp_tag(Path(built["config"]))
    facts = tag_bench.store_facts(Path(built["store"]))
    record = {
        "customers": size,
        "events": events,
        "built_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "code": bench.code_version(),
        "load_average_at_end": os.getloadavg(),
        "seconds": {
            "generate": generated.get("seconds"),
            "ingest": built["ingest"]["seconds"],
            "resolve": round(built["resolve"]["seconds"], 1),
            "tag": round(tagged["seconds"], 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "config": built["config"],
        "store": built["store"],
        **facts,
    }
    stamp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"built {workdir} in {record['seconds']['total']} s", flush=True)
    return {**record, "reused": False}


# ---------------------------------------------------------------------------------------------
# Measuring


def cdp(args: list[str], code: Path | None = None) -> dict[str, Any]:
    """One `cdp` process, start-up included: wall seconds; CPU seconds and peak RSS from GNU
    time -v (the child's own: wait4 here would count this process's memory, which the child
    holds from the fork until it execs); its stdout; the 1-minute load average as it started.
    `code`: a cdp_cli/ to run instead of this checkout's."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp, "time")
        started = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", str(usage_file), str(CDP), *args],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        usage = usage_file.read_text()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): cdp {shlex.join(args)}\n{proc.stderr[-2000:]}")

    def field(name: str) -> float:
        found = re.search(rf"{re.escape(name)}: ([0-9.]+)", usage)
        assert found is not None, usage
        return float(found.group(1))

    return {
        "seconds": seconds,
        "cpu_seconds": field("User time (seconds)") + field("System time (seconds)"),
        "rss_mb": field("Maximum resident set size (kbytes)") * 1024 / 1e6,  # MB = 10**6 B
        "load": load,
        "stdout": proc.stdout,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by wall time, with every run's wall time and the highest load seen."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    middle = ordered[len(ordered) // 2]
    return {
        **middle,
        "runs_s": [round(r["seconds"], 3) for r in runs],
        "max_load": max(r["load"] for r in runs),
    }


def baseline(store: Path, where: str, repeats: int) -> dict[str, Any]:
    """The rule as one hand-written SQL COUNT through sqlite3, on a fresh connection each time
    (as a cdp process has): the median of `repeats` query times, start-up not included."""
    runs = []
    for _ in range(repeats):
        conn = sqlite3.connect(store)
        load = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        customers = conn.execute(f"SELECT count(*) FROM {FROM} WHERE {where}").fetchone()[0]
        runs.append({
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            "load": load,
            "customers": customers,
        })  # fmt: skip
        conn.close()
    return median_of(runs)


def measure_size(
    built: dict[str, Any], before: tuple[str, Path] | None, repeats: int
) -> dict[str, Any]:
    """Every rule in every mode at one size: cdp (and the code before, if given) against the
    baseline; the customers cdp counts must be the baseline's, and the output the code
    before's, or the run stops."""
    config, store = built["config"], Path(built["store"])
    tag_bench.warm(store)
    figures: dict[str, Any] = {
        "load_average_at_start": os.getloadavg(),
        "cdp_version": median_of([cdp(["--version"]) for _ in range(repeats)]),
        "rules": {},
    }
    for name, (kind, rule, where) in RULES.items():
        base = baseline(store, where, repeats)
        entry: dict[str, Any] = {"kind": kind, "rule": rule, "baseline": base, "modes": {}}
        for mode, extra in MODES.items():
            args = ["--config", config, "segment", "--rule", rule, *extra]
            mine = median_of([cdp(args) for _ in range(repeats)])
            if mode != "table":
                counted = json.loads(mine["stdout"])["customers"]
                if counted != base["customers"]:
                    sys.exit(f"{name}: cdp counts {counted}, the baseline {base['customers']}")
            result = {k: v for k, v in mine.items() if k != "stdout"}
            result["ratio"] = mine["seconds"] / base["seconds"]
            if before is not None:
                old = median_of([cdp(args, before[1]) for _ in range(repeats)])
                if old["stdout"] != mine["stdout"]:
                    sys.exit(f"{name} {mode}: the output differs from {before[0]}'s")
                result["before"] = {k: v for k, v in old.items() if k != "stdout"}
            entry["modes"][mode] = result
            show(built["customers"], name, mode, result, base)
        figures["rules"][name] = entry
    figures["load_average_at_end"] = os.getloadavg()
    return figures


def show(size: int, name: str, mode: str, result: dict[str, Any], base: dict[str, Any]) -> None:
    before = result.get("before")
    old = f"  before {before['seconds']:.2f} s ({before['cpu_seconds']:.2f} cpu)" if before else ""
    print(
        f"{size:>9,} {name:<9} {mode:<5} {result['seconds']:6.2f} s  "
        f"cpu {result['cpu_seconds']:.2f}  {result['rss_mb']:4.0f} MB  "
        f"baseline {base['seconds']:.3f} s  x{result['ratio']:.1f}  "
        f"load {result['load']:.1f}{old}",
        flush=True,
    )


def verdicts(figures: dict[str, Any]) -> dict[str, Any]:
    """At the largest size: each rule's `cdp segment --rule ... --json` (count and sample of
    10, start-up included) against its kind's target."""
    largest = max(figures, key=int)
    found = {}
    for name, entry in figures[largest]["rules"].items():
        seconds = entry["modes"]["json"]["seconds"]
        target = TARGETS_S[entry["kind"]]
        found[name] = {"seconds": round(seconds, 3), "target": f"< {target}",
                       "pass": seconds < target}  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--events-per-customer", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true", help="build the stores again")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--before", metavar="REF", help="also time cdp_cli/ at this commit")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per figure")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks/out/segment-results.json"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": bench.machine(),
        "code": bench.code_version(),
        "stores": {},
        "figures": {},
    }
    stores = {size: build(size, args.events_per_customer, args.rebuild) for size in args.sizes}
    report["stores"] = {str(size): built for size, built in stores.items()}
    if args.build_only:
        return 0
    before = before_code(args.before, CACHE) if args.before else None
    report["before"] = before[0] if before else None
    for size, built in stores.items():
        report["figures"][str(size)] = measure_size(built, before, args.repeats)
    report["targets"] = verdicts(report["figures"])
    report["load_average_at_end"] = os.getloadavg()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name, verdict in report["targets"].items():
        print(f"{name}: {verdict['seconds']} s, target {verdict['target']}: "
              f"{'PASS' if verdict['pass'] else 'FAIL'}")  # fmt: skip
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
