"""Notebook 06's incident on kube, against the fake API server (kmock, test_kube_target.py's).

- ``stop_replica("edge", 1)`` gives pod edge-1's container ``edge`` the pause image (a strategic
  merge patch of that pod alone, labelled as stopped, its image remembered) and waits until the pod
  is unready, out of its Service; it never deletes the pod (the StatefulSet would make it again)
  nor scales the StatefulSet; a replica it does not run and a sidecar are refused before any change;
- ``start("edge")`` deletes the stopped pod, waits until none is left, and keeps the replicas the
  StatefulSet runs (not the declared count);
- ``route_alerts(url)`` patches the ConfigMap Alertmanager's Deployment mounts with the declared
  configuration plus the webhook, and asks Alertmanager to reload until it runs it; ``None`` puts
  back the rendered file byte for byte; a loopback webhook is refused before anything is asked;
- the webhook receiver listens on ``$OTTLAB_WEBHOOK_HOST`` when set (an address the cluster's pods reach).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import kmock
import pytest
import yaml
from test_kube_target import (
    NAMESPACE,
    STATEFULSETS,
    FakeCluster,
    header,
    pod,
    settle_deployments,
)

from labkit.clients import alerts
from labkit.core.errors import ConfigError, MissingCapabilityError
from labkit.platform.layers import cdn
from labkit.platform.layers.monitoring import alerting
from labkit.targets.kube import manifest
from labkit.targets.kube import target as kube_target
from labkit.targets.kube.target import KubeTarget

PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
NGINX = "docker.io/nginxinc/nginx-unprivileged:1.22.1-alpine"
WEBHOOK = "http://172.18.0.1:5001/alerts"


def pop_pod(replica: int) -> dict[str, Any]:
    """Pod edge-<replica> as its StatefulSet makes it: nginx and its two exporters."""
    made = pod(cdn.EDGE.name)
    made["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = cdn.pop_id(replica)
    made["spec"]["containers"] = [{"name": cdn.EDGE.name, "image": NGINX},
                                  {"name": cdn.EXPORTER.name, "image": "ottlab/ott-services:0.1.0"},
                                  {"name": "edge-nginx-exporter", "image": "docker.io/nginx/nginx-prometheus-exporter"}]
    return made


def kubelet(fake: FakeCluster) -> None:
    """Answer a read of a pod whose container got the pause image as unready, as its kubelet would report it."""

    def read(request: kmock.Request) -> dict[str, Any]:
        stored = fake.stored(PODS, str(request.name), request.namespace)
        if stored is None:
            raise kmock.KubernetesObjectNotFoundError()
        if (stored["metadata"].get("labels") or {}).get(kube_target.STOPPED_LABEL) != "true":
            return stored
        return {**stored, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}

    fake.server[kmock.action.FETCH, kmock.resource("", "v1", "pods")] << read


def pod_requests(fake: FakeCluster, method: str) -> list[kmock.Request]:
    return [r for r in fake.requests(method) if "/pods/" in r.url.path or r.url.path.endswith("/pods")]


# -- one PoP down ------------------------------------------------------------------------------------


def test_stop_replica_fails_that_pods_container_and_start_recreates_it(fake: FakeCluster, target: KubeTarget) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    for replica in range(2):
        fake.put(PODS, cdn.pop_id(replica), pop_pod(replica))
    kubelet(fake)
    before = len(fake.requests())

    target.stop_replica("edge", 1)

    asked = fake.requests()[before:]
    changes = [r for r in asked if r.method != "GET"]
    (patch,) = changes   # one change: no delete, no scale
    assert patch.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/edge-1"
    assert header(patch, "Content-Type") == "application/strategic-merge-patch+json"
    assert patch.data == {
        "metadata": {"labels": {kube_target.STOPPED_LABEL: "true"},
                     "annotations": {kube_target.STOPPED_IMAGE_ANNOTATION: NGINX}},
        # Only the PoP's nginx: its exporters keep running and report it down.
        "spec": {"containers": [{"name": cdn.EDGE.name, "image": kube_target.PAUSE_IMAGE}]},
    }
    # It waited for the pod to be unready (out of its Service), reading that pod.
    assert any(r.method == "GET" and r.url.path.endswith("/pods/edge-1") for r in asked)
    assert fake.stored(STATEFULSETS, "edge")["spec"]["replicas"] == 2  # type: ignore[index]
    assert not [r for r in asked if r.url.path.endswith("/pods/edge-0")]   # the other PoP is not touched

    target.stop_replica("edge", 1)   # again: the pod already holds the pause image, nothing is patched
    assert len(pod_requests(fake, "PATCH")) == 1
    before = len(fake.requests())

    status = target.start("edge")

    asked = fake.requests()[before:]
    (delete,) = [r for r in asked if r.method == "DELETE"]
    assert delete.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/edge-1"
    (listing, *_) = [r for r in asked if r.method == "GET" and r.url.path.endswith("/pods")]
    assert listing.params["labelSelector"] == f"{manifest.NAME_LABEL}=edge,{kube_target.STOPPED_LABEL}=true"
    # The replicas the StatefulSet runs, through the scale subresource, as `scale` does.
    (scaled,) = [r for r in asked if r.method == "PATCH" and r.url.path.endswith("/statefulsets/edge/scale")]
    assert scaled.data == {"spec": {"replicas": 2}}
    assert fake.stored(PODS, "edge-0") is not None
    assert status.healthy


def test_start_keeps_the_replicas_the_statefulset_runs(fake: FakeCluster, target: KubeTarget) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    target.scale("edge", 3)
    for replica in range(3):
        fake.put(PODS, cdn.pop_id(replica), pop_pod(replica))
    kubelet(fake)
    target.stop_replica("edge", 2)

    target.start("edge")

    assert fake.stored(STATEFULSETS, "edge")["spec"]["replicas"] == 3  # type: ignore[index]
    assert fake.stored(PODS, "edge-2") is None and fake.stored(PODS, "edge-1") is not None


@pytest.mark.parametrize(("component", "replica", "says"), [
    ("edge", 2, "edge runs replicas 0 to 1, not 2"),
    ("edge", -1, "edge runs replicas 0 to 1, not -1"),
    ("edge-exporter", 0, "sidecar"),
])
def test_stop_replica_refuses_a_replica_it_does_not_run(
    fake: FakeCluster, target: KubeTarget, component: str, replica: int, says: str
) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    for index in range(2):
        fake.put(PODS, cdn.pop_id(index), pop_pod(index))
    before = len(fake.requests())

    with pytest.raises(ConfigError, match=says):
        target.stop_replica(component, replica)

    assert [r for r in fake.requests()[before:] if r.method != "GET"] == []


# -- Alertmanager's receivers -----------------------------------------------------------------------


def alertmanager_config_map(fake: FakeCluster) -> tuple[str, dict[str, Any]]:
    stored = fake.stored("apps/v1/deployments", "alertmanager")
    assert stored is not None
    (name,) = [v["configMap"]["name"] for v in stored["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    config = fake.stored(CONFIGMAPS, name)
    assert config is not None
    return name, config


@pytest.fixture
def alertmanager(fake: FakeCluster, target: KubeTarget, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The monitoring layer up, and an Alertmanager that reads its mounted file one reload late (the kubelet's sync).

    Returns the URLs it was asked to reload at."""
    settle_deployments(fake)
    target.up(["monitoring"])
    fake.put(PODS, "alertmanager-a", pod("alertmanager"))
    reloads: list[str] = []
    running = [alertmanager_config_map(fake)[1]["data"][kube_target.ALERTMANAGER_CONFIG_KEY]]

    def reload(url: str, timeout: float = 5.0) -> None:
        reloads.append(url)

    def status(url: str) -> str:
        shown = running[0]
        running[0] = alertmanager_config_map(fake)[1]["data"][kube_target.ALERTMANAGER_CONFIG_KEY]
        return shown

    monkeypatch.setattr(alerts, "reload", reload)
    monkeypatch.setattr(kube_target, "_alertmanager_config", status)
    return reloads


