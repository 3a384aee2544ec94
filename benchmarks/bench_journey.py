"""Journey benchmark: `cdp journey run` that enrols and messages N customers, against bare Jinja.

A journey run's time means something only next to what the same machine pays for the bare
work in the same run: rendering the same template for the same customers with a plain
jinja2.Environment, and writing those messages as JSON Lines (the baseline; the customer
data is read into memory first, untimed). cdp does that and more: enrols, holds out 10%,
checks consents, addresses and the frequency cap, draws a unique coupon per message from a
pool, renders in the sandbox with limits, counts SMS segments, writes the outbox in the same
transaction as the journey state, then the outbound file.

The store is synthesized in SQL (profiles, phone and WeChat identifiers, consents, a coupon
pool, features computed by cdp), because ingest and resolve have their own benchmarks.
Targets: < 90 s and peak RSS < 1 GB at 1M customers (the first process and its render worker
together), and <= 3x the baseline.

At each size cdp runs as a user runs it (rendering in a second process from
RENDER_WORKER_FROM due enrolments); at the --compare-at sizes it also runs in one process
(and, with --before, as the code at that commit), each from the same store, and the runner
stops unless all of them sent the same: every outbound file byte for byte, and the outbox in
order. Figures go to OUT/result.json and a table for benchmarks/README.md.

    python benchmarks/bench_journey.py                        # 100k and 1M (~10 min to build)
    python benchmarks/bench_journey.py --keep --before main   # reuse the stores; main too
    python benchmarks/bench_journey.py --sizes 100000 --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
from common import ROOT, before_code, load_module, tree_rss_kb

from cdp_cli.features import compute_features
from cdp_cli.messaging.filters import default_name, format_date, money
from cdp_cli.messaging.rendering import RENDER_WORKER_FROM
from cdp_cli.store import open_store

CDP = Path(sys.executable).parent / "cdp"
NOW = "2026-11-15 10:30"
SECONDS_TARGET, RSS_TARGET_MB, RATIO_TARGET = 90.0, 1000.0, 3.0
TEMPLATE = "winback_coupon"
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["芳", "娜", "敏", "静", "伟", "强", "磊", "洋", "艳", "杰", "娟", "涛", "明", "超", "霞"]
CITIES = ["武汉", "北京", "上海", "广州", "成都", "深圳", "杭州", "南京"]
CATEGORIES = ["护肤", "彩妆", "香水", "礼盒", "个护"]
CONFIG = """store: cdp.db
region: CN
timezone: Asia/Shanghai
brand: {name: 花漾, url: "https://www.huayang.example.com"}
channels:
  sms: {cost: 0.04}
  wechat: {appid: wx8a3f5e2b1c9d4e70, cost: 0}
sources: {}
"""
JOURNEY = """name: bench
entry: {when: "city is not null"}
holdout: 10%
steps:
  - split:
      wechat_first:
        share: 50%
        steps:
          - send: {channel: wechat, fallback: [sms], template: winback_coupon, coupon: BENCH}
      sms_only:
        share: 50%
        steps: [{send: {channel: sms, template: winback_coupon, coupon: BENCH}}]
