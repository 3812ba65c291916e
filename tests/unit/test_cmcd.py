"""CMCD (CTA-5004) payloads: parsing, the errors a bad payload gets, the two transports, and fuzzing."""

from __future__ import annotations

import contextlib
import doctest
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ott import cmcd
from ott.cmcd import Cmcd, CmcdError, Token

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True)


def test_doctests() -> None:
    result = doctest.testmod(cmcd)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_version_1_key() -> None:
    payload = ('bl=21300,br=3200,bs,cid="lab-clock",d=4004,dl=18500,mtp=25400,nor="..%2F300kbps%2Fseg_00002.m4s",'
               'nrr="12323-48763",ot=av,pr=1.08,rtp=12000,sf=h,sid="6e2fb550-c457-11e9-bb97-0800200c9a66",st=v,su,'
               'tb=6000,v=1')
    assert cmcd.parse(payload) == Cmcd(
        bl=21300, br=3200, bs=True, cid="lab-clock", d=4004, dl=18500, mtp=25400, nor="..%2F300kbps%2Fseg_00002.m4s",
        nrr="12323-48763", ot="av", pr=1.08, rtp=12000, sf="h", sid="6e2fb550-c457-11e9-bb97-0800200c9a66", st="v",
        su=True, tb=6000, v=1)
    assert cmcd.format(cmcd.parse(payload)) == payload


def test_absent_keys_are_none_and_version_defaults_to_1() -> None:
    c = cmcd.parse("br=800")
    assert (c.bl, c.bs, c.sid, c.v, c.custom) == (None, None, None, None, {})
    assert c.version == 1
    assert not c.startup and not c.starved
    assert cmcd.parse("v=2").version == 2


def test_empty_payload_is_valid_and_empty() -> None:
    assert cmcd.parse("") == Cmcd()
    assert cmcd.parse("  ") == Cmcd()
    assert cmcd.format(Cmcd()) == ""


@pytest.mark.parametrize(("payload", "expected"), [
    ("bs", True), ("bs=false", False), ("bs=true", True), ("bs=?1", True), ("bs=?0", False),
])
def test_boolean_forms(payload: str, expected: bool) -> None:
    assert cmcd.parse(payload).bs is expected


def test_false_is_kept_apart_from_absent() -> None:
    c = cmcd.parse("su=false")
    assert c.su is False and not c.startup
    assert cmcd.format(c) == "su=false"


def test_strings_unescape() -> None:
    assert cmcd.parse(r'cid="a\"b\\c",sid=" , = "').cid == 'a"b\\c'
    assert cmcd.parse(r'cid="a\"b\\c",sid=" , = "').sid == " , = "
    assert cmcd.format(Cmcd(cid='a"b\\c')) == r'cid="a\"b\\c"'


def test_spaces_around_commas_are_tolerated() -> None:
    assert cmcd.parse(" br=800 ,\tbl=100 , su ") == Cmcd(br=800, bl=100, su=True)


def test_pr_accepts_an_integer() -> None:
    assert cmcd.parse("pr=2").pr == 2.0
    assert cmcd.format(Cmcd(pr=2.0)) == "pr=2.0"


def test_custom_keys_are_kept_with_their_type() -> None:
    c = cmcd.parse('com.example-n=500,com.example-s="x",com.example-t=fast,com.example-d=1.5,com.example-b,'
                   'com.example-f=false,com.example-neg=-3')
    assert c.custom == {"com.example-n": 500, "com.example-s": "x", "com.example-t": "fast", "com.example-d": 1.5,
                        "com.example-b": True, "com.example-f": False, "com.example-neg": -3}
    assert isinstance(c.custom["com.example-t"], Token)
    assert not isinstance(c.custom["com.example-s"], Token)
    assert cmcd.format(c) == ('com.example-b,com.example-d=1.5,com.example-f=false,com.example-n=500,'
                              'com.example-neg=-3,com.example-s="x",com.example-t=fast')


def test_format_sorts_keys() -> None:
    assert cmcd.format(cmcd.parse("su,br=1,ot=v,bl=2")) == "bl=2,br=1,ot=v,su"


