"""Deterministic generator of one fictional cosmetics brand's customer-data exports.

The brand sells skincare, makeup, fragrance, personal care and gift sets in 12 stores
(Wuhan, Beijing, Shanghai, Guangzhou, Chengdu), on its own web shop / app, on Tmall and JD
and in a WeChat mini program. This script invents its customers and writes the raw exports
a Customer Data Platform would have to ingest, plus ``truth.csv`` saying who is who.

Data model
----------
* A **person** (true id ``P0000001`` ...) has a Chinese name, gender, birthday, home city, maybe
  a job title, one CN mobile (unique per person; a few members also had an *old* phone), maybe
  an email (unique per person), maybe a CRM membership (``M`` + 7 digits), maybe app devices
  (uuid4-like ids), maybe a WeChat unionid and one openid per official account followed.
* Each person gets a **purchase rhythm** (loyal, regular, one-off, lapsed) over the two years
  before ``--end-date``; each purchase happens in a store (``pos_orders.csv``) or online
  (``shop_orders.jsonl``: own_shop, tmall, jd, mini_program).
* **App users** produce sessions of events (``app_events.jsonl``); members log in (or register)
  at some point, after which events carry their member number. Own-shop orders placed in the
  app also appear as ``order`` events.
* **Coupons**: WELCOME10 at registration, BIRTHDAY50 in the birthday month, WINBACK20 after six
  months without a purchase; some are redeemed (in an order). Unassigned pool codes are
  ``available``.
* **Opt-outs** for about 3% of people, **WeChat followers** for about 45%.
* Every source record that belongs to an identifiable person gets one row in ``truth.csv``
  (``source,key,person_id``). Walk-in sales without a phone, pool coupons, rejects and the
  hand-made junk records (placeholder phone / zero device) have none.

Messiness is deliberate: phones, emails, birthdays, cities, job titles and timestamps are
written in several ways, exactly like real exports. ``--edge-cases`` adds ~30 hand-written
people and junk rows (see ``sample_data/README.md``).

Output is streamed: people are generated in blocks, each block's rows are sorted by time
(so a file is globally time-sorted only when it holds a single block, as the sample does) and
written, so memory stays flat whatever the size. Only the standard library is used, and a
given ``--seed`` always produces byte-identical files.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import io
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Files and headers
# --------------------------------------------------------------------------------------------

CRM_HEADER = [
    "会员编号",
    "姓名",
    "性别",
    "手机号",
    "邮箱",
    "生日",
    "城市",
    "职位",
    "注册时间",
    "注册门店",
    "会员等级",
    "积分",
    "微信UnionID",
]
POS_HEADER = [
    "order_no",
    "store_code",
    "store_name",
    "member_phone",
    "paid_at",
    "amount",
    "item_count",
    "main_category",
    "payment_method",
    "cashier_id",
]
WECHAT_HEADER = [
    "appid",
    "account_name",
    "openid",
    "unionid",
    "nickname",
    "subscribe_time",
    "subscribe_scene",
    "mobile",
]
COUPON_HEADER = [
    "coupon_code",
    "campaign",
    "face_value",
    "status",
    "issued_at",
    "redeemed_at",
    "expires_at",
    "member_no",
    "phone",
]
OPTOUT_HEADER = ["phone", "email", "channel", "opted_out_at", "source"]
TRUTH_HEADER = ["source", "key", "person_id"]

FILES: dict[str, str] = {
    "crm_members": "crm_members.csv",
    "crm_members_legacy_gbk": "crm_members_legacy_gbk.csv",
    "pos_orders": "pos_orders.csv",
    "shop_orders": "shop_orders.jsonl",
    "app_events": "app_events.jsonl",
    "wechat_followers": "wechat_followers.csv",
    "coupons": "coupons.csv",
    "optouts": "optouts.csv",
}
HEADERS: dict[str, list[str]] = {
    "crm_members": CRM_HEADER,
    "crm_members_legacy_gbk": CRM_HEADER,
    "pos_orders": POS_HEADER,
    "wechat_followers": WECHAT_HEADER,
    "coupons": COUPON_HEADER,
    "optouts": OPTOUT_HEADER,
}
JSONL_SOURCES = ("shop_orders", "app_events")
BAD_GBK_MARK = "\x00BADGBK\x00"  # replaced by raw b"\xff\xfe\xff" when the legacy row is encoded

# --------------------------------------------------------------------------------------------
# Time helpers: times are "local seconds" (China time, UTC+8, as if it were UTC)
# --------------------------------------------------------------------------------------------

DAY = 86_400
TZ_SECONDS = 8 * 3600
TZ_MS = TZ_SECONDS * 1000
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
WINDOW_DAYS = 730


def day_number(d: date) -> int:
    """Days since 1970-01-01."""
    return d.toordinal() - EPOCH_ORDINAL


@cache
def day_iso(day: int) -> str:
    return date.fromordinal(EPOCH_ORDINAL + day).isoformat()


@cache
def day_compact(day: int) -> str:
    return day_iso(day).replace("-", "")


HMS = tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(DAY))


def hms(sec: int) -> str:
    return HMS[sec]


def local_str(t: int) -> str:
    """``2025-06-01 14:03:22``."""
    return f"{day_iso(t // DAY)} {HMS[t % DAY]}"


def local_iso(t: int) -> str:
    """``2025-06-01T14:03:22+08:00``."""
    return f"{day_iso(t // DAY)}T{HMS[t % DAY]}+08:00"


def local_iso_ms(ms: int) -> str:
    """``2025-06-01T14:03:22.123+08:00`` from local milliseconds."""
    t, frac = divmod(ms, 1000)
    return f"{day_iso(t // DAY)}T{HMS[t % DAY]}.{frac:03d}+08:00"


def to_date(t: int) -> date:
    return date.fromordinal(EPOCH_ORDINAL + t // DAY)


def at(text: str) -> int:
    """Local seconds from ``YYYY-MM-DD HH:MM:SS`` (hand-made edge cases)."""
    d, clock = text.split(" ")
    h, m, s = (int(x) for x in clock.split(":"))
    return day_number(date.fromisoformat(d)) * DAY + h * 3600 + m * 60 + s


# --------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------


def expand(pairs: tuple[tuple[Any, int], ...]) -> tuple[Any, ...]:
    """A lookup table where each value appears ``weight`` times (O(1) weighted picks)."""
    return tuple(value for value, weight in pairs for _ in range(weight))


def split_fields(text: str) -> tuple[tuple[str, ...], ...]:
    """``"王:wang:71 李:li:71"`` -> ``(("王", "wang", "71"), ("李", "li", "71"))``."""
    return tuple(tuple(word.split(":")) for word in text.split())


SURNAMES = expand(
    tuple(
        ((sur, py), int(weight))
        for sur, py, weight in split_fields(
            "王:wang:71 李:li:71 张:zhang:68 刘:liu:54 陈:chen:46 杨:yang:31 黄:huang:25 "
            "赵:zhao:23 吴:wu:20 周:zhou:19 徐:xu:13 孙:sun:13 马:ma:12 朱:zhu:12 胡:hu:11 "
            "郭:guo:11 何:he:10 林:lin:10 高:gao:10 罗:luo:9 郑:zheng:8 梁:liang:8 谢:xie:7 "
            "宋:song:7 唐:tang:7 许:xu:6 韩:han:6 冯:feng:6 邓:deng:6 曹:cao:6 彭:peng:5 "
            "曾:zeng:5 肖:xiao:5 田:tian:5 董:dong:5 袁:yuan:5 潘:pan:4 于:yu:4 蒋:jiang:4 "
            "蔡:cai:4 余:yu:4 杜:du:4 叶:ye:4 程:cheng:4 苏:su:4 魏:wei:4 吕:lv:4 丁:ding:3 "
            "任:ren:3 沈:shen:3 姚:yao:3 卢:lu:3 姜:jiang:3 崔:cui:3 钟:zhong:3 谭:tan:3 "
            "陆:lu:3 汪:wang:3 范:fan:3 金:jin:3 石:shi:3 廖:liao:3 贾:jia:3 夏:xia:3 韦:wei:2 "
            "方:fang:2 白:bai:2 邹:zou:2 孟:meng:2 熊:xiong:2 秦:qin:2 邱:qiu:2 江:jiang:2 "
            "尹:yin:2 薛:xue:2 段:duan:2 雷:lei:2 侯:hou:2 龙:long:2 史:shi:2 陶:tao:2 黎:li:2 "
            "贺:he:2 顾:gu:2 毛:mao:2 郝:hao:2 龚:gong:2 邵:shao:2 万:wan:2 钱:qian:2 严:yan:2 "
            "武:wu:2 戴:dai:2 莫:mo:1 孔:kong:1 向:xiang:1 汤:tang:1 欧阳:ouyang:1 "
            "上官:shangguan:1 司马:sima:1"
        )
    )
)
FEMALE_GIVEN = split_fields(
    "娜:na 静:jing 丽:li 敏:min 燕:yan 艳:yan 芳:fang 婷:ting 雪:xue 琳:lin 洁:jie 颖:ying "
    "倩:qian 慧:hui 玲:ling 欣:xin 怡:yi 佳:jia 璐:lu 悦:yue 晨:chen 萱:xuan 涵:han 梦:meng "
    "瑶:yao 雯:wen 婧:jing 露:lu 薇:wei 蕾:lei 菲:fei 岚:lan 莹:ying 琪:qi 晓:xiao 思:si 雅:ya "
    "诗:shi 梓:zi 子:zi 紫:zi 嘉:jia 月:yue 春:chun 秀:xiu 美:mei 红:hong 霞:xia 丹:dan 玉:yu "
    "萍:ping 桂:gui 英:ying 华:hua 可:ke 心:xin 语:yu 彤:tong 馨:xin 蓉:rong"
)
MALE_GIVEN = split_fields(
    "伟:wei 强:qiang 磊:lei 军:jun 洋:yang 勇:yong 杰:jie 涛:tao 明:ming 超:chao 刚:gang "
    "平:ping 辉:hui 鹏:peng 华:hua 飞:fei 鑫:xin 波:bo 斌:bin 宇:yu 浩:hao 凯:kai 健:jian "
    "俊:jun 帆:fan 帅:shuai 旭:xu 宁:ning 龙:long 林:lin 峰:feng 建:jian 国:guo 志:zhi 文:wen "
    "博:bo 晨:chen 阳:yang 然:ran 轩:xuan 子:zi 睿:rui 泽:ze 哲:zhe 昊:hao 晗:han"
)

# (canonical city, province, ways it is written (canonical first), weight)
CITIES: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("武汉", "湖北", ("武汉", "武汉市", "Wuhan", "wuhan"), 22),
    ("北京", "北京", ("北京", "北京市", "Beijing", "beijing"), 16),
    ("上海", "上海", ("上海", "上海市", "Shanghai", "shanghai"), 16),
    ("广州", "广东", ("广州", "广州市", "Guangzhou", "guangzhou"), 11),
    ("成都", "四川", ("成都", "成都市", "Chengdu", "chengdu"), 10),
    ("杭州", "浙江", ("杭州", "杭州市", "Hangzhou"), 5),
    ("深圳", "广东", ("深圳", "深圳市", "Shenzhen"), 5),
    ("南京", "江苏", ("南京", "南京市", "Nanjing"), 3),
    ("重庆", "重庆", ("重庆", "重庆市", "Chongqing"), 3),
    ("西安", "陕西", ("西安", "西安市", "Xi'an"), 2),
    ("长沙", "湖南", ("长沙", "长沙市", "Changsha"), 2),
    ("郑州", "河南", ("郑州", "郑州市", "Zhengzhou"), 2),
    ("天津", "天津", ("天津", "天津市", "Tianjin"), 1),
    ("苏州", "江苏", ("苏州", "苏州市", "Suzhou"), 1),
    ("厦门", "福建", ("厦门", "厦门市", "Xiamen"), 1),
)
CITY_TABLE = expand(tuple((i, c[3]) for i, c in enumerate(CITIES)))
CITY_WAY_4 = expand(((0, 55), (1, 25), (2, 12), (3, 8)))
CITY_WAY_3 = expand(((0, 60), (1, 28), (2, 12)))

# (store_code, store_name, city)
STORES: tuple[tuple[str, str, str], ...] = (
    ("WH001", "武汉江汉路店", "武汉"),
    ("WH002", "武汉光谷店", "武汉"),
    ("WH003", "武汉武商广场店", "武汉"),
    ("BJ001", "北京三里屯店", "北京"),
    ("BJ002", "北京西单店", "北京"),
    ("BJ003", "北京国贸店", "北京"),
    ("SH001", "上海南京西路店", "上海"),
    ("SH002", "上海淮海中路店", "上海"),
    ("GZ001", "广州天河城店", "广州"),
    ("GZ002", "广州北京路店", "广州"),
    ("CD001", "成都春熙路店", "成都"),
    ("CD002", "成都太古里店", "成都"),
)
STORES_BY_CITY: dict[str, tuple[int, ...]] = {
    city: tuple(i for i, s in enumerate(STORES) if s[2] == city)
    for city in ("武汉", "北京", "上海", "广州", "成都")
}

# (sku, name, category, price in CNY)
CATALOG: tuple[tuple[str, str, str, int], ...] = (
    ("SK-1001", "玻尿酸精华 30ml", "护肤", 199),
    ("SK-1002", "烟酰胺亮肤精华 50ml", "护肤", 259),
    ("SK-1003", "氨基酸洁面乳 120g", "护肤", 89),
    ("SK-1004", "保湿爽肤水 200ml", "护肤", 129),
    ("SK-1005", "修护乳液 120ml", "护肤", 159),
    ("SK-1006", "视黄醇抗皱面霜 50g", "护肤", 399),
    ("SK-1007", "补水面膜 10片装", "护肤", 99),
    ("SK-1008", "紧致眼霜 15g", "护肤", 329),
    ("SK-1009", "清透防晒霜 SPF50+ 50ml", "护肤", 149),
    ("SK-1010", "胶原蛋白精华 30ml", "护肤", 459),
    ("SK-1011", "温和卸妆油 200ml", "护肤", 139),
    ("SK-1012", "积雪草修护霜 50g", "护肤", 229),
    ("SK-2001", "丝绒哑光口红 #999", "彩妆", 169),
    ("SK-2002", "持妆粉底液 30ml", "彩妆", 299),
    ("SK-2003", "气垫BB霜 15g", "彩妆", 229),
    ("SK-2004", "四色眼影盘", "彩妆", 189),
    ("SK-2005", "防水睫毛膏", "彩妆", 119),
    ("SK-2006", "极细眉笔 0.05g", "彩妆", 59),
    ("SK-2007", "控油散粉 10g", "彩妆", 159),
    ("SK-2008", "柔雾腮红", "彩妆", 79),
    ("SK-2009", "水光唇釉 #03", "彩妆", 139),
    ("SK-2010", "遮瑕液 6ml", "彩妆", 99),
    ("SK-3001", "栀子花淡香水 50ml", "香水", 499),
    ("SK-3002", "白茶淡香水 100ml", "香水", 699),
    ("SK-3003", "玫瑰香水 30ml", "香水", 389),
    ("SK-3004", "雪松男士香水 100ml", "香水", 759),
    ("SK-3005", "迷你香水套装 5x7ml", "香水", 299),
    ("SK-3006", "桂花香氛 50ml", "香水", 459),
    ("SK-4001", "氨基酸洗发水 500ml", "个护", 69),
    ("SK-4002", "护发精油 100ml", "个护", 89),
    ("SK-4003", "香氛沐浴露 500ml", "个护", 79),
    ("SK-4004", "烟酰胺身体乳 250ml", "个护", 99),
    ("SK-4005", "护手霜 3支装", "个护", 49),
    ("SK-4006", "润唇膏", "个护", 39),
    ("SK-4007", "海盐磨砂膏 200g", "个护", 109),
    ("SK-5001", "护肤明星套装", "礼盒", 899),
    ("SK-5002", "口红礼盒 3支装", "礼盒", 459),
    ("SK-5003", "节日香氛礼盒", "礼盒", 1299),
    ("SK-5004", "新春限定礼盒", "礼盒", 699),
    ("SK-5005", "520限定礼盒", "礼盒", 599),
    ("SK-5006", "旅行装套盒", "礼盒", 199),
)
SKU_INDEX = {c[0]: i for i, c in enumerate(CATALOG)}
CATEGORIES = ("护肤", "彩妆", "香水", "个护", "礼盒")
BY_CATEGORY: dict[str, tuple[int, ...]] = {
    cat: tuple(i for i, c in enumerate(CATALOG) if c[2] == cat) for cat in CATEGORIES
}
FAV_CATEGORY = expand((("护肤", 45), ("彩妆", 30), ("香水", 10), ("个护", 10), ("礼盒", 5)))
ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(..., ensure_ascii=False)
# one shop-order item as JSON, by catalog index and quantity (1..3)
ITEM_JSON = tuple(
    tuple(
        json.dumps(
            {"sku": c[0], "name": c[1], "category": c[2], "price": float(c[3]), "qty": q},
            ensure_ascii=False,
        )
        for q in range(4)
    )
    for c in CATALOG
)
SKU_PROPS = tuple(
    json.dumps({"sku": c[0], "category": c[2], "price": float(c[3])}, ensure_ascii=False)
    for c in CATALOG
)
SEARCHES = tuple(
    json.dumps({"query": q}, ensure_ascii=False)
    for q in (
        "玻尿酸精华",
        "口红",
        "粉底液 干皮",
        "防晒",
        "香水 女士",
        "礼盒 送女朋友",
        "眼霜",
        "面膜",
        "卸妆油",
        "氨基酸洗面奶",
        "敏感肌 修护",
        "持妆 粉底",
        "口红 显白",
        "护手霜",
        "身体乳 香",
        "男士香水",
        "旅行装",
        "新品",
        "双十一 礼盒",
        "美白精华",
        "抗皱",
        "祛痘",
    )
)
PLAIN_EVENTS = expand((("view_item", 60), ("search", 22), ("add_to_cart", 18)))
N_PLAIN_EVENTS = len(PLAIN_EVENTS)
N_SEARCHES = len(SEARCHES)
N_CATALOG = len(CATALOG)
EVENT_MULT, EVENT_ADD, EVENT_MOD = 2_654_435_761, 97_531, 10**11  # event ids: E + 11 digits

# Mobile prefixes whose whole 8-digit range is valid for libphonenumber (CN), with weights.
MOBILE_PREFIXES = expand(
    tuple(
        (p, w)
        for p, w in (
            ("138", 9), ("139", 9), ("135", 7), ("136", 6), ("137", 6), ("134", 4), ("130", 4),
            ("131", 4), ("132", 4), ("133", 3), ("150", 5), ("151", 4), ("152", 3), ("155", 3),
            ("156", 3), ("157", 2), ("158", 4), ("159", 4), ("177", 3), ("176", 3), ("173", 2),
            ("180", 2), ("181", 3), ("182", 3), ("183", 2), ("185", 3), ("186", 6), ("187", 4),
            ("188", 4), ("189", 4), ("199", 3), ("198", 2), ("191", 2), ("195", 1), ("166", 1),
        )
    )
)  # fmt: skip
EMAIL_DOMAINS = expand(
    (
        ("qq.com", 30),
        ("163.com", 25),
        ("126.com", 10),
        ("sina.com", 5),
        ("foxmail.com", 5),
        ("gmail.com", 5),
        ("outlook.com", 5),
        ("hotmail.com", 3),
        ("139.com", 2),
    )
)
JOB_TITLES = expand(
    (
        ("", 40),
        ("工程师", 6),
        ("软件工程师", 3),
        ("教师", 5),
        ("学生", 8),
        ("医生", 2),
        ("护士", 3),
        ("会计", 4),
        ("设计师", 4),
        ("销售经理", 3),
        ("产品经理", 3),
        ("行政专员", 3),
        ("公务员", 2),
        ("自由职业", 3),
        ("律师", 1),
        ("市场总监", 2),
        ("Marketing Director", 1),
        ("首席营销官", 1),
        ("CMO", 1),
        ("人力资源经理", 2),
        ("HR", 1),
        ("财务总监", 1),
        ("运营专员", 3),
        ("全职妈妈", 2),
        ("美容顾问", 2),
        ("Engineer", 1),
        ("Teacher", 1),
    )
)
WECHAT_NICKS = (
    "微信用户",
    "小确幸",
    "追光的人",
    "晴天",
    "向日葵",
    "一只猫",
    "木子",
    "Amy",
    "Cherry",
    "Coco",
    "momo",
    "🌸花开半夏",
    "安静的美男子",
    "岁月静好",
    "阳光☀️",
    "Lucky",
    "小仙女",
    "奶茶不加糖",
)
NICK_SUFFIXES = ("酱", "宝宝", "呀", "", "🍓", "_", "同学")
SEGMENTS = expand((("loyal", 20), ("regular", 30), ("one_off", 35), ("lapsed", 15)))
SEGMENT_GAP_DAYS = {"loyal": 40, "regular": 110, "lapsed": 55, "one_off": 0}
PLATFORMS_APP = expand((("own_shop", 55), ("tmall", 20), ("jd", 10), ("mini_program", 15)))
PLATFORMS_WEB = expand((("own_shop", 25), ("tmall", 40), ("jd", 20), ("mini_program", 15)))
SHOP_STATUS = expand((("paid", 90), ("refunded", 6), ("closed", 4)))
PAYMENT_METHODS = expand((("微信支付", 50), ("支付宝", 30), ("银联", 15), ("现金", 5)))
STORE_HOURS = expand(
    tuple((h, w) for h, w in zip(range(10, 22), (2, 4, 6, 7, 6, 6, 7, 8, 9, 9, 6, 3), strict=True))
)
ONLINE_HOURS = expand(
    tuple(
        (h, w)
        for h, w in zip(
            range(24),
            (4, 2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 6, 5, 5, 5, 5, 5, 6, 8, 9, 10, 10, 7),
            strict=True,
        )
    )
)
DEVICE_PLATFORMS = expand((("ios", 45), ("android", 45), ("web", 10)))
SCENES = expand(
    (
        ("ADD_SCENE_QR_CODE", 45),
        ("ADD_SCENE_SEARCH", 20),
        ("ADD_SCENE_PROFILE_CARD", 10),
        ("ADD_SCENE_OTHERS", 10),
        ("ADD_SCENE_PROFILE_LINK", 5),
        ("ADD_SCENE_WECHAT_ADVERTISEMENT", 5),
        ("ADD_SCENE_ACCOUNT_MIGRATION", 3),
        ("ADD_SCENE_PAID", 2),
    )
)
# (appid, account name, 4 characters every openid of that account starts with after "oX")
ACCOUNTS = (
    ("wx8a3f5e2b1c9d4e70", "品牌服务号", "q3Zt"),
    ("wx1b2c3d4e5f607182", "会员福利号", "m7Kp"),
)
CAMPAIGNS = {"WELCOME10": ("WC", 10), "WINBACK20": ("WB", 20), "BIRTHDAY50": ("BD", 50)}
COUPON_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # 32 symbols, no 0/O/1/I
OPTOUT_CHANNELS = expand((("sms", 50), ("email", 20), ("wechat", 10), ("all", 20)))
OPTOUT_SOURCE = {"sms": "退订短信", "email": "邮件退订链接", "wechat": "客服", "all": "客服"}

# Identifiers used by the hand-made edge cases; generated people never get them.
EDGE_PHONES = frozenset(
    {
        "13800138000", "13812340002", "13856780002", "13890120002", "13800000000",
        "18607140009", "15927000010", "13912345678", "13512345001", "18612345002",
        "13923456001", "18923456002", "15071230029", "13396600030", "18971000031",
        "13971200024", "15827300005", "13396600025",
    }
    | {f"1357101{n:04d}" for n in range(11, 23)}
)  # fmt: skip
EDGE_SHOP_ORDER_IDS = frozenset(
    {
        "SO2025030988000001", "SO2025052088000002", "SO2025061888000003",
        "SO2025070188000004", "SO2025071588000005", "SO2025080888000006",
        "SO2025081188000007", "SO2026031588000010", "SO2025092088000011",
        "SO2025100288000012", "SO2025111188000013", "SO2025082088000090",
        "SO2025082188000091", "SO2025082288000092", "SO2025082388000093",
    }
)  # fmt: skip
EDGE_COUPONS = frozenset({"WC-LN8X2Q"})


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def uuid4_like(rng: random.Random) -> str:
    """An uppercase uuid4-looking id drawn from the seeded generator."""
    h = f"{rng.getrandbits(128):032X}"
    variant = "89AB"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def url_safe(rng: random.Random, n: int) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(18)).decode("ascii")[:n]


def messy_phone(phone: str, r: float) -> str:
    """One of the ways people and systems write a CN mobile (``r`` in [0, 1))."""
    a, b, c = phone[:3], phone[3:7], phone[7:]
    variants = (
        f"{a}-{b}-{c}",
        f"+86 {a} {b} {c}",
        f"0086 {phone}",
        f"86-{phone}",
        f"+86{phone}",
        f" {phone}",
        f"{a} {b} {c}",
        f"{phone} ",
    )
    return variants[int(r * len(variants))]


def mask_phone(phone: str) -> str:
    """Marketplace masking: ``138****0002``."""
    return f"{phone[:3]}****{phone[7:]}"


def format_birthday(b: date, r: float) -> str:
    if r < 0.84:
        return b.isoformat()
    if r < 0.94:
        return f"{b.year}/{b.month}/{b.day}"
    return f"{b.year}{b.month:02d}{b.day:02d}"


def format_reg_time(t: int, r: float) -> str:
    d = to_date(t)
    sec = t % DAY
    if r < 0.6:
        return f"{d.year}/{d.month:02d}/{d.day:02d} {hms(sec)}"
    return f"{d.isoformat()} {hms(sec)[:5]}"


def level_for(spend: float) -> str:
    if spend >= 8000:
        return "钻石"
    if spend >= 3000:
        return "金卡"
    if spend >= 1000:
        return "银卡"
    return "普通"


def money(x: float) -> str:
    return f"{x:.2f}"


def scramble(n: int, mult: int, add: int, mod: int) -> int:
    """A bijection on [0, mod) when ``mult`` is coprime with ``mod``: unique, random-looking ids."""
    return (n * mult + add) % mod


# --------------------------------------------------------------------------------------------
# Latent buying process (--latent-purchases): the ground truth of cdp predict's models
# --------------------------------------------------------------------------------------------

# Off by default: the shipped sample and every other consumer keep the segment-based purchases
# above. With --latent-purchases each buyer follows BG/NBD and Gamma-Gamma with these known
# population parameters (time in days), so tests can check that the fitted ones recover them:
# purchase rate lambda ~ Gamma(shape r, rate alpha); after each purchase the buyer drops out for
# good with probability p ~ Beta(a, b); each purchase's amount z ~ Gamma(shape p, rate nu), with
# the buyer's spend rate nu ~ Gamma(shape q, rate v). Every order is paid and undiscounted (its
# items still name the categories; the amount is the drawn one).
LATENT_PURCHASE = {"r": 0.8, "alpha": 40.0, "a": 0.9, "b": 3.0}
LATENT_SPEND = {"p": 6.0, "q": 4.0, "v": 150.0}
LATENT_HEADER = [
    "person_id", "purchase_rate", "dropout_probability", "spend_rate", "mean_spend",
    "purchases", "alive_at_end",
]  # fmt: skip
LATENT_FILE = "truth_latent.csv"


@dataclass(slots=True)
class Latent:
    """One buyer's latent purchase rate (per day), dropout probability and spend rate."""

    rate: float
    dropout: float
    spend_rate: float
    alive_at_end: bool = True