"""


bench = load_module("bench_ingest")  # run_child(), machine(), code_version()


def build_project(folder: Path, customers: int) -> None:
    """A project whose store holds `customers` resolved customers, features and a coupon pool."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "journeys").mkdir(parents=True)
    (folder / "cdp.yaml").write_text(CONFIG, encoding="utf-8")
    (folder / "journeys" / "bench.yaml").write_text(JOURNEY, encoding="utf-8")
    shutil.copytree(ROOT / "templates", folder / "templates")
    for path in (folder / "templates" / "wechat").glob("*.json"):  # as a project fills them in
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("REPLACE_ME_", "TPL_"), encoding="utf-8")
    (folder / "tag_rules").mkdir()
    db = open_store(folder / "cdp.db")
    rng = random.Random(7)
    conn = db.conn
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        batch = conn.execute(
            "INSERT INTO batches (source, kind, file, sha256, size, started_at, status) "
            "VALUES ('bench', 'coupons', 'bench', 'bench', 0, '2026-11-15', 'done')"
        ).lastrowid
        conn.executemany(
            "INSERT INTO profiles (one_id, name, city, known, first_seen, last_seen, records, "
            "created_at, updated_at) "
            "VALUES (?, ?, ?, 1, '2025-01-01', '2026-11-01', 1, '2026-11-15', '2026-11-15')",
            (
                (f"C{i:09d}", rng.choice(SURNAMES) + rng.choice(GIVEN), rng.choice(CITIES))
                for i in range(customers)
            ),
        )
        conn.executemany(
            "INSERT INTO identifiers (one_id, type, value, detail, status) "
            "VALUES (?, ?, ?, ?, 'linked')",
            identifiers(customers, rng),
        )
        conn.executemany(
            "INSERT INTO profile_tags (one_id, tag, value, since) VALUES (?, ?, ?, '2026-11-15')",
            ((f"C{i:09d}", "preferred_category", rng.choice(CATEGORIES)) for i in range(customers)),
        )
        conn.executemany(
            "INSERT INTO coupons (source, key, code, campaign, status, face_value, expires_at, "
            "batch_id) VALUES ('bench', ?, ?, 'BENCH', 'available', 20, '2027-05-13 23:59:59', ?)",
            ((f"K{i}", f"WB-{i:08d}", batch) for i in range(customers)),
        )
    compute_features(db, date(2026, 11, 15))
    db.close()


def identifiers(customers: int, rng: random.Random) -> Any:
    for i in range(customers):
        one_id = f"C{i:09d}"
        yield one_id, "phone", f"+861{rng.randint(3, 9)}{i:09d}", "mobile"
        if i % 3 == 0:
            yield one_id, "wechat_openid", f"wx8a3f5e2b1c9d4e70:o{i:012d}", None


def customer_data(store: Path) -> list[dict[str, Any]]:
    """What the baseline renders from, read up front (untimed)."""
    conn = sqlite3.connect(store)
    rows = conn.execute(
        "SELECT p.one_id, p.name, i.value, t.value FROM profiles p "
        "JOIN identifiers i ON i.one_id = p.one_id AND i.type = 'phone' "
        "LEFT JOIN profile_tags t ON t.one_id = p.one_id AND t.tag = 'preferred_category' "
        "ORDER BY p.one_id"
    ).fetchall()
    conn.close()
    return [
        {"one_id": one_id, "customer": {"name": name}, "phone": phone,
         "tags": {"preferred_category": category},
         "features": {"top_category": None},  # no orders here
         "coupon": {"code": f"WB-{n:08d}", "face_value": 20.0, "expires_at": "2027-05-13 23:59:59"},
         "brand": {"name": "花漾", "url": "https://www.huayang.example.com"},
         "link": "https://www.huayang.example.com"}
        for n, (one_id, name, phone, category) in enumerate(rows)
    ]  # fmt: skip


