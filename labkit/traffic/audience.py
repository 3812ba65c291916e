"""The viewer simulator: an audience of headless players watching one title through the CDN.

Each simulated viewer behaves like a player (hls.js or dash.js with HLS): it fetches the
multivariant playlist from its PoP, picks a rung with an ABR rule (:mod:`labkit.traffic.abr`), fetches that
rung's media playlist, the content key of an encrypted title (with the playback authorisation, as
a player's key loader does), the init segment and then segment after segment. The buffer model
of :mod:`labkit.traffic.playback`, the player core every simulated viewer shares, decides when:
playback starts once the first segment has arrived and then consumes media in real
time; when the buffer runs dry the viewer stalls until the next segment arrives; it stops loading
while ``max_buffer_s`` seconds are buffered. Every request carries CMCD (:mod:`ott.cmcd`,
:func:`~labkit.traffic.playback.request_cmcd`); a
bandwidth limit (:mod:`labkit.traffic.bandwidth`) paces each download. The viewer records the QoE events
the browser player sends (play, start, stall, switch, progress, error, end) and posts them as
version-1 beacons (``client: "simulator"``) to ``{gateway}/api/qoe/beacons`` every
``beacon_s`` seconds and when it ends::

    audience = run(gateway, "lab-clock", count=20, seconds=60, abr="bola", bandwidth=Trace.named("commute"))
    audience.summary()               # startup percentiles, rebuffering ratio, failures, bitrate ...
    audience.sessions                # one row per viewer; also .events, .timeline, .requests

**One grant for the audience.** The platform allows two concurrent streams per account, so the
audience does not authorise each viewer: it logs in once, asks license for one playback grant
(``POST /api/license/authorizations``) and every viewer plays through that grant's signed URLs (one
per PoP) and uses its authorisation for the key. When a signed URL stops working mid-session
(the edge answers 403 or 410) the viewer reports a non-fatal ``token_expired`` error and the
audience asks for a new grant (once for all viewers that hit it; the old CAS stream is ended
first), and the request is retried. The grant's own latency is not part of any viewer's startup:
viewers arrive after it, their clock starting at their own play.

**Faults.** An unknown title (or any denial) is a video start failure for every viewer, with the
license's reason (``unknown_title``, ``not_entitled``, ``stream_limit`` …). A PoP that refuses
connections is a non-fatal ``pop_unreachable``: the viewer fails over to the grant's next PoP,
and fails when none is left. A 404 media object is retried once, then fatal
(``segment_not_found``; ``manifest_error`` for playlists); a key that cannot be fetched is fatal
``key_unavailable``. Every request is bounded by ``request_timeout``.

**Time.** Viewers arrive over ``arrivals_s`` seconds and everyone stops ``seconds`` after the
start (end reason ``exit``; ``exit`` before the first frame is an exit before video start). A viewer
who reaches the end of the title ends with ``ended`` and does not loop: a session is one playback,
as a QoE collector counts it; for longer runs use a longer title. Arrivals, PoP assignment, session
ids and trace offsets come from ``random.Random(seed)``. With a
:class:`~labkit.traffic.playback.VirtualClock` and a mock transport the whole result is a function
of the seed: the same seed gives identical DataFrames.

**Scale.** One process runs the whole audience in one event loop, so CPU per request decides how
many viewers keep up: each viewer has its own connections (its own small pool, as a player has)
on an aiohttp transport behind httpx's API. The simulator's own CPU (this process only: the lab's
nginx and services serving the requests are not counted) is about 0.5 ms per request on loopback,
segments of ~175 kB and beacons included: the difference between two audience sizes in
``bench/bench_viewers.py --quick`` (0.4 to 0.6 ms; with the run's fixed costs, login, grant and
clients, about 1 ms per request at 40 viewers). The aiohttp transport itself costs a fifth of httpx's
own, which takes about 1 ms per request. On a laptop the lab runs on the same cores and takes CPU
of its own: the viewer counts in ``bench/README.md`` are the machine's, lab included.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import aiohttp
import httpx
import yarl

from labkit.analysis import experience
from labkit.clients.seed import DemoUser, demo_user
from labkit.core import eventloop
from labkit.core.errors import ConfigError
from labkit.platform.layers.player import BEACON_PATH
from labkit.traffic import abr as abr_rules
from labkit.traffic.bandwidth import Fixed, Limit, Link, Trace
from labkit.traffic.playback import (
    DEFAULT_MAX_BUFFER_S,
    Clock,
    Deadline,
    ManifestError,
    MediaPlaylist,
    Playback,
    Playlists,
    RealClock,
    Request,
    fetch,
    request_cmcd,
    requests_frame,
    unsigned_path,
)
from ott import beacon, cmcd
from ott.beacon import Reason
from ott.media.errors import InvalidTitleId
from ott.media.publish import validate_title_id

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_BEACON_S = 10.0
DEVICE_ID = "ottlab-simulator"
RETRY_DELAY_S = 0.5
DEFAULT_SEGMENT_S = 4.0  # before any playlist says otherwise
END_GRACE_S = 5.0  # real seconds past the end a run waits for requests in flight
MAX_VIEWERS = 10_000
# A viewer has one request in flight at a time: to its PoP (a failed-over one), the gateway for keys and beacons.
VIEWER_CONNECTIONS = 4
# Idle connections are kept 30 s, as a browser keeps them (and below nginx's 75 s): a beacon every 10 s and a
# segment every few seconds reuse theirs instead of connecting again.
KEEPALIVE_S = 30.0
PACING_MIN_SLEEP_S = 0.02  # shorter pacing waits are carried over (the real clock only)

_DENIALS: dict[str, Reason] = {"not_entitled": "not_entitled", "stream_limit": "stream_limit",
                               "device_limit": "device_limit", "unknown_title": "unknown_title"}


# -- the shared grant -------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Grant:
    """One playback grant of the audience: the authorisation, the CAS session and a signed URL per PoP."""

    authorization: str
    session_id: str
    playback: tuple[tuple[str, str], ...]  # (pop, signed multivariant playlist URL)
    generation: int


def _refusal(response: httpx.Response, what: str) -> _Refused:
    try:
        error = response.json()["error"]
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", response.text[:120]
    reason: Reason = _DENIALS.get(code, "other")
    if response.status_code == 404:
        reason = "unknown_title"
    elif response.status_code == 401:
        reason = "unauthorized"
    return _Refused(reason, f"{what}: {response.status_code} {code} {message}".strip()[:200])


class _Grants:
    """Logs in once, holds the current grant and renews it for every viewer at once."""

    def __init__(self, http: httpx.AsyncClient, gateway: str, user: DemoUser, title: str) -> None:
        self.http = http
        self.gateway = gateway
        self.user = user
        self.title = title
        self.access_token = ""
        self.current: Grant | None = None
        self.count = 0
        self.lock = asyncio.Lock()

    async def _post(self, path: str, body: Mapping[str, str], token: str = "") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return await self.http.post(f"{self.gateway}{path}", json=dict(body), headers=headers)
        except httpx.TimeoutException as exc:
            raise _Refused("timeout", f"POST {path}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise _Refused("network_error", f"POST {path}: {type(exc).__name__}: {exc}"[:200]) from None

    async def first(self) -> Grant:
        response = await self._post("/api/auth/login", {"email": self.user.email, "password": self.user.password})
        if response.status_code != 200:
            raise _refusal(response, "login")
        try:
            self.access_token = str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _Refused("other", f"login: an answer without an access token: {exc}") from None
        return await self._authorize()

    async def _authorize(self) -> Grant:
        response = await self._post("/api/license/authorizations", {"title_id": self.title, "device_id": DEVICE_ID},
                                    self.access_token)
        if response.status_code not in (200, 201):
            raise _refusal(response, "authorization")
        try:
            body = response.json()
            playback = tuple((str(p["pop"]), str(p["url"])) for p in body.get("playback") or [])
            grant = Grant(str(body["authorization"]), str(body["session_id"]), playback, self.count + 1)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Refused("other", f"authorization: an unexpected answer: {exc}") from None
        self.count += 1
        self.current = grant
        if not playback:
            raise _Refused("manifest_error", f"{self.title!r} has no signed playback URL: is it published and "
                                             "is the CDN up?")
        return self.current

    async def renew(self, stale: Grant) -> Grant:
        """A new grant unless another viewer already got one since ``stale``; the old CAS stream ends first."""
        async with self.lock:
            assert self.current is not None
            if self.current.generation != stale.generation:
                return self.current
            await self.end()
            return await self._authorize()

    async def end(self) -> None:
        """End the current CAS stream session (the account's stream limit is small)."""
        if self.current is None or not self.access_token:
            return
        try:
            await self.http.delete(f"{self.gateway}/api/cas/sessions/{self.current.session_id}",
                                   headers={"Authorization": f"Bearer {self.access_token}"})
        except httpx.HTTPError:
            return  # it expires by itself without heartbeats


# -- one viewer -----------------------------------------------------------------------------------


class _Fatal(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:200]


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.response = response
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, self.request) from exc

    async def aclose(self) -> None:
        self.response.release()  # back to the pool when read to the end, else the connection is closed


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.HTTPError:
    """The httpx exception the viewer's fault handling expects for an aiohttp one."""
    message = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on aiohttp: one viewer's connections (a pool of :data:`VIEWER_CONNECTIONS`).

    httpx's own transport (httpcore, anyio, h11: all pure Python) costs about 1 ms of CPU per
    request on loopback and 2 ms per 800 kB segment; aiohttp's (a C parser) a fifth of that, which
    decides how many viewers one event loop keeps up with. The viewer code stays on httpx's API, and
    tests still replace the network with an httpx transport. Bodies pass through undecoded (httpx
    decodes ``Content-Encoding``); redirects and cookies are httpx's business, as with its transport.

    Not the ``httpx-aiohttp`` package (0.2): it maps every aiohttp connection error, a server
    dropping the connection included, to ``ConnectTimeout``, which the viewers' fault handling
    would take for a dead PoP, and it re-chunks bodies at 16 KiB. :func:`_httpx_error` keeps the
    distinctions the failover and retry rules need.
    """

    def __init__(self, tls: ssl.SSLContext) -> None:
        connector = aiohttp.TCPConnector(limit=VIEWER_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ssl=tls)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"connection", b"transfer-encoding")]
        try:
            response = await self.session.request(
                request.method, yarl.URL(str(request.url), encoded=True), headers=headers,
                data=await request.aread() or None, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(sock_connect=timeout.get("connect"), sock_read=timeout.get("read"),
                                              connect=timeout.get("pool")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(response.status, headers=list(response.raw_headers), stream=_Body(response, request),
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": (response.reason or "").encode("latin-1")})

    async def aclose(self) -> None:
        await self.session.close()


class _Clients:
    """The viewers' HTTP clients: one small connection pool per viewer, as each player has its own connections.

    Not one httpx client for the audience: httpcore's pool walks all its connections (and, while
    some are idle, all of them again for each) whenever a request is queued or a response ends, so
    with a few hundred viewers in one pool the simulator spent most of its CPU there and fell
    behind. Each client runs on :class:`_AiohttpTransport`; the viewers share one TLS context (one
    per client costs ~20 ms). A ``transport`` given by the caller (a test's mock) is shared by every
    client and left to the run's own client to close.
    """

    def __init__(self, timeout: float, transport: httpx.AsyncBaseTransport | None) -> None:
        self.timeout = timeout
        self.transport = transport

    @functools.cached_property
    def tls(self) -> ssl.SSLContext:
        return httpx.create_ssl_context()

    def open(self) -> httpx.AsyncClient:
        """A new client, inside the event loop: a viewer's (closed with :meth:`close`), or the audience's own
        for login and grants (used as a context manager, which closes its transport, a caller's too)."""
        return httpx.AsyncClient(timeout=self.timeout, transport=self.transport or _AiohttpTransport(self.tls))

    async def close(self, client: httpx.AsyncClient) -> None:
        if self.transport is None:
            await client.aclose()


@dataclass
class _Run:
    """What every viewer of one run shares."""

    clients: _Clients
    clock: Clock
    gateway: str
    title: str
    grants: _Grants
    playlists: Playlists
    max_buffer_s: float
    beacons: bool
    beacon_s: float
    deadline: float = 0.0
    requests: list[Request] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    beacons_sent: int = 0
    beacons_failed: int = 0


# Every viewer on a PoP asks for the same few URLs: parsing them once saves a few % of the CPU per request.
_join = functools.lru_cache(maxsize=4096)(urljoin)


class _Viewer:
    def __init__(self, run: _Run, index: int, session: str, arrival_s: float, pops: list[int],
                 rule: abr_rules.ThroughputRule | abr_rules.BolaRule, link: Link | None) -> None:
        self.run = run
        self.clock = run.clock
        self.index = index
        self.session = session
        self.arrival_s = arrival_s
        self.pops = pops  # indices into the grant's PoPs, in failover order
        self.rule = rule
        self.link = link
        self.estimator = abr_rules.EwmaEstimator()
        self.t0 = 0.0
        self.playback = Playback(0.0)
        self.pending: list[dict[str, Any]] = []  # events not yet in a beacon
        self.next_beacon = math.inf
        self.rung: int | None = None
        self.switches = 0
        self.segment_s = DEFAULT_SEGMENT_S
        self.failure = ""
        self.exit = ""
        self.done = False
        self.grant: Grant | None = None
        self.keys: set[str] = set()
        self.inits: set[tuple[int, str]] = set()
        self._http: httpx.AsyncClient | None = None

    # -- bookkeeping ----------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        """The viewer's own connections, opened on first use and closed when it finishes."""
        if self._http is None:
            self._http = self.run.clients.open()
        return self._http

    @property
    def pop(self) -> str:
        if self.grant is None or not self.pops:
            return "unknown"
        return self.grant.playback[self.pops[0]][0]

    def event(self, kind: str, **fields: Any) -> None:
        t = max(self.clock.now() - self.t0, 0.0)
        self.pending.append({"type": kind, "t_ms": min(round(t * 1000), beacon.MAX_T_MS), **fields})
        row: dict[str, Any] = {"viewer": self.index, "session": self.session, "t_s": round(t, 6), "type": kind}
        for key, value in fields.items():
            if key.endswith("_ms"):
                row[key.removesuffix("_ms") + "_s"] = value / 1000
            else:
                row[key] = value
        self.run.events.append(row)

    def error(self, reason: Reason, *, fatal: bool, detail: str) -> None:
        """An ``error`` event; ``started`` tells the collector a start failure from a playback failure."""
        self.event("error", reason=reason, fatal=fatal, started=self.playback.started_at is not None, detail=detail)

    def progress(self) -> None:
        played = self.playback.progress_played
        if self.playback.started_at is None or played <= 0:
            return
        kbps = round(self.playback.progress_kbit / played)
        self.playback.progress_played = self.playback.progress_kbit = 0.0
        self.event("progress", played_ms=round(played * 1000), bitrate_kbps=max(kbps, 1), dropped_frames=0)

    async def flush(self) -> None:
        """Send the pending events as beacons (at most 200 events each); failures are counted, not fatal."""
        events, self.pending = self.pending, []
        if not self.run.beacons or not events:
            return
        for start in range(0, len(events), beacon.MAX_EVENTS):
            body = {"v": beacon.VERSION, "session": self.session, "title": self.run.title, "pop": self.pop,
                    "client": "simulator", "events": events[start:start + beacon.MAX_EVENTS]}
            try:
                response = await self.http.post(f"{self.run.gateway}{BEACON_PATH}", content=json.dumps(body),
                                                    headers={"Content-Type": "application/json"})
                ok = response.status_code < 300
            except httpx.HTTPError:
                ok = False
            if ok:
                self.run.beacons_sent += 1
            else:
                self.run.beacons_failed += 1

    async def sleep_until(self, t: float) -> None:
        """Wait until ``t`` (run time), sending beacons when due; Deadline at the run's end."""
        while True:
            now = self.clock.now()
            until = min(t, self.next_beacon, self.run.deadline)
            if until > now:
                await self.clock.sleep(until - now)
            now = self.clock.now()
            if now >= self.run.deadline and t > self.run.deadline:
                raise Deadline
            if now >= self.next_beacon:
                self.playback.advance(now)
                self.progress()
                self.next_beacon = now + self.run.beacon_s
                await self.flush()
            if now >= t:
                return

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.clock.now() + seconds)

    # -- requests -------------------------------------------------------------------------

    def cmcd_of(self, ot: cmcd.ObjectType, *, br: int | None = None, tb: int | None = None,
                duration_s: float | None = None, nor: str | None = None) -> cmcd.Cmcd:
        """The request's CMCD, ``mtp`` being the ABR estimate once a segment measured the link."""
        estimate = self.estimator.estimate_kbps() if self.estimator.last_kbps is not None else None
        return request_cmcd(self.playback, self.clock.now(), ot=ot, session=self.session,
                                     content_id=self.run.title, bitrate_kbps=br, top_kbps=tb, duration_s=duration_s,
                                     throughput_kbps=estimate, next_object=nor)

    async def fetch(self, kind: str, url: str, data: cmcd.Cmcd, *, bitrate: int | None = None,
                    headers: Mapping[str, str] | None = None, keep: bool = True,
                    paced: bool = False) -> tuple[int, bytes, int]:
        """GET ``url`` with CMCD; ``(status, body if keep, bytes)``; status 0 with an exception re-raised."""
        request = Request(self.index, self.session, kind, url, pop=self.pop, bitrate_kbps=bitrate)
        self.run.requests.append(request)
        body = await fetch(self.http, request, self.clock, data=data, headers=headers, keep=keep,
                                    link=self.link if paced else None, deadline=self.run.deadline)
        if kind == "segment" and request.status == 200:
            self.estimator.sample(download_s=request.seconds, nbytes=request.bytes)
        return request.status, body, request.bytes

    async def media(self, kind: str, rel: Sequence[str], *, ot: cmcd.ObjectType, bitrate: int | None = None,
                    tb: int | None = None, duration_s: float | None = None, nor: str | None = None,
                    keep: bool = True) -> bytes:
        """A media object at ``rel`` (URIs relative to the signed master URL, joined in turn), with the
        player's reactions: failover on a refused connection, a new grant on 403/410, one retry."""
        retried = renewed = False
        while True:
            assert self.grant is not None
            url = self.grant.playback[self.pops[0]][1]
            for part in rel:
                url = _join(url, part)
            data = self.cmcd_of(ot, br=bitrate, tb=tb, duration_s=duration_s, nor=nor)
            try:
                status, body, _ = await self.fetch(kind, url, data, bitrate=bitrate, keep=keep,
                                                   paced=kind in ("segment", "init"))
            except httpx.ConnectError as exc:
                lost = self.pop
                if len(self.pops) == 1:
                    raise _Fatal("pop_unreachable", f"no PoP left: {lost}: {exc}") from None
                self.pops = self.pops[1:]
                self.error("pop_unreachable", fatal=False, detail=f"{lost} refused the connection; "
                                                                 f"failing over to {self.pop}")
                continue
            except httpx.HTTPError as exc:
                reason: Reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "network_error"
                problem = type(exc).__name__
            else:
                if status == 200:
                    return body
                if status in (403, 410):
                    if renewed:
                        raise _Fatal("token_expired", f"{kind} {unsigned_path(url)}: {status} after a new grant")
                    renewed = True
                    self.error("token_expired", fatal=False, detail=f"the edge answered {status}: a new grant")
                    await self.regrant()
                    continue
                reason = ("manifest_error" if kind in ("master", "playlist")
                          else "segment_not_found" if status == 404 else "network_error")
                problem = str(status)
            if retried:
                raise _Fatal(reason, f"{kind} {unsigned_path(url)}: {problem}")
            retried = True
            await self.sleep(RETRY_DELAY_S)

    async def regrant(self) -> None:
        assert self.grant is not None
        try:
            self.grant = await self.run.grants.renew(self.grant)
        except _Refused as refused:
            raise _Fatal(refused.reason, refused.detail) from None

    async def key(self, uri: str) -> None:
        """The AES-128 key at ``uri`` with the playback authorisation, as a player's key loader asks for it."""
        renewed = False
        while True:
            assert self.grant is not None
            data = self.cmcd_of("k")
            try:
                status, body, _ = await self.fetch("key", uri, data,
                                                   headers={"Authorization": f"Bearer {self.grant.authorization}"})
            except httpx.HTTPError as exc:
                raise _Fatal("key_unavailable", f"key {uri}: {type(exc).__name__}") from None
            if status == 200 and len(body) == 16:
                return
            if status in (401, 403) and not renewed:  # the authorisation is short-lived
                renewed = True
                await self.regrant()
                continue
            raise _Fatal("key_unavailable", f"key {unsigned_path(uri)}: {status}, {len(body)} bytes")

    # -- the journey ------------------------------------------------------------------------

    async def watch(self, grant: Grant | _Refused) -> None:
        """Arrive, play until the end of the title, the run's end or a fatal error; always report."""
        await self.clock.sleep(self.arrival_s)
        self.t0 = self.clock.now()
        self.playback = Playback(self.t0)
        self.next_beacon = self.t0 + self.run.beacon_s
        self.event("play")
        try:
            if self.t0 >= self.run.deadline:
                raise Deadline
            if isinstance(grant, _Refused):
                raise _Fatal(grant.reason, grant.detail)
            self.grant = grant
            await self.play()
            self.exit = "ended"
        except _Fatal as fatal:
            self.failure, self.exit = fatal.reason, "error"
            self.error(fatal.reason, fatal=True, detail=fatal.detail)
        except Deadline:
            self.exit = "exit"
        await self.finish()

    async def finish(self) -> None:
        if self.done:
            return
        self.done = True
        now = min(self.clock.now(), self.run.deadline)
        self.playback.advance(now)
        if self.playback.state == "stalled":
            self.event("stall", duration_ms=round(self.playback.end_stall(now) * 1000))
        self.progress()
        self.exit = self.exit or "exit"
        self.event("end", reason=self.exit, started=self.playback.started_at is not None,
                   played_ms=round(self.playback.played_s * 1000), stalled_ms=round(self.playback.stalled_s * 1000))
        try:
            await self.flush()
        finally:
            await self.hang_up()

    async def hang_up(self) -> None:
        """Close the viewer's connections."""
        if self._http is not None:
            http, self._http = self._http, None
            await self.run.clients.close(http)

    async def play(self) -> None:
        master_text = await self.media("master", [], ot="m")
        try:
            variants = self.run.playlists.master(master_text.decode(errors="replace"))
        except ManifestError as exc:
            raise _Fatal("manifest_error", str(exc)) from None
        ladder = [v.kbps for v in variants]
        top = ladder[-1]
        medias: dict[int, MediaPlaylist] = {}
        index = 0
        while True:
            level = self.playback.level(self.clock.now())
            if level > self.run.max_buffer_s:
                await self.sleep(level - self.run.max_buffer_s)
                level = self.playback.level(self.clock.now())
            rung = self.rule.choose(ladder, current=self.rung, estimate_kbps=self.estimator.estimate_kbps(),
                                    buffer_s=level, segment_s=self.segment_s)
            variant = variants[rung]
            self.run.timeline.append({
                "viewer": self.index, "t_s": round(self.clock.now() - self.t0, 6), "buffer_s": round(level, 6),
                "bitrate_kbps": variant.kbps, "estimate_kbps": round(self.estimator.estimate_kbps(), 3),
                "limit_kbps": self.link.kbps() if self.link is not None else math.nan})
            # Rungs go by index, beacons by kbps: two rungs of the same kbps (BANDWIDTHs a few hundred bit/s apart)
            # are no change a viewer sees, and a switch between equal kbps makes the collector refuse the beacon.
            if self.rung is not None and ladder[rung] != ladder[self.rung]:
                self.switches += 1
                self.event("switch", from_kbps=ladder[self.rung], to_kbps=variant.kbps)
            self.rung = rung
            if rung not in medias:
                text = await self.media("playlist", [variant.uri], ot="m")
                try:
                    medias[rung] = self.run.playlists.media_playlist(text.decode(errors="replace"))
                except ManifestError as exc:
                    raise _Fatal("manifest_error", str(exc)) from None
            media = medias[rung]
            if index >= len(media.segments):
                break
            segment = media.segments[index]
            self.segment_s = segment.duration
            if segment.key and segment.key not in self.keys:
                assert self.grant is not None
                await self.key(urljoin(urljoin(self.grant.playback[self.pops[0]][1], variant.uri), segment.key))
                self.keys.add(segment.key)
            ot: cmcd.ObjectType = "av" if variant.audio else "v"
            if media.init and (rung, media.init) not in self.inits:
                await self.media("init", [variant.uri, media.init], ot="i", bitrate=variant.kbps, tb=top)
                self.inits.add((rung, media.init))
            nor = media.segments[index + 1].uri if index + 1 < len(media.segments) else None
            await self.media("segment", [variant.uri, segment.uri], ot=ot, bitrate=variant.kbps, tb=top,
                             duration_s=segment.duration, nor=nor, keep=False)
            index += 1
            change = self.playback.add(segment.duration, variant.kbps, self.clock.now())
            if change is not None and change[0] == "start":
                self.event("start", startup_ms=round((self.clock.now() - self.t0) * 1000), bitrate_kbps=variant.kbps)
            elif change is not None:
                self.event("stall", duration_ms=round(change[1] * 1000))
            if index == len(media.segments):
                break
        # Everything is downloaded: play it out.
        self.playback.complete = True
        await self.sleep(self.playback.level(self.clock.now()))
        self.playback.play_out(self.clock.now())


# -- the audience -----------------------------------------------------------------------------------

# labkit.analysis.experience's frames, plus what only the simulator knows: a session's PoP, user and ABR rule;
# an error's detail.
SESSION_COLUMNS = [*experience.SESSION_COLUMNS, "pop", "user", "rule"]
EVENT_COLUMNS = [*experience.EVENT_COLUMNS, "detail"]
TIMELINE_COLUMNS = ["viewer", "t_s", "buffer_s", "bitrate_kbps", "estimate_kbps", "limit_kbps"]


@dataclass
class Audience:
    """The result of a run: four DataFrames and :meth:`summary`.

    - ``sessions``: one row per viewer (started, startup_s, stalls, stalled_s, played_s, rebuffering_ratio,
      time-weighted bitrate_kbps, switches, failure reason or "", exit: ended, exit or error);
    - ``events``: the QoE events each viewer reported (t_s since its play), as its beacons carried them;
    - ``timeline``: one row per segment decision (buffer_s, the rung chosen, the ABR estimate, the limit);
    - ``requests``: every media and key request (kind, unsigned path, status, cache, PoP, bytes, seconds,
      the CMCD payload sent, the error of a failed one).
    """

    sessions: pd.DataFrame
    events: pd.DataFrame
    timeline: pd.DataFrame
    requests: pd.DataFrame
    title: str
    rule: str
    seed: int
    seconds: float
    grants: int = 0
    beacons_sent: int = 0
    beacons_failed: int = 0
    cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The run in numbers (JSON-able): :func:`labkit.analysis.experience.summary` of the sessions
        (startup percentiles,
        rebuffering ratio, failures, time-weighted bitrate, switches ...; a figure that does not exist, such as
        the startup of an audience that never started, is ``None``), and what only the simulator knows:
        ``viewers``, ``http_errors`` (media and key requests that failed or answered 4xx/5xx), ``failures``
        (viewers by fatal reason), ``grants``, ``beacons_sent``/``beacons_failed``, ``cpu_s``, ``rule``, ``seed``.
        """
        s, requests = self.sessions, self.requests
        figures = {key: None if isinstance(value, float) and math.isnan(value) else value
                   for key, value in experience.summary(s).items()}
        failed = s["failure"][s["failure"] != ""]
        return {
            "title": self.title, "viewers": len(s), **figures,
            "http_errors": int(((requests["status"] == 0) | (requests["status"] >= 400)).sum()),
            "failures": {str(k): int(v) for k, v in sorted(Counter(failed).items())},
            "rule": self.rule, "seed": self.seed, "grants": self.grants,
            "beacons_sent": self.beacons_sent, "beacons_failed": self.beacons_failed,
            "cpu_s": round(self.cpu_s, 3),
        }


def _limits(bandwidth: Limit | Sequence[Limit | None] | None, count: int) -> list[Limit | None]:
    if bandwidth is None or isinstance(bandwidth, Fixed | Trace):
        return [bandwidth] * count
    if isinstance(bandwidth, str | bytes) or not isinstance(bandwidth, Sequence) or not bandwidth:
        raise ConfigError(f"bandwidth must be None, a Fixed or Trace limit, or a non-empty list of them; "
                          f"got {bandwidth!r}")
    for item in bandwidth:
        if item is not None and not isinstance(item, Fixed | Trace):
            raise ConfigError(f"bandwidth list item {item!r} is not a Fixed or Trace limit (or None)")
    return [bandwidth[i % len(bandwidth)] for i in range(count)]


def _validate(title: str, count: int, seconds: float, arrivals_s: float, max_buffer_s: float, abr_rule: str,
              beacon_s: float, request_timeout: float) -> None:
    try:
        validate_title_id(title)
    except InvalidTitleId as exc:
        raise ConfigError(f"{exc}") from None  # it says what a title id looks like
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_VIEWERS:
        raise ConfigError(f"count must be a whole number of viewers from 1 to {MAX_VIEWERS}, got {count!r}")
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"seconds must be a positive number, got {seconds!r}")
    if not (math.isfinite(arrivals_s) and 0 <= arrivals_s < seconds):
        raise ConfigError(f"arrivals_s must be at least 0 and less than seconds ({seconds}), got {arrivals_s!r}")
    if not (math.isfinite(max_buffer_s) and max_buffer_s >= 1):
        raise ConfigError(f"max_buffer_s must be at least 1 second, got {max_buffer_s!r}")
    if abr_rule not in abr_rules.RULES:
        raise ConfigError(f"unknown ABR rule {abr_rule!r}", hint=f"choose one of: {', '.join(abr_rules.RULES)}")
    if not beacon_s > 0 or not request_timeout > 0:
        raise ConfigError("beacon_s and request_timeout must be positive seconds")


async def run_async(gateway_url: str, title: str, count: int, seconds: float, *, user: str | DemoUser = "alice",
                    abr: str = "ewma", bandwidth: Limit | Sequence[Limit | None] | None = None,
                    pops: Sequence[str] | None = None, arrivals_s: float | None = None,
                    max_buffer_s: float = DEFAULT_MAX_BUFFER_S, seed: int = 0, beacons: bool = True,
                    beacon_s: float = DEFAULT_BEACON_S, align_traces: bool = False,
                    request_timeout: float = DEFAULT_REQUEST_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None,
                    clock: Clock | None = None) -> Audience:
    """:func:`run` in a running event loop."""
    if arrivals_s is None:
        arrivals_s = min(10.0, seconds / 4) if isinstance(seconds, int | float) and seconds > 0 else 0.0
    _validate(title, count, seconds, arrivals_s, max_buffer_s, abr, beacon_s, request_timeout)
    limits = _limits(bandwidth, count)
    demo = user if isinstance(user, DemoUser) else demo_user(user)
    clock = clock or RealClock()
    gateway = gateway_url.rstrip("/")
    rng = random.Random(seed)
    plans = []
    for _ in range(count):
        arrival = rng.uniform(0, arrivals_s) if arrivals_s else 0.0
        pop_pick = rng.randrange(1 << 30)
        session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        offset = rng.random()
        plans.append((arrival, pop_pick, session, offset))

    cpu0 = time.process_time()
    clients = _Clients(request_timeout, transport)
    async with clients.open() as http:
        grants = _Grants(http, gateway, demo, title)
        try:
            grant: Grant | _Refused = await grants.first()
        except _Refused as refused:
            grant = refused
        crowd: list[_Viewer] = []
        try:
            order = _pop_orders(grant, pops, [p[1] for p in plans])
            shared = _Run(clients, clock, gateway, title, grants, Playlists(), max_buffer_s, beacons, beacon_s)
            shared.deadline = clock.now() + seconds
            start = clock.now()
            for i, (arrival, _, session, offset) in enumerate(plans):
                limit = limits[i]
                link = None
                if limit is not None:
                    shift = 0.0 if align_traces or not isinstance(limit, Trace) else offset * limit.period_s
                    link = Link(limit, now=clock.now, sleep=clock.sleep, offset_s=shift - start,
                                min_sleep_s=0.0 if clock.virtual else PACING_MIN_SLEEP_S)
                crowd.append(_Viewer(shared, i, session, arrival, order[i],
                                     abr_rules.rule(abr, buffer_target_s=max_buffer_s), link))
            await clock.drive([v.watch(grant) for v in crowd], timeout=seconds + request_timeout + END_GRACE_S)
            for viewer in crowd:  # cancelled in a request at the very end
                if not viewer.done:
                    await viewer.finish()
        finally:
            for viewer in crowd:  # those a failure left with open connections
                await viewer.hang_up()
            await grants.end()
    return _audience(crowd, shared, demo, abr, seed, seconds, grants.count, time.process_time() - cpu0)



def _pop_orders(grant: Grant | _Refused, pops: Sequence[str] | None, picks: Sequence[int]) -> list[list[int]]:
    """Each viewer's PoPs (indices into the grant's), its own first and then the grant's next ones."""
    if isinstance(grant, _Refused):
        return [[] for _ in picks]
    names = [pop for pop, _ in grant.playback]
    wanted = list(pops) if pops else names
    unknown = [p for p in wanted if p not in names]
    if unknown:
        raise ConfigError(f"no PoP {', '.join(map(repr, unknown))} in the playback grant",
                          hint=f"the grant's PoPs: {', '.join(names)}")
    orders = []
    for pick in picks:
        first = names.index(wanted[pick % len(wanted)])
        orders.append([(first + k) % len(names) for k in range(len(names))])
    return orders


