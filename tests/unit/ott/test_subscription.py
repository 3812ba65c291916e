"""subscription: plans, subscribing, cancelling, expiry and entitlement decisions, in-process.

The entitlement check asks the catalog over HTTP; here that call is routed to a real catalog app
running in-process (the service's pooled peers get a transport that reaches its TestClient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from _fixtures_playback import detached
from _responses import expect_error
from fastapi.testclient import TestClient

from ott import catalog, subscription
from ott.cache import TtlCache
from ott.settings import Settings
from ott.tokens import SigningKey, TokenVerifier

ALICE = "a" * 32
BOB = "b" * 32


@pytest.fixture(scope="module")
def catalog_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A real catalog with one title per tier, shared by the module's tests (which only read it)."""
    folder = tmp_path_factory.mktemp("catalog")
    (folder / "service-token").write_text("catalog-seeding-token")
    settings = Settings(database_url=f"sqlite:///{folder}/catalog.db", service_token_file=str(folder / "service-token"),
                        log_level="WARNING")
    with TestClient(catalog.build_app(settings)) as client:
        for title_id, tier in (("big-buck", "free"), ("sintel", "basic"), ("tears", "premium")):
            response = client.put(f"/titles/{title_id}", headers={"X-Service-Token": "catalog-seeding-token"},
                                  json={"name": title_id, "duration_s": 60, "tier": tier})
            assert response.status_code == 201
        yield client


@dataclass
class CatalogRoute:
    """The service's calls to http://catalog.test, answered by the in-process catalog (or ``answer``)."""

    catalog: TestClient
    seen: list[str] = field(default_factory=list)
    answer: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.host == "catalog.test", request.url
        assert request.extensions["timeout"]["read"] == 5.0  # calls are bounded by settings.call_timeout
        self.seen.append(str(request.url))
        if self.answer is not None:
            return self.answer(request)
        return detached(self.catalog.request(request.method, request.url.raw_path.decode(),
                                             headers=request.headers, content=request.content))


@pytest.fixture
def catalog_route(catalog_client: TestClient) -> CatalogRoute:
    return CatalogRoute(catalog_client)


@pytest.fixture
def catalog_calls(catalog_route: CatalogRoute) -> list[str]:
    """The URLs of the service's calls to the catalog."""
    return catalog_route.seen


def _start(settings: Settings, key: SigningKey, route: CatalogRoute) -> TestClient:
    app = subscription.build_app(settings)
    app.state.service.peers.transport = httpx.MockTransport(route)
    client = TestClient(app)
    client.__enter__()
    # Verify tokens with the test's key instead of fetching auth's JWKS.
    app.state.service.verifier = TokenVerifier(key=key)
    return client


@pytest.fixture
def client(settings: Settings, test_key: SigningKey, catalog_route: CatalogRoute) -> Iterator[TestClient]:
    client = _start(settings, test_key, catalog_route)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def tokens(test_key: SigningKey, make_tokens: Callable[[SigningKey], Any]) -> Any:
    return make_tokens(test_key)




