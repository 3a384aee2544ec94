"""benchmarks/generate.py: deterministic, well-formed, and the shipped sample never drifts."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "benchmarks" / "generate.py"
SAMPLE = REPO / "sample_data"
SAMPLE_ARGS = {"customers": 1500, "seed": 7, "edge_cases": True}

CSV_HEADERS = {
    "crm_members.csv": "会员编号,姓名,性别,手机号,邮箱,生日,城市,职位,注册时间,注册门店,会员等级,积分,微信UnionID",
    "crm_members_legacy_gbk.csv": (
        "会员编号,姓名,性别,手机号,邮箱,生日,城市,职位,注册时间,注册门店,会员等级,积分,微信UnionID"
    ),
    "pos_orders.csv": (
        "order_no,store_code,store_name,member_phone,paid_at,amount,item_count,main_category,"
        "payment_method,cashier_id"
    ),
    "wechat_followers.csv": (
        "appid,account_name,openid,unionid,nickname,subscribe_time,subscribe_scene,mobile"
    ),
    "coupons.csv": (
        "coupon_code,campaign,face_value,status,issued_at,redeemed_at,expires_at,member_no,phone"
    ),
    "optouts.csv": "phone,email,channel,opted_out_at,source",
    "truth.csv": "source,key,person_id",
}
ENCODINGS = {"crm_members.csv": "utf-8-sig", "crm_members_legacy_gbk.csv": "gbk"}
JSONL = ("shop_orders.jsonl", "app_events.jsonl")
GENERATED = (*CSV_HEADERS, *JSONL)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cdp_benchmarks_generate", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


gen = load_generator()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    gen.generate(out, customers=300, seed=11, edge_cases=True)
    return out


def read_csv(path: Path, errors: str = "strict") -> list[list[str]]:
    encoding = ENCODINGS.get(path.name, "utf-8")
    text = path.read_bytes().decode(encoding, errors=errors)
    return list(csv.reader(io.StringIO(text, newline="")))


def json_lines(path: Path) -> list[object]:
    """Every line that parses as JSON (the edge cases include some that do not)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def source_keys(out: Path) -> dict[str, set[str]]:
    """The natural keys each source file holds, as truth.csv spells them."""
    keys: dict[str, set[str]] = defaultdict(set)
    for stem in ("crm_members", "crm_members_legacy_gbk"):
        rows = read_csv(out / f"{stem}.csv", errors="replace")[1:]
        keys[stem] = {r[0] for r in rows if r}
    keys["pos_orders"] = {r[0] for r in read_csv(out / "pos_orders.csv")[1:]}
    keys["shop_orders"] = {
        o["order_id"] for o in json_lines(out / "shop_orders.jsonl") if isinstance(o, dict)
    }
    keys["app_events"] = {e["event_id"] for e in json_lines(out / "app_events.jsonl")}
    wechat = read_csv(out / "wechat_followers.csv")[1:]
    keys["wechat_followers"] = {f"{r[0]}:{r[2]}" for r in wechat}
    keys["coupons"] = {r[0] for r in read_csv(out / "coupons.csv")[1:]}
    keys["optouts"] = {r[0] or r[1] for r in read_csv(out / "optouts.csv")[1:]}
    return keys


def truth(out: Path) -> dict[tuple[str, str], str]:
    return {(s, k): p for s, k, p in read_csv(out / "truth.csv")[1:]}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small: Path) -> None:
    again = tmp_path / "again"
    gen.generate(again, customers=300, seed=11, edge_cases=True)
    for name in GENERATED:
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    other = tmp_path / "other"
    gen.generate(other, customers=300, seed=12, edge_cases=True)
    for name in ("crm_members.csv", "pos_orders.csv", "shop_orders.jsonl", "app_events.jsonl"):
        assert (other / name).read_bytes() != (small / name).read_bytes(), name


