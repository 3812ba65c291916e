"""catalog's second release on the kube target against the fake API server (kmock): started, routed, refused, stopped.

start_version applies the Deployment catalog-v2 of k8s/components/canary and waits for its rollout;
from then on the mesh's checks count its pods, so a VirtualService giving the subset v2 a weight is
applied. stop_version deletes it, and is refused, with nothing sent, while the mesh in force still
routes requests to it; a route to v2 after it stopped is refused the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_kube_mesh import resource, with_istio
from test_kube_target import DEPLOYMENTS, NAMESPACE, FakeCluster, apis_target, header, settle_deployments

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from labkit.platform.mesh import releases, resources
from labkit.platform.mesh.errors import MeshConfigError
from labkit.targets.kube.target import KubeTarget


@pytest.fixture
def meshed(fake: FakeCluster, lab_cfg: LabConfig) -> Iterator[KubeTarget]:
    with_istio(fake)
    settle_deployments(fake)
    made = apis_target(fake, lab_cfg.with_(mesh="strict"))
    try:
        yield made
    finally:
        made.close()


def shifted(weights: dict[str, int]) -> resources.Mesh:
    committed = resources.load()
    return committed.replaced(releases.split("catalog", weights, committed))


def test_the_canary_is_applied_routed_and_stopped_only_once_it_gets_no_request(meshed: KubeTarget,
                                                                              fake: FakeCluster) -> None:
    status = meshed.start_version("catalog", "v2")

    (apply,) = fake.requests("PATCH")
    assert apply.url.path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/catalog-v2"
    assert header(apply, "Content-Type") == "application/apply-patch+yaml"
    template = apply.data["spec"]["template"]
    assert template["metadata"]["labels"]["version"] == "v2"
    assert {"name": "OTT_VERSION", "value": "v2"} in template["spec"]["containers"][0]["env"]
    assert (status.name, status.healthy) == ("catalog-v2", True)

    meshed.apply_mesh(shifted({"v1": 90, "v2": 10}))
    patched = fake.requests("PATCH")[-1]
    assert patched.url.path == f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/virtualservices/catalog"
    assert releases.shares(meshed.mesh(), "catalog") == {"v1": 90, "v2": 10}

    sent = len(fake.requests())
    with pytest.raises(MeshConfigError, match="catalog-v2 cannot stop: the mesh in force still sends it requests"):
        meshed.stop_version("catalog", "v2")
    assert [r for r in fake.requests()[sent:] if r.method != "GET"] == []
    assert fake.stored(DEPLOYMENTS, "catalog-v2") is not None

    meshed.apply_mesh(resources.load())
    meshed.stop_version("catalog", "v2")

    (delete,) = fake.requests("DELETE")
    assert delete.url.path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/catalog-v2"
    sent = len(fake.requests())
    with pytest.raises(MeshConfigError, match="the subset 'v2' of 'catalog' selects no pod"):
        meshed.apply_mesh(shifted({"v1": 50, "v2": 50}))
    assert [r for r in fake.requests()[sent:] if r.method != "GET"] == []
    assert fake.stored(resource("VirtualService"), "catalog")["spec"] == next(  # type: ignore[index]
        v for v in resources.load().of_kind("VirtualService") if v["metadata"]["name"] == "catalog")["spec"]


def test_bad_weights_and_unknown_releases_send_nothing(meshed: KubeTarget, fake: FakeCluster,
                                                       lab_cfg: LabConfig) -> None:
    meshed.start_version("catalog", "v2")
    sent = len(fake.requests())
    with pytest.raises(MeshConfigError, match=r"the weights sum to 110 \(90 \+ 20\), not 100"):
        meshed.apply_mesh(shifted({"v1": 90, "v2": 20}))
    with pytest.raises(MeshConfigError, match="no DestinationRule of 'catalog' declares the subset 'v3'"):
        meshed.apply_mesh(shifted({"v1": 90, "v3": 10}))
    with pytest.raises(ConfigError, match="catalog has no release 'v3'"):
        meshed.start_version("catalog", "v3")
    assert [r for r in fake.requests()[sent:] if r.method != "GET"] == []
    plain = apis_target(fake, lab_cfg.with_(mesh="off"))   # STRICT is the default: a lab without the mesh says so
    try:
        with pytest.raises(ConfigError, match="this lab runs without it"):
            plain.start_version("catalog", "v2")
    finally:
        plain.close()
