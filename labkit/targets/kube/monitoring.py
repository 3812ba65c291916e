"""The monitoring layer on a cluster with the lab's alert timing, as the local target runs it.

The committed ConfigMaps (``prometheus-rules``, ``prometheus-config``, ``alertmanager-config``)
carry the real timing. A lab with ``OTTLAB_ALERT_TIMING=fast`` (or ``CI=true``:
:func:`labkit.platform.layers.monitoring.alerting.timing_from`) runs the rules with their ``for:``
scaled, a 2 s evaluation and Alertmanager's short group wait, locally and on kube alike, so that a
notebook derives its windows from the timing the cluster runs. The kube target rewrites those
files' data before applying them (:func:`with_alert_timing`) and stamps the timing on the pod
templates that mount them, so that a change of timing rolls Prometheus and Alertmanager.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import yaml

from labkit import platform
from labkit.platform.layers.monitoring import RULES_CONFIG, alerting
from labkit.platform.mesh import STATS_JOB
from labkit.targets.kube import manifest
from labkit.targets.kube import mesh as kube_mesh
from labkit.targets.kube.manifest import KubeObject

PROMETHEUS_CONFIG = "prometheus.yml"
ALERTMANAGER_CONFIG = "alertmanager.yml"
TIMING_ANNOTATION = "ottlab.io/alert-timing"
# The Namespace label asking Istio to inject its sidecar into the namespace's pods (k8s/components/mesh).
ISTIO_INJECTION = "istio-injection"


def files(timing: alerting.Timing, prometheus_yml: str) -> dict[str, str]:
    """The three files with ``timing``: the rules, Alertmanager's configuration, and ``prometheus_yml``
    (the committed one) with the timing's evaluation interval."""
    config = yaml.safe_load(prometheus_yml)
    config["global"]["evaluation_interval"] = timing.evaluation_interval
    return {
        RULES_CONFIG: alerting.dump(alerting.rules(timing)),
        ALERTMANAGER_CONFIG: alerting.dump(alerting.alertmanager_config(timing)),
        PROMETHEUS_CONFIG: yaml.safe_dump(config, sort_keys=False),
    }


def with_alert_timing(objects: Iterable[KubeObject], timing: alerting.Timing) -> list[KubeObject]:
    """``objects`` as the lab with ``timing`` runs them: unchanged for the real timing (the committed files)."""
    objects = list(objects)
    if timing == alerting.REAL:
        return objects
    changed: set[str] = set()
    out = []
    for obj in objects:
        data = obj.get("data") or {}
        if obj.get("kind") == "ConfigMap" and set(data) & {RULES_CONFIG, ALERTMANAGER_CONFIG, PROMETHEUS_CONFIG}:
            prometheus_yml = str(data.get(PROMETHEUS_CONFIG) or "global: {}\n")
            timed = files(timing, prometheus_yml)
            obj = {**obj, "data": {k: timed.get(k, v) for k, v in data.items()}}
            changed.add(manifest.name(obj))
        out.append(obj)
    return [_stamped(o, timing) if _mounts(o, changed) else o for o in out]


def scrape_jobs(objects: Iterable[KubeObject], layers: Sequence[str] | None = None) -> list[str]:
    """The jobs the lab's Prometheus makes of what ``up(layers)`` applies of ``objects`` (a rendered overlay).

    Each component's declared job (:func:`labkit.platform.scrape_jobs`: its pods' ``prometheus.io/job``)
    and, where the namespace asks Istio for injection (the mesh component) and a workload of those
    layers is meshed, the sidecars' own statistics as the job :data:`~labkit.platform.mesh.STATS_JOB`.
    """
    chosen = manifest.of_layers(objects, layers)
    injecting = any(o.get("kind") == "Namespace" and manifest.labels(o).get(ISTIO_INJECTION) == "enabled"
                    for o in chosen)
    meshed = injecting and any(o.get("kind") in ("Deployment", "StatefulSet") and kube_mesh.meshed(o)
                               for o in chosen)
    return list(dict.fromkeys([*platform.scrape_jobs(layers), *([STATS_JOB] if meshed else [])]))


def _mounts(obj: KubeObject, config_maps: set[str]) -> bool:
    if obj.get("kind") not in ("Deployment", "StatefulSet"):
        return False
    volumes = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
    return any((v.get("configMap") or {}).get("name") in config_maps for v in volumes)


def _stamped(obj: KubeObject, timing: alerting.Timing) -> KubeObject:
    spec = dict(obj["spec"])
    template = dict(spec["template"])
    metadata = dict(template.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), TIMING_ANNOTATION: timing.name}
    template["metadata"] = metadata
    spec["template"] = template
    return {**obj, "spec": spec}
