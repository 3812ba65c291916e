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

import ast
import base64
import copy
import functools
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import nbformat
import pytest
import yaml
from _scrape import relabel, targets
from click.testing import CliRunner
from test_kube_mesh import resource, with_istio
from test_kube_target import (
    POD_REPLY,
    PODS,
    FakeCluster,
    apis_target,
    pod,
    running_fake_cluster,
    settle_deployments,
    write_kubeconfig,
)

from labkit import platform
from labkit.cli import main
from labkit.clients.sidecar import Sidecar, spiffe_uri
from labkit.core.config import LabConfig, repo_root
from labkit.core.errors import ConfigError, KubeError, MissingCapabilityError, NotRunningError
from labkit.platform import mesh
from labkit.platform.mesh import envoy, identity, resources, schema
from labkit.platform.mesh.faults import Fault, ReplicaFault
from labkit.targets.base import Target
from labkit.targets.kube import image, manifest
from labkit.targets.kube import mesh as kube_mesh
from labkit.targets.kube.target import KubeTarget

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
    "http.inbound_0.0.0.0_8000;.rbac.denied",
    "http.outbound_0.0.0.0_8000;.fault.delays_injected",
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


# -- the kube target with the mesh, against the fake API server (kmock) -----------------------


@pytest.fixture
def istio() -> Iterator[FakeCluster]:
    """A fake API server serving Istio's kinds, as a cluster with Istio installed, and holding the committed mesh."""
    with running_fake_cluster() as made:
        yield with_istio(made)


def meshed_pod(component: str, *, sidecar: bool = True) -> dict[str, Any]:
    made = pod(component)
    if sidecar:
        made["spec"]["containers"].append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.25.2",
                                           "ports": [{"name": "http-envoy-prom", "containerPort": ENVOY_PROM_PORT}]})
    return made


def applied(fake: FakeCluster, kind: str) -> dict[str, dict[str, Any]]:
    return {str(r.name): r.data for r in fake.requests("PATCH") if isinstance(r.data, dict) and r.data["kind"] == kind}


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_up_with_the_mesh_applies_its_component_in_the_mode_asked(
    istio: FakeCluster, lab_cfg: LabConfig, mode: str
) -> None:
    settle_deployments(istio)
    target = apis_target(istio, lab_cfg.with_(mesh=mode))
    try:
        assert all(s.healthy for s in target.up(["apis"]))
    finally:
        target.close()

    (namespace,) = applied(istio, "Namespace").values()
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    assert {"gateway", "auth", "catalog", "subscription", "license", "cas", "ottlab-tools"} <= set(
        applied(istio, "ServiceAccount"))
    cas = applied(istio, "Deployment")["cas"]["spec"]["template"]
    assert cas["spec"]["serviceAccountName"] == "cas"
    assert "proxyStatsMatcher" in cas["metadata"]["annotations"]["proxy.istio.io/config"]
    modes = {name: p["spec"]["mtls"]["mode"] for name, p in applied(istio, "PeerAuthentication").items()}
    assert modes == {"default": mode.upper(), "gateway": "PERMISSIVE"}
    assert {"cas", "license"} <= set(applied(istio, "AuthorizationPolicy")) and applied(istio, "VirtualService")
    # Each resource of the mesh after the Deployments it selects, at its own kind's URL.
    order = [r.data["kind"] for r in istio.requests("PATCH")]
    assert max(i for i, k in enumerate(order) if k == "Deployment") < order.index("PeerAuthentication")
    (default,) = [r for r in istio.requests("PATCH") if r.data["kind"] == "PeerAuthentication" and r.name == "default"]
    assert default.url.path == f"/apis/security.istio.io/v1/namespaces/{NAMESPACE}/peerauthentications/default"


def test_up_with_the_mesh_on_a_cluster_without_istio_changes_nothing_and_says_how_to_install_it(
    fake: FakeCluster, lab_cfg: LabConfig
) -> None:
    settle_deployments(fake)
    target = apis_target(fake, lab_cfg.with_(mesh="strict"))

    with pytest.raises(KubeError) as refused:
        target.up(["apis"])

    assert "ottlab addons install istio-base istiod" in str(refused.value)
    assert fake.requests("PATCH") == [] and fake.requests("POST") == []


