"""Title ids become folder names, URL segments and shell words: only a safe alphabet passes."""

from __future__ import annotations

import pytest

from ott.media.errors import InvalidTitleId
from ott.media.publish import validate_title_id


@pytest.mark.parametrize("title_id", ["a", "big-buck-bunny", "0day", "s01e02", "x" * 63])
def test_good_ids(title_id: str) -> None:
    assert validate_title_id(title_id) == title_id


@pytest.mark.parametrize(("title_id", "reason"), [
    ("", "empty"),
    ("x" * 64, "at most 63"),
    ("../x", "path traversal"),
    ("a/b", "path traversal"),
    ("..", "path traversal"),
    (".hidden", "path traversal"),
    ("a\\b", "path traversal"),
    ("$(rm -rf)", "shell"),
    ("a;b", "shell"),
    ("a b", "shell"),
    ("a|b", "shell"),
    ("`id`", "shell"),
    ("ok\n", "shell"),
    ("bébé", "non-ASCII"),
    ("тест", "non-ASCII"),
    ("UPPER", "outside a-z"),
    ("-leading", "starts with '-'"),
    ("under_score", "outside a-z"),
])
def test_bad_ids(title_id: str, reason: str) -> None:
    with pytest.raises(InvalidTitleId) as info:
        validate_title_id(title_id)
    assert reason in str(info.value)
    assert info.value.title_id == title_id
