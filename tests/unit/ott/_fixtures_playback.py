"""Helpers shared by the CAS and license unit tests: settings, tokens, running apps, metrics."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ott.settings import Settings
from ott.tokens import ACCESS_AUDIENCE, SigningKey, TokenVerifier

SERVICE_TOKEN = "test-service-token"
SUBSCRIPTION_URL = "http://subscription.test"
CAS_URL = "http://cas.test"
LICENSE_URL = "http://license.test"
CATALOG_URL = "http://catalog.test"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a temporary SQLite file, with a service token file written for the admin routes."""
    token_file = tmp_path / "service-token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/ott.db",
        "service_token_file": str(token_file),
        "subscription_url": SUBSCRIPTION_URL,
        "cas_url": CAS_URL,
        "license_url": LICENSE_URL,
        "catalog_url": CATALOG_URL,
        "keys_dir": tmp_path / "keys",
        "log_level": "INFO",
        **overrides,
    }
    return Settings(**values)


@dataclass
class Tokens:
    """auth's part in a test: a signing key and access tokens for named users."""

    key: SigningKey

    @classmethod
    def create(cls, tmp_path: Path) -> Tokens:
        return cls(SigningKey.load_or_create(tmp_path / "keys"))

    def access(self, user_id: str) -> str:
        return self.key.issue(user_id, ACCESS_AUDIENCE, 300, email=f"{user_id}@example.com")

    def headers(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access(user_id)}"}


@contextmanager
def running(app: FastAPI, tokens: Tokens) -> Iterator[TestClient]:
    """A client of ``app`` with its lifespan run, verifying tokens with ``tokens``' key."""
    with TestClient(app) as client:
        app.state.service.verifier = TokenVerifier(key=tokens.key)
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` on ``/metrics`` (0 when absent)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def detached(response: httpx.Response) -> httpx.Response:
    """``response`` (say, a TestClient's, read already) as an async transport must hand it over."""
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


def error_code(response: httpx.Response) -> str:
    """The stable ``error.code`` of a JSON error response."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code, body
    code: str = body["error"]["code"]
    return code


@dataclass
class Upstreams:
    """The network of license's pooled peers (``transport``): a fake subscription, the real CAS app.

    ``entitlements`` maps a title id to the answer for it (absent: 404); ``calls`` records what
    license sent, so tests can check that the user's token was forwarded.
    """

    cas: TestClient | None = None
    entitlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The catalog's answer per title id (absent: 404).
    titles: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, httpx.Headers]] = field(default_factory=list)
    fail: Callable[[str], None] | None = None

    def entitle(self, title_id: str, entitled: bool = True, reason: str = "ok") -> None:
        self.entitlements[title_id] = {"title_id": title_id, "entitled": entitled, "reason": reason,
                                       "plan": "basic", "required_tier": "basic"}

    @property
    def transport(self) -> httpx.MockTransport:
        """What ``service.peers.transport`` is set to: every call of license's goes to :meth:`request`."""
        return httpx.MockTransport(lambda request: detached(self.request(
            request.method, str(request.url), headers=request.headers, json=jsonlib.loads(request.content)
            if request.content else None)))

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                json: Any = None) -> httpx.Response:
        self.calls.append((method, url, httpx.Headers(headers or {})))
        if self.fail is not None:
            self.fail(url)
        if url.startswith(f"{SUBSCRIPTION_URL}/entitlements/"):
            title_id = url.rsplit("/", 1)[1]
            if not (headers or {}).get("Authorization", "").startswith("Bearer "):
                return httpx.Response(401, json={"error": {"status": 401, "code": "unauthorized", "message": "x"}})
            if title_id not in self.entitlements:
                return httpx.Response(404, json={"error": {"status": 404, "code": "not_found", "message": "x"}})
            return httpx.Response(200, json=self.entitlements[title_id])
        if url.startswith(f"{CATALOG_URL}/titles/"):
            title_id = url.rsplit("/", 1)[1]
            if title_id not in self.titles:
                return httpx.Response(404, json={"error": {"status": 404, "code": "not_found", "message": "x"}})
            return httpx.Response(200, json=self.titles[title_id])
        if url.startswith(CAS_URL) and self.cas is not None:
            answer: httpx.Response = self.cas.request(method, url[len(CAS_URL):], headers=headers, json=json)
            return answer
        raise httpx.ConnectError(f"nothing listens at {url}")
