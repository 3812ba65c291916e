"""The local lab with the service mesh on (OTTLAB_MESH=strict): the APIs behind real Envoy sidecars.

Each service replica listens on a unix socket; its sidecar takes mutual TLS on the service's port
and enforces the committed AuthorizationPolicies; the gateway's nginx and the lab's tools reach the
services through sidecars of their own. A viewer plays through it all; a plaintext client and one
with another CA's certificate are refused; an identity the policy does not name gets 403 naming
the policy; a changed VirtualService takes effect with no process restarted, and a bad one is
refused with the previous configuration still in force.
"""

from __future__ import annotations

import copy
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _labs import running_lab
from _sessions import signed_in

from labkit import platform
from labkit.clients.prometheus import Prometheus
from labkit.core.errors import ConfigError, LabError
from labkit.platform.layers import monitoring
from labkit.platform.mesh import identity
from labkit.platform.mesh.errors import MeshConfigError
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
FAULT_HEADER = "x-ottlab-fault"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    # Every layer with a sidecar (the APIs; the player's QoE collector; the media's transcoder).
    with running_lab(tmp_path_factory.mktemp("mesh-lab"), 24000, ["monitoring", "apis", "player", "media"],
                     seeded=True, mesh="strict") as target:
        yield target


def port(lab: LocalTarget, component: str, name: str = "http", replica: int = 0) -> int:
    return lab.component(component).local_port(lab.cfg, name, replica)


def admin(lab: LocalTarget, service: str) -> str:
    return f"http://127.0.0.1:{port(lab, local_mesh.proxy_name(service))}"


def stat(url: str, name: str) -> int:
    return int(local_mesh.stats(url, f"^{name.replace('.', chr(92) + '.')}$").get(name, "0"))


def mtls(certificate: identity.WorkloadCertificate, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    # The server's only name is its SPIFFE URI, which Python does not match: the CA check is what counts.
    context.check_hostname = False
    context.load_cert_chain(str(certificate.chain), str(certificate.key))
    return context


def lab_ca(lab: LocalTarget) -> identity.LabCA:
    return identity.LabCA.ensure(lab.cfg.conf_dir / "mesh" / "ca")


def test_the_lab_runs_with_the_mesh_on(lab: LocalTarget) -> None:
    assert lab.cfg.mesh == "strict"
    names = {s.name: s for s in lab.status()}
    for service in local_mesh.APIS:
        assert names[service].healthy and names[local_mesh.proxy_name(service)].healthy, names[service]
        # The app listens on its socket only: its sidecar holds the service's port.
        assert (lab.cfg.run_dir / "mesh" / f"{service}-0.sock").is_socket()
    assert names[local_mesh.GATEWAY_PROXY].healthy and names[local_mesh.TOOLS_PROXY].healthy
    # A later command sees the lab as it runs, whatever mode it asked; switching it needs a down: `up`
    # refuses a mode asked on purpose (not the default) that is not the lab's.
    later = LocalTarget(lab.cfg.with_(mesh="off"), platform.components(), platform.layers())
    assert later.cfg.mesh == "strict"
    assert later.endpoint("auth") == lab.endpoint("auth") != lab.component("auth").url(lab.cfg)
    for asked in ("off", "permissive"):
        with pytest.raises(ConfigError, match=f"runs with OTTLAB_MESH=strict, not {asked}"):
            LocalTarget(lab.cfg.with_(mesh=asked), platform.components(), platform.layers()).up(["apis"])


def test_a_viewer_plays_through_the_mesh(lab: LocalTarget, tmp_path: Path) -> None:
    cas_admin = admin(lab, "cas")
    sessions_before = stat(cas_admin, "http.inbound_0.0.0.0_8000;.downstream_rq_2xx")
    # Only the transcoder may create keys: a client holding its certificate does, in mutual TLS.
    transcoder = lab_ca(lab).issue("transcoder", directory=tmp_path / "transcoder")
    created = httpx.post(f"https://127.0.0.1:{port(lab, 'license')}/admin/keys/ocean-documentary",
                         headers={"X-Service-Token": lab.service_token()},
                         verify=mtls(transcoder, lab_ca(lab).cert_file), timeout=10)
    assert created.status_code == 201, created.text
    with signed_in(lab.endpoint("gateway")) as alice:
        assert alice.entitlement("ocean-documentary")["entitled"] is True
        grant = alice.authorize("ocean-documentary", device_id="tv")
        assert alice.key("ocean-documentary", grant["authorization"]).hex() == created.json()["key_hex"]
    # license opened the stream session at cas through the two sidecars, in mutual TLS.
    assert stat(cas_admin, "http.inbound_0.0.0.0_8000;.downstream_rq_2xx") > sessions_before
    license_admin = admin(lab, "license")
    assert stat(license_admin, "cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_rq_2xx") >= 1
    assert stat(license_admin, "cluster.outbound|8000||cas.ottlab.svc.cluster.local.ssl.handshake") >= 1


def test_a_plaintext_request_to_a_services_port_is_refused(lab: LocalTarget) -> None:
    for service in local_mesh.APIS:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port(lab, service)}/readyz", timeout=5)