def _subscribe(client: TestClient, tokens: Any, plan: str, user: str = ALICE) -> dict[str, Any]:
    response = client.post("/subscriptions", json={"plan": plan}, headers=tokens.headers(user))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _entitlement(client: TestClient, tokens: Any, title_id: str, user: str = ALICE) -> dict[str, Any]:
    response = client.get(f"/entitlements/{title_id}", headers=tokens.headers(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _metric(client: TestClient, result: str, reason: str) -> float:
    wanted = f'ott_entitlement_checks_total{{reason="{reason}",result="{result}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    raise AssertionError(f"no series {wanted!r} in /metrics")


# --- plans and subscriptions --------------------------------------------------------------------


def test_plans_grant_growing_tiers(client: TestClient) -> None:
    response = client.get("/plans")
    assert response.status_code == 200
    plans = {p["id"]: p for p in response.json()}
    assert list(plans) == ["free", "basic", "premium"]
    assert plans["free"]["tiers"] == ["free"] and plans["free"]["price_cents"] == 0
    assert plans["basic"]["tiers"] == ["free", "basic"]
    assert plans["premium"]["tiers"] == ["free", "basic", "premium"]
    assert all(p["period_days"] == 30 and p["name"] for p in plans.values())
    assert plans["free"]["price_cents"] < plans["basic"]["price_cents"] < plans["premium"]["price_cents"]


def test_subscribe_starts_an_active_period(client: TestClient, tokens: Any) -> None:
    body = _subscribe(client, tokens, "basic")
    assert (body["user_id"], body["plan"], body["status"], body["cancelled_at"]) == (ALICE, "basic", "active", None)
    started, expires = datetime.fromisoformat(body["started_at"]), datetime.fromisoformat(body["expires_at"])
    assert started.utcoffset() == timedelta(0)
    assert expires - started == timedelta(days=30)
    assert client.get("/subscriptions/me", headers=tokens.headers()).json() == body


def test_subscribing_again_replaces_the_subscription(client: TestClient, tokens: Any) -> None:
    _subscribe(client, tokens, "basic")
    client.delete("/subscriptions/me", headers=tokens.headers())
    body = _subscribe(client, tokens, "premium")
    assert (body["plan"], body["status"], body["cancelled_at"]) == ("premium", "active", None)
    assert client.get("/subscriptions/me", headers=tokens.headers()).json()["plan"] == "premium"


def test_subscriptions_are_per_user(client: TestClient, tokens: Any) -> None:
    _subscribe(client, tokens, "premium", user=ALICE)
    expect_error(client.get("/subscriptions/me", headers=tokens.headers(BOB)), 404, "no_subscription")
    expect_error(client.delete("/subscriptions/me", headers=tokens.headers(BOB)), 404, "no_subscription")
    assert client.get("/subscriptions/me", headers=tokens.headers(ALICE)).json()["status"] == "active"


@pytest.mark.parametrize("body", [{}, {"plan": "gold"}, {"plan": 1}, {"plan": None}, {"plan": "PREMIUM"},
                                  {"plan": "premium' OR '1'='1"}, ["premium"]])
def test_subscribe_refuses_bad_bodies_with_422(client: TestClient, tokens: Any, body: Any) -> None:
    expect_error(client.post("/subscriptions", json=body, headers=tokens.headers()), 422, "invalid_request")
    expect_error(client.get("/subscriptions/me", headers=tokens.headers()), 404, "no_subscription")


def test_subscribe_with_malformed_json_is_400(client: TestClient, tokens: Any) -> None:
    response = client.post("/subscriptions", content=b'{"plan": "basic"',
                           headers={"content-type": "application/json", **tokens.headers()})
    expect_error(response, 400, "malformed_json")


def test_cancel_keeps_the_entitlement_until_expiry(client: TestClient, tokens: Any) -> None:
    subscribed = _subscribe(client, tokens, "basic")
    response = client.delete("/subscriptions/me", headers=tokens.headers())
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["expires_at"] == subscribed["expires_at"]
    again = client.delete("/subscriptions/me", headers=tokens.headers()).json()
    assert again["cancelled_at"] == cancelled["cancelled_at"]  # the first cancellation counts
    assert _entitlement(client, tokens, "sintel")["entitled"] is True


# --- entitlements -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "title_id", "entitled", "reason"),
    [
        (None, "big-buck", False, "no_subscription"),
        ("free", "big-buck", True, "ok"),
        ("free", "sintel", False, "tier_not_in_plan"),
        ("basic", "sintel", True, "ok"),
        ("basic", "tears", False, "tier_not_in_plan"),
        ("premium", "tears", True, "ok"),
        ("premium", "big-buck", True, "ok"),
    ],
)
def test_entitlement_follows_the_plan_tiers(client: TestClient, tokens: Any, catalog_calls: list[str],
                                            plan: str | None, title_id: str, entitled: bool, reason: str) -> None:
    if plan is not None:
        _subscribe(client, tokens, plan)
    body = _entitlement(client, tokens, title_id)
    tiers = {"big-buck": "free", "sintel": "basic", "tears": "premium"}
    assert body == {"title_id": title_id, "entitled": entitled, "reason": reason, "plan": plan,
                    "required_tier": tiers[title_id]}
    assert catalog_calls == [f"http://catalog.test/titles/{title_id}"]
    assert _metric(client, "allowed" if entitled else "denied", reason) == 1.0


def test_an_expired_subscription_denies_and_says_so(client: TestClient, tokens: Any,
                                                    internal: dict[str, str]) -> None:
    _subscribe(client, tokens, "premium")
    assert _entitlement(client, tokens, "tears")["entitled"] is True
    response = client.post(f"/admin/subscriptions/{ALICE}/expire", headers=internal)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "expired"
    body = _entitlement(client, tokens, "tears")
    assert (body["entitled"], body["reason"], body["plan"]) == (False, "subscription_expired", "premium")
    assert client.get("/subscriptions/me", headers=tokens.headers()).json()["status"] == "expired"
    # A cancelled subscription that then expires is expired, not cancelled.
    client.delete("/subscriptions/me", headers=tokens.headers())
    assert client.get("/subscriptions/me", headers=tokens.headers()).json()["status"] == "expired"
    assert _metric(client, "allowed", "ok") == 1.0
    assert _metric(client, "denied", "subscription_expired") == 1.0


def test_metrics_start_at_zero(client: TestClient) -> None:
    for result, reason in (("allowed", "ok"), ("denied", "no_subscription"), ("denied", "subscription_expired"),
                           ("denied", "tier_not_in_plan")):
        assert _metric(client, result, reason) == 0.0


def test_unknown_title_is_404_and_not_counted(client: TestClient, tokens: Any) -> None:
    _subscribe(client, tokens, "premium")
    expect_error(client.get("/entitlements/no-such-title", headers=tokens.headers()), 404, "unknown_title")
    assert _metric(client, "allowed", "ok") == 0.0


@pytest.mark.parametrize(
    ("title_id", "status"),
    # An encoded slash makes the path another route (none): 404 from the router, still no catalog call.
    [("Tears", 422), ("tears'--", 422), ("' OR '1'='1", 422), ("a" * 64, 422), ("-x", 422), ("..%2F..%2Fadmin", 404)],
)
def test_title_ids_not_matching_the_pattern_are_refused_without_a_catalog_call(
    client: TestClient, tokens: Any, catalog_calls: list[str], title_id: str, status: int
) -> None:
    expect_error(client.get(f"/entitlements/{title_id}", headers=tokens.headers()), status)
    assert catalog_calls == []


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (httpx.ConnectError("connection refused"), 503, "dependency_unavailable"),
        (httpx.ReadTimeout("timed out"), 504, "dependency_timeout"),
        (httpx.Response(500, json={"error": {}}), 502, "dependency_failed"),
        (httpx.Response(200, text="<html>not json</html>"), 502, "dependency_failed"),
        (httpx.Response(200, json=["not", "an", "object"]), 502, "dependency_failed"),
        (httpx.Response(200, json={"id": "tears", "tier": "platinum"}), 502, "dependency_failed"),
    ],
)
def test_a_failing_catalog_is_a_clear_5xx_never_a_crash(client: TestClient, tokens: Any,
                                                        catalog_route: CatalogRoute,
                                                        failure: Exception | httpx.Response, status: int,
                                                        code: str) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if isinstance(failure, Exception):
            raise failure
        return failure

    catalog_route.answer = broken
    _subscribe(client, tokens, "premium")
    expect_error(client.get("/entitlements/tears", headers=tokens.headers()), status, code)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_clock_tiers(client: TestClient) -> Clock:
    """Give the app a tier cache on a clock the test moves."""
    clock = Clock()
    app: Any = client.app
    app.state.title_tiers = TtlCache[str, Any](max_entries=subscription.TIER_CACHE_SIZE,
                                               ttl_s=subscription.TIER_TTL_S, clock=clock)
    return clock


