"""No dead panels: after a short audience through the whole local platform, every query of every
panel of every dashboard returns data from the lab's Prometheus, every metric a query names has
series (an ``or`` fallback cannot hide a renamed one), and the renderer draws each dashboard with no
"No data" and no failed panel.

The traffic is what the panels are about: viewers on a published title (one held below the lowest
rung, so it stalls and the rebuffering panels have stalls; one on a stepped trace, so it switches),
an unknown title (video start failures, license denials), a browser's beacons for a playback failure
and an exit before the start (the simulator does not produce those on purpose), and a forged
signed segment URL at every PoP (the signed-URL refusals).

The lab runs with the service mesh on (``mesh="strict"``, whatever OTTLAB_MESH says): the Platform
dashboard's mesh panels read the Envoy sidecars' counters (job ``envoy-stats``), which a lab without
the mesh does not have, and every panel must show data. Retries, timeouts, ejections and overflows
are zero in this traffic: their panels show zero rates of counters that exist, which is data; a
renamed Envoy metric has no series and fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser
import pytest
from _labs import running_lab

from labkit import platform
from labkit.analysis import dashboards
from labkit.analysis.dashboards import figure
from labkit.clients import transcoding
from labkit.clients.prometheus import Prometheus
from labkit.platform.layers.monitoring import PROMETHEUS
from labkit.targets.local.target import LocalTarget
from labkit.traffic import showcase
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
    # Every layer, monitoring included, and the mesh: the Platform dashboard's mesh panels need its sidecars.
    # Its sidecars' ports reach base + 750: the base keeps them below the ephemeral range (32768-60999).
    with running_lab(home, 21400, seeded=True, mesh="strict") as target:
        clip = make_sample(home / "clip.mp4", CLIP_S, width=1280, height=720)
        transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
        yield target


@pytest.fixture(scope="module")
def window(lab: LocalTarget) -> Window:
    began = time.time()
    # The traffic every panel is about (labkit.traffic.showcase): a stalling viewer, a switching one,
    # an unknown title, a browser's failure and exit, a forged URL at every PoP.
    shown = showcase.run(lab, TITLE, viewers=4, seconds=VIEWERS_S)
    summary = shown.audience.summary()
    assert summary["started"] >= 3 and summary["stalls"] >= 1, summary
    assert shown.failed.summary()["video_start_failures"] == 1
    assert shown.refusals and set(shown.refusals.values()) <= {403, 410}, shown.refusals
    prometheus = Prometheus(lab.endpoint(PROMETHEUS.name))
    jobs = platform.scrape_jobs()
    prometheus.wait_for_scrape_after("up", time.time(), by="job", groups=jobs, timeout=60)
    # One more scrape interval: a rate needs two samples after the last event.
    prometheus.wait_for_scrape_after("up", time.time(), by="job", groups=jobs, timeout=60)
    return Window(prometheus, began)


@pytest.mark.parametrize("name", dashboards.names())
def test_every_query_of_every_panel_returns_data(window: Window, name: str) -> None:
    # A counter born with its first event needs a second scrape before rate() has a point: a few
    # scrape intervals, then a panel still empty is dead.
    figure.wait_for_data(dashboards.load(name), window.prometheus, minutes=window.minutes, timeout=30)


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
    empty = figure.empty_panels(fig)
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


def test_the_mesh_panels_read_the_sidecars_of_the_plays(window: Window) -> None:
    # The viewers' plays went through the gateway's sidecar to license's: its destination cluster counted them.
    license_cluster = "outbound|8000||license.ottlab.svc.cluster.local"
    sent = window.prometheus.scalar(
        f'sum(increase(envoy_cluster_upstream_rq_total{{job="envoy-stats", cluster_name="{license_cluster}"}}'
        f'[{max(1, round(window.minutes))}m]))')
    assert sent > 0
    # A renamed Envoy counter (retries are zero here, yet the series exists) is caught.
    model = dashboards.load("platform")
    retries = "envoy_cluster_upstream_rq_retry"
    renamed = json.loads(json.dumps(model).replace(retries, retries + "_count"))
    assert missing_metrics(renamed, window.prometheus) == {retries + "_count"}
