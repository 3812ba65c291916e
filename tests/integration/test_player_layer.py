"""The player layer on loopback: the real gateway in front of the player's nginx and the QoE collector.

Everything a viewer's browser asks goes through the gateway, its single origin: the page and
hls.js under ``/player/``, the beacons to ``/api/qoe/beacons``. Prometheus scrapes the collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _labs import running_lab

from labkit.clients import pops
from labkit.clients.prometheus import Prometheus
from labkit.platform.layers import player
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
BASE_PORT = 30500
LAYERS = ["monitoring", "apis", "player"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("player"), BASE_PORT, LAYERS) as target:
        yield target


@pytest.fixture(scope="module")
def gateway(lab: LocalTarget) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lab.endpoint("gateway"), timeout=10) as client:
        yield client


def beacon(*events: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"v": 1, "session": uuid.uuid4().hex, "title": "layer-test", "pop": "edge-0", "client": "browser",
            "events": list(events), **fields}


def metric(lab: LocalTarget, line_start: str) -> float:
    """The value of the collector's sample whose exposition line starts with ``line_start`` (0 if none)."""
    text = httpx.get(lab.endpoint("qoe", lab.component("qoe").metrics_port) + "/metrics", timeout=5).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")]
    return values[0] if values else 0.0


def test_ottlab_status_lists_the_layers_components_healthy(lab: LocalTarget) -> None:
    env = {**os.environ, "OTTLAB_HOME": str(lab.cfg.home), "OTTLAB_BASE_PORT": str(BASE_PORT)}
    out = subprocess.run([sys.executable, "-m", "labkit.cli", "status", "--json"], env=env, check=True,
                         timeout=60, capture_output=True, text=True).stdout
    components = {c["name"]: c for c in json.loads(out)["components"]}
    for component in player.LAYER.components:
        status = components[component.name]
        assert status["layer"] == "player"
        assert status["healthy"] is True, status
        assert status["urls"]["http"] == component.url(lab.cfg)


def test_hls_js_is_served_through_the_gateway_as_javascript(gateway: httpx.Client) -> None:
    answer = gateway.get(player.VENDOR_PATH)
    assert answer.status_code == 200
    assert answer.headers["content-type"].split(";")[0] == "application/javascript"
    assert answer.headers["cache-control"] == f"public, max-age={player.VENDOR_MAX_AGE_S}"
    assert answer.content == player.hls_js().read_bytes()
    head = gateway.head(player.VENDOR_PATH)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(answer.content)


def test_the_page_is_served_and_revalidated_at_every_load(gateway: httpx.Client) -> None:
    index = player.www_dir() / "index.html"
    answer = gateway.get("/player/?title=layer-test&pop=edge-0")
    assert answer.status_code == 200
    assert answer.headers["content-type"].split(";")[0] == "text/html"
    assert answer.headers["cache-control"] == player.PAGE_CACHE_CONTROL
    assert answer.content == index.read_bytes()
    # Without its slash: redirected to the page, relative (right behind any port or proxy).
    bare = gateway.get("/player", follow_redirects=False)
    assert (bare.status_code, bare.headers["location"]) == (301, "/player/")


@pytest.mark.parametrize("path", ["/player/no-such-file.js", "/player/.hidden.js", "/player/vendor/hls.js",
                                  "/player/%2e%2e/package.json", "/player/../package.json"])
def test_nothing_else_is_served(gateway: httpx.Client, path: str) -> None:
    assert gateway.get(path).status_code == 404


def test_the_page_is_read_only(gateway: httpx.Client) -> None:
    answer = gateway.post("/player/", content=b"x")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"


def test_the_gateways_404_names_the_player(gateway: httpx.Client) -> None:
    message = gateway.get("/nowhere").json()["error"]["message"]
    assert "/player/" in message and "qoe" in message


def test_a_beacon_through_the_gateway_moves_the_collectors_metrics(lab: LocalTarget, gateway: httpx.Client) -> None:
    series = '{client="browser",pop="edge-0",title="layer-test"}'
    failures = '{client="browser",pop="edge-0",reason="segment_not_found",title="layer-test"}'
    plays_before = metric(lab, f"ott_qoe_plays_total{series}")
    playback_before = metric(lab, f"ott_qoe_playback_failures_total{failures}")
    start_before = metric(lab, f"ott_qoe_start_failures_total{failures}")
    report = beacon({"type": "play", "t_ms": 0},
                    {"type": "start", "t_ms": 640, "startup_ms": 640, "bitrate_kbps": 1500},
                    {"type": "error", "t_ms": 9000, "reason": "segment_not_found", "fatal": True, "started": True})
    # As navigator.sendBeacon posts a string: text/plain.
    answer = gateway.post("/api/qoe/beacons", content=json.dumps(report),
                          headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert answer.status_code == 202 and answer.json() == {"accepted": 3}
    assert metric(lab, f"ott_qoe_plays_total{series}") == plays_before + 1
    assert metric(lab, f"ott_qoe_startup_seconds_count{series}") >= 1
    assert metric(lab, f"ott_qoe_playback_failures_total{failures}") == playback_before + 1
    assert metric(lab, f"ott_qoe_start_failures_total{failures}") == start_before


def test_a_bad_beacon_through_the_gateway_is_refused_and_counted(lab: LocalTarget, gateway: httpx.Client) -> None:
    rejected = 'ott_qoe_beacons_rejected_total{reason="invalid"}'
    before = metric(lab, rejected)
    plays = '{client="browser",pop="edge-0",title="layer-test"}'
    plays_before = metric(lab, f"ott_qoe_plays_total{plays}")
    answer = gateway.post("/api/qoe/beacons", json=beacon({"type": "play", "t_ms": 0}, pop="paris"))
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_beacon" and [d["where"] for d in error["details"]] == ["pop"]
    # An error event must say whether its session had started.
    answer = gateway.post("/api/qoe/beacons", json=beacon({"type": "play", "t_ms": 0},
                                                          {"type": "error", "t_ms": 5, "reason": "other",
                                                           "fatal": True}))
    assert answer.status_code == 422
    assert [d["where"] for d in answer.json()["error"]["details"]] == ["events.1.error.started"]
    assert metric(lab, rejected) == before + 2
    assert metric(lab, f"ott_qoe_plays_total{plays}") == plays_before


def test_prometheus_scrapes_the_collector(lab: LocalTarget, gateway: httpx.Client) -> None:
    prom = Prometheus(lab.endpoint("prometheus"))
    prom.wait_for_targets(["qoe"], timeout=30)
    report = beacon({"type": "play", "t_ms": 0}, title="scraped-title", client="simulator")
    assert gateway.post("/api/qoe/beacons", json=report).status_code == 202
    values = pops.wait_for_values(prom, 'sum by (title)(ott_qoe_plays_total{job="qoe",layer="player"})', by="title",
                                 at_least={"scraped-title": 1}, timeout=30)
    assert values["scraped-title"] == 1
