"""A tag run after a new batch reads again only the customers that can have changed, and
leaves the same features and tags as a run that reads everything (features.compute_features).

The data is benchmarks/generate.py's, small: its exports with the last lines of the orders,
events and members held back as the next day's batch, on a later as-of date, so that rows
cross window edges and rows dated after the first date come into range.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdp_cli import Project
from cdp_cli.cli import cli
from cdp_cli.features import compute_features
from cdp_cli.sqlitelib import sqlite_utils
from cdp_cli.tags import run_tags
from tests.conftest import REPO
from tests.test_generator import gen

FIRST, NEXT = date(2026, 11, 8), date(2026, 11, 15)
HELD_BACK = {  # source: file whose last lines come in the second batch
    "crm_members": "crm_members.csv",
    "pos_orders": "pos_orders.csv",
    "shop_orders": "shop_orders.jsonl",
    "app_events": "app_events.jsonl",
}


def split(data: Path, later: Path, share: float = 0.05) -> dict[str, Path]:
    """Move the last `share` of each held-back file's lines to later/ (headers kept)."""
    later.mkdir()
    files = {}
    for source, name in HELD_BACK.items():
        path = data / name
        lines = path.read_bytes().splitlines(keepends=True)
        header = lines[:1] if name.endswith(".csv") else []
        body = lines[len(header) :]
        cut = len(body) - max(1, int(len(body) * share))
        path.write_bytes(b"".join(header + body[:cut]))
        (later / name).write_bytes(b"".join(header + body[cut:]))
        files[source] = later / name
    return files


def tables(db) -> dict[str, list[tuple]]:
    """What a tag run leaves: features, event counts and tag values, in key order."""
    return {
        table: db.conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
        for table, columns in (
            ("profile_features", "*"),
            ("profile_event_counts", "*"),
            ("profile_tags", "one_id, tag, value"),
        )
    }


def cdp(config: Path, *args: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once per module: a project tagged as of FIRST, and the next batch in later/."""
    root = tmp_path_factory.mktemp("incremental")
    gen.generate(root / "data", customers=250, events=4000, seed=5)
    split(root / "data", root / "later")
    text = (REPO / "cdp.yaml").read_text(encoding="utf-8").replace("sample_data/", "data/")
    (root / "cdp.yaml").write_text(text, encoding="utf-8")
    shutil.copytree(REPO / "tag_rules", root / "tag_rules")
    cdp(root / "cdp.yaml", "ingest")
    cdp(root / "cdp.yaml", "resolve")
    cdp(root / "cdp.yaml", "tag", "--as-of", FIRST.isoformat(), "--silent")
    return root


@pytest.fixture
def tagged(built: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A copy of the built project for one test, and its next batch (not ingested yet)."""
    root = tmp_path / "project"
    shutil.copytree(built, root)
    return root, {source: root / "later" / name for source, name in HELD_BACK.items()}


def test_an_incremental_run_leaves_what_a_full_run_does(tagged, monkeypatch):
    root, later = tagged
    for source, path in later.items():
        cdp(root / "cdp.yaml", "ingest", str(path), "-s", source)
    cdp(root / "cdp.yaml", "resolve")
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)  # never fall back here
    with Project(root / "cdp.yaml").store() as db:
        step = compute_features(db, NEXT)
        assert not step.full and 0 < step.recomputed < step.customers
        run_tags(db, root / "tag_rules", NEXT)
        incremental = tables(db)
        full = compute_features(db, NEXT, full=True)
        assert full.full and full.recomputed == full.customers == step.customers
        again = run_tags(db, root / "tag_rules", NEXT, force=True)
        assert tables(db) == incremental
    assert all(t["changed"] == t["removed"] == 0 for t in again.tags.values())
    assert sum(t["customers"] for t in again.tags.values()) > 0


def test_a_later_date_alone_moves_days_and_windows_as_a_full_run(tagged, monkeypatch):
    root, _ = tagged
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        step = compute_features(db, NEXT)  # no new row: only window edges and later rows
        assert not step.full and step.recomputed < step.customers
        incremental = tables(db)["profile_features"]
        compute_features(db, NEXT, full=True)
        assert tables(db)["profile_features"] == incremental


def full_recompute(db, as_of: date) -> dict[str, list[tuple]]:
    """What a full run leaves on this day, computed on a copy (the store keeps its state)."""
    copy = sqlite3.connect(":memory:")
    db.conn.backup(copy)
    compute_features(sqlite_utils.Database(copy), as_of, full=True)
    return tables(sqlite_utils.Database(copy))


@pytest.mark.parametrize("days", [1, 29, 61, 300, 400])
def test_windows_move_by_the_rows_that_leave_them_not_by_reading_customers_again(
    tagged, monkeypatch, days
):
    """A date move with no new row reads again only customers with a row coming into range:
    every other customer's windowed counts lose the rows that left the window, and the
    tables are a full run's, over short and long moves (past every window's length)."""
    root, _ = tagged
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        arriving = db.conn.execute(
            "SELECT count(*) FROM feature_recount WHERE on_day <= ?",
            ((FIRST + timedelta(days=days)).isoformat(),),
        ).fetchone()[0]
        moved = []
        for day in (FIRST + timedelta(days=days), FIRST + timedelta(days=days + 1)):
            moved.append(compute_features(db, day))
            assert tables(db) == full_recompute(db, day)
    assert not any(step.full for step in moved)
    assert moved[0].recomputed == arriving < moved[0].shifted
    assert moved[1].recomputed == 0  # the next day: nothing new comes into range


