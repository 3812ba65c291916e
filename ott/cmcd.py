"""Common Media Client Data (CMCD, CTA-5004): what a player says about itself in each media request.

A player sends one payload per request, either as the query argument ``CMCD=`` (URL-encoded) or
split over four headers (``CMCD-Object``, ``CMCD-Request``, ``CMCD-Session``, ``CMCD-Status``).
A payload is a comma-separated list of ``key=value`` pairs: strings in double quotes, tokens,
integers and decimals bare, and a boolean as the bare key for true (``key=false`` for false).

>>> c = parse('bl=21300,br=3200,bs,cid="lab-clock",ot=v,sid="6e2fb550",su')
>>> c.br, c.bl, c.bs, c.ot, c.sid, c.su
(3200, 21300, True, 'v', '6e2fb550', True)
>>> format(c)
'bl=21300,br=3200,bs,cid="lab-clock",ot=v,sid="6e2fb550",su'
>>> from_request("br%3D3200%2Cot%3Dv", {"CMCD-Session": 'sid="abc"'}) == parse('br=3200,ot=v,sid="abc"')
True
>>> parse("br=3.2")
Traceback (most recent call last):
...
ott.cmcd.CmcdError: CMCD key 'br': expected an integer, got the decimal 3.2

This module implements version 1 of the specification (what the lab's player sends by default):
keys outside version 1 must be custom keys, with a hyphenated prefix (``com.example-key``); they
are kept, typed but not interpreted, in :attr:`Cmcd.custom`. Version 2's inner lists are rejected.

Strict where a wrong value would mislead a dashboard (a bitrate that is not an integer, an unknown
object type, a string without quotes, a repeated key); practical where players differ harmlessly:
spaces around commas, ``key=true`` / ``?1`` / ``?0`` for booleans, and keys in any order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, cast
from urllib.parse import quote, unquote

MAX_LENGTH = 4096
MAX_ID_LENGTH = 64  # cid and sid (CTA-5004: at most 64 characters)
# The four headers, in the order a merged payload's errors name them.
HEADERS = ("CMCD-Object", "CMCD-Request", "CMCD-Session", "CMCD-Status")
QUERY_ARG = "CMCD"

ObjectType = Literal["m", "a", "v", "av", "i", "c", "tt", "k", "o"]
StreamingFormat = Literal["d", "h", "s", "o"]
StreamType = Literal["v", "l"]
OBJECT_TYPES: tuple[str, ...] = ("m", "a", "v", "av", "i", "c", "tt", "k", "o")
STREAMING_FORMATS: tuple[str, ...] = ("d", "h", "s", "o")
STREAM_TYPES: tuple[str, ...] = ("v", "l")


class CmcdError(ValueError):
    """A CMCD payload that does not follow CTA-5004; the message names the key and the problem."""


class Token(str):
    """A bare token value of a custom key (``com.example-mode=fast``), as opposed to a quoted string."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Token({str.__repr__(self)})"


CustomValue = bool | int | float | str  # str includes Token


@dataclass(frozen=True, repr=False)
class Cmcd:
    """One request's CMCD; ``None`` is a key the player did not send."""

    br: int | None = None  # encoded bitrate, kbps
    bl: int | None = None  # buffer length, ms
    bs: bool | None = None  # buffer starvation since the last request
    cid: str | None = None  # content id
    d: int | None = None  # object duration, ms
    dl: int | None = None  # deadline, ms
    mtp: int | None = None  # measured throughput, kbps
    nor: str | None = None  # next object request (relative URL)
    nrr: str | None = None  # next range request ("<start>-<end>")
    ot: ObjectType | None = None  # object type
    pr: float | None = None  # playback rate
    rtp: int | None = None  # requested maximum throughput, kbps
    sf: StreamingFormat | None = None  # streaming format
    sid: str | None = None  # session id
    st: StreamType | None = None  # stream type (VOD, live)
    su: bool | None = None  # startup
    tb: int | None = None  # top bitrate, kbps
    v: int | None = None  # version (1 when absent)
    custom: Mapping[str, CustomValue] = field(default_factory=dict, hash=False)

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if getattr(self, f.name) is not None and f.name != "custom"]
        if self.custom:
            shown.append(f"custom={dict(self.custom)!r}")
        return f"Cmcd({', '.join(shown)})"

    @property
    def version(self) -> int:
        return 1 if self.v is None else self.v

    @property
    def startup(self) -> bool:
        return self.su is True

    @property
    def starved(self) -> bool:
        return self.bs is True


