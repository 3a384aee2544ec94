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
Targets: < 90 s and peak RSS < 1 GB at 1M customers, and <= 3x the baseline.

    python benchmarks/bench_journey.py --customers 1000000
    python benchmarks/bench_journey.py --customers 100000 --keep   # reuse the store next time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sqlite3
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import jinja2

from cdp_cli.features import compute_features
from cdp_cli.messaging.filters import default_name, format_date, money
from cdp_cli.store import open_store

ROOT = Path(__file__).resolve().parents[1]
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


def load_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "journey")
    parser.add_argument("--keep", action="store_true", help="Reuse a store built before.")
    args = parser.parse_args(argv)
    folder = args.out / f"project-{args.customers}c"
    pristine = args.out / f"pristine-{args.customers}c.db"
    if not (args.keep and pristine.exists()):
        started = time.perf_counter()
        build_project(folder, args.customers)
        shutil.copy(folder / "cdp.db", pristine)
        print(f"store built in {time.perf_counter() - started:.1f} s")
    else:
        shutil.rmtree(folder / "outbound", ignore_errors=True)
        for suffix in ("-wal", "-shm"):
            (folder / f"cdp.db{suffix}").unlink(missing_ok=True)
        shutil.copy(pristine, folder / "cdp.db")

    data = customer_data(folder / "cdp.db")
    base_seconds = baseline(data, args.out / "baseline.jsonl")
    del data
    seconds, rss_mb, stdout = bench.run_child(
        [str(CDP), "--config", str(folder / "cdp.yaml"), "journey", "run", "--now", NOW, "--json"]
    )
    [result] = json.loads(stdout)
    sent = sum(result["sent"].values())
    ratio = seconds / base_seconds
    figures = {
        "customers": args.customers,
        "enrolled": result["enrolled"],
        "sent": result["sent"],
        "skipped": result["skipped"],
        "cdp_seconds": round(seconds, 1),
        "cdp_peak_rss_mb": round(rss_mb),
        "messages_per_second": round(sent / seconds),
        "baseline_seconds": round(base_seconds, 1),
        "baseline_messages_per_second": round(args.customers / base_seconds),
        "ratio": round(ratio, 2),
        "targets": {"seconds": SECONDS_TARGET, "rss_mb": RSS_TARGET_MB, "ratio": RATIO_TARGET},
        "pass": {
            "seconds": seconds < SECONDS_TARGET * args.customers / 1_000_000,
            "rss": rss_mb < RSS_TARGET_MB,
            "ratio": ratio <= RATIO_TARGET,
        },
        "machine": bench.machine(),
        "code": bench.code_version(),
    }
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    (args.out / f"result-{args.customers}c.json").write_text(
        json.dumps(figures, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return 0 if all(figures["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
