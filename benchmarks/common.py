"""What every benchmark runner shares: the machine and code it measured, the generator, and a
child process timed with its own peak RSS. Runners import it as `common` (benchmarks/ is on
sys.path when a runner runs as `python benchmarks/bench_x.py`)."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def load_module(name: str) -> Any:
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_generator() -> Any:
    """benchmarks/generate.py, in this process."""
    return load_module("generate")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    versions = subprocess.run(
        [str(BIN / "sqlite-utils"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb * 1024 / 1e9, 1),
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlite_utils": versions.rsplit(" ", 1)[-1],
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),  # others' work on this box skews the figures
    }


def code_version() -> dict[str, Any]:
    """The commit, and the files of cdp_cli/ changed since it: cdp is taken as it is on disk
    when each cdp process starts, so every cdp measurement records this too."""
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "cdp_cli"],
        capture_output=True,
        text=True,
    ).stdout
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "commit": head.stdout.strip(),
        "cdp_cli_changed": [line[3:] for line in status.splitlines()],
    }


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mb: float  # the child's own maximum resident set; MB = 10**6 bytes
    stdout: str
    stderr: str
    # The most its processes held at once: the command and its second processes (ingest's,
    # resolve's, the renderer), whose own peaks GNU time does not add; sampled every 0.2 s.
    peak_tree_rss_mb: float = 0.0


def tree_rss_kb(pid: int) -> int:
    """The resident memory of a process and its descendants, in kB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+)", status)
        total += int(found.group(1)) if found else 0
        pids += [int(c) for c in children]
    return total


def _sample_tree_rss(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.wait(0.2):
        peak[0] = max(peak[0], tree_rss_kb(pid))


def run_measured(cmd: list[str]) -> ChildRun:
    """Run a command to its end: its wall time and its own peak RSS (not this process's), and
    the peak of it and its children together.

    GNU time -v reports the child's maximum resident set; without it, wait4 on that one child
    gives the same figure (getrusage(RUSAGE_CHILDREN) would mix in every earlier child)."""
    gnu_time = Path("/usr/bin/time").exists()
    with tempfile.TemporaryDirectory() as tmp:
        out, err, usage_file = Path(tmp, "out"), Path(tmp, "err"), Path(tmp, "time")
        full = ["/usr/bin/time", "-v", "-o", str(usage_file), *cmd] if gnu_time else cmd
        started = time.perf_counter()
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(full, stdout=stdout, stderr=stderr)
            peak, done = [0], threading.Event()
            sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, peak, done))
            sampler.start()
            _, status, usage = os.wait4(proc.pid, 0)
            done.set()
            sampler.join()
        seconds = time.perf_counter() - started
        kb = usage.ru_maxrss
        if gnu_time:
            found = re.search(
                r"Maximum resident set size \(kbytes\): (\d+)", usage_file.read_text()
            )
            kb = int(found.group(1)) if found else kb
        return ChildRun(
            os.waitstatus_to_exitcode(status),
            seconds,
            kb * 1024 / 1e6,
            out.read_text(),
            err.read_text(),
            peak[0] * 1024 / 1e6,
        )


def before_code(ref: str, out: Path) -> tuple[str, Path]:
    """cdp_cli/ as it was at `ref`, extracted under out/before-<commit>, to put first on
    PYTHONPATH: a runner's --before compares with another commit in the same run."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    folder = out / f"before-{commit}"
    if not (folder / "cdp_cli" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "cdp_cli"], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    return commit, folder
