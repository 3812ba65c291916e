"""Two cluster mistakes ``ottlab up --target kube`` stops at with what to do, against the fake API server.

- pods that cannot get the services image (it was never loaded into the cluster, and no
  registry has it) end the wait at once with "make image && ottlab image load", where a plain
  rollout wait would run out its whole timeout;
- the services' SQLite database (the default) on a cluster of several schedulable nodes is
  refused before anything is applied, pointing at the PostgreSQL component.

The fake API server is test_kube_target.py's (kmock, with the gaps it fills).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_kube_target import FakeCluster, apis_target, pod, running_fake_cluster, serve_istio, settle_deployments

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, ImageMissingError, TimeoutExpired
from labkit.targets.kube import image, manifest
from labkit.targets.kube.target import KubeTarget

NODES = "v1/nodes"
PODS = "v1/pods"
SERVICES_IMAGE = image.services_image()


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    """A fake API server serving Istio's kinds: the lab's mesh (STRICT, the default) needs them; the checks here
    are the same without it (OTTLAB_MESH=off)."""
    with running_fake_cluster() as made:
        yield serve_istio(made)


def lab_target(fake: FakeCluster, lab_cfg: LabConfig, *, ready_timeout: float = 5.0) -> KubeTarget:
    """A target of every component the apis tests know, waiting at most ``ready_timeout`` seconds."""
    return KubeTarget(lab_cfg.with_(ready_timeout=ready_timeout), apis_target(fake, lab_cfg).components,
                      api_client=fake.api_client, overlay="kind")


def waiting_pod(component: str, reason: str, image_ref: str, *, init: bool = False) -> dict[str, Any]:
    stuck = pod(component, ready=False)
    stuck["status"]["phase"] = "Pending"
    statuses = [{"name": component, "image": image_ref, "state": {"waiting": {"reason": reason}}}]
    stuck["status"]["initContainerStatuses" if init else "containerStatuses"] = statuses
    return stuck


def node(name: str, *, taints: list[dict[str, str]] | None = None, cordoned: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": taints or []}
    if cordoned:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


# -- the services image ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"])
@pytest.mark.parametrize("image_ref", [SERVICES_IMAGE, f"docker.io/{SERVICES_IMAGE}"])
def test_up_fails_at_once_when_the_cluster_has_not_got_the_services_image(
    fake: FakeCluster, lab_cfg: LabConfig, reason: str, image_ref: str
) -> None:
    # No deployment controller here: the Deployments never become available, so only the
    # image check can end this wait before its 60 s.
    fake.put(PODS, "auth-7d9c", waiting_pod("auth", reason, image_ref))
    target = lab_target(fake, lab_cfg, ready_timeout=60)
    started = time.monotonic()

    with pytest.raises(ImageMissingError) as caught:
        target.up(["apis"])

    assert time.monotonic() - started < 10, "it must not wait out the 60 s rollout timeout"
    message = str(caught.value)
    assert f"the cluster does not have the image {SERVICES_IMAGE}" in message
    assert f"pod/auth-7d9c is {reason}" in message
    assert "make image && ottlab image load" in message


def test_an_init_container_without_the_services_image_is_the_same_error(fake: FakeCluster, lab_cfg: LabConfig) -> None:
    fake.put(PODS, "player-1", waiting_pod("player", "ErrImageNeverPull", SERVICES_IMAGE, init=True))
    target = lab_target(fake, lab_cfg)
    with pytest.raises(ImageMissingError, match="pod/player-1 is ErrImageNeverPull"):
        target.up(["apis"])


def test_another_images_pull_failure_is_left_to_the_rollout_timeout(fake: FakeCluster, lab_cfg: LabConfig) -> None:
    # Prometheus comes from a registry: a slow or failing pull there is the timeout's to report.
    prometheus = "quay.io/prometheus/prometheus:v2.42.0"
    fake.put(PODS, "prometheus-x", waiting_pod("prometheus", "ImagePullBackOff", prometheus))
    target = lab_target(fake, lab_cfg, ready_timeout=0.6)
    with pytest.raises(TimeoutExpired) as caught:
        target.up(["monitoring"])
    assert "pod/prometheus-x: ImagePullBackOff" in str(caught.value)


# -- SQLite on several nodes -------------------------------------------------------------------


def test_up_refuses_sqlite_on_several_schedulable_nodes_before_applying(fake: FakeCluster, lab_cfg: LabConfig) -> None:
    fake.put(NODES, "lab-control-plane", node("lab-control-plane", taints=[CONTROL_PLANE_TAINT]), namespace=None)
    fake.put(NODES, "lab-worker", node("lab-worker"), namespace=None)
    fake.put(NODES, "lab-worker2", node("lab-worker2"), namespace=None)
    target = lab_target(fake, lab_cfg)

    with pytest.raises(ConfigError) as caught:
        target.up(["apis"])

    message = str(caught.value)
    assert "2 schedulable nodes (lab-worker, lab-worker2)" in message
    assert "SQLite" in message and "auth" in message
    assert "OTTLAB_KUBE_DATABASE=postgres" in message and "k8s/components/postgres" in message
    assert fake.requests("PATCH") == [] and fake.requests("POST") == [], "nothing applied"


@pytest.mark.parametrize(
    "nodes",
    [
        [node("kind-control-plane")],
        [node("cp", taints=[CONTROL_PLANE_TAINT]), node("worker")],
        [node("a"), node("b", cordoned=True)],
        [node("a"), node("b", taints=[{"key": "gpu", "effect": "NoExecute"}])],
    ],
    ids=["one node", "tainted control plane", "cordoned", "NoExecute"],
)
def test_sqlite_on_one_schedulable_node_goes_ahead(
    fake: FakeCluster, lab_cfg: LabConfig, nodes: list[dict[str, Any]]
) -> None:
    settle_deployments(fake)
    for each in nodes:
        fake.put(NODES, manifest.name(each), each, namespace=None)
    statuses = lab_target(fake, lab_cfg).up(["apis"])
    assert statuses and all(s.healthy for s in statuses)


def test_a_layer_without_the_database_goes_ahead_on_several_nodes(fake: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake)
    for name in ("a", "b", "c"):
        fake.put(NODES, name, node(name), namespace=None)
    statuses = lab_target(fake, lab_cfg).up(["monitoring"])
    assert [s.name for s in statuses] == ["prometheus", "alertmanager", "process-exporter", "blackbox-exporter"]