def baseline(data: list[dict[str, Any]], out: Path) -> float:
    """Bare Jinja rendering of the same SMS for each customer, and a JSON Lines write."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"))
    env.filters.update(money=money, date=format_date, default_name=default_name)  # cdp's own
    template = env.get_template(f"sms/{TEMPLATE}.txt")
    started = time.perf_counter()
    with out.open("w", encoding="utf-8") as f:
        for i, context in enumerate(data):
            text = template.render(context)
            record = {"message_id": f"bench:{i}:0", "to": context["phone"], "text": text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Running cdp


def run_cdp(folder: Path, extra: list[str], code: Path | None = None) -> dict[str, Any]:
    """`cdp journey run` on the project in folder: wall and CPU seconds (its worker's
    included), its own peak RSS (GNU time -v), and the peak of its RSS and its worker's
    together (sampled every 0.1 s), the load average before and after."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    args = [str(CDP), "--config", str(folder / "cdp.yaml"), "journey", "run", "--now", NOW,
            "--json", *extra]  # fmt: skip
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        usage_file, out = Path(tmp, "time"), Path(tmp, "out")
        started = time.perf_counter()
        with out.open("w") as stdout:
            proc = subprocess.Popen(
                ["/usr/bin/time", "-v", "-o", str(usage_file), *args],
                stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            peak_sum = 0
            while proc.poll() is None:
                peak_sum = max(peak_sum, tree_rss_kb(proc.pid))
                time.sleep(0.1)
        seconds = time.perf_counter() - started
        assert proc.stderr is not None
        if proc.returncode:
            sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr.read()[-3000:]}")
        usage = usage_file.read_text()
        stdout_text = out.read_text()

    def figure(label: str) -> float:
        found = re.search(rf"{re.escape(label)}: ([\d.]+)", usage)
        return float(found.group(1)) if found else 0.0

    [result] = json.loads(stdout_text)
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(figure("User time (seconds)") + figure("System time (seconds)"), 1),
        "peak_rss_mb": round(figure("Maximum resident set size (kbytes)") / 1024),
        "peak_rss_with_worker_mb": round(peak_sum / 1024),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "result": result,
    }


def fresh_copy(size_folder: Path, pristine: Path, name: str) -> Path:
    """The project with the pristine store, in a folder of its own, no outbound files yet."""
    folder = size_folder.parent / f"{size_folder.name}-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(size_folder, folder, ignore=shutil.ignore_patterns("outbound", "cdp.db*"))
    shutil.copy(pristine, folder / "cdp.db")
    return folder


def sent_digest(folder: Path) -> dict[str, str]:
    """What a run sent, to compare runs: each outbound file's bytes, under its name, and the
    outbox in the order it was written (but for the files' folder and when they were written)."""
    digests = {
        str(p.relative_to(folder / "outbound")): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted((folder / "outbound").rglob("*"))
        if p.is_file()
    }
    conn = sqlite3.connect(folder / "cdp.db")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
    kept = ", ".join(c for c in columns if c not in ("file", "written_at"))
    outbox = hashlib.sha256()
    for row in conn.execute(f"SELECT {kept} FROM messages ORDER BY rowid"):
        outbox.update(repr(row).encode("utf-8", "surrogatepass"))
    conn.close()
    digests["messages table"] = outbox.hexdigest()[:16]
    return digests


# ---------------------------------------------------------------------------------------------
# One size


