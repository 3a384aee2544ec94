"""Pipeline benchmark: `cdp run` as cron runs it, on a brand's whole day of exports.

At each size the generator's exports (10 app events per customer) are split: 99% of every
file's records are the first day's exports, the last 1% the second day's. The project is the
repo's own (root cdp.yaml with an `inbox:` per source, tag_rules/, journeys/, templates/).
The first day's files are dropped into the inbox folders and `cdp run` runs as cron would,
as a subprocess, with its peak RSS; then the second day's files, and `cdp run` again the next
day. Each run's per-stage times come from its own `--json` summary.

Targets at 1M customers / 10M events: the first run <= 10 minutes, the daily run <= 2
minutes, peak RSS < 1.5 GB. The load average is recorded before and after each run: the box
has 2 cores, and a figure means little without it.

    python benchmarks/bench_pipeline.py                      # 100k and 1M customers (~30 min)
    python benchmarks/bench_pipeline.py --sizes 10000        # a quick look
    python benchmarks/bench_pipeline.py --skip-generate      # reuse the generated exports
    python benchmarks/bench_pipeline.py --sizes 1000000 --skip-generate --keep-first
    python benchmarks/bench_pipeline.py --sizes 1000000 --daily-again  # the daily run again
    python benchmarks/bench_pipeline.py --sizes 1000000 --daily-again --store-changed  # page check
    python benchmarks/bench_pipeline.py --sizes 1000000 --daily-again --cold  # nothing in memory
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sqlite3
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, code_version, load_generator, machine, run_measured

WORK = Path("/tmp/cdp-bench-pipeline")
EVENTS_PER_CUSTOMER = 10
NEW_SHARE = 0.01  # of every export's records, held back for the second day
FIRST_DAY = date(2026, 11, 15)  # the generator's last day
FIRST_TARGET_S = 600.0
DAILY_TARGET_S = 120.0
RSS_TARGET_MB = 1500.0  # MB = 10**6 bytes
PROJECT_FOLDERS = ("tag_rules", "journeys", "templates")
FILE_FIGURES = ("file", "status", "rows_read", "inserted", "updated", "rejected", "seconds")
SETTLED = 3600  # seconds: exports are dated an hour back, so no inbox waits for them to settle


# ---------------------------------------------------------------------------------------------
# The exports of two days


def generate(data: Path, customers: int, reuse: bool) -> None:
    if reuse and (data / "counts.json").exists():
        print(f"reusing the exports in {data}", flush=True)
        return
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    print(f"generating {customers:,} customers into {data} ...", flush=True)
    started = time.perf_counter()
    counts = load_generator().generate(data, customers, customers * EVENTS_PER_CUSTOMER)
    print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    (data / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")


def _encoding(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def split_export(src: Path, first: Path, second: Path, share: float) -> int:
    """The last `share` of a file's records into `second`, the rest into `first`, each file
    in the export's own format and encoding; the number of records held back."""
    raw = src.read_bytes()
    if src.suffix == ".jsonl":
        lines = raw.splitlines(keepends=True)
        held = round(len(lines) * share)
        first.write_bytes(b"".join(lines[: len(lines) - held]))
        second.write_bytes(b"".join(lines[len(lines) - held :]))
        return held
    if src.suffix == ".json":
        records = json.loads(raw)
        held = round(len(records) * share)
        for path, part in ((first, records[: len(records) - held]), (second, records[-held:])):
            path.write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
        return held
    encoding = _encoding(raw)
    header, *rows = list(csv.reader(io.StringIO(raw.decode(encoding), newline="")))
    held = round(len(rows) * share)
    for path, part in ((first, rows[: len(rows) - held]), (second, rows[len(rows) - held :])):
        with path.open("w", encoding=encoding, newline="") as f:
            csv.writer(f).writerows([header, *part])
    return held


def split_days(data: Path, exports: list[str]) -> dict[str, int]:
    """day1/ and day2/ next to the exports; how many records each file holds back."""
    for day in ("day1", "day2"):
        shutil.rmtree(data / day, ignore_errors=True)
        (data / day).mkdir()
    return {
        name: split_export(data / name, data / "day1" / name, data / "day2" / name, NEW_SHARE)
        for name in exports
    }


# ---------------------------------------------------------------------------------------------
# The project: the repo's own, each source reading an inbox


