"""What Prometheus would scrape on Kubernetes, worked out offline from the rendered manifests.

Prometheus' Kubernetes service discovery (role ``pod``) gives each container port of each pod a
set of ``__meta_kubernetes_pod_*`` labels; the scrape config's ``relabel_configs`` turn them into
the target's address, metrics path and labels. No cluster runs here, so :func:`discovered` makes
those labels from a pod template as the documentation lists them, and :func:`relabel` applies
the rules with Prometheus' semantics (anchored regexes, ``;`` separator, ``$1`` replacement,
an empty result deleting the label), for the actions ``replace``, ``keep``, ``drop``,
``labelmap``, ``labelkeep`` and ``labeldrop``: the lab uses no other, and an unknown one is an
error rather than a silent pass.

https://prometheus.io/docs/prometheus/latest/configuration/configuration/#relabel_config
https://prometheus.io/docs/prometheus/latest/configuration/configuration/#kubernetes_sd_config
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The address Prometheus would see for every pod: only its port matters here.
POD_IP = "10.0.0.7"
DEFAULTS: dict[str, Any] = {"action": "replace", "separator": ";", "regex": "(.*)", "replacement": "$1"}


def sanitize(name: str) -> str:
    """A Kubernetes label or annotation name as a Prometheus label name suffix."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _expand(template: str, match: re.Match[str]) -> str:
    """Go's regexp Expand, as Prometheus uses it: ``$1``, ``${1}``, ``$name``; a missing group is empty."""

    def group(m: re.Match[str]) -> str:
        key = m.group(1) or m.group(2)
        try:
            value = match.group(int(key) if key.isdigit() else key)
        except IndexError:  # no such group
            return ""
        return value or ""

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", group, template)


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """``labels`` after ``rules``, or None when a rule drops the target."""
    out = dict(labels)
    for given in rules:
        rule = {**DEFAULTS, **given}
        regex = re.compile(f"^(?:{rule['regex']})$")
        action = rule["action"]
        value = rule["separator"].join(out.get(s, "") for s in rule.get("source_labels", []))
        if action == "keep":
            if not regex.match(value):
                return None
        elif action == "drop":
            if regex.match(value):
                return None
        elif action == "replace":
            match = regex.match(value)
            if match is None:
                continue
            target = _expand(rule["target_label"], match)
            result = _expand(rule["replacement"], match)
            if result:
                out[target] = result
            else:
                out.pop(target, None)
        elif action == "labelmap":
            for name, label_value in list(out.items()):
                if match := regex.match(name):
                    out[_expand(rule["replacement"], match)] = label_value
        elif action == "labeldrop":
            out = {k: v for k, v in out.items() if not regex.match(k)}
        elif action == "labelkeep":
            out = {k: v for k, v in out.items() if regex.match(k)}
        else:
            raise NotImplementedError(f"relabel action {action!r}: teach tests/_scrape.py its semantics first")
    return out


def discovered(workload: dict[str, Any], namespace: str) -> list[dict[str, str]]:
    """The labels the pod role gives one running pod of ``workload``: one set per container port."""
    template = workload["spec"]["template"]
    meta = template.get("metadata", {})
    pod = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": f"{workload['metadata']['name']}-0",
        "__meta_kubernetes_pod_ip": POD_IP,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_controller_kind": workload["kind"],
        "__meta_kubernetes_pod_controller_name": workload["metadata"]["name"],
    }
    for kind, key in (("label", "labels"), ("annotation", "annotations")):
        for name, value in (meta.get(key) or {}).items():
            pod[f"__meta_kubernetes_pod_{kind}_{sanitize(name)}"] = str(value)
            pod[f"__meta_kubernetes_pod_{kind}present_{sanitize(name)}"] = "true"
    found = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            found.append({
                **pod,
                "__address__": f"{POD_IP}:{port['containerPort']}",
                "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            })
    return found


@dataclass(frozen=True)
class ScrapeTarget:
    """One target as Prometheus would list it: where it scrapes, and the labels its series get."""

    workload: str
    container: str
    port: int
    metrics_path: str
    labels: tuple[tuple[str, str], ...]

    @property
    def job(self) -> str:
        return dict(self.labels)["job"]


def targets(config: dict[str, Any], objects: tuple[dict[str, Any], ...] | list[dict[str, Any]],
            namespace: str) -> list[ScrapeTarget]:
    """Every target the Kubernetes pod scrape configs of ``config`` make of the workloads in ``objects``.

    Duplicates (one pod discovered once per port, rewritten to the same address) collapse, as in Prometheus.
    """
    found: dict[tuple[str, str, str], ScrapeTarget] = {}
    for job in config["scrape_configs"]:
        if not any(sd.get("role") == "pod" for sd in job.get("kubernetes_sd_configs", [])):
            continue
        for workload in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}):
            for labels in discovered(workload, namespace):
                initial = {**labels, "job": job["job_name"], "__metrics_path__": job.get("metrics_path", "/metrics"),
                           "__scheme__": job.get("scheme", "http")}
                result = relabel(initial, job.get("relabel_configs", []))
                if result is None or not result.get("__address__"):
                    continue
                result.setdefault("instance", result["__address__"])
                port = int(result["__address__"].rsplit(":", 1)[1])
                (container,) = [c["name"] for c in workload["spec"]["template"]["spec"]["containers"]
                                if port in {p["containerPort"] for p in c.get("ports", [])}] or ["?"]
                public = tuple(sorted((k, v) for k, v in result.items() if not k.startswith("__")))
                key = (workload["metadata"]["name"], result["__address__"], result["__metrics_path__"])
                found[key] = ScrapeTarget(workload["metadata"]["name"], container, port,
                                          result["__metrics_path__"], public)
    return list(found.values())
