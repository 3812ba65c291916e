"""The lab's HorizontalPodAutoscalers (autoscaling/v2), read from ``k8s/base/autoscaling/``.

One declaration for both targets: on kube the cluster's HPA controller acts on these objects; on
the local target :mod:`labkit.platform.autoscaler` applies the same algorithm to the same objects.
The custom metrics they name are defined once too, by the prometheus-adapter rules of
``k8s/addons/values/prometheus-adapter.yaml``: :func:`metric_query` renders a rule's
``metricsQuery`` for the local Prometheus.

Example::

    hpas = load()                                   # every HPA under k8s/base/autoscaling
    check(hpas, platform.components())              # a LabError before anything starts
    hpas[0].target, hpas[0].metrics[0].describe()   # ('auth', 'cpu utilization 80%')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit.core.config import repo_root
from labkit.core.errors import ConfigError
from labkit.platform.component import Component

KIND = "HorizontalPodAutoscaler"
API_VERSION = "autoscaling/v2"
# kube-controller-manager's --horizontal-pod-autoscaler-tolerance default.
DEFAULT_TOLERANCE = 0.1
# kube-controller-manager's --horizontal-pod-autoscaler-sync-period default, seconds.
DEFAULT_SYNC_PERIOD = 15.0
# The scaleDown stabilization window when the object sets none (autoscaling/v2 default), seconds.
DEFAULT_SCALE_DOWN_WINDOW = 300
SELECT_POLICIES = ("Max", "Min", "Disabled")
# What a scaleTargetRef may name: a component's workload.
WORKLOADS = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class Policy:
    """One ``behavior`` policy: at most ``value`` Pods (or ``value`` percent) per ``period_seconds``."""

    type: str  # Pods | Percent
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """``behavior.scaleUp`` or ``behavior.scaleDown``, with the autoscaling/v2 defaults filled in."""

    stabilization_window_seconds: int
    policies: tuple[Policy, ...]
    select_policy: str = "Max"


# The defaults the API server fills in (autoscaling/v2 HPAScalingRules).
DEFAULT_SCALE_UP = ScalingRules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Max")
DEFAULT_SCALE_DOWN = ScalingRules(DEFAULT_SCALE_DOWN_WINDOW, (Policy("Percent", 100, 15),), "Max")


@dataclass(frozen=True)
class MetricTarget:
    """One entry of ``spec.metrics``: a Resource (cpu) or Pods metric and its target."""

    type: str  # Resource | Pods
    name: str  # cpu, or the custom metric's name
    target_type: str  # Utilization | AverageValue
    target: float  # percent for Utilization, a plain number (cores for cpu) for AverageValue

    @property
    def is_cpu(self) -> bool:
        return self.type == "Resource" and self.name == "cpu"

    def describe(self) -> str:
        if self.target_type == "Utilization":
            return f"{self.name} utilization {self.target:g}%"
        return f"{self.name} average {self.target:g}"


@dataclass(frozen=True)
class Hpa:
    """A HorizontalPodAutoscaler, as the algorithm needs it."""

    name: str
    target: str  # scaleTargetRef.name: a component (its Deployment)
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricTarget, ...]
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


_SUFFIXES = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)")


def quantity(value: object) -> float:
    """A Kubernetes quantity (``100m``, ``40M``, ``1Gi``, ``2``, ``1e3``) as a number."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        raise ConfigError(f"{value!r} is not a Kubernetes quantity", hint="e.g. 100m, 40M, 1Gi or 2")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def autoscaling_dir() -> Path:
    return repo_root() / "k8s" / "base" / "autoscaling"


def adapter_values_file() -> Path:
    return repo_root() / "k8s" / "addons" / "values" / "prometheus-adapter.yaml"


def load(directory: Path | None = None) -> list[Hpa]:
    """Every HorizontalPodAutoscaler in the YAML files of ``directory`` (k8s/base/autoscaling)."""
    folder = directory or autoscaling_dir()
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}", hint="fix the file") from None
        found += [parse(doc, source=str(path)) for doc in docs if isinstance(doc, dict) and doc.get("kind") == KIND]
    if not found:
        raise ConfigError(f"no HorizontalPodAutoscaler under {folder}", hint="is this checkout complete? (git status)")
    return found


