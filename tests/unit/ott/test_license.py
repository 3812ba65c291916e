"""License: entitlement, then CAS, then a short-lived authorisation that releases the title's key."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fixtures_playback import (
    LICENSE_URL,
    SERVICE_TOKEN,
    Tokens,
    Upstreams,
    error_code,
    make_settings,
    metric,
    running,
)
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from ott import cas, license
from ott.tokens import SigningKey

TITLE = "big-buck-bunny"
ADMIN = {"X-Service-Token": SERVICE_TOKEN}
DECISIONS = "ott_license_decisions_total"


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens.create(tmp_path)


@dataclass
class Platform:
    """License and the real CAS on one database, a fake subscription, and ``httpx`` routed to them."""

    license: TestClient
    cas: TestClient
    upstreams: Upstreams
    tokens: Tokens

    def authorize(self, user: str = "ana", title: str = TITLE, device: str = "laptop") -> Any:
        return self.license.post("/authorizations", json={"title_id": title, "device_id": device},
                                 headers=self.tokens.headers(user))

    def create_key(self, title: str = TITLE) -> bytes:
        response = self.license.post(f"/admin/keys/{title}", headers=ADMIN)
        assert response.status_code == 201, response.text
        return bytes.fromhex(response.json()["key_hex"])

    def fetch_key(self, authorization: str, title: str = TITLE) -> Any:
        return self.license.get(f"/keys/{title}", headers={"Authorization": f"Bearer {authorization}"})


PlatformFactory = Callable[..., AbstractContextManager[Platform]]


@pytest.fixture
def open_platform(tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch) -> PlatformFactory:
    """``with open_platform(**settings) as p``: a platform on this test's database (reopenable)."""
    return functools.partial(platform, tmp_path, tokens, monkeypatch)


