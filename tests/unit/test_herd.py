"""labkit.traffic.herd without nginx: access-log counting, the static renderer, and the herd against a Python server."""

from __future__ import annotations

import asyncio
import doctest
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labkit.core.config import LabConfig
from labkit.platform.layers import cdn
from labkit.traffic import herd
from labkit.traffic.herd import HerdResult, ScratchPop, count_origin_fetches, parse_log_lines, render_static


def test_doctests() -> None:
    assert doctest.testmod(herd).failed == 0


def test_log_lines_that_are_not_json_objects_are_skipped() -> None:
    lines = ['{"path":"/a","upstream_status":"200"}', "", "nginx: [warn] something", '{"path":', "[1, 2]",
             '  {"path":"/b","upstream_status":""}  ']
    assert parse_log_lines(lines) == [{"path": "/a", "upstream_status": "200"}, {"path": "/b", "upstream_status": ""}]


@pytest.mark.parametrize(("upstream", "attempts"), [
    ("", 0),              # a HIT: no origin
    ("200", 1),
    ("502, 200", 2),      # the first peer failed, the next answered
    ("502, 504 : 200", 3),  # an internal redirect to another upstream group
    (None, 0),
])
def test_each_upstream_attempt_is_an_origin_fetch(upstream: str | None, attempts: int) -> None:
    entries = [{"path": "/t/720p/seg_00001.m4s", "upstream_status": upstream},
               {"path": "/t/720p/seg_00002.m4s", "upstream_status": "200"}]
    assert count_origin_fetches(entries, "/t/720p/seg_00001.m4s") == attempts


def test_a_herd_on_a_log_counts_only_its_path() -> None:
    log = [json.dumps({"path": "/t/s.m4s", "cache": c, "upstream_status": u})
           for c, u in [("MISS", "200"), ("HIT", ""), ("HIT", ""), ("MISS", "200"), ("EXPIRED", "200")]]
    log.append(json.dumps({"path": "/t/other.m4s", "cache": "MISS", "upstream_status": "200"}))
    assert count_origin_fetches(parse_log_lines(log), "/t/s.m4s") == 3


def test_the_static_baseline_serves_a_root_with_the_lab_preamble() -> None:
    conf = render_static(listen="127.0.0.1:1234", root="/srv/media", temp_dir="/tmp/x")
    assert "listen 127.0.0.1:1234;" in conf and "root /srv/media;" in conf
    assert "worker_processes 1;" in conf and "pid /tmp/x/nginx.pid;" in conf
    assert "access_log off;" in conf and "limit_rate" not in conf and "proxy_cache" not in conf
    slow = render_static(listen="127.0.0.1:1234", root="/srv/media", temp_dir="/tmp/x", access_log="/tmp/x/a.log",
                         limit_rate="400k")
    assert "access_log /tmp/x/a.log;" in slow and "limit_rate 400k;" in slow
    # The baseline sends files with sendfile, nginx's usual way; its like-for-like twin as a local PoP does.
    assert "sendfile on;" in conf and "tcp_nopush on;" in conf
    copy = render_static(listen="127.0.0.1:1234", root="/srv/media", temp_dir="/tmp/x",
                         file_output=cdn.LOCAL_FILE_OUTPUT)
    assert "sendfile off;" in copy and "output_buffers 1 1m;" in copy and "sendfile on;" not in copy


def test_a_scratch_pop_signs_with_the_labs_secret_and_renders_its_lock(tmp_path: Path) -> None:
    cfg = LabConfig(home=tmp_path / "lab", base_port=29100)
    cfg.conf_dir.mkdir(parents=True)
    (cfg.conf_dir / "url-signing-secret").write_text("s3cret-for-tests\n")
    pop = ScratchPop(cfg, cache_lock=False)
    assert (pop.pop, pop.secret, pop.origin_peers) == ("scratch-nolock", "s3cret-for-tests", ["127.0.0.1:29160"])
    workdir, other = tmp_path / "pop", tmp_path / "other"
    workdir.mkdir()
    other.mkdir()
    conf = pop.render("127.0.0.1:5555", workdir)
    assert "proxy_cache_lock off;" in conf and "server 127.0.0.1:29160" in conf and "s3cret-for-tests" in conf
    assert f"access_log {workdir / 'access.log'} edge;" in conf and (workdir / "cache").is_dir()
    assert "proxy_cache_lock on;" in ScratchPop(cfg).render("127.0.0.1:5555", other)
    with pytest.raises(RuntimeError, match="not started"):
        _ = pop.url


def test_a_herd_result_as_a_frame_and_its_quantiles() -> None:
    result = HerdResult("http://x/a", [200, 200, 0, 200], [0.1, 0.2, 5.0, 0.3], [10, 10, 0, 10],
                        ["MISS", "HIT", "", "HIT"], ["", "", "timed out", ""], 5.0)
    frame = result.frame()
    assert list(frame.columns) == ["status", "latency_s", "bytes", "cache", "error"] and len(frame) == 4
    assert result.clients == 4 and not result.ok
    assert result.latency_quantile(0.5) == pytest.approx(0.2)  # the one without a response is left out
    assert result.latency_quantile(1.0) == pytest.approx(0.3)
    assert math.isnan(HerdResult("u", [0], [1.0], [0], [""], ["x"], 1.0).latency_quantile(0.5))


class _Barrier(BaseHTTPRequestHandler):
    """Answers /healthz at once; answers /herd only once every client's request is in (a barrier)."""

    barrier: threading.Barrier

    def do_GET(self) -> None:
        if self.path == "/herd":
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                self.send_error(503)
                return
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Cache-Status", "HIT")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def barrier_server() -> Iterator[tuple[str, threading.Barrier]]:
    barrier = threading.Barrier(40, timeout=10)
    handler = type("Handler", (_Barrier,), {"barrier": barrier, "protocol_version": "HTTP/1.1"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", barrier
    finally:
        barrier.abort()
        server.shutdown()
        server.server_close()


def test_the_herds_clients_are_all_in_flight_at_once(barrier_server: tuple[str, threading.Barrier]) -> None:
    url, _ = barrier_server
    result = herd.herd(url + "/herd", clients=40, timeout=20)
    assert result.ok, set(result.errors)
    assert result.bytes == [1000] * 40 and result.cache == ["HIT"] * 40
    assert max(result.latencies) <= result.wall_s


def test_a_herd_is_bounded_by_its_timeout(barrier_server: tuple[str, threading.Barrier]) -> None:
    url, _ = barrier_server  # 10 clients never fill a barrier of 40
    result = herd.herd(url + "/herd", clients=10, timeout=1)
    assert result.statuses == [0] * 10 and result.wall_s < 5
    assert all(e for e in result.errors)


def test_a_herd_runs_inside_a_running_event_loop(barrier_server: tuple[str, threading.Barrier]) -> None:
    url, _ = barrier_server

    async def from_a_notebook() -> HerdResult:
        return herd.herd(url + "/healthz", clients=5)

    assert asyncio.run(from_a_notebook()).statuses == [200] * 5
    with pytest.raises(ValueError, match="at least 1"):
        herd.herd(url, clients=0)