def test_new_events_alone_are_counted_into_the_kept_rows(tagged, monkeypatch):
    """A customer whose only news is events (of a key already resolved) is not read again:
    the new events are added to the kept counts (the latest time stays the latest, a row
    dated after the day waits for the earliest such day, then the customer is read again),
    and each step leaves a full run's tables."""
    root, _ = tagged
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        one_id, device, member, phone = db.conn.execute(
            "SELECT k.one_id, e.device_id, e.member_no, e.phone FROM events e "
            "JOIN identity_keys k ON k.key = e.identity_key WHERE k.one_id IS NOT NULL "
            "ORDER BY e.id LIMIT 1"
        ).fetchone()
    who = {"device_id": device, "user_id": member, "properties": {"phone": phone} if phone else {}}
    batches = {  # the day each batch is counted on: its events, in days from NEXT
        NEXT: [-10, 3, -32, -200, -900],  # -32: out of the 30 days on NEXT, in on FIRST
        NEXT + timedelta(days=1): [-20, 5],  # older than the latest; later than the 3rd
    }
    counted = {}
    for run, (day, offsets) in enumerate(batches.items()):
        lines = [
            json.dumps(
                {
                    "event_id": f"NEW{run}-{i}",
                    "event": "view_item",
                    **who,
                    "ts": f"{NEXT + timedelta(days=offset)}T12:00:00+08:00",
                }
            )
            for i, offset in enumerate(offsets)
        ]
        if run == 0:  # and someone new, known by a device alone
            lines.append(json.dumps({"event_id": "NEW-DEVICE", "event": "app_open",
                                     "device_id": "7E57-0000-NEW", "ts": f"{day}T09:00:00Z"}))  # fmt: skip
        batch = root / f"events-{run}.jsonl"
        batch.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cdp(root / "cdp.yaml", "ingest", str(batch), "-s", "app_events")
        cdp(root / "cdp.yaml", "resolve")
        with Project(root / "cdp.yaml").store() as db:
            step = compute_features(db, day)
            assert (step.full, step.events_added) == (False, 1)
            assert tables(db) == full_recompute(db, day)
            counted[day] = db.conn.execute(
                "SELECT event_count, on_day FROM profile_features JOIN feature_recount "
                "USING (one_id) WHERE one_id = ?",
                (one_id,),
            ).fetchone()
    waiting = str(NEXT + timedelta(days=3))
    assert counted[NEXT][1] == counted[NEXT + timedelta(days=1)][1] == waiting
    assert counted[NEXT + timedelta(days=1)][0] == counted[NEXT][0] + 1
    with Project(root / "cdp.yaml").store() as db:
        for day in (NEXT + timedelta(days=3), NEXT + timedelta(days=6)):
            arrived = compute_features(db, day)
            assert arrived.recomputed >= 1 and arrived.events_added == 0
            assert tables(db) == full_recompute(db, day)


def test_rows_counted_by_no_one_until_a_resolve_are_read_when_their_key_comes(tagged, monkeypatch):
    """A batch tagged before it is resolved counts for no one: its new keys have no customer.
    The run after the resolve reads again the customers those keys joined, though their rows
    are no longer new; keys whose rows are all new are counted as new rows."""
    root, later = tagged
    for source, path in later.items():
        cdp(root / "cdp.yaml", "ingest", str(path), "-s", source)
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        compute_features(db, NEXT)
    cdp(root / "cdp.yaml", "resolve")
    with Project(root / "cdp.yaml").store() as db:
        step = compute_features(db, NEXT)
        assert not step.full and step.recomputed > 0
        assert tables(db) == full_recompute(db, NEXT)


