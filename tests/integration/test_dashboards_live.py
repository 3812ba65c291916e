"""No dead panels: after a short audience through the whole local platform, every query of every
panel of every dashboard returns data from the lab's Prometheus, every metric a query names has
series (an ``or`` fallback cannot hide a renamed one), and the renderer draws each dashboard with no
"No data" and no failed panel.

The traffic is what the panels are about: viewers on a published title (one held below the lowest
rung, so it stalls and the rebuffering panels have stalls; one on a stepped trace, so it switches),
an unknown title (video start failures, license denials), a browser's beacons for a playback failure
and an exit before the start (the simulator does not produce those on purpose), and a forged
signed segment URL at every PoP (the signed-URL refusals).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import promql_parser
import pytest
from _labs import running_lab

from labkit import platform
from labkit.analysis import dashboards
from labkit.analysis.dashboards import figure
from labkit.clients import transcoding
from labkit.clients.pops import pop_urls
from labkit.clients.prometheus import Prometheus
from labkit.core.wait import until
from labkit.platform.layers.monitoring import PROMETHEUS
from labkit.platform.layers.player import BEACON_PATH
from labkit.targets.local.target import LocalTarget
from labkit.traffic import audience
from labkit.traffic.bandwidth import Fixed, Trace
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration
TITLE = "dash-clock"
CLIP_S = 16
VIEWERS_S = 24


@dataclass
class Window:
    prometheus: Prometheus
    began: float

    @property
    def minutes(self) -> float:
        """From the traffic's start to now, and a minute more."""
        return min(15.0, (time.time() - self.began) / 60 + 1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("dashboards")
    with running_lab(home, 32300, seeded=True) as target:   # every layer, monitoring included
        clip = make_sample(home / "clip.mp4", CLIP_S, width=1280, height=720)
        transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
        yield target


def browser_beacons(gateway: str) -> None:
    """A browser session that fails after its start (VPF) and one left before its start (EBVS)."""
    started = {"v": 1, "session": uuid.uuid4().hex, "title": TITLE, "pop": "edge-0", "client": "browser", "events": [
        {"type": "play", "t_ms": 0}, {"type": "start", "t_ms": 900, "startup_ms": 900, "bitrate_kbps": 400},
        {"type": "progress", "t_ms": 4900, "played_ms": 4000, "bitrate_kbps": 400, "dropped_frames": 0},
        {"type": "error", "t_ms": 5000, "reason": "media_error", "fatal": True, "started": True},
        {"type": "end", "t_ms": 5000, "reason": "error", "started": True, "played_ms": 4000, "stalled_ms": 0}]}
    left = {"v": 1, "session": uuid.uuid4().hex, "title": TITLE, "pop": "edge-0", "client": "browser", "events": [
        {"type": "play", "t_ms": 0},
        {"type": "end", "t_ms": 700, "reason": "exit", "started": False, "played_ms": 0, "stalled_ms": 0}]}
    for body in (started, left):
        answer = httpx.post(gateway + BEACON_PATH, json=body, timeout=10)
        assert answer.status_code in (200, 202, 204), answer.text


@pytest.fixture(scope="module")
def window(lab: LocalTarget) -> Window:
    began = time.time()
    gateway = lab.endpoint("gateway")
    watched = audience.run(gateway, TITLE, 4, VIEWERS_S, arrivals_s=2, seed=7,
                           bandwidth=[None, None, Fixed(250), Trace.named("stairs")])
    summary = watched.summary()
    assert summary["started"] >= 3 and summary["stalls"] >= 1, summary
    failed = audience.run(gateway, "no-such-title", 1, 3, arrivals_s=0)
    assert failed.summary()["video_start_failures"] == 1
    browser_beacons(gateway)
    for url in pop_urls(lab).values():
        forged = f"/s/{'A' * 22}/{int(time.time()) + 600}/{TITLE}/360p/seg_00001.m4s"   # a token nobody signed
        refused = httpx.get(url + forged, timeout=10)
        assert refused.status_code in (403, 410), (url, refused.status_code)
    prometheus = Prometheus(lab.endpoint(PROMETHEUS.name))
    jobs = platform.scrape_jobs()
    prometheus.wait_for_scrape_after("up", time.time(), by="job", groups=jobs, timeout=60)
    # One more scrape interval: a rate needs two samples after the last event.
    prometheus.wait_for_scrape_after("up", time.time(), by="job", groups=jobs, timeout=60)
    return Window(prometheus, began)


@pytest.mark.parametrize("name", dashboards.names())
def test_every_query_of_every_panel_returns_data(window: Window, name: str) -> None:
    model = dashboards.load(name)
    dead: list[str] = []

    def alive() -> bool:
        nonlocal dead
        dead = figure.dead_queries(model, window.prometheus, minutes=window.minutes)
        return not dead

    # A counter born with its first event needs a second scrape before rate() has a point: a few
    # scrape intervals, then a panel still empty is dead.
    until(alive, 30, 2, lambda: f"every panel of {name} to show data; dead:\n" + "\n".join(dead))


def missing_metrics(model: dict[str, Any], prometheus: Prometheus) -> set[str]:
    """The metrics the queries of ``model`` name that have no series in Prometheus now."""
    metrics: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            metrics.add(node.name)

    values = figure.values_of(model)
    for _title, expr in dashboards.queries(model):
        promql_parser.walk(promql_parser.parse(figure.expand(expr, values, "20s")), collect)
    # An instant query: the series scraped within Prometheus' lookback (5 minutes), i.e. exposed now.
    found = prometheus.query(f'group by (__name__) ({{__name__=~"{"|".join(sorted(metrics))}"}})')
    return metrics - (set(found["__name__"]) if not found.empty else set())


@pytest.mark.parametrize("name", dashboards.names())
def test_every_metric_a_query_names_has_series(window: Window, name: str) -> None:
    missing = missing_metrics(dashboards.load(name), window.prometheus)
    assert not missing, f"{name}: no series of {sorted(missing)}"


@pytest.mark.parametrize("name", dashboards.names())
def test_the_renderer_draws_every_panel_with_data(window: Window, name: str) -> None:
    model = dashboards.load(name)
    fig = dashboards.render(model, window.prometheus, minutes=window.minutes)
    empty = [ax.get_title(loc="left") for ax in fig.axes
             if any(t.get_text() == "No data" or t.get_text().startswith("query failed") for t in ax.texts)]
    assert not empty, f"{name}: panels drawn without data: {empty}"
    drawn = [ax for ax in fig.axes if ax.lines or ax.collections or ax.texts]
    assert len(drawn) == len([p for p in model["panels"] if p["type"] != "row"])


def test_a_renamed_metric_fails(window: Window) -> None:
    model = dashboards.load("delivery")
    renamed = json.loads(json.dumps(model).replace("ott_edge_requests_total", "ott_edge_request_total"))
    dead = {line.split(":", 1)[0] for line in figure.dead_queries(renamed, window.prometheus, minutes=window.minutes)}
    uses = {title for title, expr in dashboards.queries(model) if "ott_edge_requests_total" in expr}
    # Its panels go dead, but for a count with a fallback (`or vector(0)`): the metric check sees that one.
    fallback = {title for title, expr in dashboards.queries(model)
                if "ott_edge_requests_total" in expr and expr.endswith("or vector(0)")}
    assert fallback and dead == uses - fallback
    assert missing_metrics(renamed, window.prometheus) == {"ott_edge_request_total"}
