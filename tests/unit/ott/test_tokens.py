"""Token verification on the play path: a token verified once is only checked for expiry after that."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from ott import tokens
from ott.errors import ApiError
from ott.tokens import ACCESS_AUDIENCE, REFRESH_AUDIENCE, SigningKey, TokenVerifier


def _counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    real = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return decoded


def test_a_token_seen_again_is_not_verified_again_until_it_expires(test_key: SigningKey,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _counting_decode(monkeypatch)
    verifier = TokenVerifier(key=test_key)
    token = test_key.issue("a" * 32, ACCESS_AUDIENCE, 60, email="viewer@example.com")
    first = verifier.verify(token)
    first["sub"] = "tampered"  # callers get a copy: the remembered claims stay as verified
    assert verifier.verify(token)["sub"] == "a" * 32
    assert decoded == [token]
    # The same token for another audience is a new question.
    with pytest.raises(ApiError) as wrong:
        verifier.verify(token, REFRESH_AUDIENCE)
    assert wrong.value.status == 401 and decoded == [token, token]
    # Past its expiry the memory no longer answers: the token goes through PyJWT again (which refuses it).
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    verifier.verify(token)  # PyJWT's own clock has not moved
    assert decoded == [token, token, token]


def test_a_refused_token_is_never_remembered(test_key: SigningKey, make_tokens: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _counting_decode(monkeypatch)
    verifier = TokenVerifier(key=test_key)
    forged = make_tokens(test_key).bad("forged")
    for _ in range(2):
        with pytest.raises(ApiError):
            verifier.verify(forged)
    assert decoded == [forged, forged]


def test_the_memory_is_bounded(test_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    verifier = TokenVerifier(key=test_key)
    issued = [test_key.issue(f"{i:032x}", ACCESS_AUDIENCE, 60) for i in range(5)]
    for token in issued:
        verifier.verify(token)
    decoded = _counting_decode(monkeypatch)
    verifier.verify(issued[0])  # the oldest was forgotten: verified again
    verifier.verify(issued[4])  # the newest is remembered
    assert decoded == [issued[0]]