def test_route_alerts_patches_alertmanagers_configmap_and_reloads_until_it_runs_it(
    fake: FakeCluster, target: KubeTarget, alertmanager: list[str]
) -> None:
    name, declared = alertmanager_config_map(fake)
    before = len(fake.requests())

    target.route_alerts(WEBHOOK)

    (patch,) = [r for r in fake.requests()[before:] if r.method == "PATCH"]
    assert patch.url.path == f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}"
    assert header(patch, "Content-Type") == "application/merge-patch+json"
    routed = yaml.safe_load(alertmanager_config_map(fake)[1]["data"][kube_target.ALERTMANAGER_CONFIG_KEY])
    # Every receiver posts to the webhook, resolutions too; routes and inhibitions as declared.
    assert {r["name"]: r["webhook_configs"] for r in routed["receivers"]} == {
        r: [{"url": WEBHOOK, "send_resolved": True}] for r in (alerting.RECEIVER, *alerting.RECEIVERS.values())}
    original = yaml.safe_load(declared["data"][kube_target.ALERTMANAGER_CONFIG_KEY])
    assert {k: v for k, v in routed.items() if k != "receivers"} == {k: v for k, v in original.items()
                                                                      if k != "receivers"}
    # Reloaded until Alertmanager showed the new file (the first reload still read the old one).
    assert len(alertmanager) == 2 and all(u.startswith("http://127.0.0.1:") for u in alertmanager)

    target.route_alerts(None)

    assert alertmanager_config_map(fake)[1]["data"] == declared["data"]   # the rendered file, byte for byte


