"""Predict benchmark: `cdp predict` fits and scores 1M customers.

The store is built once from benchmarks/generate.py data with --latent-purchases (buyers follow
BG/NBD and Gamma-Gamma, so the fit has something true to find), through `cdp ingest`, `cdp
resolve` and `cdp tag` with the starter project's cdp.yaml, and cached in
/tmp/cdp-bench-predict (timed, not a target). Then `cdp predict` runs as a subprocess, twice:
the first run may compile PyTensor's C code (a cold cache), the second is the steady state.
Targets: under 120 s and a peak RSS under 2 GB. The purchase and spend models are fitted on a
random sample (model.FIT_SAMPLE customers), the classifiers on at most CLASSIFIER_SAMPLE; every
customer is scored.

    python benchmarks/bench_predict.py                    # 1M customers, 1M events
    python benchmarks/bench_predict.py --customers 100000 --folder /tmp/cdp-bench-predict-100k
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CDP = Path(sys.executable).parent / "cdp"
AS_OF = "2026-11-15"  # the generator's last day
TARGET_S = 120.0
TARGET_RSS_MB = 2000.0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def timed(args: list[str], cwd: Path) -> dict[str, Any]:
    """Run a command under GNU time: wall seconds, peak RSS (MB, 10^6 bytes), load before and
    after, and its stdout."""
    before = load()
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {
        "command": " ".join(args[1:]) if args[0] == str(CDP) else " ".join(args),
        "seconds": round(seconds, 1), "load_before": before, "load_after": load(),
        "peak_rss_mb": round(int(rss[1]) * 1024 / 1e6) if rss else None, "stdout": done.stdout,
    }  # fmt: skip


def build(folder: Path, customers: int, events: int, data: Path | None) -> list[dict[str, Any]]:
    """The cached store: generated (or `data`, generated the same way before), ingested,
    resolved and tagged once."""
    if (folder / "built").exists():
        return json.loads((folder / "built").read_text())
    shutil.rmtree(folder / "project", ignore_errors=True)
    steps = []
    subprocess.run([str(CDP), "init", str(folder / "project")], check=True, capture_output=True)
    sample = folder / "project" / "sample_data"
    shutil.rmtree(sample)
    if data is not None:
        shutil.move(data, sample)
    else:
        steps.append(timed([sys.executable, str(ROOT / "benchmarks/generate.py"), "--out",
                            str(sample), "--customers", str(customers), "--events", str(events),
                            "--latent-purchases"], folder))  # fmt: skip
    for command in (["ingest", "--silent"], ["resolve", "--silent"], ["tag", "--as-of", AS_OF]):
        steps.append(timed([str(CDP), *command], folder / "project"))
    for step in steps:
        step.pop("stdout")
    (folder / "built").write_text(json.dumps(steps, indent=1))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/cdp-bench-predict"))
    parser.add_argument("--data", type=Path, help="generate.py --latent-purchases output to use")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    steps = build(args.folder, args.customers, args.events, args.data)
    project = args.folder / "project"
    runs = []
    for _ in range(2):
        run = timed([str(CDP), "predict", "--as-of", AS_OF, "--json"], project)
        result = json.loads(run.pop("stdout"))
        run |= {key: result[key] for key in ("customers", "scored", "fitted_on", "notes")}
        run["evaluation"] = result["evaluation"]
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "evaluation"}), file=sys.stderr)
    evaluate = timed([str(CDP), "predict", "--evaluate", "--calibration-end", "2026-08-17",
                      "--as-of", AS_OF, "--json"], project)  # fmt: skip
    found = json.loads(evaluate.pop("stdout"))
    evaluate["churn"] = {k: found["churn"][k] for k in ("auc", "brier", "baseline_recency_auc")}
    evaluate["orders"] = found["orders"]
    steady = runs[-1]
    report = {
        "customers": args.customers, "build": steps, "predict": runs, "evaluate": evaluate,
        "targets": {"seconds": TARGET_S, "peak_rss_mb": TARGET_RSS_MB},
        "met": steady["seconds"] < TARGET_S and (steady["peak_rss_mb"] or 0) < TARGET_RSS_MB,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / f"predict-{args.customers}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
