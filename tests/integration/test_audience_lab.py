"""The viewer simulator against the real platform: gateway, license, edge PoPs, origin and the QoE collector."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from urllib.parse import unquote

import httpx
import pytest
from _labs import running_lab

from labkit.clients import transcoding
from labkit.core.wait import until
from labkit.platform.layers import cdn
from labkit.targets.local.target import LocalTarget
from labkit.traffic import audience
from labkit.traffic.bandwidth import Fixed
from ott import cmcd
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration
TITLE = "sim-clock"
CLIP_S = 8
VIEWERS = 3 if os.environ.get("CI") else 5


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("audience")
    with running_lab(home, 30900, ["apis", "media", "cdn", "player"], seeded=True) as target:
        clip = make_sample(home / "clip.mp4", CLIP_S, width=1280, height=720)
        transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
        yield target


def test_viewers_start_without_stalls_and_the_edge_logs_their_cmcd(lab: LocalTarget) -> None:
    result = audience.run(lab.endpoint("gateway"), TITLE, VIEWERS, 12, arrivals_s=2, pops=["edge-0"], seed=1)
    summary = result.summary()
    assert summary["started"] == VIEWERS and summary["stalls"] == 0, summary
    assert summary["video_start_failures"] == summary["http_errors"] == 0
    assert 0 < summary["startup_p95_s"] < 3
    assert set(result.sessions["exit"]) == {"ended"}          # the 8 s title ends before the run
    assert (result.sessions["played_s"] > CLIP_S - 0.5).all()
    # The edge saw each viewer's session id in the CMCD of its requests.
    sessions = set(result.sessions["session"])

    def logged() -> set[str]:
        lines = lab.access_log("edge-0")
        sids = {cmcd.parse(unquote(line["cmcd"])).sid for line in lines if line.get("cmcd") not in (None, "", "-")}
        return sessions & sids

    until(lambda: logged() == sessions, 15, 0.3,
          lambda: f"every session in edge-0's access log (missing: {sorted(sessions - logged())})")


def test_a_low_limit_keeps_the_lower_rungs_without_stalls(lab: LocalTarget) -> None:
    result = audience.run(lab.endpoint("gateway"), TITLE, 2, 14, arrivals_s=1, bandwidth=Fixed(900), seed=2,
                          beacons=False)
    segments = result.requests[result.requests["kind"] == "segment"]
    top = result.requests["cmcd"].map(lambda c: cmcd.parse(c).tb).max()
    assert len(segments) and segments["bitrate_kbps"].max() < top   # never the 720p rung at 900 kbit/s
    assert result.summary()["stalls"] == 0 and result.summary()["started"] == 2
    # The downloads ran at the limit: a measured throughput close to 900 kbit/s, never far above.
    rates = segments["bytes"] * 8 / 1000 / segments["seconds"]
    assert rates.max() < 900 * 1.15 and rates.median() > 900 * 0.6


def test_a_dead_pop_fails_over(lab: LocalTarget) -> None:
    # A PoP license still lists but nothing answers at (crashed, not yet removed from the edges file).
    edges_file = lab.cfg.conf_dir / cdn.EDGES_FILE
    edges = json.loads(edges_file.read_text())
    dead_port = lab.cfg.base_port + 129
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", dead_port)) != 0
    edges_file.write_text(json.dumps({**edges, "edge-8": f"http://127.0.0.1:{dead_port}"}))
    try:
        result = audience.run(lab.endpoint("gateway"), TITLE, 2, 10, arrivals_s=0, pops=["edge-8"], seed=3,
                              beacons=False)
    finally:
        edges_file.write_text(json.dumps(edges))
    # With every PoP down, each viewer tries them all and fails to start.
    lab.stop("edge")
    try:
        stranded = audience.run(lab.endpoint("gateway"), TITLE, 2, 5, arrivals_s=0, seed=3, beacons=False)
    finally:
        lab.start("edge")
    assert result.sessions["started"].all() and set(result.sessions["pop"]) == {"edge-0"}
    errors = result.events[result.events["type"] == "error"]
    assert set(errors["reason"]) == {"pop_unreachable"} and errors["fatal"].eq(False).all() and len(errors) == 2
    assert set(stranded.sessions["failure"]) == {"pop_unreachable"}
    assert stranded.summary()["video_start_failures"] == 2
    tried = stranded.events[(stranded.events["type"] == "error") & stranded.events["fatal"].eq(False)]
    assert len(tried) == 2 * (len(edges) - 1)   # every PoP of the grant was tried before giving up


def test_an_unknown_title_is_a_video_start_failure(lab: LocalTarget) -> None:
    result = audience.run(lab.endpoint("gateway"), "no-such-title", 2, 3, arrivals_s=0, beacons=False)
    assert set(result.sessions["failure"]) == {"unknown_title"} and result.requests.empty
    assert result.summary()["video_start_failures"] == 2


def test_beacons_reach_the_collector(lab: LocalTarget) -> None:
    result = audience.run(lab.endpoint("gateway"), TITLE, 2, 12, arrivals_s=0, seed=4)
    assert result.beacons_sent >= 2 and result.beacons_failed == 0
    metrics = lab.endpoint("qoe", lab.component("qoe").metrics_port) + "/metrics"

    def counted() -> bool:
        text = httpx.get(metrics, timeout=5).text
        return any(line.startswith("ott_qoe_beacons_total") and 'client="simulator"' in line
                   and float(line.rsplit(" ", 1)[1]) >= result.beacons_sent for line in text.splitlines())

    until(counted, 10, 0.3, f"the collector to count the {result.beacons_sent} simulator beacons")


def test_the_viewers_transport_speaks_http_as_httpx_does() -> None:
    """The aiohttp transport under the viewers against a real server on loopback: bodies, encodings, failures."""
    import gzip

    from aiohttp import web

    seen: list[tuple[str, str, bytes]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.raw_path, await request.read()))
        if request.path == "/slow":
            await asyncio.sleep(1.5)
        if request.path == "/playlist.m3u8":
            return web.Response(body=gzip.compress(b"#EXTM3U\n" * 100), headers={"Content-Encoding": "gzip"})
        return web.Response(body=b"s" * 300_000, status=202 if request.method == "POST" else 200,
                            headers={"X-Cache-Status": "HIT"})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        clients = audience._Clients(0.5, None)
        client = clients.open()
        try:
            base = f"http://127.0.0.1:{port}"
            playlist = await client.get(f"{base}/playlist.m3u8?CMCD=ot%3Dm%2Csid%3D%22a%20b%22")
            assert playlist.status_code == 200 and playlist.text == "#EXTM3U\n" * 100  # httpx decoded the gzip
            async with client.stream("GET", f"{base}/seg.m4s") as segment:
                assert segment.headers["x-cache-status"] == "HIT"
                assert sum([len(chunk) async for chunk in segment.aiter_bytes()]) == 300_000
            posted = await client.post(f"{base}/beacons", content=b'{"v": 1}')
            assert posted.status_code == 202
            assert seen[0][1] == "/playlist.m3u8?CMCD=ot%3Dm%2Csid%3D%22a%20b%22"  # as encoded, not re-quoted
            assert seen[-1] == ("POST", "/beacons", b'{"v": 1}')
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{base}/slow")
            with socket.socket() as unused:
                unused.bind(("127.0.0.1", 0))
                closed = unused.getsockname()[1]
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{closed}/seg.m4s")
        finally:
            await clients.close(client)
            await runner.cleanup()

    asyncio.run(scenario())
