"""Target.set_pop_capacity on kube, against the fake API server (kmock): what it asks of the cluster.

The edge StatefulSet as the kind overlay renders it is stored on the fake; ``set_pop_capacity``
patches its pod template's environment (a strategic merge patch, as ``kubectl set env`` makes),
waits for the StatefulSet's rollout (bounded) and reads the capacity back. What a pod does with
the setting (its start script writes the limit_req lines nginx includes) is checked on nginx
itself in test_cdn_manifests.py; a real cluster rolling real PoPs is not part of this test.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_kube_target import STATEFULSETS, FakeCluster, header, settle_deployments

from labkit.core.errors import ConfigError, NotRunningError, TimeoutExpired
from labkit.platform.layers import cdn
from labkit.targets.kube import manifest
from labkit.targets.kube.target import KubeTarget


def _rendered_edge() -> dict[str, Any]:
    (edge,) = [o for o in manifest.render(manifest.overlay_dir("kind"))
               if o["kind"] == "StatefulSet" and manifest.name(o) == cdn.EDGE.name]
    return copy.deepcopy(edge)


def _containers(fake: FakeCluster) -> dict[str, dict[str, Any]]:
    stored = fake.stored(STATEFULSETS, cdn.EDGE.name)
    assert stored is not None
    return {c["name"]: c for c in stored["spec"]["template"]["spec"]["containers"]}


def test_set_pop_capacity_sets_the_edges_environment_and_waits_for_its_pops(
        fake: FakeCluster, target: KubeTarget) -> None:
    declared = _rendered_edge()
    fake.put(STATEFULSETS, cdn.EDGE.name, declared)
    settle_deployments(fake)

    assert target.set_pop_capacity(cdn.POP_CAPACITY_RPS) == cdn.POP_CAPACITY_RPS

    (patch,) = fake.requests("PATCH")
    assert patch.url.path.endswith(f"/statefulsets/{cdn.EDGE.name}")
    assert header(patch, "Content-Type") == "application/strategic-merge-patch+json"
    assert patch.data == {"spec": {"template": {"spec": {"containers": [
        {"name": cdn.EDGE.name, "env": [{"name": cdn.CAPACITY_SETTING, "value": str(cdn.POP_CAPACITY_RPS)}]}]}}}}
    containers = _containers(fake)
    assert containers[cdn.EDGE.name]["env"] == [{"name": cdn.CAPACITY_SETTING, "value": str(cdn.POP_CAPACITY_RPS)}]
    # Only the setting changed: the command (the start script that reads it), the image, the sidecars stay.
    before = {c["name"]: c for c in declared["spec"]["template"]["spec"]["containers"]}
    assert {k: v for k, v in containers[cdn.EDGE.name].items() if k != "env"} == before[cdn.EDGE.name]
    assert {n: c for n, c in containers.items() if n != cdn.EDGE.name} == {
        n: c for n, c in before.items() if n != cdn.EDGE.name}
    # The rollout was awaited: the StatefulSet read after the patch.
    reads = [r for r in fake.requests("GET") if r.url.path.endswith(f"/statefulsets/{cdn.EDGE.name}")]
    assert reads and reads[-1].id > patch.id

    # Again, lower: the one entry replaced, not a second one.
    assert target.set_pop_capacity(40) == 40
    assert _containers(fake)[cdn.EDGE.name]["env"] == [{"name": cdn.CAPACITY_SETTING, "value": "40"}]

    assert target.set_pop_capacity(None) is None

    removal = fake.requests("PATCH")[-1]
    assert removal.data["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": cdn.CAPACITY_SETTING, "$patch": "delete"}]
    assert _containers(fake)[cdn.EDGE.name].get("env", []) == []


@pytest.mark.parametrize("bad", [0, -5, 100_001, True, 1.5])
def test_a_capacity_that_is_no_capacity_is_refused_before_the_cluster_is_asked(
        fake: FakeCluster, target: KubeTarget, bad: Any) -> None:
    fake.put(STATEFULSETS, cdn.EDGE.name, _rendered_edge())
    with pytest.raises(ConfigError, match=cdn.CAPACITY_SETTING):
        target.set_pop_capacity(bad)
    assert fake.requests("PATCH") == []


def test_pops_that_never_roll_out_are_a_timeout_naming_the_statefulset(fake: FakeCluster, target: KubeTarget) -> None:
    edge = _rendered_edge()
    # The controller never takes the new template: one PoP of two updated, for ever.
    edge["status"] = {"replicas": 2, "updatedReplicas": 1, "availableReplicas": 2, "observedGeneration": 1}
    fake.put(STATEFULSETS, cdn.EDGE.name, edge)
    with pytest.raises(TimeoutExpired, match=f"statefulset/{cdn.EDGE.name}.*1/2 updated"):
        target.set_pop_capacity(cdn.POP_CAPACITY_RPS)


def test_without_the_edge_there_is_nothing_to_limit(fake: FakeCluster, target: KubeTarget) -> None:
    with pytest.raises(NotRunningError, match=f"component '{cdn.EDGE.name}'"):
        target.set_pop_capacity(cdn.POP_CAPACITY_RPS)
