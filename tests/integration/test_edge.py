"""The CDN edge on loopback: real nginx PoPs in front of the real origin nginx.

The title is written straight into the media root (no transcode needed to test caching).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from labkit.core.wait import until
from labkit.platform import credentials
from labkit.platform.layers import cdn, media
from labkit.targets.local.target import LocalTarget
from ott import signing

pytestmark = pytest.mark.integration
SEGMENT_BYTES = 650 * 1024
# nginx keeps validity in whole seconds from the second the entry was stored: a 2 s TTL ends
# 2 to 3 s later; a wait for the expiry is bounded past the latest end.
LIVE_EXPIRY_S = cdn.OBJECT_TYPES[0].ttl_s + 1.2


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    cfg = LabConfig.from_env(home=tmp_path_factory.mktemp("edge") / "lab", base_port=28800, ready_timeout=60)
    target = LocalTarget(cfg, platform.components(), platform.layers())
    try:
        target.up(["media", "cdn"])
        root = media.media_root(cfg)
        for title in ("vod-title", "other-title"):
            (root / title / "720p").mkdir(parents=True)
            (root / title / "master.m3u8").write_text("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n720p/index.m3u8\n")
            (root / title / "720p" / "seg_00000.m4s").write_bytes(os.urandom(SEGMENT_BYTES))
        (root / "live" / "channel").mkdir(parents=True)
        (root / "live" / "channel" / "index.m3u8").write_text("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:1\n")
        yield target
    finally:
        target.down(purge=True)


def signed(lab: LocalTarget, title: str, rest: str, *, pop: int = 0, ttl: int = 600) -> str:
    secret = (lab.cfg.conf_dir / credentials.SIGNING_SECRET_FILE).read_text().strip()
    return cdn.EDGE.url(lab.cfg, "http", pop) + signing.signed_path(secret, title, int(time.time()) + ttl, rest)


def origin_fetches(lab: LocalTarget, path: str) -> int:
    """Requests for ``path`` in the origin's JSON access log."""
    lines = (lab.cfg.log_dir / "origin.log").read_text().splitlines()
    return sum(1 for line in lines if line.startswith("{") and json.loads(line).get("uri") == path)


def test_every_pop_is_listed_with_its_url(lab: LocalTarget) -> None:
    (status,) = [s for s in lab.status() if s.name == "edge"]
    assert status.healthy and status.replicas == cdn.DEFAULT_POPS
    assert status.replica_urls == {f"edge-{i}": cdn.EDGE.url(lab.cfg, "http", i) for i in range(cdn.DEFAULT_POPS)}


def test_a_signed_url_is_served_and_cached_per_pop(lab: LocalTarget) -> None:
    first = httpx.get(signed(lab, "vod-title", "/720p/seg_00000.m4s"), timeout=10)
    assert (first.status_code, first.headers["x-cache-status"], first.headers["x-pop"]) == (200, "MISS", "edge-0")
    assert first.headers["content-type"] == "video/mp4" and len(first.content) == SEGMENT_BYTES
    # One CORS header (the origin's copy is hidden): browsers refuse "*, *".
    assert first.headers.get_list("access-control-allow-origin") == ["*"]
    # Another viewer's token and CMCD arguments: the same cached object.
    again = httpx.get(signed(lab, "vod-title", "/720p/seg_00000.m4s", ttl=900) + "?CMCD=br%3D3200%2Csid%3D%22x%22",
                      timeout=10)
    assert again.headers["x-cache-status"] == "HIT" and again.content == first.content
    # The other PoP has its own cache.
    other = httpx.get(signed(lab, "vod-title", "/720p/seg_00000.m4s", pop=1), timeout=10)
    assert (other.headers["x-cache-status"], other.headers["x-pop"]) == ("MISS", "edge-1")
    assert origin_fetches(lab, "/vod-title/720p/seg_00000.m4s") == 2


def test_relative_uris_keep_the_signed_prefix(lab: LocalTarget) -> None:
    master = signed(lab, "vod-title", "/master.m3u8")
    response = httpx.get(master, timeout=10)
    assert response.headers["content-type"] == "application/vnd.apple.mpegurl"
    variant = httpx.URL(master).join(response.text.splitlines()[-1])
    assert str(variant).startswith(master.rsplit("/", 1)[0])  # still under /s/<token>/<expires>/vod-title/


@pytest.mark.parametrize(("mangle", "status"), [
    (lambda url: url.replace("/s/", "/s/A", 1).replace("/", "/", 1), 404),   # token too long: no such path
    (lambda url: url.replace(url.split("/")[4], "A" * 22), 403),            # forged token
    (lambda url: url.replace("vod-title", "other-title"), 403),             # a token for another title
])
def test_a_bad_token_is_refused(lab: LocalTarget, mangle: object, status: int) -> None:
    url = signed(lab, "vod-title", "/master.m3u8")
    assert callable(mangle)
    response = httpx.get(mangle(url), timeout=10)
    assert response.status_code == status and "x-cache-status" not in response.headers


