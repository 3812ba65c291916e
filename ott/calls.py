"""Calls from one service to another: pooled, bounded by a timeout, failures turned into 503/504.

    response = await call(service, "GET", f"{settings.catalog_url}/titles/{title_id}")

Each service keeps one :class:`httpx.AsyncClient` per peer (scheme, host and port) for its whole
life, so a call reuses a kept-alive connection instead of building a client (its TLS context
alone costs about 20 ms) and a TCP connection every time; :class:`Peers` closes them when the app
shuts down (``ott.service``'s lifespan).

A pooled connection may be stale: the peer restarted, or closed it as idle, between two calls.
httpx notices a closed idle connection and opens a new one; for the rest, a call that could not
connect is retried once (nothing was sent), and so is an idempotent call whose connection broke.
A POST whose connection broke is not retried (the peer may have acted on it): it fails clearly
with 503, like a dead peer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from ott.errors import ApiError

if TYPE_CHECKING:
    from ott.service import Service

# Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them from its side.
KEEPALIVE_EXPIRY_S = 4.0
# Connections kept per peer: the services' thread pools run at most 40 handlers at once.
MAX_CONNECTIONS = 64
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# The connection broke before an answer came: safe to send again only when repeating changes nothing.
_BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class Peers:
    """One long-lived, pooled :class:`httpx.AsyncClient` per peer service, opened on first use.

    ``transport`` replaces the network for every client (tests give an :class:`httpx.MockTransport`).
    """

    def __init__(self, timeout: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout = timeout
        self.transport = transport
        self._clients: dict[tuple[bytes, bytes, int | None], httpx.AsyncClient] = {}

    def client(self, url: httpx.URL) -> httpx.AsyncClient:
        """The pooled client of ``url``'s peer."""
        peer = (url.raw_scheme, url.raw_host, url.port)
        client = self._clients.get(peer)
        if client is None:
            limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS,
                                  keepalive_expiry=KEEPALIVE_EXPIRY_S)
            client = httpx.AsyncClient(timeout=self.timeout, limits=limits, transport=self.transport)
            self._clients[peer] = client
        return client

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      json: Any = None) -> httpx.Response:
        """One call to a peer, retried once on a connection that could not be made or (idempotent) broke."""
        target = httpx.URL(url)
        client = self.client(target)
        try:
            return await client.request(method, target, headers=headers, json=json)
        except httpx.ConnectError:
            pass
        except _BROKEN:
            if method.upper() not in _IDEMPOTENT:
                raise
        return await client.request(method, target, headers=headers, json=json)

    async def aclose(self) -> None:
        """Close every client and its connections (the app's shutdown)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


async def call(
    service: Service,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
) -> httpx.Response:
    """One HTTP call to another service through ``service``'s pooled peers; a dead or slow one is a clear 503/504."""
    try:
        return await service.peers.request(method, url, headers=headers, json=json)
    except httpx.TimeoutException:
        raise ApiError(504, "dependency_timeout", f"{_who(url)} did not answer within "
                       f"{service.settings.call_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise ApiError(503, "dependency_unavailable", f"{_who(url)} is unreachable: {exc}") from None


def _who(url: str) -> str:
    return httpx.URL(url).netloc.decode() or url
