"""Property tests for identifier normalization: every written form of a value is one value."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_cli.identity.normalize import Normalizer, email_key, identity_key, normalize_phone
from cdp_cli.identity.settings import IdentityRules
from cdp_cli.privacy import mask_email, mask_phone

PREFIXES = ["130", "135", "138", "139", "150", "186", "177", "199"]
mobiles = st.builds(
    lambda p, n: p + f"{n:08d}", st.sampled_from(PREFIXES), st.integers(10_000_000, 99_999_998)
)


def written_forms(number: str) -> list[str]:
    return [
        number,
        f"+86 {number[:3]} {number[3:7]} {number[7:]}",
        f"{number[:3]}-{number[3:7]}-{number[7:]}",
        f"0086 {number}",
        f"86-{number}",
        f"+86{number}",
        f" {number} ",
        f"({number[:3]}) {number[3:]}",
    ]


@given(mobiles)
def test_every_written_form_of_a_mobile_is_one_e164(number):
    assert {normalize_phone(form, "CN") for form in written_forms(number)} == {"+86" + number}


@given(mobiles)
def test_masked_phones_are_never_identifiers(number):
    normalizer = Normalizer(IdentityRules(), "CN")
    found, rejected = normalizer.identifiers({"phone": f"{number[:3]}****{number[-4:]}"})
    assert found == [] and rejected[0].reason == "masked"
    assert mask_phone("+86" + number) == f"{number[:3]}****{number[-4:]}"


local_parts = st.from_regex(r"[a-z][a-z0-9._]{0,15}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
domains = st.sampled_from(["qq.com", "163.com", "example.cn", "gmail.com", "例子.中国"])


@given(local_parts, domains, st.sampled_from(["", " ", "  \t"]))
def test_email_case_and_spaces_do_not_matter(local, domain, pad):
    written = f"{pad}{local.upper()}@{domain.upper()}{pad}"
    assert email_key(written) == email_key(f"{local}@{domain}")
    assert email_key(written).isascii() or "例" not in email_key(written)
    assert mask_email(email_key(written)).endswith("@" + email_key(written).split("@")[1])


@given(
    st.dictionaries(
        st.sampled_from(["phone", "email", "device_id", "member_no"]),
        st.text(min_size=1, max_size=12),
        min_size=1,
    )
)
def test_identity_key_depends_on_names_and_values_only(fields):
    items = list(fields.items())
    assert identity_key(items) == identity_key([*items, ("user_id", None)])
    assert identity_key(items) != identity_key([(f"x{name}", value) for name, value in items])


@given(st.text(max_size=20))
def test_normalizer_never_raises_and_caches(text):
    normalizer = Normalizer(IdentityRules(), "CN")
    fields = {"phone": text, "email": text, "device_id": text, "id_number": text, "member_no": text}
    first = normalizer.identifiers(fields)
    assert normalizer.identifiers(fields) == first


def _slow_parse(raw: str, region: str):
    """What phonenumbers.parse says, the way parse_phone says it: the reference."""
    import phonenumbers

    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, {1: "mobile", 0: "fixed_line", 2: "fixed_line_or_mobile"}.get(
        phonenumbers.number_type(number), "other"
    )


any_cn_number = st.builds(lambda n: f"1{n:010d}", st.integers(0, 9_999_999_999))


@given(
    any_cn_number, st.sampled_from(["{}", "+86{}", "0086 {}", "86-{}", "+86 {} ", "({}) ", "{}"])
)
def test_fast_path_agrees_with_phonenumbers(number, form):
    from cdp_cli.identity.normalize import parse_phone

    written = form.format(f"{number[:3]} {number[3:7]}-{number[7:]}" if "(" in form else number)
    parse_phone.cache_clear()
    assert parse_phone(written, "CN") == _slow_parse(written, "CN")


def _validator_key(raw: str):
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError:
        return None
    return f"{checked.local_part.lower()}@{checked.ascii_domain.lower()}"


email_like = st.text(alphabet="abcXYZ019._+-@'", min_size=1, max_size=24) | st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.from_regex(r"[a-zA-Z0-9._+-]{1,12}", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9-]{1,12}(\.[a-zA-Z0-9-]{1,8})?", fullmatch=True),
    st.sampled_from(["com", "cn", "c", "co", "test", "local", "COM", "xn--fiqs8s", "123", "onion"]),
)


@settings(max_examples=1000)
@given(email_like)
def test_plain_email_fast_path_agrees_with_email_validator(raw):
    from cdp_cli.identity.normalize import _plain_email

    fast = _plain_email(raw.strip())
    if fast is not None:
        assert fast == _validator_key(raw)
    email_key.cache_clear()
    assert email_key(raw) == _validator_key(raw)