def test_every_file_has_its_exact_header(small: Path) -> None:
    for name, header in CSV_HEADERS.items():
        first = read_csv(small / name, errors="replace")[0]
        assert ",".join(first) == header, name
    order = json_lines(small / "shop_orders.jsonl")[0]
    assert isinstance(order, dict)
    assert {"order_id", "platform", "created", "payment", "status", "buyer", "items"} <= set(order)
    event = json_lines(small / "app_events.jsonl")[0]
    assert isinstance(event, dict)
    assert list(event) == [
        "event_id",
        "event",
        "ts",
        "device_id",
        "user_id",
        "platform",
        "properties",
    ]


def test_returned_counts_match_the_files(tmp_path: Path) -> None:
    counts = gen.generate(tmp_path, customers=120, events=900, seed=3)
    for name, n in counts.items():
        raw = (tmp_path / name).read_bytes()
        lines = raw.count(b"\n")
        assert lines - (0 if name.endswith(".jsonl") else 1) == n, name
    assert counts["app_events.jsonl"] == 900


def test_truth_keys_exist_in_their_sources(small: Path) -> None:
    keys = source_keys(small)
    rows = read_csv(small / "truth.csv")[1:]
    assert len(rows) == len({(s, k) for s, k, _ in rows}), "a (source, key) pair is repeated"
    for source, key, person in rows:
        assert key in keys[source], (source, key)
        assert re.fullmatch(r"P\d{7}", person)


