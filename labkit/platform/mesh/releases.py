"""A service's releases side by side (a canary): catalog v1, as declared, and v2 a lesson runs beside it.

The pods of each release carry the label ``version: <release>`` (Istio's Bookinfo does the same),
the Service of the service selects them all, and the DestinationRule's subsets tell them apart;
the VirtualService's weights say which share of the requests each release gets. The second
release is the same program with ``OTT_VERSION`` set (every answer says ``X-OTT-Version``), a
Deployment of ``k8s/components/canary`` on kube, supervised processes behind a sidecar of their
own on the local target; on both it is named ``<service>-<version>`` (``catalog-v2``).

Example::

    target.start_version("catalog", "v2")
    target.apply_mesh(target.mesh().replaced(releases.split("catalog", {"v1": 90, "v2": 10}, target.mesh())))
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from labkit.core.errors import ConfigError
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.resources import Mesh, Resource

VERSION_LABEL = "version"
# Each service with releases: the declared one's version first, then those a lesson may run beside it.
RELEASES: Mapping[str, tuple[str, ...]] = {"catalog": ("v1", "v2")}


def declared(service: str) -> str | None:
    """The version label of ``service``'s declared pods, None when it has no releases."""
    versions = RELEASES.get(service)
    return versions[0] if versions else None


def labels(service: str, version: str | None = None) -> dict[str, str]:
    """The label telling ``service``'s releases apart on its pods (``{"version": "v1"}``: the declared one's); {}."""
    release = declared(service)
    return {} if release is None else {VERSION_LABEL: version or release}


def name(service: str, version: str) -> str:
    """``catalog-v2``: the workload of ``service``'s release ``version`` (not the declared one); else a ConfigError."""
    extra = RELEASES.get(service, ())[1:]
    if version not in extra:
        known = ", ".join(f"{s} {v}" for s, versions in RELEASES.items() for v in versions[1:])
        raise ConfigError(f"{service} has no release {version!r} to run beside its declared one",
                          hint=f"a second release is declared for: {known}")
    return f"{service}-{version}"


def split(service: str, weights: Mapping[str, int], mesh: Mesh) -> Resource:
    """``service``'s VirtualService in ``mesh`` with its last route sent to the releases by ``weights`` (percent).

    The route keeps its timeout and retries; only its destinations change, one per release, each
    the DestinationRule's subset of that name. Checked later, by ``apply_mesh``: weights that do
    not sum to 100, a subset no DestinationRule declares or no pod has.
    """
    found = [v for v in mesh.of_kind("VirtualService") if v["metadata"]["name"] == service]
    if not found:
        raise MeshConfigError(f"no VirtualService {service!r} in the mesh",
                              hint="a release's share is set on the VirtualService of its service")
    vs = copy.deepcopy(found[0])
    route = vs["spec"]["http"][-1]
    destination = {k: v for k, v in route["route"][0]["destination"].items() if k != "subset"}
    route["route"] = [{"destination": {**destination, "subset": version}, "weight": weight}
                      for version, weight in weights.items()]
    return vs


def shares(mesh: Mesh, service: str) -> dict[str, int]:
    """The weight (percent) of each subset on ``service``'s last route in ``mesh``: ``{"v1": 90, "v2": 10}``."""
    vs = next(v for v in mesh.of_kind("VirtualService") if v["metadata"]["name"] == service)
    route = vs["spec"]["http"][-1]["route"]
    return {str(d["destination"].get("subset", "")): int(d.get("weight", 100 if len(route) == 1 else 0))
            for d in route}


@contextmanager
def stopping(release: str) -> Iterator[None]:
    """Around checking the mesh in force without ``release``: its refusal says ``release`` cannot stop, and why.

    Example::

        with releases.stopping("catalog-v2"):
            resources.check(mesh, topology_without_it)
    """
    try:
        yield
    except MeshConfigError as exc:
        raise MeshConfigError(f"{release} cannot stop: the mesh in force still sends it requests. {exc.message}",
                              hint="give its subset weight 0 first (target.apply_mesh), then stop it") from None