def test_up_of_every_layer_with_the_default_mesh_without_istio_sends_nothing_and_says_what_to_do(
    fake: FakeCluster, lab_cfg: LabConfig
) -> None:
    """`ottlab up --target kube` with nothing said about the mesh: STRICT, so Istio is needed first."""
    settle_deployments(fake)
    default = LabConfig.from_env({}, home=lab_cfg.home)
    assert default.mesh == "strict"
    target = apis_target(fake, default)

    with pytest.raises(KubeError) as refused:
        target.up()

    said = str(refused.value)
    assert (f"the lab runs with the service mesh (OTTLAB_MESH=strict, the default), which needs Istio "
            f"{schema.ISTIO_VERSION} on the cluster") in said
    assert "does not serve PeerAuthentication (security.istio.io/v1): nothing was applied" in said
    assert "ottlab addons install istio-base istiod" in said
    assert "OTTLAB_MESH=off ottlab up --target kube" in said
    assert [r for r in fake.requests() if r.method != "GET"] == []   # not even the Namespace


def test_ottlab_up_on_kube_without_istio_exits_1_before_applying_anything(
    fake: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command as a participant types it, with nothing said about the mesh, against a cluster without Istio."""
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", fake.url)))
    monkeypatch.setenv("OTTLAB_HOME", str(tmp_path / "lab"))
    monkeypatch.delenv("OTTLAB_MESH", raising=False)

    result = CliRunner().invoke(main, ["up", "--target", "kube"])

    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "ottlab: error: the lab runs with the service mesh (OTTLAB_MESH=strict, the default)" in said
    assert "OTTLAB_MESH=off ottlab up --target kube" in said
    assert [r for r in fake.requests() if r.method != "GET"] == []


def test_up_with_the_mesh_refuses_pods_istio_did_not_inject(istio: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(istio)
    istio.put(PODS, "cas-a", meshed_pod("cas", sidecar=False))
    istio.put(PODS, "license-a", meshed_pod("license"))
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))

    with pytest.raises(KubeError) as refused:
        target.up(["apis"])

    assert "Istio injected no sidecar into pod/cas-a," in str(refused.value)
    assert "license-a" not in str(refused.value) and "istio-base istiod" in str(refused.value)


def test_up_without_the_mesh_applies_none_of_it(istio: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(istio)
    istio.put(PODS, "cas-a", meshed_pod("cas", sidecar=False))
    target = apis_target(istio, lab_cfg.with_(mesh="off"))
    target.up(["apis"])

    (namespace,) = applied(istio, "Namespace").values()
    assert "istio-injection" not in namespace["metadata"].get("labels", {})
    assert not applied(istio, "PeerAuthentication") and not applied(istio, "VirtualService")


def test_down_deletes_the_mesh_a_lab_was_brought_up_with(istio: FakeCluster, lab_cfg: LabConfig) -> None:
    istio.put("v1/namespaces", NAMESPACE, {"metadata": {"labels": {"istio-injection": "enabled"}}}, namespace=None)
    # A client pod a process left when it stopped mid-probe (mesh_handshake) goes too.
    istio.put(PODS, "ottlab-mesh-probe-1", {"metadata": {"labels": {
        manifest.NAME_LABEL: kube_mesh.PROBE_NAME, manifest.PART_OF_LABEL: manifest.PART_OF}}})
    with_envoy_filters(istio).put(ENVOY_FILTERS, "ottlab-replica-fault-cas-0", {"metadata": {"labels": {
        manifest.PART_OF_LABEL: manifest.PART_OF}}})
    target = apis_target(istio, lab_cfg)   # OTTLAB_MESH unset now: the cluster's mesh goes all the same

    target.down()

    deleted = {r.url.path for r in istio.requests("DELETE")}
    assert f"/apis/{ENVOY_FILTERS.replace('/envoyfilters', '')}/namespaces/{NAMESPACE}/envoyfilters/" \
           "ottlab-replica-fault-cas-0" in deleted
    assert f"/api/v1/namespaces/{NAMESPACE}/pods/ottlab-mesh-probe-1" in deleted
    assert f"/apis/security.istio.io/v1/namespaces/{NAMESPACE}/peerauthentications/default" in deleted
    assert f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/virtualservices/license" in deleted
    assert f"/apis/security.istio.io/v1/namespaces/{NAMESPACE}/authorizationpolicies/cas" in deleted


def test_mesh_sidecar_is_a_port_forward_to_the_envoy_admin_port_of_the_pods_istio_proxy(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    istio.put(PODS, "cas-a", meshed_pod("cas"))
    istio.put(PODS, "cas-b", meshed_pod("cas"))
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    try:
        url = target.mesh_sidecar("cas", 1)
        assert url.startswith("http://127.0.0.1:") and target.mesh_sidecar("cas", 1) == url

        answer = httpx.get(f"{url}/stats", params={"filter": "rbac"}, timeout=10)
        # labkit.clients.sidecar reads it as it reads a local sidecar (the fake pod has no counters).
        assert Sidecar(url).counters("rbac") == {}

        assert (answer.status_code, answer.content) == (200, POD_REPLY)
        forwards = [r for r in istio.requests("GET") if r.subresource == "portforward"]
        assert {r.url.path for r in forwards} == {f"/api/v1/namespaces/{NAMESPACE}/pods/cas-b/portforward"}
        assert {r.params["ports"] for r in forwards} == {"15000"}
        assert target.mesh_sidecar("cas") != url   # replica 0, cas-a: a forward of its own
    finally:
        target.close()


def test_mesh_sidecar_of_a_pod_outside_the_mesh_or_of_no_pod_says_what_to_do(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    target = apis_target(istio, lab_cfg)
    with pytest.raises(NotRunningError, match="no ready pod"):
        target.mesh_sidecar("cas")
    istio.put(PODS, "cas-a", meshed_pod("cas", sidecar=False))
    with pytest.raises(KubeError) as outside:
        target.mesh_sidecar("cas")
    assert "pod/cas-a has no istio-proxy container" in str(outside.value)
    assert "OTTLAB_MESH=strict" in str(outside.value) and "ottlab restart cas" in str(outside.value)
    with pytest.raises(ConfigError, match="choose a replica from 0 to 0"):
        target.mesh_sidecar("cas", 1)
    assert [r for r in istio.requests("GET") if r.subresource == "portforward"] == []


def test_mesh_address_is_refused_saying_why_a_port_forward_would_lie_and_what_to_do(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    with pytest.raises(MissingCapabilityError) as refused:
        target.mesh_address("cas")
    text = str(refused.value)
    assert "port-forward enters the pod at its loopback" in text
    assert f"kubectl -n {NAMESPACE} run mtls-probe" in text and "sidecar.istio.io/inject=false" in text
    assert "http://cas:8000/" in text
    assert istio.requests() == []


def test_the_mesh_a_cluster_lists_equals_the_committed_files_and_comes_back_to_them(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    # Notebook 05's check, on kube: the cluster lists by kind and name, the files declare in their order.
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    defaults = target.mesh()
    assert [o["metadata"]["name"] for o in defaults.of_kind("AuthorizationPolicy")] != [
        o["metadata"]["name"] for o in resources.load().of_kind("AuthorizationPolicy")]
    assert defaults == resources.load()
    cas = next(p for p in defaults.of_kind("AuthorizationPolicy") if p["metadata"]["name"] == "cas")
    nothing = {**cas, "spec": {k: v for k, v in cas["spec"].items() if k != "rules"}}

    target.apply_mesh(defaults.replaced(nothing))
    # (A server-side apply drops the fields its manager no longer sends; kmock merges, so the request is checked.)
    (emptied,) = istio.requests("PATCH")
    assert emptied.name == "cas" and "rules" not in emptied.data["spec"] and defaults.replaced(nothing) != defaults
    istio.put(resource("AuthorizationPolicy"), "cas", emptied.data)
    target.apply_mesh(defaults)

    assert target.mesh() == defaults == resources.load()
    assert [r.name for r in istio.requests("PATCH")] == ["cas", "cas"]


# -- a client outside the mesh, from inside the cluster (mesh_handshake, mesh_plaintext) -------------


class TlsPort:
    """A sidecar's port as STRICT makes it: TLS with ``cas``'s certificate, requiring a client one of the same CA."""

    def __init__(self, directory: Path) -> None:
        self.ca = identity.LabCA.ensure(directory / "ca")
        served = self.ca.issue("cas")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(served.chain), str(served.key))
        context.load_verify_locations(str(served.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.listener.close()


def run_probe(port: int, mode: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """:data:`kube_mesh.PROBE_SCRIPT` run here as the probe pod runs it; what it printed."""
    done = subprocess.run([sys.executable, "-c", kube_mesh.PROBE_SCRIPT, "127.0.0.1", str(port), "POST", "/sessions",
                           mode], capture_output=True, text=True, timeout=30, env=env, check=True)
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_the_probe_script_reports_the_identity_presented_the_answer_or_the_refusal(tmp_path: Path) -> None:
    port = TlsPort(tmp_path)
    try:
        anonymous = run_probe(port.port, "anonymous")
        client = port.ca.issue("license")
        allowed = run_probe(port.port, "certificate", {"PROBE_CHAIN": client.chain.read_text(),
                                                       "PROBE_KEY": client.key.read_text()})
        plain = run_probe(port.port, "plaintext")
    finally:
        port.close()
    assert spiffe_uri(base64.b64decode(anonymous["peer_der"])) == identity.spiffe_id("cas")
    assert anonymous["status"] is None and anonymous["refused"], anonymous
    assert (allowed["status"], allowed["body"], allowed["refused"]) == (201, "ok", None)
    assert plain["status"] is None and plain["refused"] and plain["peer_der"] is None, plain


def probe_answers(fake: FakeCluster, printed: bytes, *, phase: str = "Succeeded") -> None:
    """The fake's pods finish at once (as a kubelet would run them) and their log is ``printed``."""
    pods = kmock.resource("", "v1", "pods")

    def finished(request: kmock.Request) -> dict[str, Any]:
        stored = fake.stored(PODS, str(request.name))
        if stored is None:
            raise kmock.KubernetesObjectNotFoundError()
        return {**stored, "status": {"phase": phase}}

    fake.server[pods, kmock.subresource("log")] << printed   # first: the reaction below would match it too
    fake.server[kmock.action.FETCH, pods] << finished


def test_mesh_handshake_on_kube_runs_the_client_in_a_pod_outside_the_mesh_and_deletes_it(
    istio: FakeCluster, lab_cfg: LabConfig, tmp_path: Path
) -> None:
    port = TlsPort(tmp_path)
    try:
        printed = json.dumps(run_probe(port.port, "anonymous")).encode() + b"\n"
    finally:
        port.close()
    probe_answers(istio, b"some warning\n" + printed)
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    foreign = identity.LabCA.ensure(tmp_path / "other-ca").issue("license")

    seen = target.mesh_handshake("cas", foreign, path="/sessions")

    assert seen.peer == identity.spiffe_id("cas") and seen.status is None and seen.refused, seen
    (created,) = istio.requests("POST")
    assert created.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods"
    probe = created.data
    assert probe["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    (container,) = probe["spec"]["containers"]
    assert container["image"] == image.services_image() and container["command"][:2] == ["python", "-c"]
    assert container["command"][3:] == [f"cas.{NAMESPACE}.svc", "8000", "GET", "/sessions", "certificate"]
    assert {e["name"]: e["value"] for e in container["env"]}["PROBE_CHAIN"] == foreign.chain.read_text()
    (deleted,) = istio.requests("DELETE")
    assert deleted.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/{probe['metadata']['name']}"


def test_mesh_plaintext_on_kube_reports_the_sidecars_answer(istio: FakeCluster, lab_cfg: LabConfig) -> None:
    body = "RBAC: access denied by AuthorizationPolicy ottlab/cas"
    probe_answers(istio, json.dumps({"peer_der": None, "status": 403, "body": body, "refused": None}).encode())
    target = apis_target(istio, lab_cfg.with_(mesh="permissive"))

    seen = target.mesh_plaintext("cas", "POST", "/sessions")

    assert (seen.status, seen.body, seen.refused) == (403, body, None)
    (created,) = istio.requests("POST")
    assert created.data["spec"]["containers"][0]["command"][3:] == [f"cas.{NAMESPACE}.svc", "8000", "POST",
                                                                     "/sessions", "plaintext"]
    assert created.data["spec"]["containers"][0]["env"] == []
    assert len(istio.requests("DELETE")) == 1


def test_a_probe_pod_that_prints_no_result_is_an_error_and_is_deleted(istio: FakeCluster, lab_cfg: LabConfig) -> None:
    probe_answers(istio, b"exec: python: not found\n", phase="Failed")
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))

    with pytest.raises(KubeError, match="printed no result: exec: python: not found"):
        target.mesh_plaintext("cas")

    assert len(istio.requests("DELETE")) == 1