_INTEGER_KEYS = frozenset({"br", "bl", "d", "dl", "mtp", "rtp", "tb", "v"})
_BOOLEAN_KEYS = frozenset({"bs", "su"})
_STRING_KEYS = frozenset({"cid", "nor", "nrr", "sid"})
_TOKEN_KEYS: dict[str, tuple[str, ...]] = {"ot": OBJECT_TYPES, "sf": STREAMING_FORMATS, "st": STREAM_TYPES}
_DECIMAL_KEYS = frozenset({"pr"})
KEYS = frozenset(f.name for f in fields(Cmcd)) - {"custom"}

# Structured-field grammar (RFC 8941), as CTA-5004 uses it.
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_RANGE = re.compile(r"(?:([0-9]{1,15})-([0-9]{0,15})|-([0-9]{1,15}))")
_OWS = " \t"

Kind = Literal["string", "token", "integer", "decimal", "boolean"]


@dataclass(frozen=True)
class _Item:
    kind: Kind
    value: str | int | float | bool

    def describe(self) -> str:
        if self.kind == "string":
            return f"the string {_quote(cast(str, self.value))}"
        if self.kind == "boolean":
            return "a boolean"
        return f"the {self.kind} {self.value}"


def _fail(source: str, message: str) -> CmcdError:
    return CmcdError(f"{source} {message}")


def _lex(text: str, source: str = "CMCD") -> dict[str, _Item]:
    """The payload's pairs in order, each value typed by its syntax alone (no key is interpreted yet)."""
    if len(text) > MAX_LENGTH:
        raise _fail(source, f"payload is {len(text)} characters long, more than the {MAX_LENGTH} allowed")
    if not text.isascii():
        at = next(i for i, ch in enumerate(text) if not ch.isascii())
        raise _fail(source, f"payload contains a non-ASCII character at position {at}")
    items: dict[str, _Item] = {}
    n = len(text)
    pos = _skip_ows(text, 0)
    if pos == n:
        return items
    while True:
        match = _KEY.match(text, pos)
        if match is None:
            found = text[pos]
            hint = " (keys are lowercase)" if found.isupper() else ""
            raise _fail(source, f"syntax error at position {pos}: expected a key, got {found!r}{hint}")
        key = match.group()
        pos = match.end()
        if key in items:
            raise _fail(source, f"key {key!r} appears more than once")
        if pos < n and text[pos] == "=":
            item, pos = _value(text, pos + 1, key, source)
        else:
            item = _Item("boolean", True)
        items[key] = item
        pos = _skip_ows(text, pos)
        if pos == n:
            return items
        if text[pos] != ",":
            raise _fail(source, f"syntax error at position {pos}: expected ',' after key {key!r}, got {text[pos]!r}")
        pos = _skip_ows(text, pos + 1)
        if pos == n:
            raise _fail(source, "syntax error: the payload ends with a comma")


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _value(text: str, pos: int, key: str, source: str) -> tuple[_Item, int]:
    where = f"key {key!r}:"
    if pos >= len(text) or text[pos] in ", \t":
        raise _fail(source, f"{where} '=' without a value")
    first = text[pos]
    if first == '"':
        return _string(text, pos, where, source)
    if first == "?":
        flag = text[pos + 1 : pos + 2]
        if flag not in ("0", "1"):
            raise _fail(source, f"{where} a boolean is ?0 or ?1, got {text[pos : pos + 2]!r}")
        return _Item("boolean", flag == "1"), pos + 2
    if first == "(":
        raise _fail(source, f"{where} inner lists (CMCD version 2) are not supported")
    if first.isdigit() or first == "-":
        match = _NUMBER.match(text, pos)
        if match is None:
            raise _fail(source, f"{where} '-' must be followed by digits")
        number = match.group()
        whole, _, fraction = number.lstrip("-").partition(".")
        if fraction:
            if len(whole) > 12 or len(fraction) > 3:
                raise _fail(source, f"{where} decimal {number} has more than 12 integer or 3 fractional digits")
            return _Item("decimal", float(number)), match.end()
        if len(whole) > 15:
            raise _fail(source, f"{where} integer {number} has more than 15 digits")
        return _Item("integer", int(number)), match.end()
    match = _TOKEN.match(text, pos)
    if match is None:
        raise _fail(source, f"{where} syntax error at position {pos}: unexpected {first!r}")
    return _Item("token", match.group()), match.end()


