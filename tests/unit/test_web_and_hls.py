"""What notebooks 02 and 03 fetch and parse through labkit: one URL's raw answer, HLS playlists."""

from __future__ import annotations

import doctest
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from labkit.clients import hls, web
from labkit.core.errors import LabError

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=3100000,AVERAGE-BANDWIDTH=2900000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=1280x720
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=640x360
360p/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=300000,CODECS="avc1.64001f",RESOLUTION=1280x720,URI="720p/iframes.m3u8"
"""

MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:3
#EXT-X-MAP:URI="init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="https://gw.test/api/license/keys/t/1",IV=0x000102030405060708090a0b0c0d0e0f
#EXTINF:4.0,
seg_00000.m4s
#EXTINF:2.5,
seg_00001.m4s
#EXT-X-ENDLIST
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/trickle":  # headers at once, then a byte every 0.1 s: each read is quick
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path == "/gzip":
            body = gzip.compress(b"#EXTM3U\n" * 50)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
        elif self.path == "/missing":
            body = b'{"error": {"code": "not_found"}}'
            self.send_response(404)
        else:
            body = f"auth={self.headers.get('Authorization')}".encode()
            self.send_response(200)
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("module", [web, hls])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


def test_fetch_returns_the_whole_answer_with_the_headers_sent(server: str) -> None:
    response = web.fetch(f"{server}/key", headers={"Authorization": "Bearer abc"})
    assert (response.status_code, response.text) == (200, "auth=Bearer abc")
    assert response.headers["cache-control"] == "no-store"   # case-insensitive, as a notebook reads it


def test_an_error_status_is_an_answer_to_show_not_an_exception(server: str) -> None:
    response = web.fetch(f"{server}/missing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_compressed_body_is_decoded_once(server: str) -> None:
    assert web.fetch(f"{server}/gzip").text == "#EXTM3U\n" * 50


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://[::1"])
def test_a_bad_url_is_a_lab_error_that_shows_what_a_url_looks_like(url: str) -> None:
    with pytest.raises(web.FetchError) as caught:
        web.fetch(url)
    assert isinstance(caught.value, LabError) and caught.value.reason == "bad_url"
    assert not caught.value.retryable and repr(url) in str(caught.value)
    assert "http://127.0.0.1:<port>" in caught.value.hint


def test_a_refused_connection_says_to_check_the_platform() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(web.FetchError) as caught:
        web.fetch(f"http://127.0.0.1:{port}/master.m3u8")
    assert caught.value.reason == "refused" and caught.value.retryable
    assert f"127.0.0.1:{port}" in str(caught.value) and "ottlab status" in caught.value.hint


def test_a_server_that_never_answers_times_out_within_the_bound() -> None:
    with socket.socket() as sock:  # accepts connections (the backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        started = time.monotonic()
        with pytest.raises(web.FetchError) as caught:
            web.fetch(f"http://127.0.0.1:{sock.getsockname()[1]}/slow", timeout=0.3)
    assert time.monotonic() - started < 2
    assert caught.value.reason == "timeout" and caught.value.retryable and "0.3 s" in str(caught.value)


def test_the_timeout_bounds_the_whole_body_not_each_read(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(web.FetchError) as caught:
        web.fetch(f"{server}/trickle", timeout=0.5)   # 10 s of body, each byte 0.1 s after the last
    assert time.monotonic() - started < 2
    assert caught.value.reason == "timeout" and "body" in str(caught.value)


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        web.fetch("http://127.0.0.1:1/", timeout=0)


def test_a_multivariant_playlist_reads_as_rungs_in_its_order() -> None:
    master = hls.multivariant(MASTER)
    assert [(v.folder, v.bandwidth, v.average_bandwidth) for v in master.variants] == \
        [("720p", 3100000, 2900000), ("360p", 900000, None)]
    assert master.variants[0].resolution == (1280, 720) and master.variants[0].codecs == "avc1.64001f,mp4a.40.2"
    assert [v.uri for v in master.iframe_playlists] == ["720p/iframes.m3u8"]
    assert master.iframe_playlists[0].bandwidth == 300000


def test_a_media_playlist_reads_as_init_segments_and_keys() -> None:
    playlist = hls.media(MEDIA)
    assert playlist.init == "init.mp4" and playlist.media_sequence == 3 and playlist.target_duration == 4
    assert playlist.segments == (hls.Segment("seg_00000.m4s", 4.0), hls.Segment("seg_00001.m4s", 2.5))
    assert playlist.keys == (hls.Key("AES-128", "https://gw.test/api/license/keys/t/1",
                                     "0x000102030405060708090a0b0c0d0e0f"),)
    assert playlist.ended
    clear = hls.media(MEDIA.replace(MEDIA.splitlines()[5] + "\n", ""))
    assert clear.keys == ()


@pytest.mark.parametrize(("parse", "text", "problem"), [
    (hls.multivariant, "<html><body>502 Bad Gateway</body></html>", "#EXTM3U"),
    (hls.multivariant, "", "#EXTM3U"),
    (hls.multivariant, MEDIA, "no EXT-X-STREAM-INF"),
    (hls.media, MASTER, "multivariant"),
    (hls.multivariant, "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=lots\n720p/index.m3u8\n", "ValueError"),
])
def test_a_text_that_is_not_the_playlist_asked_for_is_a_lab_error(parse: Any, text: str, problem: str) -> None:
    with pytest.raises(hls.PlaylistError) as caught:
        parse(text)
    assert isinstance(caught.value, LabError) and problem in str(caught.value)
    assert "status and text" in caught.value.hint