def measure(
    customers: int, out: Path, keep: bool, compare: bool, before: tuple[str, Path] | None
) -> dict[str, Any]:
    """Baseline, then cdp as a user runs it (a second process rendering at this size), then,
    with `compare`, cdp in one process and (with `before`) the code at another commit, each
    from the same store: they must send the same, byte for byte, or the run stops."""
    folder = out / f"project-{customers}c"
    pristine = out / f"pristine-{customers}c.db"
    if not (keep and pristine.exists()):
        started = time.perf_counter()
        build_project(folder, customers)
        shutil.copy(folder / "cdp.db", pristine)
        print(f"{customers:,}: store built in {time.perf_counter() - started:.1f} s", flush=True)
    load_start = os.getloadavg()
    data = customer_data(pristine)
    base_seconds = baseline(data, out / "baseline.jsonl")
    del data
    runs = {"two processes": run_cdp(fresh_copy(folder, pristine, "two"), [])}
    print(f"{customers:,}: baseline {base_seconds:.1f} s, cdp {runs['two processes']['seconds']} s",
          flush=True)  # fmt: skip
    digests = {"two processes": sent_digest(folder.parent / f"{folder.name}-two")}
    if compare:
        one = fresh_copy(folder, pristine, "one")
        runs["one process"] = run_cdp(one, ["--render-worker-from", str(10**12)])
        digests["one process"] = sent_digest(one)
        print(f"{customers:,}: cdp in one process {runs['one process']['seconds']} s", flush=True)
    if compare and before is not None:
        old = fresh_copy(folder, pristine, "before")
        runs[f"before ({before[0]})"] = run_cdp(old, [], before[1])
        digests[f"before ({before[0]})"] = sent_digest(old)
    reference = digests["two processes"]
    same = {name: digest == reference for name, digest in digests.items()}
    main = runs["two processes"]
    result = main.pop("result")
    sent = sum(result["sent"].values())
    ratio = main["seconds"] / base_seconds
    others = {name: {k: v for k, v in run.items() if k != "result"}
              for name, run in runs.items() if name != "two processes"}  # fmt: skip
    figures = {
        "customers": customers,
        "enrolled": result["enrolled"],
        "sent": result["sent"],
        "skipped": result["skipped"],
        "cdp": main,
        "messages_per_second": round(sent / main["seconds"]),
        "baseline_seconds": round(base_seconds, 1),
        "baseline_messages_per_second": round(customers / base_seconds),
        "ratio": round(ratio, 2),
        "other runs": others,
        "same as two processes": same,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "pass": {
            "seconds": main["seconds"] < SECONDS_TARGET * customers / 1_000_000,
            "rss": main["peak_rss_with_worker_mb"] < RSS_TARGET_MB,
            "ratio": ratio <= RATIO_TARGET,
        },
    }
    if not all(same.values()):
        print(json.dumps(digests, indent=2))
        sys.exit(f"{customers:,}: the runs did not send the same: {same}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="customers, comma-separated")
    parser.add_argument("--compare-at", default="100000",
                        help="sizes at which cdp also runs in one process (and --before), "
                        "comma-separated; 'all' for every size")  # fmt: skip
    parser.add_argument("--before", metavar="REF", help="also run cdp_cli/ at this commit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "journey")
    parser.add_argument("--keep", action="store_true", help="Reuse the stores built before.")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    compare = sizes if args.compare_at == "all" else [int(s) for s in args.compare_at.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    before = before_code(args.before, args.out) if args.before else None
    report: dict[str, Any] = {
        "targets": {"seconds": SECONDS_TARGET, "rss_mb": RSS_TARGET_MB, "ratio": RATIO_TARGET},
        "render_worker_from": RENDER_WORKER_FROM,
        "machine": bench.machine(),
        "code": bench.code_version(),
        "sizes": {},
    }
    for customers in sizes:
        figures = measure(customers, args.out, args.keep, customers in compare, before)
        report["sizes"][str(customers)] = figures
        print(json.dumps(figures, ensure_ascii=False, indent=2), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    (args.out / "result.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print_table(report)
    passed = all(all(f["pass"].values()) for f in report["sizes"].values())
    return 0 if passed else 1


def print_table(report: dict[str, Any]) -> None:
    """The figures as benchmarks/README.md shows them."""
    print(f"\ncommit {report['code']['commit']}")
    print("| size | load avg start → end | baseline | cdp (2 processes) | cpu | peak RSS "
          "(with worker) | ratio | one process | same |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for size, f in report["sizes"].items():
        cdp = f["cdp"]
        one = f["other runs"].get("one process")
        one_seconds = f"{one['seconds']} s" if one else ""
        print(
            f"| {int(size):,} | {f['load_average_start'][0]:.1f} → {f['load_average_end'][0]:.1f} "
            f"| {f['baseline_seconds']} s | {cdp['seconds']} s | {cdp['cpu_seconds']} s "
            f"| {cdp['peak_rss_mb']} MB ({cdp['peak_rss_with_worker_mb']} MB) | {f['ratio']} "
            f"| {one_seconds} "
            f"| {', '.join(n for n, ok in f['same as two processes'].items() if ok)} |"
        )


if __name__ == "__main__":
    sys.exit(main())
