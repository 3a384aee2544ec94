"""People with no shared identifier: a legacy CRM export and its truth, for probabilistic
matching (issue 16).

A legacy CRM kept names, birthdays, cities and addresses, and no member number, phone or
email that any other export shares. Most of its people are members of the new CRM, written
the way such exports write them: a typo in the name, two digits of the birthday swapped, the
address abbreviated, a nickname for the given name, the name in pinyin instead of
characters. Some appear twice in it; some are nobody else's. `legacy_truth.csv` says who is
who (source, key, person_id), in truth.csv's format.

Kept apart from generate.py (its outputs stay as they are): it reads what generate.py wrote
(crm_members.csv and truth.csv) or makes a synthetic population of its own at any size.

    python benchmarks/legacy_crm.py --out OUT            # from OUT/crm_members.csv
    python benchmarks/legacy_crm.py --out OUT --synthetic 700000 --legacy 300000
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pypinyin import lazy_pinyin

LEGACY_HEADER = ["客户编号", "姓", "名", "生日", "城市", "地址"]
MEMBER_HEADER = ["会员编号", "姓名", "手机号", "生日", "城市"]
TRUTH_HEADER = ["source", "key", "person_id"]
SOURCE = "legacy_crm"

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡"
    "余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯"
    "龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀英霞平刚桂兰华建国玉梅红斌鹏飞宇浩然欣怡子涵梓"
    "萱思远嘉豪晨曦雨婷俊杰文博雪晓东海燕志强丹婷"
)
CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "重庆"]
ROADS = ["南京西路", "淮海中路", "人民路", "解放路", "中山路", "延安路", "建设路", "长江路"]
# Characters a clerk types for another (the same sound, a similar shape).
TYPOS = {"伟": "玮", "芳": "方", "娜": "那", "敏": "明", "静": "靜", "丽": "莉", "强": "墙",
         "磊": "垒", "军": "君", "杰": "洁", "涛": "滔", "明": "铭", "华": "桦", "斌": "彬",
         "鹏": "朋", "飞": "菲", "宇": "雨", "浩": "皓", "婷": "亭", "燕": "艳", "红": "虹",
         "梅": "玫", "晨": "辰", "博": "波", "东": "冬"}  # fmt: skip
# How an address is shortened.
SHORT = {"西路": "西", "中路": "中", "号": "-", "弄": "", "室": ""}


@dataclass
class Member:
    """A member as the new CRM knows them, and who they are."""

    key: str
    name: str
    birthday: str  # YYYY-MM-DD or ""
    city: str
    person_id: str
    address: str = ""


def address_of(rng: random.Random) -> str:
    return f"{rng.choice(ROADS)}{rng.randint(1, 2000)}号{rng.randint(1, 30)}{rng.choice('弄室')}"


def swapped_digits(birthday: str, rng: random.Random) -> str:
    """Two adjacent digits of the month or the day swapped, when that is still a date."""
    digits = list(birthday.replace("-", ""))
    for at in rng.sample([4, 6], 2):
        digits[at], digits[at + 1] = digits[at + 1], digits[at]
        text = "".join(digits)
        try:
            date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            digits[at], digits[at + 1] = digits[at + 1], digits[at]
            continue
        if text != birthday.replace("-", ""):
            return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return birthday


def written(member: Member, rng: random.Random) -> tuple[str, str, str, str]:
    """(surname, given name, birthday, address) as the legacy CRM wrote this member: one or
    two of the ways a record drifts, chosen at random."""
    surname, given = member.name[:1], member.name[1:]
    birthday, address = member.birthday, member.address
    for drift in rng.sample(["typo", "swap", "short", "nickname", "pinyin", "none"], 2):
        if drift == "typo" and any(c in TYPOS for c in given):
            given = "".join(TYPOS.get(c, c) for c in given)
        elif drift == "swap" and birthday:
            birthday = swapped_digits(birthday, rng)
        elif drift == "short":
            for long, short in SHORT.items():
                address = address.replace(long, short)
        elif drift == "nickname" and given:
            given = "小" + given[-1]
        elif drift == "pinyin" and member.name.isascii() is False:
            surname = "".join(lazy_pinyin(surname)).capitalize()
            given = "".join(lazy_pinyin(given)).capitalize()
    return surname, given, birthday, address


def legacy_rows(
    members: list[Member], share: float, twice: float, strangers: int, seed: int
) -> tuple[list[list[str]], list[list[str]]]:
    """The legacy export's rows and truth rows: `share` of the members, a `twice` share of
    them written a second time, and `strangers` people no other export knows."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    truth: list[list[str]] = []
    chosen = [m for m in members if rng.random() < share]
    for member in chosen:
        for _ in range(2 if rng.random() < twice else 1):
            key = f"L{len(rows) + 1:08d}"
            surname, given, birthday, address = written(member, rng)
            rows.append([key, surname, given, birthday, member.city, address])
            truth.append([SOURCE, key, member.person_id])
    for n in range(strangers):
        key = f"L{len(rows) + 1:08d}"
        rows.append(
            [key, rng.choice(SURNAMES), rng.choice(GIVEN) + rng.choice(["", *GIVEN]),
             random_birthday(rng), rng.choice(CITIES), address_of(rng)]
        )  # fmt: skip
        truth.append([SOURCE, key, f"S{n + 1:08d}"])
    order = list(range(len(rows)))
    rng.shuffle(order)  # an export in no useful order
    keys = [rows[i][0] for i in range(len(rows))]
    rows = [[keys[new], *rows[old][1:]] for new, old in enumerate(order)]
    truth = [[SOURCE, keys[new], truth[old][2]] for new, old in enumerate(order)]
    return rows, truth