def test_an_expired_link_is_gone_and_an_unsigned_path_unknown(lab: LocalTarget) -> None:
    expired = httpx.get(signed(lab, "vod-title", "/master.m3u8", ttl=-5), timeout=10)
    assert expired.status_code == 410
    # A web player reads the refusal (and renews its link) only if CORS lets it see the status.
    assert expired.headers.get_list("access-control-allow-origin") == ["*"] and expired.headers["x-pop"] == "edge-0"
    assert httpx.get(cdn.EDGE.url(lab.cfg) + "/vod-title/master.m3u8", timeout=10).status_code == 404


@pytest.mark.parametrize("rest", ["/../other-title/master.m3u8", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd",
                                  "/.staging/x.m4s", "/720p/missing.m4s", "/720p/notes.txt"])
def test_path_tricks_get_a_4xx_and_nothing_is_cached(lab: LocalTarget, rest: str) -> None:
    url = signed(lab, "vod-title", "/master.m3u8").removesuffix("/master.m3u8") + rest
    response = httpx.get(url, timeout=10)
    assert 400 <= response.status_code < 500
    again = httpx.get(url, timeout=10)
    assert again.headers.get("x-cache-status") != "HIT"


def test_range_requests_are_served_from_the_cache(lab: LocalTarget) -> None:
    url = signed(lab, "other-title", "/720p/seg_00000.m4s")
    part = httpx.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert (part.status_code, len(part.content), part.headers["content-range"]) == (
        206, 100, f"bytes 100-199/{SEGMENT_BYTES}")
    hit = httpx.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert (hit.status_code, hit.headers["x-cache-status"], len(hit.content)) == (206, "HIT", 10)
    absurd = httpx.get(url, headers={"Range": f"bytes={SEGMENT_BYTES * 10}-"}, timeout=10)
    assert absurd.status_code == 416
    garbage = httpx.get(url, headers={"Range": "bytes=banana"}, timeout=10)
    assert garbage.status_code == 416
    # Many ranges at once: nginx answers them as multipart, never more bytes than the object has.
    many = httpx.get(url, headers={"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2000, 2))}, timeout=10)
    assert many.status_code in (206, 400, 416) and len(many.content) < 4 * SEGMENT_BYTES


def test_oversized_headers_are_refused(lab: LocalTarget) -> None:
    response = httpx.get(signed(lab, "vod-title", "/master.m3u8"), headers={"X-Junk": "x" * 20_000}, timeout=10)
    assert response.status_code in (400, 431, 494)


def test_a_herd_of_cold_requests_makes_one_origin_fetch(lab: LocalTarget) -> None:
    (media.media_root(lab.cfg) / "vod-title" / "720p" / "seg_00001.m4s").write_bytes(os.urandom(SEGMENT_BYTES))
    url = signed(lab, "vod-title", "/720p/seg_00001.m4s")
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=100)) as client, \
            concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: client.get(url).status_code, range(100)))
    assert statuses == [200] * 100
    assert origin_fetches(lab, "/vod-title/720p/seg_00001.m4s") == 1


def test_live_playlists_expire_and_the_edge_serves_stale_when_the_origin_is_down(lab: LocalTarget) -> None:
    url = signed(lab, "live", "/channel/index.m3u8")
    assert httpx.get(url, timeout=10).headers["x-cache-status"] == "MISS"
    assert httpx.get(url, timeout=10).headers["x-cache-status"] == "HIT"
    playlist = media.media_root(lab.cfg) / "live" / "channel" / "index.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:2\n")  # the live edge moved on
    # HITs of the old copy until the TTL ends; then the viewer gets the stale copy at once while the
    # PoP refreshes it in the background ...
    expired = _wait_for_cache_status(url, ("STALE", "UPDATING"))
    assert "SEQUENCE:1" in expired.text
    # ... and the next viewers get the new one.
    fresh = _wait_for_text(url, "SEQUENCE:2")
    assert fresh.headers["x-cache-status"] == "HIT"
    # A VOD playlist is kept far longer.
    vod = signed(lab, "vod-title", "/master.m3u8")
    httpx.get(vod, timeout=10)
    assert httpx.get(vod, timeout=10).headers["x-cache-status"] == "HIT"

    assert not lab.stop("origin").healthy
    try:
        # Expired again, and no origin to refresh it from: the stale copy.
        stale = _wait_for_cache_status(url, ("STALE",))
        assert stale.status_code == 200 and "SEQUENCE:2" in stale.text
        never_cached = httpx.get(signed(lab, "vod-title", "/720p/seg_09999.m4s"), timeout=10)
        assert never_cached.status_code == 502
    finally:
        assert lab.start("origin").healthy
    assert httpx.get(url, timeout=10).status_code == 200


def _wait_for_text(url: str, text: str, timeout: float = 5) -> httpx.Response:
    """Ask ``url`` until its body holds ``text``: that answer."""

    def answered() -> httpx.Response | None:
        response = httpx.get(url, timeout=10)
        return response if text in response.text else None

    return until(answered, timeout, 0.05, f"{text!r} in the body of {url}")


