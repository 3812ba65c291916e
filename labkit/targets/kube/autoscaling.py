"""The lab's HorizontalPodAutoscalers on a cluster: applied, deleted and read through the API server.

The objects are the overlay's render of ``k8s/base/autoscaling``; the cluster's own HPA controller
acts on them (CPU from metrics-server, the custom metrics from prometheus-adapter: ``ottlab addons
install metrics-server prometheus-adapter``). What the lab reports is the objects' ``status``: the
metrics' current values, current and desired replicas, and the conditions with their reasons
(AbleToScale, ScalingActive, ScalingLimited).

A decision is one status the controller wrote at a sync: it writes the metrics it computed and
the replicas it chose together, and the API server stamps the time in the status' managedFields
entry (a sync that changed nothing writes nothing). :class:`History` keeps each one this process
reads (``last``: that time), as the local controller keeps its own; a rescale's reason ("All
metrics below target", "pods metric ott_edge_sessions above target") is the controller's
SuccessfulRescale event of that size.

Example::

    apply(cluster, "ottlab", objects, components)     # + the checks first
    status(cluster, "ottlab", objects)                 # one AutoscalerStatus per HPA
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from labkit.core.console import progress
from labkit.core.errors import ConfigError
from labkit.platform import hpa
from labkit.platform.component import Component
from labkit.targets.base import AutoscalerStatus
from labkit.targets.kube import manifest
from labkit.targets.kube.cluster import Cluster, ResourceType
from labkit.targets.kube.manifest import KubeObject

HPAS = ResourceType(hpa.API_VERSION, hpa.KIND, "horizontalpodautoscalers", namespaced=True)
EVENTS = ResourceType("v1", "Event", "events", namespaced=True)
# The HPA controller's event when it changed a workload's scale: "New size: 4; reason: <why>".
RESCALED = "SuccessfulRescale"


class History:
    """The decisions (status writes) of each HPA this process has read, oldest first; the target keeps one."""

    def __init__(self) -> None:
        self.decisions: dict[str, list[dict[str, Any]]] = {}

    def record(self, name: str, decision: dict[str, Any] | None) -> list[dict[str, Any]]:
        """``decision`` added unless it is the one seen last (the same write); every decision of ``name``."""
        seen = self.decisions.setdefault(name, [])
        if decision is not None and (not seen or seen[-1]["last"] != decision["last"]):
            seen.append(decision)
        return list(seen)


def checked(objects: Sequence[KubeObject], components: Sequence[Component], *,
            scale_down_window: float | None = None,
            metric_targets: Mapping[str, float] | None = None) -> list[KubeObject]:
    """The rendered HPAs, refused with a ConfigError when one cannot work; adjusted as ``Target.autoscale`` asks.

    Each must parse (min <= max ...), name a component within its bounds, name a workload of that
    kind in the same render, and ask only for custom metrics a prometheus-adapter rule defines.
    """
    found = manifest.autoscalers(objects)
    if not found:
        raise ConfigError("the rendered manifests hold no HorizontalPodAutoscaler",
                          hint="k8s/base/kustomization.yaml lists autoscaling among its resources")
    workloads = {(str(o.get("kind")), manifest.name(o)) for o in objects if o.get("kind") in hpa.WORKLOADS}
    rules = hpa.adapter_rules()
    parsed = [hpa.parse(o) for o in found]
    hpa.check(parsed, components)
    for obj, h in zip(found, parsed, strict=True):
        ref = obj["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) not in workloads:
            raise ConfigError(f"HorizontalPodAutoscaler {h.name} scales {ref['kind']} {ref['name']}, "
                              "which the manifests do not declare",
                              hint=f"name the kind the component runs as: {_kinds_of(workloads, ref['name'])}")
        for m in h.metrics:
            if not m.is_cpu and m.name not in rules:
                raise ConfigError(f"HorizontalPodAutoscaler {h.name}: no prometheus-adapter rule defines {m.name!r}",
                                  hint=f"add one to {hpa.adapter_values_file()} (rules.custom, name.as)")
    hpa.check_metric_targets(parsed, metric_targets)
    adjusted = []
    for obj in found:
        copied = copy.deepcopy(obj)
        if scale_down_window is not None:
            behavior = copied["spec"].setdefault("behavior", {})
            behavior.setdefault("scaleDown", {})["stabilizationWindowSeconds"] = int(scale_down_window)
        for entry in copied["spec"]["metrics"]:
            body = entry.get("resource") or entry.get("pods") or {}
            name = str(body.get("name") or (body.get("metric") or {}).get("name"))
            if metric_targets and name in metric_targets:
                goal = body["target"]
                if goal.get("type") == "Utilization":
                    goal["averageUtilization"] = round(metric_targets[name])
                else:
                    goal["averageValue"] = _quantity(metric_targets[name])
        adjusted.append(copied)
    return adjusted


def apply(cluster: Cluster, namespace: str, objects: Sequence[KubeObject]) -> None:
    """Server-side apply the HPAs (field manager labkit), like ``up`` applies the rest."""
    for obj in objects:
        cluster.apply(obj, namespace=namespace)
        progress(f"  applied {manifest.ref(obj)}")


def delete(cluster: Cluster, namespace: str, objects: Sequence[KubeObject]) -> None:
    """Delete the HPAs; the workloads keep the replicas they have."""
    for obj in objects:
        if cluster.delete(HPAS, manifest.name(obj), namespace):
            progress(f"  deleted {manifest.ref(obj)}")


def status(cluster: Cluster, namespace: str, objects: Sequence[KubeObject],
           history: History | None = None) -> list[AutoscalerStatus]:
    """One row per declared HPA, from the live object's status (inactive when it is not on the cluster).

    Its decisions: those ``history`` holds, the status written last included (without a history, that one).
    """
    history = history if history is not None else History()
    rows = []
    for obj in manifest.autoscalers(objects):
        declared = hpa.parse(obj)
        live = cluster.get(HPAS, manifest.name(obj), namespace)
        if live is None:
            rows.append(AutoscalerStatus(declared.name, declared.target, False,
                                         [{"metric": m.name, "current": None, "target": m.target}
                                          for m in declared.metrics], decisions=history.record(declared.name, None)))
            continue
        state = live.get("status") or {}
        current = _current_metrics(state.get("currentMetrics") or [])
        metrics = [{"metric": m.name, "current": current.get(m.name), "target": m.target} for m in declared.metrics]
        rows.append(AutoscalerStatus(declared.name, declared.target, True, metrics, state.get("currentReplicas"),
                                     state.get("desiredReplicas"),
                                     history.record(declared.name, _decision(cluster, namespace, live, metrics))))
    return rows


def _decision(cluster: Cluster, namespace: str, live: KubeObject,
              metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The decision the controller's last status write holds; None before it wrote one."""
    written = _status_written(live)
    if written is None:
        return None
    state = live.get("status") or {}
    conditions = {str(c.get("type")): c for c in state.get("conditions") or []}
    current, desired = state.get("currentReplicas"), state.get("desiredReplicas")
    message = "; ".join(f"{kind}={c.get('status')}: {c.get('message', '')}" for kind, c in sorted(conditions.items()))
    if desired is not None and desired != current:
        message = _rescale_reason(cluster, namespace, manifest.name(live), int(desired)) or message
    return {"at": written, "last": written, "current": current, "desired": desired,
            "reason": (conditions.get("AbleToScale") or {}).get("reason"), "metrics": metrics, "message": message}


