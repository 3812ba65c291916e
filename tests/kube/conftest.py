"""The kube tier's gate: tests marked ``@pytest.mark.kube`` need a real cluster.

They are skipped unless KUBECONFIG points at a cluster that answers within a few seconds
(kind create cluster, minikube start ...). Everything else in tests/kube runs anywhere:
the manifests are rendered and validated offline, and the kube target is tested against an
in-process fake API server (kmock, see test_kube_target.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from test_kube_target import FakeCluster, apis_target, running_fake_cluster

from labkit.core.config import LabConfig
from labkit.core.errors import LabError
from labkit.targets.kube import cluster
from labkit.targets.kube.target import KubeTarget

_reachable: dict[str, str] = {}


def _real_cluster_problem() -> str:
    """Why no real cluster can be used ("" when one answers); asked once per session."""
    if "problem" not in _reachable:
        try:
            cluster.load_api_client(probe_timeout=3).close()  # type: ignore[no-untyped-call]
            _reachable["problem"] = ""
        except LabError as exc:
            _reachable["problem"] = exc.message
    return _reachable["problem"]


@pytest.fixture(autouse=True)
def _viewers_through_port_forwards(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the lab's node ports answer nowhere: the kube target gives viewers port-forwards.

    Without this, an overlay that declares a public host (kind, k3d) would first wait for its node
    ports to answer (labkit.targets.kube.entry). Tests of that choice set OTTLAB_KUBE_ENTRY themselves;
    ``kube``-marked tests, on a real cluster, keep the overlay's choice.
    """
    if request.node.get_closest_marker("kube") is None:
        monkeypatch.setenv("OTTLAB_KUBE_ENTRY", "forwards")


@pytest.fixture(autouse=True)
def _needs_a_real_cluster(request: pytest.FixtureRequest) -> None:
    """Skip a ``@pytest.mark.kube`` test unless KUBECONFIG points at a cluster that answers."""
    if request.node.get_closest_marker("kube") is None:
        return
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("needs a real cluster: set KUBECONFIG (kind create cluster, minikube start ...)")
    problem = _real_cluster_problem()
    if problem:
        pytest.skip(f"needs a real cluster: {problem}")


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    """A fake API server (kmock) for one test; a module needing more (Istio's kinds) defines its own."""
    with running_fake_cluster() as made:
        yield made


@pytest.fixture
def target(fake: FakeCluster, lab_cfg: LabConfig) -> Iterator[KubeTarget]:
    """The kube target of the APIs layer on the fake API server, closed after the test."""
    made = apis_target(fake, lab_cfg)
    try:
        yield made
    finally:
        made.close()
