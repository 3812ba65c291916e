"""The simple viewers: what they fetch, in which order, and the CMCD they send, against a fake PoP.

Where time matters the viewers run on a :class:`VirtualClock` and the fake PoP takes its time on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from labkit.traffic import wave
from labkit.traffic.playback import DEFAULT_MAX_BUFFER_S, Request, VirtualClock
from ott import cmcd

SIGNED = "/s/AAAAAAAAAAAAAAAAAAAAAA/2000000000/title"
MASTER = f"http://pop-a{SIGNED}/v1/master.m3u8"
MASTER_TEXT = """#EXTM3U
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=2000000,AVERAGE-BANDWIDTH=1800000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=1280x720
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=700000,CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=640x360
360p/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,URI="720p/iframes.m3u8"
"""


def media_text(durations: list[float]) -> str:
    segments = "".join(f"#EXTINF:{d:.3f},\nseg_{i:05d}.m4s\n" for i, d in enumerate(durations))
    return (f"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n{segments}"
            "#EXT-X-ENDLIST\n")


class FakePop:
    """Serves the title above; MISS the first time a path is asked for, HIT after; logs every request."""

    def __init__(self, durations: tuple[float, ...] = (4.0, 4.0, 2.0), *, fail: str | None = None,
                 delay: Callable[[str], float] | None = None, clock: VirtualClock | None = None) -> None:
        self.durations = list(durations)
        self.fail = fail
        self.delay = delay
        self.clock = clock or VirtualClock()
        self.seen: set[str] = set()
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if self.delay is not None:
            await self.clock.sleep(self.delay(path))
        if self.fail and path.endswith(self.fail):
            return httpx.Response(404, headers={"X-PoP": request.url.host})
        if path.endswith("master.m3u8"):
            body = MASTER_TEXT.encode()
        elif path.endswith("index.m3u8"):
            body = media_text(self.durations).encode()
        elif path.endswith(".mp4"):
            body = b"i" * 100
        else:
            body = b"s" * 50_000
        cache = "HIT" if path in self.seen else "MISS"
        self.seen.add(path)
        return httpx.Response(200, content=body, headers={"X-Cache-Status": cache, "X-PoP": request.url.host})

    def cmcd(self) -> list[cmcd.Cmcd]:
        """The CMCD of every request, parsed as the edge's exporter does."""
        payloads = [parse_qs(r.url.query.decode()).get("CMCD", [""])[0] for r in self.requests]
        return [cmcd.parse(p) for p in payloads]


def test_a_viewer_fetches_master_playlist_init_and_segments_in_order() -> None:
    pop = FakePop()
    fetches = wave.watch(MASTER, content_id="title", transport=httpx.MockTransport(pop))
    assert [f.kind for f in fetches] == ["master", "playlist", "init", "segment", "segment", "segment"]
    assert [f.path for f in fetches] == ["/title/v1/master.m3u8", "/title/v1/720p/index.m3u8",
                                         "/title/v1/720p/init.mp4",
                                         *(f"/title/v1/720p/seg_{i:05d}.m4s" for i in range(3))]
    # Relative URIs resolve under the signed prefix: the token reaches every object.
    assert all(str(r.url.path).startswith(SIGNED) for r in pop.requests)
    assert all(f.status == 200 and f.cache == "MISS" and f.pop == "pop-a" and not f.error for f in fetches)
    assert [f.bytes for f in fetches][2:] == [100, 50_000, 50_000, 50_000]
    assert len({f.session for f in fetches}) == 1 and all(f.seconds >= 0 for f in fetches)
    again = wave.watch(MASTER, transport=httpx.MockTransport(pop))
    assert {f.cache for f in again} == {"HIT"} and again[0].session != fetches[0].session


