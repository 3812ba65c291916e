"""The HorizontalPodAutoscalers on kube: checked offline, applied, read and deleted against the fake API server.

The objects are the kind overlay's render of k8s/base/autoscaling; the API calls go through the
official client to kmock (test_kube_target's fake cluster), which records what labkit asked.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import pytest
from test_kube_target import NAMESPACE, apis_target, header, running_fake_cluster, settle_deployments

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, TimeoutExpired
from labkit.platform import hpa
from labkit.targets.kube import autoscaling, manifest
from labkit.targets.kube.cluster import Cluster
from labkit.traffic import capacity

HPAS = "autoscaling/v2/horizontalpodautoscalers"
EVENTS = "v1/events"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return manifest.render(manifest.overlay_dir("kind"))


def test_up_leaves_the_autoscalers_to_autoscale_on(rendered: list[dict[str, Any]]) -> None:
    found = manifest.autoscalers(rendered)
    assert {manifest.name(o) for o in found} == {"auth", "catalog", "subscription", "license", "cas", "edge"}
    assert manifest.autoscalers(manifest.without_autoscalers(rendered)) == []


def test_the_shipped_autoscalers_pass_the_checks(rendered: list[dict[str, Any]]) -> None:
    objects = autoscaling.checked(rendered, platform.components())
    by_name = {manifest.name(o): o for o in objects}
    for obj in objects:
        ref = obj["spec"]["scaleTargetRef"]
        # The workload the HPA names is rendered with that kind, and the HPA carries its layer.
        assert any(o["kind"] == ref["kind"] and manifest.name(o) == ref["name"] for o in rendered)
        layer = next(c.layer for c in platform.components() if c.name == ref["name"])
        assert manifest.labels(obj)[manifest.LAYER_LABEL] == layer
        assert "behavior" in obj["spec"]
    shortened = autoscaling.checked(rendered, platform.components(), scale_down_window=10,
                                    metric_targets={"ott_edge_egress_bytes_per_second": 2e6, "cpu": 60})
    assert {o["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] for o in shortened} == {10}
    edge = next(o for o in shortened if manifest.name(o) == "edge")
    assert edge["spec"]["metrics"][1]["pods"]["target"] == {"type": "AverageValue", "averageValue": "2000000"}
    assert {o["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] for o in shortened} == {60}
    with pytest.raises(ConfigError, match="no HorizontalPodAutoscaler scales on 'memory'"):
        autoscaling.checked(rendered, platform.components(), metric_targets={"memory": 1.0})
    assert by_name["edge"]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def _with(rendered: list[dict[str, Any]], name: str, change: dict[str, Any]) -> list[dict[str, Any]]:
    changed = copy.deepcopy(rendered)
    for obj in changed:
        if obj["kind"] == hpa.KIND and manifest.name(obj) == name:
            obj["spec"].update(change)
    return changed


def test_bad_autoscalers_are_refused_before_anything_is_applied(rendered: list[dict[str, Any]]) -> None:
    components = platform.components()
    with pytest.raises(ConfigError, match=r"minReplicas \(3\) is above maxReplicas \(2\)"):
        autoscaling.checked(_with(rendered, "catalog", {"minReplicas": 3, "maxReplicas": 2}), components)
    nobody = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "catalogue"}}
    with pytest.raises(ConfigError, match="'catalogue', which is no component"):
        autoscaling.checked(_with(rendered, "catalog", nobody), components)
    kind = next(o["kind"] for o in rendered if o["kind"] in hpa.WORKLOADS and manifest.name(o) == "edge")
    other = "Deployment" if kind == "StatefulSet" else "StatefulSet"
    wrong = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": other, "name": "edge"}}
    with pytest.raises(ConfigError, match=f"scales {other} edge, which the manifests do not declare") as err:
        autoscaling.checked(_with(rendered, "edge", wrong), components)
    assert f"{kind} edge" in err.value.hint
    unknown = copy.deepcopy(next(o for o in rendered if manifest.name(o) == "catalog" and o["kind"] == hpa.KIND))
    unknown["spec"]["metrics"][1]["pods"]["metric"]["name"] = "ott_http_requests_per_week"
    with pytest.raises(ConfigError, match="no prometheus-adapter rule defines 'ott_http_requests_per_week'"):
        autoscaling.checked(_with(rendered, "catalog", {"metrics": unknown["spec"]["metrics"]}), components)


def test_apply_status_and_delete_through_the_api_server(rendered: list[dict[str, Any]]) -> None:
    with running_fake_cluster() as fake:
        cluster = Cluster(fake.api_client)
        objects = autoscaling.checked(rendered, platform.components())
        assert not any(row.active for row in autoscaling.status(cluster, NAMESPACE, rendered))

        autoscaling.apply(cluster, NAMESPACE, objects)

        patches = fake.requests("PATCH")
        assert [r.url.path for r in patches] == [
            f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{manifest.name(o)}" for o in objects]
        for request in patches:
            assert header(request, "Content-Type") == "application/apply-patch+yaml"
            assert request.params == {"fieldManager": "labkit", "force": "true"}
        assert fake.stored(HPAS, "edge") is not None
        # The cluster's controller writes the status at a sync, stamped in managedFields; here, as it would.
        live = fake.stored(HPAS, "edge")
        assert live is not None
        history = autoscaling.History()
        assert [r.decisions for r in autoscaling.status(cluster, NAMESPACE, rendered, history)] == [[]] * 6
        fake.put(HPAS, "edge", _written(live, "2026-01-01T10:00:05Z", current=2, desired=3, cpu=35, egress="61M"))
        # Its event for the rescale, which names the reason: the decision's message.
        fake.put(EVENTS, "edge.1", {"apiVersion": "v1", "kind": "Event", "reason": autoscaling.RESCALED,
                                    "involvedObject": {"kind": hpa.KIND, "name": "edge", "namespace": NAMESPACE},
                                    "message": "New size: 3; reason: pods metric ott_edge_egress_bytes_per_second "
                                               "above target", "lastTimestamp": "2026-01-01T10:00:05Z"})

        rows = {row.hpa: row for row in autoscaling.status(cluster, NAMESPACE, rendered, history)}
        edge = rows["edge"]
        assert edge.active and (edge.current, edge.desired) == (2, 3)
        assert edge.metrics == [{"metric": "cpu", "current": 35.0, "target": 80.0},
                                {"metric": "ott_edge_egress_bytes_per_second", "current": 61e6, "target": 40e6},
                                # Not in the status the fake API server holds: not read yet.
                                {"metric": "ott_edge_sessions", "current": None, "target": 10.0}]
        (first,) = edge.decisions
        assert (first["current"], first["desired"], first["reason"]) == (2, 3, "SucceededRescale")
        assert first["message"] == "pods metric ott_edge_egress_bytes_per_second above target"
        assert first["at"] == first["last"] == datetime.fromisoformat("2026-01-01T10:00:05+00:00").timestamp()
        assert first["metrics"] == edge.metrics
        assert rows["catalog"].active and rows["catalog"].current is None and rows["catalog"].decisions == []
        # Read again without a new write: the same decision, not a second one.
        again = {row.hpa: row for row in autoscaling.status(cluster, NAMESPACE, rendered, history)}
        assert again["edge"].decisions == [first]
        # The next sync: the new PoP counted, every metric within the tolerance; its message the conditions'.
        fake.put(HPAS, "edge", _written(live, "2026-01-01T10:00:20Z", current=3, desired=3, cpu=30, egress="40M"))
        rows = {row.hpa: row for row in autoscaling.status(cluster, NAMESPACE, rendered, history)}
        decisions = rows["edge"].decisions
        assert [(d["current"], d["desired"]) for d in decisions] == [(2, 3), (3, 3)]
        assert decisions[-1]["last"] - decisions[0]["last"] == 15.0
        assert decisions[-1]["message"].startswith("AbleToScale=True: ")

        autoscaling.delete(cluster, NAMESPACE, objects)

        deletes = fake.requests("DELETE")
        assert {r.url.path.rsplit("/", 1)[-1] for r in deletes} == {manifest.name(o) for o in objects}
        assert fake.stored(HPAS, "edge") is None
        rows = {row.hpa: row for row in autoscaling.status(cluster, NAMESPACE, rendered, history)}
        assert not any(row.active for row in rows.values())
        assert rows["edge"].decisions == decisions   # what it decided stays readable after it is gone


def _written(live: dict[str, Any], at: str, *, current: int, desired: int, cpu: int, egress: str) -> dict[str, Any]:
    """``live`` with the status the HPA controller writes at a sync, and the time the API server stamps on it."""
    fields = [{"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": at,
               "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
    return {**live, "metadata": {**live["metadata"], "managedFields": fields}, "status": {
        "currentReplicas": current, "desiredReplicas": desired,
        "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}},
            {"type": "Pods", "pods": {"metric": {"name": "ott_edge_egress_bytes_per_second"},
                                      "current": {"averageValue": egress}}}],
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale" if desired != current
             else "ReadyForNewScale", "message": "the HPA controller was able to update the target scale",
             "lastTransitionTime": at},
            {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange",
             "message": "the desired count is within the acceptable range",
             "lastTransitionTime": "2026-01-01T10:00:00Z"}]}}


def test_the_kube_target_switches_the_autoscalers_through_the_api_server(lab_cfg: LabConfig) -> None:
    with running_fake_cluster() as fake:
        target = apis_target(fake, lab_cfg)
        assert not any(row.active for row in target.autoscale_status())

        rows = target.autoscale(True, scale_down_window=30)

        assert {row.hpa for row in rows if row.active} == {"auth", "catalog", "subscription", "license", "cas", "edge"}
        applied = [r for r in fake.requests("PATCH") if "/horizontalpodautoscalers/" in r.url.path]
        assert len(applied) == 6
        assert {r.data["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] for r in applied} == {30}
        # up leaves them alone: nothing but the HPAs was applied.
        assert all(r.data["kind"] == hpa.KIND for r in fake.requests("PATCH"))

        rows = target.autoscale(False)

        assert not any(row.active for row in rows)
        assert len([r for r in fake.requests("DELETE") if "/horizontalpodautoscalers/" in r.url.path]) == 6


# -- `up` leaves spec.replicas to the HPAs ------------------------------------------------------------

STATEFULSETS = "apps/v1/statefulsets"


def _applied(fake: Any, kind: str, name: str) -> dict[str, Any]:
    (request,) = [r for r in fake.requests("PATCH")
                  if header(r, "Content-Type") == "application/apply-patch+yaml"
                  and r.data["kind"] == kind and r.name == name]
    return dict(request.data)


def _edges_listed(fake: Any) -> list[str]:
    public = fake.stored("v1/configmaps", "ott-public")
    assert public is not None
    return sorted(json.loads(public["data"]["edges.json"]))


def test_up_keeps_the_replicas_an_hpa_gave_and_applies_the_declared_ones_otherwise(lab_cfg: LabConfig) -> None:
    with running_fake_cluster() as fake:
        settle_deployments(fake)
        target = apis_target(fake, lab_cfg)
        target.up(["cdn"])
        # What the target renders and applies (its overlay with its components: the mesh's unless OTTLAB_MESH=off).
        first = _applied(fake, "StatefulSet", "edge")["spec"]
        declared = first["replicas"]
        assert declared == 2 and _edges_listed(fake) == ["edge-0", "edge-1"]

        target.autoscale(True)
        # The cluster's HPA controller scales the edge out (the scale subresource), as it would under load.
        live = fake.stored(STATEFULSETS, "edge")
        assert live is not None
        fake.put(STATEFULSETS, "edge", {**live, "spec": {**live["spec"], "replicas": 4}})
        before = len(fake.requests())

        target.up(["cdn"])

        again = [r for r in fake.requests()[before:] if r.method == "PATCH" and r.data.get("kind") == "StatefulSet"]
        assert [r.data["spec"]["replicas"] for r in again] == [4]      # the HPA's count, not k8s/'s 2
        assert fake.stored(STATEFULSETS, "edge")["spec"]["replicas"] == 4  # type: ignore[index]
        assert _edges_listed(fake) == ["edge-0", "edge-1", "edge-2", "edge-3"]  # license signs for all four
        # Everything else as declared: only the replicas of the HPA's workload changed.
        body = dict(again[0].data)
        assert {k: v for k, v in body["spec"].items() if k != "replicas"} == {
            k: v for k, v in first.items() if k != "replicas"}

        target.autoscale(False)
        before = len(fake.requests())

        target.up(["cdn"])   # no HPA any more: k8s/ decides again

        again = [r for r in fake.requests()[before:] if r.method == "PATCH" and r.data.get("kind") == "StatefulSet"]
        assert [r.data["spec"]["replicas"] for r in again] == [declared]
        assert _edges_listed(fake) == ["edge-0", "edge-1"]


def test_a_ramp_waits_on_kube_for_the_controllers_next_status_write(lab_cfg: LabConfig) -> None:
    """capacity.autoscaler_synced (notebook 07's settle between steps) reads the kube target's decisions."""
    with running_fake_cluster() as fake:
        target = apis_target(fake, lab_cfg)
        target.autoscale(True)
        live = fake.stored(HPAS, "edge")
        assert live is not None
        step_ended = datetime.fromisoformat("2026-01-01T10:00:10+00:00").timestamp()
        fake.put(HPAS, "edge", _written(live, "2026-01-01T10:00:05Z", current=2, desired=2, cpu=20, egress="1M"))
        settle = capacity.autoscaler_synced(target, "edge", timeout=1.0, clock=lambda: step_ended)
        with pytest.raises(TimeoutExpired, match="the edge HPA's next sync"):
            settle()   # the last write is older than the step's end: the controller has not seen the step yet

        fake.put(HPAS, "edge", _written(live, "2026-01-01T10:00:20Z", current=2, desired=4, cpu=90, egress="90M"))
        settle()   # written after the step: its decision (4 PoPs) is the one the next step meets

        (edge,) = [row for row in target.autoscale_status() if row.hpa == "edge"]
        ups = [d for d in edge.decisions if (d["desired"] or 0) > (d["current"] or 0)]  # as notebook 07 reads them
        assert [(d["current"], d["desired"]) for d in ups] == [(2, 4)]


def _edge_running(fake: Any, replicas: int, available: int) -> None:
    """The edge StatefulSet as its controller reports it: ``replicas`` wanted, ``available`` of them ready."""
    live = fake.stored(STATEFULSETS, "edge") or next(o for o in manifest.render(manifest.overlay_dir("kind"))
                                                      if o["kind"] == "StatefulSet" and manifest.name(o) == "edge")
    fake.put(STATEFULSETS, "edge", {**live, "spec": {**live["spec"], "replicas": replicas}, "status": {
        "replicas": replicas, "updatedReplicas": replicas, "availableReplicas": available, "observedGeneration": 1}})


def test_licenses_pop_list_follows_the_edge_once_its_hpa_scaled_it_and_its_pops_are_ready(lab_cfg: LabConfig) -> None:
    """The kube HPA scales the StatefulSet itself; `follow_autoscaler` (a ramp's settle, `autoscale` off)
    brings license's list along, as `scale` does; reading the HPAs writes nothing."""
    with running_fake_cluster() as fake:
        target = apis_target(fake, lab_cfg)
        _edge_running(fake, 2, 2)
        target.up(["cdn"])
        target.autoscale(True)
        assert _edges_listed(fake) == ["edge-0", "edge-1"]
        # The controller set 4 replicas; two new pods are not ready yet: the list waits for them.
        _edge_running(fake, 4, 2)
        target.follow_autoscaler()
        assert _edges_listed(fake) == ["edge-0", "edge-1"]

        _edge_running(fake, 4, 4)
        writes = len(fake.requests("PATCH"))
        target.autoscale_status()  # a read: the list stays as it is
        assert len(fake.requests("PATCH")) == writes and _edges_listed(fake) == ["edge-0", "edge-1"]
        target.follow_autoscaler()

        assert _edges_listed(fake) == ["edge-0", "edge-1", "edge-2", "edge-3"]
        assert "edge-3" in json.dumps(fake.stored("v1/configmaps", "blackbox-targets"))  # probed too
        # Scaled back in: the list follows down too; again, nothing more is written.
        _edge_running(fake, 3, 3)
        target.follow_autoscaler()
        assert _edges_listed(fake) == ["edge-0", "edge-1", "edge-2"]
        writes = len(fake.requests("PATCH"))
        target.follow_autoscaler()
        assert len(fake.requests("PATCH")) == writes
        # Switched off after the HPA removed one more PoP: the list follows it before the HPA goes ...
        _edge_running(fake, 2, 2)
        target.autoscale(False)
        assert _edges_listed(fake) == ["edge-0", "edge-1"]
        # ... then, with no edge HPA on the cluster, the list is `scale`'s and `up`'s business again.
        _edge_running(fake, 4, 4)
        target.follow_autoscaler()
        assert _edges_listed(fake) == ["edge-0", "edge-1"]