@pytest.mark.parametrize(("payload", "message"), [
    ("br=abc", "CMCD key 'br': expected an integer, got the token abc"),
    ('br="3200"', "key 'br': expected an integer, got the string \"3200\""),
    ("br=3.2", "key 'br': expected an integer, got the decimal 3.2"),
    ("br", "key 'br': expected an integer, got a boolean"),
    ("br=-1", "key 'br': must not be negative"),
    ("br=1234567890123456", "more than 15 digits"),
    ("cid=lab-clock", "key 'cid': expected a quoted string, got the token lab-clock"),
    ("sid=12", "key 'sid': expected a quoted string, got the integer 12"),
    ("ot=x", "key 'ot': unknown token 'x'; expected one of m, a, v, av, i, c, tt, k, o"),
    ('ot="v"', "key 'ot': expected one of the tokens m, a, v, av, i, c, tt, k, o (unquoted), got the string"),
    ("sf=dash", "key 'sf': unknown token 'dash'"),
    ("st=x", "key 'st': unknown token 'x'; expected one of v, l"),
    ("br=1,br=2", "key 'br' appears more than once"),
    ("b" * 4097, "4097 characters long, more than the 4096 allowed"),
    ('cid="café"', "non-ASCII character at position 8"),
    ("BR=1", "expected a key, got 'B' (keys are lowercase)"),
    ("br=1,", "ends with a comma"),
    ("br=1;x", "expected ',' after key 'br', got ';'"),
    ("br=1 bl=2", "expected ',' after key 'br', got 'b'"),
    ("br=", "key 'br': '=' without a value"),
    ("br=,bl=1", "key 'br': '=' without a value"),
    ("br=1,,bl=2", "expected a key, got ','"),
    ("=1", "expected a key, got '='"),
    ("foo=1", "unknown key 'foo'"),
    ('cid="abc', "key 'cid': string has no closing quote"),
    (r'cid="a\nb"', "only \\\" and \\\\ are escapes"),
    ('cid="a\x01b"', "control character"),
    ('sid="' + "a" * 65 + '"', "key 'sid': is 65 characters long, more than the 64 allowed"),
    ('cid="' + "a" * 65 + '"', "key 'cid': is 65 characters long"),
    ('nrr="abc"', "key 'nrr': expected a byte range"),
    ('nrr="200-100"', "key 'nrr': expected a byte range"),
    ("v=0", "key 'v': the version is at least 1"),
    ("bs=yes", "key 'bs': a boolean is the bare key (true) or bs=false, got the token yes"),
    ("su=?2", "key 'su': a boolean is ?0 or ?1"),
    ("pr=fast", "key 'pr': expected a decimal, got the token fast"),
    ("pr=-1.0", "key 'pr': must not be negative"),
    ("pr=1.2345", "more than 12 integer or 3 fractional digits"),
    ("br=(3200 1500)", "inner lists (CMCD version 2) are not supported"),
    ("br=-x", "'-' must be followed by digits"),
    ("com.example-x=@", "unexpected '@'"),
])
def test_errors_name_the_key_and_the_problem(payload: str, message: str) -> None:
    with pytest.raises(CmcdError) as err:
        cmcd.parse(payload)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("payload", ['nrr="100-"', 'nrr="-500"', 'nrr="0-0"', 'nrr="100-199"'])
def test_byte_ranges(payload: str) -> None:
    assert cmcd.parse(payload).nrr == payload[5:-1]


# -- the two transports -----------------------------------------------------------------------


def test_query_argument_is_url_decoded() -> None:
    raw = "br%3D3200%2Cbl%3D21300%2Cot%3Dv%2Csid%3D%226e2fb550-c457-11e9-bb97-0800200c9a66%22"
    assert cmcd.from_request(raw, {}) == Cmcd(br=3200, bl=21300, ot="v", sid="6e2fb550-c457-11e9-bb97-0800200c9a66")


def test_headers_are_merged_and_matched_without_case() -> None:
    headers = {"cmcd-object": "br=3200,ot=v", "CMCD-REQUEST": "bl=21300,su", "CMCD-Session": 'sid="s1"',
               "CMCD-Status": "bs", "Accept": "*/*"}
    assert cmcd.from_request(None, headers) == Cmcd(br=3200, ot="v", bl=21300, su=True, sid="s1", bs=True)


def test_query_wins_over_headers() -> None:
    got = cmcd.from_request(quote("br=800,mtp=5000"), {"CMCD-Object": "br=3200,ot=v"})
    assert got == Cmcd(br=800, mtp=5000, ot="v")


def test_neither_transport_is_none() -> None:
    assert cmcd.from_request(None, {}) is None
    assert cmcd.from_request("", {h: "" for h in cmcd.HEADERS}) is None


def test_a_key_in_two_headers_is_an_error() -> None:
    with pytest.raises(CmcdError, match="CMCD-Status header key 'br' is also in the CMCD-Object header"):
        cmcd.from_request(None, {"CMCD-Object": "br=1", "CMCD-Status": "br=2"})


def test_errors_name_the_transport() -> None:
    with pytest.raises(CmcdError, match=r"^CMCD query argument key 'br'"):
        cmcd.from_request("br%3Dx", {})
    with pytest.raises(CmcdError, match=r"^CMCD-Session header key 'sid'"):
        cmcd.from_request(None, {"CMCD-Session": "sid=x"})
    # A value's type is checked where it came from, also when the other transport is fine.
    with pytest.raises(CmcdError, match=r"^CMCD-Object header key 'ot'"):
        cmcd.from_request(quote("br=1"), {"CMCD-Object": "ot=q"})


def test_bad_percent_encoding_is_a_cmcd_error() -> None:
    with pytest.raises(CmcdError, match="non-ASCII"):
        cmcd.from_request("cid%3D%22%FF%22", {})
    with pytest.raises(CmcdError, match="characters long encoded"):
        cmcd.from_request("%41" * 5000, {})


