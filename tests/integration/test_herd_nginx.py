"""The thundering herd on real nginx: scratch PoPs with and without the cache lock, in front of the lab's origin.

On loopback the origin hands a whole segment over in a millisecond, so whether concurrent misses
overlap is left to chance; the herd tests put a slow origin (the same media root behind nginx's
``limit_rate``, as a distant origin would be) between the scratch PoPs and the files, so each miss
lasts about a second and the whole herd arrives during it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import ComponentFailedError
from labkit.core.wait import until
from labkit.platform.layers import media
from labkit.targets.local.target import LocalTarget
from labkit.traffic import herd, wave
from labkit.traffic.herd import ScratchNginx, ScratchPop, ScratchStatic
from ott import cmcd

pytestmark = pytest.mark.integration
SEGMENT_BYTES = 650 * 1024
TITLE = "herd-title"
# nginx allows a second's worth at once: at 400 KB/s a 650 KB segment takes about a second.
SLOW_ORIGIN_RATE = "400k"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    cfg = LabConfig.from_env(home=tmp_path_factory.mktemp("herd") / "lab", base_port=29100, ready_timeout=60)
    target = LocalTarget(cfg, platform.components(), platform.layers())
    try:
        target.up(["media", "cdn"])
        folder = media.media_root(cfg) / TITLE / "720p"
        folder.mkdir(parents=True)
        (media.media_root(cfg) / TITLE / "master.m3u8").write_text(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n720p/index.m3u8\n")
        for i in range(4):
            (folder / f"seg_{i:05d}.m4s").write_bytes(os.urandom(SEGMENT_BYTES))
        yield target
    finally:
        target.down(purge=True)


@pytest.fixture(scope="module")
def slow_origin(lab: LocalTarget) -> Iterator[ScratchStatic]:
    with ScratchStatic(media.media_root(lab.cfg), name="slow-origin", limit_rate=SLOW_ORIGIN_RATE) as origin:
        yield origin


def test_a_scratch_pop_serves_signed_urls_from_the_labs_origin_and_cleans_up(lab: LocalTarget) -> None:
    with ScratchPop(lab.cfg) as pop:
        workdir, pid = pop.workdir, pop.pid
        url = pop.signed(TITLE, "/720p/seg_00000.m4s")
        first, again = httpx.get(url, timeout=10), httpx.get(url, timeout=10)
        assert (first.status_code, first.headers["x-cache-status"], first.headers["x-pop"]) == (
            200, "MISS", "scratch-lock")
        assert again.headers["x-cache-status"] == "HIT" and len(again.content) == SEGMENT_BYTES
        forged = url.replace(url.split("/")[4], "A" * 22)
        assert httpx.get(forged, timeout=10).status_code == 403
        assert pop.origin_fetches(f"/{TITLE}/720p/seg_00000.m4s") == 1
        assert [line["cache"] for line in pop.log_lines() if line["path"] != "/healthz"] == ["MISS", "HIT", ""]
    assert not workdir.exists() and pid is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_a_scratch_nginx_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    class Broken(ScratchNginx):
        def render(self, listen: str, workdir: Path) -> str:
            return "events {}\nhttp { server { listen " + listen + "; no_such_directive on; } }\n"

    broken = Broken("broken")
    with pytest.raises(ComponentFailedError, match="no_such_directive"):
        broken.start()
    assert broken.pid is None
    with pytest.raises(RuntimeError, match="not started"):
        _ = broken.workdir


def test_with_the_cache_lock_a_herd_makes_one_origin_fetch(lab: LocalTarget, slow_origin: ScratchStatic) -> None:
    with ScratchPop(lab.cfg, cache_lock=True, origin_peers=[slow_origin.peer]) as pop:
        result = herd.herd(pop.signed(TITLE, "/720p/seg_00001.m4s"), clients=100, timeout=30)
        assert result.ok, set(result.errors)
        assert result.bytes == [SEGMENT_BYTES] * 100
        assert pop.origin_fetches(f"/{TITLE}/720p/seg_00001.m4s") == 1
        assert result.cache.count("MISS") == 1


def test_without_the_cache_lock_the_herd_reaches_the_origin(lab: LocalTarget, slow_origin: ScratchStatic) -> None:
    with ScratchPop(lab.cfg, cache_lock=False, origin_peers=[slow_origin.peer]) as pop:
        result = herd.herd(pop.signed(TITLE, "/720p/seg_00002.m4s"), clients=100, timeout=30)
        assert result.ok, set(result.errors)
        assert pop.origin_fetches(f"/{TITLE}/720p/seg_00002.m4s") > 1
        # Every later viewer is served from the copy one of them stored.
        assert httpx.get(pop.signed(TITLE, "/720p/seg_00002.m4s"), timeout=10).headers["x-cache-status"] == "HIT"


def test_a_wave_of_viewers_plays_through_a_pop_which_logs_their_cmcd(lab: LocalTarget) -> None:
    # The simple viewers of the CDN drills over real sockets: each object is a MISS once, then HITs.
    segments = "".join(f"#EXTINF:4.000,\nseg_{i:05d}.m4s\n" for i in range(4))
    (media.media_root(lab.cfg) / TITLE / "720p" / "index.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n{segments}#EXT-X-ENDLIST\n")
    with ScratchPop(lab.cfg, pop="scratch-wave") as pop:
        fetches = wave.frame(wave.wave([pop.signed(TITLE, "/master.m3u8")], 3, arrivals_s=1, content_id=TITLE,
                                       timeout=60))
        logged = pop.log_lines()
    assert (fetches["status"] == 200).all(), fetches[fetches["status"] != 200]
    assert fetches.groupby("viewer").size().tolist() == [6, 6, 6]   # master, playlist, four segments
    assert set(fetches["pop"]) == {"scratch-wave"} and fetches["path"].str.startswith(f"/{TITLE}/").all()
    misses = fetches[fetches["cache"] == "MISS"]
    assert misses["path"].is_unique and len(misses) == 6 and set(fetches["cache"]) == {"MISS", "HIT"}
    assert (fetches[fetches["kind"] == "segment"]["bytes"] == SEGMENT_BYTES).all()
    sent = [cmcd.parse(unquote(line["cmcd"])) for line in logged if line.get("cmcd")]
    assert len(sent) == len(fetches) and {c.sid for c in sent} == set(fetches["session"])
    assert {c.cid for c in sent} == {TITLE} and all(c.mtp for c in sent if c.ot == "v" and c.bl)


class _RecordingOrigin(ThreadingHTTPServer):
    """An origin on a free loopback port: ``size`` random bytes for any path; each request's X-Request-Id kept."""

    daemon_threads = True

    def __init__(self, size: int) -> None:
        self.body = os.urandom(size)
        self.request_ids: list[str] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def peer(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        origin = self.server
        assert isinstance(origin, _RecordingOrigin)
        origin.request_ids.append(self.headers.get("X-Request-Id", ""))
        self.send_response(200)
        self.send_header("Content-Length", str(len(origin.body)))
        self.end_headers()
        self.wfile.write(origin.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def small_origin() -> Iterator[_RecordingOrigin]:
    origin = _RecordingOrigin(64 * 1024)
    serving = threading.Thread(target=origin.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    try:
        yield origin
    finally:
        origin.shutdown()
        origin.server_close()


def test_hits_of_a_64_kb_object_on_one_connection_do_not_wait_for_delayed_acks(
        tmp_path: Path, small_origin: _RecordingOrigin) -> None:
    # A cache entry's body starts off a page boundary. Sent with sendfile and tcp_nopush, a response
    # went out as a short segment and a tail that Nagle held until the client's delayed ACK: 40 ms a HIT.
    cfg = LabConfig(home=tmp_path / "lab")
    with ScratchPop(cfg, origin_peers=[small_origin.peer]) as pop, httpx.Client(timeout=10) as client:
        url = pop.signed(TITLE, "/720p/seg_00000.m4s")
        assert client.get(url).headers["x-cache-status"] == "MISS"
        started = time.perf_counter()
        for _ in range(20):
            response = client.get(url)
            assert (response.headers["x-cache-status"], response.content) == ("HIT", small_origin.body)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.4, f"20 HITs took {elapsed:.2f} s: about 40 ms each is the delayed-ACK stall"


def test_a_pop_logs_the_request_id_it_sends_to_the_origin(tmp_path: Path, small_origin: _RecordingOrigin) -> None:
    cfg = LabConfig(home=tmp_path / "lab")
    with ScratchPop(cfg, origin_peers=[small_origin.peer]) as pop, httpx.Client(timeout=10) as client:
        for rest in ("/720p/seg_00000.m4s", "/720p/seg_00000.m4s", "/720p/seg_00001.m4s"):
            assert client.get(pop.signed(TITLE, rest)).status_code == 200

        def logged() -> list[dict[str, object]] | None:
            # nginx writes a request's line once the response is sent: the client may read first.
            lines = [line for line in pop.log_lines() if line["path"] != "/healthz"]
            return lines if len(lines) == 3 else None

        lines = until(logged, 5, 0.01, "the PoP to log three requests")
    assert [line["cache"] for line in lines] == ["MISS", "HIT", "MISS"]
    ids = [str(line["request_id"]) for line in lines]
    assert len(set(ids)) == 3 and all(ids)
    assert small_origin.request_ids == [ids[0], ids[2]]
