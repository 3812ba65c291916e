"""CPU per component on Kubernetes: each container's cAdvisor counter, scraped by the lab's Prometheus.

The kubelet of every node measures its containers (its built-in cAdvisor);
``k8s/base/monitoring/prometheus.yml`` scrapes it as job :data:`JOB` (with the ClusterRole of
``prometheus-rbac.yaml``) and keeps :data:`CPU` and the working-set memory. A series names its
``namespace``, ``pod`` and ``container``; the component is the pod's label
``app.kubernetes.io/name``, except a sidecar's container, which is its own component as on the
local target (``edge-exporter`` in an ``edge`` pod). A pod that is not the lab's (a Job's, another
namespace's) is not counted::

    meter = usage.cpu_meter(prometheus, "ottlab", components, pods=lambda: {"edge-0": {...labels}})
    meter()              # {"edge": 3.2, "edge-exporter": 0.4, ...}, as of meter.lag_s (LAG_S) seconds ago
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labkit.clients.counters import CounterMeter
from labkit.clients.prometheus import Prometheus
from labkit.platform.component import Component
from labkit.platform.hpa import quantity
from labkit.targets.kube.manifest import NAME_LABEL

JOB = "cadvisor"
CPU = "container_cpu_usage_seconds_total"
MEMORY = "container_memory_working_set_bytes"
# A kubelet's cAdvisor refreshes a container's counters every 10-15 s, and Prometheus scrapes them
# every 5 s (keeping cAdvisor's own sample times): a reading 20 s back falls between two samples.
LAG_S = 20.0
# prometheus-rbac.yaml's grant of nodes/metrics to Prometheus' service account.
CLUSTER_ROLE = "ottlab-prometheus-kubelet"
# How long a meter waits for Prometheus to have the lab's series (a kubelet's cAdvisor refreshes every 10-15 s).
SERIES_TIMEOUT = 60.0


def selector(metric: str, namespace: str) -> str:
    """The series of ``metric`` for the containers of ``namespace`` (not a pod's own cgroup, nor its sandbox).

    >>> selector(CPU, "ottlab")
    'container_cpu_usage_seconds_total{job="cadvisor", namespace="ottlab", container!="", container!="POD"}'
    """
    return f'{metric}{{job="{JOB}", namespace="{namespace}", container!="", container!="POD"}}'


def component_of(pod_labels: Mapping[str, str] | None, container: str, components: Sequence[Component]) -> str | None:
    """The component a container's CPU counts for: a sidecar's own, else its pod's; None when not the lab's.

    ``pod_labels`` None: the pod is not one of the lab's.
    """
    if pod_labels is None:
        return None
    declared = {c.name: c for c in components}
    owner = declared.get(pod_labels.get(NAME_LABEL, ""))
    if owner is None:
        return None
    sidecar = declared.get(container)
    if sidecar is not None and sidecar.follows == owner.name:
        return sidecar.name
    return owner.name


def cpu_limits(objects: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The CPU limit, in cores, of each workload's containers, by container (each named after its component)."""
    found = {}
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                limit = ((container.get("resources") or {}).get("limits") or {}).get("cpu")
                if limit is not None:
                    found[container["name"]] = quantity(limit)
    return found


def cpu_meter(prometheus: Prometheus, namespace: str, components: Sequence[Component],
              pods: Callable[[], Mapping[str, Mapping[str, str]]]) -> Callable[[], dict[str, float]]:
    """A reader of CPU seconds per component in ``namespace``; ``pods`` lists the lab's pods' labels by name.

    The pods are listed once, and again when a series names a pod not seen yet (a replica the
    autoscaler added): once per such pod.
    """
    known: dict[str, Mapping[str, str]] = dict(pods())
    listed_for: set[str] = set()

    def component(labels: Mapping[str, str]) -> str | None:
        pod = labels.get("pod", "")
        if pod not in known and pod not in listed_for:
            listed_for.add(pod)
            known.update(pods())
        return component_of(known.get(pod), labels.get("container", ""), components)

    return CounterMeter(prometheus, selector(CPU, namespace), component, lag_s=LAG_S)