def _status_written(live: KubeObject) -> float | None:
    """When the status was written last (its managedFields entry's time; the controller's when it has one)."""
    entries = [e for e in (live.get("metadata") or {}).get("managedFields") or [] if e.get("subresource") == "status"]
    times = [t for t in (_epoch(e.get("time")) for e in entries) if t is not None]
    return max(times) if times else None


def _rescale_reason(cluster: Cluster, namespace: str, name: str, size: int) -> str:
    """Why the controller set ``size`` replicas, as its newest SuccessfulRescale event of that size says; "" if none."""
    answer = cluster.request("GET", EVENTS.path(namespace), allow_missing=True, query={
        "fieldSelector": f"involvedObject.kind={hpa.KIND},involvedObject.name={name},reason={RESCALED}"})
    prefix = f"New size: {size}; reason: "
    found = [e for e in (answer or {}).get("items") or []
             if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == RESCALED
             and str(e.get("message", "")).startswith(prefix)]
    found.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(found[-1]["message"])[len(prefix):] if found else ""


def _current_metrics(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    """status.currentMetrics by metric name: a utilization in percent, a value as a number."""
    values: dict[str, float] = {}
    for entry in entries:
        if entry.get("type") == "Resource":
            body = entry.get("resource") or {}
            now = body.get("current") or {}
            if "averageUtilization" in now:
                values[str(body.get("name"))] = float(now["averageUtilization"])
        elif entry.get("type") == "Pods":
            body = entry.get("pods") or {}
            now = body.get("current") or {}
            if "averageValue" in now:
                values[str((body.get("metric") or {}).get("name"))] = hpa.quantity(now["averageValue"])
    return values


def _quantity(value: float) -> str:
    """A Kubernetes quantity for ``value``: whole numbers as they are, else in milli-units (``1500m``)."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def _epoch(stamp: object) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _kinds_of(workloads: set[tuple[str, str]], name: str) -> str:
    kinds = sorted(kind for kind, each in workloads if each == name)
    return " or ".join(f"{k} {name}" for k in kinds) or f"(no workload named {name})"
