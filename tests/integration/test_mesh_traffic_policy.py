"""Timeouts and retries of the mesh on a real lab (OTTLAB_MESH=strict), measured in Envoy's counters.

- a fault of one replica (:meth:`Target.inject_replica_fault`) is in that replica's sidecar only; the
  callers' retries hide it, and with no retries each of its aborts reaches the caller;
- a chain whose caller gives up before its callee (the timeout budget broken): the viewer has the
  gateway's 504 while cas still opens the session; shrunk toward the leaf, license answers in time
  and cas's app never gets the request nobody waits for.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import pytest
from _labs import running_lab
from _sessions import signed_in

from labkit.clients.api import OttClient, play_starts
from labkit.clients.sidecar import Sidecar
from labkit.core.errors import ConfigError
from labkit.core.wait import until
from labkit.platform.mesh import budget, resources
from labkit.platform.mesh.faults import Fault, ReplicaFault
from labkit.platform.mesh.resources import Mesh
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
TITLE = "city-timelapse"
CAS = "cluster.outbound|8000||cas.ottlab.svc.cluster.local"
LICENSE = "cluster.outbound|8000||license.ottlab.svc.cluster.local"
ABORTS = "fault.aborts_injected"               # at a replica's sidecar, inbound


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("mesh-policy"), 25200, ["apis"], seeded=True,
                     mesh="strict") as target:
        yield target


def without_outlier_detection(mesh: Mesh, service: str) -> Mesh:
    """Outlier detection would eject the flaky replica: off, to see the retries alone."""
    rule = copy.deepcopy(next(r for r in mesh.of_kind("DestinationRule") if r["spec"]["host"] == service))
    del rule["spec"]["trafficPolicy"]["outlierDetection"]
    return mesh.replaced(rule)


def settled(viewer: OttClient, cas: Sidecar) -> None:
    """One play start after a change (it may ride a kept-alive connection of a replaced listener, under the
    previous routes), then no request left at cas's sidecar."""
    play_starts(viewer, TITLE, 1)
    until(lambda: cas.inbound_counter("downstream_rq_active") == 0, 15, 0.1, "cas's requests to end")


def drained(*proxies: Sidecar) -> None:
    """Wait until the listeners an apply replaced are gone, with their kept-alive connections (which would
    carry one more request under the previous routes)."""
    until(lambda: all(p.counter("listener_manager.total_listeners_draining") == 0 for p in proxies), 15, 0.1,
          "the replaced listeners to drain")


def sidecars(lab: LocalTarget, service: str) -> list[Sidecar]:
    return [Sidecar(lab.mesh_sidecar(service, r)) for r in range(lab.replicas(service))]


def test_a_flaky_replica_is_hidden_by_retries_and_reaches_the_caller_without_them(lab: LocalTarget) -> None:
    committed = lab.mesh()
    url = lab.component("license").url(lab.cfg, "out-cas") + "/sessions"    # license's own calls to cas
    flaky = ReplicaFault(Fault("cas", abort_status=503, percent=100), 1, "POST")
    with pytest.raises(ConfigError, match="runs 1 replica"):
        lab.inject_replica_fault(flaky)
    lab.scale("cas", 3)
    try:
        lab.apply_mesh(without_outlier_detection(committed, "cas"))
        lab.inject_replica_fault(flaky)
        assert lab.replica_faults() == [flaky]
        cas, license_ = sidecars(lab, "cas"), Sidecar(lab.mesh_sidecar("license"))
        drained(license_)

        def counts() -> tuple[int, int, int, int]:
            return (cas[1].inbound_counter(ABORTS), license_.counter(f"{CAS}.upstream_rq_retry"),
                    license_.counter(f"{CAS}.upstream_rq_retry_success"),
                    cas[0].inbound_counter(ABORTS) + cas[2].inbound_counter(ABORTS))

        before = counts()
        answers = [httpx.post(url, json={}, timeout=10).status_code for _ in range(12)]
        aborts, retries, recovered, elsewhere = (a - b for a, b in zip(counts(), before, strict=True))
        # Every answer came from cas's app (no token: 401), each abort of replica 1 retried elsewhere.
        assert all(a < 500 for a in answers), answers
        assert aborts >= 2 and retries == recovered == aborts and elsewhere == 0, (aborts, retries, recovered)

        lab.apply_mesh(budget.bounded(lab.mesh(), "cas", timeout_s=10))   # no retries
        drained(license_)
        before = counts()
        answers = [httpx.post(url, json={}, timeout=10).status_code for _ in range(12)]
        aborts, retries, _, _ = (a - b for a, b in zip(counts(), before, strict=True))
        assert answers.count(503) == aborts >= 2 and retries == 0, (answers, aborts)
        assert lab.clear_replica_faults("cas") == [flaky] and lab.replica_faults() == []
    finally:
        lab.clear_replica_faults()
        lab.apply_mesh(committed)
        lab.scale("cas", 1)
    assert lab.replica_faults() == [] and lab.mesh() == committed


