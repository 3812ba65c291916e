"""The APIs behind the real nginx gateway, on loopback: routing, token checks, JSON errors,
rate limiting, retries, and state that survives kill -9."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from _labs import running_lab
from _sessions import signed_in
from prometheus_client.parser import text_string_to_metric_families

from labkit.clients import seed
from labkit.clients.api import ApiRefused, OttClient, service_client
from labkit.clients.sidecar import Sidecar
from labkit.core.wait import until
from labkit.platform.layers import apis
from labkit.platform.layers.apis.routes import LOGIN_LIMIT
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("apis"), 28600, ["apis"], seeded=True) as target:
        yield target


@pytest.fixture
def alice(lab: LocalTarget) -> Iterator[OttClient]:
    with signed_in(lab.endpoint("gateway")) as client:
        yield client


def test_a_viewer_journey_through_the_gateway(lab: LocalTarget, alice: OttClient) -> None:
    assert alice.me()["email"] == seed.USERS[0].email
    assert alice.entitlement("ocean-documentary")["entitled"] is True
    # Keys are the transcoder's to create (with the mesh on, only its identity may).
    with service_client(lab, "license", caller="transcoder") as license_admin:
        key_hex = license_admin.post("/admin/keys/ocean-documentary").json()["key_hex"]
    grant = alice.authorize("ocean-documentary", device_id="tv")
    assert alice.key("ocean-documentary", grant["authorization"]).hex() == key_hex


def test_the_gateway_checks_tokens_and_answers_json(lab: LocalTarget, alice: OttClient) -> None:
    gateway = lab.endpoint("gateway")
    for path in ("/api/subscription/plans", "/api/cas/sessions", "/api/license/authorizations"):
        response = httpx.get(gateway + path, timeout=10)
        assert response.status_code == 401, path
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "unauthorized"
    forged = alice.access_token[:-4] + ("AAAA" if not alice.access_token.endswith("AAAA") else "BBBB")  # type: ignore[index]
    assert httpx.get(gateway + "/api/cas/sessions", headers={"Authorization": f"Bearer {forged}"},
                     timeout=10).status_code == 401
    # Public routes need no token; unknown routes and internal ones are 404 JSON.
    assert httpx.get(gateway + "/api/catalog/titles", timeout=10).status_code == 200
    for path in ("/nowhere", "/api/license/admin/keys/lab-clock", "/api/auth/admin/users"):
        response = httpx.get(gateway + path, headers={"X-Service-Token": lab.service_token()}, timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    # Key requests carry a playback authorisation, not an access token: the gateway lets the license decide.
    key_request = httpx.get(gateway + "/api/license/keys/lab-clock", timeout=10)
    assert key_request.status_code == 401
    assert key_request.json()["error"]["code"] == "missing_authorization"  # the license service's own answer
    oversized = httpx.post(gateway + "/api/auth/login", content=b"x" * 70000, timeout=10)
    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "body_too_large"


def _verify_answers(lab: LocalTarget, status: int) -> float:
    """How many times auth answered /verify with ``status`` (its own request counter)."""
    # Its metrics port (with the mesh on, the sidecar's plaintext health port: /metrics is no route of the tools').
    text = httpx.get(f"{lab.endpoint('auth', lab.component('auth').metrics_port)}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "ott_http_requests_total" and sample.labels.get("route") == "/verify"
               and sample.labels.get("status") == str(status))


def test_the_gateway_caches_verified_tokens_but_never_a_refusal(lab: LocalTarget, alice: OttClient) -> None:
    gateway = lab.endpoint("gateway")
    token = str(alice.access_token)
    ok_before = _verify_answers(lab, 200)
    for _ in range(3):  # a play's requests on one token: auth is asked once, the rest are the cached 200
        assert httpx.get(gateway + "/api/cas/sessions", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).status_code == 200
    assert _verify_answers(lab, 200) == ok_before + 1
    # The cache is keyed on the whole header: the same token with its signature altered is a miss,
    # refused by auth, and the refusal is not kept (auth is asked again each time).
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused_before = _verify_answers(lab, 401)
    for header in (f"Bearer {forged}", f"Bearer {forged}", f"Bearer {token}x"):
        response = httpx.get(gateway + "/api/cas/sessions", headers={"Authorization": header}, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", header
    assert _verify_answers(lab, 401) == refused_before + 3


def test_login_is_rate_limited_per_client(lab: LocalTarget) -> None:
    gateway = lab.endpoint("gateway")
    attempts = 200
    statuses = []
    # One keep-alive connection: refused requests come back in about a millisecond, so the burst
    # outruns the limit even on a loaded machine. An empty body costs auth no password hash.
    with httpx.Client(base_url=gateway, timeout=30) as http:
        started = time.monotonic()
        for _ in range(attempts):
            statuses.append(http.post("/api/auth/login", json={}).status_code)
        elapsed = time.monotonic() - started
    assert set(statuses) == {422, 429}, statuses  # those let through reached auth, which refused the empty body
    allowed = LOGIN_LIMIT.burst + LOGIN_LIMIT.requests_per_second * elapsed + 1
    assert statuses.count(422) <= allowed, (statuses.count(422), elapsed)

    def let_through() -> int | None:
        status = httpx.post(gateway + "/api/auth/login", json={"email": "x@example.com", "password": "wrong-pass"},
                            timeout=10).status_code
        return None if status == 429 else status

    # The bucket refills: a login reaches auth again (asked more slowly than the bucket refills).
    assert until(let_through, 5, 2 / LOGIN_LIMIT.requests_per_second, "the login limit to let a login through") == 401
    assert '"uri":"/api/auth/login","status":429' in lab.logs("gateway", lines=400)


def test_idempotent_requests_are_retried_past_a_dead_replica(lab: LocalTarget) -> None:
    lab.scale("catalog", 2)
    try:
        gateway = lab.endpoint("gateway")
        info = lab.supervisor.all_info()
        meshed = lab.cfg.mesh != "off"
        # catalog's committed route goes to its release v1 (the DestinationRule's subset).
        retries = f"cluster.outbound|8000|v1|catalog.{lab.cfg.namespace}.svc.cluster.local.upstream_rq_retry"
        retried_before = Sidecar(lab.mesh_sidecar("gateway")).counter(retries) if meshed else 0
        # Stop replica 0 for good (not a crash that supervisord would undo): its port refuses connections.
        lab.supervisor.stop_program("catalog-0")
        assert info["catalog-1"]["statename"] == "RUNNING"
        with httpx.Client(base_url=gateway, timeout=10) as http:
            statuses = [http.get("/api/catalog/titles").status_code for _ in range(20)]
        assert statuses == [200] * 20
        if meshed:
            # nginx leaves retries to the gateway's sidecar (catalog's VirtualService): it retried past the
            # dead replica (its sidecar answers 503 for it), and nginx saw only its sidecar.
            assert Sidecar(lab.mesh_sidecar("gateway")).counter(retries) > retried_before
            return
        catalog = lab.component("catalog")
        dead, alive = (f"{lab.cfg.host}:{catalog.local_port(lab.cfg, 'http', i)}" for i in (0, 1))

        def by_the_live_replica() -> list[dict[str, str]]:
            # Only these 20 requests reached replica 1: it was started for this test.
            lines = [json.loads(line) for line in lab.logs("gateway", lines=400).splitlines() if line.startswith("{")]
            found = [r for r in lines if r.get("uri") == "/api/catalog/titles" and alive in r["upstream"]]
            return found if len(found) >= 20 else []

        answered = until(by_the_live_replica, timeout=10, what="the gateway's log lines of the 20 requests")
        assert len(answered) == 20 and all(str(r["status"]) == "200" for r in answered), answered
        # Each was answered by the live replica; the first (at least) was refused by the dead one and retried.
        assert all(r["upstream"].split(", ")[-1] == alive for r in answered), answered
        retried = [r for r in answered if r["upstream"].split(", ")[0] == dead]
        assert retried and all(r["upstream_status"].split(", ")[-1] == "200" for r in retried), answered
    finally:
        lab.scale("catalog", 1)


def test_state_survives_kill_9_of_every_service(lab: LocalTarget) -> None:
    gateway = lab.endpoint("gateway")
    with OttClient(gateway) as client:
        client.signup("durable@example.com", "durable-password-1")
        client.login("durable@example.com", "durable-password-1")
        client.subscribe("basic")
        for service in apis.SERVICES:
            lab.kill(service.name)
        states: dict[str, bool] = {}

        def all_back() -> bool:
            nonlocal states
            states = {s.name: s.healthy for s in lab.status() if s.layer == "apis"}
            return all(states.values())

        until(all_back, 60, 0.5, lambda: f"every service to come back after kill -9 (last seen: {states})")
        # A new login works (user and its password hash survived), and so does the subscription.
        client.login("durable@example.com", "durable-password-1")
        assert client.subscription()["plan"] == "basic"
        assert client.title("lab-clock")["tier"] == "free"
        with pytest.raises(ApiRefused) as refused:
            client.signup("durable@example.com", "durable-password-1")
        assert refused.value.code == "email_taken"


def test_pooled_service_calls_survive_a_restarted_peer(lab: LocalTarget, alice: OttClient) -> None:
    # license keeps pooled connections to subscription and cas, subscription to catalog: a restarted peer
    # leaves them stale, and the very next authorisation must still work (a new connection, or one retry).
    def play(device: str) -> None:
        grant = alice.authorize("lab-clock", device_id=device)
        alice.end_session(grant["session_id"])

    play("restart-tv")  # every pooled connection of the authorisation's path now exists
    for peer in ("subscription", "catalog", "cas"):
        before = {s.name: s.pids for s in lab.status()}[peer]
        after = lab.restart(peer)
        assert after.healthy and after.pids != before, peer
        play("restart-tv")
    # A crash (SIGKILL) rather than a stop: supervisord brings cas back, and the next call reaches it.
    old = {s.name: s for s in lab.status()}["cas"].pids
    lab.kill("cas")

    def cas_back() -> bool:
        status = {s.name: s for s in lab.status()}["cas"]
        return status.healthy and bool(status.pids) and status.pids != old

    until(cas_back, 30, 0.2, "cas to come back (healthy, a new pid) after SIGKILL")
    for _ in range(3):
        play("restart-tv")