def test_route_alerts_refuses_a_loopback_webhook_before_asking_the_cluster(
    fake: FakeCluster, target: KubeTarget
) -> None:
    for url in ("http://127.0.0.1:5001/alerts", "http://localhost:5001/alerts", "http://[::1]:5001/alerts"):
        with pytest.raises(MissingCapabilityError, match="a loopback address is the pod itself") as caught:
            target.route_alerts(url)
        assert alerts.WEBHOOK_HOST_ENV in str(caught.value.hint)
    assert fake.requests() == []


def test_the_declared_configuration_is_the_one_the_cluster_runs() -> None:
    objects = manifest.render(manifest.overlay_dir("kind"))
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"
                 and kube_target.ALERTMANAGER_CONFIG_KEY in (o.get("data") or {})]
    assert config["data"][kube_target.ALERTMANAGER_CONFIG_KEY] == alerting.dump(
        alerting.alertmanager_config(alerting.REAL))


def test_the_receiver_listens_where_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(alerts.WEBHOOK_HOST_ENV, "127.0.0.2")   # a loopback address standing for the cluster's side
    with alerts.WebhookReceiver() as receiver:
        assert receiver.url.startswith("http://127.0.0.2:")
        payload = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "PoPDown"}}]}
        assert httpx.post(receiver.url, content=json.dumps(payload), timeout=5).status_code == 200
        assert receiver.wait_for("PoPDown", timeout=5).payload == payload
    monkeypatch.delenv(alerts.WEBHOOK_HOST_ENV)
    with alerts.WebhookReceiver() as receiver:
        assert receiver.url.startswith("http://127.0.0.1:")


def test_stop_replica_of_a_stopped_component_says_to_start_it(fake: FakeCluster, target: KubeTarget) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    target.stop("edge")
    before = len(fake.requests())

    with pytest.raises(ConfigError, match="edge runs no replica to stop") as caught:
        target.stop_replica("edge", 0)

    assert "target.start('edge')" in str(caught.value.hint)
    assert [r for r in fake.requests()[before:] if r.method != "GET"] == []
