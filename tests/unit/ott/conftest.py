"""Fixtures for the OTT services' unit tests: settings on a temporary database, tokens good and bad."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ott.settings import Settings
from ott.tokens import ACCESS_AUDIENCE, ISSUER, REFRESH_AUDIENCE, SigningKey

SERVICE_TOKEN = "unit-test-service-token"

# Every way a bearer token can be wrong that a service must refuse with 401.
BAD_TOKEN_KINDS = ("forged", "expired", "alg_none", "alg_hs256", "wrong_audience", "wrong_issuer", "garbage")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class Tokens:
    """Tokens for one signing key: valid access tokens, and every kind of bad one."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._stranger = SigningKey(ec.generate_private_key(ec.SECP256R1()))

    def access(self, user_id: str = "a" * 32, email: str = "viewer@example.com") -> str:
        return self.key.issue(user_id, ACCESS_AUDIENCE, 300, email=email)

    def headers(self, user_id: str = "a" * 32, email: str = "viewer@example.com") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access(user_id, email)}"}

    def bad(self, kind: str, user_id: str = "a" * 32, email: str = "viewer@example.com") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user_id, "aud": ACCESS_AUDIENCE, "iat": now, "nbf": now,
                  "exp": now + 300, "jti": "x" * 32, "email": email}
        if kind == "forged":
            # Well-formed, right kid even, but signed by a key that is not auth's.
            forged: str = jwt.encode(claims, self._stranger.private_key, algorithm="ES256",
                                     headers={"kid": self.key.kid})
            return forged
        if kind == "expired":
            return self.key.issue(user_id, ACCESS_AUDIENCE, -60, email=email)
        if kind == "alg_none":
            return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
        if kind == "alg_hs256":
            # Algorithm confusion: an HMAC "signed" with the public key's coordinates as the secret.
            secret = self.key.public_jwk["x"].encode() * 2
            hs: str = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": self.key.kid})
            return hs
        if kind == "wrong_audience":
            return self.key.issue(user_id, REFRESH_AUDIENCE, 300, email=email)
        if kind == "wrong_issuer":
            other: str = jwt.encode({**claims, "iss": "someone-else"}, self.key.private_key, algorithm="ES256",
                                    headers={"kid": self.key.kid})
            return other
        if kind == "garbage":
            return "not.a.jwt"
        raise ValueError(f"unknown bad token kind {kind!r}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a service on its own SQLite file, keys folder and service token."""
    token_file = tmp_path / "service-token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    return Settings(database_url=f"sqlite:///{tmp_path}/ott.db", keys_dir=tmp_path / "keys",
                    service_token_file=str(token_file), catalog_url="http://catalog.test",
                    auth_url="http://auth.test", log_level="WARNING")


@pytest.fixture
def internal() -> dict[str, str]:
    """The headers of an internal (service-to-service) call."""
    return {"X-Service-Token": SERVICE_TOKEN}


@pytest.fixture
def test_key() -> SigningKey:
    """A signing key standing in for auth's, for services that only verify tokens."""
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def make_tokens() -> Callable[[SigningKey], Tokens]:
    return Tokens


@pytest.fixture(params=BAD_TOKEN_KINDS)
def bad_token_kind(request: pytest.FixtureRequest) -> str:
    """Each kind of bad bearer token in turn."""
    kind: str = request.param
    return kind


class Recorder(logging.Handler):
    """Keeps every log record, with its extras, as one string to search."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in self.records)

    def events(self) -> list[str]:
        return [str(getattr(r, "event", "")) for r in self.records]


@pytest.fixture
def log_recorder() -> Iterator[Callable[[str], Recorder]]:
    """Attach a recorder to a service's logger (``ott.<name>``); detached after the test."""
    attached: list[tuple[logging.Logger, Recorder]] = []

    def attach(name: str) -> Recorder:
        logger = logging.getLogger(f"ott.{name}")
        recorder = Recorder()
        logger.addHandler(recorder)
        # The services' loggers inherit WARNING from the settings; record their info events too.
        logger.setLevel(logging.DEBUG)
        attached.append((logger, recorder))
        return recorder

    yield attach
    for logger, recorder in attached:
        logger.removeHandler(recorder)
        logger.setLevel(logging.NOTSET)
