"""The simulated player's core: the clocks, the buffer model, the CMCD a player sends, one request's record."""

from __future__ import annotations

import asyncio
import doctest

import httpx
import pytest

from labkit.traffic import playback
from labkit.traffic.bandwidth import Fixed, Link
from labkit.traffic.playback import (
    Deadline,
    ManifestError,
    Playback,
    Playlists,
    Request,
    VirtualClock,
    fetch,
    request_cmcd,
    with_cmcd,
)
from ott import cmcd

MASTER_TEXT = """#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS="avc1.64001e"
360p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS="avc1.64001f,mp4a.40.2"
720p/index.m3u8
"""


def test_doctests() -> None:
    result = doctest.testmod(playback)
    assert result.attempted >= 10 and result.failed == 0


def test_the_buffer_model_plays_in_real_time_and_notices_stalls() -> None:
    buffer = Playback(t0=0.0)
    assert buffer.level(0.0) == 0 and not buffer.starved and buffer.state == "waiting"
    assert buffer.add(4.0, 800, now=0.0) == ("start", 0.0)
    assert buffer.level(1.5) == pytest.approx(2.5)
    buffer.add(4.0, 800, now=1.5)
    assert buffer.level(1.5) == pytest.approx(6.5)
    assert buffer.level(20.0) == 0 and buffer.starved and buffer.state == "stalled"
    assert buffer.add(4.0, 800, now=20.0) == ("stall", pytest.approx(12.0))   # it ran dry at 8 s
    assert buffer.level(21.0) == pytest.approx(3.0)   # playback resumed where it stopped
    assert (buffer.played_s, buffer.stalls, buffer.kbit) == (pytest.approx(9.0), 1, pytest.approx(7200))


def test_cmcd_says_startup_until_the_first_segment_and_buffer_only_for_media() -> None:
    buffer = Playback(t0=0.0)
    sent = [request_cmcd(buffer, 0.0, ot=ot, session="s", content_id="t") for ot in ("m", "i", "av")]
    assert [(c.su, c.bl) for c in sent] == [(True, None), (True, None), (True, 0)]
    assert {(c.sid, c.cid, c.sf, c.st) for c in sent} == {("s", "t", "h", "v")}
    buffer.add(4.0, 800, now=0.0)
    playing = request_cmcd(buffer, 1.05, ot="v", session="s", content_id="t", bitrate_kbps=800, top_kbps=2000,
                           duration_s=4.0, throughput_kbps=49.0, next_object="seg_2.m4s")
    assert (playing.su, playing.bs, playing.bl) == (None, None, 3000)   # to 100 ms
    assert (playing.br, playing.tb, playing.d, playing.nor) == (800, 2000, 4000, "seg_2.m4s")
    assert playing.mtp == 100   # to 100 kbit/s, never 0


def test_after_a_stall_the_next_media_request_says_starved_once() -> None:
    buffer = Playback(t0=0.0)
    buffer.add(2.0, 800, now=0.0)
    # The buffer ran dry at 2 s: a key request does not report it, the next media request does (as hls.js).
    key = request_cmcd(buffer, 3.0, ot="k", session="s", content_id=None)
    segment = request_cmcd(buffer, 3.0, ot="av", session="s", content_id=None)
    assert (key.bs, key.su) == (None, True) and (segment.bs, segment.su, segment.bl) == (True, True, 0)
    buffer.add(2.0, 800, now=3.5)
    after = request_cmcd(buffer, 3.5, ot="av", session="s", content_id=None)
    assert (after.bs, after.su) == (None, None) and not buffer.starved


def test_the_cmcd_query_argument_is_url_encoded() -> None:
    assert with_cmcd("http://pop/a.m4s?x=1", cmcd.Cmcd(sid="a b")) == "http://pop/a.m4s?x=1&CMCD=sid%3D%22a%20b%22"
    assert with_cmcd("http://pop/a.m4s", None) == "http://pop/a.m4s"