# -- a fault in one replica's sidecar (inject_replica_fault) ------------------------------------------

ENVOY_FILTERS = f"{kube_mesh.ENVOY_FILTER_VERSION}/envoyfilters"


def with_envoy_filters(fake: FakeCluster) -> FakeCluster:
    info: Any = {"namespaced": True, "kind": "EnvoyFilter", "singular": "envoyfilter",
                 "verbs": {"get", "list", "patch", "delete", "create", "update"}}
    fake.server.resources[ENVOY_FILTERS] = info
    return fake


def test_a_replica_fault_is_an_envoy_filter_selecting_that_pod_with_the_local_sidecars_fault_filter(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    with_envoy_filters(istio)
    istio.put(PODS, "cas-a", meshed_pod("cas"))
    istio.put(PODS, "cas-b", meshed_pod("cas"))
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    fault = ReplicaFault(Fault("cas", abort_status=503, percent=30), 1)

    target.inject_replica_fault(fault)

    labelled = next(r for r in istio.requests("PATCH") if r.url.path.endswith("/pods/cas-b"))
    assert labelled.data == {"metadata": {"labels": {kube_mesh.REPLICA_FAULT_LABEL: "cas-b"}}}
    (applied_filter,) = [r for r in istio.requests("PATCH") if "envoyfilters" in r.url.path]
    assert applied_filter.url.path.endswith(f"/namespaces/{NAMESPACE}/envoyfilters/ottlab-replica-fault-cas-1")
    spec = applied_filter.data["spec"]
    assert spec["workloadSelector"] == {"labels": {kube_mesh.REPLICA_FAULT_LABEL: "cas-b"}}
    (patch,) = spec["configPatches"]
    assert (patch["applyTo"], patch["match"]["context"], patch["patch"]["operation"]) == (
        "HTTP_FILTER", "SIDECAR_INBOUND", "INSERT_BEFORE")
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"] == {"name": "envoy.filters.http.router"}
    # The filter the local target renders in that replica's own Envoy, byte for byte.
    assert patch["patch"]["value"] == json.loads(json.dumps(envoy.inbound_fault(fault, "cas")))
    assert target.replica_faults() == [fault]

    assert target.clear_replica_faults("license") == [] and target.clear_replica_faults() == [fault]
    (deleted,) = istio.requests("DELETE")
    assert deleted.url.path.endswith("/envoyfilters/ottlab-replica-fault-cas-1")
    unlabelled = [r for r in istio.requests("PATCH") if r.url.path.endswith("/pods/cas-b")][-1]
    assert unlabelled.data == {"metadata": {"labels": {kube_mesh.REPLICA_FAULT_LABEL: None}}}
    assert target.replica_faults() == []


def test_a_replica_fault_without_istio_or_on_a_replica_not_running_changes_nothing(
    istio: FakeCluster, lab_cfg: LabConfig
) -> None:
    istio.put(PODS, "cas-a", meshed_pod("cas"))
    target = apis_target(istio, lab_cfg.with_(mesh="strict"))
    with pytest.raises(ConfigError, match="choose a replica from 0 to 0"):
        target.inject_replica_fault(ReplicaFault(Fault("cas", abort_status=503), 1))
    with pytest.raises(KubeError, match="istio-base istiod"):   # this fake serves no EnvoyFilter
        target.inject_replica_fault(ReplicaFault(Fault("cas", abort_status=503), 0))
    assert istio.requests("PATCH") == [] and target.replica_faults() == []


# -- notebook 05 asks the target only what the kube target does --------------------------------

# Target methods notebook 05 may call that the kube target does not implement yet, and why.
KUBE_NOT_YET: dict[str, str] = {}


def test_every_target_method_notebook_05_calls_is_the_kube_targets_own() -> None:
    notebook = nbformat.read(str(repo_root() / "notebooks" / "05-service-mesh.ipynb"), as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    called = {node.attr for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Name) and node.value.id == "target"}
    assert {"mesh", "apply_mesh", "mesh_sidecar", "mesh_handshake", "mesh_plaintext"} <= called, called
    inherited = {name for name in called if callable(getattr(Target, name, None))
                 and getattr(KubeTarget, name) is getattr(Target, name)} - set(KUBE_NOT_YET)
    # A method only the base class has raises MissingCapabilityError on kube (or does nothing there).
    assert not inherited, f"notebook 05 calls {sorted(inherited)}, which the kube target does not implement"
    assert "mesh_address" not in called, "a port-forward bypasses the sidecar: use mesh_handshake / mesh_plaintext"
    # Neither are the lab's tools in the mesh there (their port-forward reaches the app around its sidecar).
    assert "service_client(" not in code and "endpoint_as" not in called
    # The HTTP counters by direction and port (Sidecar.inbound_counter / outbound_counter), not by a name of one target.
    assert not re.search(r"\bhttp\.(inbound|outbound)_", code)
