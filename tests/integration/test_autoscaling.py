"""The local autoscaler on a real lab: load on catalog raises its replicas, and they fall once it stops.

The lab's own HPA objects (k8s/base/autoscaling/apis.yaml): catalog on CPU (80% of its 50m request)
and on requests per second per replica (50, the prometheus-adapter rule's query on the local
Prometheus). The sync period is 2 s instead of 15 and the scale-down window 5 s instead of 300, so
the test is short; the policies (one replica per 15 s up, per 60 s down) are the objects' own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from _labs import running_lab

from labkit.clients.prometheus import Prometheus
from labkit.core.errors import ConfigError
from labkit.core.wait import until
from labkit.platform import hpa
from labkit.targets.local import autoscaling
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration

BASE_PORT = 31300
SCALE_DOWN_WINDOW = 5.0
# Load is bounded: at most this long, at most this many requests.
LOAD_SECONDS = 60.0
LOAD_REQUESTS = 20000


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("autoscaling"), BASE_PORT, ["monitoring", "apis"]) as target:
        yield target


def _gateway_workers(target: LocalTarget) -> set[int]:
    master = int(str(target.supervisor.all_info()["gateway"]["pid"]))
    return {p.pid for p in psutil.Process(master).children()}


def _replicas(target: LocalTarget) -> int:
    return target.replicas("catalog")


def test_an_unknown_metric_is_refused_before_the_autoscaler_starts(lab: LocalTarget, tmp_path: Path) -> None:
    hpas = lab.autoscalers()
    prometheus = Prometheus(lab.endpoint("prometheus"))
    renamed = tmp_path / "hpas"
    renamed.mkdir()
    text = (Path(__file__).resolve().parents[2] / "k8s/base/autoscaling/apis.yaml").read_text()
    (renamed / "apis.yaml").write_text(text.replace("ott_http_requests_per_second", "ott_http_requests_per_week"))
    with pytest.raises(ConfigError, match="no prometheus-adapter rule defines the metric 'ott_http_requests_per_week'"):
        autoscaling.check(lab, lab.autoscalers(renamed), prometheus, timeout=1)
    # A rule whose series no target exposes: Prometheus does not have it.
    rule = hpa.adapter_rules()["ott_http_requests_per_second"]
    absent = {rule.metric: replace(rule, series="ott_http_requests_never_total")}
    with pytest.raises(ConfigError, match="has no metric 'ott_http_requests_never_total'"):
        autoscaling.check(lab, hpas, prometheus, timeout=2, rules=absent)
    # The shipped objects pass, and nothing was started.
    autoscaling.check(lab, hpas, prometheus)
    assert not any(s.active for s in lab.autoscale_status())


def test_load_raises_catalog_replicas_and_they_fall_after_the_window(lab: LocalTarget) -> None:
    statuses = lab.autoscale(True, scale_down_window=SCALE_DOWN_WINDOW, period=2.0)
    assert {s.target for s in statuses} == {"auth", "catalog", "subscription", "license", "cas"}
    assert all(s.active for s in statuses)
    assert _replicas(lab) == 1
    gateway = lab.endpoint("gateway")
    workers = _gateway_workers(lab)
    seen = [1]
    sent = 0
    started = time.monotonic()
    with httpx.Client(base_url=gateway, timeout=5) as client:
        while time.monotonic() - started < LOAD_SECONDS and sent < LOAD_REQUESTS and max(seen) < 3:
            for _ in range(50):
                client.get("/api/catalog/titles").raise_for_status()
            sent += 50
            seen.append(_replicas(lab))
    peak = max(seen)
    print(f"load: {sent} requests in {time.monotonic() - started:.1f} s; catalog replicas seen: {sorted(set(seen))}")
    assert peak >= 2, f"catalog stayed at {peak} replica under {sent} requests"
    status = next(s for s in lab.autoscale_status() if s.target == "catalog")
    ups = [d for d in status.decisions if (d["desired"] or 0) > (d["current"] or 0)]
    assert ups and "above target" in ups[0]["message"], status.decisions
    # With the mesh the gateway's upstream is its sidecar whatever catalog runs: its nginx is not reloaded
    # (a reload closes the clients' kept-alive connections; one sending a request then gets no answer).
    # Without the mesh its upstreams are catalog's replicas: reloaded with them.
    assert (_gateway_workers(lab) == workers) is (lab.cfg.mesh != "off")
    # Idle now: the request rate falls out of the adapter rule's 1-minute window, then after the
    # shortened stabilization window the replicas go (one per 60 s, the object's scaleDown policy).
    def scaled_down() -> list[dict[str, Any]]:
        status = next(s for s in lab.autoscale_status() if s.target == "catalog")
        return [d for d in status.decisions if (d["desired"] or 0) < (d["current"] or 0)]

    downs = until(scaled_down, 180, 1.0, "catalog's autoscaler to scale it down once idle")
    until(lambda: _replicas(lab) < peak, 30, 0.5, "catalog's replicas to fall")
    print(f"catalog fell from {peak} to {_replicas(lab)} replicas: {downs[0]}")
    assert downs[0]["message"].startswith("All metrics below target"), downs
    assert downs[0]["at"] - ups[0]["at"] >= SCALE_DOWN_WINDOW
    lab.autoscale(False)
    assert not any(s.active for s in lab.autoscale_status())
