"""The web player's script agrees with the Python side: the title id pattern and the beacon reasons."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from ott import beacon, models

PLAYER_JS = Path(__file__).resolve().parents[2] / "ott" / "player" / "www" / "player.js"
STRING = re.compile(r'"([^"\\]*)"')


def script() -> str:
    return PLAYER_JS.read_text(encoding="utf-8")


def block(source: str, start: str) -> str:
    """The statement of ``source`` that begins with ``start``: up to the first ``;`` ending a line."""
    begin = source.index(start)
    end = source.index(";\n", begin)
    return source[begin:end]


def reasons_sent(source: str) -> set[str]:
    """Every reason the page can put in an error event: fail(...)/recovered(...) arguments.

    A call's reason is a string literal, or the variable ``reason``; the values of every ``reason``
    variable (its literals, REASON_OF_CODE's values) count as sent.
    """
    found: set[str] = set()
    calls = re.findall(r"\b(?:fail|recovered)\(\s*([^,()]+?)\s*,", source)
    assert calls, "no fail(...) or recovered(...) calls found in player.js: has the page changed shape?"
    for argument in calls:
        literal = STRING.fullmatch(argument)
        if literal:
            found.add(literal.group(1))
        else:
            assert argument == "reason", f"player.js passes {argument!r} as a reason: make it a literal or `reason`"
    for definition in re.finditer(r"\bconst reason = ", source):
        expression = block(source, source[definition.start():definition.end()])
        found.update(STRING.findall(expression))
    mapping = block(source, "const REASON_OF_CODE = {")
    found.update(re.findall(r':\s*"([^"]+)"', mapping))
    return found


def test_the_title_id_regex_is_the_catalogs() -> None:
    match = re.search(r"^const TITLE_ID = /(.+)/;$", script(), re.MULTILINE)
    assert match is not None, "player.js no longer defines `const TITLE_ID = /.../;`"
    assert match.group(1) == models.TITLE_ID_PATTERN


def test_every_reason_the_page_sends_is_a_beacon_reason() -> None:
    allowed = set(typing.get_args(beacon.Reason))
    sent = reasons_sent(script())
    # The page's own failures, so that a parser that finds nothing cannot pass.
    assert {"unknown_title", "key_unavailable", "token_expired", "pop_unreachable", "network_error"} <= sent
    assert sent <= allowed, f"player.js sends reasons the collector refuses: {sorted(sent - allowed)}"


def test_the_reason_parser_sees_a_bad_reason() -> None:
    bad = 'this.fail("bogus_reason", "a message");\nconst REASON_OF_CODE = {\n  a: "other",\n};\n'
    assert reasons_sent(bad) == {"bogus_reason", "other"}