def test_a_titles_tier_is_asked_of_the_catalog_once_per_ttl(client: TestClient, tokens: Any,
                                                             catalog_calls: list[str]) -> None:
    clock = _fake_clock_tiers(client)
    _subscribe(client, tokens, "basic")
    for _ in range(3):
        assert _entitlement(client, tokens, "sintel")["entitled"] is True
    assert catalog_calls == ["http://catalog.test/titles/sintel"]
    clock.now += subscription.TIER_TTL_S
    assert _entitlement(client, tokens, "sintel")["entitled"] is True
    assert catalog_calls == ["http://catalog.test/titles/sintel"] * 2
    assert _metric(client, "allowed", "ok") == 4.0


def test_the_subscription_is_read_on_every_check_while_the_tier_is_kept(client: TestClient, tokens: Any,
                                                                         internal: dict[str, str],
                                                                         catalog_calls: list[str]) -> None:
    _fake_clock_tiers(client)
    _subscribe(client, tokens, "premium")
    assert _entitlement(client, tokens, "tears")["entitled"] is True
    # A downgrade and an expiry apply to the very next check, with the tier still kept.
    client.put(f"/admin/subscriptions/{ALICE}", json={"plan": "basic"}, headers=internal).raise_for_status()
    assert _entitlement(client, tokens, "tears")["reason"] == "tier_not_in_plan"
    client.put(f"/admin/subscriptions/{ALICE}", json={"plan": "premium"}, headers=internal).raise_for_status()
    client.post(f"/admin/subscriptions/{ALICE}/expire", headers=internal).raise_for_status()
    assert _entitlement(client, tokens, "tears")["reason"] == "subscription_expired"
    assert catalog_calls == ["http://catalog.test/titles/tears"]


