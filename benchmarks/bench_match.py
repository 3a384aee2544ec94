"""Probabilistic matching benchmark (issue 16): quality with and without it, and its speed.

Quality: the generator's data (benchmarks/generate.py) plus a legacy CRM export of people
who share no identifier with it (benchmarks/legacy_crm.py), ingested with the benchmark
config; `cdp resolve` without `identity.match`, then with it. Pairwise precision, recall and
F1 against the truth, over every record and over the pairs that hold a legacy record.

Speed: a synthetic CRM and legacy export (legacy_crm.py --synthetic), `cdp resolve` in full
(target < 300 s and peak RSS < 3 GB at 1M records, 300k of them needing matching), then
after a 1% legacy batch (target < 1/10 of the full run). The load average is recorded with
each figure: the box is shared.

    python benchmarks/bench_match.py --customers 5000 --members 700000 --legacy 300000
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CDP = Path(sys.executable).parent / "cdp"
FULL_TARGET_S = 300.0
RSS_TARGET_MB = 3000.0
INCREMENTAL_TARGET = 0.10
MATCH = """  match:
    fields: [name, birthday, city, address]
    sources: [legacy_crm]
    threshold: 0.95
    review_threshold: 0.5
"""
LEGACY_SOURCE = """  legacy_crm:
    kind: customers
    format: csv
    key: 客户编号
    fields: {name: {from: [姓, 名]}, birthday: 生日, city: 城市, address: 地址}
