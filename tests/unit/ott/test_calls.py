"""Service-to-service calls: one pooled client per peer, one retry where it is safe, clear 503/504 otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from _fixtures_playback import make_settings
from fastapi import APIRouter
from fastapi.testclient import TestClient

from ott.calls import Peers, call
from ott.errors import ApiError
from ott.service import Service, create_app

Handler = Callable[[httpx.Request], httpx.Response]


def _failing(failures: list[Exception], seen: list[str]) -> Handler:
    """Raises the next of ``failures`` on each request, then answers 200; records ``METHOD host``."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        if failures:
            raise failures.pop(0)
        return httpx.Response(200, json={"ok": True})

    return handle


def _call(peers: Peers, method: str, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        try:
            return await peers.request(method, url)
        finally:
            await peers.aclose()

    return asyncio.run(go())


def test_one_client_per_peer_kept_for_the_services_life() -> None:
    peers = Peers(5.0)
    one = peers.client(httpx.URL("http://catalog.test:8020/titles/a"))
    assert peers.client(httpx.URL("http://catalog.test:8020/titles/b?x=1")) is one
    assert peers.client(httpx.URL("http://cas.test:8050/sessions")) is not one
    assert one.timeout.read == 5.0
    asyncio.run(peers.aclose())
    assert one.is_closed


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_connection_that_could_not_be_made_is_tried_once_more(method: str) -> None:
    seen: list[str] = []
    peers = Peers(5.0, httpx.MockTransport(_failing([httpx.ConnectError("refused")], seen)))
    assert _call(peers, method, "http://cas.test/sessions").status_code == 200
    assert seen == [f"{method} cas.test"] * 2


@pytest.mark.parametrize("broken", [httpx.RemoteProtocolError("Server disconnected without sending a response."),
                                    httpx.ReadError("connection reset")])
def test_a_broken_connection_is_retried_for_idempotent_calls_only(broken: Exception) -> None:
    seen: list[str] = []
    peers = Peers(5.0, httpx.MockTransport(_failing([broken], seen)))
    assert _call(peers, "GET", "http://subscription.test/entitlements/x").status_code == 200
    assert seen == ["GET subscription.test"] * 2
    seen.clear()
    # The peer may have acted on a POST before the connection broke: it is not sent twice.
    peers = Peers(5.0, httpx.MockTransport(_failing([broken], seen)))
    with pytest.raises(type(broken)):
        _call(peers, "POST", "http://cas.test/sessions")
    assert seen == ["POST cas.test"]


def test_a_peer_down_for_good_is_one_clear_503_after_one_retry(tmp_path: Path) -> None:
    seen: list[str] = []
    service = Service("caller", make_settings(tmp_path, call_timeout=2.0))
    service.peers = Peers(2.0, httpx.MockTransport(_failing([httpx.ConnectError("refused")] * 3, seen)))

    async def go() -> None:
        try:
            await call(service, "GET", "http://catalog.test:8020/titles/x")
        finally:
            await service.peers.aclose()

    with pytest.raises(ApiError) as refused:
        asyncio.run(go())
    assert (refused.value.status, refused.value.code) == (503, "dependency_unavailable")
    assert "catalog.test:8020 is unreachable" in str(refused.value)
    assert seen == ["GET catalog.test"] * 2


def test_the_apps_shutdown_closes_its_peers_clients(tmp_path: Path) -> None:
    router = APIRouter()

    @router.get("/relay")
    async def relay() -> dict[str, int]:
        response = await call(service, "GET", "http://peer.test/anything")
        return {"status": response.status_code}

    app = create_app("caller", [router], make_settings(tmp_path))
    service: Service = app.state.service
    service.peers.transport = httpx.MockTransport(lambda _: httpx.Response(204))
    with TestClient(app) as client:
        assert client.get("/relay").json() == {"status": 204}
        assert client.get("/relay").json() == {"status": 204}
        (pooled,) = service.peers._clients.values()
        assert not pooled.is_closed
    assert pooled.is_closed
    assert service.peers._clients == {}
