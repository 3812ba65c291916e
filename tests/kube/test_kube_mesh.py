"""The mesh on the kube target against the fake API server (kmock): read, faults applied and cleared, refusals.

The cluster holds the committed Istio resources as ``kubectl apply`` leaves them (with the
server's bookkeeping); the fake serves Istio's kinds as a cluster with Istio installed does.
What labkit asks is asserted: one server-side apply of the one VirtualService a fault changes,
nothing at all for a mesh with a problem.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_kube_target import (
    ISTIO_PLURALS,
    NAMESPACE,
    FakeCluster,
    header,
    make_target,
    running_fake_cluster,
    serve_istio,
)

from labkit.core.config import LabConfig
from labkit.core.errors import KubeError
from labkit.platform.mesh import faults, resources
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.faults import Fault
from labkit.targets.kube import manifest
from labkit.targets.kube import mesh as kube_mesh
from labkit.targets.kube.cluster import Cluster

PLURALS = ISTIO_PLURALS
LESSON = ("x-ottlab-user", "alice")


def resource(kind: str) -> str:
    return f"{kube_mesh.API_VERSIONS[kind]}/{PLURALS[kind]}"


@functools.cache
def topology() -> resources.Topology:
    return resources.Topology.of(manifest.render(manifest.overlay_dir("kind"), components=("mesh",)))


def with_istio(fake: FakeCluster) -> FakeCluster:
    """The fake serves Istio's kinds (its CRDs installed) and holds the committed resources, as applied."""
    serve_istio(fake)
    for i, obj in enumerate(resources.load().objects):
        stored = copy.deepcopy(obj)
        stored["metadata"] |= {"uid": f"uid-{i}", "resourceVersion": str(100 + i), "generation": 1,
                               "creationTimestamp": "2026-01-01T10:00:00Z",
                               "annotations": {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(obj)}}
        fake.put(resource(obj["kind"]), obj["metadata"]["name"], stored)
    return fake


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    with running_fake_cluster() as fake:
        yield with_istio(fake)


def specs(mesh: resources.Mesh) -> dict[tuple[str, str], Any]:
    return {(o["kind"], o["metadata"]["name"]): o["spec"] for o in mesh.objects}


def test_read_gives_the_resources_as_declared(fake: FakeCluster) -> None:
    mesh = kube_mesh.read(Cluster(fake.api_client), NAMESPACE)
    assert specs(mesh) == specs(resources.load())
    assert [o["kind"] for o in mesh.objects] == sorted((o["kind"] for o in mesh.objects),
                                                       key=resources.MESH_KINDS.index)
    (license_,) = [o for o in mesh.of_kind("VirtualService") if o["metadata"]["name"] == "license"]
    # None of the server's bookkeeping: what a manifest declares.
    assert license_["metadata"] == {"name": "license", "namespace": NAMESPACE,
                                    "labels": resources.load().of_kind("VirtualService")[3]["metadata"]["labels"]}
    assert license_["apiVersion"] == "networking.istio.io/v1"
    assert [r.url.path for r in fake.requests("GET") if "/namespaces/" in r.url.path] == [
        f"/apis/{resource(kind).rsplit('/', 1)[0]}/namespaces/{NAMESPACE}/{PLURALS[kind]}"
        for kind in resources.MESH_KINDS]


def test_a_fault_is_one_apply_of_the_services_virtual_service_and_clearing_it_another(fake: FakeCluster) -> None:
    cluster = Cluster(fake.api_client)
    fault = Fault("license", delay_s=2, percent=50, header=LESSON)

    done = kube_mesh.apply(cluster, NAMESPACE, faults.inject(kube_mesh.read(cluster, NAMESPACE), fault), topology())

    assert done == ["applied virtualservice/license"]
    (patch,) = fake.requests("PATCH")
    assert patch.url.path == f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/virtualservices/license"
    assert header(patch, "Content-Type") == "application/apply-patch+yaml"
    assert patch.params == {"fieldManager": "labkit", "force": "true"}
    assert [r.get("name") for r in patch.data["spec"]["http"]] == ["ottlab-fault.0.x-ottlab-user", None]
    assert fake.requests("DELETE") == []
    stored = fake.stored(resource("VirtualService"), "license")
    assert stored is not None and stored["spec"]["http"][0]["fault"]["delay"]["fixedDelay"] == "2s"
    assert faults.listing(kube_mesh.read(cluster, NAMESPACE)) == [fault]

    cleared = faults.clear(kube_mesh.read(cluster, NAMESPACE))
    assert kube_mesh.apply(cluster, NAMESPACE, cleared, topology()) == ["applied virtualservice/license"]

    assert len(fake.requests("PATCH")) == 2
    assert specs(kube_mesh.read(cluster, NAMESPACE)) == specs(resources.load())
    # Nothing left to change: nothing sent.
    assert kube_mesh.apply(cluster, NAMESPACE, kube_mesh.read(cluster, NAMESPACE), topology()) == []
    assert len(fake.requests("PATCH")) == 2