def test_a_client_with_another_cas_certificate_is_refused(lab: LocalTarget, tmp_path: Path) -> None:
    foreign = identity.LabCA.ensure(tmp_path / "foreign").issue("license")
    url = f"https://127.0.0.1:{port(lab, 'cas')}/sessions"
    with pytest.raises((ssl.SSLError, httpx.TransportError)):
        httpx.post(url, json={}, verify=mtls(foreign, lab_ca(lab).cert_file), timeout=5)
    # The lab's own certificate for the same identity passes, and license may open a session: cas answers itself.
    own = lab_ca(lab).issue("license", directory=tmp_path / "own")
    answer = httpx.post(url, json={}, verify=mtls(own, lab_ca(lab).cert_file), timeout=5)
    assert answer.status_code != 403 and answer.json()["error"]["code"] != "forbidden", answer.text


def test_license_may_call_cas_and_another_identity_gets_403_naming_the_policy(lab: LocalTarget) -> None:
    # Through license's own sidecar (OTT_CAS_URL of license points there): allowed, cas answers itself.
    allowed = httpx.post(f"http://127.0.0.1:{port(lab, 'license', 'out-cas')}/sessions", json={}, timeout=10)
    assert allowed.status_code != 403, allowed.text
    denied_before = stat(admin(lab, "cas"), "http.inbound_0.0.0.0_8000;.rbac.denied")
    # The gateway's identity may not open a session (only license may).
    refused = httpx.post(f"http://127.0.0.1:{port(lab, local_mesh.GATEWAY_PROXY, 'out-cas')}/sessions",
                         json={}, timeout=10)
    assert refused.status_code == 403
    assert "AuthorizationPolicy ottlab/cas" in refused.text
    assert "spiffe://cluster.local/ns/ottlab/sa/gateway to POST /sessions" in refused.text
    assert stat(admin(lab, "cas"), "http.inbound_0.0.0.0_8000;.rbac.denied") == denied_before + 1


