"""Identifiers and fields a project declares: custom identifier types over any column, fields
built from several columns, and the strip/upper/digits normalizers."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from cdp_cli.identity.fields import join_parts, normalized
from tests.conftest import query

PARTNER = """
sources:
  partner:
    kind: customers
    format: csv
    key: pid
    fields: {card: {from: 卡号, normalize: digits}, name: {from: [姓, 名]}, phone: 手机}
  shop:
    kind: orders
    format: csv
    key: oid
    fields: {card: card_no, amount: amt, ordered_at: t}
identity:
  loyalty_card: {fields: [card], max_per_profile: 1}
"""


def one_id_of(db, source, key):
    return query(db, "SELECT one_id FROM id_mapping WHERE source = ? AND key = ?", source, key)[0][
        0
    ]


def setup_partner(run, write, config=PARTNER, partner=None, shop=None):
    write("cdp.yaml", config)
    write(
        "partner.csv",
        partner
        or "pid,卡号,姓,名,手机\n1,8800-1234,张,伟,13800138000\n2,8800 9999,王,芳,\n3,,Li,Na,\n",
    )
    write(
        "shop.csv",
        shop or "oid,card_no,amt,t\no1,88001234,10,2025-01-01\no2,88009999,5,2025-01-02\n",
    )
    assert run("ingest", "--source", "partner", "partner.csv").exit_code == 0
    assert run("ingest", "--source", "shop", "shop.csv").exit_code == 0
    result = run("resolve")
    assert result.exit_code == 0, result.output


def test_a_custom_identifier_over_any_column_links_orders_to_members(run, write, tmp_path):
    setup_partner(run, write)
    db = tmp_path / "cdp.db"
    # The card written "8800-1234" and "88001234" is one value after `normalize: digits`.
    assert one_id_of(db, "partner", "1") == one_id_of(db, "shop", "o1")
    assert one_id_of(db, "partner", "2") == one_id_of(db, "shop", "o2")
    assert one_id_of(db, "partner", "1") != one_id_of(db, "partner", "2")
    assert query(db, "SELECT value FROM identifiers WHERE type = 'loyalty_card' ORDER BY 1") == [
        ("88001234",),
        ("88009999",),
    ]
    # The columns of a field of one's own are kept in attrs, as written.
    assert json.loads(query(db, "SELECT attrs FROM customers WHERE key = '1'")[0][0]) == {
        "卡号": "8800-1234"
    }


def test_a_field_from_several_columns_joins_with_the_locale_separator(run, write, tmp_path):
    setup_partner(run, write)
    names = dict(query(tmp_path / "cdp.db", "SELECT key, name FROM customers"))
    assert names == {"1": "张伟", "2": "王芳", "3": "Li Na"}


def test_custom_identifier_guards_max_per_profile(run, write, tmp_path):
    # One member, two cards on two rows of a partner export that share the phone: the
    # second card would give one customer two cards, so its link is refused.
    setup_partner(
        run,
        write,
        partner="pid,卡号,姓,名,手机\n1,8800-1234,张,伟,13800138000\n2,8800-5555,张,伟,13800138000\n",
        shop="oid,card_no,amt,t\no1,88001234,10,2025-01-01\n",
    )
    db = tmp_path / "cdp.db"
    refused = query(
        db,
        "SELECT i.value, r.reason FROM refused_links r JOIN identifiers i ON i.id = r.identifier_id",
    )
    assert refused == [("88005555", "a customer holds at most 1 loyalty_card")]


def test_custom_identifier_guards_max_profiles_per_value_and_blocklist(run, write, tmp_path):
    config = PARTNER.replace(
        "loyalty_card: {fields: [card], max_per_profile: 1}",
        "loyalty_card: {fields: [card], max_profiles_per_value: 1}\n"
        "  member_no: {max_per_profile: 1}\n"
        "  blocklist: ['88000000']\n"
        "  priority: [phone, loyalty_card]",
    )
    setup_partner(
        run,
        write,
        config=config,
        partner="pid,卡号,姓,名,手机\n1,8800-1234,张,伟,13800138000\n2,8800-1234,王,芳,13900139000\n"
        "3,8800-0000,Li,Na,13700137000\n",
        shop="oid,card_no,amt,t\no1,88001234,10,2025-01-01\no2,88000000,3,2025-01-01\n",
    )
    db = tmp_path / "cdp.db"
    # A card seen with two known customers joins neither; the blocklisted one identifies no one.
    assert one_id_of(db, "partner", "1") != one_id_of(db, "partner", "2")
    assert one_id_of(db, "shop", "o1") is None
    assert query(db, "SELECT reason FROM unusable_values WHERE type = 'loyalty_card'") == [
        ("blocklisted: in identity.blocklist of cdp.yaml",),
        ("blocklisted: in identity.blocklist of cdp.yaml",),
    ]


def test_a_platform_scoped_nickname_from_a_constant_and_a_column(run, write, tmp_path):
    write(
        "cdp.yaml",
        """
        sources:
          taobao:
            kind: orders
            format: csv
            key: oid
            fields: {platform: "=taobao", nick: 买家昵称, amount: amt, ordered_at: t}
          jd:
            kind: orders
            format: csv
            key: oid
            fields: {platform: "=jd", nick: buyer, amount: amt, ordered_at: t}
        identity:
          marketplace_nick: {fields: [platform, nick]}
        """,
    )
    write("tb.csv", "oid,买家昵称,amt,t\nt1,小明,1,2025-01-01\nt2,小明,2,2025-01-02\n")
    write("jd.csv", "oid,buyer,amt,t\nj1,小明,1,2025-01-01\n")
    assert run("ingest", "--source", "taobao", "tb.csv").exit_code == 0
    assert run("ingest", "--source", "jd", "jd.csv").exit_code == 0
    assert run("resolve").exit_code == 0
    db = tmp_path / "cdp.db"
    # The same nickname on two platforms is two buyers.
    assert one_id_of(db, "taobao", "t1") == one_id_of(db, "taobao", "t2")
    assert one_id_of(db, "taobao", "t1") != one_id_of(db, "jd", "j1")
    assert sorted(query(db, "SELECT value FROM identifiers")) == [("jd|小明",), ("taobao|小明",)]


def test_an_unknown_field_not_declared_under_identity_is_still_refused(run, write):
    write(
        "cdp.yaml",
        "sources:\n  crm:\n    kind: customers\n    fields: {first_name: fn}\n",
    )
    result = run("status")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        "cdp.yaml:4: sources.crm.fields: 'first_name' is not a field of kind customers "
        "(a field of your own is named under identity:, e.g. in first_name_id: "
        "{fields: [first_name]})"
    )


def test_a_custom_field_whose_column_is_missing_fails_the_file(run, write):
    write("cdp.yaml", PARTNER)
    write("partner.csv", "pid,姓,名,手机\n1,张,伟,13800138000\n")
    result = run("ingest", "--source", "partner", "partner.csv")
    assert result.exit_code == 1
    assert "column '卡号' (for card) is not in the header" in result.output


def test_a_bad_normalizer_names_the_line(run, write):
    write("cdp.yaml", PARTNER.replace("normalize: digits", "normalize: digit"))
    result = run("status")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        "cdp.yaml:6: sources.partner.fields.card.normalize: 'digit' is not one of strip, "
        "upper, digits (did you mean 'digits'?)"
    )


# ---------------------------------------------------------------------------------------------
# The normalizers and joining, as properties

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(texts)
def test_every_normalizer_is_idempotent(text):
    for name in ("strip", "upper", "digits"):
        once = normalized(text, [name])
        assert normalized(once, [name]) == once


@given(texts)
def test_digits_keeps_only_decimal_digits_in_order_as_ascii(text):
    value = normalized(text, ["digits"])
    expected = "".join(str(unicodedata.decimal(c)) for c in text if c.isdecimal())
    assert value == (expected or None)
    assert value is None or value.isascii()


@given(st.text("张王李伟芳娜明", min_size=1, max_size=3), st.text("张王李伟芳娜明", min_size=1))
def test_chinese_parts_join_without_a_space(surname, given_name):
    assert join_parts([surname, given_name]) == surname + given_name


@given(
    st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True),
    st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True),
    st.sampled_from(["", " ", "  "]),
)
def test_latin_parts_join_with_one_space_and_empty_ones_are_left_out(surname, given, pad):
    assert join_parts([pad + surname + pad, None, pad, given]) == f"{surname} {given}"
    assert join_parts([pad, None]) is None


@given(texts)
def test_strip_leaves_no_outer_or_doubled_white_space(text):
    value = normalized(text, ["strip"])
    if value is not None:
        assert value == value.strip() and "  " not in value
        assert unicodedata.normalize("NFKC", value) == value
