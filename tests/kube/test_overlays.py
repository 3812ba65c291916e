"""What README says each overlay does, checked on what it renders (offline).

- kind and k3d: every workload's services container uses an image already on the node
  (``imagePullPolicy: IfNotPresent``), the one ``ottlab image load`` put there;
- minikube: Prometheus and the transcoder (Deployment and Job) ask for less CPU and memory than the base;
- every overlay: claims on the cluster's default storage class, no Ingress, its own annotation.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from labkit.core.config import repo_root
from labkit.targets.kube import manifest

WORKLOADS = ("Deployment", "Job")


@functools.cache
def rendered(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(repo_root() / "k8s" / directory))


def first_containers(directory: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"]["name"]): o["spec"]["template"]["spec"]["containers"][0]
        for o in rendered(directory)
        if o["kind"] in WORKLOADS
    }


def test_readme_lists_every_overlay() -> None:
    readme = (repo_root() / "README.md").read_text()
    assert manifest.overlays() == ["k3d", "kind", "minikube"]
    for overlay in manifest.overlays():
        assert f"| `{overlay}`" in readme, f"README's overlay table has no row for {overlay}"


@pytest.mark.parametrize("overlay", ["kind", "k3d"])
def test_kind_and_k3d_use_the_image_on_the_node(overlay: str) -> None:
    containers = first_containers(f"overlays/{overlay}")
    assert containers and all(c["imagePullPolicy"] == "IfNotPresent" for c in containers.values())
    assert ("Job", "transcode-sample") in containers


def test_minikube_asks_for_less_cpu_and_memory() -> None:
    base, small = first_containers("base"), first_containers("overlays/minikube")
    for ref in (("Deployment", "prometheus"), ("Deployment", "transcoder"), ("Job", "transcode-sample")):
        asked, asked_in_base = small[ref]["resources"]["requests"], base[ref]["resources"]["requests"]
        for resource in ("cpu", "memory"):
            assert asked[resource] != asked_in_base[resource], (ref, resource)
    assert small[("Deployment", "transcoder")]["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_claims_on_the_default_class_no_ingress_and_annotated(overlay: str) -> None:
    objects = rendered(f"overlays/{overlay}")
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claims and all("storageClassName" not in c["spec"] for c in claims)
    assert not [o for o in objects if o["kind"] == "Ingress"]
    assert all(o["metadata"]["annotations"]["ottlab.io/overlay"] == overlay for o in objects)