def _string(text: str, pos: int, where: str, source: str) -> tuple[_Item, int]:
    out: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\\":
            nxt = text[pos + 1 : pos + 2]
            if nxt not in ('"', "\\"):
                raise _fail(source, f"{where} in a string only \\\" and \\\\ are escapes, got \\{nxt}")
            out.append(nxt)
            pos += 2
        elif ch == '"':
            return _Item("string", "".join(out)), pos + 1
        elif not " " <= ch <= "~":
            raise _fail(source, f"{where} string contains the control character {ch!r}")
        else:
            out.append(ch)
            pos += 1
    raise _fail(source, f"{where} string has no closing quote")


def _build(items: Mapping[str, tuple[_Item, str]]) -> Cmcd:
    """A :class:`Cmcd` from typed pairs (each with the source its error messages name)."""
    known: dict[str, object] = {}
    custom: dict[str, CustomValue] = {}
    for key, (item, source) in items.items():
        if key in KEYS:
            known[key] = _known(key, item, source)
        elif "-" in key:
            custom[key] = _custom(item)
        else:
            raise _fail(source, f"unknown key {key!r}: not a CMCD version 1 key, and a custom key needs a "
                                f"hyphenated prefix (com.example-{key})")
    return Cmcd(**known, custom=custom)  # type: ignore[arg-type]


def _known(key: str, item: _Item, source: str) -> object:
    where = f"key {key!r}:"
    if key in _INTEGER_KEYS:
        if item.kind != "integer":
            raise _fail(source, f"{where} expected an integer, got {item.describe()}")
        number = cast(int, item.value)
        if number < 0:
            raise _fail(source, f"{where} must not be negative, got {number}")
        if key == "v" and number < 1:
            raise _fail(source, f"{where} the version is at least 1, got {number}")
        return number
    if key in _BOOLEAN_KEYS:
        flag = _boolean(item)
        if flag is None:
            raise _fail(source, f"{where} a boolean is the bare key (true) or {key}=false, got {item.describe()}")
        return flag
    if key in _STRING_KEYS:
        if item.kind != "string":
            raise _fail(source, f"{where} expected a quoted string, got {item.describe()}")
        text = cast(str, item.value)
        if key in ("cid", "sid") and len(text) > MAX_ID_LENGTH:
            raise _fail(source, f"{where} is {len(text)} characters long, more than the {MAX_ID_LENGTH} allowed")
        if key == "nrr" and not _valid_range(text):
            raise _fail(source, f"{where} expected a byte range like \"100-199\", got {_quote(text)}")
        return text
    if key in _TOKEN_KEYS:
        allowed = _TOKEN_KEYS[key]
        if item.kind != "token":
            raise _fail(source, f"{where} expected one of the tokens {', '.join(allowed)} (unquoted), "
                                f"got {item.describe()}")
        if item.value not in allowed:
            raise _fail(source, f"{where} unknown token {item.value!r}; expected one of {', '.join(allowed)}")
        return item.value
    # pr, the only decimal key: an integer is a decimal without a fraction.
    if item.kind not in ("decimal", "integer"):
        raise _fail(source, f"{where} expected a decimal, got {item.describe()}")
    rate = float(item.value)
    if rate < 0:
        raise _fail(source, f"{where} must not be negative, got {item.value}")
    return rate


def _boolean(item: _Item) -> bool | None:
    if item.kind == "boolean":
        return bool(item.value)
    if item.kind == "token" and item.value in ("true", "false"):
        return item.value == "true"
    return None


def _custom(item: _Item) -> CustomValue:
    flag = _boolean(item)
    if flag is not None:
        return flag
    if item.kind == "token":
        return Token(cast(str, item.value))
    return item.value


def _valid_range(text: str) -> bool:
    match = _RANGE.fullmatch(text)
    if match is None:
        return False
    start, end = match.group(1), match.group(2)
    return not (start and end) or int(start) <= int(end)


def parse(text: str) -> Cmcd:
    """One CMCD payload (already URL-decoded); :class:`CmcdError` says what is wrong with a bad one.

    >>> parse('sid="a\\\\"b",com.example-mode=fast,su=false')
    Cmcd(sid='a"b', su=False, custom={'com.example-mode': Token('fast')})
    >>> parse("ot=video")
    Traceback (most recent call last):
    ...
    ott.cmcd.CmcdError: CMCD key 'ot': unknown token 'video'; expected one of m, a, v, av, i, c, tt, k, o
    """
    return _build({key: (item, "CMCD") for key, item in _lex(text).items()})