def draw_latent(rng: random.Random) -> Latent:
    buy, spend = LATENT_PURCHASE, LATENT_SPEND
    return Latent(
        rate=rng.gammavariate(buy["r"], 1 / buy["alpha"]),
        dropout=rng.betavariate(buy["a"], buy["b"]),
        spend_rate=rng.gammavariate(spend["q"], 1 / spend["v"]),
    )


def latent_purchase_times(rng: random.Random, latent: Latent, lo: int, hi: int) -> list[int]:
    """BG/NBD: a first purchase at a uniform time in [lo, hi), then exponential gaps at the
    buyer's rate; after each repeat purchase (not the first: in BG/NBD a buyer who never came
    back is alive) the buyer drops out with their probability."""
    t = lo + int(rng.random() * (hi - lo))
    times = [t]
    while True:
        t += int(rng.expovariate(latent.rate) * DAY)
        if t >= hi:
            return times
        times.append(t)
        if rng.random() < latent.dropout:
            latent.alive_at_end = False
            return times


def latent_amount(rng: random.Random, latent: Latent) -> float:
    """Gamma-Gamma: one purchase's amount, at the buyer's spend rate."""
    return round(rng.gammavariate(LATENT_SPEND["p"], 1 / latent.spend_rate), 1)


def write_latent_truth(out_dir: Path, rows: list[list[str]]) -> int:
    """truth_latent.csv: each buyer's latent parameters; returns the rows written."""
    with open(out_dir / LATENT_FILE, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LATENT_HEADER)
        writer.writerows(rows)
    return len(rows)