def test_to_query_and_to_headers() -> None:
    c = Cmcd(br=3200, bl=21300, ot="v", sid="s", su=True, bs=True, custom={"com.example-x": 1})
    assert cmcd.to_query(c) == "bl%3D21300%2Cbr%3D3200%2Cbs%2Ccom.example-x%3D1%2Cot%3Dv%2Csid%3D%22s%22%2Csu"
    assert cmcd.to_headers(c) == {"CMCD-Object": "br=3200,ot=v", "CMCD-Request": "bl=21300,com.example-x=1,su",
                                  "CMCD-Session": 'sid="s"', "CMCD-Status": "bs"}


# -- fuzzing -----------------------------------------------------------------------------------

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
_id = st.text(alphabet=_PRINTABLE, max_size=cmcd.MAX_ID_LENGTH)
_uint = st.integers(min_value=0, max_value=10**15 - 1)
_thousandths = st.integers(min_value=0, max_value=10**15 - 1).map(lambda n: n / 1000)
_range = st.one_of(
    st.tuples(_uint, _uint).map(lambda ab: f"{min(ab)}-{max(ab)}"),
    _uint.map(lambda a: f"{a}-"),
    _uint.map(lambda a: f"-{a}"),
)
_custom_key = st.from_regex(r"[a-z][a-z0-9.]{0,8}-[a-z0-9.-]{0,8}", fullmatch=True)
_token = st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]{0,10}", fullmatch=True).filter(
    lambda t: t not in ("true", "false")).map(Token)
_custom_value = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1).map(lambda n: n / 1000),
    st.text(alphabet=_PRINTABLE, max_size=20),
    _token,
)


def _opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


valid_cmcd = st.builds(
    Cmcd,
    br=_opt(_uint), bl=_opt(_uint), bs=_opt(st.booleans()), cid=_opt(_id), d=_opt(_uint), dl=_opt(_uint),
    mtp=_opt(_uint), nor=_opt(st.text(alphabet=_PRINTABLE, max_size=40)), nrr=_opt(_range),
    ot=_opt(st.sampled_from(cmcd.OBJECT_TYPES)), pr=_opt(_thousandths), rtp=_opt(_uint),
    sf=_opt(st.sampled_from(cmcd.STREAMING_FORMATS)), sid=_opt(_id), st=_opt(st.sampled_from(cmcd.STREAM_TYPES)),
    su=_opt(st.booleans()), tb=_opt(_uint), v=_opt(st.integers(min_value=1, max_value=10**15 - 1)),
    custom=st.dictionaries(_custom_key, _custom_value, max_size=4),
)

# Text made of the pieces of the syntax, so the fuzzer gets past the first character.
_pieces = st.sampled_from(["br", "bl", "bs", "cid", "sid", "ot", "sf", "st", "su", "pr", "nrr", "v", "com.x-y",
                           "=", ",", '"', "\\", "?", "?0", "?1", "(", ")", ";", " ", "-", ".", "0", "12", "3.5",
                           "true", "false", "v", "av", "h", "x", "é", "\x00", "%22", "%2C", "%3D", "%"])
cmcd_ish = st.lists(_pieces, max_size=30).map("".join)


@FUZZ
@given(st.text(max_size=200) | cmcd_ish)
def test_any_text_raises_only_cmcd_error(text: str) -> None:
    with contextlib.suppress(CmcdError):
        cmcd.parse(text)


@FUZZ
@given(st.text(max_size=200) | cmcd_ish,
       st.dictionaries(st.sampled_from([*cmcd.HEADERS, "cmcd-object", "X-Other"]), st.text(max_size=50) | cmcd_ish))
def test_any_request_raises_only_cmcd_error(query: str, headers: dict[str, str]) -> None:
    with contextlib.suppress(CmcdError):
        cmcd.from_request(query, headers)


@FUZZ
@given(cmcd_ish)
def test_what_parses_formats_back_to_the_same_value(text: str) -> None:
    try:
        parsed = cmcd.parse(text)
    except CmcdError:
        return
    assert cmcd.parse(cmcd.format(parsed)) == parsed


@FUZZ
@given(valid_cmcd)
def test_format_then_parse_round_trips(c: Cmcd) -> None:
    text = cmcd.format(c)
    parsed = cmcd.parse(text)
    assert parsed == c
    assert cmcd.format(parsed) == text


@FUZZ
@given(valid_cmcd)
def test_both_transports_round_trip(c: Cmcd) -> None:
    if c == Cmcd():
        assert cmcd.from_request(cmcd.to_query(c), cmcd.to_headers(c)) is None
        return
    assert cmcd.from_request(cmcd.to_query(c), {}) == c
    assert cmcd.from_request(None, cmcd.to_headers(c)) == c
    assert cmcd.from_request(cmcd.to_query(c), cmcd.to_headers(c)) == c