def _audience(crowd: Sequence[_Viewer], shared: _Run, user: DemoUser, rule: str, seed: int, seconds: float,
              grants: int, cpu_s: float) -> Audience:
    import pandas as pd

    rows = []
    for v in crowd:
        p = v.playback
        started = p.started_at is not None
        total = p.played_s + p.stalled_s
        rows.append({
            "viewer": v.index, "session": v.session, "pop": v.pop, "user": user.email.split("@")[0], "rule": rule,
            "started": started, "startup_s": round(p.started_at - v.t0, 6) if p.started_at is not None else math.nan,
            "stalls": p.stalls, "stalled_s": round(p.stalled_s, 6), "played_s": round(p.played_s, 6),
            "rebuffering_ratio": p.stalled_s / total if started and total > 0 else math.nan,
            "bitrate_kbps": p.kbit / p.played_s if p.played_s > 0 else math.nan,
            "switches": v.switches, "failure": v.failure, "exit": v.exit,
        })
    events = pd.DataFrame(shared.events).reindex(columns=EVENT_COLUMNS)
    events = events.sort_values(["viewer", "t_s"], kind="stable").reset_index(drop=True)
    return Audience(
        sessions=pd.DataFrame(rows, columns=SESSION_COLUMNS),
        events=events,
        timeline=pd.DataFrame(shared.timeline, columns=TIMELINE_COLUMNS),
        requests=requests_frame(shared.requests),
        title=shared.title, rule=rule, seed=seed, seconds=seconds, grants=grants,
        beacons_sent=shared.beacons_sent, beacons_failed=shared.beacons_failed, cpu_s=cpu_s,
    )