def iso_date(text: str) -> str:
    """YYYY-MM-DD of a birthday as the CRM export writes it (1990-05-12, 19900512, 1990/5/12);
    "" when it is none."""
    parts = text.replace("/", "-").split("-")
    if len(parts) == 1 and len(text) == 8 and text.isdigit():
        parts = [text[:4], text[4:6], text[6:]]
    try:
        return date(*map(int, parts)).isoformat() if len(parts) == 3 else ""
    except ValueError:
        return ""


def random_birthday(rng: random.Random) -> str:
    return date.fromordinal(rng.randint(date(1955, 1, 1).toordinal(), 732000)).isoformat()


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def members_of_export(out: Path, seed: int) -> list[Member]:
    """The members generate.py wrote (crm_members.csv, with their persons from truth.csv),
    each given an address of their own (the new CRM keeps none)."""
    person = {}
    with (out / "truth.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] == "crm_members":
                person[row["key"]] = row["person_id"]
    rng = random.Random(seed)
    members = []
    with (out / "crm_members.csv").open(encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            key = row["会员编号"]
            if key in person and row["姓名"]:
                birthday = iso_date(row["生日"])
                city = row["城市"].removesuffix("市")
                members.append(Member(key, row["姓名"], birthday, city, person[key]))
    for member in members:
        member.address = address_of(rng)
    return members


def synthetic_members(count: int, seed: int) -> list[Member]:
    rng = random.Random(seed)
    return [
        Member(
            f"M{i:08d}",
            rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(["", *GIVEN]),
            random_birthday(rng),
            rng.choice(CITIES),
            f"P{i:08d}",
            address_of(rng),
        )
        for i in range(count)
    ]


def write_synthetic(
    out: Path, members: int, legacy: int, seed: int = 16, batch_share: float = 0.0
) -> dict[str, int]:
    """members.csv (the new CRM: member number, name, phone, birthday, city), legacy_crm.csv
    with `legacy` rows, about 80% of them members written with drift, and truth.csv for
    both. With `batch_share`, that share of the legacy rows goes to legacy_crm_batch.csv
    instead, for an incremental run."""
    out.mkdir(parents=True, exist_ok=True)
    people = synthetic_members(members, seed)
    strangers = legacy // 5
    share = (legacy - strangers) / members / 1.1  # 10% of those chosen are written twice
    rows, truth = legacy_rows(people, share, 0.1, strangers, seed + 1)
    write_csv(
        out / "members.csv",
        MEMBER_HEADER,
        [[m.key, m.name, f"139{i:08d}", m.birthday, m.city] for i, m in enumerate(people)],
    )
    held = int(len(rows) * batch_share)
    write_csv(out / "legacy_crm.csv", LEGACY_HEADER, rows[held:])
    if held:
        write_csv(out / "legacy_crm_batch.csv", LEGACY_HEADER, rows[:held])
    write_csv(
        out / "truth.csv",
        TRUTH_HEADER,
        [["members", m.key, m.person_id] for m in people] + truth,
    )
    return {"members": len(people), "legacy": len(rows), "batch": held}


def write_from_export(out: Path, share: float = 0.3, strangers: int = 0, seed: int = 16) -> int:
    """legacy_crm.csv and legacy_truth.csv beside what generate.py wrote in `out`."""
    members = members_of_export(out, seed)
    rows, truth = legacy_rows(members, share, 0.1, strangers or len(members) // 20, seed + 1)
    write_csv(out / "legacy_crm.csv", LEGACY_HEADER, rows)
    write_csv(out / "legacy_truth.csv", TRUTH_HEADER, truth)
    return len(rows)


def write_sample(sample: Path) -> int:
    """sample_data/legacy_crm.csv: a few members of the sample CRM as a legacy CRM wrote them
    (each way a record drifts once), a person written twice, and two strangers; `cdp demo`
    matches them. Its truth is in the key: Lnn-Mxxxxxxx names the member, Snn nobody else."""
    members = members_of_export(sample, seed=16)
    rng = random.Random(16)
    chosen = rng.sample([m for m in members if m.birthday and m.city and not m.city.isascii()], 8)
    rows = []
    drifts = ["typo", "swap", "short", "nickname", "pinyin", "none", "swap", "typo"]
    for n, (member, drift) in enumerate(zip(chosen, drifts, strict=True), 1):
        surname, given, birthday, address = member.name[:1], member.name[1:], member.birthday, ""
        if drift == "typo":
            given = (
                "".join(TYPOS.get(c, c) for c in given)
                if any(c in TYPOS for c in given)
                else given[:-1] + "玮"
            )
        elif drift == "swap":
            birthday = swapped_digits(birthday, rng)
        elif drift == "nickname":
            given = "小" + given[-1]
        elif drift == "pinyin":
            surname = "".join(lazy_pinyin(surname)).capitalize()
            given = "".join(lazy_pinyin(given)).capitalize()
        rows.append([f"L{n:02d}-{member.key}", surname, given, birthday, member.city, address])
    # One more without a birthday: name and city alone make a pair for a person to review.
    last = chosen[0]
    rows.append([f"L09-{last.key}", last.name[:1], last.name[1:], "", last.city, ""])
    rows.append(["S01", "欧阳", "晓风", "1979-03-08", "上海", "长江路12号"])
    rows.append(["S02", "司马", "青", "1988-10-21", "杭州", "建设路88号3室"])
    write_csv(sample / "legacy_crm.csv", LEGACY_HEADER, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.3, help="of the members, from an export")
    parser.add_argument("--synthetic", type=int, default=0, help="members of a synthetic CRM")
    parser.add_argument("--legacy", type=int, default=0, help="legacy rows, with --synthetic")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--sample", action="store_true", help="sample_data/legacy_crm.csv")
    args = parser.parse_args(argv)
    if args.sample:
        print(write_sample(args.out), file=sys.stderr)
    elif args.synthetic:
        print(write_synthetic(args.out, args.synthetic, args.legacy, args.seed), file=sys.stderr)
    else:
        print(write_from_export(args.out, args.share, seed=args.seed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