def from_request(query_value: str | None, headers: Mapping[str, str]) -> Cmcd | None:
    """A request's CMCD from its ``CMCD`` query argument (URL-encoded) and its four CMCD headers.

    A player uses one transport; if a request has both, they are merged and the query argument wins
    a key both send. ``None`` when the request has neither (empty values count as absent). Header
    names are matched without regard to case; a key repeated in two headers is an error.

    >>> from_request("", {"cmcd-object": "br=800", "CMCD-Status": "bs"})
    Cmcd(br=800, bs=True)
    >>> from_request(None, {}) is None
    True
    """
    wanted = {name.lower(): name for name in HEADERS}
    present = {wanted[name.lower()]: value for name, value in headers.items()
               if name.lower() in wanted and value != ""}
    from_headers: dict[str, tuple[_Item, str]] = {}
    for name in HEADERS:
        if name in present:
            source = f"{name} header"
            for key, item in _lex(present[name], source).items():
                if key in from_headers:
                    raise _fail(source, f"key {key!r} is also in the {from_headers[key][1]}")
                from_headers[key] = (item, source)
    from_query: dict[str, tuple[_Item, str]] = {}
    if query_value:
        source = "CMCD query argument"
        if len(query_value) > 3 * MAX_LENGTH:
            raise _fail(source, f"is {len(query_value)} characters long encoded, more than {3 * MAX_LENGTH}")
        from_query = {key: (item, source) for key, item in _lex(unquote(query_value), source).items()}
    if not present and not query_value:
        return None
    return _build({**from_headers, **from_query})


# -- the other way: what a player would send -----------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decimal(number: float) -> str:
    text = f"{number:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _pair(key: str, value: object) -> str:
    if value is True:
        return key
    if value is False:
        return f"{key}=false"
    if isinstance(value, Token) or key in _TOKEN_KEYS:
        return f"{key}={value}"
    if isinstance(value, str):
        return f"{key}={_quote(value)}"
    if isinstance(value, float):
        return f"{key}={_decimal(value)}"
    return f"{key}={value}"


def _pairs(cmcd: Cmcd) -> dict[str, str]:
    values: dict[str, object] = {f.name: getattr(cmcd, f.name) for f in fields(cmcd) if f.name != "custom"}
    values.update(cmcd.custom)
    return {key: _pair(key, value) for key, value in sorted(values.items()) if value is not None}


def format(cmcd: Cmcd) -> str:  # the inverse of parse (shadows the builtin in this module only)
    """The payload of ``cmcd``, keys in alphabetical order; :func:`parse` reads it back equal.

    >>> format(Cmcd(br=3200, pr=1.5, sf="h", su=False, custom={"com.example-n": 2.0}))
    'br=3200,com.example-n=2.0,pr=1.5,sf=h,su=false'
    """
    return ",".join(_pairs(cmcd).values())


def to_query(cmcd: Cmcd) -> str:
    """The value of the ``CMCD`` query argument (URL-encoded), as a player sends it."""
    return quote(format(cmcd), safe="")


_HEADER_OF = {"br": "CMCD-Object", "d": "CMCD-Object", "ot": "CMCD-Object", "tb": "CMCD-Object",
              "bl": "CMCD-Request", "dl": "CMCD-Request", "mtp": "CMCD-Request", "nor": "CMCD-Request",
              "nrr": "CMCD-Request", "su": "CMCD-Request",
              "cid": "CMCD-Session", "pr": "CMCD-Session", "sf": "CMCD-Session", "sid": "CMCD-Session",
              "st": "CMCD-Session", "v": "CMCD-Session",
              "bs": "CMCD-Status", "rtp": "CMCD-Status"}


def to_headers(cmcd: Cmcd) -> dict[str, str]:
    """The four headers (only those with keys) as a player sends them; custom keys go in CMCD-Request."""
    shards: dict[str, list[str]] = {}
    for key, pair in _pairs(cmcd).items():
        shards.setdefault(_HEADER_OF.get(key, "CMCD-Request"), []).append(pair)
    return {name: ",".join(shards[name]) for name in HEADERS if name in shards}
