"""A service's second release on a cluster (the canary of notebook 05): the Deployments of ``k8s/components/canary``.

:func:`deployment` finds release ``<service>-<version>`` among the lab's manifests rendered with
that component (and the lab's database component, whose patches reach it); :func:`start` applies
it server-side and waits for its rollout; :func:`stop` deletes it, refused first while the mesh
in force still sends it requests. :func:`running` is what the mesh's checks may count on: the
release Deployments the cluster has now.

Example::

    objects = manifest.render(overlay, components=(COMPONENT, "mesh"))
    start(cluster, "ottlab", deployment(objects, "catalog", "v2"), timeout=120)
"""

from __future__ import annotations

from collections.abc import Sequence

from labkit.core.console import progress
from labkit.core.errors import ConfigError
from labkit.platform.mesh import releases
from labkit.platform.mesh.resources import Mesh, Topology, check
from labkit.targets.kube import manifest, rollout
from labkit.targets.kube.cluster import DEPLOYMENTS, Cluster
from labkit.targets.kube.manifest import KubeObject

# The kustomize component of the second releases (listed before the database's: its patches reach them).
COMPONENT = "canary"


def _pod_labels(obj: KubeObject) -> dict[str, str]:
    return dict(obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {})


def deployments(objects: Sequence[KubeObject]) -> list[KubeObject]:
    """The second releases' Deployments among ``objects``: named ``<service>-<version>`` of a declared release."""
    found = []
    for obj in objects:
        labels = _pod_labels(obj)
        service, version = labels.get(manifest.NAME_LABEL, ""), labels.get(releases.VERSION_LABEL, "")
        if obj.get("kind") == "Deployment" and version in releases.RELEASES.get(service, ())[1:]:
            found.append(obj)
    return found


def deployment(objects: Sequence[KubeObject], service: str, version: str) -> KubeObject:
    """Release ``version`` of ``service`` among ``objects``; a :class:`ConfigError` when it has none."""
    name = releases.name(service, version)
    for obj in deployments(objects):
        if manifest.name(obj) == name:
            return obj
    raise ConfigError(f"no deployment/{name} in the manifests rendered with k8s/components/{COMPONENT}",
                      hint=f"add it to k8s/components/{COMPONENT}/kustomization.yaml")


def running(cluster: Cluster, namespace: str, objects: Sequence[KubeObject]) -> list[KubeObject]:
    """Those of ``objects``' release Deployments the cluster has now (as declared, for the mesh's topology)."""
    return [o for o in deployments(objects) if cluster.get(DEPLOYMENTS, manifest.name(o), namespace) is not None]


def start(cluster: Cluster, namespace: str, obj: KubeObject, timeout: float) -> KubeObject | None:
    """Apply release ``obj`` and wait for its rollout; the Deployment as the cluster has it then."""
    name = manifest.name(obj)
    cluster.apply(obj, namespace=namespace)
    progress(f"  applied deployment/{name}")
    rollout.wait_all(cluster, namespace, [name], timeout, kinds={name: DEPLOYMENTS})
    return cluster.get(DEPLOYMENTS, name, namespace)


def stop(cluster: Cluster, namespace: str, obj: KubeObject, mesh: Mesh, without: Topology) -> None:
    """Delete release ``obj``, unless ``mesh`` still routes requests to it (checked against ``without`` it)."""
    name = manifest.name(obj)
    with releases.stopping(name):
        check(mesh, without)
    if cluster.delete(DEPLOYMENTS, name, namespace):
        progress(f"  deleted deployment/{name}")
    else:
        progress(f"  deployment/{name} was not there")
