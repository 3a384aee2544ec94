"""Resolve at size: a `--full` rerun costs what a first run costs (no path that grows with the
square of the customers), and the phone-type fast path says what phonenumbers says."""

from __future__ import annotations

import random
import time
from pathlib import Path

import phonenumbers

from cdp_cli.config import load_config
from cdp_cli.identity.normalize import _CN_TYPES
from cdp_cli.identity.resolve import resolve
from cdp_cli.store import open_store
from tests.conftest import query

MEMBERS = 20_000
CONFIG = """store: cdp.db
region: CN
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: member_no, name: name, phone: phone, email: email}
"""


def write_members(path: Path, rows: int) -> None:
    """Members with a phone and an email of their own, written as exports write them: one
    customer per record, so a rerun holds as many one_ids as a store of this size can."""
    rng = random.Random(5)
    lines = ["member_no,name,phone,email"]
    for n in range(rows):
        phone = f"13{n % 10}{(n * 7_919_993 + 12_345) % 10**8:08d}"
        written = rng.choice([phone, f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}", f"0086{phone}"])
        lines.append(f"M{n:07d},member {n},{written}, Member.{n}@Example.com ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _timed_resolve(config_path: Path, full: bool) -> tuple[float, dict[str, int | str]]:
    config = load_config(config_path)
    db = open_store(config.store)
    try:
        started = time.perf_counter()
        result = resolve(db, config, full=full)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    return seconds, {
        "mode": result.mode,
        "profiles": result.profiles,
        "created": result.created,
        "merged": result.merged,
        "split": result.split,
    }


def test_full_rerun_of_a_resolved_store_takes_at_most_twice_the_first_run(run, write, tmp_path):
    write("cdp.yaml", CONFIG)
    write_members(tmp_path / "crm.csv", MEMBERS)
    assert run("ingest", "crm.csv", "--source", "crm").exit_code == 0
    first, created = _timed_resolve(tmp_path / "cdp.yaml", full=False)
    assert created == {
        "mode": "full", "profiles": MEMBERS, "created": MEMBERS, "merged": 0, "split": 0
    }  # fmt: skip
    mapping = query(tmp_path / "cdp.db", "SELECT key, one_id FROM id_mapping ORDER BY key")
    # Two reruns, the quicker counts: a burst of load on a shared machine is not a regression.
    reruns = [_timed_resolve(tmp_path / "cdp.yaml", full=True) for _ in range(2)]
    for _, rerun in reruns:
        assert rerun == {"mode": "full", "profiles": MEMBERS, "created": 0, "merged": 0, "split": 0}
    assert query(tmp_path / "cdp.db", "SELECT key, one_id FROM id_mapping ORDER BY key") == mapping
    fastest = min(seconds for seconds, _ in reruns)
    assert fastest <= 2 * first, f"--full rerun {fastest:.2f} s, first run {first:.2f} s"


def test_phone_types_are_the_ones_phonenumbers_gives():
    """Every 4-digit start of a CN national number, at every length the metadata knows."""
    rng = random.Random(3)
    differ = []
    for start in range(1000, 10_000):
        for length in range(7, 13):
            national = f"{start}{rng.randrange(10 ** (length - 4)):0{length - 4}d}"
            number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national))
            if _CN_TYPES.number_type(national) != phonenumbers.number_type(number):
                differ.append(national)
    assert differ == []