def test_rows_updated_in_place_read_again_the_customers_they_leave_and_join(tagged, monkeypatch):
    """An export that updates rows (a POS order rewritten with another member's phone) is
    followed, not a reason to read everyone: the customer the order left (by the key it
    left, which the customer's other orders still carry) and the one it joined are read
    again, as are the customers of rows updated with no key changed."""
    root, _ = tagged
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        order_no, left_phone = db.conn.execute(
            "SELECT key, phone FROM orders WHERE source = 'pos_orders' AND identity_key IN "
            "(SELECT identity_key FROM orders GROUP BY identity_key HAVING count(*) > 1) "
            "AND phone IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        other_phone, other_order = db.conn.execute(
            "SELECT phone, key FROM orders WHERE source = 'pos_orders' AND phone IS NOT NULL "
            "AND phone <> ? ORDER BY id LIMIT 1",
            (left_phone,),
        ).fetchone()
    with (root / "data" / "pos_orders.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header, moved, kept = rows[0], [], []
    for row in rows[1:]:
        if row[0] == order_no:
            moved = [*row[:3], other_phone, *row[4:]]
        if row[0] == other_order:
            kept = [*row[:5], "1.00", *row[6:]]  # a new amount, the same customer
    with (root / "updated.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, moved, kept])
    cdp(root / "cdp.yaml", "ingest", str(root / "updated.csv"), "-s", "pos_orders")
    cdp(root / "cdp.yaml", "resolve")
    with Project(root / "cdp.yaml").store() as db:
        step = compute_features(db, FIRST)
        assert not step.full and 2 <= step.recomputed <= 3
        assert db.conn.execute("SELECT count(*) FROM feature_left_keys").fetchone()[0] == 0
        assert tables(db) == full_recompute(db, FIRST)


def test_an_erasure_or_an_earlier_date_reads_everything_again(tagged):
    root, _ = tagged
    with Project(root / "cdp.yaml").store() as db:
        assert compute_features(db, FIRST).full is False
        assert compute_features(db, date(2026, 11, 1)).full is True
        db.conn.execute("INSERT INTO tombstones VALUES ('x', 'phone', '2026-11-15')")
        assert compute_features(db, NEXT).full is True


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_key_moved_by_resolve_is_read_again_on_both_sides(tagged, monkeypatch, mode):
    """An identity key that changes customer with no new row of its own (as a split or a
    relink does): both customers are read again, whether a full resolve run rewrote every key
    (all compared) or an incremental one stamped the keys it wrote (those compared)."""
    root, _ = tagged
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    with Project(root / "cdp.yaml").store() as db:
        db.conn.execute("UPDATE resolve_runs SET mode = ?", (mode,))
        db.conn.execute("UPDATE identity_keys SET resolved_at = '2000-01-01T00:00:00+00:00'")
        key, one_id = db.conn.execute(
            "SELECT k.key, k.one_id FROM identity_keys k JOIN orders o ON o.identity_key = k.key "
            "WHERE k.one_id IS NOT NULL ORDER BY k.key LIMIT 1"
        ).fetchone()
        other = db.conn.execute(
            "SELECT one_id FROM profiles WHERE one_id <> ? ORDER BY one_id LIMIT 1", (one_id,)
        ).fetchone()[0]
        db.conn.execute(  # stamped as a resolve run writes it: an instant later, in UTC+8
            "UPDATE identity_keys SET one_id = ?, resolved_at = ? WHERE key = ?",
            (other, "2999-01-01T08:00:00+08:00", key),
        )
        db.conn.execute(
            "INSERT INTO resolve_runs (mode, through_batch, rules, started_at, finished_at, "
            "result) SELECT mode, through_batch, rules, started_at, finished_at, "
            "result FROM resolve_runs ORDER BY id DESC LIMIT 1"
        )
        step = compute_features(db, FIRST)
        assert not step.full and step.recomputed == 2
        incremental = tables(db)["profile_features"]
        compute_features(db, FIRST, full=True)
        assert tables(db)["profile_features"] == incremental


def changes(db) -> list[tuple]:
    """Every recorded tag change, as journeys and reports read it (its time left out)."""
    return db.conn.execute(
        "SELECT id, run_id, one_id, tag, change, old_value, new_value FROM tag_changes ORDER BY id"
    ).fetchall()


def test_comparing_rows_of_tag_values_records_what_comparing_every_value_does(
    tagged, tmp_path, monkeypatch
):
    """A new day's run compares each customer's row of tag values with the one kept
    (tag_rows) and value by value only the customers whose row moved: the same tags and the
    same changes, with the same ids, as a run that compares every value (no tag_state)."""
    root, later = tagged
    for source, path in later.items():
        cdp(root / "cdp.yaml", "ingest", str(path), "-s", source)
    cdp(root / "cdp.yaml", "resolve")
    other = tmp_path / "every-value"
    shutil.copytree(root, other)
    monkeypatch.setattr("cdp_cli.features.INCREMENTAL_LIMIT", 1.0)
    left = {}
    for project, kept in ((root, True), (other, False)):
        with Project(project / "cdp.yaml").store() as db:
            assert db.conn.execute("SELECT count(*) FROM tag_rows").fetchone()[0] > 0
            assert db.conn.execute("SELECT count(*) FROM tag_state").fetchone()[0] == 1
            for day in (NEXT, date(2026, 12, 20)):  # new rows, then a date alone
                if not kept:
                    db.conn.execute("DELETE FROM tag_state")
                run_tags(db, project / "tag_rules", day)
            # a customer who is no more (as after a merge): every tag of theirs removed
            db.conn.execute(
                "DELETE FROM profiles WHERE one_id = (SELECT min(one_id) FROM tag_rows)"
            )
            if not kept:
                db.conn.execute("DELETE FROM tag_state")
            run_tags(db, project / "tag_rules", date(2026, 12, 20), force=True)
            left[kept] = (tables(db), changes(db))
    assert left[True] == left[False]
    assert {run_id for _, run_id, *_ in left[True][1]} == {1, 2, 3, 4}  # each run changed some
    assert {row[4] for row in left[True][1] if row[1] == 4} == {"removed"}