def test_every_request_carries_cmcd_like_a_player() -> None:
    pop = FakePop()
    fetches = wave.watch(MASTER, content_id="title", session="viewer-1", transport=httpx.MockTransport(pop))
    sent = pop.cmcd()
    assert [c.ot for c in sent] == ["m", "m", "i", "av", "av", "av"]
    assert {(c.sid, c.cid, c.sf, c.st) for c in sent} == {("viewer-1", "title", "h", "v")}
    # Startup until the first segment has arrived; playing (with a buffer) after it. The buffer length on
    # audio and video objects (CTA-5004), empty before the first segment arrives (as hls.js reports it).
    assert [c.su for c in sent] == [True, True, True, True, None, None]
    assert [c.bl for c in sent][:4] == [None, None, None, 0] and all(c.bl is not None and c.bl % 100 == 0
                                                                      for c in sent[4:])
    assert 3500 <= sent[4].bl <= 4000 and 7500 <= sent[5].bl <= 8000   # 4 s, then 8 s of media ahead
    # The variant's BANDWIDTH as the object bitrate, the ladder's top as tb, on media objects only.
    assert [c.br for c in sent] == [None, None, 2000, 2000, 2000, 2000]
    assert {c.tb for c in sent[2:]} == {2000} and sent[0].tb is None
    assert [c.d for c in sent] == [None, None, None, 4000, 4000, 2000]
    # The throughput measured on the previous segment, in steps of 100 kbit/s.
    assert sent[3].mtp is None and all(c.mtp and c.mtp % 100 == 0 for c in sent[4:])
    assert not any(c.bs for c in sent)
    assert [cmcd.parse(f.cmcd) for f in fetches] == sent   # what was sent is what the Fetch records


def test_without_cmcd_the_urls_are_left_alone() -> None:
    pop = FakePop()
    fetches = wave.watch(MASTER, send_cmcd=False, transport=httpx.MockTransport(pop))
    assert all(not r.url.query for r in pop.requests) and all(f.cmcd == "" for f in fetches)


@pytest.mark.parametrize(("rung", "folder", "br"), [(1, "360p", 800), (3, "360p", 800), ("720p", "720p", 2000)])
def test_the_rung_is_an_index_modulo_the_variants_or_a_folder_name(rung: int | str, folder: str, br: int) -> None:
    pop = FakePop()
    fetches = wave.watch(MASTER, rung=rung, transport=httpx.MockTransport(pop))
    assert fetches[1].path == f"/title/v1/{folder}/index.m3u8" and pop.cmcd()[-1].br == br


def test_an_unknown_rung_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no variant '1080p'.*'720p', '360p'"):
        wave.watch(MASTER, rung="1080p", transport=httpx.MockTransport(FakePop()))


def test_a_viewer_stops_at_the_first_failed_request() -> None:
    fetches = wave.watch(MASTER, transport=httpx.MockTransport(FakePop(fail="seg_00001.m4s")))
    assert [(f.kind, f.status) for f in fetches][-2:] == [("segment", 200), ("segment", 404)] and len(fetches) == 5


def test_a_connection_error_is_a_fetch_with_status_0() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    (fetch,) = wave.watch(MASTER, transport=httpx.MockTransport(refuse))
    assert (fetch.kind, fetch.status, fetch.cache) == ("master", 0, "") and "ConnectError" in fetch.error


def test_a_viewer_with_a_full_buffer_waits_like_a_player() -> None:
    clock = VirtualClock()
    pop = FakePop(durations=(0.1,) * 5)
    fetches: list[Request] = []

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(pop)) as http:
            await wave.play(http, MASTER, max_buffer_s=0.1, out=fetches, clock=clock)

    asyncio.run(clock.drive([run()], timeout=10))
    # 0.5 s of media, at most 0.1 s ahead: the last segment is asked for 0.3 s in.
    assert len(fetches) == 8 and fetches[-1].started - fetches[0].started == pytest.approx(0.3)
    assert all(c.bl is None or c.bl <= 200 for c in pop.cmcd())