def test_a_mesh_with_a_problem_sends_nothing(fake: FakeCluster) -> None:
    cluster = Cluster(fake.api_client)
    mesh = kube_mesh.read(cluster, NAMESPACE)
    (vs,) = [copy.deepcopy(o) for o in mesh.of_kind("VirtualService") if o["metadata"]["name"] == "cas"]
    vs["spec"]["http"].insert(0, {"fault": {"abort": {"percentage": {"value": 150}, "httpStatus": 503}},
                                  "route": [{"destination": {"host": "cas", "port": {"number": 9999}}}]})
    sent = len(fake.requests())

    with pytest.raises(MeshConfigError) as refused:
        kube_mesh.apply(cluster, NAMESPACE, mesh.replaced(vs), topology())

    assert "spec.http.0.fault.abort.percentage.value: 150 is not a percentage" in str(refused.value)
    assert "Service 'cas' has no port 9999" in str(refused.value)
    assert len(fake.requests()) == sent
    with pytest.raises(MeshConfigError, match="kind"):
        kube_mesh.apply(cluster, NAMESPACE, resources.Mesh((*mesh.objects, {"apiVersion": "v1", "kind": "Service",
                                                                             "metadata": {"name": "x"}})), topology())
    assert len(fake.requests()) == sent


def test_an_object_left_out_is_deleted(fake: FakeCluster) -> None:
    cluster = Cluster(fake.api_client)
    mesh = kube_mesh.read(cluster, NAMESPACE)
    without = resources.Mesh(tuple(o for o in mesh.objects
                                   if (o["kind"], o["metadata"]["name"]) != ("AuthorizationPolicy", "cas")))

    assert kube_mesh.apply(cluster, NAMESPACE, without, topology()) == ["deleted authorizationpolicy/cas"]

    (delete,) = fake.requests("DELETE")
    assert delete.url.path == f"/apis/security.istio.io/v1/namespaces/{NAMESPACE}/authorizationpolicies/cas"
    assert fake.requests("PATCH") == []
    assert fake.stored(resource("AuthorizationPolicy"), "cas") is None


def test_without_istio_the_cluster_says_what_to_install() -> None:
    with running_fake_cluster() as fake:
        with pytest.raises(KubeError, match="does not serve PeerAuthentication") as refused:
            kube_mesh.read(Cluster(fake.api_client), NAMESPACE)
        assert "ottlab addons install istio-base istiod" in refused.value.hint


def test_the_kube_target_injects_lists_and_clears_faults_through_the_api_server(fake: FakeCluster,
                                                                                lab_cfg: LabConfig) -> None:
    target = make_target(fake, lab_cfg)
    fault = Fault("cas", abort_status=503, percent=10, header=LESSON)

    faults.inject_on(target, fault)

    (patch,) = fake.requests("PATCH")
    assert patch.url.path == f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/virtualservices/cas"
    assert faults.list_on(target) == [fault]
    with pytest.raises(faults.FaultError, match="cas already has a fault"):
        faults.inject_on(target, Fault("cas", delay_s=1, header=LESSON))
    assert len(fake.requests("PATCH")) == 1

    assert faults.clear_on(target) == [fault]

    assert len(fake.requests("PATCH")) == 2
    assert faults.list_on(target) == []
    assert specs(target.mesh()) == specs(resources.load())
