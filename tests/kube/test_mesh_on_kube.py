"""The mesh on the kube target, offline: what Istio's injector makes of the rendered pods, and what Prometheus scrapes.

The lab with the mesh is the overlay plus k8s/components/mesh. No cluster runs here, so
:func:`injected` does to a pod template what Istio's sidecar injector does to the pod (its
``applyPrometheusMerge`` and the ``istio-proxy`` container with its port ``http-envoy-prom``),
and the shipped Prometheus configuration's relabelling (tests/_scrape.py) says what is scraped:

- every meshed service's own metrics stay scrapable, under STRICT mTLS too: through metrics
  merging (its sidecar's agent at :15020), as the job the local target names it;
- every port Prometheus scrapes on a meshed pod is one the sidecar does not intercept;
- Envoy's statistics are the job ``envoy-stats`` only, and each sidecar keeps the counters the
  lesson, the panels and the certificate alert read (Istio keeps few by default);
- the PoPs, the origin, the monitoring stack and Jobs stay outside the mesh.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import yaml
from _scrape import relabel, targets

from labkit import platform
from labkit.platform import mesh
from labkit.targets.kube import manifest

NAMESPACE = "ottlab"
MESHED = ("gateway", "auth", "catalog", "subscription", "license", "cas", "qoe", "player", "transcoder")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Istio's sidecar: the agent's merged metrics (statusPort) and Envoy's own statistics.
AGENT_PORT, ENVOY_PROM_PORT = 15020, 15090
# Envoy statistics read on kube as on the local target, in the names Istio's sidecars give them.
READ_STATS = (
    "cluster.outbound|8000||license.ottlab.svc.cluster.local.upstream_rq_timeout",
    "cluster.outbound|8000||license.ottlab.svc.cluster.local.upstream_rq_retry",
    "cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_rq_pending_overflow",
    "cluster.outbound|8000||cas.ottlab.svc.cluster.local.outlier_detection.ejections_enforced_total",
    "cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_rq_completed",
    "cluster.outbound|8000||cas.ottlab.svc.cluster.local.ssl.handshake",
    "cluster.outbound|8000||cas.ottlab.svc.cluster.local.ssl.certificate.default.expiration_unix_time_seconds",
    "listener.0.0.0.0_15006.ssl.handshake",
    "listener.0.0.0.0_15006.ssl.certificate.default.expiration_unix_time_seconds",
    "http.inbound_0.0.0.0_8000.rbac.denied",
    "http.outbound_0.0.0.0_8000.fault.delays_injected",
)


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay), components=("mesh",)))


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    return {manifest.name(o): o for o in rendered(overlay) if o["kind"] in WORKLOAD_KINDS}


def prometheus_config(overlay: str) -> dict[str, Any]:
    (config_map,) = [o for o in rendered(overlay) if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return config


def injected(workload: dict[str, Any]) -> dict[str, Any]:
    """``workload`` with its pods as Istio 1.25's injector leaves them (enablePrometheusMerge on, its default).

    No sidecar for a pod labelled ``sidecar.istio.io/inject: "false"``. Otherwise the container
    istio-proxy (port http-envoy-prom), and, unless the pod says ``prometheus.istio.io/merge-metrics:
    "false"`` or ``prometheus.io/scrape: "false"``, its prometheus.io scrape, port and path
    replaced by the agent's (inject.go, applyPrometheusMerge); other annotations are kept.
    """
    pod = copy.deepcopy(workload)
    meta = pod["spec"]["template"]["metadata"]
    if (meta.get("labels") or {}).get("sidecar.istio.io/inject") == "false":
        return pod
    annotations = meta.setdefault("annotations", {})
    pod["spec"]["template"]["spec"]["containers"].append(
        {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.25.2",
         "ports": [{"name": "http-envoy-prom", "containerPort": ENVOY_PROM_PORT, "protocol": "TCP"}]})
    merge = yaml.safe_load(annotations.get("prometheus.istio.io/merge-metrics", "true"))
    scrape = yaml.safe_load(annotations.get("prometheus.io/scrape", "true"))
    if merge and scrape:
        annotations |= {"prometheus.io/scrape": "true", "prometheus.io/port": str(AGENT_PORT),
                        "prometheus.io/path": "/stats/prometheus"}
    return pod


def uncaptured_ports(workload: dict[str, Any]) -> set[int]:
    """The pod's ports the sidecar lets through without interception: the agent's and Envoy's, and those excluded."""
    annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
    excluded = annotations.get("traffic.sidecar.istio.io/excludeInboundPorts", "")
    return {AGENT_PORT, ENVOY_PROM_PORT, *(int(p) for p in excluded.split(",") if p.strip())}


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_the_meshed_services_own_metrics_are_scraped_through_their_sidecar_as_their_local_job(overlay: str) -> None:
    found = workloads(overlay)
    scraped = {c.name: c for c in platform.components() if c.name in MESHED and c.scrape_job is not None}
    assert set(scraped) == {"auth", "catalog", "subscription", "license", "cas", "qoe", "transcoder"}
    for name, component in scraped.items():
        pod = injected(found[name])
        jobs = {(t.job, t.port, t.metrics_path) for t in targets(prometheus_config(overlay), [pod], NAMESPACE)}
        # The service's port 8000 takes mutual TLS only: Prometheus, outside the mesh, gets them from the agent.
        assert (component.scrape_job, AGENT_PORT, "/stats/prometheus") in jobs, (name, jobs)
        assert (mesh.STATS_JOB, ENVOY_PROM_PORT, "/stats/prometheus") in jobs, (name, jobs)
        assert all(port != 8000 for _, port, _ in jobs), (name, jobs)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_prometheus_reaches_every_target_of_a_meshed_pod_around_the_sidecars_mtls(overlay: str) -> None:
    config = prometheus_config(overlay)
    for name in MESHED:
        pod = injected(workloads(overlay)[name])
        found = targets(config, [pod], NAMESPACE)
        assert found, name
        # No target Prometheus would need a workload certificate for, whatever the mTLS mode.
        assert {t.port for t in found} <= uncaptured_ports(pod), (name, [(t.job, t.port) for t in found])
        # And no job the local target does not have (a pod asking to be scraped without its job).
        assert "kubernetes-pods" not in {t.job for t in found}, name
    # The gateway's and the player's nginx exporters: their port is excluded from the sidecar.
    for name in ("gateway", "player"):
        ports = {t.port for t in targets(config, [injected(workloads(overlay)[name])], NAMESPACE) if t.job == "nginx"}
        assert ports == {9113}, (name, ports)