def make_project(workdir: Path) -> dict[str, str]:
    """workdir/cdp.yaml: the root cdp.yaml, its store in workdir, each source an inbox of its
    own in place of `files:`; the export file name each source takes, by source."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "cdp.yaml").read_text(encoding="utf-8"))
    config["store"] = "cdp.db"
    takes: dict[str, str] = {}
    for name, source in config["sources"].items():
        files = source.pop("files")
        for file in [files] if isinstance(files, str) else files:
            takes[Path(file).name] = name
        source["inbox"] = f"inbox/{name}"
        (workdir / "inbox" / name).mkdir(parents=True)
    (workdir / "cdp.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    for folder in PROJECT_FOLDERS:
        (workdir / folder).symlink_to(ROOT / folder)
    return takes


def drop_exports(day: Path, workdir: Path, takes: dict[str, str]) -> list[str]:
    """Copy a day's exports into their inboxes, dated back so that none waits to settle."""
    dropped = []
    for src in sorted(day.iterdir()):
        source = takes.get(src.name)
        if source is None:
            continue
        target = workdir / "inbox" / source / src.name
        shutil.copyfile(src, target)
        back = time.time() - SETTLED
        os.utime(target, (back, back))
        dropped.append(src.name)
    return dropped


def cdp_run(workdir: Path, day: date) -> dict[str, Any]:
    """`cdp run` on a day, at 10:00 in the project's timezone, timed whole."""
    load_before = os.getloadavg()
    cmd = [
        str(Path(sys.executable).parent / "cdp"), "--config", str(workdir / "cdp.yaml"), "run",
        "--as-of", day.isoformat(), "--now", f"{day.isoformat()} 10:00", "--silent", "--json",
    ]  # fmt: skip
    run = run_measured(cmd)
    report = json.loads(run.stdout) if run.stdout.strip().startswith("{") else {}
    stages = {s["stage"]: s for s in report.get("stages", [])}
    files = report.get("files", [])
    return {
        "exit_code": run.returncode,
        "seconds": round(run.seconds, 1),
        "in_run_seconds": report.get("seconds"),  # run_pipeline's own: the page check in
        "pages_read": report.get("pages_read"),  # False: the store was as the last run left it
        "peak_rss_mb": round(run.peak_rss_mb),
        "peak_tree_rss_mb": round(run.peak_tree_rss_mb),  # with its second processes
        "stages": {
            name: {"status": s["status"], "seconds": s["seconds"], "counts": s.get("counts")}
            for name, s in stages.items()
        },
        "files": [{k: f.get(k) for k in FILE_FIGURES} for f in files],
        "stderr_tail": run.stderr[-2000:] if run.returncode else "",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def run_size(
    customers: int,
    reuse: bool,
    keep_first: bool,
    daily_again: bool,
    warm: bool = False,
    store_changed: bool = False,
    cold: bool = False,
) -> dict[str, Any]:
    """The first run and the daily run at one size. keep_first copies the project after the
    first run (project-N-first); daily_again starts from that copy and runs the day again,
    so the daily run can be measured again, on a quiet box or after a change, without the
    first run's half hour at 1M. `warm` reads the copied store once before the run, as on a
    box whose store yesterday's run left in memory: copying 11 GB through a page cache of
    about 20 GB leaves an unknown part of it there, and the run's check of every page reads
    it from the disk (12 s warm, 103 s cold at 1M). `cold` empties the page cache instead
    (root only): the store, and everything else, comes from the disk.

    The copy is byte for byte the store the first run left, but to `cdp run` it is a new
    file, which it reads whole before writing: so the copy is recorded as the first run left
    it (`integrity.remember_run`), as on the box where yesterday's run wrote last, unless
    `store_changed` (something else wrote to the store since)."""
    data, workdir = WORK / f"data-{customers}", WORK / f"project-{customers}"
    kept = workdir.with_name(workdir.name + "-first")
    runs = [("first", FIRST_DAY, "day1"), ("daily", FIRST_DAY + timedelta(1), "day2")]
    if daily_again:
        if not (kept / "first-run.json").exists():
            sys.exit(f"{kept}: no first run kept (run with --keep-first)")
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.copytree(kept, workdir, symlinks=True)
        os.sync()  # the copy's gigabytes reach the disk before the run, not during it
        if not store_changed:
            record_as_the_last_run_left_it(workdir / "cdp.db")
        if cold:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")  # after os.sync: clean pages only
        if warm:
            with (workdir / "cdp.db").open("rb") as store:
                while store.read(1 << 24):
                    pass
        first = json.loads((kept / "first-run.json").read_text())
        takes, result = first["takes"], first["result"]
        result["daily_code"] = code_version()
        result["store_read_before_the_daily_run"] = warm
        result["store_changed_since_the_first_run"] = store_changed
        result["page_cache_emptied_before_the_daily_run"] = cold
        runs = runs[1:]
    else:
        generate(data, customers, reuse)
        takes = make_project(workdir)
        held = split_days(data, sorted(takes))
        result = {"customers": customers, "held_back": held, "code": code_version()}
    for label, day, folder in runs:
        dropped = drop_exports(data / folder, workdir, takes)
        print(f"{customers:,}: {label} run with {len(dropped)} exports ...", flush=True)
        result[label] = cdp_run(workdir, day)
        done = result[label]
        print(f"  {done['seconds']} s, exit {done['exit_code']}, {done['peak_rss_mb']} MB "
              f"({done['peak_tree_rss_mb']} MB with its second processes)", flush=True)  # fmt: skip
        if label == "first" and keep_first:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(workdir, kept, symlinks=True)
            (kept / "first-run.json").write_text(json.dumps({"takes": takes, "result": result}))
    result["store_mb"] = round((workdir / "cdp.db").stat().st_size / 1e6)
    return result


def record_as_the_last_run_left_it(store: Path) -> None:
    from cdp_cli.integrity import remember_run

    conn = sqlite3.connect(store, isolation_level=None)
    try:
        remember_run(conn)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# The report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    runs = [size[run] for size in sizes for run in ("first", "daily")]
    stages = list(dict.fromkeys(stage for run in runs for stage in run["stages"]))  # in order
    print(
        "\n| size | run | seconds | "
        + " | ".join(stages)
        + " | peak RSS (all processes) | load before / after |"
    )
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in stages) + " | ---: | --- |")
    for size in sizes:
        for run in ("first", "daily"):
            r = size[run]
            cells = [str(r["stages"].get(s, {}).get("seconds", "")) for s in stages]
            load = f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}"
            rss = f"{r['peak_rss_mb']} MB ({r['peak_tree_rss_mb']} MB)"
            print(f"| {size['customers']:,} | {run} | {r['seconds']} | " + " | ".join(cells)
                  + f" | {rss} | {load} |")  # fmt: skip
    largest = max(sizes, key=lambda s: s["customers"])
    targets = {
        "first run <= 10 min": largest["first"]["seconds"] <= FIRST_TARGET_S,
        "daily run <= 2 min": largest["daily"]["seconds"] <= DAILY_TARGET_S,
        "peak RSS < 1.5 GB": max(largest[r]["peak_tree_rss_mb"] for r in ("first", "daily"))
        < RSS_TARGET_MB,
        "every run exits 0": all(s[r]["exit_code"] == 0 for s in sizes for r in ("first", "daily")),
    }
    print(f"\ntargets at {largest['customers']:,} customers:")
    for name, ok in targets.items():
        print(f"  {name}: {verdict(ok)}")
    if len(sizes) > 1:
        small = min(sizes, key=lambda s: s["customers"])
        for run in ("first", "daily"):
            grown = largest[run]["seconds"] / max(small[run]["seconds"], 0.01)
            print(
                f"  growth of the {run} run, {small['customers']:,} -> "
                f"{largest['customers']:,} customers: {grown:.1f}x"
            )
    return {name: verdict(ok) for name, ok in targets.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="customers, comma-separated")
    parser.add_argument("--skip-generate", action="store_true", help="reuse generated exports")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pipeline.json")
    parser.add_argument(
        "--keep-first", action="store_true", help="copy each project after its first run"
    )
    parser.add_argument(
        "--daily-again", action="store_true", help="the daily run again, on the kept copy"
    )
    parser.add_argument(
        "--warm", action="store_true", help="with --daily-again: read the copied store first"
    )
    parser.add_argument(
        "--store-changed",
        action="store_true",
        help="with --daily-again: as if another program wrote to the store since the first run "
        "(the run reads every page first)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="with --daily-again: empty the page cache before the run (root only)",
    )
    args = parser.parse_args(argv)
    started = {"machine": machine(), "command": " ".join(sys.argv)}
    sizes = [
        run_size(
            int(n),
            args.skip_generate,
            args.keep_first,
            args.daily_again,
            args.warm,
            args.store_changed,
            args.cold,
        )
        for n in args.sizes.split(",")
    ]
    verdicts = report(sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**started, "sizes": sizes, "targets": verdicts}, ensure_ascii=False, indent=1)
        + "\n"
    )
    print(f"\nfigures in {args.out}")
    return 0 if all(v == "PASS" for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