def test_unknown_titles_and_catalog_failures_are_never_kept(client: TestClient, tokens: Any,
                                                             catalog_route: CatalogRoute) -> None:
    _fake_clock_tiers(client)
    _subscribe(client, tokens, "premium")
    expect_error(client.get("/entitlements/no-such-title", headers=tokens.headers()), 404, "unknown_title")
    expect_error(client.get("/entitlements/no-such-title", headers=tokens.headers()), 404, "unknown_title")

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {}})

    catalog_route.answer = broken
    expect_error(client.get("/entitlements/tears", headers=tokens.headers()), 502, "dependency_failed")
    catalog_route.answer = None
    assert _entitlement(client, tokens, "tears")["entitled"] is True
    assert catalog_route.seen == ["http://catalog.test/titles/no-such-title"] * 2 + [
        "http://catalog.test/titles/tears"] * 2


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/subscriptions", {"plan": "basic"}),
        ("GET", "/subscriptions/me", None),
        ("DELETE", "/subscriptions/me", None),
        ("GET", "/entitlements/tears", None),
    ],
)
def test_user_routes_refuse_bad_tokens_with_401(client: TestClient, tokens: Any, bad_token_kind: str,
                                                method: str, path: str, body: Any) -> None:
    headers = {"Authorization": f"Bearer {tokens.bad(bad_token_kind)}"}
    expect_error(client.request(method, path, json=body, headers=headers), 401, "unauthorized")
    expect_error(client.request(method, path, json=body), 401, "unauthorized")
    expect_error(client.get("/subscriptions/me", headers=tokens.headers()), 404, "no_subscription")


# --- internal routes ----------------------------------------------------------------------------


def test_admin_put_seeds_a_subscription(client: TestClient, tokens: Any, internal: dict[str, str]) -> None:
    created = client.put(f"/admin/subscriptions/{BOB}", json={"plan": "premium"}, headers=internal)
    assert created.status_code == 201, created.text
    assert (created.json()["user_id"], created.json()["plan"]) == (BOB, "premium")
    replaced = client.put(f"/admin/subscriptions/{BOB}", json={"plan": "free"}, headers=internal)
    assert replaced.status_code == 200
    assert replaced.json()["plan"] == "free"
    assert _entitlement(client, tokens, "tears", user=BOB)["reason"] == "tier_not_in_plan"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", f"/admin/subscriptions/{BOB}", {"plan": "premium"}), ("POST", f"/admin/subscriptions/{BOB}/expire", None)],
)
def test_admin_routes_need_the_service_token(client: TestClient, tokens: Any, method: str, path: str,
                                             body: Any) -> None:
    _subscribe(client, tokens, "basic", user=BOB)
    expect_error(client.request(method, path, json=body), 401, "unauthorized")
    expect_error(client.request(method, path, json=body, headers={"X-Service-Token": "wrong"}), 403, "forbidden")
    # A user's access token is not a service token either.
    expect_error(client.request(method, path, json=body, headers=tokens.headers(BOB)), 401, "unauthorized")
    unchanged = client.get("/subscriptions/me", headers=tokens.headers(BOB)).json()
    assert (unchanged["plan"], unchanged["status"]) == ("basic", "active")


def test_admin_expire_of_a_user_without_subscription_is_404(client: TestClient, internal: dict[str, str]) -> None:
    expect_error(client.post(f"/admin/subscriptions/{BOB}/expire", headers=internal), 404, "no_subscription")


@pytest.mark.parametrize("user_id", ["B" * 32, "b" * 31, "b" * 33, "' OR '1'='1", "x" * 32])
def test_admin_user_ids_not_matching_the_pattern_are_422(client: TestClient, internal: dict[str, str],
                                                         user_id: str) -> None:
    expect_error(client.post(f"/admin/subscriptions/{user_id}/expire", headers=internal), 422, "invalid_request")
    expect_error(client.put(f"/admin/subscriptions/{user_id}", json={"plan": "free"}, headers=internal), 422)


@pytest.mark.parametrize("body", [b'{"plan": ', b'{"plan": "gold"}', b"[]"])
def test_admin_put_refuses_bad_bodies(client: TestClient, internal: dict[str, str], body: bytes) -> None:
    response = client.put(f"/admin/subscriptions/{BOB}", content=body,
                          headers={"content-type": "application/json", **internal})
    assert response.status_code in (400, 422)
    expect_error(response, 400 if body == b'{"plan": ' else 422)


# --- durability ---------------------------------------------------------------------------------


def test_subscriptions_survive_a_restart(settings: Settings, test_key: SigningKey, tokens: Any,
                                         catalog_route: CatalogRoute) -> None:
    first = _start(settings, test_key, catalog_route)
    try:
        subscribed = _subscribe(first, tokens, "basic")
        first.delete("/subscriptions/me", headers=tokens.headers())
    finally:
        first.__exit__(None, None, None)
    second = _start(settings, test_key, catalog_route)
    try:
        body = second.get("/subscriptions/me", headers=tokens.headers()).json()
        assert (body["plan"], body["status"], body["expires_at"]) == ("basic", "cancelled", subscribed["expires_at"])
        assert _entitlement(second, tokens, "sintel")["entitled"] is True
    finally:
        second.__exit__(None, None, None)