def test_envoy_series_from_the_merged_endpoint_are_dropped_the_services_own_kept() -> None:
    (pods_job,) = [j for j in prometheus_config("kind")["scrape_configs"] if j["job_name"] == "kubernetes-pods"]
    kept = {name for name in ("envoy_cluster_upstream_rq_total", "istio_requests_total", "istio_agent_go_goroutines",
                              "ott_cas_decisions_total", "ott_http_requests_total", "process_cpu_seconds_total")
            if relabel({"__name__": name, "job": "cas"}, pods_job["metric_relabel_configs"]) is not None}
    assert kept == {"ott_cas_decisions_total", "ott_http_requests_total", "process_cpu_seconds_total"}
    (stats_job,) = [j for j in prometheus_config("kind")["scrape_configs"] if j["job_name"] == mesh.STATS_JOB]
    assert not stats_job.get("metric_relabel_configs"), "the sidecars' own job keeps every Envoy series"


def test_every_sidecar_keeps_the_envoy_statistics_the_lab_reads() -> None:
    for name in MESHED:
        annotations = workloads("kind")[name]["spec"]["template"]["metadata"]["annotations"]
        matcher = yaml.safe_load(annotations["proxy.istio.io/config"])["proxyStatsMatcher"]
        assert set(matcher) <= {"inclusionPrefixes", "inclusionSuffixes", "inclusionRegexps"}, matcher
        prefixes = matcher["inclusionPrefixes"]
        missing = [stat for stat in READ_STATS if not any(stat.startswith(p) for p in prefixes)]
        assert not missing, (name, missing)
        # Not everything: Istio's default keeps the rest small (each listener's and cluster's other stats).
        assert not any("cluster_manager.cds.update_success".startswith(p) for p in prefixes)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_only_the_meshed_workloads_get_a_sidecar(overlay: str) -> None:
    found = workloads(overlay)
    namespace = next(o for o in rendered(overlay) if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    with_sidecar = {name for name, w in found.items()
                    if any(c["name"] == "istio-proxy" for c in injected(w)["spec"]["template"]["spec"]["containers"])}
    assert with_sidecar == set(MESHED)
    # Viewers reach the PoPs and the origin in plaintext at their node ports; Prometheus scrapes pods directly.
    assert {"edge", "origin", "prometheus", "alertmanager"} <= set(found) - with_sidecar
    assert all(w["kind"] != "Job" for name, w in found.items() if name in with_sidecar)