def test_the_default_buffer_is_the_web_players() -> None:
    clock = VirtualClock()
    pop = FakePop(durations=(4.0,) * 10, clock=clock)
    fetches = wave.wave([MASTER], 1, transport=httpx.MockTransport(pop), clock=clock)
    segments = [f for f in fetches if f.kind == "segment"]
    # 40 s of media on a fast link: eight segments at once, then one whenever the buffer is down to 30 s.
    assert DEFAULT_MAX_BUFFER_S == 30
    assert [round(f.started - fetches[0].started, 6) for f in segments] == [0.0] * 8 + [2.0, 6.0]
    assert max(c.bl for c in pop.cmcd() if c.bl is not None) == 30_000


def test_a_stall_is_reported_as_starvation_and_startup() -> None:
    # The second segment takes 0.3 s to arrive while the first holds 0.1 s of media: the buffer runs dry.
    clock = VirtualClock()
    pop = FakePop(durations=(0.1, 0.1, 0.1), delay=lambda path: 0.3 if path.endswith("seg_00001.m4s") else 0,
                  clock=clock)
    wave.watch(MASTER, transport=httpx.MockTransport(pop), clock=clock)
    sent = pop.cmcd()
    assert [c.bs for c in sent] == [None] * 5 + [True]
    # Recovering after the buffer ran dry: only the late segment is ahead of the playhead.
    assert sent[5].su is True and sent[5].bl is not None and sent[5].bl <= 100
    assert sent[4].su is None


def test_a_wave_spreads_viewers_over_pops_and_rungs() -> None:
    pop = FakePop()
    other = MASTER.replace("pop-a", "pop-b")
    fetches = wave.wave([MASTER, other], 4, content_id="title", transport=httpx.MockTransport(pop))
    frame = wave.frame(fetches)
    assert frame["viewer"].nunique() == 4 and frame["session"].nunique() == 4
    assert frame.groupby("viewer").size().tolist() == [6, 6, 6, 6]
    playlists = frame[frame["kind"] == "playlist"].set_index("viewer")
    assert playlists["pop"].to_dict() == {0: "pop-a", 1: "pop-b", 2: "pop-a", 3: "pop-b"}
    assert playlists["path"].str.split("/").str[3].to_dict() == {0: "720p", 1: "720p", 2: "360p", 3: "360p"}
    assert list(frame["started"]) == sorted(frame["started"])
    assert list(frame.columns) == ["viewer", "session", "kind", "path", "status", "cache", "pop", "bytes",
                                   "latency_ms", "started", "cmcd", "error"]


def test_a_wave_spreads_arrivals_and_keeps_what_finished_before_its_timeout() -> None:
    clock = VirtualClock()
    pop = FakePop(delay=lambda path: 5 if path.endswith("seg_00002.m4s") else 0, clock=clock)
    fetches = wave.wave([MASTER], 3, arrivals_s=0.3, timeout=1.0, transport=httpx.MockTransport(pop), clock=clock)
    assert clock.now() == pytest.approx(1.0)   # the wave ended at its timeout
    frame = wave.frame(fetches)
    assert frame.groupby("viewer").size().tolist() == [5, 5, 5]   # all but the stuck last segment
    firsts = frame.groupby("viewer")["started"].min()
    assert (firsts.diff().dropna().dt.total_seconds() >= 0.08).all()   # arrivals 0.1 s apart


def test_a_wave_works_inside_a_running_event_loop() -> None:
    async def notebook_cell() -> list[Request]:
        return wave.wave([MASTER], 2, transport=httpx.MockTransport(FakePop()))

    assert len(asyncio.run(notebook_cell())) == 12


@pytest.mark.parametrize(("urls", "count", "arrivals"), [([], 1, 0.0), ([MASTER], 0, 0.0), ([MASTER], 1, -1.0)])
def test_a_wave_refuses_impossible_arguments(urls: list[str], count: int, arrivals: float) -> None:
    with pytest.raises(ValueError):
        wave.wave(urls, count, arrivals_s=arrivals)


def test_an_empty_frame_has_the_columns() -> None:
    assert list(wave.frame([]).columns)[:4] == ["viewer", "session", "kind", "path"]