def latent_row(pid: str, latent: Latent, purchases: int) -> list[str]:
    mean_spend = LATENT_SPEND["p"] / latent.spend_rate
    return [
        pid, f"{latent.rate:.6f}", f"{latent.dropout:.6f}", f"{latent.spend_rate:.6f}",
        f"{mean_spend:.2f}", str(purchases), "1" if latent.alive_at_end else "0",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Model objects (only one block of people lives in memory at a time)
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Purchase:
    t: int
    channel: str  # "pos" or "shop"
    where: int  # store index (pos)
    platform: str  # shop platform (shop)
    items: list[tuple[int, int]]  # (catalog index, qty)
    gross: int = 0  # list price total, set by __post_init__
    status: str = "paid"
    coupon: str | None = None
    discount: int = 0
    order_id: str = ""
    via_app: bool = False

    def __post_init__(self) -> None:
        self.gross = sum(CATALOG[i][3] * q for i, q in self.items)


@dataclass(slots=True)
class Person:
    pid: str
    idx: int
    name: str
    sur_py: str
    given_py: str
    gender: str
    birthday: date | None
    city: int
    title: str
    phone: str
    email: str | None = None
    old_phone: str | None = None
    phone_changed_t: int = 0
    member_no: str | None = None
    legacy: str = ""  # "", "only" (legacy file only) or "both"
    reg_t: int = 0
    reg_store: str = ""
    unionid: str | None = None
    follows: tuple[int, ...] = ()
    segment: str = "one_off"
    lapse_t: int = 0
    store_buyer: bool = False
    online_buyer: bool = False
    fav_store: int = 0
    fav_cat: str = "护肤"
    platform: str = "own_shop"
    app_quota: int = 0
    wx_nick: str = ""
    purchases: list[Purchase] = field(default_factory=list)
    latent: Latent | None = None  # with --latent-purchases only


# --------------------------------------------------------------------------------------------
# Output: per-block buffers, sorted and streamed to the files
# --------------------------------------------------------------------------------------------


class Sink:
    """Open output files; rows are buffered per block, sorted by time, then written."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.counts: dict[str, int] = {name: 0 for name in FILES.values()}
        self.counts["truth.csv"] = 0
        self.buffers: dict[str, list[tuple[Any, Any, str | None, str | None]]] = {
            source: [] for source in FILES
        }
        self._stack = contextlib.ExitStack()
        self._text: dict[str, Any] = {}
        self._writers: dict[str, Any] = {}
        self._open_csv("crm_members", out_dir, "utf-8-sig", "\r\n")
        for source in ("pos_orders", "wechat_followers", "coupons", "optouts"):
            self._open_csv(source, out_dir, "utf-8", "\n")
        for source in JSONL_SOURCES:
            self._text[source] = self._open(out_dir / FILES[source], "utf-8")
        self._legacy = self._open(out_dir / FILES["crm_members_legacy_gbk"], None)
        self._legacy_buf = io.StringIO()
        self._legacy_writer = csv.writer(self._legacy_buf, lineterminator="\r\n")
        self._write_legacy(CRM_HEADER)
        self._truth = csv.writer(self._open(out_dir / "truth.csv", "utf-8"), lineterminator="\n")
        self._truth.writerow(TRUTH_HEADER)

    def _open(self, path: Path, encoding: str | None) -> Any:
        """A text file, or a binary one when ``encoding`` is None; closed by :meth:`close`."""
        if encoding is None:
            return self._stack.enter_context(open(path, "wb"))
        return self._stack.enter_context(open(path, "w", encoding=encoding, newline=""))

    def _open_csv(self, source: str, out_dir: Path, encoding: str, eol: str) -> None:
        f = self._open(out_dir / FILES[source], encoding)
        self._text[source] = f
        self._writers[source] = csv.writer(f, lineterminator=eol)
        self._writers[source].writerow(HEADERS[source])

    def add(
        self, source: str, key: Any, payload: Any, truth_key: str | None, pid: str | None
    ) -> None:
        """Queue one line; ``truth_key``/``pid`` None means "no truth row"."""
        self.buffers[source].append((key, payload, truth_key, pid))

    def _write_legacy(self, row: list[str]) -> None:
        buf = self._legacy_buf
        buf.seek(0)
        buf.truncate()
        self._legacy_writer.writerow(row)
        data = buf.getvalue().encode("gbk")
        mark = BAD_GBK_MARK.encode("gbk")
        if mark in data:
            data = data.replace(mark, b"\xff\xfe\xff")
        self._legacy.write(data)

    def flush(self) -> None:
        first = itemgetter(0)
        truth_rows: list[tuple[str, str, str]] = []
        for source, rows in self.buffers.items():
            if not rows:
                continue
            rows.sort(key=first)
            if source in JSONL_SOURCES:
                self._text[source].write("".join(f"{r[1]}\n" for r in rows))
            elif source == "crm_members_legacy_gbk":
                for r in rows:
                    self._write_legacy(r[1])
            else:
                self._writers[source].writerows(r[1] for r in rows)
            self.counts[FILES[source]] += len(rows)
            truth_rows.extend((source, r[2], r[3]) for r in rows if r[2] is not None)
            rows.clear()
        self._truth.writerows(truth_rows)
        self.counts["truth.csv"] += len(truth_rows)

    def write_direct(self, source: str, rows: list[list[str]]) -> None:
        """Rows with no truth and no ordering needs (coupon pools)."""
        self._writers[source].writerows(rows)
        self.counts[FILES[source]] += len(rows)

    def close(self) -> None:
        self.flush()
        self._stack.close()


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


class Generator:
    """Makes people one by one and streams their records into a :class:`Sink`."""

    def __init__(
        self,
        out_dir: Path,
        customers: int,
        events: int | None,
        seed: int,
        end_date: date,
        edge_cases: bool,
        latent: bool = False,
    ) -> None:
        self.customers = customers
        # --latent-purchases: its own random stream, so that the draws of everything else
        # follow the same sequence as without it.
        self.latent = latent
        self.latent_rng = random.Random(seed * 1_000 + 15)
        self.latent_rows: list[list[str]] = []
        self.events = 15 * customers if events is None else events
        self.seed = seed
        self.edge_cases = edge_cases
        self.rng = random.Random(seed)
        self.r = self.rng.random
        self.end_t = day_number(end_date) * DAY
        self.window_start = self.end_t - WINDOW_DAYS * DAY
        self.coupon_start = self.end_t - 3 * 365 * DAY
        self.token_digits = max(4, len(str(customers + 100)))
        self.legacy_seq = 0
        self.member_seq = 0
        # legacy members take M0010001.., main members start at the next multiple of 100000.
        self.main_base = ((10_000 + customers // 5 + 1_000) // 100_000 + 1) * 100_000
        self.shop_seq = 0
        self.event_seq = 0
        self.coupon_seq = 0
        self.pos_seq: dict[int, int] = {}
        self.sink = Sink(out_dir)
        self.block = max(50, min(2000, 30_000 * max(customers, 1) // max(self.events, 1)))

    # ---- ids ---------------------------------------------------------------------------------

    def next_member_no(self, legacy: bool) -> str:
        if legacy:
            self.legacy_seq += 1
            return f"M{10_000 + self.legacy_seq:07d}"
        self.member_seq += 1
        return f"M{self.main_base + self.member_seq:07d}"

    def next_pos_order_no(self, store: int, t: int) -> str:
        day = t // DAY
        key = store * 1_000_000 + day
        seq = self.pos_seq.get(key, 0) + 1
        self.pos_seq[key] = seq
        return f"{STORES[store][0]}-{day_compact(day)}-{seq:04d}"

    def next_shop_order_id(self, t: int) -> str:
        while True:
            self.shop_seq += 1
            n = scramble(self.shop_seq, 54_435_761, 31_415_926, 10**8)
            oid = f"SO{day_compact(t // DAY)}{n:08d}"
            if oid not in EDGE_SHOP_ORDER_IDS:
                return oid

    def next_event_id(self) -> str:
        self.event_seq += 1
        return f"E{scramble(self.event_seq, EVENT_MULT, EVENT_ADD, EVENT_MOD):011d}"

    def next_coupon_code(self, campaign: str) -> str:
        while True:
            self.coupon_seq += 1
            n = scramble(self.coupon_seq, 1_103_515_245, 12_345, 32**6)
            chars = []
            for _ in range(6):
                n, d = divmod(n, 32)
                chars.append(COUPON_ALPHABET[d])
            code = f"{CAMPAIGNS[campaign][0]}-{''.join(chars)}"
            if code not in EDGE_COUPONS:
                return code

    def phone_for(self, n: int) -> str:
        """A unique valid mobile for number ``n`` (its 8-digit suffix is a bijection of ``n``)."""
        suffix = scramble(n, 73_932_161, 24_681_357, 10**8)
        k = int(self.r() * len(MOBILE_PREFIXES))
        phone = f"{MOBILE_PREFIXES[k]}{suffix:08d}"
        while phone in EDGE_PHONES:
            k = (k + 1) % len(MOBILE_PREFIXES)
            phone = f"{MOBILE_PREFIXES[k]}{suffix:08d}"
        return phone

    def token(self, idx: int) -> str:
        mod = 10**self.token_digits
        return f"{scramble(idx, 7_368_787, 1_234, mod):0{self.token_digits}d}"

    # ---- app activity quotas (two passes over a separate random stream) --------------------

    def _app_draws(self) -> Iterator[float]:
        """Activity weight per person (0 = not an app user); same sequence on every call."""
        rng = random.Random(self.seed * 7_919 + 1)
        r = rng.random
        for _ in range(self.customers):
            if r() < 0.30:
                yield min(6.0, 0.15 + rng.expovariate(1.0))
            else:
                r()
                yield 0.0

    def app_quotas(self, total: int) -> Iterator[int]:
        """Per-person event counts summing exactly to ``total``."""
        weight_sum = sum(self._app_draws())
        cum = 0.0
        done = 0
        for w in self._app_draws():
            if w == 0.0 or weight_sum == 0.0:
                yield 0
                continue
            cum += w
            target = round(total * cum / weight_sum)
            yield target - done
            done = target

    # ---- run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        edge_events = 0
        if self.edge_cases:
            add_edge_cases(self)
            edge_events = sum(1 for row in self.sink.buffers["app_events"] if row[1])
        quotas = self.app_quotas(max(0, self.events - edge_events))
        for i in range(self.customers):
            person = self.make_person(i, next(quotas))
            self.emit_person(person)
            if (i + 1) % self.block == 0:
                self.sink.flush()
        self.sink.flush()
        self.write_coupon_pools()
        self.sink.close()
        if self.latent:
            self.sink.counts[LATENT_FILE] = write_latent_truth(self.sink.out_dir, self.latent_rows)
        return dict(self.sink.counts)

    # ---- people ------------------------------------------------------------------------------

    def make_person(self, i: int, app_quota: int) -> Person:
        r = self.r
        female = r() < 0.8
        sur, sur_py = SURNAMES[int(r() * len(SURNAMES))]
        pool = FEMALE_GIVEN if female else MALE_GIVEN
        given = [pool[int(r() * len(pool))] for _ in range(1 if r() < 0.25 else 2)]
        age_days = int((18 + 37 * r() ** 1.6) * 365.25)
        city = CITY_TABLE[int(r() * len(CITY_TABLE))]
        p = Person(
            pid=f"P{i + 1:07d}",
            idx=i,
            name=sur + "".join(g[0] for g in given),
            sur_py=sur_py,
            given_py="".join(g[1] for g in given),
            gender=("女" if female else "男") if r() > 0.03 else "",
            birthday=to_date(self.end_t - age_days * DAY) if r() > 0.08 else None,
            city=city,
            title=JOB_TITLES[int(r() * len(JOB_TITLES))],
            phone=self.phone_for(i),
            app_quota=app_quota,
        )
        if r() < 0.55:
            p.email = self.make_email(p)
        self._assign_membership(p)
        self._assign_shopping(p)
        self._assign_wechat(p)
        self.plan_purchases(p)
        return p

    def make_email(self, p: Person) -> str:
        r = self.r
        if r() < 0.3:
            qq = 100_000_000 + scramble(p.idx, 7_368_787, 55, 900_000_000)
            return f"{qq}@qq.com"
        tok = self.token(p.idx)
        x = r()
        if x < 0.4:
            local = f"{p.sur_py}{p.given_py}{tok}"
        elif x < 0.7:
            local = f"{p.sur_py}.{p.given_py}{tok}"
        elif x < 0.85:
            local = f"{p.given_py}_{p.sur_py}{tok}"
        else:
            local = f"{p.given_py}{p.sur_py[0]}{tok}"
        return f"{local}@{EMAIL_DOMAINS[int(r() * len(EMAIL_DOMAINS))]}"

    def _assign_membership(self, p: Person) -> None:
        r = self.r
        if r() >= 0.70:
            return
        x = r()
        p.legacy = "only" if x < 0.09 else "both" if x < 0.14 else ""
        p.member_no = self.next_member_no(bool(p.legacy))
        if p.legacy:
            span = 5 * 365 * DAY
            p.reg_t = self.end_t - 4 * 365 * DAY - int(r() * span)
        else:
            p.reg_t = self.end_t - int(4 * 365 * DAY * r() ** 1.3) - 3600
        if p.legacy == "both" and r() < 0.4:
            # changed number: the legacy export and older store receipts carry the old one
            p.old_phone = self.phone_for(50_000_000 + p.idx)
            p.phone_changed_t = self.window_start + int(r() * WINDOW_DAYS * DAY)

    def _assign_shopping(self, p: Person) -> None:
        r = self.r
        city = CITIES[p.city][0]
        local_stores = STORES_BY_CITY.get(city)
        p.store_buyer = r() < (0.72 if local_stores else 0.3)
        p.online_buyer = r() < 0.48
        if local_stores:
            p.fav_store = local_stores[int(r() * len(local_stores))]
        else:
            p.fav_store = int(r() * len(STORES))
        p.fav_cat = FAV_CATEGORY[int(r() * len(FAV_CATEGORY))]
        table = PLATFORMS_APP if p.app_quota else PLATFORMS_WEB
        p.platform = table[int(r() * len(table))]
        p.segment = SEGMENTS[int(r() * len(SEGMENTS))]
        p.lapse_t = self.end_t - int((300 + 300 * r()) * DAY)
        if p.member_no:
            x = r()
            if p.app_quota and x < 0.5:
                p.reg_store = "官网"
            elif x < 0.65:
                p.reg_store = STORES[p.fav_store][1]
            else:
                p.reg_store = "官网" if x < 0.85 else "小程序"
            hours = STORE_HOURS if p.reg_store[-1] == "店" else ONLINE_HOURS
            tod = hours[int(r() * len(hours))] * 3600 + int(r() * 3600)
            p.reg_t = p.reg_t // DAY * DAY + tod

    def _assign_wechat(self, p: Person) -> None:
        r = self.r
        follows = r() < 0.45
        if follows:
            a = r()
            p.follows = (0, 1) if a < 0.3 else (0,) if a < 0.85 else (1,)
        if follows or p.platform == "mini_program" or p.reg_store == "小程序":
            p.unionid = "o6_bm" + url_safe(self.rng, 23)
        nick = WECHAT_NICKS[int(r() * len(WECHAT_NICKS))]
        if r() < 0.5:
            nick = p.name[-1] + NICK_SUFFIXES[int(r() * len(NICK_SUFFIXES))]
        p.wx_nick = nick

    # ---- purchases ---------------------------------------------------------------------------

    def purchase_times(self, p: Person) -> list[int]:
        r = self.r
        lo = self.window_start
        if p.member_no:
            lo = max(lo, p.reg_t + 600)
        hi = p.lapse_t if p.segment == "lapsed" else self.end_t - 3600
        if hi - lo < DAY or not (p.store_buyer or p.online_buyer):
            return []
        if self.latent:  # to the end: the latent process is the only way a buyer stops
            p.latent = draw_latent(self.latent_rng)
            return latent_purchase_times(self.latent_rng, p.latent, lo, self.end_t - 3600)
        if p.segment == "one_off":
            return [lo + int(r() * (hi - lo))]
        mean_gap = SEGMENT_GAP_DAYS[p.segment] * DAY
        t = lo + int(r() * min(mean_gap, hi - lo))
        times = []
        while t < hi:
            times.append(t)
            t += 3 * DAY + int(self.rng.expovariate(1.0 / mean_gap))
        return times

    def basket(self, p: Person) -> list[tuple[int, int]]:
        r = self.r
        n = 1 if r() < 0.55 else 2 if r() < 0.7 else 3 if r() < 0.8 else 4
        items: list[tuple[int, int]] = []
        seen: list[int] = []
        for _ in range(n):
            cat = p.fav_cat if r() < 0.6 else CATEGORIES[int(r() * len(CATEGORIES))]
            choices = BY_CATEGORY[cat]
            i = choices[int(r() * len(choices))]
            if i in seen:
                continue
            seen.append(i)
            items.append((i, 1 if r() < 0.88 else 2 if r() < 0.8 else 3))
        return items

    def plan_purchases(self, p: Person) -> None:
        r = self.r
        for t in self.purchase_times(p):
            day_start = t // DAY * DAY
            if p.store_buyer and (not p.online_buyer or r() < 0.6):
                store = p.fav_store if r() < 0.8 else int(r() * len(STORES))
                tod = STORE_HOURS[int(r() * len(STORE_HOURS))] * 3600 + int(r() * 3600)
                p.purchases.append(Purchase(day_start + tod, "pos", store, "", self.basket(p)))
            else:
                platform = p.platform
                if r() < 0.3:
                    platform = PLATFORMS_WEB[int(r() * len(PLATFORMS_WEB))]
                if self.latent:  # own_shop orders carry the buyer's phone
                    platform = "own_shop"
                if platform == "mini_program" and p.unionid is None:
                    platform = "own_shop"
                tod = ONLINE_HOURS[int(r() * len(ONLINE_HOURS))] * 3600 + int(r() * 3600)
                status = SHOP_STATUS[int(r() * len(SHOP_STATUS))]
                buy = Purchase(day_start + tod, "shop", 0, platform, self.basket(p), status=status)
                buy.via_app = platform == "own_shop" and p.app_quota > 0 and r() < 0.8
                p.purchases.append(buy)
        if p.latent is not None:
            for buy in p.purchases:
                buy.status, buy.gross = "paid", latent_amount(self.latent_rng, p.latent)
            self.latent_rows.append(latent_row(p.pid, p.latent, len(p.purchases)))

    # ---- coupons -----------------------------------------------------------------------------

    def plan_coupons(self, p: Person) -> list[list[str]]:
        """Coupons issued to member ``p``; redemptions are linked to purchases."""
        if not p.member_no:
            return []
        r = self.r
        rows: list[list[str]] = []
        if p.reg_t >= self.coupon_start and r() < 0.6:
            rows.append(self._coupon(p, "WELCOME10", p.reg_t + 120, 30))
        if p.birthday:
            for year in range(to_date(self.window_start).year, to_date(self.end_t).year + 1):
                start = day_number(date(year, p.birthday.month, 1)) * DAY + 9 * 3600
                if max(self.window_start, p.reg_t) <= start < self.end_t and r() < 0.5:
                    rows.append(self._coupon(p, "BIRTHDAY50", start, 30))
        last = max((b.t for b in p.purchases), default=0)
        if last and last + 180 * DAY < self.end_t - DAY and r() < 0.8:
            issued = last + 180 * DAY + int(r() * 7 * DAY)
            if r() < 0.15 and not self.latent:  # the win-back worked
                t = issued + int((1 + 24 * r()) * DAY)
                if t < self.end_t:
                    channel = "pos" if p.store_buyer and r() < 0.5 else "shop"
                    platform = "own_shop" if p.unionid is None else "mini_program"
                    buy = Purchase(t, channel, p.fav_store, platform, self.basket(p))
                    p.purchases.append(buy)
            rows.append(self._coupon(p, "WINBACK20", issued, 30))
        return rows

    def _coupon(self, p: Person, campaign: str, issued: int, valid_days: int) -> list[str]:
        code = self.next_coupon_code(campaign)
        face = CAMPAIGNS[campaign][1]
        expires = (issued // DAY + valid_days) * DAY + DAY - 1
        redeemed = ""
        for buy in p.purchases:  # in time order
            if buy.t > expires:
                break
            if buy.t >= issued and buy.coupon is None and buy.status == "paid":
                if buy.gross > face and self.r() < 0.75:
                    buy.coupon = code
                    buy.discount = 0 if self.latent else face
                    redeemed = local_str(buy.t)
                break
        status = "redeemed" if redeemed else "issued"
        return [
            code,
            campaign,
            money(face),
            status,
            local_str(issued),
            redeemed,
            local_str(expires),
            p.member_no or "",
            p.phone,
        ]

    # ---- emitting ----------------------------------------------------------------------------

    def emit_person(self, p: Person) -> None:
        coupons = self.plan_coupons(p)
        p.purchases.sort(key=lambda b: b.t)
        if p.member_no:
            self.emit_crm(p)
        for buy in p.purchases:
            if buy.channel == "pos":
                self.emit_pos(p, buy)
            else:
                self.emit_shop(p, buy)
        if p.app_quota:
            self.emit_app(p)
        self.emit_wechat(p)
        for row in coupons:
            self.sink.add("coupons", row[4], row, row[0], p.pid)
        self.emit_optouts(p)

    def city_text(self, p: Person) -> str:
        ways = CITIES[p.city][2]
        table = CITY_WAY_4 if len(ways) == 4 else CITY_WAY_3
        return ways[table[int(self.r() * len(table))]]

    def spend(self, p: Person) -> float:
        return sum(b.gross - b.discount for b in p.purchases if b.status == "paid")

    def emit_crm(self, p: Person) -> None:
        r = self.r
        spend = self.spend(p)
        points = int(spend) + 100
        phone = p.phone if r() < 0.75 else messy_phone(p.phone, r())
        email = ""
        if p.email and r() < 0.7:
            email = p.email
            if r() < 0.1:
                email = f"  {email.upper()}" if r() < 0.5 else f"{email.capitalize()} "
        birthday = format_birthday(p.birthday, r()) if p.birthday else ""
        unionid = p.unionid if p.unionid and r() < 0.57 else ""
        row = [
            p.member_no,
            p.name,
            p.gender,
            phone,
            email,
            birthday,
            self.city_text(p),
            p.title,
            format_reg_time(p.reg_t, r()),
            p.reg_store,
            level_for(spend),
            str(points),
            unionid,
        ]
        if p.legacy != "only":
            self.sink.add("crm_members", p.member_no, row, p.member_no, p.pid)
        if p.legacy:
            old = list(row)
            old[3] = p.old_phone or p.phone
            old[4] = "" if r() < 0.4 else old[4]
            old[6] = self.city_text(p)
            old[7] = p.title if r() < 0.7 else JOB_TITLES[int(r() * len(JOB_TITLES))]
            old[8] = format_reg_time(p.reg_t, 0.0)
            old[10] = "普通" if r() < 0.6 else "银卡"
            old[11] = str(int(points * (0.2 + 0.3 * r())))
            old[12] = ""
            self.sink.add("crm_members_legacy_gbk", p.member_no, old, p.member_no, p.pid)

    def emit_pos(self, p: Person, buy: Purchase) -> None:
        r = self.r
        code, name, _ = STORES[buy.where]
        order_no = self.next_pos_order_no(buy.where, buy.t)
        phone = ""
        if r() < (0.93 if p.member_no else 0.45):
            phone = p.old_phone if p.old_phone and buy.t < p.phone_changed_t else p.phone
            if r() < 0.12:
                phone = messy_phone(phone, r())
        if self.latent:  # every purchase of the latent process can be traced to its buyer
            phone = p.phone
        gross = buy.gross - buy.discount
        if r() < 0.15 and not self.latent:
            gross = round(gross * (0.9 if r() < 0.5 else 0.95), 1)
        best, category, count = -1, "", 0
        for i, q in buy.items:
            count += q
            if CATALOG[i][3] * q > best:
                best, category = CATALOG[i][3] * q, CATALOG[i][2]
        row = [
            order_no,
            code,
            name,
            phone,
            local_str(buy.t),
            money(gross),
            str(count),
            category,
            PAYMENT_METHODS[int(r() * len(PAYMENT_METHODS))],
            f"{code}-{1 + int(r() * 8):02d}",
        ]
        self.sink.add("pos_orders", buy.t, row, order_no if phone else None, p.pid)

    def shop_buyer(self, p: Person, platform: str) -> dict[str, Any]:
        r = self.r
        buyer: dict[str, Any] = {}
        if platform == "own_shop":
            buyer["mobile"] = p.phone if r() < 0.85 else messy_phone(p.phone, r())
            if p.email and r() < 0.85:
                buyer["email"] = p.email if r() < 0.9 else p.email.upper()
            elif r() < 0.6:
                buyer["email"] = None
            buyer["nick"] = p.wx_nick if r() < 0.5 else p.given_py
        elif platform in ("tmall", "jd"):
            buyer["mobile"] = mask_phone(p.phone)
            if r() < 0.5:
                buyer["email"] = None
            if platform == "tmall":
                buyer["nick"] = f"tb{scramble(p.idx, 2_654_435_761, 17, 10**10):010d}"
            else:
                buyer["nick"] = f"jd_{scramble(p.idx, 2_246_822_519, 29, 16**12):012x}"
        else:
            if r() < 0.35:
                buyer["mobile"] = p.phone
            elif r() < 0.6:
                buyer["mobile"] = None  # else the key is simply missing
            buyer["nick"] = p.wx_nick
        if platform == "mini_program":
            buyer["unionid"] = p.unionid
        elif r() < 0.5:
            buyer["unionid"] = None
        return buyer

    def emit_shop(self, p: Person, buy: Purchase) -> None:
        r = self.r
        buy.order_id = self.next_shop_order_id(buy.t)
        city_name, province, ways, _ = CITIES[p.city]
        if r() < 0.1:  # shipped to someone elsewhere
            city_name, province, ways, _ = CITIES[CITY_TABLE[int(r() * len(CITY_TABLE))]]
        buyer = ENCODE(self.shop_buyer(p, buy.platform))
        items = ", ".join(ITEM_JSON[i][q] for i, q in buy.items)
        coupon = ""  # the key is sometimes missing rather than null
        if buy.coupon:
            coupon = f', "coupon_code": "{buy.coupon}"'
        elif r() < 0.8:
            coupon = ', "coupon_code": null'
        city = ways[1] if r() < 0.3 else city_name
        line = (
            f'{{"order_id": "{buy.order_id}", "platform": "{buy.platform}", '
            f'"created": "{local_iso(buy.t)}", "payment": "{money(buy.gross - buy.discount)}", '
            f'"status": "{buy.status}", "buyer": {buyer}, "items": [{items}]{coupon}, '
            f'"shipping": {{"province": "{province}", "city": "{city}"}}}}'
        )
        self.sink.add("shop_orders", buy.t, line, buy.order_id, p.pid)

    # ---- app events --------------------------------------------------------------------------

    def app_sessions(self, p: Person) -> list[list[Any]]:
        """Sessions ``[start, n_events, kind, order]`` whose sizes sum to ``p.app_quota``."""
        r = self.r
        start = self.window_start + int(r() * 0.8 * WINDOW_DAYS * DAY)
        stop = self.end_t - 600
        if p.segment == "lapsed":
            stop = min(stop, max(start + 30 * DAY, p.lapse_t + 90 * DAY))
        budget = p.app_quota
        sessions: list[list[Any]] = []
        if p.member_no and p.reg_store == "官网" and self.window_start < p.reg_t < stop:
            start = max(self.window_start, p.reg_t - int(r() * 20 * DAY))
            size = min(budget, 2 + int(r() * 5))
            sessions.append([p.reg_t - 60, size, "register", None])
            budget -= size
        if p.member_no:
            for buy in p.purchases:
                if buy.via_app and buy.order_id and budget >= 4:
                    size = min(budget, 4 + int(r() * 4))
                    sessions.append([buy.t, size, "order", buy])
                    budget -= size
        avg = 3 + int(r() * 8)
        while budget > 0:
            size = min(budget, 1 + int(r() * 2 * avg))
            sessions.append([start + int(r() * (stop - start)), size, "plain", None])
            budget -= size
        sessions.sort(key=itemgetter(0))
        return sessions

    def login_index(self, p: Person, sessions: list[list[Any]], first: int, last: int) -> int:
        """Index of the session where the member logs in on one device (or -1)."""
        if not p.member_no or first >= last:
            return -1
        for k in range(first, last):
            if sessions[k][2] in ("register", "order"):
                return k  # nobody orders logged-out, and registering logs you in
        if first > 0 or self.r() < 0.4:
            return first
        return first + int(self.r() * (last - first))

    def emit_app(self, p: Person) -> None:
        r = self.r
        sessions = self.app_sessions(p)
        n = len(sessions)
        switch = n
        if p.member_no and n > 3 and r() < 0.12:
            switch = n // 2 + int(r() * (n - n // 2))  # got a new phone
            registered = [k for k, s in enumerate(sessions) if s[2] == "register"]
            if registered:
                switch = max(switch, registered[0] + 1)  # registered on the first one
        devices = [(uuid4_like(self.rng), DEVICE_PLATFORMS[int(r() * len(DEVICE_PLATFORMS))])]
        if switch < n:
            devices.append((uuid4_like(self.rng), devices[0][1] if r() < 0.7 else "android"))
        logins = (
            self.login_index(p, sessions, 0, switch),
            self.login_index(p, sessions, switch, n),
        )
        for k, session in enumerate(sessions):
            dev = 0 if k < switch else 1
            device, platform = devices[dev]
            iso = platform == "web" or r() < 0.04
            self.emit_session(p, session, device, platform, iso, logins[dev], k)

    def emit_session(
        self,
        p: Person,
        session: list[Any],
        device: str,
        platform: str,
        iso: bool,
        login_at: int,
        k: int,
    ) -> None:
        """One session's events (the hot loop: kept flat on purpose)."""
        r = self.r
        start, size, kind, buy = session
        out = self.sink.buffers["app_events"]
        pid = p.pid
        tails = (
            f', "device_id": "{device}", "user_id": null, "platform": "{platform}", ',
            f', "device_id": "{device}", "user_id": "{p.member_no}", "platform": "{platform}", ',
        )
        logged = login_at != -1 and k > login_at
        fav = BY_CATEGORY[p.fav_cat]
        gaps = [3_000 + int(r() * 80_000) for _ in range(size)]
        ms = start * 1000 + int(r() * 1000)
        if kind == "order":
            ms -= sum(gaps[1:])  # the last event is the order itself, at buy.t
        seq = self.event_seq
        for j in range(size):
            if j == 0:
                event, props = "app_open", "{}"
            else:
                ms += gaps[j]
                if k == login_at and j == 1:
                    logged = True
                    if kind == "register":
                        event, props = "register", f'{{"phone": "{p.phone}"}}'
                    else:
                        event, props = "login", "{}"
                elif kind == "order" and j == size - 1:
                    amount = money(buy.gross - buy.discount)
                    event = "order"
                    props = f'{{"order_id": "{buy.order_id}", "amount": {amount}}}'
                else:
                    event = PLAIN_EVENTS[int(r() * N_PLAIN_EVENTS)]
                    x = r()
                    if event == "search":
                        props = SEARCHES[int(x * N_SEARCHES)]
                    elif kind == "order" and x < 0.7:
                        props = SKU_PROPS[buy.items[0][0]]
                    elif x < 0.5:
                        props = SKU_PROPS[fav[int(r() * len(fav))]]
                    else:
                        props = SKU_PROPS[int(r() * N_CATALOG)]
            seq += 1
            eid = f"E{(seq * EVENT_MULT + EVENT_ADD) % EVENT_MOD:011d}"
            ts = f'"{local_iso_ms(ms)}"' if iso else ms - TZ_MS
            line = (
                f'{{"event_id": "{eid}", "event": "{event}", "ts": {ts}'
                f'{tails[logged]}"properties": {props}}}'
            )
            out.append((ms, line, eid, pid))
        self.event_seq = seq

    # ---- wechat, opt-outs, coupon pools -------------------------------------------------------

    def emit_wechat(self, p: Person) -> None:
        r = self.r
        for a in p.follows:
            appid, account, prefix = ACCOUNTS[a]
            openid = f"oX{prefix}{url_safe(self.rng, 22)}"
            t = self.end_t - int(3 * 365 * DAY * r()) - 3600
            mobile = p.phone if r() < 0.15 else ""
            row = [
                appid,
                account,
                openid,
                p.unionid,
                p.wx_nick,
                str(t - TZ_SECONDS),
                SCENES[int(r() * len(SCENES))],
                mobile,
            ]
            self.sink.add("wechat_followers", t, row, f"{appid}:{openid}", p.pid)

    def emit_optouts(self, p: Person) -> None:
        r = self.r
        if not p.member_no or r() >= 0.043:
            return
        channel = OPTOUT_CHANNELS[int(r() * len(OPTOUT_CHANNELS))]
        if channel == "email" and not p.email:
            channel = "sms"
        t = self.window_start + int(r() * WINDOW_DAYS * DAY)
        self._optout(p, channel, t)
        if channel == "sms" and p.email and r() < 0.25:
            self._optout(p, "email", t + int(r() * 60 * DAY))

    def _optout(self, p: Person, channel: str, t: int) -> None:
        r = self.r
        phone = ""
        if channel != "email":
            phone = p.phone if r() < 0.85 else messy_phone(p.phone, r())
        email = p.email if p.email and channel in ("email", "all") else ""
        row = [phone, email or "", channel, local_str(t), OPTOUT_SOURCE[channel]]
        self.sink.add("optouts", t, row, phone or email, p.pid)

    def write_coupon_pools(self) -> None:
        """Unassigned codes journeys can draw from (no owner, so no truth rows)."""
        expires = local_str(self.end_t + 180 * DAY - 1)
        for campaign, percent in (("WINBACK20", 20), ("BIRTHDAY50", 14), ("WELCOME10", 14)):
            count = max(1, -(-self.customers * percent // 100))
            rows: list[list[str]] = []
            for _ in range(count):
                code = self.next_coupon_code(campaign)
                face = money(CAMPAIGNS[campaign][1])
                rows.append([code, campaign, face, "available", "", "", expires, "", ""])
                if len(rows) >= 10_000:
                    self.sink.write_direct("coupons", rows)
                    rows = []
            self.sink.write_direct("coupons", rows)


def event_line(
    event_id: str,
    event: str,
    ms: int,
    iso: bool,
    device: str,
    user_json: str,
    platform: str,
    props: str,
) -> str:
    """One app event as JSON; ``ms`` is local (UTC+8) milliseconds, ``user_json`` raw JSON."""
    ts = f'"{local_iso_ms(ms)}"' if iso else str(ms - TZ_SECONDS * 1000)
    return (
        f'{{"event_id": "{event_id}", "event": "{event}", "ts": {ts}, '
        f'"device_id": "{device}", "user_id": {user_json}, "platform": "{platform}", '
        f'"properties": {props}}}'
    )


# --------------------------------------------------------------------------------------------
# Hand-made edge cases (--edge-cases). Everything below is written by hand on purpose; the
# sample_data/README.md lists each case with its file and key. CRM rows are written as
# "|"-separated strings in the 13 CRM columns (会员编号|姓名|性别|手机号|邮箱|生日|城市|职位|
# 注册时间|注册门店|会员等级|积分|微信UnionID). Dates assume the default --end-date.
# --------------------------------------------------------------------------------------------

LI_NA_UNIONID = "o6_bmLiNa7Qw2Er5Ty8Ui3Op6AsD"
LI_NA_OPENID = "oXq3ZtLiNa00Kd8Fh2Jk4Lm6NpQr"
LI_NA_DEVICE = "5F3C2A10-7B4E-4C1D-9A8E-1D2C3B4A5E60"
ANON_DEVICE = "A1B2C3D4-0000-4000-8000-00000000A0A0"
ZHOU_QIANG = (
    "M0000005|周强|男|027-8765 4321||1985-11-02|武汉|工程师|2025-01-15 11:20|武汉光谷店|普通|320|"
)
ZERO_DEVICE = "00000000-0000-0000-0000-000000000000"
TABLET_DEVICE = "TABLET-WH001-POS"


def add_edge_cases(g: Generator) -> None:
    edge = EdgeCases(g)
    edge.li_na()
    edge.masked_marketplace_phone()
    edge.landlines()
    edge.blocklisted_values()
    edge.shared_store_tablet()
    edge.anonymous_app_user()
    edge.blank_duplicate_and_broken_rows()
    edge.two_phones_and_family_email()
    edge.messy_and_idn_emails()


class EdgeCases:
    """Adds hand-written people (ids after the generated ones) and junk rows to the sink."""

    def __init__(self, g: Generator) -> None:
        self.g = g
        self.sink = g.sink
        self.next_pid = g.customers + 1

    def person(self) -> str:
        pid = f"P{self.next_pid:07d}"
        self.next_pid += 1
        return pid

    # -- row builders --------------------------------------------------------------------------

    def crm(self, pid: str | None, text: str, source: str = "crm_members") -> list[str]:
        """One CRM row from ``"a|b|..."``; ``pid`` None => a reject without truth row."""
        row = text.split("|")
        assert len(row) == len(CRM_HEADER), row
        key = row[0] or "M0100050~"  # sort position of the row with an empty 会员编号
        self.sink.add(source, key, row, row[0] if pid else None, pid)
        return row

    def pos(
        self, pid: str | None, order_no: str, store: int, phone: str, paid_at: str, skus: str
    ) -> list[str]:
        code, name, _ = STORES[store]
        items = [CATALOG[SKU_INDEX[s]] for s in skus.split()]
        top = max(items, key=lambda c: c[3])
        row = [
            order_no,
            code,
            name,
            phone,
            paid_at,
            money(sum(c[3] for c in items)),
            str(len(items)),
            top[2],
            "微信支付",
            f"{code}-03",
        ]
        self.sink.add("pos_orders", at(paid_at), row, order_no if pid else None, pid)
        return row

    def shop(
        self,
        pid: str,
        order_id: str,
        platform: str,
        created: str,
        buyer: dict[str, Any],
        skus: str,
        coupon: tuple[str, int] | None = None,
        city: tuple[str, str] = ("湖北", "武汉"),
    ) -> None:
        items = [CATALOG[SKU_INDEX[s]] for s in skus.split()]
        total = sum(c[3] for c in items) - (coupon[1] if coupon else 0)
        order = {
            "order_id": order_id,
            "platform": platform,
            "created": local_iso(at(created)),
            "payment": money(total),
            "status": "paid",
            "buyer": buyer,
            "items": [
                {"sku": c[0], "name": c[1], "category": c[2], "price": float(c[3]), "qty": 1}
                for c in items
            ],
            "coupon_code": coupon[0] if coupon else None,
            "shipping": {"province": city[0], "city": city[1]},
        }
        line = json.dumps(order, ensure_ascii=False)
        self.sink.add("shop_orders", at(created), line, order_id, pid)

    def event(
        self,
        pid: str | None,
        ms: int,
        event: str,
        device: str,
        user_json: str,
        platform: str = "ios",
        props: str = "{}",
    ) -> None:
        """``ms`` in local milliseconds; ``pid`` None => junk event without truth row."""
        eid = self.g.next_event_id()
        line = event_line(eid, event, ms, False, device, user_json, platform, props)
        self.sink.add("app_events", ms, line, eid if pid else None, pid)

    def browse(self, pid: str, start: str, device: str, user_json: str, n: int, plat: str) -> None:
        """``n`` events about a minute apart: app_open, then views and searches."""
        ms = at(start) * 1000 + 123
        self.event(pid, ms, "app_open", device, user_json, plat)
        for k in range(1, n):
            search = k % 4 == 2
            event = "search" if search else "view_item"
            props = SEARCHES[k % len(SEARCHES)] if search else SKU_PROPS[(k * 7) % len(CATALOG)]
            self.event(pid, ms + k * 61_000, event, device, user_json, plat, props)

    # -- the cases -----------------------------------------------------------------------------

    def li_na(self) -> None:
        """One person, one phone 13800138000, written four different ways across sources."""
        pid = self.person()
        member = '"M0000001"'
        self.crm(
            pid,
            "M0000001|李娜|女|+86 138 0013 8000|Li.Na@Example.COM |1992-08-16|武汉市|设计师|"
            f"2025/03/08 20:15:00|官网|金卡|3120|{LI_NA_UNIONID}",
        )
        self.browse(pid, "2025-03-08 20:02:10", LI_NA_DEVICE, "null", 4, "ios")
        ms = at("2025-03-08 20:15:00") * 1000
        phone = '{"phone": "13800138000"}'
        self.event(pid, ms, "register", LI_NA_DEVICE, member, "ios", phone)
        self.event(pid, ms + 30_000, "view_item", LI_NA_DEVICE, member, "ios", SKU_PROPS[0])
        ms = at("2025-03-09 10:19:40") * 1000
        order = '{"order_id": "SO2025030988000001", "amount": 288.00}'
        self.event(pid, ms, "app_open", LI_NA_DEVICE, member)
        self.event(pid, ms + 40_000, "add_to_cart", LI_NA_DEVICE, member, "ios", SKU_PROPS[0])
        self.event(pid, ms + 85_000, "order", LI_NA_DEVICE, member, "ios", order)
        buyer = {"mobile": "0086 13800138000", "email": "li.na@example.com", "nick": "娜娜"}
        created = "2025-03-09 10:21:05"
        coupon = ("WC-LN8X2Q", 10)
        self.shop(pid, "SO2025030988000001", "own_shop", created, buyer, "SK-1001 SK-1007", coupon)
        issued = "2025-03-08 20:17:00"
        row = "WC-LN8X2Q|WELCOME10|10.00|redeemed|" + issued
        row += f"|{created}|2025-04-07 23:59:59|M0000001|13800138000"
        self.sink.add("coupons", issued, row.split("|"), "WC-LN8X2Q", pid)
        paid = "2025-04-12 15:30:11"
        self.pos(pid, "WH001-20250412-9001", 0, "138-0013-8000", paid, "SK-2001 SK-1012")
        appid, account, _ = ACCOUNTS[0]
        t = at("2025-03-10 09:00:00")
        subscribed = str(t - TZ_SECONDS)
        row = [appid, account, LI_NA_OPENID, LI_NA_UNIONID, "Lina🌸", subscribed, SCENES[0], ""]
        self.sink.add("wechat_followers", t, row, f"{appid}:{LI_NA_OPENID}", pid)

    def masked_marketplace_phone(self) -> None:
        """Three different people whose marketplace orders all show 138****0002."""
        people = (
            ("M0000002|陈静|女|13812340002", "tb2208461735", "tb2208461735"),
            ("M0000003|刘洋|男|13856780002", "jd_5c1e2f0a9b37", "tb9031847265"),
            ("M0000004|黄丽|女|13890120002", "tb7730152948", "jd_0a7d93e4b215"),
        )
        orders = iter(
            (
                ("SO2025052088000002", "2025-05-20 21:03:11"),
                ("SO2025061888000003", "2025-06-18 00:12:45"),
                ("SO2025070188000004", "2025-07-01 20:30:00"),
                ("SO2025071588000005", "2025-07-15 13:14:15"),
                ("SO2025080888000006", "2025-08-08 22:22:22"),
                ("SO2025081188000007", "2025-08-11 00:05:31"),
            )
        )
        for k, (who, nick1, nick2) in enumerate(people):
            pid = self.person()
            self.crm(
                pid, f"{who}||1991-04-0{k + 2}|上海||2024/11/20 14:00:00|上海南京西路店|银卡|1500|"
            )
            for nick in (nick1, nick2):
                order_id, created = next(orders)
                platform = "jd" if nick.startswith("jd_") else "tmall"
                buyer: dict[str, Any] = {"mobile": "138****0002", "nick": nick}
                if platform == "jd":
                    buyer["email"] = None
                self.shop(
                    pid, order_id, platform, created, buyer, "SK-2002", None, ("上海", "上海")
                )

    def landlines(self) -> None:
        """Landline numbers typed into 手机号 (not mobiles: never phone identifiers)."""
        self.crm(
            self.person(),
            ZHOU_QIANG,
        )
        self.crm(
            self.person(),
            "M0000006|吴敏|女|(010) 6552 8899|wumin1988@sina.com|1988-07-21|Beijing|教师|"
            "2025/02/01 16:45:00|北京西单店|普通|210|",
        )

    def blocklisted_values(self) -> None:
        """Test / placeholder values, each shared by unrelated records."""
        rows = (
            "M0000007|赵磊|男|13800000000|zhaolei77@163.com|1977-03-03|北京市||"
            "2025/04/01 10:00:00|北京国贸店|普通|100|",
            "M0000008|孙悦|女|13800000000||1999-09-09|北京|学生|2025-04-02 18:30|北京三里屯店|"
            "普通|100|",
            "M0000009|马超|男|18607140009|test@example.com||Wuhan|销售经理|2025/04/03 12:00:00|"
            "武汉武商广场店|普通|160|",
            "M0000010|朱琳|女|15927000010|test@example.com|1996-12-12|wuhan|护士|"
            "2025/04/04 15:10:00|武汉江汉路店|普通|100|",
        )
        for text in rows:
            self.crm(self.person(), text)
        # the cashier typed a placeholder: the sale belongs to nobody identifiable (no truth)
        self.pos(None, "WH002-20250705-9002", 1, "00000000000", "2025-07-05 16:20:00", "SK-4005")
        # SDK bug: zero device id and the *string* "null" as user_id (no truth)
        ms = at("2025-09-01 08:00:00") * 1000 + 1
        self.event(None, ms, "app_open", ZERO_DEVICE, '"null"', "android")

    def shared_store_tablet(self) -> None:
        """12 members log in on the same in-store tablet: 12 different people."""
        people = (
            ("M0000011", "刘婷", "首席营销官", "武汉"),
            ("M0000012", "陈思", "CMO", "武汉市"),
            ("M0000013", "杨雪", "首席营销官", "Wuhan"),
            ("M0000014", "王佳", "CMO", "wuhan"),
            ("M0000015", "张悦", "首席营销官", "武汉"),
            ("M0000016", "李梦", "CMO", "武汉市"),
            ("M0000017", "黄晓", "市场总监", "武汉"),
            ("M0000018", "赵琪", "Marketing Director", "Wuhan"),
            ("M0000019", "周颖", "教师", "武汉"),
            ("M0000020", "吴倩", "", "武汉市"),
            ("M0000021", "徐露", "学生", "wuhan"),
            ("M0000022", "孙蕾", "工程师", "武汉"),
        )
        for k, (member, name, title, city) in enumerate(people):
            pid = self.person()
            phone = f"1357101{int(member[-2:]):04d}"
            day = f"2026-0{1 + k % 9}-1{k % 10}"
            birthday = f"199{k % 10}-0{1 + k % 9}-1{k % 10}"
            self.crm(
                pid,
                f"{member}|{name}|女|{phone}||{birthday}|{city}|{title}|{day} 11:00|武汉江汉路店"
                "|普通|300|",
            )
            ms = at(f"{day} 11:20:00") * 1000 + 7 * k
            self.event(None, ms, "app_open", TABLET_DEVICE, "null", "android")  # no owner
            user = f'"{member}"'
            for offset, event, props in (
                (20_000, "login", "{}"),
                (50_000, "view_item", SKU_PROPS[k]),
                (90_000, "view_item", SKU_PROPS[k + 12]),
                (130_000, "add_to_cart", SKU_PROPS[k]),
            ):
                self.event(pid, ms + offset, event, TABLET_DEVICE, user, "android", props)
            order_no = f"WH001-{day.replace('-', '')}-{9100 + k}"
            row = self.pos(pid, order_no, 0, phone, f"{day} 11:35:00", CATALOG[k][0])
            if k == 0:  # exact duplicate line (an export glitch): one truth row only
                self.sink.add("pos_orders", at(f"{day} 11:35:00"), list(row), None, None)

    def anonymous_app_user(self) -> None:
        """33 anonymous events over 6 days, then register as M0009001, then logged in."""
        pid = self.person()
        for d in range(5):
            start = f"2026-02-0{1 + d} {19 + d}:0{d}:00"
            self.browse(pid, start, ANON_DEVICE, "null", 7 if d < 4 else 4, "android")
        ms = at("2026-02-06 21:10:00") * 1000
        self.event(pid, ms - 60_000, "app_open", ANON_DEVICE, "null", "android")
        phone = '{"phone": "13912345678"}'
        self.event(pid, ms, "register", ANON_DEVICE, '"M0009001"', "android", phone)
        self.browse(pid, "2026-02-06 21:12:00", ANON_DEVICE, '"M0009001"', 4, "android")
        self.browse(pid, "2026-02-09 12:30:00", ANON_DEVICE, '"M0009001"', 4, "android")
        self.crm(
            pid,
            "M0009001|林晓雯|女|13912345678||1998-06-30|成都|学生|2026-02-06 21:10|官网|普通|100|",
        )

    def blank_duplicate_and_broken_rows(self) -> None:
        """Blank lines, exact duplicates and rejects (rejects have no truth rows)."""
        s = self.sink
        s.add("crm_members", "M0000005~", [], None, None)  # empty line
        s.add("crm_members", "M0100100~", [], None, None)  # empty line
        s.add("crm_members", "M0100200~", [""] * len(CRM_HEADER), None, None)  # ,,,,,,,,,,,,
        # exact duplicate of 周强's row, right after it
        s.add("crm_members", "M0000005", ZHOU_QIANG.split("|"), None, None)
        self.person()  # 郭敏: her only row has an empty 会员编号 (reject)
        self.crm(
            None,
            "|郭敏|女|15827300005|guomin@126.com|1993-05-05|广州||2025/06/06 12:00:00|"
            "广州天河城店|普通|0|",
        )
        # 1990-02-30 does not exist; the row stays valid (birthday is optional)
        self.crm(
            self.person(),
            "M0000024|何静|女|13971200024||1990-02-30|Chengdu|会计|2025/05/20 13:14:00|成都春熙路店"
            "|普通|150|",
        )
        self.person()  # 曹芳: her legacy row holds bytes that are not GBK (reject)
        self.crm(
            None,
            f"M0000025|曹{BAD_GBK_MARK}芳|女|13396600025||1980-01-01|广州||2018/03/03 10:00:00"
            "|广州北京路店|普通|80|",
            "crm_members_legacy_gbk",
        )
        bad = (
            ("WH003-20250815-9003", 2, "N/A", "2025-08-15 12:00:00", 10),
            ("BJ001-20250816-9004", 3, "12,5x", "2025-08-16 12:00:00", 10),
            ("SH001-20250817-9005", 6, "59.00", "2025-13-45 25:61:00", 10),  # impossible time
            ("GZ001-20250818-9006", 8, "89.00", "2025-08-18 12:00:00", 9),  # one comma fewer
            ("CD001-20250819-9007", 10, "99.00", "2025-08-19 12:00:00", 11),  # one column more
        )
        for k, (order_no, store, amount, paid, ncols) in enumerate(bad):
            code, name, _ = STORES[store]
            row = [order_no, code, name, "", paid, amount, "1", "护肤", "微信支付", f"{code}-01"]
            if ncols == 9:
                del row[8]
            elif ncols == 11:
                row.append("备注:赠品")
            s.add("pos_orders", at("2025-08-15 12:00:00") + k * DAY, row, None, None)
        t = at("2025-08-20 12:00:00")
        bad_created = {"order_id": "SO2025082088000090", "platform": "own_shop"}
        bad_created |= {"created": "yesterday", "payment": "99.00", "status": "paid"}
        bad_created |= {"buyer": {"mobile": "13971200024"}, "items": [], "coupon_code": None}
        bad_payment = {"order_id": "SO2025082188000091", "platform": "own_shop"}
        bad_payment |= {"created": "2025-08-21T12:00:00+08:00", "payment": "abc"}
        bad_payment |= {"status": "paid", "buyer": {"mobile": "13971200024"}, "items": []}
        lines = (
            json.dumps(bad_created, ensure_ascii=False),
            json.dumps(bad_payment, ensure_ascii=False),
            '{"order_id": "SO2025082288000092", "platform": "tmall", "crea',  # truncated
            '["SO2025082388000093", "own_shop", "2025-08-23T10:00:00+08:00"]',  # not an object
            "",  # empty line
        )
        for k, line in enumerate(lines):
            s.add("shop_orders", t + k * DAY, line, None, None)
        s.add("app_events", (t + 5 * DAY) * 1000, "", None, None)  # empty line

    def two_phones_and_family_email(self) -> None:
        """杨帆 changed phone (linked by 会员编号 + email); 王芳 and 王磊 share one email."""
        pid = self.person()
        old = "M0000026|杨帆|男|13512345001|yang.fan@126.com|1987-10-10|北京|产品经理|"
        old += "2019/05/04 19:00:00|北京三里屯店|银卡|2600|"
        self.crm(pid, old, "crm_members_legacy_gbk")
        new = "M0000026|杨帆|男|18612345002|yang.fan@126.com|1987-10-10|北京市|产品经理|"
        new += "2019/05/04 19:00:00|北京三里屯店|金卡|5400|"
        self.crm(pid, new)
        self.pos(pid, "BJ001-20250110-9008", 3, "13512345001", "2025-01-10 19:40:00", "SK-3004")
        paid = "2025-12-20 14:10:00"
        self.pos(pid, "BJ002-20251220-9009", 4, "18612345002", paid, "SK-3002 SK-4005")
        buyer = {"mobile": "18612345002", "email": "yang.fan@126.com", "nick": "fan"}
        created = "2026-03-15 21:05:00"
        self.shop(
            pid, "SO2026031588000010", "own_shop", created, buyer, "SK-5003", None, ("北京", "北京")
        )
        family = (
            ("M0000027|王芳|女|13923456001", "SO2025092088000011", "2025-09-20 20:00:00"),
            ("M0000028|王磊|男|18923456002", "SO2025100288000012", "2025-10-02 09:30:00"),
        )
        for who, order_id, created in family:
            pid = self.person()
            row = self.crm(
                pid, f"{who}|family.wang@163.com||武汉||2025/01/01 10:00:00|武汉江汉路店|普通|500|"
            )
            buyer = {"mobile": row[3], "email": "family.wang@163.com", "nick": row[1]}
            self.shop(pid, order_id, "own_shop", created, buyer, "SK-1002")

    def messy_and_idn_emails(self) -> None:
        pid = self.person()
        self.crm(
            pid,
            "M0000029|张敏|女|15071230029|  ZHANG.Min@QQ.com|1994-02-14|Guangzhou|CMO|"
            "2025/02/14 14:00:00|广州天河城店|普通|300|",
        )
        buyer = {"mobile": "15071230029", "email": "zhang.min@qq.com", "nick": "敏敏"}
        created = "2025-11-11 00:01:02"
        self.shop(
            pid, "SO2025111188000013", "own_shop", created, buyer, "SK-5001", None, ("广东", "广州")
        )
        pid = self.person()
        self.crm(
            pid,
            "M0000030|汪芳|女|13396600030|WANGFANG@163.COM|1989/3/8|上海市|首席营销官|"
            "2025-03-08 09:00|上海淮海中路店|普通|100|",
        )
        when = "2025-10-10 10:10:10"
        row = ["", "wangfang@163.com", "email", when, "邮件退订链接"]
        self.sink.add("optouts", at(when), row, "wangfang@163.com", pid)
        self.crm(
            self.person(),
            "M0000031|欧阳雪|女|18971000031|用户@例子.中国|2000-01-01|深圳|设计师|"
            "2025/06/01 12:00:00|官网|普通|100|",
        )


# --------------------------------------------------------------------------------------------
# Public API and CLI
# --------------------------------------------------------------------------------------------


def generate(
    out_dir: Path,
    customers: int,
    events: int | None = None,
    seed: int = 7,
    end_date: date = date(2026, 11, 15),
    edge_cases: bool = False,
    latent: bool = False,
) -> dict[str, int]:
    """Write all exports and ``truth.csv`` into ``out_dir``; return data lines per file. With
    ``latent``, purchases follow the latent buying process, written to truth_latent.csv."""
    if customers < 0 or (events is not None and events < 0):
        raise ValueError("customers and events must be >= 0")
    return Generator(Path(out_dir), customers, events, seed, end_date, edge_cases, latent).run()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--customers", type=int, required=True, help="number of people")
    parser.add_argument("--events", type=int, default=None, help="app events (default 15 x N)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end-date", type=date.fromisoformat, default=date(2026, 11, 15))
    parser.add_argument(
        "--edge-cases",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add the hand-made edge cases (meant for the shipped sample)",
    )
    parser.add_argument(
        "--latent-purchases",
        action="store_true",
        help="purchases follow BG/NBD and Gamma-Gamma with known parameters, written to "
        "truth_latent.csv (the ground truth of cdp predict)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    counts = generate(
        args.out,
        args.customers,
        args.events,
        args.seed,
        args.end_date,
        args.edge_cases,
        args.latent_purchases,
    )
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    for name, n in counts.items():
        print(f"{name:32s} {n:>12,d}", file=sys.stderr)
    print(
        f"{total:,d} lines in {elapsed:.1f}s ({total / max(elapsed, 1e-9):,.0f}/s)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