def test_playlists_list_a_ladder_lowest_first_and_parse_once() -> None:
    playlists = Playlists()
    variants = playlists.master(MASTER_TEXT)
    assert [(v.folder, v.kbps, v.audio) for v in variants] == [("360p", 800, False), ("720p", 2000, True)]
    assert playlists.master(MASTER_TEXT) is variants
    media = playlists.media_playlist('#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI="init.mp4"\n'
                                     '#EXT-X-KEY:METHOD=AES-128,URI="k"\n#EXTINF:4.0,\ns0.ts\n#EXT-X-ENDLIST\n')
    assert media.init == "init.mp4" and [(s.uri, s.duration, s.key) for s in media.segments] == [("s0.ts", 4.0, "k")]
    with pytest.raises(ManifestError, match="no variant"):
        playlists.master("#EXTM3U\n")
    with pytest.raises(ManifestError, match="no segment"):
        playlists.media_playlist("#EXTM3U\n#EXT-X-ENDLIST\n")


def answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/gone":
        return httpx.Response(404, content=b"not here", headers={"X-PoP": "edge-1"})
    if request.url.path == "/refused":
        raise httpx.ConnectError("connection refused", request=request)
    return httpx.Response(200, content=b"s" * 100_000, headers={"X-Cache-Status": "HIT", "X-PoP": "edge-1"})


def fetched(request: Request, **options: object) -> tuple[bytes | BaseException, VirtualClock]:
    """``request`` fetched from :func:`answer` in virtual time: the body, or what was raised."""
    clock = VirtualClock()
    result: list[bytes | BaseException] = []

    async def job() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            try:
                result.append(await fetch(http, request, clock, **options))  # type: ignore[arg-type]
            except (httpx.HTTPError, Deadline) as exc:
                result.append(exc)

    asyncio.run(clock.drive([job()], timeout=60))
    return result[0], clock


def test_a_request_record_is_filled_in_as_the_answer_comes() -> None:
    data = cmcd.Cmcd(ot="av", sid="s")
    request = Request(3, "s", "segment", "http://pop/s/AAAAAAAAAAAAAAAAAAAAAA/2000000000/t/720p/seg_1.m4s",
                      bitrate_kbps=800)
    body, clock = fetched(request, data=data, keep=False)
    assert body == b"" and request.bytes == 100_000   # counted, not kept
    assert (request.status, request.cache, request.pop, request.error) == (200, "HIT", "edge-1", "")
    assert request.path == "/t/720p/seg_1.m4s" and request.cmcd == cmcd.format(data)
    assert request.started == clock.epoch and request.seconds == 0   # a mock answers at once
    missing = Request(0, "s", "segment", "http://pop/gone", pop="edge-0")
    body, _ = fetched(missing, data=None, keep=False)
    assert body == b"not here" and (missing.status, missing.pop, missing.cmcd) == (404, "edge-0", "")


def test_a_paced_request_takes_the_links_time_and_stops_at_the_deadline() -> None:
    clock = VirtualClock()
    paced = Request(0, "s", "segment", "http://pop/a.m4s")
    link = Link(Fixed(800), now=clock.now, sleep=clock.sleep)
    result: list[bytes | BaseException] = []

    async def job(request: Request, deadline: float) -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            try:
                result.append(await fetch(http, request, clock, data=None, link=link, deadline=deadline))
            except Deadline as exc:
                result.append(exc)

    asyncio.run(clock.drive([job(paced, 60.0)], timeout=60))
    assert paced.seconds == pytest.approx(1.0) and result[0] == b"s" * 100_000   # 800 kbit at 800 kbit/s
    cut = Request(0, "s", "segment", "http://pop/a.m4s")
    asyncio.run(clock.drive([job(cut, clock.now() + 0.5)], timeout=60))
    assert isinstance(result[1], Deadline) and cut.error == "exit" and 0 < cut.bytes < 100_000


def test_a_network_error_is_recorded_and_raised() -> None:
    request = Request(0, "s", "master", "http://pop/refused")
    raised, _ = fetched(request, data=None)
    assert isinstance(raised, httpx.ConnectError)
    assert request.status == 0 and request.error.startswith("ConnectError: connection refused")


def test_the_virtual_clock_cancels_what_runs_past_the_timeout_in_its_own_time() -> None:
    clock = VirtualClock()
    woke: list[float] = []

    async def nap(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now())

    asyncio.run(clock.drive([nap(1), nap(3600)], timeout=10))
    assert woke == [1.0] and clock.now() == 10.0


def test_the_virtual_clock_stops_a_drive_that_never_sleeps() -> None:
    clock = VirtualClock(real_timeout_s=0.2)

    async def busy() -> None:
        await asyncio.Event().wait()   # waits on something other than the clock: time cannot move

    with pytest.raises(TimeoutError):
        asyncio.run(clock.drive([busy()], timeout=10))