def parse(obj: Mapping[str, Any], *, source: str = "") -> Hpa:
    """An autoscaling/v2 HorizontalPodAutoscaler object (a dict) as an :class:`Hpa`; a ConfigError if malformed."""
    name = str(obj.get("metadata", {}).get("name", "?"))
    where = f"HorizontalPodAutoscaler {name}" + (f" ({source})" if source else "")
    if obj.get("apiVersion") != API_VERSION:
        raise ConfigError(f"{where}: apiVersion is {obj.get('apiVersion')!r}", hint=f"declare {API_VERSION}")
    spec = obj.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    if ref.get("kind") not in WORKLOADS or not ref.get("name"):
        raise ConfigError(f"{where}: scaleTargetRef must name a Deployment or StatefulSet",
                          hint="kind: Deployment (or StatefulSet), name: <component>")
    min_replicas = int(spec.get("minReplicas", 1))
    max_replicas = int(spec.get("maxReplicas", 0))
    if min_replicas < 1:
        raise ConfigError(f"{where}: minReplicas is {min_replicas}", hint="the lab runs at least one replica")
    if min_replicas > max_replicas:
        raise ConfigError(f"{where}: minReplicas ({min_replicas}) is above maxReplicas ({max_replicas})",
                          hint="make minReplicas <= maxReplicas")
    metrics = tuple(_metric(m, where) for m in spec.get("metrics") or [])
    if not metrics:
        raise ConfigError(f"{where}: no metrics", hint="declare at least one metric (type Resource or Pods)")
    behavior = spec.get("behavior") or {}
    return Hpa(
        name=name, target=str(ref["name"]), min_replicas=min_replicas, max_replicas=max_replicas, metrics=metrics,
        scale_up=_rules(behavior.get("scaleUp"), DEFAULT_SCALE_UP, where),
        scale_down=_rules(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN, where),
        source=source, raw=dict(obj),
    )


def _metric(entry: Mapping[str, Any], where: str) -> MetricTarget:
    kind = entry.get("type")
    if kind == "Resource":
        body = entry.get("resource") or {}
        name = str(body.get("name", ""))
        if name != "cpu":
            raise ConfigError(f"{where}: the lab scales on cpu only among resources, not {name!r}",
                              hint="use resource cpu, or a Pods metric")
    elif kind == "Pods":
        body = entry.get("pods") or {}
        name = str((body.get("metric") or {}).get("name", ""))
    else:
        raise ConfigError(f"{where}: metric type {kind!r} is not one the lab supports", hint="use Resource or Pods")
    target = body.get("target") or {}
    if target.get("type") == "Utilization" and kind == "Resource":
        return MetricTarget(kind, name, "Utilization", float(target["averageUtilization"]))
    if target.get("type") == "AverageValue":
        return MetricTarget(kind, name, "AverageValue", quantity(target["averageValue"]))
    raise ConfigError(f"{where}: metric {name!r} has target type {target.get('type')!r}",
                      hint="use Utilization (cpu) or AverageValue")


def _rules(body: Mapping[str, Any] | None, default: ScalingRules, where: str) -> ScalingRules:
    if not body:
        return default
    select = str(body.get("selectPolicy", "Max"))
    if select not in SELECT_POLICIES:
        raise ConfigError(f"{where}: selectPolicy {select!r}", hint=f"one of {', '.join(SELECT_POLICIES)}")
    policies = tuple(Policy(str(p["type"]), int(p["value"]), int(p["periodSeconds"]))
                     for p in body.get("policies") or [])
    for p in policies:
        if p.type not in ("Pods", "Percent") or p.value <= 0 or not 0 < p.period_seconds <= 1800:
            raise ConfigError(f"{where}: policy {p}", hint="type Pods or Percent, value > 0, periodSeconds 1..1800")
    return ScalingRules(
        stabilization_window_seconds=int(body.get("stabilizationWindowSeconds", default.stabilization_window_seconds)),
        policies=policies or default.policies,
        select_policy=select,
    )


