"""The simulated player's core: what every simulated viewer of the lab is made of.

The lab has three kinds of simulated viewer: the ABR audience (:mod:`labkit.traffic.audience`),
the fixed-rung viewers of the CDN drills (:mod:`labkit.traffic.wave`) and the Locust baseline of
``bench/bench_viewers.py``. They share one model of a player, here:

- a :class:`Clock`: :class:`RealClock` against a real platform, :class:`VirtualClock` in tests,
  where time moves only when every viewer sleeps, so a test never waits;
- the buffer model, :class:`Playback`: media downloaded, a playhead that moves in real time once
  the first segment is in, a stall when it reaches the end of what is downloaded; a player keeps at
  most :data:`DEFAULT_MAX_BUFFER_S` seconds ahead;
- the playlists as a player reads them (:class:`Playlists`: variants, media playlists);
- the CMCD a player sends with each request (:func:`request_cmcd`, sent by :func:`with_cmcd`);
- one record per request (:class:`Request`), filled by :func:`fetch`, with the path the edge caches
  (:func:`unsigned_path`)::

    clock, playback = RealClock(), Playback(t0=0.0)
    data = request_cmcd(playback, clock.now(), ot="av", session="s1", content_id="lab-clock", bitrate_kbps=800)
    request = Request(viewer=0, session="s1", kind="segment", url=segment_url)
    body = await fetch(http, request, clock, data=data)
    playback.add(4.0, 800, clock.now())
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import math
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
import m3u8

from labkit.traffic.bandwidth import Link
from ott import cmcd, signing

if TYPE_CHECKING:
    import pandas as pd

# hls.js' maxBufferLength, which the lab's web player keeps (ott/player/www/player.js changes it only when
# asked to): every simulated viewer buffers as the browser player does, so the CDN drills, the audience and
# the benchmark's baseline put the same load on a PoP per viewer. A title shorter than this is fetched without
# a pause.
DEFAULT_MAX_BUFFER_S = 30.0
READ_CHUNK = 64 * 1024  # bytes handed to a paced link at a time


# -- clocks -------------------------------------------------------------------------------------


class Clock(Protocol):
    """Where simulated time comes from: seconds since an arbitrary origin, epoch seconds, and sleeping."""

    virtual: bool

    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def drive(self, jobs: Sequence[Coroutine[Any, Any, None]], timeout: float) -> None: ...


class RealClock:
    """Wall-clock time: the simulator runs in real time against a real platform."""

    virtual = False

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def drive(self, jobs: Sequence[Coroutine[Any, Any, None]], timeout: float) -> None:
        """Run ``jobs`` concurrently; those still running after ``timeout`` seconds (``inf``: none) are cancelled."""
        tasks = [asyncio.create_task(job) for job in jobs]
        _, pending = await asyncio.wait(tasks, timeout=None if math.isinf(timeout) else timeout)
        for task in pending:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                raise result


class VirtualClock:
    """Simulated time for tests: sleeping costs no real time, and time moves only when everyone sleeps.

    :meth:`drive` runs the viewers as tasks; whenever every one of them is asleep on this clock it
    jumps to the earliest wake-up (ties in the order they fell asleep). Work that does not sleep on
    the clock (a mock transport answering) happens at one instant; a mock that should take time
    sleeps on the clock. With a real transport it still works, but the measured times then leave
    out the network. As with :class:`RealClock`, jobs still running ``timeout`` seconds (of this
    clock) after the drive began are cancelled; a drive that keeps running without sleeping on the
    clock is stopped after ``real_timeout_s`` real seconds with :class:`TimeoutError`.

    >>> from labkit.core import eventloop
    >>> clock = VirtualClock()
    >>> async def nap(seconds: float, log: list[float]) -> None:
    ...     await clock.sleep(seconds)
    ...     log.append(clock.now())
    >>> log: list[float] = []
    >>> eventloop.run(clock.drive([nap(5, log), nap(2, log)], timeout=10))
    >>> log
    [2.0, 5.0]
    """

    virtual = True

    def __init__(self, epoch: float = 1_700_000_000.0, *, real_timeout_s: float = 120.0) -> None:
        self.epoch = epoch
        self.real_timeout_s = real_timeout_s
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._asleep = 0
        self._active = 0
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self.epoch + self._now

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, self._seq, future))
        self._seq += 1
        self._asleep += 1
        self._signal()
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():  # not woken by drive(), which counts the sleepers it wakes
                self._asleep -= 1
            raise

    def _finished(self, _: asyncio.Task[None]) -> None:
        self._active -= 1
        self._signal()

    async def drive(self, jobs: Sequence[Coroutine[Any, Any, None]], timeout: float) -> None:
        """Run ``jobs`` in virtual time; those still running after ``timeout`` virtual seconds are cancelled."""
        self._changed = asyncio.Event()
        tasks = [asyncio.create_task(job) for job in jobs]
        self._active = len(tasks)
        for task in tasks:
            task.add_done_callback(self._finished)
        end = self._now + timeout

        async def advance() -> None:
            assert self._changed is not None
            while self._active:
                if self._asleep < self._active:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                when, _, future = self._sleepers[0]
                if future.cancelled():
                    heapq.heappop(self._sleepers)
                    continue
                if when > end:  # the sleepers are cancelled below, as the real clock cancels them
                    self._now = max(self._now, end)
                    return
                heapq.heappop(self._sleepers)
                self._now = max(self._now, when)
                self._asleep -= 1
                future.set_result(None)

        try:
            await asyncio.wait_for(advance(), self.real_timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result


# -- the buffer model -----------------------------------------------------------------------------


class Playback:
    """The buffer model: media downloaded, a playhead that moves in real time once playback started.

    Playback starts when the first segment is in (:meth:`add` answers ``("start", 0)``); the playhead
    then moves in real time; when it reaches the end of what is downloaded the viewer stalls (``starved``
    is set, for CMCD ``bs``) until the next segment arrives (:meth:`add` answers ``("stall", seconds)``)
    and playback resumes where it stopped. The caller keeps the buffer below its maximum by waiting
    while :meth:`level` is above it. Times are the caller's clock (``now``), so the Locust baseline
    (``bench/locustfile_viewers.py``), which runs on gevent, paces with it too.

    >>> playback = Playback(t0=0.0)
    >>> playback.add(4.0, 700, now=0.5), playback.level(now=2.5)
    (('start', 0.0), 2.0)
    >>> playback.level(now=6.0), playback.state, playback.add(4.0, 700, now=7.0)
    (0.0, 'stalled', ('stall', 2.5))
    """

    def __init__(self, t0: float) -> None:
        self.downloaded = 0.0
        self.position = 0.0
        self.at = t0
        self.state: Literal["waiting", "playing", "stalled", "ended"] = "waiting"
        self.complete = False  # the last segment is in
        self.started_at: float | None = None
        self.stall_since = 0.0
        self.starved = False  # since the last media request (CMCD bs)
        self.played_s = self.stalled_s = self.kbit = 0.0
        self.stalls = 0
        self.chunks: list[tuple[float, float, int]] = []  # media (start, end, kbps)
        self._chunk = 0
        self.progress_played = self.progress_kbit = 0.0  # since the last progress event

    def _play_to(self, position: float) -> None:
        while self.position < position and self._chunk < len(self.chunks):
            _, end, kbps = self.chunks[self._chunk]
            step = min(end, position) - self.position
            self.kbit += step * kbps
            self.progress_kbit += step * kbps
            self.played_s += step
            self.progress_played += step
            self.position += step
            if self.position >= end:
                self._chunk += 1

    def advance(self, now: float) -> None:
        if self.state == "playing":
            reach = self.position + (now - self.at)
            if reach >= self.downloaded:
                ran_dry_at = self.at + (self.downloaded - self.position)
                self._play_to(self.downloaded)
                if self.complete:
                    self.state = "ended"
                else:
                    self.state, self.stall_since, self.starved = "stalled", ran_dry_at, True
            else:
                self._play_to(reach)
        self.at = now

    def play_out(self, now: float) -> None:
        """The playhead reached the end of the title."""
        self.advance(now)
        self._play_to(self.downloaded)
        self.state = "ended"

    def level(self, now: float) -> float:
        """Seconds of media ahead of the playhead at ``now``; notices a stall."""
        self.advance(now)
        return self.downloaded - self.position

    def add(self, seconds: float, kbps: int, now: float) -> tuple[str, float] | None:
        """A segment arrived; ``("start", 0)`` or ``("stall", duration)`` when playback (re)starts."""
        self.advance(now)
        self.chunks.append((self.downloaded, self.downloaded + seconds, kbps))
        self.downloaded += seconds
        if self.state == "waiting":
            self.state, self.started_at = "playing", now
            return ("start", 0.0)
        if self.state == "stalled":
            return ("stall", self.end_stall(now))
        return None

    def end_stall(self, now: float) -> float:
        """Playback resumes (or the viewer leaves) at ``now``: the stall's duration, counted."""
        duration = now - self.stall_since
        self.stalled_s += duration
        self.stalls += 1
        self.state = "playing"
        return duration


