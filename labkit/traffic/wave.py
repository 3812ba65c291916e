"""Simple viewers for the CDN drills: each plays one rung of a title through one PoP, as a player does.

A viewer fetches the multivariant playlist, one media playlist, its init segment and then every
segment in order, and sends CMCD (CTA-5004, :mod:`ott.cmcd`) with each request in the ``CMCD``
query argument: its session id (``sid``), the content id (``cid``), the streaming format (HLS) and
stream type (VOD), the object type, the encoded bitrate (the variant's ``BANDWIDTH``) and duration
of media objects, its buffer length, the last segment's measured throughput, ``su`` until playback
starts (or resumes after the buffer ran dry) and ``bs`` after a stall. It is the player core of
:mod:`labkit.traffic.playback`, which the ABR audience shares: the same buffer model (playback
starts when the first segment arrives and consumes media in real time; with ``max_buffer_s`` a
viewer waits while it holds that much media ahead, like a player, instead of downloading
everything at once), the same CMCD and the same request records
(:class:`~labkit.traffic.playback.Request`).

This is not an ABR player (it keeps the rung it started on): just enough to make realistic CDN
traffic, one connection per viewer::

    fetches = watch(signed_master_url)                 # one viewer, the top rung
    frame(fetches)[["kind", "path", "status", "cache", "latency_ms"]]
    fetches = wave([url_pop0, url_pop1], viewers=24, arrivals_s=20)   # arrivals spread over 20 s
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from labkit.core import eventloop
from labkit.traffic.playback import (
    DEFAULT_MAX_BUFFER_S,
    Clock,
    ManifestError,
    Playback,
    Playlists,
    RealClock,
    Request,
    Variant,
    fetch,
    request_cmcd,
    requests_frame,
)
from ott import cmcd

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TIMEOUT = 10.0
FRAME_COLUMNS = ["viewer", "session", "kind", "path", "status", "cache", "pop", "bytes", "latency_ms", "started",
                 "cmcd", "error"]


class _Stopped(Exception):
    """A request failed: the viewer stops, as a player without retries would."""


def _pick(variants: tuple[Variant, ...], rung: int | str, master_url: str) -> Variant:
    """Variant ``rung``: an index, highest ``BANDWIDTH`` first (taken modulo their number), or a folder name."""
    ranked = variants[::-1]
    if isinstance(rung, int):
        return ranked[rung % len(ranked)]
    named = [v for v in ranked if v.folder == rung]
    if not named:
        raise ValueError(f"no variant {rung!r} in {master_url}: {[v.folder for v in ranked]}")
    return named[0]


async def play(http: httpx.AsyncClient, master_url: str, *, viewer: int = 0, rung: int | str = 0,
               session: str | None = None, content_id: str | None = None, send_cmcd: bool = True,
               max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S, out: list[Request] | None = None,
               clock: Clock | None = None, playlists: Playlists | None = None) -> list[Request]:
    """One viewer: the title at ``master_url`` (a signed URL of one PoP), one rung, start to end.

    ``rung`` is an index into the multivariant playlist's variants (highest ``BANDWIDTH`` first, as
    the transcoder lists them; taken modulo their number) or a variant's folder name (``"360p"``).
    ``max_buffer_s=None`` downloads without pausing. Stops at the first failed request (which is
    included, with its status or error). Each request is appended to ``out`` (returned) as it ends.
    ``clock`` (a :class:`~labkit.traffic.playback.VirtualClock` in tests) times and paces the viewer;
    ``playlists`` shares parsed playlists between viewers.
    """
    clock = clock or RealClock()
    playlists = playlists or Playlists()
    sid = session or str(uuid.uuid4())
    fetches: list[Request] = [] if out is None else out
    buffer = Playback(clock.now())
    mtp: float | None = None  # the last segment's measured throughput, kbit/s

    async def get(kind: str, url: str, *, ot: cmcd.ObjectType = "m", variant: Variant | None = None,
                  top: int | None = None, duration_s: float | None = None) -> str:
        """The body of a 200 (text); :class:`_Stopped` for anything else, the request recorded either way."""
        nonlocal mtp
        kbps = variant.kbps if variant is not None else None
        data = request_cmcd(buffer, clock.now(), ot=ot, session=sid, content_id=content_id, bitrate_kbps=kbps,
                            top_kbps=top, duration_s=duration_s, throughput_kbps=mtp) if send_cmcd else None
        request = Request(viewer, sid, kind, url, bitrate_kbps=kbps)
        try:
            body = await fetch(http, request, clock, data=data, keep=kind in ("master", "playlist"))
        except httpx.HTTPError:
            fetches.append(request)
            raise _Stopped from None
        fetches.append(request)  # once it ended: a request cut short by the wave's timeout is not kept
        if request.status != 200:
            raise _Stopped
        if kind == "segment" and request.seconds > 0:
            mtp = request.bytes * 8 / request.seconds / 1000
        return body.decode(errors="replace")

    try:
        variants = playlists.master(await get("master", master_url))
        variant = _pick(variants, rung, master_url)
        top = variants[-1].kbps
        ot: cmcd.ObjectType = "av" if variant.audio else "v"
        media_url = httpx.URL(master_url).join(variant.uri)
        media = playlists.media_playlist(await get("playlist", str(media_url)))
        if media.init:
            await get("init", str(media_url.join(media.init)), ot="i", variant=variant, top=top)
        for segment in media.segments:
            if max_buffer_s is not None:
                ahead = buffer.level(clock.now())
                if ahead > max_buffer_s:
                    await clock.sleep(ahead - max_buffer_s)
            await get("segment", str(media_url.join(segment.uri)), ot=ot, variant=variant, top=top,
                      duration_s=segment.duration)
            buffer.add(segment.duration, variant.kbps, clock.now())
    except (_Stopped, ManifestError):
        return fetches  # the failed request is the last one
    return fetches


def watch(master_url: str, *, rung: int | str = 0, session: str | None = None, content_id: str | None = None,
          send_cmcd: bool = True, max_buffer_s: float | None = None, timeout: float = DEFAULT_TIMEOUT,
          transport: httpx.AsyncBaseTransport | None = None, clock: Clock | None = None) -> list[Request]:
    """One viewer, on a connection of its own, downloading without pauses by default (see :func:`play`).

    ``timeout`` bounds each request; ``transport`` and ``clock`` replace the network and the time (tests).
    """
    clock = clock or RealClock()
    fetches: list[Request] = []

    async def viewer() -> None:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as http:
            await play(http, master_url, rung=rung, session=session, content_id=content_id, send_cmcd=send_cmcd,
                       max_buffer_s=max_buffer_s, out=fetches, clock=clock)

    async def job() -> None:
        await clock.drive([viewer()], timeout=math.inf)

    eventloop.run(job())
    return fetches


async def wave_async(master_urls: Sequence[str], viewers: int, *, arrivals_s: float = 0.0,
                     content_id: str | None = None, max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S,
                     timeout: float = 120.0, request_timeout: float = DEFAULT_TIMEOUT,
                     transport: httpx.AsyncBaseTransport | None = None, clock: Clock | None = None) -> list[Request]:
    """:func:`wave` in a running event loop."""
    if viewers < 1 or not master_urls:
        raise ValueError("a wave needs at least one viewer and one master URL")
    if arrivals_s < 0:
        raise ValueError("arrivals_s must not be negative")
    clock = clock or RealClock()
    playlists = Playlists()
    results: list[list[Request]] = [[] for _ in range(viewers)]

    async def viewer(i: int) -> None:
        await clock.sleep(i * arrivals_s / viewers)
        async with httpx.AsyncClient(timeout=request_timeout, transport=transport) as http:
            await play(http, master_urls[i % len(master_urls)], viewer=i, rung=i // len(master_urls),
                       content_id=content_id, max_buffer_s=max_buffer_s, out=results[i], clock=clock,
                       playlists=playlists)

    await clock.drive([viewer(i) for i in range(viewers)], timeout=timeout)
    return sorted((f for fetches in results for f in fetches), key=lambda f: f.started)


def wave(master_urls: Sequence[str], viewers: int, *, arrivals_s: float = 0.0, content_id: str | None = None,
         max_buffer_s: float | None = DEFAULT_MAX_BUFFER_S, timeout: float = 120.0,
         transport: httpx.AsyncBaseTransport | None = None, clock: Clock | None = None) -> list[Request]:
    """``viewers`` viewers arriving evenly over ``arrivals_s`` seconds, each on its own connection.

    Viewer ``i`` plays through ``master_urls[i % len(master_urls)]`` (one signed URL per PoP) and
    rung ``i // len(master_urls)`` (so PoPs and rungs are both spread), with a session id of its
    own. Each buffers at most ``max_buffer_s`` seconds of media, as the lab's web player does
    (:data:`~labkit.traffic.playback.DEFAULT_MAX_BUFFER_S`). Viewers still playing after ``timeout``
    seconds are cancelled (their finished requests are kept). Returns every request, in the order
    they started.
    """
    return eventloop.run(wave_async(master_urls, viewers, arrivals_s=arrivals_s, content_id=content_id,
                                    max_buffer_s=max_buffer_s, timeout=timeout, transport=transport, clock=clock))


def frame(fetches: Sequence[Request]) -> pd.DataFrame:
    """One row per request: viewer, session, kind, path (unsigned), status, cache, pop, bytes, latency_ms, started.

    ``started`` is a UTC timestamp, ``latency_ms`` the request's ``seconds`` in milliseconds; then the
    CMCD sent and the error.
    """
    import pandas as pd

    table = requests_frame(fetches)
    table["latency_ms"] = (table["seconds"] * 1000).round(3)
    table["started"] = pd.to_datetime(table["started"], unit="s", utc=True)
    return table[FRAME_COLUMNS]
