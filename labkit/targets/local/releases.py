"""A service's second release on the local target (the canary of notebook 05): catalog v2 behind its own sidecar.

:meth:`LocalTarget.start_version` records the release in the run directory (``releases.json``,
forgotten by ``down``); from then on :func:`labkit.targets.local.mesh.components` adds two
components after the service's own, as a second Deployment adds its pods:

- ``catalog-v2``, the service's program with ``OTT_VERSION=v2``, on a unix socket of its own;
- ``catalog-v2-proxy``, its Envoy sidecar, rendered like catalog's (same identity, same policies)
  but with the pod label ``version: v2``: peers' clusters of the DestinationRule's subset v2
  (``outbound|8000|v2|catalog.ottlab.svc.cluster.local``) hold its replicas, those of v1 catalog's.

Their ports are catalog's moved to a block of their own (:data:`BLOCKS`). Prometheus scrapes the
release as the service's job (``catalog``), as the pods of both Deployments are on kube.
"""

from __future__ import annotations

import json
from dataclasses import replace

from labkit.core.config import LabConfig
from labkit.platform.component import Component, Port
from labkit.platform.mesh import releases

FILE = "releases.json"
# Where each release's ports are: its sidecar's admin, health and outbound ports from the first, the
# port its sidecar takes callers on at the second (above the sidecars of labkit.targets.local.mesh).
BLOCKS = {"catalog-v2": (760, 790)}


def running(cfg: LabConfig) -> list[str]:
    """The releases started in this lab (``catalog-v2``), in the order they were."""
    try:
        names = json.loads((cfg.run_dir / FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in names if str(n) in BLOCKS] if isinstance(names, list) else []


def record(cfg: LabConfig, names: list[str]) -> None:
    path = cfg.run_dir / FILE
    if not names:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(names))


def service_of(name: str) -> tuple[str, str]:
    """(service, version) of a release's name: ``catalog-v2`` -> ("catalog", "v2")."""
    service, _, version = name.rpartition("-")
    return service, version


def labels(name: str) -> dict[str, str]:
    """The pod labels of workload ``name``: ``version`` for a service with releases (v1: the declared one)."""
    service, version = service_of(name) if name in BLOCKS else (name, None)
    return releases.labels(service, version)


def components(name: str, service: Component, proxy: Component) -> tuple[Component, Component]:
    """Release ``name`` of ``service`` (as the mesh runs it) and its sidecar ``proxy``, moved to its own ports."""
    base, http = BLOCKS[name]
    shift = base - proxy.port("http").offset
    env = {**service.env, "OTT_VERSION": service_of(name)[1],
           "OTT_UDS": service.env["OTT_UDS"].replace(f"/{service.name}-", f"/{name}-")}
    moved = tuple(Port(p.name, http if p.name == "http" else p.offset + shift, p.container) for p in service.ports)
    release = replace(service, name=name, env=env, ports=moved, job=service.scrape_job,
                      description=f"{service.name}'s release {service_of(name)[1]} (a canary): {service.description}")
    sidecar = replace(proxy, name=f"{name}-proxy", follows=name, args=tuple(a.replace(proxy.name, f"{name}-proxy")
                                                                          for a in proxy.args),
                      ports=tuple(replace(p, offset=p.offset + shift) for p in proxy.ports),
                      description=f"Envoy sidecar of {name}: mTLS, authorization, retries, faults")
    return release, sidecar
