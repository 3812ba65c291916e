"""Simple viewers for the CDN drills: each plays one rung of a title through one PoP, as a player does.

A viewer fetches the multivariant playlist, one media playlist, its init segment and then every
segment in order, and sends CMCD (CTA-5004, :mod:`ott.cmcd`) with each request in the ``CMCD``
query argument: its session id (``sid``), the content id (``cid``), the streaming format (HLS) and
stream type (VOD), the object type, the encoded bitrate (the variant's ``BANDWIDTH``) and duration
of media objects, its buffer length, the last measured throughput, ``su`` until playback starts
(or resumes after the buffer ran dry) and ``bs`` after a stall. The buffer is a model: playback
starts when the first segment arrives and consumes media in real time; with ``max_buffer_s`` a
viewer waits while it holds that much media ahead, like a player, instead of downloading
everything at once.

This is not an ABR player (it keeps the rung it started on): just enough to make realistic CDN
traffic, one connection per viewer::

    fetches = watch(signed_master_url)                 # one viewer, the top rung
    frame(fetches)[["kind", "path", "status", "cache", "latency_ms"]]
    fetches = wave([url_pop0, url_pop1], viewers=24, arrivals_s=20)   # arrivals spread over 20 s
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import m3u8

from labkit.core import eventloop
from ott import cmcd, signing

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BUFFER_S = 12.0


@dataclass(frozen=True)
class Fetch:
    """One request of one viewer; ``status`` 0 means no response (see ``error``)."""

    viewer: int
    session: str
    kind: str  # master, playlist, init, segment
    url: str  # what was requested, without the CMCD argument
    status: int
    cache: str  # X-Cache-Status, "" when absent
    pop: str  # X-PoP, "" when absent
    bytes: int
    latency_s: float  # from the request to the last body byte
    started: float  # epoch seconds
    cmcd: str  # the CMCD payload sent (decoded), "" when none
    error: str = ""

    @property
    def path(self) -> str:
        """The path the edge caches: the URL's path without the signed prefix."""
        return unsigned_path(self.url)


def unsigned_path(url: str) -> str:
    """``/s/<token>/<expires>/<title>/<rest>`` becomes ``/<title>/<rest>``; other paths are kept.

    >>> unsigned_path("http://127.0.0.1:18100/s/AAAAAAAAAAAAAAAAAAAAAA/2000000000/lab-clock/v1/master.m3u8?x=1")
    '/lab-clock/v1/master.m3u8'
    >>> unsigned_path("http://127.0.0.1:18060/lab-clock/master.m3u8")
    '/lab-clock/master.m3u8'
    """
    path = httpx.URL(url).path
    match = signing.SIGNED_PATH.match(path)
    return f"/{match['title']}{match['rest']}" if match else path


def with_cmcd(url: str, data: cmcd.Cmcd | None) -> str:
    """``url`` with the ``CMCD`` query argument (URL-encoded) a player appends; unchanged for ``None``.

    >>> with_cmcd("http://pop/a.m4s", cmcd.Cmcd(br=800, su=True))
    'http://pop/a.m4s?CMCD=br%3D800%2Csu'
    """
    if data is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}{cmcd.QUERY_ARG}={cmcd.to_query(data)}"