def test_a_caller_giving_up_first_leaves_its_callee_working_until_the_chain_shrinks_toward_the_leaf(
        lab: LocalTarget) -> None:
    committed = lab.mesh()
    assert budget.violations(committed) == []
    budget_s, slow_s = 1.0, 1.5
    # The gateway gives license 1 s; license gives cas 10 s; cas takes 1.5 s to open a session.
    broken = budget.bounded(budget.bounded(committed, "license", timeout_s=budget_s), "cas", timeout_s=10)
    (problem,) = budget.violations(broken)
    assert problem.startswith("gateway → license: gateway gives up after 1 s, but license may wait 16 s")
    fixed = broken
    for service, share in {"catalog": 8, "subscription": 4, "cas": 4}.items():
        fixed = budget.bounded(fixed, service, timeout_s=budget_s / share)
    assert budget.violations(fixed) == []
    gateway, license_, cas = (Sidecar(lab.mesh_sidecar(s)) for s in ("gateway", "license", "cas"))
    app = "cluster.inbound|8000||.upstream_rq_total"
    try:
        lab.inject_replica_fault(ReplicaFault(Fault("cas", delay_s=slow_s), 0, "POST"))
        with signed_in(lab.endpoint("gateway")) as alice:
            lab.apply_mesh(broken)
            settled(alice, cas)
            before = (gateway.counter(f"{LICENSE}.upstream_rq_timeout"), license_.counter(f"{CAS}.upstream_rq_2xx"),
                      cas.counter(app))
            (cut,) = play_starts(alice, TITLE, 1)
            assert cut.status == 504 and budget_s <= cut.seconds < slow_s, cut
            assert gateway.counter(f"{LICENSE}.upstream_rq_timeout") == before[0] + 1
            # Nobody waits any more, but license's call goes on: cas opens the session, license gets it.
            until(lambda: license_.counter(f"{CAS}.upstream_rq_2xx") == before[1] + 1, 10, 0.1,
                  "license's call to cas to complete after the viewer's timeout")
            assert cas.counter(app) == before[2] + 1

            lab.apply_mesh(fixed)
            settled(alice, cas)
            after = (gateway.counter(f"{LICENSE}.upstream_rq_timeout"), license_.counter(f"{CAS}.upstream_rq_timeout"),
                     cas.counter(app))
            (told,) = play_starts(alice, TITLE, 1)
            # License answers within the gateway's budget, saying which dependency failed.
            assert told.status == 502 and told.seconds < budget_s and "cas" in (told.reason or ""), told
            assert gateway.counter(f"{LICENSE}.upstream_rq_timeout") == after[0]
            assert license_.counter(f"{CAS}.upstream_rq_timeout") == after[1] + 1
            # License's sidecar hung up on cas's while the request was still delayed: cas's app never had it.
            until(lambda: cas.inbound_counter("downstream_rq_active") == 0, 15, 0.1, "cas's requests to end")
            assert cas.counter(app) == after[2]
    finally:
        lab.clear_replica_faults()
        lab.apply_mesh(committed)
    assert lab.replica_faults() == [] and lab.mesh() == committed == resources.load()