def test_crm_members_is_an_excel_export(small: Path) -> None:
    raw = (small / "crm_members.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert not (small / "pos_orders.csv").read_bytes().count(b"\r")


def test_legacy_file_is_gbk_except_the_one_bad_line(small: Path, tmp_path: Path) -> None:
    raw = (small / "crm_members_legacy_gbk.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    bad = []
    for line in raw.split(b"\r\n"):
        try:
            line.decode("gbk")
        except UnicodeDecodeError:
            bad.append(line)
    assert len(bad) == 1 and b"\xff\xfe\xff" in bad[0]
    assert any("杨帆" in line.decode("gbk") for line in raw.split(b"\r\n") if line not in bad)
    gen.generate(tmp_path, customers=200, seed=5)
    (tmp_path / "crm_members_legacy_gbk.csv").read_bytes().decode("gbk")  # all of it


def test_row_counts_scale_with_customers(tmp_path: Path) -> None:
    small = gen.generate(tmp_path / "a", customers=400, seed=9)
    big = gen.generate(tmp_path / "b", customers=1600, seed=9)
    for name in ("crm_members.csv", "pos_orders.csv", "shop_orders.jsonl", "coupons.csv"):
        assert 3.0 < big[name] / small[name] < 5.0, name
    assert small["app_events.jsonl"] == 15 * 400
    assert big["app_events.jsonl"] == 15 * 1600


def test_phones_are_valid_cn_mobiles(small: Path) -> None:
    phonenumbers = pytest.importorskip("phonenumbers")
    plain = {r[3] for r in read_csv(small / "crm_members.csv")[1:] if len(r) > 3}
    plain = {p for p in plain if re.fullmatch(r"1\d{10}", p) and p not in {"13800000000"}}
    assert len(plain) > 100
    for phone in plain:
        assert phonenumbers.is_valid_number(phonenumbers.parse(phone, "CN")), phone


def test_app_events_are_sessions_with_member_logins(small: Path) -> None:
    events = json_lines(small / "app_events.jsonl")
    assert all(isinstance(e, dict) for e in events)
    kinds = Counter(e["event"] for e in events)
    assert kinds["app_open"] and kinds["login"] and kinds["register"] and kinds["order"]
    assert any(isinstance(e["ts"], str) for e in events)
    assert sum(isinstance(e["ts"], int) for e in events) > 0.7 * len(events)
    orders = {
        o["order_id"]: o for o in json_lines(small / "shop_orders.jsonl") if isinstance(o, dict)
    }
    for e in events:
        if e["event"] == "order":
            assert orders[e["properties"]["order_id"]]["platform"] == "own_shop"


def test_marketplace_orders_only_carry_masked_phones(small: Path) -> None:
    for order in json_lines(small / "shop_orders.jsonl"):
        if isinstance(order, dict) and order.get("platform") in ("tmall", "jd"):
            assert re.fullmatch(r"1\d\d\*{4}\d{4}", order["buyer"]["mobile"])
            assert not order["buyer"].get("email")


def test_hand_made_edge_cases(small: Path) -> None:
    t = truth(small)
    crm = {r[0]: r for r in read_csv(small / "crm_members.csv")[1:] if r}
    assert crm["M0000001"][3] == "+86 138 0013 8000"
    li_na = t[("crm_members", "M0000001")]
    assert t[("pos_orders", "WH001-20250412-9001")] == li_na
    assert t[("shop_orders", "SO2025030988000001")] == li_na
    masked = {t[("shop_orders", f"SO2025{d}880000{n:02d}")] for d, n in (("0520", 2), ("0701", 4))}
    assert len(masked) == 2  # two different people behind 138****0002
    events = [e for e in json_lines(small / "app_events.jsonl") if isinstance(e, dict)]
    tablet = [e for e in events if e["device_id"] == "TABLET-WH001-POS" and e["user_id"]]
    people = {t[("app_events", e["event_id"])] for e in tablet}
    assert len({e["user_id"] for e in tablet}) >= 12 and len(people) >= 12
    anon = [e for e in events if e["device_id"] == "A1B2C3D4-0000-4000-8000-00000000A0A0"]
    assert sum(e["user_id"] is None for e in anon) >= 30
    register = [e for e in anon if e["event"] == "register"]
    assert register[0]["user_id"] == "M0009001"
    assert register[0]["properties"]["phone"] == crm["M0009001"][3] == "13912345678"
    assert {t[("app_events", e["event_id"])] for e in anon} == {t[("crm_members", "M0009001")]}
    zero = [e for e in events if e["device_id"] == "00000000-0000-0000-0000-000000000000"]
    assert zero and zero[0]["user_id"] == "null"
    assert ("app_events", zero[0]["event_id"]) not in t
    family = [m for m, r in crm.items() if r[4] == "family.wang@163.com"]
    assert len({t[("crm_members", m)] for m in family}) == 2
    assert t[("crm_members_legacy_gbk", "M0000026")] == t[("crm_members", "M0000026")]
    titles = Counter(r[7] for r in crm.values() if len(r) > 7)
    assert titles["首席营销官"] >= 3 and titles["CMO"] >= 3
    lines = (small / "crm_members.csv").read_bytes().split(b"\r\n")
    assert lines.count(b"") >= 3  # two blank lines and the end of the file
    assert b",,,,,,,,,,,," in lines
    pos = (small / "pos_orders.csv").read_text(encoding="utf-8").splitlines()
    assert len(pos) - len(set(pos)) == 1
    coupons = Counter((r[1], r[3]) for r in read_csv(small / "coupons.csv")[1:])
    assert coupons[("WINBACK20", "available")] >= 60


def test_sample_data_matches_its_generator(tmp_path: Path) -> None:
    """sample_data/ is exactly `generate.py --customers 1500 --seed 7 --edge-cases`."""
    gen.generate(tmp_path, **SAMPLE_ARGS)
    for name in GENERATED:
        committed = SAMPLE / name
        assert committed.exists(), f"{committed} is missing"
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), (
            f"sample_data/{name} drifted from benchmarks/generate.py: regenerate it with "
            "python benchmarks/generate.py --out sample_data --customers 1500 --seed 7 --edge-cases"
        )
    counts = Counter((r[1], r[3]) for r in read_csv(SAMPLE / "coupons.csv")[1:])
    assert counts[("WINBACK20", "available")] >= 300
    assert counts[("BIRTHDAY50", "available")] >= 200
    assert counts[("WELCOME10", "available")] >= 200
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 10_000_000