# -- playlists ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One rung of the multivariant playlist: its URI (relative), ``BANDWIDTH`` in kbit/s, muxed audio."""

    uri: str
    kbps: int
    audio: bool

    @property
    def folder(self) -> str:
        """The rung's folder, as the transcoder names it: ``720p/index.m3u8`` is ``720p``."""
        return self.uri.split("/")[0]


@dataclass(frozen=True)
class Segment:
    uri: str
    duration: float
    key: str | None  # the AES-128 key URI, None when clear


@dataclass(frozen=True)
class MediaPlaylist:
    init: str | None
    segments: tuple[Segment, ...]


class ManifestError(Exception):
    """A playlist a player cannot use: unreadable, no variant, no segment."""


class Playlists:
    """Parsed playlists shared by every viewer of a run: the same text is parsed once (m3u8 is not cheap)."""

    def __init__(self) -> None:
        self.masters: dict[str, tuple[Variant, ...]] = {}
        self.media: dict[str, MediaPlaylist] = {}

    def master(self, text: str) -> tuple[Variant, ...]:
        """The variants with a ``BANDWIDTH``, lowest first (a ladder, as ABR rules index it)."""
        if text not in self.masters:
            try:
                parsed = m3u8.loads(text)
            except Exception as exc:  # noqa: BLE001 - m3u8 raises anything on garbage
                raise ManifestError(f"unreadable multivariant playlist: {exc}") from None
            variants = sorted((Variant(str(p.uri), int(p.stream_info.bandwidth) // 1000,
                                       "mp4a" in str(p.stream_info.codecs or ""))
                               for p in parsed.playlists if p.stream_info.bandwidth), key=lambda v: v.kbps)
            if not variants:
                raise ManifestError("the multivariant playlist lists no variant with a BANDWIDTH")
            self.masters[text] = tuple(variants)
        return self.masters[text]

    def media_playlist(self, text: str) -> MediaPlaylist:
        if text not in self.media:
            try:
                parsed = m3u8.loads(text)
            except Exception as exc:  # noqa: BLE001
                raise ManifestError(f"unreadable media playlist: {exc}") from None
            segments = tuple(Segment(str(s.uri), float(s.duration),
                                     str(s.key.uri) if s.key and s.key.method == "AES-128" and s.key.uri else None)
                             for s in parsed.segments)
            if not segments:
                raise ManifestError("the media playlist has no segment")
            init = str(parsed.segment_map[0].uri) if parsed.segment_map else None
            self.media[text] = MediaPlaylist(init, segments)
        return self.media[text]