"""
GENERATED_FILES = {
    "crm_members": ["crm_members.csv", "crm_members_legacy_gbk.csv"],
    "pos_orders": ["pos_orders.csv"],
    "shop_orders": ["shop_orders.jsonl"],
    "wechat_followers": ["wechat_followers.csv"],
    "coupons": ["coupons.csv"],
    "legacy_crm": ["legacy_crm.csv"],
}


def load_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_module("bench_ingest")  # run_child: wall seconds and the child's peak RSS
legacy_crm = load_module("legacy_crm")
generate = load_module("generate")


def cdp(config: Path, *args: str) -> dict[str, Any]:
    load = os.getloadavg()[0]
    seconds, rss_mb, out = bench.run_child([str(CDP), "--config", str(config), *args])
    return {"seconds": round(seconds, 2), "rss_mb": round(rss_mb), "load": round(load, 2),
            "out": out}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Pairwise quality


def pairs(counts: Any) -> int:
    return sum(n * (n - 1) // 2 for n in counts)


def quality(store: Path, truth_files: list[Path], legacy: str = "legacy_crm") -> dict[str, Any]:
    """Pairwise precision, recall and F1 of the store's one_ids against the truth: over every
    record truth names, and over the pairs that hold at least one legacy record. A record
    without a one_id is a customer by itself."""
    person: dict[tuple[str, str], str] = {}
    for path in truth_files:
        with path.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                source = row["source"]
                if source == "crm_members_legacy_gbk":
                    source = "crm_members"
                key = row["key"].replace(":", "|") if source == "wechat_followers" else row["key"]
                person[(source, key)] = row["person_id"]
    conn = sqlite3.connect(store)
    cells: Counter[tuple[str, str]] = Counter()
    legacy_cells: Counter[tuple[str, str]] = Counter()  # the legacy records only
    for source, key, one_id in conn.execute("SELECT source, key, one_id FROM id_mapping"):
        pid = person.get((source, key))
        if pid is None:
            continue
        cell = (one_id or f"alone:{source}:{key}", pid)
        cells[cell] += 1
        if source == legacy:
            legacy_cells[cell] += 1
    conn.close()
    return {
        "all records": score(cells),
        "pairs with a legacy record": score(cells, legacy_cells),
    }


def score(cells: Counter[tuple[str, str]], legacy: Counter | None = None) -> dict[str, Any]:
    clusters: Counter[str] = Counter()
    persons: Counter[str] = Counter()
    for (one_id, pid), n in cells.items():
        clusters[one_id] += n
        persons[pid] += n
    if legacy is None:
        both, found, true = pairs(cells.values()), pairs(clusters.values()), pairs(persons.values())
    else:  # pairs with at least one legacy record: all pairs less those with none
        others = cells - legacy
        other_clusters: Counter[str] = Counter()
        other_persons: Counter[str] = Counter()
        for (one_id, pid), n in others.items():
            other_clusters[one_id] += n
            other_persons[pid] += n
        both = pairs(cells.values()) - pairs(others.values())
        found = pairs(clusters.values()) - pairs(other_clusters.values())
        true = pairs(persons.values()) - pairs(other_persons.values())
    precision = both / found if found else 1.0
    recall = both / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 5), "recall": round(recall, 5), "f1": round(f1, 5),
            "pairs_true": true, "pairs_found": found}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The two parts


def config_text(store: Path, match: bool) -> str:
    text = (ROOT / "benchmarks" / "configs" / "cdp.yaml").read_text(encoding="utf-8")
    text = text.replace("store: ../out/cdp.db", f"store: {store}")
    legacy = LEGACY_SOURCE if match else LEGACY_SOURCE.replace(", address: 地址", "")
    text = text.replace("\nsources:\n", "\nsources:\n" + legacy, 1)
    if match:  # the benchmark config declares no identity: section of its own
        assert "\nidentity:" not in text
        text += "\nidentity:\n" + MATCH
    return text


def run_quality(work: Path, customers: int) -> dict[str, Any]:
    data = work / "quality"
    data.mkdir(parents=True, exist_ok=True)
    generate.generate(data, customers=customers, seed=7)
    legacy_rows = legacy_crm.write_from_export(data)
    without, with_match = work / "without.yaml", work / "with.yaml"
    store = work / "quality.db"
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        path.unlink(missing_ok=True)
    without.write_text(config_text(store, match=False), encoding="utf-8")
    with_match.write_text(config_text(store, match=True), encoding="utf-8")
    for source, files in GENERATED_FILES.items():
        cdp(without, "ingest", "--source", source, *[str(data / f) for f in files])
    truth = [data / "truth.csv", data / "legacy_truth.csv"]
    runs = {"without matching": cdp(without, "resolve")}
    scores = {"without matching": quality(store, truth)}
    # The match fields identify a legacy row now: its identity key changes, so it is read again.
    legacy_file = str(data / "legacy_crm.csv")
    cdp(with_match, "ingest", "--source", "legacy_crm", "--force", legacy_file)
    runs["with matching"] = cdp(with_match, "resolve")
    scores["with matching"] = quality(store, truth)
    result = json.loads(cdp(with_match, "resolve", "--json")["out"])  # unchanged: counts
    return {
        "customers": customers,
        "legacy_rows": legacy_rows,
        "quality": scores,
        "runs": {k: {x: v[x] for x in ("seconds", "rss_mb", "load")} for k, v in runs.items()},
        "profiles": result["profiles"],
    }


SCALE_CONFIG = """store: {store}
sources:
  members:
    kind: customers
    format: csv
    key: 会员编号
    fields: {{member_no: 会员编号, name: 姓名, phone: 手机号, birthday: 生日, city: 城市}}
{legacy}identity:
{match}"""


def run_scale(work: Path, members: int, legacy: int) -> dict[str, Any]:
    data = work / f"scale-{members + legacy}"
    sizes = legacy_crm.write_synthetic(data, members, legacy, batch_share=0.01)
    store = data / "cdp.db"
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        path.unlink(missing_ok=True)
    config = data / "cdp.yaml"
    config.write_text(SCALE_CONFIG.format(store=store, legacy=LEGACY_SOURCE, match=MATCH))
    ingest = cdp(config, "ingest", "--source", "members", str(data / "members.csv"))
    ingest_legacy = cdp(config, "ingest", "--source", "legacy_crm", str(data / "legacy_crm.csv"))
    full = cdp(config, "resolve", "--json")
    full_result = json.loads(full.pop("out"))
    scores = quality(store, [data / "truth.csv"])
    cdp(config, "ingest", "--source", "legacy_crm", str(data / "legacy_crm_batch.csv"))
    incremental = cdp(config, "resolve", "--json")
    incremental_result = json.loads(incremental.pop("out"))
    after = quality(store, [data / "truth.csv"])
    return {
        "records": members + sizes["legacy"],
        "sizes": sizes,
        "ingest_s": ingest["seconds"] + ingest_legacy["seconds"],
        "full": full,
        "full_matching": full_result["matching"],
        "incremental": incremental,
        "incremental_matching": incremental_result["matching"],
        "incremental_share": round(incremental["seconds"] / full["seconds"], 3),
        "quality_after_full": scores,
        "quality_after_incremental": after,
        "targets_met": {
            "full < 300 s": full["seconds"] < FULL_TARGET_S,
            "peak RSS < 3 GB": full["rss_mb"] < RSS_TARGET_MB,
            "incremental < 1/10 of full": incremental["seconds"]
            < INCREMENTAL_TARGET * full["seconds"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "match")
    parser.add_argument("--customers", type=int, default=5000, help="generated, for quality")
    parser.add_argument("--members", type=int, default=700_000)
    parser.add_argument("--legacy", type=int, default=300_000)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": bench.machine(), "load_at_start": os.getloadavg()}
    if not args.skip_quality:
        report["quality"] = run_quality(args.work, args.customers)
        print(json.dumps(report["quality"], indent=2, ensure_ascii=False), flush=True)
    if not args.skip_scale:
        report["scale"] = run_scale(args.work, args.members, args.legacy)
        print(json.dumps(report["scale"], indent=2, ensure_ascii=False), flush=True)
    report["load_at_end"] = os.getloadavg()
    (args.work / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