@contextmanager
def platform(tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Iterator[Platform]:
    settings = make_settings(tmp_path, **overrides)
    upstreams = Upstreams()
    license_app = license.build_app(settings)
    # Under license's pooled peers: their retries, timeout and error mapping stay in the path.
    license_app.state.service.peers.transport = upstreams.transport
    with running(cas.build_app(settings), tokens) as cas_client, \
            running(license_app, tokens) as license_client:
        upstreams.cas = cas_client
        upstreams.entitle(TITLE)
        yield Platform(license_client, cas_client, upstreams, tokens)


def test_an_entitled_session_gets_the_titles_key(open_platform: PlatformFactory, tmp_path: Path) -> None:
    with open_platform(playback_ttl=60) as p:
        key = p.create_key()
        before = time.time()
        response = p.authorize()
        assert response.status_code == 201, response.text
        grant = response.json()
        assert set(grant) == {"authorization", "expires_at", "session_id", "key_uri", "playback"}
        assert grant["key_uri"] == f"{LICENSE_URL}/keys/{TITLE}"
        assert datetime.fromisoformat(grant["expires_at"]).timestamp() == pytest.approx(before + 60, abs=5)

        # The user's own token went to subscription and to CAS, and CAS holds the stream session.
        user_token = p.upstreams.calls[0][2]["Authorization"]
        assert [(m, u.split("/")[2]) for m, u, _ in p.upstreams.calls] == [("GET", "subscription.test"),
                                                                          ("POST", "cas.test")]
        assert all(h["Authorization"] == user_token for _, _, h in p.upstreams.calls)
        sessions = p.cas.get("/sessions", headers={"Authorization": user_token}).json()
        assert [s["session_id"] for s in sessions] == [grant["session_id"]]

        fetched = p.fetch_key(grant["authorization"])
        assert fetched.status_code == 200
        assert fetched.content == key
        assert len(fetched.content) == 16
        assert fetched.headers["content-type"] == "application/octet-stream"
        assert fetched.headers["cache-control"] == "no-store"
        # Players that cannot set headers on key requests send it in the query.
        by_query = p.license.get(f"/keys/{TITLE}", params={"authorization": grant["authorization"]})
        assert (by_query.status_code, by_query.content) == (200, key)

    # Only the authorisation's digest is stored.
    engine = create_engine(f"sqlite:///{tmp_path}/ott.db")
    with engine.connect() as conn:
        rows = conn.execute(select(license.license_authorizations)).all()
    engine.dispose()
    assert [r.token_sha256 for r in rows] == [hashlib.sha256(grant["authorization"].encode()).hexdigest()]
    assert grant["authorization"] not in {str(v) for r in rows for v in r}


@pytest.mark.parametrize("reason", ["no_subscription", "subscription_expired", "tier_not_in_plan"])
def test_not_entitled_is_403_with_subscriptions_reason(open_platform: PlatformFactory, reason: str) -> None:
    with open_platform() as p:
        p.create_key()
        p.upstreams.entitle(TITLE, entitled=False, reason=reason)
        response = p.authorize()
        assert response.status_code == 403
        assert error_code(response) == "not_entitled"
        assert response.json()["error"]["details"] == {"reason": reason}
        # CAS was not asked: no stream session was opened.
        assert [u for _, u, _ in p.upstreams.calls if u.startswith("http://cas.test")] == []
        assert metric(p.license, DECISIONS, decision="deny", reason="not_entitled") == 1


def test_an_unknown_title_is_404(open_platform: PlatformFactory) -> None:
    with open_platform() as p:
        response = p.authorize(title="no-such-title")
        assert (response.status_code, error_code(response)) == (404, "unknown_title")


def test_stream_limit_from_cas_is_passed_through_until_a_stream_ends(
    open_platform: PlatformFactory, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_platform(stream_limit=1, heartbeat_timeout=30) as p:
        first = p.authorize().json()
        denied = p.authorize(device="tv")
        assert denied.status_code == 403
        assert error_code(denied) == "stream_limit"
        details = denied.json()["error"]["details"]
        assert details["limit"] == 1
        assert [s["session_id"] for s in details["active"]] == [first["session_id"]]

        # Ended by the player...
        ended = p.cas.delete(f"/sessions/{first['session_id']}", headers=tokens.headers("ana"))
        assert ended.status_code == 204
        second = p.authorize(device="tv")
        assert second.status_code == 201
        assert error_code(p.authorize()) == "stream_limit"

        # ... or abandoned: no heartbeat within the timeout frees it too.
        later = time.time() + 31
        monkeypatch.setattr(cas, "now", lambda: later)
        assert p.authorize().status_code == 201


def test_device_limit_from_cas_is_passed_through(open_platform: PlatformFactory) -> None:
    with open_platform(device_limit=1, stream_limit=5) as p:
        assert p.authorize(device="tv").status_code == 201
        denied = p.authorize(device="phone")
        assert (denied.status_code, error_code(denied)) == (403, "device_limit")
        assert denied.json()["error"]["details"]["devices"] == ["tv"]
        assert metric(p.license, DECISIONS, decision="deny", reason="device_limit") == 1


def test_outside_window_from_cas_is_passed_through(
    open_platform: PlatformFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    noon = datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()
    monkeypatch.setattr(cas, "now", lambda: noon)
    with open_platform(cas_window="18:00-23:00") as p:
        denied = p.authorize()
        assert (denied.status_code, error_code(denied)) == (403, "outside_window")
        assert denied.json()["error"]["details"] == {"window": "18:00-23:00", "timezone": "UTC"}
        assert metric(p.license, DECISIONS, decision="deny", reason="outside_window") == 1


def test_key_requests_without_a_valid_authorisation_are_refused(
    open_platform: PlatformFactory, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_platform(playback_ttl=60, stream_limit=5) as p:
        p.create_key()
        p.create_key("sintel")
        p.upstreams.entitle("sintel")
        p.upstreams.entitle("tears-of-steel")
        authorization = p.authorize().json()["authorization"]

        missing = p.license.get(f"/keys/{TITLE}")
        assert (missing.status_code, error_code(missing)) == (401, "missing_authorization")
        basic = p.license.get(f"/keys/{TITLE}", headers={"Authorization": "Basic YW5hOnB3"})
        assert (basic.status_code, error_code(basic)) == (401, "missing_authorization")
        unknown = p.fetch_key("made-up-authorisation")
        assert (unknown.status_code, error_code(unknown)) == (401, "unknown_authorization")
        unknown_query = p.license.get(f"/keys/{TITLE}", params={"authorization": "' OR 1=1 --"})
        assert (unknown_query.status_code, error_code(unknown_query)) == (401, "unknown_authorization")
        # An access token is not a playback authorisation.
        assert error_code(p.fetch_key(tokens.access("ana"))) == "unknown_authorization"

        other_title = p.fetch_key(authorization, title="sintel")
        assert (other_title.status_code, error_code(other_title)) == (403, "wrong_title")

        no_key = p.fetch_key(p.authorize(title="tears-of-steel").json()["authorization"], title="tears-of-steel")
        assert (no_key.status_code, error_code(no_key)) == (404, "no_key")

        assert p.fetch_key(authorization).status_code == 200
        later = time.time() + 61
        monkeypatch.setattr(license, "now", lambda: later)
        expired = p.fetch_key(authorization)
        assert (expired.status_code, error_code(expired)) == (401, "authorization_expired")


def test_an_authorisation_expires_after_the_playback_ttl(open_platform: PlatformFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with open_platform(playback_ttl=1) as p:
        p.create_key()
        authorization = p.authorize().json()["authorization"]
        assert p.fetch_key(authorization).status_code == 200
        later = time.time() + 1.1
        monkeypatch.setattr(license, "now", lambda: later)
        expired = p.license.get(f"/keys/{TITLE}", params={"authorization": authorization})
        assert (expired.status_code, error_code(expired)) == (401, "authorization_expired")


def test_long_expired_authorisations_are_deleted_at_the_first_grant_and_every_16th(
    open_platform: PlatformFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_platform(playback_ttl=60, stream_limit=100) as p:
        p.create_key()
        first = p.authorize().json()["authorization"]  # the process's first grant
        a_day_later = time.time() + 86400 + 61
        monkeypatch.setattr(license, "now", lambda: a_day_later)
        for _ in range(license.CLEANUP_EVERY - 1):
            assert p.authorize().status_code == 201
        assert error_code(p.fetch_key(first)) == "authorization_expired"  # a day after expiry: still known
        assert p.authorize().status_code == 201  # the 17th grant
        assert error_code(p.fetch_key(first)) == "unknown_authorization"


def test_admin_key_routes_need_the_service_token(open_platform: PlatformFactory, tokens: Tokens) -> None:
    with open_platform() as p:
        for method in ("POST", "GET", "DELETE"):
            anonymous = p.license.request(method, f"/admin/keys/{TITLE}")
            assert (anonymous.status_code, error_code(anonymous)) == (401, "unauthorized"), method
            wrong = p.license.request(method, f"/admin/keys/{TITLE}", headers={"X-Service-Token": "guess"})
            assert (wrong.status_code, error_code(wrong)) == (403, "forbidden"), method
            # A user's access token opens nothing here either.
            user = p.license.request(method, f"/admin/keys/{TITLE}", headers=tokens.headers("ana"))
            assert user.status_code == 401, method
        assert error_code(p.license.get(f"/admin/keys/{TITLE}", headers=ADMIN)) == "no_key"

        created = p.license.post(f"/admin/keys/{TITLE}", headers=ADMIN)
        assert created.status_code == 201
        body = created.json()
        assert set(body) == {"title_id", "kid", "key_hex", "key_uri", "created_at"}
        kid = body["kid"]
        assert (body["title_id"], body["key_uri"]) == (TITLE, f"{LICENSE_URL}/keys/{TITLE}/{kid}")
        assert len(bytes.fromhex(body["key_hex"])) == 16
        read = p.license.get(f"/admin/keys/{TITLE}", headers=ADMIN)
        assert (read.status_code, read.json()) == (200, body)

        # A new version becomes the newest; the old one stays valid for the playlists naming it.
        rotated = p.create_key()
        assert rotated.hex() != body["key_hex"]
        authorization = p.authorize().json()["authorization"]
        assert p.fetch_key(authorization).content == rotated
        bearer = {"Authorization": f"Bearer {authorization}"}
        old = p.license.get(f"/keys/{TITLE}/{kid}", headers=bearer)
        assert (old.status_code, old.content) == (200, bytes.fromhex(body["key_hex"]))
        assert p.license.get(f"/admin/keys/{TITLE}/{kid}", headers=ADMIN).json() == body

        # Deleting one version leaves the others; an unknown version is a clear 404.
        assert p.license.delete(f"/admin/keys/{TITLE}/{kid}", headers=ADMIN).status_code == 204
        gone = p.license.get(f"/keys/{TITLE}/{kid}", headers=bearer)
        assert (gone.status_code, error_code(gone)) == (404, "no_key")
        assert kid in gone.json()["error"]["message"]
        assert p.license.get(f"/keys/{TITLE}/not-a-kid", headers=bearer).status_code == 422
        assert p.fetch_key(authorization).content == rotated

        assert p.license.delete(f"/admin/keys/{TITLE}", headers=ADMIN).status_code == 204
        assert p.license.get(f"/admin/keys/{TITLE}", headers=ADMIN).status_code == 404
        assert error_code(p.license.delete(f"/admin/keys/{TITLE}", headers=ADMIN)) == "no_key"
        assert p.license.post("/admin/keys/Not_A_Title", headers=ADMIN).status_code == 422


def test_admin_routes_without_a_configured_service_token_are_503(open_platform: PlatformFactory) -> None:
    with open_platform(service_token_file="") as p:
        response = p.license.post(f"/admin/keys/{TITLE}", headers=ADMIN)
        assert (response.status_code, error_code(response)) == (503, "not_configured")


def test_every_grant_and_denial_is_counted(open_platform: PlatformFactory) -> None:
    with open_platform(stream_limit=1) as p:
        p.create_key()
        authorization = p.authorize().json()["authorization"]
        p.authorize(device="tv")  # stream_limit
        p.authorize(user="bob", title="no-such-title")  # unknown_title
        p.fetch_key(authorization)
        p.fetch_key(authorization)
        p.fetch_key("nope")
        p.license.get(f"/keys/{TITLE}")

        assert metric(p.license, DECISIONS, decision="grant", reason="authorized") == 1
        assert metric(p.license, DECISIONS, decision="grant", reason="key_delivered") == 2
        assert metric(p.license, DECISIONS, decision="deny", reason="stream_limit") == 1
        assert metric(p.license, DECISIONS, decision="deny", reason="unknown_title") == 1
        assert metric(p.license, DECISIONS, decision="deny", reason="unknown_authorization") == 1
        assert metric(p.license, DECISIONS, decision="deny", reason="missing_authorization") == 1
        assert metric(p.license, DECISIONS, decision="deny", reason="not_entitled") == 0
        # CAS counted its own side of the same decisions.
        assert metric(p.cas, "ott_cas_decisions_total", decision="deny", reason="stream_limit") == 1


def test_decisions_are_logged_with_reasons_but_never_keys_or_tokens(
    open_platform: PlatformFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_platform(stream_limit=1) as p:
        key = p.create_key()
        response = p.authorize()
        authorization = response.json()["authorization"]
        user_token = p.upstreams.calls[0][2]["Authorization"].removeprefix("Bearer ")
        p.fetch_key(authorization)
        p.authorize(device="tv")
        p.license.get(f"/keys/{TITLE}", params={"authorization": authorization + "x"})
    # The test client's own request lines (httpx logging its URLs, query included) are not the services'.
    lines = [line for line in capsys.readouterr().out.splitlines() if "http://testserver" not in line]
    for secret in (key.hex(), authorization, user_token):
        assert not [line for line in lines if secret in line]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    decisions = [(r["decision"], r["reason"], r.get("user_id"), r["title_id"])
                 for r in records if r.get("message") == "license decision"]
    assert decisions == [("grant", "authorized", "ana", TITLE), ("grant", "key_delivered", "ana", TITLE),
                         ("deny", "stream_limit", "ana", TITLE), ("deny", "unknown_authorization", None, TITLE)]


def test_keys_and_authorisations_survive_a_new_app(open_platform: PlatformFactory) -> None:
    with open_platform(playback_ttl=60) as p:
        key = p.create_key()
        authorization = p.authorize().json()["authorization"]
    with open_platform(playback_ttl=60) as p:
        assert p.fetch_key(authorization).content == key
        assert p.license.get(f"/admin/keys/{TITLE}", headers=ADMIN).json()["key_hex"] == key.hex()


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"title_id": ', 400, "malformed_json"),
    (b'{"title_id": ["big-buck-bunny"], "device_id": "tv"}', 422, "invalid_request"),
    (b'{"device_id": "tv"}', 422, "invalid_request"),
    (b'"big-buck-bunny"', 422, "invalid_request"),
    (b'{"title_id": "x\'; DROP TABLE license_keys;--", "device_id": "tv"}', 422, "invalid_request"),
    (b'{"title_id": "big-buck-bunny", "device_id": "../../etc/passwd"}', 422, "invalid_request"),
])
def test_bad_bodies_are_client_errors_and_reach_no_one(
    open_platform: PlatformFactory, tokens: Tokens, body: bytes, status: int, code: str
) -> None:
    with open_platform() as p:
        key = p.create_key()
        headers = {**tokens.headers("ana"), "Content-Type": "application/json"}
        response = p.license.post("/authorizations", content=body, headers=headers)
        assert (response.status_code, error_code(response)) == (status, code)
        assert p.upstreams.calls == []
        assert p.fetch_key(p.authorize().json()["authorization"]).content == key


def test_bad_access_tokens_are_401_before_any_call(
    open_platform: PlatformFactory, tmp_path: Path, tokens: Tokens
) -> None:
    stranger = SigningKey.load_or_create(tmp_path / "other-keys")
    with open_platform() as p:
        bad = (stranger.issue("ana", "ottlab-api", 300), tokens.key.issue("ana", "ottlab-refresh", 300), "x.y.z")
        for token in bad:
            response = p.license.post("/authorizations", json={"title_id": TITLE, "device_id": "tv"},
                                      headers={"Authorization": f"Bearer {token}"})
            assert (response.status_code, error_code(response)) == (401, "unauthorized")
        assert p.license.post("/authorizations", json={"title_id": TITLE, "device_id": "tv"}).status_code == 401
        assert p.upstreams.calls == []


def _unreachable(url: str) -> None:
    raise httpx.ConnectError(f"connection refused: {url}")


def _slow(url: str) -> None:
    raise httpx.ReadTimeout(f"no answer from {url}")


@pytest.mark.parametrize(("fail", "status", "code"), [
    (_unreachable, 503, "dependency_unavailable"),
    (_slow, 504, "dependency_timeout"),
])
def test_a_dead_dependency_is_a_clear_5xx_and_a_counted_denial(
    open_platform: PlatformFactory, fail: Any, status: int, code: str
) -> None:
    with open_platform() as p:
        p.upstreams.fail = fail
        response = p.authorize()
        assert (response.status_code, error_code(response)) == (status, code)
        assert metric(p.license, DECISIONS, decision="deny", reason=code) == 1


def test_an_unexpected_answer_from_subscription_is_502(open_platform: PlatformFactory) -> None:
    with open_platform() as p:
        p.upstreams.entitlements[TITLE] = {"surprise": True}
        response = p.authorize()
        assert (response.status_code, error_code(response)) == (502, "dependency_failed")
        assert response.json()["error"]["details"] == {"service": "subscription", "status": 200}


def test_key_uris_go_through_the_gateway_when_the_public_url_is_set(open_platform: PlatformFactory) -> None:
    with open_platform(public_url="http://127.0.0.1:18000/") as p:
        created = p.license.post(f"/admin/keys/{TITLE}", headers=ADMIN).json()
        assert created["key_uri"] == f"http://127.0.0.1:18000/api/license/keys/{TITLE}/{created['kid']}"
        assert p.authorize().json()["key_uri"] == f"http://127.0.0.1:18000/api/license/keys/{TITLE}"


def _cdn(tmp_path: Path) -> dict[str, Any]:
    """Settings of a license that signs for two PoPs."""
    (tmp_path / "secret").write_text("lab-secret\n")
    (tmp_path / "edges.json").write_text(json.dumps({"edge-1": "http://127.0.0.1:9101", "edge-0": "http://127.0.0.1:9100/"}))
    return {"signing_secret_file": str(tmp_path / "secret"), "edges_file": str(tmp_path / "edges.json"),
            "signed_url_ttl": 600}


def _published(p: Platform, path: str = f"/{TITLE}/master.m3u8") -> None:
    p.upstreams.titles[TITLE] = {"id": TITLE, "renditions": [
        {"kind": "hls", "url": f"http://127.0.0.1:8060{path}", "encrypted": True, "pop": None}]}


def test_playback_urls_are_signed_for_every_pop(open_platform: PlatformFactory, tmp_path: Path) -> None:
    from ott import signing

    with open_platform(**_cdn(tmp_path)) as p:
        _published(p)
        before = time.time()
        grant = p.authorize().json()
    urls = grant["playback"]
    assert [u["pop"] for u in urls] == ["edge-0", "edge-1"]
    expires = int(datetime.fromisoformat(urls[0]["expires_at"]).timestamp())
    assert expires == pytest.approx(before + 600, abs=5)
    for entry, base in zip(urls, ("http://127.0.0.1:9100", "http://127.0.0.1:9101"), strict=True):
        assert entry["url"] == base + signing.signed_path("lab-secret", TITLE, expires, "/master.m3u8")
        match = signing.SIGNED_PATH.match(httpx.URL(entry["url"]).path)
        assert match and match["token"] == signing.token("lab-secret", TITLE, expires)
        assert match["token"] != signing.token("other-secret", TITLE, expires)


def test_no_playback_urls_without_a_cdn_or_a_published_title(open_platform: PlatformFactory, tmp_path: Path) -> None:
    with open_platform() as p:  # no CDN configured: the catalog is not even asked
        _published(p)
        assert p.authorize().json()["playback"] == []
        assert not [c for c in p.upstreams.calls if c[1].startswith("http://catalog.test")]
    with open_platform(**_cdn(tmp_path), stream_limit=10) as p:
        p.upstreams.titles[TITLE] = {"id": TITLE, "renditions": []}
        assert p.authorize().json()["playback"] == []
        # A rendition outside the title's folder is never signed.
        _published(p, "/other-title/master.m3u8")
        assert p.authorize().json()["playback"] == []


def test_a_title_missing_from_the_catalog_or_a_dead_catalog_is_a_clear_error(open_platform: PlatformFactory,
                                                                              tmp_path: Path) -> None:
    with open_platform(**_cdn(tmp_path)) as p:
        missing = p.authorize()
        assert (missing.status_code, error_code(missing)) == (404, "unknown_title")
        assert p.cas.get("/sessions", headers=p.tokens.headers("ana")).json() == []  # no stream session was opened

        def down(url: str) -> None:
            if url.startswith("http://catalog.test"):
                raise httpx.ConnectError("connection refused")

        p.upstreams.fail = down
        dead = p.authorize()
        assert (dead.status_code, error_code(dead)) == (503, "dependency_unavailable")


def test_a_pop_added_to_the_edges_file_is_signed_for_at_once(open_platform: PlatformFactory, tmp_path: Path) -> None:
    settings = _cdn(tmp_path)
    with open_platform(**settings, stream_limit=10) as p:
        _published(p)
        assert [u["pop"] for u in p.authorize().json()["playback"]] == ["edge-0", "edge-1"]
        edges = json.loads(Path(settings["edges_file"]).read_text())
        Path(settings["edges_file"]).write_text(json.dumps({**edges, "edge-2": "http://127.0.0.1:9102"}))
        assert [u["pop"] for u in p.authorize().json()["playback"]] == ["edge-0", "edge-1", "edge-2"]