def test_probes_and_metrics_pass_the_health_port_and_prometheus_scrapes_envoys_stats(lab: LocalTarget) -> None:
    health = f"http://127.0.0.1:{port(lab, 'auth', 'health')}"
    assert httpx.get(f"{health}/readyz", timeout=5).status_code == 200
    assert "ott_http_requests_total" in httpx.get(f"{health}/metrics", timeout=5).text
    # Nothing else: not another path, not another method.
    assert httpx.get(f"{health}/admin/users", timeout=5).status_code == 404
    assert httpx.post(f"{health}/readyz", timeout=5).status_code == 404
    config = monitoring.prometheus_config(lab.cfg, lab.components, secret="-")
    scrape_configs: Any = config["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape_configs}
    stats_job = jobs[local_mesh.STATS_JOB]
    assert stats_job["metrics_path"] == "/stats/prometheus"
    targets = [t for group in stats_job["static_configs"] for t in group["targets"]]
    assert len(targets) == len(local_mesh.MESHED) + 2  # a sidecar per service replica, the gateway's, the tools'
    for target in targets:
        text = httpx.get(f"http://{target}/stats/prometheus", timeout=5).text
        assert "envoy_cluster_upstream_rq" in text or "envoy_http_downstream_rq_total" in text, target
    # Istio's labels: the whole cluster name (Envoy's default tags would cut it at its first dot).
    license_stats = httpx.get(f"{admin(lab, 'license')}/stats/prometheus", timeout=5).text
    assert 'cluster_name="outbound|8000||cas.ottlab.svc.cluster.local"' in license_stats
    assert "envoy_cluster_name=" not in license_stats
    # Istio's connection manager prefixes as its label, their ';' in no name (Prometheus would refuse the scrape).
    cas_stats = httpx.get(f"{admin(lab, 'cas')}/stats/prometheus", timeout=5).text
    assert 'http_conn_manager_prefix="inbound_0.0.0.0_8000"' in cas_stats
    assert not [line for line in cas_stats.splitlines() if ";" in line.partition("{")[0]]
    # The services' own metrics are scraped through their health port.
    auth_targets = [t for group in jobs["auth"]["static_configs"] for t in group["targets"]]
    assert auth_targets == [f"127.0.0.1:{port(lab, 'auth', 'health')}"]
    # And the lab's Prometheus does scrape them all, the sidecars' stats with Envoy's own labels.
    prometheus = Prometheus(lab.endpoint("prometheus"))
    frame = prometheus.wait_for_targets([local_mesh.STATS_JOB, *local_mesh.APIS], timeout=60)
    assert (frame["job"] == local_mesh.STATS_JOB).sum() == len(local_mesh.MESHED) + 2
    httpx.post(f"http://127.0.0.1:{port(lab, 'license', 'out-cas')}/sessions", json={}, timeout=10)
    cluster = "outbound|8000||cas.ottlab.svc.cluster.local"
    prometheus.wait_for_samples(
        f'envoy_cluster_upstream_rq_total{{job="{local_mesh.STATS_JOB}",cluster_name="{cluster}"}}',
        by="instance", count=1, groups=[f"127.0.0.1:{port(lab, local_mesh.proxy_name('license'))}"])


def _with_fault(mesh: Any, routes: list[dict[str, Any]]) -> Any:
    (cas,) = [vs for vs in mesh.of_kind("VirtualService") if vs["metadata"]["name"] == "cas"]
    changed = copy.deepcopy(cas)
    changed["spec"]["http"] = [*routes, *cas["spec"]["http"]]
    return mesh.replaced(changed)


ABORT = {"match": [{"headers": {FAULT_HEADER: {"exact": "abort"}}}],
         "fault": {"abort": {"percentage": {"value": 100}, "httpStatus": 418}},
         "route": [{"destination": {"host": "cas", "port": {"number": 8000}}}]}


def test_a_changed_virtual_service_takes_effect_without_restarting_and_a_bad_one_is_refused(
        lab: LocalTarget) -> None:
    url = f"http://127.0.0.1:{port(lab, 'license', 'out-cas')}/sessions"
    pids = {s.name: s.pids for s in lab.status()}
    committed = lab.mesh()
    assert httpx.post(url, json={}, headers={FAULT_HEADER: "abort"}, timeout=10).status_code != 418

    lab.apply_mesh(_with_fault(committed, [ABORT]))
    aborted = httpx.post(url, json={}, headers={FAULT_HEADER: "abort"}, timeout=10)
    assert aborted.status_code == 418 and "fault filter abort" in aborted.text
    assert httpx.post(url, json={}, timeout=10).status_code != 418
    assert {s.name: s.pids for s in lab.status()} == pids
    saved = yaml.safe_load_all((lab.cfg.run_dir / "mesh" / "resources.yaml").read_text())
    assert any(o["kind"] == "VirtualService" and o["spec"]["http"][0].get("fault") for o in saved)

    # Weights that do not sum to 100: refused before anything changes.
    split = copy.deepcopy(ABORT)
    split["match"] = [{"headers": {FAULT_HEADER: {"exact": "split"}}}]
    split["route"] = [{**split["route"][0], "weight": 60}, {**split["route"][0], "weight": 60}]
    with pytest.raises(MeshConfigError, match="weights sum to 120"):
        lab.apply_mesh(_with_fault(lab.mesh(), [split]))
    # A regex Envoy refuses (nothing before Envoy checks it): its previous files are put back.
    bad = copy.deepcopy(ABORT)
    bad["match"] = [{"headers": {FAULT_HEADER: {"regex": "(unclosed"}}}]
    with pytest.raises(LabError, match="previous one stays in force"):
        lab.apply_mesh(_with_fault(lab.mesh(), [bad]))
    assert httpx.post(url, json={}, headers={FAULT_HEADER: "abort"}, timeout=10).status_code == 418
    assert {s.name: s.pids for s in lab.status()} == pids

    lab.apply_mesh(committed)
    assert httpx.post(url, json={}, headers={FAULT_HEADER: "abort"}, timeout=10).status_code != 418


def test_a_scaled_service_gets_a_sidecar_per_replica_and_its_callers_reach_both(lab: LocalTarget) -> None:
    lab.scale("cas", 2)
    try:
        names = {s.name: s for s in lab.status()}
        assert names["cas"].replicas == 2 and names[local_mesh.proxy_name("cas")].replicas == 2
        second = f"http://127.0.0.1:{port(lab, local_mesh.proxy_name('cas'), replica=1)}"
        before = stat(second, "http.inbound_0.0.0.0_8000;.downstream_rq_completed")
        url = f"http://127.0.0.1:{port(lab, 'license', 'out-cas')}/sessions"
        answers = [httpx.post(url, json={}, timeout=10).status_code for _ in range(10)]
        assert 403 not in answers and all(a < 500 for a in answers), answers
        # Round robin over both replicas: the new one's sidecar took its share, in mutual TLS.
        assert stat(second, "http.inbound_0.0.0.0_8000;.downstream_rq_completed") >= before + 3
    finally:
        lab.scale("cas", 1)
