"""Circuit breaking and outlier detection on the local mesh (OTTLAB_MESH=strict), read from Envoy's stats.

The caller is the gateway's sidecar (its cluster of cas), the requests a viewer's ``GET
/api/cas/sessions`` through the gateway:

- a DestinationRule with a tiny connection pool (Istio's "Circuit breaking" task: one connection,
  one pending request, one request per connection) makes a burst overflow: Envoy answers 503 itself,
  never retries it, and counts each in ``upstream_rq_pending_overflow``; the committed pool takes
  the same burst;
- with three replicas of cas and one whose app stopped (its sidecar keeps running and answers 503),
  the gateway's sidecar ejects that replica after ``consecutive5xxErrors`` (the committed 5): the
  viewer sees no error (the VirtualService's retries go to another replica), the retry counter and
  the host's ``rq_error`` in ``/clusters`` see each one; ejected, it gets no more requests; back, it
  returns after the (shortened) ``baseEjectionTime``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _labs import running_lab
from _sessions import signed_in

from labkit.clients.api import OttClient
from labkit.clients.sidecar import Sidecar
from labkit.core.wait import until
from labkit.platform.mesh import envoy
from labkit.platform.mesh.resources import Mesh
from labkit.targets.local.target import LocalTarget
from labkit.traffic.herd import herd

pytestmark = pytest.mark.integration
# Below the ephemeral range and clear of the other labs' ports (the mesh's sidecars reach about +760).
BASE_PORT = 17000
CAS = envoy.cluster_name("cas", 8000)
BURST = 40
EJECTION_S = 2.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("mesh-resilience"), BASE_PORT, ["apis"], seeded=True,
                     mesh="strict") as target:
        yield target


@pytest.fixture(scope="module")
def alice(lab: LocalTarget) -> Iterator[OttClient]:
    with signed_in(lab.endpoint("gateway")) as client:
        yield client


def cas_rule(mesh: Mesh) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in mesh.of_kind("DestinationRule") if r["metadata"]["name"] == "cas"))


def sessions(alice: OttClient, count: int) -> list[int]:
    """``count`` of alice's GET /api/cas/sessions through the gateway, one after another: their statuses."""
    headers = {"Authorization": f"Bearer {alice.access_token}"}
    return [alice.http.get("/api/cas/sessions", headers=headers).status_code for _ in range(count)]


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: value - before[name] for name, value in after.items()}


def test_a_tiny_connection_pool_overflows_into_503s_counted_and_never_retried(lab: LocalTarget,
                                                                               alice: OttClient) -> None:
    defaults = lab.mesh()
    gateway = Sidecar(lab.mesh_sidecar("gateway"))
    tiny = cas_rule(defaults)
    tiny["spec"]["trafficPolicy"]["connectionPool"] = {
        "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1}}
    url, headers = lab.endpoint("gateway") + "/api/cas/sessions", {"Authorization": f"Bearer {alice.access_token}"}
    names = ["upstream_rq_total", "upstream_rq_pending_overflow", "upstream_rq_retry"]
    lab.apply_mesh(defaults.replaced(tiny))
    try:
        before = gateway.cluster_counters(CAS, names)
        burst = herd(url, clients=BURST, timeout=20, headers=headers)
        tripped = delta(gateway.cluster_counters(CAS, names), before)
    finally:
        lab.apply_mesh(defaults)
    before = gateway.cluster_counters(CAS, names)
    calm = herd(url, clients=BURST, timeout=20, headers=headers)
    untouched = delta(gateway.cluster_counters(CAS, names), before)

    refused = burst.statuses.count(503)
    assert set(burst.statuses) == {200, 503}, burst.frame()
    # Each 503 is one overflow of the pool, answered by the gateway's sidecar without calling cas.
    assert refused == tripped["upstream_rq_pending_overflow"] >= BURST // 8, (burst.statuses, tripped)
    assert tripped["upstream_rq_total"] == BURST - refused and tripped["upstream_rq_retry"] == 0, tripped
    assert calm.statuses == [200] * BURST, calm.frame()
    assert untouched == {"upstream_rq_total": BURST, "upstream_rq_pending_overflow": 0, "upstream_rq_retry": 0}
    assert lab.mesh() == defaults


def test_a_replica_whose_app_stopped_is_ejected_then_returns_after_the_ejection_time(lab: LocalTarget,
                                                                                     alice: OttClient) -> None:
    defaults = lab.mesh()
    gateway = Sidecar(lab.mesh_sidecar("gateway"))
    consecutive = cas_rule(defaults)["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"]
    quick = cas_rule(defaults)
    quick["spec"]["trafficPolicy"]["outlierDetection"] |= {"interval": "1s", "baseEjectionTime": f"{EJECTION_S:g}s"}
    names = ["upstream_rq_5xx", "upstream_rq_retry", "outlier_detection.ejections_enforced_consecutive_5xx"]
    bad = f"127.0.0.1:{lab.component('cas').local_port(lab.cfg, 'http', 1)}"
    lab.scale("cas", 3)
    try:
        until(lambda: len(gateway.hosts(CAS)) == 3, 30, 0.2, "the gateway's sidecar to route to cas's 3 replicas")
        lab.apply_mesh(defaults.replaced(quick))
        lab.stop_replica("cas", 1)
        # Its app is stopped, its sidecar still runs (and answers 503 for it).
        assert httpx.get(lab.mesh_sidecar("cas", 1) + "/ready", timeout=5).status_code == 200
        before, started = gateway.cluster_counters(CAS, names), time.monotonic()
        failing = sessions(alice, 30)
        during = delta(gateway.cluster_counters(CAS, names), before)
        hosts = {h.address: h for h in gateway.hosts(CAS)}

        assert failing == [200] * 30                  # the retries hide every failure from the viewer
        assert [a for a, h in hosts.items() if h.ejected] == [bad], hosts
        assert hosts[bad].errors == hosts[bad].requests == consecutive, hosts[bad]
        # Each of its 503s was retried on another replica; the cluster's 5xx counts only final answers.
        assert during == {"upstream_rq_5xx": 0, "upstream_rq_retry": consecutive,
                          "outlier_detection.ejections_enforced_consecutive_5xx": 1}, during
        assert gateway.cluster_counters(CAS, ["outlier_detection.ejections_active"]) == {
            "outlier_detection.ejections_active": 1}

        before = gateway.cluster_counters(CAS, names)
        ejected = sessions(alice, 12)
        assert ejected == [200] * 12 and delta(gateway.cluster_counters(CAS, names), before)["upstream_rq_retry"] == 0
        assert {h.address: h.requests for h in gateway.hosts(CAS)}[bad] == consecutive   # no request reached it

        lab.start("cas")
        until(lambda: not any(h.ejected for h in gateway.hosts(CAS)), EJECTION_S + 20, 0.1,
              "the ejected replica to return")
        assert time.monotonic() - started >= EJECTION_S
        back = sessions(alice, 12)
        returned = {h.address: h for h in gateway.hosts(CAS)}[bad]
        assert back == [200] * 12 and returned.successes >= 2 and returned.errors == consecutive, returned
        assert gateway.cluster_counters(CAS, ["outlier_detection.ejections_active"]) == {
            "outlier_detection.ejections_active": 0}
    finally:
        lab.start("cas")
        lab.apply_mesh(defaults)
        lab.scale("cas", 1)
    assert lab.mesh() == defaults and all(s.healthy for s in lab.status() if s.name in {"cas", "cas-proxy"})
