"""CPU per component on kube: the kubelets' cAdvisor scraped by the lab's Prometheus, as the kube target reads it.

Offline, on every rendered overlay: the shipped Prometheus has a node-discovered job
:data:`labkit.targets.kube.usage.JOB` on the kubelet's ``/metrics/cadvisor`` with the service
account's token, keeping the series :mod:`labkit.targets.kube.usage` queries; the account that
Prometheus' pods run as is bound to a ClusterRole granting exactly node discovery and
``nodes/metrics`` (what the kubelet authorises that path with), applied with the monitoring layer.
Against kmock: :meth:`KubeTarget.cpu_meter` reads CPU per component from a Prometheus (a local
stand-in answering the query API) mapped through the pods the API server lists. Once on a real
cluster (``kube`` marker): the monitoring layer up, the meter names the lab's components.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from _scrape import relabel

from labkit import platform
from labkit.clients import counters
from labkit.clients.prometheus import Prometheus
from labkit.platform.layers import monitoring
from labkit.targets.kube import manifest, usage

NAMESPACE = "ottlab"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay)))


def prometheus_config(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return config


def allows(rules: list[dict[str, Any]], verb: str, resource: str, group: str = "") -> bool:
    """Whether RBAC ``rules`` allow ``verb`` on ``resource`` (``nodes/metrics``: a subresource) of API ``group``."""
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
               for r in rules)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_prometheus_scrapes_each_kubelets_cadvisor_and_keeps_what_labkit_reads(overlay: str) -> None:
    (job,) = [j for j in prometheus_config(rendered(overlay))["scrape_configs"] if j["job_name"] == usage.JOB]
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["node"]
    # The kubelet's own port (the node role's address) over TLS, with the service account's token.
    assert (job["scheme"], job["metrics_path"]) == ("https", "/metrics/cadvisor")
    assert job["authorization"]["credentials_file"] == TOKEN
    node = {"__address__": "172.18.0.2:10250", "__meta_kubernetes_node_name": "kind-control-plane",
            "job": usage.JOB, "__metrics_path__": job["metrics_path"]}
    target = relabel(node, job.get("relabel_configs", []))
    assert target is not None and target["__address__"] == "172.18.0.2:10250" and target["node"] == "kind-control-plane"
    # Of cAdvisor's many series only the ones read are kept (what usage's query selects), of any namespace.
    kept = {name for name in (usage.CPU, usage.MEMORY, "container_network_receive_bytes_total", "machine_cpu_cores")
            if relabel({"__name__": name}, job["metric_relabel_configs"]) is not None}
    assert kept == {usage.CPU, usage.MEMORY}
    assert usage.selector(usage.CPU, NAMESPACE).startswith(f'{usage.CPU}{{job="{usage.JOB}"')


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_prometheus_account_may_list_nodes_and_read_their_metrics_and_no_more(overlay: str) -> None:
    objects = manifest.of_layers(list(rendered(overlay)), [monitoring.LAYER.name])
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "prometheus"]
    pod = deployment["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert pod.get("automountServiceAccountToken", True), "Prometheus needs its token for the API and kubelets"
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"
                  and {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in o["subjects"]]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == binding["roleRef"]["name"]]
    assert role["metadata"]["name"] == usage.CLUSTER_ROLE and binding["roleRef"]["kind"] == "ClusterRole"
    rules = role["rules"]
    for verb in ("list", "watch"):
        assert allows(rules, verb, "nodes")
    assert allows(rules, "get", "nodes/metrics")
    # Not the kubelet's proxy (exec, logs), not anything else of the cluster.
    assert not allows(rules, "get", "nodes/proxy") and not any("*" in r["resources"] + r["verbs"] for r in rules)
    assert {res for r in rules for res in r["resources"]} == {"nodes", "nodes/metrics"}
    # `ottlab down` finds them by the lab's label (cluster-scoped: no namespace to delete them with).
    for obj in (role, binding):
        assert obj["metadata"]["labels"][manifest.PART_OF_LABEL] == manifest.PART_OF
        assert "namespace" not in obj["metadata"]


# -- the kube target's meter, against kmock and a stand-in Prometheus ----------------------------


class _QueryApi(BaseHTTPRequestHandler):
    """Prometheus' /api/v1/query for a range selector: the series ``answers`` holds (labels, [(t, value)])."""

    answers: ClassVar[list[tuple[dict[str, str], list[tuple[float, float]]]]] = []
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        type(self).asked.append(query)
        result = [{"metric": labels, "values": [[t, str(v)] for t, v in samples]} for labels, samples in self.answers]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def stand_in_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QueryApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_meter_maps_each_containers_cpu_to_its_component_from_a_real_query(stand_in_prometheus: str) -> None:
    _QueryApi.asked = []
    _QueryApi.answers = [
        ({"namespace": NAMESPACE, "pod": "edge-0", "container": "edge"}, [(100.0, 4.0), (105.0, 5.0)]),
        ({"namespace": NAMESPACE, "pod": "edge-0", "container": "edge-exporter"}, [(100.0, 1.0), (105.0, 1.5)]),
        ({"namespace": NAMESPACE, "pod": "transcode-sample-x1", "container": "transcoder"}, [(100.0, 60.0)]),
    ]
    pods = {"edge-0": {manifest.NAME_LABEL: "edge"}, "transcode-sample-x1": {manifest.NAME_LABEL: "transcoder-job"}}
    meter = usage.cpu_meter(Prometheus(stand_in_prometheus), NAMESPACE, platform.components(), lambda: pods)
    assert meter() == {"edge": 5.0, "edge-exporter": 1.5}
    (query,) = _QueryApi.asked
    assert query == f"{usage.selector(usage.CPU, NAMESPACE)}[{round(counters.WINDOW_S)}s]"


@pytest.mark.kube
def test_on_a_real_cluster_the_meter_names_the_labs_running_components() -> None:
    from labkit.core.config import LabConfig
    from labkit.targets.kube.target import KubeTarget

    target = KubeTarget(LabConfig.from_env(target="kube"), platform.components())
    try:
        target.up([monitoring.LAYER.name])
        meter = target.cpu_meter()
        used = meter()
        assert {"prometheus", "alertmanager"} <= set(used), used
        assert all(v >= 0 for v in used.values()) and used["prometheus"] > 0, used
    finally:
        target.close()


def test_a_pods_cpu_share_on_kube_is_its_containers_limit_when_below_a_core() -> None:
    from types import SimpleNamespace

    from labkit.targets.base import ComponentStatus
    from labkit.targets.kube.target import KubeTarget

    objects = list(rendered(manifest.default_overlay()))
    limits = usage.cpu_limits(objects)
    assert (limits["edge"], limits["edge-exporter"], limits["auth"]) == (0.5, 0.2, 1.0)
    statuses = [ComponentStatus("edge", "cdn", "running", True, replicas=2),
                ComponentStatus("auth", "apis", "running", True, replicas=3),
                ComponentStatus("prometheus", "monitoring", "stopped", False, replicas=0)]
    fake = SimpleNamespace(_manifests=lambda: objects, status=lambda: statuses)
    # Two PoPs of half a core each; auth's three single-threaded replicas, a core each; nothing for what is stopped.
    assert KubeTarget.cpu_shares(fake) == {"edge": 1.0, "auth": 3.0}  # type: ignore[arg-type]
