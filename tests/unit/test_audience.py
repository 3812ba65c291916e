"""The viewer simulator against a fake platform (gateway + two PoPs behind a MockTransport), in virtual time."""

from __future__ import annotations

import json
import math
from collections import Counter
from urllib.parse import parse_qs

import aiohttp
import httpx
import pandas as pd
import pytest
from aiohttp.client_reqrep import ConnectionKey

from labkit.analysis import experience
from labkit.core.errors import ConfigError
from labkit.traffic import audience
from labkit.traffic.audience import run
from labkit.traffic.bandwidth import Fixed, Trace
from labkit.traffic.playback import VirtualClock
from ott import beacon, cmcd

GATEWAY = "http://gw"
TITLE = "title"
LADDER_BPS = (1_500_000, 700_000, 400_000)  # listed highest first, as the transcoder writes them
KEY = b"k" * 16


class FakePlatform:
    """Login, license, CAS and the QoE collector on ``gw``; PoPs ``edge-0`` and ``edge-1`` on ``pop0``/``pop1``.

    Segments weigh what their rung's bitrate says (4 s at 400 kbit/s = 200 kB). ``dead`` PoPs refuse
    connections, ``missing`` paths answer 404, tokens in ``expired`` answer 410, ``encrypted`` adds an
    AES-128 key to every media playlist (``key_status`` is what the key URI answers).
    """

    def __init__(self, segments: int = 5, *, dead: frozenset[str] = frozenset(), missing: frozenset[str] = frozenset(),
                 encrypted: bool = False, key_status: int = 200, deny: tuple[int, str] | None = None,
                 ladder: tuple[int, ...] = LADDER_BPS) -> None:
        self.segments = segments
        self.ladder = ladder
        self.dead = set(dead)
        self.missing = missing
        self.encrypted = encrypted
        self.key_status = key_status
        self.deny = deny
        self.expired: set[str] = set()
        self.grants = 0
        self.ended: list[str] = []
        self.requests: list[httpx.Request] = []
        self.beacons: list[beacon.Beacon] = []

    def token(self, grant: int | None = None) -> str:
        """The URL token of a grant (22 characters, as the edge's signing makes them)."""
        return f"tok{self.grants if grant is None else grant}".rjust(22, "A")

    def master(self) -> str:
        lines = ["#EXTM3U", "#EXT-X-INDEPENDENT-SEGMENTS"]
        for bps in self.ladder:
            lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bps},CODECS="avc1.64001f,mp4a.40.2"', f"{bps // 1000}k/index.m3u8"]
        return "\n".join(lines) + "\n"

    def media(self) -> str:
        key = f'#EXT-X-KEY:METHOD=AES-128,URI="{GATEWAY}/api/license/keys/{TITLE}/0123456789abcdef"\n'
        body = "".join(f"#EXTINF:4.000,\nseg_{i:05d}.m4s\n" for i in range(self.segments))
        return (f"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n"
                f"{key if self.encrypted else ''}#EXT-X-MAP:URI=\"init.mp4\"\n{body}#EXT-X-ENDLIST\n")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host, path = request.url.host, request.url.path
        if host == "gw":
            return self.api(request, path)
        if host in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        token = path.split("/")[2]
        if token in self.expired:
            return httpx.Response(410)
        if any(path.endswith(m) for m in self.missing):
            return httpx.Response(404)
        headers = {"X-Cache-Status": "HIT", "X-PoP": host}
        if path.endswith("master.m3u8"):
            return httpx.Response(200, text=self.master(), headers=headers)
        if path.endswith("index.m3u8"):
            return httpx.Response(200, text=self.media(), headers=headers)
        if path.endswith("init.mp4"):
            return httpx.Response(200, content=b"i" * 1000, headers=headers)
        kbps = int(path.split("/")[-2].removesuffix("k"))
        return httpx.Response(200, content=b"s" * (kbps * 1000 * 4 // 8), headers=headers)

    def api(self, request: httpx.Request, path: str) -> httpx.Response:
        if path == "/api/auth/login":
            return httpx.Response(200, json={"access_token": "access", "refresh_token": "r"})
        if path == "/api/license/authorizations":
            if self.deny:
                status, code = self.deny
                return httpx.Response(status, json={"error": {"status": status, "code": code, "message": "no"}})
            self.grants += 1
            playback = [{"pop": f"edge-{i}", "url": f"http://pop{i}/s/{self.token(self.grants)}/2000000000/{TITLE}/v1/master.m3u8",
                         "expires_at": "2033-05-18T03:33:20Z"} for i in range(2)]
            return httpx.Response(201, json={"authorization": f"auth{self.grants}", "session_id": f"cas{self.grants}",
                                             "key_uri": "", "expires_at": "", "playback": playback})
        if path.startswith("/api/license/keys/"):
            ok = request.headers.get("authorization") == f"Bearer auth{self.grants}"
            status = self.key_status if ok else 401
            return httpx.Response(status, content=KEY if status == 200 else b"{}")
        if path.startswith("/api/cas/sessions/") and request.method == "DELETE":
            self.ended.append(path.rsplit("/", 1)[1])
            return httpx.Response(204)
        if path == "/api/qoe/beacons":
            self.beacons.append(beacon.Beacon.model_validate(json.loads(request.content)))  # the collector's own check
            return httpx.Response(202, json={"accepted": 1})
        return httpx.Response(404)

    def media_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host != "gw" or "/keys/" in r.url.path]


def simulate(platform: FakePlatform, count: int = 1, seconds: float = 60, **options: object) -> audience.Audience:
    options.setdefault("arrivals_s", 0.0)
    return run(GATEWAY, TITLE, count, seconds, transport=httpx.MockTransport(platform), clock=VirtualClock(),
               **options)  # type: ignore[arg-type]


def sent_cmcd(request: httpx.Request) -> cmcd.Cmcd:
    return cmcd.parse(parse_qs(request.url.query.decode())["CMCD"][0])


def test_a_viewer_plays_the_title_like_a_player() -> None:
    platform = FakePlatform(segments=3)
    result = simulate(platform)
    kinds = result.requests["kind"].tolist()
    assert kinds[:3] == ["master", "playlist", "init"] and kinds.count("segment") == 3
    assert set(result.requests["status"]) == {200}
    assert result.requests["path"].iloc[0] == f"/{TITLE}/v1/master.m3u8"   # unsigned
    (session,) = result.sessions.to_dict("records")
    assert session["started"] and session["exit"] == "ended" and session["failure"] == ""
    assert session["stalls"] == 0 and session["played_s"] == pytest.approx(12.0)
    assert session["startup_s"] < 1 and session["rebuffering_ratio"] == 0
    types = result.events["type"].tolist()
    assert types[0] == "play" and types[1] == "start" and types[-1] == "end"
    end = result.events.iloc[-1]
    assert end["reason"] == "ended" and end["started"] and end["played_s"] == pytest.approx(12.0)
    # The CAS stream the audience opened is closed at the end.
    assert platform.ended == ["cas1"]


def test_every_request_carries_cmcd() -> None:
    platform = FakePlatform(segments=4, encrypted=True)
    result = simulate(platform, count=2)
    requests = platform.media_requests()
    assert len(requests) == len(result.requests) and requests
    sent = [sent_cmcd(r) for r in requests]
    assert all(c.sid and c.cid == TITLE and c.sf == "h" and c.st == "v" and c.ot for c in sent)
    assert {c.sid for c in sent} == set(result.sessions["session"])
    objects = Counter(c.ot for c in sent)
    assert objects["k"] == 2 and objects["i"] >= 2 and objects["m"] >= 4
    segments = [c for c in sent if c.ot == "av"]
    assert len(segments) == 8
    assert all(c.br in (400, 700, 1500) and c.tb == 1500 and c.d == 4000 and c.bl is not None for c in segments)
    assert sum(1 for c in segments if c.nor) == 6   # every segment but the last names the next one
    for sid in {c.sid for c in segments}:   # the throughput measured so far, after the first segment
        own = [c for c in segments if c.sid == sid]
        assert own[0].mtp is None and all(c.mtp and c.mtp % 100 == 0 for c in own[1:])
    # su until playback starts, not after.
    first = [c for c in sent if c.sid == sent[0].sid]
    assert first[0].su and not [c for c in first if c.ot == "av"][-1].su
    # What was sent is what the requests table says.
    assert sorted(result.requests["cmcd"]) == sorted(cmcd.format(c) for c in sent)


def test_beacons_are_valid_v1_and_tell_the_story() -> None:
    platform = FakePlatform(segments=6)
    result = simulate(platform, count=2, seconds=60, beacon_s=10)
    assert result.beacons_sent == len(platform.beacons) and result.beacons_failed == 0
    sessions = {b.session for b in platform.beacons}
    assert sessions == set(result.sessions["session"])
    assert {b.client for b in platform.beacons} == {"simulator"} and {b.title for b in platform.beacons} == {TITLE}
    for session in sessions:
        events = [e for b in platform.beacons if b.session == session for e in b.events]
        assert [e.type for e in events][:2] == ["play", "start"] and events[-1].type == "end"
        assert len([b for b in platform.beacons if b.session == session]) >= 3   # every 10 s and at the end
        played = sum(e.played_ms for e in events if e.type == "progress")
        assert played == pytest.approx(24_000, abs=2)     # progress adds up to the whole title
        assert [e.t_ms for e in events] == sorted(e.t_ms for e in events)


def test_the_same_seed_gives_the_same_result_in_virtual_time() -> None:
    def once(seed: int) -> audience.Audience:
        return simulate(FakePlatform(segments=8), count=6, seconds=40, arrivals_s=5, seed=seed, abr="bola",
                        bandwidth=[Trace.named("commute"), Fixed(900), None])

    first, second, other = once(7), once(7), once(8)
    for name in ("sessions", "events", "timeline", "requests"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.summary() | {"cpu_s": 0} == second.summary() | {"cpu_s": 0}
    assert not first.sessions["session"].equals(other.sessions["session"])
    assert first.sessions["session"].is_unique


def test_a_low_fixed_limit_keeps_the_viewers_on_low_rungs_without_stalls() -> None:
    result = simulate(FakePlatform(segments=10), count=3, seconds=60, bandwidth=Fixed(600))
    segments = result.requests[result.requests["kind"] == "segment"]
    assert set(segments["bitrate_kbps"]) == {400}
    assert result.summary()["stalls"] == 0 and result.summary()["started"] == 3
    # The estimate follows the limit, and downloads take as long as the limit says.
    assert result.timeline["estimate_kbps"].iloc[-1] == pytest.approx(600, rel=0.02)
    assert segments["seconds"].iloc[-1] == pytest.approx(200_000 * 8 / 600_000, rel=0.01)
    assert set(result.timeline["limit_kbps"]) == {600}


def test_an_unlimited_viewer_climbs_to_the_top_rung() -> None:
    result = simulate(FakePlatform(segments=6))
    rungs = result.requests[result.requests["kind"] == "segment"]["bitrate_kbps"].tolist()
    assert rungs[0] == 400 and rungs[-1] == 1500       # 500 kbit/s first estimate, then the measured link
    assert result.sessions["switches"].iloc[0] >= 1
    switches = result.events[result.events["type"] == "switch"]
    assert (switches["to_kbps"] > switches["from_kbps"]).all()
    assert math.isnan(result.timeline["limit_kbps"].iloc[0])


def test_the_buffer_model_waits_at_max_buffer_and_stalls_on_a_slow_link() -> None:
    calm = simulate(FakePlatform(segments=15), seconds=80, max_buffer_s=12)
    assert calm.timeline["buffer_s"].max() <= 12 + 1e-6
    # 4 s of 400 kbit/s media takes 8 s at 200 kbit/s: the buffer runs dry every segment.
    slow = simulate(FakePlatform(segments=4), seconds=60, bandwidth=Fixed(200))
    (session,) = slow.sessions.to_dict("records")
    assert session["stalls"] == 3 and session["stalled_s"] == pytest.approx(12.0, abs=0.01)
    assert session["rebuffering_ratio"] == pytest.approx(12 / 28, abs=0.01)
    stalls = slow.events[slow.events["type"] == "stall"]
    assert list(stalls["duration_s"].round(3)) == [4.0, 4.0, 4.0]
    cmcds = [cmcd.parse(c) for c in slow.requests["cmcd"]]
    # Each request after a stall says so (the third stall comes after the last request).
    assert [i for i, c in enumerate(cmcds) if c.bs] == [5, 6]


def test_viewers_stop_at_the_end_of_the_run() -> None:
    result = simulate(FakePlatform(segments=30), count=2, seconds=20)
    assert set(result.sessions["exit"]) == {"exit"} and result.sessions["started"].all()
    assert (result.sessions["played_s"] <= 20).all()
    # A link so slow the first segment never arrives: an exit before video start.
    never = simulate(FakePlatform(segments=3), seconds=5, bandwidth=Fixed(100))
    assert never.summary()["exits_before_start"] == 1 and never.summary()["started"] == 0
    assert never.requests["error"].iloc[-1] == "exit"


def test_a_summary_without_a_start_has_no_startup_and_stays_json() -> None:
    result = simulate(FakePlatform(deny=(404, "unknown_title")), count=2)
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["startup_p50_s"] is None and summary["bitrate_kbps"] is None
    assert summary["failures"] == {"unknown_title": 2} and summary["viewers"] == summary["attempts"] == 2


def test_an_unknown_title_is_a_video_start_failure_for_everyone() -> None:
    result = simulate(FakePlatform(deny=(404, "unknown_title")), count=3)
    assert set(result.sessions["failure"]) == {"unknown_title"} and set(result.sessions["exit"]) == {"error"}
    assert result.summary()["video_start_failures"] == 3 and result.requests.empty
    errors = result.events[result.events["type"] == "error"]
    assert errors["fatal"].all() and len(errors) == 3 and not errors["started"].any()


@pytest.mark.parametrize(("status", "code", "reason"), [(403, "not_entitled", "not_entitled"),
                                                        (403, "stream_limit", "stream_limit"),
                                                        (401, "unauthorized", "unauthorized")])
def test_a_denied_grant_says_why(status: int, code: str, reason: str) -> None:
    result = simulate(FakePlatform(deny=(status, code)))
    assert result.sessions["failure"].iloc[0] == reason


def test_a_dead_pop_fails_over_to_the_next() -> None:
    platform = FakePlatform(segments=3, dead=frozenset({"pop0"}))
    result = simulate(platform, count=4, pops=["edge-0"])
    assert result.sessions["started"].all() and set(result.sessions["pop"]) == {"edge-1"}
    errors = result.events[result.events["type"] == "error"]
    assert set(errors["reason"]) == {"pop_unreachable"} and not errors["fatal"].any() and len(errors) == 4
    assert not errors["started"].any()      # the master playlist's PoP: before the first frame
    assert (result.requests[result.requests["status"] == 0]["pop"] == "edge-0").all()
    everything_dead = simulate(FakePlatform(dead=frozenset({"pop0", "pop1"})), count=2)
    assert set(everything_dead.sessions["failure"]) == {"pop_unreachable"}
    assert everything_dead.summary()["video_start_failures"] == 2


def test_a_missing_segment_is_retried_once_then_fatal() -> None:
    platform = FakePlatform(segments=4, missing=frozenset({"seg_00002.m4s"}))
    result = simulate(platform)
    (session,) = result.sessions.to_dict("records")
    assert session["failure"] == "segment_not_found" and session["started"] and session["exit"] == "error"
    assert result.summary()["playback_failures"] == 1
    missing = result.requests[result.requests["path"].str.endswith("seg_00002.m4s")]
    assert list(missing["status"]) == [404, 404]
    # The collector tells a playback failure from a start failure by the error's `started`.
    (error,) = [e for b in platform.beacons for e in b.events if e.type == "error"]
    assert error.fatal and error.started and error.reason == "segment_not_found"


@pytest.mark.parametrize(("failure", "reason"), [
    (httpx.ReadTimeout("too slow"), "timeout"),
    (httpx.RemoteProtocolError("peer closed"), "network_error"),
    (httpx.Response(503), "network_error"),
])
def test_a_failing_request_is_retried_once_then_fatal(failure: Exception | httpx.Response, reason: str) -> None:
    platform = FakePlatform(segments=4)
    attempts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("seg_00001.m4s"):
            attempts.append(request.url.path)
            if isinstance(failure, httpx.Response):
                return failure
            raise type(failure)(str(failure), request=request)
        return platform(request)

    result = run(GATEWAY, TITLE, 1, 60, arrivals_s=0, transport=httpx.MockTransport(handler), clock=VirtualClock())
    assert len(attempts) == 2 and result.sessions["failure"].iloc[0] == reason
    assert result.summary()["playback_failures"] == 1 and result.summary()["http_errors"] == 2


def test_an_expired_signed_url_gets_a_new_grant() -> None:
    platform = FakePlatform(segments=12)

    class Expiring(httpx.MockTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("seg_00003.m4s"):
                platform.expired.add(platform.token(1))  # the first grant's links stop working mid-session
            return await super().handle_async_request(request)

    result = run(GATEWAY, TITLE, 3, 80, arrivals_s=0, transport=Expiring(platform), clock=VirtualClock())
    assert platform.grants == 2 and result.grants == 2
    assert platform.ended == ["cas1", "cas2"]      # the old stream ended before the new one, the new at the end
    assert set(result.sessions["exit"]) == {"ended"}
    errors = result.events[result.events["type"] == "error"]
    assert set(errors["reason"]) == {"token_expired"} and not errors["fatal"].any()
    # Answered at once (a mock, virtual time), the first viewer had started when its segment expired; the
    # others met the expired grant on their first request.
    assert list(errors["started"]) == [True, False, False]
    assert set(result.requests["status"]) == {200, 410}


def test_a_key_that_cannot_be_fetched_is_fatal() -> None:
    result = simulate(FakePlatform(encrypted=True, key_status=404))
    assert result.sessions["failure"].iloc[0] == "key_unavailable"
    assert result.summary()["video_start_failures"] == 1
    assert "segment" not in set(result.requests["kind"])


def test_the_summary_is_json() -> None:
    result = simulate(FakePlatform(segments=3), count=2, seed=3, bandwidth=Fixed(2000))
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    # labkit.analysis.experience's figures, and the simulator's own.
    expected = experience.summary(result.sessions)
    assert {k: v for k, v in summary.items() if k in expected} == expected
    assert summary["viewers"] == 2 and summary["started"] == 2 and summary["seed"] == 3 and summary["rule"] == "ewma"
    assert summary["video_start_failures"] == summary["playback_failures"] == summary["http_errors"] == 0
    assert 0 < summary["startup_p50_s"] <= summary["startup_p95_s"]
    assert summary["rebuffering_ratio"] == 0 and summary["bitrate_kbps"] > 400


class Scripted:
    """An ABR rule that plays the rungs (indices) it is given in turn, then stays on the last."""

    def __init__(self, rungs: list[int]) -> None:
        self.rungs = rungs

    def choose(self, ladder: object, **_: object) -> int:
        return self.rungs.pop(0) if len(self.rungs) > 1 else self.rungs[0]


def test_a_switch_between_rungs_of_the_same_kbps_is_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 500 000 and 1 500 400 bit/s are both 1500 kbit/s: a switch 1500 -> 1500 would make the collector
    # refuse the whole beacon, and the viewer sees no change.
    platform = FakePlatform(segments=5, ladder=(1_500_400, 1_500_000, 400_000))
    monkeypatch.setattr(audience.abr_rules, "rule", lambda name, **_: Scripted([0, 1, 2, 1, 0]))
    result = simulate(platform)
    segments = result.requests[result.requests["kind"] == "segment"]
    assert list(segments["bitrate_kbps"]) == [400, 1500, 1500, 1500, 400]   # the rungs did change
    switches = result.events[result.events["type"] == "switch"]
    assert list(zip(switches["from_kbps"], switches["to_kbps"], strict=True)) == [(400, 1500), (1500, 400)]
    assert result.sessions["switches"].iloc[0] == 2 == result.summary()["switches"]
    assert result.beacons_failed == 0
    sent = [e for b in platform.beacons for e in b.events if e.type == "switch"]
    assert [(e.from_kbps, e.to_kbps) for e in sent] == [(400, 1500), (1500, 400)]


def test_a_title_id_that_is_not_one_is_refused_before_any_request() -> None:
    platform = FakePlatform()
    with pytest.raises(ConfigError, match="invalid title id 'Lab Clock'"):
        run(GATEWAY, "Lab Clock", 1, 10, transport=httpx.MockTransport(platform), clock=VirtualClock())
    assert platform.requests == []


@pytest.mark.parametrize(("options", "message"), [
    ({"count": 0}, "count must be"),
    ({"seconds": -1}, "seconds must be"),
    ({"arrivals_s": 100}, "arrivals_s must be"),
    ({"abr": "magic"}, "unknown ABR rule"),
    ({"bandwidth": "600"}, "bandwidth must be"),
    ({"bandwidth": [Fixed(600), 600]}, "is not a Fixed or Trace"),
    ({"user": "mallory"}, "no demo user"),
    ({"pops": ["edge-9"]}, "no PoP 'edge-9'"),
])
def test_bad_arguments_are_refused(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"count": 1, "seconds": 10} | options
    with pytest.raises(ConfigError, match=message):
        simulate(FakePlatform(), **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(("failure", "expected"), [
    (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
    (TimeoutError(), httpx.ReadTimeout),
    (aiohttp.ClientConnectorError(ConnectionKey("pop", 80, False, False, None, None, None),  # type: ignore[arg-type]
                                  ConnectionRefusedError(111, "refused")), httpx.ConnectError),
    (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError("truncated"), httpx.RemoteProtocolError),
    (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
])
def test_network_failures_reach_the_viewer_as_the_httpx_errors_its_fault_handling_knows(
        failure: Exception, expected: type[httpx.HTTPError]) -> None:
    request = httpx.Request("GET", "http://pop0/a.m4s")
    error = audience._httpx_error(failure, request)
    assert type(error) is expected and error.request is request
    assert type(failure).__name__ in str(error)
