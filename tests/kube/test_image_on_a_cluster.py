"""The services image on a real cluster: built, loaded, and running the lab's pods (``kube`` marker).

These need a local cluster that ``KUBECONFIG`` reaches (kind, minikube or k3d, chosen by
``$OTTLAB_KUBE_OVERLAY`` as ``ottlab image load`` does), a container engine (docker or podman)
and that cluster's own program (kind, minikube, k3d). Without a cluster they are skipped, with
the reason tests/kube/conftest.py gives; the offline checks of the same code are
tests/unit/test_image.py (the commands), test_kube_target_cluster_checks.py (the missing image,
SQLite on several nodes) and test_postgres_component.py (the PostgreSQL option).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from labkit.core.config import LabConfig
from labkit.platform.layers import apis
from labkit.targets.kube import cluster, image, manifest
from labkit.targets.kube.target import KubeTarget

pytestmark = [pytest.mark.kube, pytest.mark.timeout(2400)]


def cluster_kind() -> str:
    overlay = manifest.default_overlay()
    return overlay if overlay in image.CLUSTERS else "kind"


_loaded: dict[str, str] = {}


@pytest.fixture
def loaded() -> str:
    """The services image, built and loaded into the cluster once per session.

    Function-scoped, so that conftest's autouse check (is there a cluster?) runs first and a
    machine without one skips with that reason alone.
    """
    kind = cluster_kind()
    if not any(shutil.which(engine) for engine in image.ENGINES) or shutil.which(kind) is None:
        pytest.skip(f"needs docker or podman and the program {kind!r} beside the cluster")
    if kind not in _loaded:
        image.build()
        _loaded[kind] = image.load(kind)
    return _loaded[kind]


def lab_target(lab_cfg: LabConfig, database: str) -> Iterator[KubeTarget]:
    components = [*apis.LAYER.components]
    target = KubeTarget(lab_cfg.with_(ready_timeout=600), components, overlay=cluster_kind(), database=database)
    try:
        yield target
    finally:
        target.down(purge=True)
        target.close()


@pytest.fixture
def sqlite_target(lab_cfg: LabConfig) -> Iterator[KubeTarget]:
    yield from lab_target(lab_cfg, "sqlite")


@pytest.fixture
def postgres_target(lab_cfg: LabConfig) -> Iterator[KubeTarget]:
    yield from lab_target(lab_cfg, "postgres")


def services_pods(target: KubeTarget) -> list[dict[str, Any]]:
    in_layer = target._cluster.list(cluster.PODS, target.namespace, label_selector=f"{manifest.LAYER_LABEL}=apis")
    return [
        pod for pod in in_layer
        if any(image.same_image(c["image"], image.services_image()) for c in pod["spec"]["containers"])
    ]


def test_the_loaded_image_runs_the_apis_layer(loaded: str, sqlite_target: KubeTarget) -> None:
    statuses = sqlite_target.up(["apis"])
    assert all(s.healthy for s in statuses), [(s.name, s.detail) for s in statuses]
    pods = services_pods(sqlite_target)
    assert {p["metadata"]["labels"][manifest.NAME_LABEL] for p in pods} == {c.name for c in apis.SERVICES}
    for pod in pods:
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] is True and image.same_image(status["image"], loaded), status


def test_the_apis_layer_on_postgresql(loaded: str, postgres_target: KubeTarget) -> None:
    statuses = postgres_target.up(["apis"])
    assert all(s.healthy for s in statuses), [(s.name, s.detail) for s in statuses]
    # Ready means each service's /readyz found its database: PostgreSQL, through the Secret's URL.
    for pod in services_pods(postgres_target):
        env = {e["name"]: e for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert env["OTT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "ott-postgres"