# -- CMCD -----------------------------------------------------------------------------------------

# The object types a buffer length belongs to (CTA-5004: bl applies to a, v and av), and those whose request
# reports a starvation (hls.js: init segments too).
_BUFFERED: frozenset[str] = frozenset({"a", "v", "av"})
_MEDIA: frozenset[str] = frozenset({"a", "v", "av", "i"})


def round_to(value: float, step: int) -> int:
    """CTA-5004 rounds ``bl`` to 100 ms and ``mtp`` to 100 kbit/s.

    >>> round_to(3949.0, 100), round_to(1234.5, 100)
    (3900, 1200)
    """
    return int(round(value / step) * step)


def request_cmcd(playback: Playback, now: float, *, ot: cmcd.ObjectType, session: str, content_id: str | None,
                 bitrate_kbps: int | None = None, top_kbps: int | None = None, duration_s: float | None = None,
                 throughput_kbps: float | None = None, next_object: str | None = None) -> cmcd.Cmcd:
    """The CMCD a player sends with one request, as hls.js fills it (CTA-5004 v1, HLS, VOD).

    ``sid``, ``cid``, ``sf=h``, ``st=v`` and ``ot`` on every request; ``br``/``tb``/``d``/``nor`` as
    given; ``bl`` (the buffer at ``now``, to 100 ms) on audio and video objects; ``mtp`` (to 100
    kbit/s, at least 100) once the player has measured a throughput; ``su`` while playback has not
    started or is stalled; after the buffer ran dry, the next media request carries ``bs`` and
    ``su`` (and clears ``playback.starved``).

    >>> playback = Playback(t0=0.0)
    >>> cmcd.format(request_cmcd(playback, 0.0, ot="m", session="s", content_id="t"))
    'cid="t",ot=m,sf=h,sid="s",st=v,su'
    >>> _ = playback.add(4.0, 800, now=0.2)
    >>> cmcd.format(request_cmcd(playback, 1.0, ot="v", session="s", content_id="t", bitrate_kbps=800,
    ...                          duration_s=4.0, throughput_kbps=2345.6))
    'bl=3200,br=800,cid="t",d=4000,mtp=2300,ot=v,sf=h,sid="s",st=v'
    """
    level = playback.level(now)
    starved = playback.starved and ot in _MEDIA
    if starved:
        playback.starved = False
    waiting = starved or playback.state in ("waiting", "stalled")
    return cmcd.Cmcd(br=bitrate_kbps, tb=top_kbps, ot=ot, bl=round_to(level * 1000, 100) if ot in _BUFFERED else None,
                     bs=True if starved else None, su=True if waiting else None,
                     mtp=max(100, round_to(throughput_kbps, 100)) if throughput_kbps is not None else None,
                     d=round(duration_s * 1000) if duration_s is not None else None, nor=next_object,
                     sid=session, cid=content_id, sf="h", st="v")


