"""auth: signup, login, refresh rotation, JWKS, /verify, /me and the seeding route, in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from ott import auth
from ott.settings import Settings
from ott.tokens import ACCESS_AUDIENCE, ISSUER, REFRESH_AUDIENCE

PASSWORD = "correct horse battery"
# Minimal argon2 cost: the tests check behaviour, not the hash's strength.
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def _app(settings: Settings) -> FastAPI:
    return auth.build_app(settings, passwords=auth.Passwords(CHEAP))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(_app(settings)) as client:
        yield client


@pytest.fixture
def tokens(client: TestClient, make_tokens: Callable[[Any], Any]) -> Any:
    """Token helpers bound to this auth's own signing key."""
    return make_tokens(client.app.state.auth.key)  # type: ignore[attr-defined]


def _signup(client: TestClient, email: str = "Alice@Example.com", password: str = PASSWORD,
            **extra: Any) -> dict[str, Any]:
    response = client.post("/signup", json={"email": email, "password": password, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _login(client: TestClient, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code
    return error


# --- signup -------------------------------------------------------------------------------------


def test_signup_creates_a_user_with_a_lower_cased_email_and_an_argon2_hash(client: TestClient) -> None:
    body = _signup(client, display_name="Alice")
    assert body["email"] == "alice@example.com"
    assert body["display_name"] == "Alice"
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        stored = conn.execute(select(auth.users.c.password_hash).where(auth.users.c.id == body["id"])).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_signup_twice_with_the_same_email_in_any_case_is_409(client: TestClient) -> None:
    _signup(client)
    _error(client.post("/signup", json={"email": "ALICE@example.COM", "password": PASSWORD}), 409, "email_taken")


@pytest.mark.parametrize(
    "body",
    [
        {"password": PASSWORD},
        {"email": "alice@example.com"},
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "alice@example.com", "password": "short"},
        {"email": "alice@example.com", "password": "x" * 129},
        {"email": "alice@example.com", "password": PASSWORD, "display_name": "x" * 65},
        {"email": 123, "password": PASSWORD},
        {"email": "alice@example.com", "password": 12345678},
        {"email": "al ice@example.com", "password": PASSWORD},
        {"email": "' OR '1'='1@example.com", "password": PASSWORD},
        {"email": "a" * 250 + "@example.com", "password": PASSWORD},
        ["alice@example.com", PASSWORD],
        "alice",
    ],
)
def test_signup_refuses_bad_bodies_with_422(client: TestClient, body: Any) -> None:
    _error(client.post("/signup", json=body), 422, "invalid_request")


def test_signup_refuses_lone_surrogates_instead_of_failing_to_hash_them(client: TestClient) -> None:
    raw = b'{"email": "alice@example.com", "password": "passw\\ud800rd"}'
    _error(client.post("/signup", content=raw, headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("path", ["/signup", "/login", "/refresh", "/admin/users"])
def test_malformed_json_is_400(client: TestClient, path: str, internal: dict[str, str]) -> None:
    response = client.post(path, content=b'{"email": "a@b.c", ', headers={"content-type": "application/json",
                                                                         **internal})
    _error(response, 400, "malformed_json")


def test_oversized_body_is_413(client: TestClient) -> None:
    response = client.post("/signup", content=b'{"email": "' + b"a" * 70_000 + b'"}',
                           headers={"content-type": "application/json"})
    _error(response, 413, "body_too_large")


# --- login --------------------------------------------------------------------------------------


def test_login_returns_a_token_pair_for_the_user(client: TestClient) -> None:
    user = _signup(client)
    pair = _login(client, email="ALICE@example.com")
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == client.app.state.service.settings.access_ttl  # type: ignore[attr-defined]
    key = client.app.state.auth.key.private_key.public_key()  # type: ignore[attr-defined]
    access = jwt.decode(pair["access_token"], key, algorithms=["ES256"], audience=ACCESS_AUDIENCE, issuer=ISSUER)
    assert access["sub"] == user["id"]
    assert access["email"] == "alice@example.com"
    assert access["exp"] - access["iat"] == 900
    refresh = jwt.decode(pair["refresh_token"], key, algorithms=["ES256"], audience=REFRESH_AUDIENCE)
    assert refresh["sub"] == user["id"]
    assert refresh["exp"] - refresh["iat"] == 86400
    assert refresh["jti"] != access["jti"]


def test_login_failures_do_not_tell_unknown_email_from_wrong_password(client: TestClient) -> None:
    _signup(client)
    wrong_password = _error(client.post("/login", json={"email": "alice@example.com", "password": "wrong-pass"}),
                            401, "bad_credentials")
    unknown_email = _error(client.post("/login", json={"email": "bob@example.com", "password": PASSWORD}),
                           401, "bad_credentials")
    assert wrong_password == unknown_email


@pytest.mark.parametrize("email", ["' OR '1'='1", "alice@example.com' --", "\"; DROP TABLE auth_users; --"])
def test_login_with_sql_injection_in_the_email_is_just_a_failed_login(client: TestClient, email: str) -> None:
    _signup(client)
    _error(client.post("/login", json={"email": email, "password": PASSWORD}), 401, "bad_credentials")
    assert _login(client)["access_token"]  # the table is intact


@pytest.mark.parametrize("body", [{}, {"email": "alice@example.com"}, {"email": 1, "password": PASSWORD},
                                  {"email": "alice@example.com", "password": ""}])
def test_login_refuses_bad_bodies_with_422(client: TestClient, body: Any) -> None:
    _error(client.post("/login", json=body), 422, "invalid_request")


def test_login_upgrades_a_hash_made_with_weaker_parameters(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        _signup(client)
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    with TestClient(auth.build_app(settings, passwords=auth.Passwords(stronger))) as client:
        _login(client)
        engine = client.app.state.service.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            stored = conn.execute(select(auth.users.c.password_hash)).scalar_one()
    assert "m=2048,t=2,p=1" in stored


# --- refresh ------------------------------------------------------------------------------------


def test_refresh_rotates_and_a_used_refresh_token_is_refused(client: TestClient) -> None:
    user = _signup(client)
    first = _login(client)
    second = client.post("/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert client.get("/me", headers=_bearer(pair["access_token"])).json()["id"] == user["id"]
    # Reuse of the rotated token fails; the new one still works, once.
    _error(client.post("/refresh", json={"refresh_token": first["refresh_token"]}), 401, "token_revoked")
    third = client.post("/refresh", json={"refresh_token": pair["refresh_token"]})
    assert third.status_code == 200
    _error(client.post("/refresh", json={"refresh_token": pair["refresh_token"]}), 401, "token_revoked")


def test_refresh_with_an_access_token_is_401(client: TestClient) -> None:
    _signup(client)
    pair = _login(client)
    error = _error(client.post("/refresh", json={"refresh_token": pair["access_token"]}), 401, "unauthorized")
    assert "audience" in error["message"]


def test_refresh_refuses_bad_tokens(client: TestClient, tokens: Any, bad_token_kind: str) -> None:
    token = tokens.bad(bad_token_kind)
    if bad_token_kind == "wrong_audience":
        # For /refresh the wrong audience is the access token's.
        token = tokens.access()
    _error(client.post("/refresh", json={"refresh_token": token}), 401)


def test_refresh_for_a_deleted_account_is_401(client: TestClient, tokens: Any) -> None:
    token = tokens.key.issue("b" * 32, REFRESH_AUDIENCE, 300)
    _error(client.post("/refresh", json={"refresh_token": token}), 401, "unauthorized")


@pytest.mark.parametrize("body", [{}, {"refresh_token": 5}, {"refresh_token": ""}, {"refresh_token": "x" * 5000}])
def test_refresh_refuses_bad_bodies_with_422(client: TestClient, body: Any) -> None:
    _error(client.post("/refresh", json=body), 422)


# --- JWKS, /verify, /me -------------------------------------------------------------------------


def test_jwks_publishes_the_key_that_verifies_tokens(client: TestClient) -> None:
    _signup(client)
    access = _login(client)["access_token"]
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kid"] == jwt.get_unverified_header(access)["kid"]
    assert "d" not in keys[0]  # the private part never leaves auth
    public = jwt.PyJWK(keys[0]).key
    assert jwt.decode(access, public, algorithms=["ES256"], audience=ACCESS_AUDIENCE)["email"] == "alice@example.com"


def test_verify_answers_the_identity_in_body_and_headers(client: TestClient) -> None:
    user = _signup(client)
    response = client.get("/verify", headers=_bearer(_login(client)["access_token"]))
    assert response.status_code == 200
    assert response.json() == {"sub": user["id"], "email": "alice@example.com"}
    assert response.headers["X-User-Id"] == user["id"]
    assert response.headers["X-User-Email"] == "alice@example.com"


def test_verify_lets_the_gateway_cache_a_200_a_few_seconds_never_past_the_token(client: TestClient,
                                                                               tokens: Any) -> None:
    fresh = client.get("/verify", headers=tokens.headers())
    assert fresh.status_code == 200 and fresh.headers["Cache-Control"] == f"max-age={auth.VERIFY_CACHE_S}"
    key = client.app.state.auth.key  # type: ignore[attr-defined]
    dying = client.get("/verify", headers=_bearer(key.issue("a" * 32, ACCESS_AUDIENCE, 2, email="v@example.com")))
    assert dying.status_code == 200 and dying.headers["Cache-Control"] in {"max-age=1", "max-age=2", "no-store"}
    last_second = client.get("/verify", headers=_bearer(key.issue("a" * 32, ACCESS_AUDIENCE, 1)))
    assert last_second.headers["Cache-Control"] in {"max-age=1", "no-store"}


def test_verify_refusals_are_never_cacheable(client: TestClient, tokens: Any, bad_token_kind: str) -> None:
    response = client.get("/verify", headers=_bearer(tokens.bad(bad_token_kind)))
    assert response.status_code == 401
    assert "max-age" not in response.headers.get("Cache-Control", "")


@pytest.mark.parametrize("path", ["/verify", "/me"])
def test_protected_routes_refuse_bad_tokens_with_401(client: TestClient, tokens: Any, bad_token_kind: str,
                                                     path: str) -> None:
    response = client.get(path, headers=_bearer(tokens.bad(bad_token_kind)))
    _error(response, 401, "unauthorized")
    assert "X-User-Id" not in response.headers


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic YTpi"},
                                     {"Authorization": "Bearer "}])
@pytest.mark.parametrize("path", ["/verify", "/me"])
def test_protected_routes_without_a_bearer_token_are_401(client: TestClient, path: str,
                                                         headers: dict[str, str]) -> None:
    _error(client.get(path, headers=headers), 401, "unauthorized")


def test_me_describes_the_caller(client: TestClient) -> None:
    user = _signup(client, display_name="Alice")
    response = client.get("/me", headers=_bearer(_login(client)["access_token"]))
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("id", "email", "display_name")} == user
    assert body["created_at"].endswith(("+00:00", "Z"))


def test_me_for_a_token_of_an_unknown_account_is_404(client: TestClient, tokens: Any) -> None:
    _error(client.get("/me", headers=tokens.headers(user_id="c" * 32)), 404, "not_found")


# --- internal seeding ---------------------------------------------------------------------------


def test_admin_users_needs_the_service_token(client: TestClient) -> None:
    body = {"email": "seed@example.com", "password": PASSWORD}
    _error(client.post("/admin/users", json=body), 401, "unauthorized")
    _error(client.post("/admin/users", json=body, headers={"X-Service-Token": "wrong"}), 403, "forbidden")
    assert client.post("/login", json=body).status_code == 401  # nothing was created


def test_admin_users_upserts_idempotently(client: TestClient, internal: dict[str, str]) -> None:
    body = {"email": "Seed@Example.com", "password": PASSWORD, "display_name": "Seed"}
    created = client.post("/admin/users", json=body, headers=internal)
    assert created.status_code == 201, created.text
    again = client.post("/admin/users", json=body, headers=internal)
    assert again.status_code == 200
    assert again.json() == created.json() == {"id": created.json()["id"], "email": "seed@example.com",
                                              "display_name": "Seed"}
    changed = client.post("/admin/users", json={**body, "password": "another password", "display_name": "S2"},
                          headers=internal)
    assert changed.status_code == 200
    assert changed.json()["id"] == created.json()["id"]
    assert changed.json()["display_name"] == "S2"
    _error(client.post("/login", json={"email": "seed@example.com", "password": PASSWORD}), 401)
    assert _login(client, "seed@example.com", "another password")["access_token"]


def test_admin_users_refuses_bad_bodies(client: TestClient, internal: dict[str, str]) -> None:
    _error(client.post("/admin/users", json={"email": "x"}, headers=internal), 422)


# --- durability and logs ------------------------------------------------------------------------


def test_users_keys_and_revocations_survive_a_restart(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        user = _signup(client)
        pair = _login(client)
        used = pair["refresh_token"]
        assert client.post("/refresh", json={"refresh_token": used}).status_code == 200
    with TestClient(_app(settings)) as client:
        # Same key from keys_dir: tokens issued before the restart still verify.
        assert client.get("/me", headers=_bearer(pair["access_token"])).json()["id"] == user["id"]
        assert _login(client)["access_token"]
        _error(client.post("/refresh", json={"refresh_token": used}), 401, "token_revoked")
        _error(client.post("/signup", json={"email": "alice@example.com", "password": PASSWORD}), 409)


def test_security_events_are_logged_without_passwords_or_tokens(
    client: TestClient, log_recorder: Callable[[str], Any]
) -> None:
    recorder = log_recorder("auth")
    _signup(client)
    _error(client.post("/signup", json={"email": "alice@example.com", "password": PASSWORD}), 409)
    _error(client.post("/login", json={"email": "alice@example.com", "password": "wrong-password"}), 401)
    pair = _login(client)
    assert client.post("/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200
    _error(client.post("/refresh", json={"refresh_token": pair["refresh_token"]}), 401)
    events = recorder.events()
    for event in ("signup", "signup_refused", "login_failed", "login", "refresh", "refresh_reused"):
        assert event in events
    logged = recorder.text()
    for secret in (PASSWORD, "wrong-password", pair["access_token"], pair["refresh_token"]):
        assert secret not in logged


def test_before_startup_auth_answers_503_not_500(settings: Settings) -> None:
    # Without the lifespan (no "with"), the signing key is not loaded yet.
    client = TestClient(_app(settings))
    _error(client.get("/.well-known/jwks.json"), 503, "not_ready")


def test_passwords_verify_and_refuse() -> None:
    passwords = auth.Passwords(CHEAP)
    stored = passwords.hash(PASSWORD)
    assert passwords.verify(stored, PASSWORD)
    assert not passwords.verify(stored, PASSWORD + "!")
    assert not passwords.verify(None, PASSWORD)
    assert not passwords.verify("not a hash", PASSWORD)
    assert passwords.needs_rehash("not a hash")
    assert not passwords.needs_rehash(stored)
