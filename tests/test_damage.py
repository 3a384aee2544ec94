"""A damaged store: pages overwritten in a copy of the sample store, met by every command;
`cdp status --check`, and `cdp backup` with the restore docs/operations.md describes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cdp_cli import Project
from cdp_cli.cli import CdpGroup
from cdp_cli.errors import StoreDamaged
from cdp_cli.integrity import corruption_error, damage_marker
from tests.hostile import outbound_files, store_digest
from tests.ops_helpers import cdp, drop, sample_run_once

LINE = (
    "Error: cdp.db: the store is damaged (database disk image is malformed); run cdp status "
    "--check, then restore a backup (docs/operations.md#restoring-a-backup)\n"
)
# Once a command has met the damage, the others say when: "(..., found 2026-...)".
REMEMBERED = "Error: cdp.db: the store is damaged (database disk image is malformed, found 20"
GARBAGE = 0xA5
SAMPLE_PHONE = "13800138000"  # a customer of the sample, in four sources
CRM_FILE = "sample_data/crm_members.csv"  # in one transaction: it lands whole or not at all


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ingested, resolved, tagged and its journeys run; checkpointed into one file."""
    return sample_run_once(tmp_path_factory)


@pytest.fixture(scope="module")
def base_digest(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    # Of a copy: SQLite makes the WAL and its index beside a store it opens, even to read, and
    # another worker may be copying the shared base meanwhile.
    copy = tmp_path_factory.mktemp("base-digest")
    shutil.copyfile(base / "cdp.db", copy / "cdp.db")
    return store_digest(copy)


@pytest.fixture
def project(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Damaging pages, and undoing it to see what a command wrote


def page_size(db: Path) -> int:
    size = struct.unpack(">H", db.read_bytes()[16:18])[0]
    return 65536 if size == 1 else size


def root_page(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT rootpage FROM sqlite_master WHERE name = ?"
        return int(conn.execute(sql, (table,)).fetchone()[0])
    finally:
        conn.close()


def page_of_middle_row(db: Path, table: str, where: str = "1") -> int:
    """The leaf page that holds the middle row (by rowid) of those `where` picks: a command
    that goes through them in order meets it halfway, after writing for the rows before it.
    Found by walking the table's b-tree from its root, as the file format describes it."""
    conn = sqlite3.connect(db)
    try:
        rowids = [r[0] for r in conn.execute(f"SELECT rowid FROM {table} WHERE {where} ORDER BY 1")]
    finally:
        conn.close()
    rowid, page, size = rowids[len(rowids) // 2], root_page(db, table), page_size(db)
    with db.open("rb") as f:
        while True:
            f.seek((page - 1) * size)
            data = f.read(size)
            if data[0] == 0x0D:  # a leaf of a table b-tree
                return page
            assert data[0] == 0x05, f"page {page} of {table} is not a table b-tree page"
            page = _child_for(data, rowid)


def _child_for(interior: bytes, rowid: int) -> int:
    """In an interior table page: the child whose rows include `rowid`."""
    cells = struct.unpack(">H", interior[3:5])[0]
    for i in range(cells):
        at = struct.unpack(">H", interior[12 + 2 * i : 14 + 2 * i])[0]
        child = struct.unpack(">I", interior[at : at + 4])[0]
        if rowid <= _varint(interior, at + 4):  # the largest rowid in that child
            return child
    return struct.unpack(">I", interior[8:12])[0]  # the right-most child


def _varint(data: bytes, at: int) -> int:
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value
    raise AssertionError("unreachable")


def damage_pages(db: Path, pages: list[int]) -> dict[int, bytes]:
    """Overwrite whole pages with garbage; what they held, for `undamage`."""
    size = page_size(db)
    held = {}
    with db.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            held[page] = f.read(size)
            f.seek((page - 1) * size)
            f.write(bytes([GARBAGE]) * size)
    return held


def damage_middle(db: Path, length: int = 64 * 1024) -> None:
    """Bytes overwritten in the middle of the file, where no command may happen to read."""
    with db.open("r+b") as f:
        f.seek(db.stat().st_size // 2)
        f.write(bytes([GARBAGE]) * length)


def undamage(db: Path, held: dict[int, bytes]) -> None:
    """Put the damaged pages back as they were. They must still hold the garbage: SQLite
    cannot have written a page it could not read."""
    size = page_size(db)
    with db.open("r+b") as f:
        for page, content in held.items():
            f.seek((page - 1) * size)
            assert f.read(size) == bytes([GARBAGE]) * size, f"page {page} was written"
            f.seek((page - 1) * size)
            f.write(content)


def file_digest(folder: Path) -> str:
    """The store's bytes, with its WAL: unchanged when a command wrote nothing at all."""
    digest = hashlib.sha256()
    for name in ("cdp.db", "cdp.db-wal"):
        path = folder / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# A command meets the damage


@pytest.mark.parametrize(
    ("args", "table", "where"),
    [
        (
            ["ingest", CRM_FILE, "--force", "--source", "crm_members", "--silent"],
            "customers",
            "crm",
        ),
        (["resolve", "--full"], "customers", "middle"),
        (["tag", "--as-of", "2026-11-16"], "profiles", "middle"),
        # over the whole base the rule reads the tag index, not the table's rows
        (["segment", "--rule", "tag('lifecycle') = 'at_risk'"], "profile_tags_tag", "root"),
        (["journey", "run", "--now", "2026-11-16 10:30"], "journey_enrolments", "root"),
        (["status"], "customers", "middle"),
        (["profile", "--phone", SAMPLE_PHONE], "profiles", "root"),
    ],
)
def test_a_command_meeting_a_damaged_page_ends_with_the_line_and_writes_nothing(
    base: Path,
    base_digest: dict,
    project: Path,
    run: Callable[..., Result],
    args: list[str],
    table: str,
    where: str,
) -> None:
    db = project / "cdp.db"
    page = (
        root_page(db, table)
        if where == "root"
        else page_of_middle_row(db, table, "source = 'crm_members'" if where == "crm" else "1")
    )
    held = damage_pages(db, [page])
    before = outbound_files(project)
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr == LINE
    assert "database disk image is malformed" in damage_marker(db).read_text(encoding="utf-8")
    assert outbound_files(project) == before
    undamage(db, held)  # then the store must be as it was, whatever the command began to write
    if args[0] == "ingest":  # but for the batch row written before the file is read
        _drop_started_batch(project)
        assert store_digest(project) == base_digest
    else:  # not a byte committed
        assert file_digest(project) == file_digest(base)


def _drop_started_batch(folder: Path) -> None:
    """Delete the batch row an ingest writes before it reads the file, which it leaves
    'running' (as a killed ingest does) when it meets the damage: no other row may be new."""
    conn = sqlite3.connect(folder / "cdp.db")
    try:
        started = conn.execute("SELECT id, status, finished_at FROM batches ORDER BY id DESC")
        assert started.fetchone()[1:] == ("running", None)
        conn.execute("DELETE FROM batches WHERE id = (SELECT max(id) FROM batches)")
        conn.commit()
    finally:
        conn.close()


def test_once_met_every_command_refuses_the_store_and_writes_nothing(
    project: Path, run: Callable[..., Result]
) -> None:
    db = project / "cdp.db"
    damage_pages(db, [page_of_middle_row(db, "customers")])
    assert run("status").stderr == LINE
    unchanged = file_digest(project)
    for args in (
        ["ingest", "--silent"],
        ["resolve"],
        ["tag", "--as-of", "2026-11-16"],
        ["segment", "--rule", "tag('lifecycle') = 'at_risk'"],
        ["journey", "run", "--now", "2026-11-16 10:30"],
        ["profile", "--phone", SAMPLE_PHONE],
        ["consent", "--phone", SAMPLE_PHONE, "--channel", "sms", "--opt-out"],
        ["report", "overview"],
        ["run", "--now", "2026-11-16 10:30"],
        ["status"],
    ):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(REMEMBERED), (args, result.stderr)
        assert result.stderr.endswith(
            "); run cdp status --check, then restore a backup "
            "(docs/operations.md#restoring-a-backup)\n"
        )
    assert file_digest(project) == unchanged


def test_cron_run_reads_every_page_first_and_writes_nothing_into_a_damaged_store(
    project: Path,
) -> None:
    """Damage no stage would read is found before the run writes the day's files."""
    damage_middle(project / "cdp.db")
    inbox_file = drop(project / "inbox" / "pos" / "pos-new.csv", b"not read")
    unchanged = file_digest(project)
    result = cdp(project, "run", "--now", "2026-11-16 10:30")
    assert result.returncode == 1
    assert "the store is damaged (quick_check: " in result.stderr
    assert result.stderr.count("\n") == 1
    assert inbox_file.exists()  # the file stays in the inbox, for the run after the restore
    assert file_digest(project) == unchanged
    last = (project / "logs" / "cdp.log").read_text(encoding="utf-8").splitlines()[-1]
    assert " stage=run status=failed " in last and "the store is damaged" in last
    assert damage_marker(project / "cdp.db").exists()


RUN_NOW = ("--now", "2026-11-16 10:30")


def run_json(project: Path, *args: str) -> dict:
    """`cdp run --json` in its own process; its report."""
    result = cdp(project, "run", *RUN_NOW, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cron_run_reads_no_page_again_of_a_store_only_the_last_run_wrote_to(
    project: Path,
) -> None:
    """Anything else that writes to the store (a command, another program, a copy put back
    in its place) makes the next run read every page again."""
    db = project / "cdp.db"
    assert run_json(project)["pages_read"] is True
    assert run_json(project)["pages_read"] is False
    opt_out = ("consent", "--phone", SAMPLE_PHONE, "--channel", "sms", "--opt-out")
    assert cdp(project, *opt_out).returncode == 0
    assert run_json(project)["pages_read"] is True
    shutil.copy2(db, project / "copy.db")  # a backup of the same bytes, restored
    shutil.copy2(project / "copy.db", db)
    assert run_json(project)["pages_read"] is True


@pytest.mark.parametrize("keeps_times", [False, True], ids=["written", "times-put-back"])
def test_damage_written_after_a_run_is_found_by_the_next_one(
    project: Path, keeps_times: bool
) -> None:
    """Even by a program that sets the file's times back: the change time still moves."""
    db = project / "cdp.db"
    assert run_json(project)["pages_read"] is True
    before = db.stat()
    damage_middle(db)
    if keeps_times:
        os.utime(db, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = cdp(project, "run", *RUN_NOW)
    assert result.returncode == 1
    assert "the store is damaged (quick_check: " in result.stderr


def test_a_reader_holding_the_store_as_a_run_ends_leaves_the_next_run_to_read_every_page(
    project: Path,
) -> None:
    """The reader keeps the run's last writes in the WAL, so the file is not yet as the run
    leaves it; the run does not wait for the reader to finish."""
    assert run_json(project)["pages_read"] is True
    reader = sqlite3.connect(project / "cdp.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM customers").fetchone()
        assert run_json(project, "--wait", "600")["pages_read"] is False
    finally:
        reader.close()
    assert run_json(project)["pages_read"] is True


def test_a_stage_of_cron_run_that_meets_damage_stops_the_run(
    project: Path, run: Callable[..., Result]
) -> None:
    """A dry run reads no page first; its ingest stage meets the damage where it looks up a file."""
    db = project / "cdp.db"
    drop(project / "inbox" / "pos" / "pos-new.csv", b"order_no\n1\n")
    damage_pages(db, [root_page(db, "batches_source_sha256")])  # where it looks the file up
    unchanged = file_digest(project)
    result = run("run", "--dry-run", "--now", "2026-11-16 10:30")
    assert result.exit_code == 1
    assert result.stderr == LINE.replace("Error: cdp.db", f"Error: {db.resolve()}")
    assert file_digest(project) == unchanged


def test_damage_met_outside_the_store_block_is_the_line_too(tmp_path: Path) -> None:
    """The CLI's last net: a command that met damage where no library code turned it into
    StoreDamaged still ends with the line, even under CDP_DEBUG (which the tests set)."""
    store = tmp_path / "cdp.db"
    store.write_bytes(b"SQLite format 3\x00" + bytes(4080))

    @click.group(cls=CdpGroup)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = Project(store=store)

    @group.command()
    def reads() -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    result = CliRunner().invoke(group, ["reads"])
    assert result.exit_code == 1
    assert result.stderr == LINE.replace("Error: cdp.db", f"Error: {store}")
    assert damage_marker(store).exists()


def test_a_damaged_header_is_the_line_and_a_file_that_is_no_database_is_not(
    project: Path, run: Callable[..., Result]
) -> None:
    db = project / "cdp.db"
    with db.open("r+b") as f:
        f.seek(16)  # past "SQLite format 3\0": the page size and what follows
        f.write(bytes([GARBAGE]) * 84)
    result = run("status")
    assert result.exit_code == 1
    assert result.stderr == LINE.replace(
        "database disk image is malformed", "file is not a database"
    )
    notes = project / "notes.db"
    notes.write_text("my notes, not a database\n" * 100)
    for args in (["status"], ["status", "--check"], ["backup", "copy.db"]):
        result = run("--db", "notes.db", *args)
        assert result.exit_code == 1
        assert result.stderr == "Error: notes.db: not a cdp store (file is not a database)\n"
    assert not damage_marker(notes).exists()


def test_corruption_error_recognises_only_damage(tmp_path: Path) -> None:
    store = tmp_path / "cdp.db"
    store.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    assert corruption_error(sqlite3.OperationalError("database is locked"), store) is None
    assert corruption_error(ValueError("database disk image is malformed"), store) is None
    assert not damage_marker(store).exists()
    error = corruption_error(sqlite3.DatabaseError("database disk image is malformed"), store)
    assert isinstance(error, StoreDamaged) and error.exit_code == 1
    assert damage_marker(store).exists()


# ---------------------------------------------------------------------------------------------
# cdp status --check


def test_status_check_says_ok_of_a_sound_store(project: Path, run: Callable[..., Result]) -> None:
    result = run("status", "--check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: cdp.db (integrity_check, foreign_key_check: ")
    data = json.loads(run("status", "--check", "--json").stdout)
    assert data["ok"] is True and data["problems"] == [] and data["store"] == "cdp.db"


def test_status_check_lists_the_problems_remembers_them_and_forgets_them_after_a_restore(
    base: Path, project: Path, run: Callable[..., Result]
) -> None:
    db = project / "cdp.db"
    damage_middle(db)  # no command needs to have met it
    result = run("status", "--check", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["problems"]
    assert result.stderr.startswith("Error: cdp.db: the store is damaged (")
    assert result.stderr.endswith(
        f"{data['problems'][0]}); restore a backup (docs/operations.md#restoring-a-backup)\n"
    )
    text = run("status", "--check")
    assert text.exit_code == 1 and text.stdout.startswith("damaged: cdp.db (")
    assert f"  {data['problems'][0]}\n" in text.stdout
    assert run("segment", "--rule", "tag('lifecycle') = 'at_risk'").stderr.startswith(
        "Error: cdp.db: the store is damaged ("
    )
    shutil.copyfile(base / "cdp.db", db)  # the restore docs/operations.md describes
    for sidecar in ("cdp.db-wal", "cdp.db-shm"):
        (project / sidecar).unlink(missing_ok=True)
    result = run("status", "--check")
    assert result.exit_code == 0 and result.stdout.startswith("ok: ")
    assert "The damage a command met before (" in result.stderr
    assert not damage_marker(db).exists()
    assert run("segment", "--rule", "tag('lifecycle') = 'at_risk'").exit_code == 0


def test_status_check_lists_rows_that_refer_to_missing_rows(
    project: Path, run: Callable[..., Result]
) -> None:
    conn = sqlite3.connect(project / "cdp.db")  # foreign keys are off unless turned on
    conn.execute("DELETE FROM batches WHERE id = (SELECT min(batch_id) FROM rejects)")
    conn.commit()
    conn.close()
    result = run("status", "--check", "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert problems and all("refers to a row of batches that does not exist" in p for p in problems)


# ---------------------------------------------------------------------------------------------
# cdp backup, and restoring one


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


def test_a_backup_taken_while_a_writer_is_mid_transaction_is_consistent(
    project: Path, run: Callable[..., Result]
) -> None:
    before = counts(project / "cdp.db")
    writer = sqlite3.connect(project / "cdp.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # as cdp ingest holds it while it loads a file
    writer.execute("DELETE FROM messages")
    writer.execute("UPDATE customers SET name = 'half-done'")
    try:
        result = run("backup", "backups.db", "--json")
    finally:
        writer.execute("COMMIT")
        writer.close()
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (
        data["backup"] == "backups.db" and data["bytes"] == (project / "backups.db").stat().st_size
    )
    assert data["tables"] == {k: v for k, v in before.items() if k != "sqlite_sequence"}
    assert counts(project / "backups.db") == before  # the snapshot before the writer's change
    conn = sqlite3.connect(project / "backups.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM customers WHERE name = 'half-done'").fetchone() == (
        0,
    )
    conn.close()
    assert sorted(p.name for p in project.glob("*backups.db*")) == ["backups.db"]  # no temp file


def older_backup(project: Path, path: Path) -> None:
    """A backup of the project's store as it was before its messages were written."""
    shutil.copyfile(project / "cdp.db", path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM messages")
    conn.execute("PRAGMA journal_mode=DELETE")  # as a backup is: no WAL beside it
    conn.close()


def test_backup_replaces_an_older_one_and_restoring_it_gives_back_the_store(
    base_digest: dict, project: Path, run: Callable[..., Result]
) -> None:
    (project / "backups").mkdir()
    old = project / "backups" / "cdp.db"
    older_backup(project, old)
    result = run("backup", "backups/cdp.db")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Backed up cdp.db to backups/cdp.db: ")
    assert result.stdout.rstrip().endswith(" s") and ", checked, in " in result.stdout
    opt_out = ("consent", "--phone", SAMPLE_PHONE, "--channel", "sms", "--opt-out")
    assert run(*opt_out).exit_code == 0  # a write after the backup, which the restore undoes
    (project / "cdp.db-wal").unlink(missing_ok=True)  # as the restore says: stop, remove, copy
    (project / "cdp.db-shm").unlink(missing_ok=True)
    shutil.copyfile(old, project / "cdp.db")
    assert run("status", "--check").exit_code == 0
    assert store_digest(project) == base_digest


@pytest.mark.parametrize(
    ("dest", "what"),
    [
        ("cdp.db", "the project's store"),
        ("cdp.db-wal", None),
        ("cdp.db-shm", None),
        ("cdp.yaml", None),
        ("cdp.db.damaged", None),
        ("backup.csv", None),
        ("no-such-folder/backup.db", None),
    ],
)
def test_backup_refuses_a_dest_that_is_the_projects_own_or_no_database_name(
    project: Path, run: Callable[..., Result], dest: str, what: str | None
) -> None:
    unchanged = file_digest(project)
    result = run("backup", dest)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {dest}")
    if what:
        assert f"is {what}; an output never overwrites it" in result.stderr
    assert file_digest(project) == unchanged
    assert not list(project.glob(".*.tmp"))


def another_store(path: Path) -> None:
    """A store of another project: the same tables, its own tombstone key."""
    from cdp_cli.store import open_store

    open_store(path).close()


def not_a_cdp_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text)")
    conn.close()


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (another_store, "another store, or a backup of one"),
        (not_a_cdp_store, "not a cdp store"),
        (lambda path: path.write_text("my notes\n"), "not a database"),
    ],
)
def test_backup_never_replaces_what_is_not_an_older_backup_of_this_store(
    project: Path, run: Callable[..., Result], make: Callable[[Path], None], what: str
) -> None:
    """`cdp backup ../brand-b/cdp.db`, or a name another program's file has: kept as it is."""
    (project / "elsewhere").mkdir()
    dest = project / "elsewhere" / "cdp.db"
    make(dest)
    kept = dest.read_bytes()
    result = run("backup", "elsewhere/cdp.db")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: elsewhere/cdp.db is {what}: a backup replaces only an older backup of this "
        "store; choose another name, or remove the file first\n"
    )
    assert dest.read_bytes() == kept
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cdp.db"]  # nothing beside it
    dest.write_bytes(b"")  # an empty file holds nothing to lose
    assert run("backup", "elsewhere/cdp.db").exit_code == 0
    assert run("--db", "elsewhere/cdp.db", "status", "--check").exit_code == 0


def test_backup_of_a_damaged_store_fails_and_keeps_the_older_backup(
    project: Path, run: Callable[..., Result]
) -> None:
    """Damage the backup's own reading does not meet: an index no row count uses (a partial
    one), found in the copy by integrity_check."""
    older_backup(project, project / "last.db")
    kept = (project / "last.db").read_bytes()
    db = project / "cdp.db"
    damage_pages(db, [root_page(db, "messages_link_code")])
    result = run("backup", "last.db")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cdp.db: the store is damaged (its copy fails ")
    assert (project / "last.db").read_bytes() == kept
    assert sorted(p.name for p in project.glob("*last.db*")) == ["last.db"]
    assert damage_marker(project / "cdp.db").exists()  # and so the next commands refuse it
    assert run("resolve").stderr.startswith("Error: cdp.db: the store is damaged (")