def with_cmcd(url: str, data: cmcd.Cmcd | None) -> str:
    """``url`` with the ``CMCD`` query argument (URL-encoded) a player appends; unchanged for ``None``.

    >>> with_cmcd("http://pop/a.m4s", cmcd.Cmcd(br=800, su=True))
    'http://pop/a.m4s?CMCD=br%3D800%2Csu'
    """
    if data is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}{cmcd.QUERY_ARG}={cmcd.to_query(data)}"


# -- requests -------------------------------------------------------------------------------------


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


# Every viewer on a PoP asks for the same few URLs: parsing them once saves a few % of the CPU per request.
_unsigned_path = functools.lru_cache(maxsize=4096)(unsigned_path)


class Deadline(Exception):
    """The run's end came while a request was under way: the viewer leaves."""


@dataclass(slots=True)
class Request:
    """One request of one viewer, filled in by :func:`fetch` as it goes; ``status`` 0 means no response.

    ``pop`` is the PoP the viewer addressed, or else the one that answered (``X-PoP``); ``started``
    is epoch seconds; ``seconds`` runs from the request to the last body byte (or the error),
    ``ttfb_s`` to the response's headers (time to first byte; NaN without a response);
    ``cmcd`` is the payload sent (decoded), "" when none; ``bitrate_kbps`` the rung of a media object.
    """

    viewer: int
    session: str
    kind: str  # master, playlist, init, segment, key
    url: str  # what was requested, without the CMCD argument
    pop: str = ""
    bitrate_kbps: int | None = None
    started: float = 0.0
    cmcd: str = ""
    status: int = 0
    cache: str = ""  # X-Cache-Status, "" when absent
    bytes: int = 0
    seconds: float = 0.0
    ttfb_s: float = math.nan
    error: str = ""

    @property
    def path(self) -> str:
        """The path the edge caches: the URL's path without the signed prefix."""
        return _unsigned_path(self.url)


REQUEST_COLUMNS = ["viewer", "session", "kind", "bitrate_kbps", "path", "status", "cache", "pop", "bytes", "started",
                   "seconds", "ttfb_s", "cmcd", "error"]


def requests_frame(requests: Sequence[Request]) -> pd.DataFrame:
    """One row per request, :data:`REQUEST_COLUMNS` (the unsigned path; ``started`` in epoch seconds)."""
    import pandas as pd

    return pd.DataFrame([(r.viewer, r.session, r.kind, r.bitrate_kbps, r.path, r.status, r.cache, r.pop, r.bytes,
                          r.started, round(r.seconds, 6), round(r.ttfb_s, 6), r.cmcd, r.error) for r in requests],
                        columns=REQUEST_COLUMNS)


async def fetch(http: httpx.AsyncClient, request: Request, clock: Clock, *, data: cmcd.Cmcd | None,
                headers: Mapping[str, str] | None = None, keep: bool = True, link: Link | None = None,
                deadline: float = math.inf) -> bytes:
    """GET ``request.url`` with ``data`` as CMCD, filling ``request`` in as the answer comes; the body.

    The body is kept when ``keep`` or the answer is not a 200 (an error page). ``link`` paces the
    download (:class:`~labkit.traffic.bandwidth.Link`); a paced download that reaches ``deadline``
    (clock time) raises :class:`Deadline`. A network error is recorded in ``request.error`` and
    raised, as the httpx error it is.
    """
    request.started, begun = clock.wall(), clock.now()
    request.cmcd = cmcd.format(data) if data is not None else ""
    body: list[bytes] = []
    try:
        async with http.stream("GET", with_cmcd(request.url, data), headers=headers) as response:
            request.status = response.status_code
            request.ttfb_s = clock.now() - begun
            request.cache = response.headers.get("x-cache-status", "")
            request.pop = request.pop or response.headers.get("x-pop", "")
            # Unpaced, the body comes as the socket reads it (at most 64 KiB at a time) without re-chunking.
            async for chunk in response.aiter_bytes(READ_CHUNK if link is not None else None):
                request.bytes += len(chunk)
                if keep or response.status_code != 200:
                    body.append(chunk)
                if link is not None:
                    await link.pace(len(chunk))
                    if clock.now() >= deadline:
                        raise Deadline
            if link is not None:
                await link.drain()
    except httpx.HTTPError as exc:
        request.error = f"{type(exc).__name__}: {exc}".strip()[:200]
        raise
    except Deadline:
        request.error = "exit"
        raise
    finally:
        request.seconds = clock.now() - begun
    return b"".join(body)