def _wait_for_cache_status(url: str, statuses: tuple[str, ...], timeout: float = LIVE_EXPIRY_S + 5) -> httpx.Response:
    """Ask ``url`` until the PoP's ``X-Cache-Status`` is one of ``statuses``: that answer."""
    last: list[httpx.Response] = []

    def answered() -> httpx.Response | None:
        last[:] = [httpx.get(url, timeout=10)]
        return last[0] if last[0].headers.get("x-cache-status") in statuses else None

    return until(answered, timeout, 0.05, lambda: f"X-Cache-Status {' or '.join(statuses)} from {url} (last answer: "
                 f"{last[0].status_code} {last[0].headers.get('x-cache-status')})")


def test_the_edge_writes_a_json_access_log_line_per_request(lab: LocalTarget) -> None:
    httpx.get(signed(lab, "vod-title", "/master.m3u8") + "?CMCD=bl%3D2000", timeout=10)
    log = Path(lab.cfg.run_dir) / "edge" / "0" / "access.log"
    # The log is buffered: the line lands within cdn.LOG_FLUSH_S.
    _eventually(lambda: log.exists() and '"cmcd":"bl%3D2000"' in log.read_text(), timeout=cdn.LOG_FLUSH_S + 5)
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["pop"], last["path"], last["status"], last["cmcd"]) == ("edge-0", "/vod-title/master.m3u8", 200,
                                                                         "bl%3D2000")
    assert last["cache"] in ("HIT", "MISS")


def _metrics(lab: LocalTarget, pop: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(cdn.EXPORTER.url(lab.cfg, "http", pop) + "/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def _eventually(check: Callable[[], object], timeout: float = 10) -> None:
    until(check, timeout, 0.2, "the PoP's log and exporter to catch up")


def test_each_pops_exporter_counts_its_requests_and_cmcd(lab: LocalTarget) -> None:
    (media.media_root(lab.cfg) / "vod-title" / "720p" / "seg_00002.m4s").write_bytes(os.urandom(1000))
    url = signed(lab, "vod-title", "/720p/seg_00002.m4s", pop=1)
    before = _metrics(lab, 1)
    cmcd = "br%3D3200%2Cbl%3D21300%2Cmtp%3D25400%2Cot%3Dv%2Csid%3D%22viewer-7%22%2Csu"
    for query in (f"?CMCD={cmcd}", f"?CMCD={cmcd}", "?CMCD=%22garbage", ""):
        assert httpx.get(url + query, timeout=10).status_code == 200

    def counted() -> bool:
        return _value(_metrics(lab, 1), "ott_edge_requests_total", object_type="segment") >= _value(
            before, "ott_edge_requests_total", object_type="segment") + 4

    _eventually(counted)
    after = _metrics(lab, 1)
    assert _value(after, "ott_edge_requests_total", pop="edge-1", cache="HIT", object_type="segment") - _value(
        before, "ott_edge_requests_total", pop="edge-1", cache="HIT", object_type="segment") == 3
    assert _value(after, "ott_edge_origin_fetches_total", object_type="segment") - _value(
        before, "ott_edge_origin_fetches_total", object_type="segment") == 1
    assert _value(after, "ott_edge_cmcd_requests_total", result="invalid") - _value(
        before, "ott_edge_cmcd_requests_total", result="invalid") == 1
    assert _value(after, "ott_edge_cmcd_session_bitrate_kbps", session="viewer-7") == 3200
    assert _value(after, "ott_edge_cmcd_session_throughput_kbps", session="viewer-7") == 25400
    assert _value(after, "ott_edge_cmcd_session_requests_total", session="viewer-7") == 2
    # PoP 0's exporter saw none of it.
    assert _value(_metrics(lab, 0), "ott_edge_cmcd_session_requests_total", session="viewer-7") == 0


def test_scaling_the_edge_adds_a_pop_with_its_own_exporter(lab: LocalTarget) -> None:
    with pytest.raises(ConfigError, match="scale edge instead"):
        lab.scale("edge-exporter", 3)
    lab.scale("edge", 3)
    try:
        (status,) = [s for s in lab.status() if s.name == "edge"]
        assert list(status.replica_urls) == ["edge-0", "edge-1", "edge-2"]
        third = httpx.get(signed(lab, "vod-title", "/master.m3u8", pop=2), timeout=10)
        assert (third.status_code, third.headers["x-pop"]) == (200, "edge-2")
        edges = json.loads((lab.cfg.conf_dir / cdn.EDGES_FILE).read_text())
        assert sorted(edges) == ["edge-0", "edge-1", "edge-2"]
        _eventually(lambda: _value(_metrics(lab, 2), "ott_edge_requests_total", pop="edge-2") >= 1)
    finally:
        lab.scale("edge", 2)
    assert [s.replicas for s in lab.status() if s.name in ("edge", "edge-exporter")] == [2, 2]
    with pytest.raises(httpx.ConnectError):
        httpx.get(cdn.EDGE.url(lab.cfg, "http", 2) + "/healthz", timeout=2)