def check(hpas: Sequence[Hpa], components: Iterable[Component]) -> None:
    """Each HPA names a component it can scale, within that component's bounds; a ConfigError if not."""
    by_name = {c.name: c for c in components}
    for hpa in hpas:
        comp = by_name.get(hpa.target)
        if comp is None:
            raise ConfigError(f"HorizontalPodAutoscaler {hpa.name} scales {hpa.target!r}, which is no component",
                              hint=f"scaleTargetRef.name is one of: {', '.join(sorted(by_name))}")
        if comp.follows is not None:
            raise ConfigError(f"HorizontalPodAutoscaler {hpa.name} scales {comp.name}, which follows {comp.follows}",
                              hint=f"scale {comp.follows} instead")
        if hpa.max_replicas > comp.max_replicas:
            raise ConfigError(
                f"HorizontalPodAutoscaler {hpa.name}: maxReplicas {hpa.max_replicas} is above "
                f"{comp.name}'s max_replicas ({comp.max_replicas})",
                hint=f"make maxReplicas at most {comp.max_replicas}")


def check_metric_targets(hpas: Sequence[Hpa], metric_targets: Mapping[str, float] | None) -> None:
    """Every metric named in ``metric_targets`` is one an HPA scales on, with a positive target."""
    known = {m.name for h in hpas for m in h.metrics}
    for name, value in (metric_targets or {}).items():
        if name not in known:
            raise ConfigError(f"no HorizontalPodAutoscaler scales on {name!r}",
                              hint=f"name one of: {', '.join(sorted(known))}")
        if not value > 0:
            raise ConfigError(f"the target of {name} must be positive, not {value!r}", hint="e.g. 2e6")


# -- the custom metrics: prometheus-adapter's rules ---------------------------------------------


@dataclass(frozen=True)
class AdapterRule:
    """A prometheus-adapter ``rules.custom`` entry: the series it reads and the query that answers a metric."""

    metric: str  # the name an HPA asks for (name.as)
    series: str  # the Prometheus metric the rule reads
    metrics_query: str


def adapter_rules(path: Path | None = None) -> dict[str, AdapterRule]:
    """The custom metrics the adapter's values file defines, by the name an HPA uses."""
    values = yaml.safe_load((path or adapter_values_file()).read_text()) or {}
    rules: dict[str, AdapterRule] = {}
    for rule in (values.get("rules") or {}).get("custom") or []:
        series = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", str(rule["seriesQuery"]).strip("'\" "))
        if series is None:
            raise ConfigError(f"prometheus-adapter rule {rule!r}: seriesQuery names no metric")
        as_name = str((rule.get("name") or {}).get("as") or series.group(0))
        rules[as_name] = AdapterRule(as_name, series.group(0), str(rule["metricsQuery"]))
    return rules


def metric_query(rule: AdapterRule, matchers: str, group_by: str) -> str:
    """The rule's ``metricsQuery`` with the adapter's template fields filled in, as the adapter does."""
    return (rule.metrics_query.replace("<<.Series>>", rule.series)
            .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by))


def cpu_request(component: str, directory: Path | None = None) -> float:
    """The CPU its pod requests, in cores: the sum of its Deployment's containers' ``resources.requests.cpu``.

    Read from ``k8s/base``: the request the kube HPA's utilization divides by, the local one's too.
    """
    base = directory or repo_root() / "k8s" / "base"
    for path in sorted(base.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in WORKLOADS and doc["metadata"]["name"] == component:
                containers = doc["spec"]["template"]["spec"]["containers"]
                requests = [((c.get("resources") or {}).get("requests") or {}).get("cpu") for c in containers]
                if any(r is None for r in requests):
                    raise ConfigError(f"a container of {doc['kind'].lower()}/{component} ({path}) requests no CPU",
                                      hint="CPU utilization is usage / request: give every container requests.cpu")
                return sum(quantity(r) for r in requests)
    raise ConfigError(f"no Deployment or StatefulSet named {component!r} under {base}",
                      hint="scale a component that has one")
