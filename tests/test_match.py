"""Probabilistic matching (identity.match): people who share no identifier, linked under the
guards, explained, reviewed by a person, stable and incremental.

One project is built and resolved once per module (Splink trains its model then); each test
that changes it works on a copy, whose stored model it reuses.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cdp_cli.cli import cli
from cdp_cli.config import load_config
from cdp_cli.ingest import ingest_file
from cdp_cli.store import open_store
from tests.conftest import query

pytest.importorskip("splink")

CONFIG = """
sources:
  crm:
    kind: customers
    format: csv
    key: member_no
    fields: {member_no: member_no, name: name, phone: phone, birthday: birthday, city: city,
             address: address}
  legacy_crm:
    kind: customers
    format: csv
    key: lid
    fields: {name: {from: [姓, 名]}, birthday: 生日, city: 城市, address: 地址, member_no: 会员号}
identity:
  match:
    fields: [name, birthday, city, address]
    sources: [legacy_crm]
    threshold: 0.95
    review_threshold: 0.5
"""

SURNAMES = {"张": "Zhang", "王": "Wang", "李": "Li", "赵": "Zhao", "刘": "Liu", "陈": "Chen",
            "杨": "Yang", "黄": "Huang", "周": "Zhou", "吴": "Wu", "徐": "Xu", "孙": "Sun"}  # fmt: skip
GIVEN = {"伟": "Wei", "芳": "Fang", "娜": "Na", "敏": "Min", "静": "Jing", "强": "Qiang",
         "磊": "Lei", "军": "Jun", "洋": "Yang", "勇": "Yong", "艳": "Yan", "杰": "Jie",
         "建华": "Jianhua", "晓东": "Xiaodong", "秀英": "Xiuying"}  # fmt: skip
CITIES = ["上海", "北京", "杭州", "深圳", "广州", "成都"]
ROADS = ["南京路", "淮海路", "人民路", "解放路", "中山路", "延安路"]
LEGACY_HEADER = ["lid", "姓", "名", "生日", "城市", "地址", "会员号"]


def members(count: int = 300) -> list[dict[str, str]]:
    rng = random.Random(16)
    people = []
    for i in range(count):
        surname, given = rng.choice(list(SURNAMES)), rng.choice(list(GIVEN))
        day = rng.choice(["10", "12", "20", "21", "01", "02"])  # still a date when swapped
        people.append(
            {
                "member_no": f"M{i:05d}",
                "name": surname + given,
                "phone": f"139{i:08d}",
                "birthday": f"19{rng.randint(60, 99)}-{rng.randint(1, 12):02d}-{day}",
                "city": rng.choice(CITIES),
                "address": f"{rng.choice(ROADS)}{rng.randint(1, 999)}号",
            }
        )
    return people


def legacy_of(person: dict[str, str], lid: str, variant: int) -> list[str]:
    """A member as the legacy CRM wrote them: a typo of one kind or another, no identifier."""
    surname, given = person["name"][0], person["name"][1:]
    birthday, address = person["birthday"], person["address"]
    if variant == 1:  # two digits of the day swapped
        birthday = birthday[:-2] + birthday[-1] + birthday[-2]
    elif variant == 2:  # the address abbreviated
        address = address.removesuffix("号")
    elif variant == 3:  # the name in pinyin
        surname, given = SURNAMES[surname], GIVEN[given]
    return [lid, surname, given, birthday, person["city"], address, ""]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def cdp(project: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(project / "cdp.yaml"), *args], catch_exceptions=False
    )


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def one_ids(project: Path, source: str) -> dict[str, str | None]:
    return dict(
        query(project / "cdp.db", "SELECT key, one_id FROM id_mapping WHERE source = ?", source)
    )


MATCHED = 60  # legacy L0..L59 are members M00000..M00059
GUARDED = "M00070"  # legacy G1 carries another member number: no probable link may join them
REVIEWED = "M00080"  # legacy R1: no birthday, the address abbreviated: a pair for review


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("match")
    (project / "cdp.yaml").write_text(textwrap.dedent(CONFIG).lstrip())
    people = members()
    write_csv(project / "crm.csv", list(people[0]), [list(p.values()) for p in people])
    rows = [legacy_of(people[i], f"L{i}", i % 4) for i in range(MATCHED)]
    rows += [
        [f"N{i}", "欧阳", f"新{i}", f"1980-01-0{i}", "上海", f"新路{i}号", ""] for i in range(8)
    ]
    guarded = legacy_of(people[70], "G1", 0)
    guarded[-1] = "X00070"
    reviewed = legacy_of(people[80], "R1", 2)
    reviewed[3] = ""
    write_csv(project / "legacy.csv", LEGACY_HEADER, [*rows, guarded, reviewed])
    ok(cdp(project, "ingest", "--source", "crm", str(project / "crm.csv")))
    ok(cdp(project, "ingest", "--source", "legacy_crm", str(project / "legacy.csv")))
    ok(cdp(project, "resolve"))
    return project


@pytest.fixture
def project(base: Path, tmp_path: Path) -> Path:
    """A copy of the resolved project, for a test that changes it."""
    copy = tmp_path / "project"
    shutil.copytree(base, copy)
    return copy


def test_people_who_share_no_identifier_are_linked_with_no_false_link(base):
    crm, legacy = one_ids(base, "crm"), one_ids(base, "legacy_crm")
    linked = {lid for lid, one_id in legacy.items() if one_id in set(crm.values())}
    right = {f"L{i}" for i in range(MATCHED) if legacy[f"L{i}"] == crm[f"M{i:05d}"]}
    assert linked == right  # every probable link found is a true one
    assert len(right) >= MATCHED * 0.9  # typos, swapped digits, pinyin: most are found
    # Someone the CRM does not know is a customer by themselves.
    assert len({legacy[f"N{i}"] for i in range(8)}) == 8 and None not in legacy.values()


def test_a_probable_link_never_breaks_a_guard(base):
    crm, legacy = one_ids(base, "crm"), one_ids(base, "legacy_crm")
    assert legacy["G1"] != crm[GUARDED]
    refused = query(
        base / "cdp.db", "SELECT reason FROM match_links WHERE status = 'refused' AND reason "
        "LIKE 'a customer holds at most 1 member_no'",
    )  # fmt: skip
    assert len(refused) == 1


def test_explain_shows_the_agreeing_fields_and_each_weight(base):
    one_id = one_ids(base, "legacy_crm")["L0"]
    report = json.loads(ok(cdp(base, "resolve", "--explain", one_id, "--json")).stdout)
    (link,) = report["probable_links"]
    assert {link["record_a"]["key"], link["record_b"]["key"]} == {"L0", "M00000"}
    assert link["decided_by"] == "model" and link["status"] == "linked"
    assert link["probability"] >= 0.95
    assert list(link["fields"]) == ["name", "birthday", "city", "address"]
    assert all(v["level"] == "exact" and v["weight"] > 0 for v in link["fields"].values())
    text = ok(cdp(base, "resolve", "--explain", one_id)).stdout
    assert "Probable links" in text and "birthday exact +" in text


def test_explain_shows_the_level_a_typo_reached(base):
    one_id = one_ids(base, "legacy_crm")["L1"]  # variant 1: two digits of the day swapped
    report = json.loads(ok(cdp(base, "resolve", "--explain", one_id, "--json")).stdout)
    (link,) = report["probable_links"]
    assert link["fields"]["birthday"]["level"] == "one edit (a typo, two digits swapped)"


def test_profile_says_which_links_are_probable(base):
    one_id = one_ids(base, "legacy_crm")["L3"]  # variant 3: the name in pinyin
    view = json.loads(ok(cdp(base, "profile", one_id, "--json")).stdout)
    (link,) = view["probable_links"]
    assert link["decided_by"] == "model" and "name" in link["agreeing"]
    assert "Probable links" in ok(cdp(base, "profile", one_id)).stdout
    certain = one_ids(base, "crm")["M00200"]
    assert json.loads(ok(cdp(base, "profile", certain, "--json")).stdout)["probable_links"] == []


def review_pair(project: Path) -> dict:
    pairs = json.loads(ok(cdp(project, "resolve", "--review", "--json")).stdout)
    keys = dict(query(project / "cdp.db", "SELECT key, identity_key FROM customers"))
    wanted = {keys["R1"], keys[REVIEWED]}
    (pair,) = [p for p in pairs if {p["key_a"], p["key_b"]} == wanted]
    return pair


def test_the_review_queue_lists_pairs_masked_with_the_agreeing_fields(base):
    pair = review_pair(base)
    assert 0.5 <= pair["probability"] < 0.95
    assert "name" in pair["agreeing"] and "birthday" not in pair["agreeing"]
    person = next(p for p in members() if p["member_no"] == REVIEWED)
    shown = json.dumps(pair, ensure_ascii=False)
    assert person["name"] not in shown and person["address"] not in shown
    unmasked = ok(cdp(base, "resolve", "--review", "--json", "--unmask")).stdout
    assert person["name"] in unmasked
    assert "Pairs to review" in ok(cdp(base, "resolve", "--review")).stdout
    crm, legacy = one_ids(base, "crm"), one_ids(base, "legacy_crm")
    assert legacy["R1"] != crm[REVIEWED]  # waiting: not linked


def test_an_accepted_pair_is_joined_by_every_later_run(project):
    pair = review_pair(project)
    out = ok(cdp(project, "resolve", "--accept", str(pair["pair"]))).stderr
    assert "accepted" in out
    ok(cdp(project, "resolve"))
    assert one_ids(project, "legacy_crm")["R1"] == one_ids(project, "crm")[REVIEWED]
    report = json.loads(
        ok(cdp(project, "resolve", "--explain", one_ids(project, "crm")[REVIEWED], "--json")).stdout
    )
    assert [link["decided_by"] for link in report["probable_links"]] == ["person"]
    ok(cdp(project, "resolve", "--full"))
    assert one_ids(project, "legacy_crm")["R1"] == one_ids(project, "crm")[REVIEWED]
    assert review_pairs_of(project, "R1") == []


def review_pairs_of(project: Path, key: str) -> list:
    identity_key = query(
        project / "cdp.db", "SELECT identity_key FROM customers WHERE key = ?", key
    )
    pairs = json.loads(ok(cdp(project, "resolve", "--review", "--json")).stdout)
    return [p for p in pairs if identity_key[0][0] in (p["key_a"], p["key_b"])]


def test_a_rejected_pair_is_a_permanent_cannot_link(project):
    before = one_ids(project, "crm")["M00004"]
    assert one_ids(project, "legacy_crm")["L4"] == before
    keys = dict(query(project / "cdp.db", "SELECT key, identity_key FROM customers"))
    ok(cdp(project, "resolve", "--reject", f"{keys['L4']}:{keys['M00004']}"))
    ok(cdp(project, "resolve"))
    assert one_ids(project, "legacy_crm")["L4"] != before
    assert one_ids(project, "crm")["M00004"] == before  # the member keeps the one_id
    ok(cdp(project, "resolve", "--full"))
    assert one_ids(project, "legacy_crm")["L4"] != one_ids(project, "crm")["M00004"] == before


def test_a_full_run_keeps_every_one_id(project):
    crm, legacy = one_ids(project, "crm"), one_ids(project, "legacy_crm")
    ok(cdp(project, "resolve", "--full"))
    assert (one_ids(project, "crm"), one_ids(project, "legacy_crm")) == (crm, legacy)


def test_a_new_batch_is_matched_against_existing_customers(project, tmp_path):
    people = members()
    write_csv(
        project / "legacy2.csv",
        LEGACY_HEADER,
        [legacy_of(people[i], f"L{i}", 1 + i % 3) for i in range(100, 110)]
        + [["N99", "欧阳", "新新", "1981-02-03", "北京", "新路99号", ""]]
        + [[*legacy_of(people[90], "R2", 2)[:3], "", *legacy_of(people[90], "R2", 2)[4:]]],
    )
    crm_before = one_ids(project, "crm")
    ok(cdp(project, "ingest", "--source", "legacy_crm", str(project / "legacy2.csv")))
    result = json.loads(ok(cdp(project, "resolve", "--json")).stdout)
    assert result["mode"] == "incremental"
    assert result["matching"]["probable_links"] >= 9
    legacy = one_ids(project, "legacy_crm")
    assert sum(legacy[f"L{i}"] == crm_before[f"M{i:05d}"] for i in range(100, 110)) >= 9
    assert one_ids(project, "crm") == crm_before  # existing customers keep their one_ids
    # A pair an incremental run finds below the threshold waits for review, as in a full run.
    assert len(review_pairs_of(project, "R2")) == 1
    # A full run decides as the incremental one did.
    full = tmp_path / "full"
    shutil.copytree(project, full)
    ok(cdp(full, "resolve", "--full"))
    assert one_ids(full, "legacy_crm") == legacy


def test_a_record_a_full_run_erases_leaves_no_pair_behind(project):
    """A full run scores before it erases the rows that carry a forgotten identifier (rows an
    unscreened library ingest let in): their pairs go with them, none waits for review."""
    ok(cdp(project, "forget", "--phone", "13900000081", "--yes"))  # member M00081
    came_back = legacy_of(members()[80], "F1", 2)  # R1 again: a pair for review with R1
    came_back[3], came_back[-1] = "", "M00081"
    write_csv(project / "back.csv", LEGACY_HEADER, [came_back])
    config = load_config(project / "cdp.yaml")
    db = open_store(config.store)
    try:
        ingest_file(db, config.source("legacy_crm"), project / "back.csv")
    finally:
        db.close()
    (key,) = query(project / "cdp.db", "SELECT identity_key FROM customers WHERE key = 'F1'")[0]
    resolved = json.loads(ok(cdp(project, "resolve", "--full", "--json")).stdout)
    assert any("forgotten person: erased" in n for n in resolved["notes"])
    assert len(review_pairs_of(project, "R1")) == 1  # R1 still waits, with M00080 only
    for table in ("match_reviews", "match_links"):
        sql = f"SELECT count(*) FROM {table} WHERE ? IN (key_a, key_b)"
        assert query(project / "cdp.db", sql, key) == [(0,)], table


def test_without_the_extra_resolve_says_how_to_install_it(base, tmp_path):
    hide = (
        "import sys; sys.modules['splink'] = None; from cdp_cli.cli import cli; "
        "cli(prog_name='cdp')"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", hide, "--config", str(base / "cdp.yaml"), "resolve", "--full"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: identity.match in cdp.yaml needs probabilistic matching, which is not "
        "installed (splink is missing): pip install 'cdp[match]'"
    ]
    # Deterministic resolve needs none of it.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "cdp.yaml").write_text(
        "sources:\n  crm:\n    kind: customers\n    key: member_no\n"
        "    fields: {member_no: member_no, name: name, phone: phone}\n"
    )
    shutil.copy(base / "crm.csv", plain / "crm.csv")
    for args in (["ingest", "--source", "crm", str(plain / "crm.csv")], ["resolve"]):
        done = subprocess.run(
            [sys.executable, "-c", hide, "--config", str(plain / "cdp.yaml"), *args],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("threshold: 0.95", "threshold: 0"),
            "cdp.yaml:17: identity.match.threshold: expected a probability above 0 and at "
            "most 1 (got 0)",
        ),
        (
            ("threshold: 0.95", "threshold: 1.5"),
            "cdp.yaml:17: identity.match.threshold: expected a probability above 0 and at "
            "most 1 (got 1.5)",
        ),
        (
            ("fields: [name, birthday, city, address]", "fields: [name, province, address]"),
            "cdp.yaml:15: identity.match.fields: no source maps a field 'province' (did you mean 'phone'?)",
        ),
        (
            ("review_threshold: 0.5", "review_threshold: 0.5\n    blocking: [[name], []]"),
            "cdp.yaml:19: identity.match.blocking: rule 2 names no field, so it would compare "
            "every record with every other",
        ),
    ],
)
def test_bad_match_settings_name_the_line(tmp_path, change, message):
    (tmp_path / "cdp.yaml").write_text(textwrap.dedent(CONFIG).lstrip().replace(*change))
    result = cdp(tmp_path, "status")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {tmp_path / 'cdp.yaml'}:{message.split(':', 1)[1]}"


def test_blocking_that_compares_nearly_everything_is_refused_with_the_count(project):
    config = (project / "cdp.yaml").read_text()
    (project / "cdp.yaml").write_text(
        config.replace(
            "review_threshold: 0.5",
            "review_threshold: 0.5\n    blocking: [[city]]\n    max_comparisons: 1000",
        )
    )
    result = cdp(project, "resolve")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    # 370 records in 6 cities: some 11,000 pairs, more than the 1,000 allowed here.
    assert line == (
        f"Error: {project / 'cdp.yaml'}:19: identity.match.blocking: rule 1 (city) would make "
        "11,356 comparisons of 370 records, more than max_comparisons (1,000): block on more "
        "fields"
    )


def test_rows_ingested_before_matching_was_declared_are_named(tmp_path):
    before = textwrap.dedent(CONFIG).lstrip().split("identity:")[0]
    (tmp_path / "cdp.yaml").write_text(before.replace(", address: 地址", "").replace(
        ",\n             address: address", ""))  # fmt: skip
    write_csv(tmp_path / "legacy.csv", LEGACY_HEADER, [legacy_of(members()[0], "L0", 0)])
    ok(cdp(tmp_path, "ingest", "--source", "legacy_crm", str(tmp_path / "legacy.csv")))
    (tmp_path / "cdp.yaml").write_text(textwrap.dedent(CONFIG).lstrip())
    result = json.loads(ok(cdp(tmp_path, "resolve", "--json")).stdout)
    assert result["notes"] == [
        "1 rows of legacy_crm were ingested before identity.match named it: ingest them again "
        "with --force (cdp ingest --source legacy_crm --force) so that matching compares them"
    ]


# ---------------------------------------------------------------------------------------------
# cdp demo's matching stage, on the project `cdp init` makes


def init_with_members(folder: Path) -> tuple[Any, Any]:
    from cdp_cli.config import load_config
    from cdp_cli.ingest import ingest
    from cdp_cli.scaffold import init_project
    from cdp_cli.store import open_store

    init_project(folder)
    config = load_config(folder / "cdp.yaml")
    db = open_store(config.store)
    ingest(db, config, "crm_members")
    return db, config


def test_the_demo_shows_a_probable_link_and_a_review_decision(tmp_path):
    from cdp_cli.demo import match_stage
    from cdp_cli.identity.resolve import resolve

    db, config = init_with_members(tmp_path)
    resolve(db, config)
    shown, config = match_stage(tmp_path, db, config)
    db.close()
    assert config.identity.match is not None  # cdp.yaml's #match lines are on now
    link = shown["link"]
    assert link["status"] == "linked" and link["probability"] >= 0.95
    # The sample's legacy keys name the member each one is (L02-M0100535): a true link.
    member, legacy = sorted((link["record_a"], link["record_b"]), key=lambda r: r["source"])
    assert member["source"] == "crm_members" and legacy["key"].endswith(member["key"])
    assert shown["decision"]["decision"] == "accepted"
    assert shown["after"].matching["probable_links"] == 1
    assert "王" not in json.dumps(shown["review"], ensure_ascii=False).replace("王*", "")


def test_the_demo_skips_matching_in_one_line_without_the_extra(tmp_path):
    db, _ = init_with_members(tmp_path)
    db.close()
    before = (tmp_path / "cdp.yaml").read_text(encoding="utf-8")
    script = (
        "import sys; sys.modules['splink'] = None\n"
        "from pathlib import Path\n"
        "from cdp_cli.config import load_config\n"
        "from cdp_cli.demo import match_stage\n"
        "from cdp_cli.store import open_store\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "config = load_config(folder / 'cdp.yaml')\n"
        "print(match_stage(folder, open_store(config.store), config)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == (
        "{'skipped': \"matching skipped: it is not installed (pip install 'cdp[match]')\"}"
    )
    assert (tmp_path / "cdp.yaml").read_text(encoding="utf-8") == before