class _Buffer:
    """The playback model: media seconds downloaded, played in real time once playback starts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.downloaded = 0.0
        self.played = 0.0  # media played before ``since``
        self.since: float | None = None  # when playback (re)started; None while waiting for media
        self.starved = False  # the buffer ran dry since the last request

    def level(self) -> float:
        """Seconds of media ahead of the playhead; notices a stall (the playhead reached the end)."""
        if self.since is None:
            return self.downloaded - self.played
        position = self.played + (self.clock() - self.since)
        if position >= self.downloaded:
            self.played, self.since, self.starved = self.downloaded, None, True
            return 0.0
        return self.downloaded - position

    def add(self, seconds: float) -> None:
        self.level()
        self.downloaded += seconds
        if self.since is None:
            self.since = self.clock()


def _round(value: float, step: int) -> int:
    """CTA-5004 rounds bl to 100 ms and mtp to 100 kbps."""
    return int(round(value / step) * step)


async def play(http: httpx.AsyncClient, master_url: str, *, viewer: int = 0, rung: int | str = 0,
               session: str | None = None, content_id: str | None = None, send_cmcd: bool = True,
               max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S, out: list[Fetch] | None = None) -> list[Fetch]:
    """One viewer: the title at ``master_url`` (a signed URL of one PoP), one rung, start to end.

    ``rung`` is an index into the multivariant playlist's variants (highest ``BANDWIDTH`` first, as
    the transcoder lists them; taken modulo their number) or a variant's folder name (``"360p"``).
    ``max_buffer_s=None`` downloads without pausing. Stops at the first failed request (which is
    included, with its status or error). Each request is appended to ``out`` (returned) as it ends.
    """
    sid = session or str(uuid.uuid4())
    fetches: list[Fetch] = [] if out is None else out
    buffer = _Buffer()
    mtp: int | None = None  # the last segment's measured throughput, kbit/s

    async def get(kind: str, url: str, *, br: int | None = None, tb: int | None = None, ot: cmcd.ObjectType = "m",
                  duration_s: float | None = None) -> httpx.Response | None:
        nonlocal mtp
        data = None
        if send_cmcd:
            ahead = buffer.level()
            starved, buffer.starved = buffer.starved, False
            playing = buffer.downloaded > 0  # playback starts with the first segment
            data = cmcd.Cmcd(br=br, tb=tb, ot=ot, bl=_round(ahead * 1000, 100) if playing else None,
                             bs=True if starved else None, mtp=mtp, su=True if not playing or starved else None,
                             d=round(duration_s * 1000) if duration_s is not None else None,
                             sid=sid, cid=content_id, sf="h", st="v")
        started, clock = time.time(), time.perf_counter()
        try:
            response = await http.get(with_cmcd(url, data))
        except httpx.HTTPError as exc:
            fetches.append(Fetch(viewer, sid, kind, url, 0, "", "", 0, time.perf_counter() - clock, started,
                                 cmcd.format(data) if data else "", f"{type(exc).__name__}: {exc}".strip()))
            return None
        latency = time.perf_counter() - clock
        fetches.append(Fetch(viewer, sid, kind, url, response.status_code, response.headers.get("x-cache-status", ""),
                             response.headers.get("x-pop", ""), len(response.content), latency, started,
                             cmcd.format(data) if data else ""))
        if kind == "segment" and latency > 0:
            mtp = max(100, _round(len(response.content) * 8 / latency / 1000, 100))
        return response if response.status_code == 200 else None

    master_response = await get("master", master_url)
    if master_response is None:
        return fetches
    master = m3u8.loads(master_response.text)
    variants = list(master.playlists)
    if not variants:
        return fetches
    if isinstance(rung, str):
        named = [v for v in variants if str(v.uri).split("/")[0] == rung]
        if not named:
            raise ValueError(f"no variant {rung!r} in {master_url}: {[str(v.uri).split('/')[0] for v in variants]}")
        variant = named[0]
    else:
        variant = variants[rung % len(variants)]
    br = int(variant.stream_info.bandwidth) // 1000
    tb = max(int(v.stream_info.bandwidth) for v in variants) // 1000
    ot: cmcd.ObjectType = "av" if "mp4a" in str(variant.stream_info.codecs or "") else "v"
    media_url = str(httpx.URL(master_url).join(str(variant.uri)))
    media_response = await get("playlist", media_url)
    if media_response is None:
        return fetches
    media = m3u8.loads(media_response.text)
    init = media.segment_map[0].uri if media.segment_map else None
    if init and await get("init", str(httpx.URL(media_url).join(init)), br=br, tb=tb, ot="i") is None:
        return fetches
    for segment in media.segments:
        if max_buffer_s is not None:
            ahead = buffer.level()
            if ahead > max_buffer_s:
                await asyncio.sleep(ahead - max_buffer_s)
        response = await get("segment", str(httpx.URL(media_url).join(str(segment.uri))), br=br, tb=tb,
                             ot=ot, duration_s=float(segment.duration))
        if response is None:
            return fetches
        buffer.add(float(segment.duration))
    return fetches


def watch(master_url: str, *, rung: int | str = 0, session: str | None = None, content_id: str | None = None,
          send_cmcd: bool = True, max_buffer_s: float | None = None, timeout: float = DEFAULT_TIMEOUT,
          transport: httpx.AsyncBaseTransport | None = None) -> list[Fetch]:
    """One viewer, on a connection of its own, downloading without pauses by default (see :func:`play`).

    ``timeout`` bounds each request; ``transport`` replaces the network (tests).
    """

    async def job() -> list[Fetch]:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as http:
            return await play(http, master_url, rung=rung, session=session, content_id=content_id,
                              send_cmcd=send_cmcd, max_buffer_s=max_buffer_s)

    return eventloop.run(job())


async def wave_async(master_urls: Sequence[str], viewers: int, *, arrivals_s: float = 0.0,
                     content_id: str | None = None, max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S,
                     timeout: float = 120.0, request_timeout: float = DEFAULT_TIMEOUT,
                     transport: httpx.AsyncBaseTransport | None = None) -> list[Fetch]:
    """:func:`wave` in a running event loop."""
    if viewers < 1 or not master_urls:
        raise ValueError("a wave needs at least one viewer and one master URL")
    if arrivals_s < 0:
        raise ValueError("arrivals_s must not be negative")
    results: list[list[Fetch]] = [[] for _ in range(viewers)]

    async def viewer(i: int) -> None:
        await asyncio.sleep(i * arrivals_s / viewers)
        async with httpx.AsyncClient(timeout=request_timeout, transport=transport) as http:
            await play(http, master_urls[i % len(master_urls)], viewer=i, rung=i // len(master_urls),
                       content_id=content_id, max_buffer_s=max_buffer_s, out=results[i])

    tasks = [asyncio.create_task(viewer(i)) for i in range(viewers)]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sorted((f for fetches in results for f in fetches), key=lambda f: f.started)


def wave(master_urls: Sequence[str], viewers: int, *, arrivals_s: float = 0.0, content_id: str | None = None,
         max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S, timeout: float = 120.0,
         transport: httpx.AsyncBaseTransport | None = None) -> list[Fetch]:
    """``viewers`` viewers arriving evenly over ``arrivals_s`` seconds, each on its own connection.

    Viewer ``i`` plays through ``master_urls[i % len(master_urls)]`` (one signed URL per PoP) and
    rung ``i // len(master_urls)`` (so PoPs and rungs are both spread), with a session id of its
    own. Viewers still playing after ``timeout`` seconds are cancelled (their finished requests are
    kept). Returns every request, in the order they started.
    """
    return eventloop.run(wave_async(master_urls, viewers, arrivals_s=arrivals_s, content_id=content_id,
                           max_buffer_s=max_buffer_s, timeout=timeout, transport=transport))


def frame(fetches: Sequence[Fetch]) -> pd.DataFrame:
    """One row per request: viewer, session, kind, path (unsigned), status, cache, pop, bytes, latency_ms, started."""
    import pandas as pd

    columns = ["viewer", "session", "kind", "path", "status", "cache", "pop", "bytes", "latency_ms", "started",
               "cmcd", "error"]
    return pd.DataFrame([{
        "viewer": f.viewer, "session": f.session, "kind": f.kind, "path": f.path, "status": f.status,
        "cache": f.cache, "pop": f.pop, "bytes": f.bytes, "latency_ms": round(f.latency_s * 1000, 3),
        "started": pd.Timestamp(f.started, unit="s", tz="UTC"), "cmcd": f.cmcd, "error": f.error,
    } for f in fetches], columns=columns)