def run(gateway_url: str, title: str, count: int, seconds: float, *, user: str | DemoUser = "alice",
        abr: str = "ewma", bandwidth: Limit | Sequence[Limit | None] | None = None,
        pops: Sequence[str] | None = None, arrivals_s: float | None = None,
        max_buffer_s: float = DEFAULT_MAX_BUFFER_S, seed: int = 0, beacons: bool = True,
        beacon_s: float = DEFAULT_BEACON_S, align_traces: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None) -> Audience:
    """``count`` viewers of ``title`` through the gateway at ``gateway_url`` for ``seconds`` seconds.

    ``user`` is a demo user (``alice``) whose account grants the playback; ``abr`` the rule
    (``"ewma"``: hls.js, ``"bola"``: BOLA-BASIC); ``bandwidth`` a :class:`~labkit.traffic.bandwidth.Fixed` or
    :class:`~labkit.traffic.bandwidth.Trace` limit for every viewer, or a list (viewer ``i`` gets item
    ``i % len``; ``None`` is unlimited); each viewer starts at a random point of a trace unless
    ``align_traces``. ``pops`` restricts the PoPs viewers start on (default: all of the grant's,
    spread at random). Viewers arrive uniformly at random over ``arrivals_s`` seconds (default a
    quarter of ``seconds``, at most 10). ``beacons=False`` sends none. ``transport`` and ``clock``
    (a :class:`~labkit.traffic.playback.VirtualClock`) replace the network and the time in tests. Bad arguments raise
    :class:`~labkit.core.errors.ConfigError`.
    """
    return eventloop.run(run_async(gateway_url, title, count, seconds, user=user, abr=abr, bandwidth=bandwidth,
                                   pops=pops, arrivals_s=arrivals_s, max_buffer_s=max_buffer_s, seed=seed,
                                   beacons=beacons, beacon_s=beacon_s, align_traces=align_traces,
                                   request_timeout=request_timeout, transport=transport, clock=clock))
