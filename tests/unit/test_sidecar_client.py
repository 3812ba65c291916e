"""labkit.clients.sidecar on canned Envoy admin answers: counters, hops, inbound and TLS outcomes, the identity."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from labkit.clients import sidecar
from labkit.core.errors import LabError
from labkit.platform.mesh import envoy, identity

STATS = """\
cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_cx_total: 2
cluster.outbound|8000||cas.ottlab.svc.cluster.local.ssl.handshake: 2
cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_rq_completed: 5
cluster.outbound|8000||catalog.ottlab.svc.cluster.local.upstream_cx_total: 0
cluster.outbound|8000||catalog.ottlab.svc.cluster.local.ssl.handshake: 0
cluster.outbound|8000||catalog.ottlab.svc.cluster.local.upstream_rq_completed: 0
http.inbound_0.0.0.0_8000;.downstream_cx_total: 7
http.inbound_0.0.0.0_8000;.downstream_cx_ssl_total: 6
http.inbound_0.0.0.0_8000;.downstream_rq_total: 9
http.inbound_0.0.0.0_8000;.rbac.denied: 1
http.outbound_0.0.0.0_8000;.fault.delays_injected: 3
http.outbound_0.0.0.0_9000;.fault.delays_injected: 4
listener.127.0.0.1_22450.ssl.handshake: 6
listener.127.0.0.1_22450.ssl.fail_verify_no_cert: 1
listener.127.0.0.1_22450.ssl.connection_error: 2
listener.127.0.0.1_22451.ssl.connection_error: 1
cluster_manager.cds.version_text: "abc"
cluster.outbound|8000||cas.ottlab.svc.cluster.local.upstream_rq_retry: 5
cluster.outbound|8000||cas.ottlab.svc.cluster.local.outlier_detection.ejections_active: 1
cluster.outbound|8000||cas.ottlab.svc.cluster.local.outlier_detection.ejections_enforced_total: 1
cluster.outbound|8000||license.ottlab.svc.cluster.local.upstream_rq_retry: 7
"""
CAS = "outbound|8000||cas.ottlab.svc.cluster.local"


def _host(port: int, health: dict[str, object], **stats: int) -> dict[str, object]:
    """A host as Envoy's /clusters?format=json writes it: a counter at 0 has no value."""
    names = ("cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "stats": [{"name": n, **({"value": str(stats[n])} if stats.get(n) else {})} for n in names]
            + [{"type": "GAUGE", "name": "rq_active"}],
            "health_status": health, "weight": 1}


CLUSTERS = {"cluster_statuses": [
    {"name": "outbound|8000||auth.ottlab.svc.cluster.local", "host_statuses": [_host(17600, {})]},
    {"name": CAS, "host_statuses": [
        _host(17680, {"eds_health_status": "HEALTHY"}, rq_total=15, rq_success=15),
        _host(17681, {"failed_outlier_check": True, "eds_health_status": "HEALTHY"}, rq_total=5, rq_error=5),
        _host(17682, {"eds_health_status": "HEALTHY"}, rq_total=15, rq_success=15),
    ]},
    {"name": "inbound|8000||", "host_statuses": [
        {"address": {"pipe": {"path": "/lab/run/mesh/cas-0.sock"}}, "stats": [], "health_status": {}}]},
]}


class Canned(sidecar.Sidecar):
    """A sidecar whose admin API answers from text, filtering as Envoy does (a regex on the name)."""

    def __init__(self, stats: str = STATS, certs: object = None) -> None:
        super().__init__("http://sidecar.invalid")
        self.stats, self.certs = stats, certs

    def _get(self, path: str, **params: str) -> httpx.Response:
        if path == "/certs":
            return httpx.Response(200, json=self.certs or {"certificates": []})
        if path == "/clusters":
            assert params == {"format": "json"}
            return httpx.Response(200, json=CLUSTERS)
        pattern = re.compile(params.get("filter", ""))
        lines = [line for line in self.stats.splitlines() if pattern.search(line.partition(": ")[0])]
        return httpx.Response(200, text="\n".join(lines))


def test_counters_by_exact_name_and_zero_for_one_not_created_yet() -> None:
    canned = Canned()
    assert canned.counter("http.inbound_0.0.0.0_8000;.rbac.denied") == 1
    assert canned.counter("http.inbound_0.0.0.0_8000;.rbac.allowed") == 0
    # A text readout is no counter.
    assert canned.counters("version_text") == {}


def test_the_http_counters_by_direction_and_port_under_istios_prefixes() -> None:
    canned = Canned()
    assert canned.inbound_counter("rbac.denied") == 1 and canned.inbound_counter("rbac.denied", port=9000) == 0
    assert canned.outbound_counter("fault.delays_injected") == 3
    assert canned.outbound_counter("fault.delays_injected", port=9000) == 4
    # Istio 1.25's own names (pilot's listener builder: direction, wildcard listener, ';').
    assert envoy.hcm_stat_prefix("inbound", 8000) == "inbound_0.0.0.0_8000;"


def test_hops_keep_the_calls_made_and_leave_out_those_never_taken() -> None:
    rows = sidecar.hops({"license": Canned()})
    assert rows == [{"caller": "license", "callee": "cas", "connections": 2, "mTLS handshakes": 2, "requests": 5}]


def test_inbound_and_the_tls_outcomes_summed_over_listeners() -> None:
    assert sidecar.inbound({"cas": Canned()}) == [
        {"service": "cas", "connections": 7, "in TLS": 6, "requests": 9, "RBAC denied": 1}]
    assert Canned().listener_tls() == {"handshake": 6, "fail_verify_no_cert": 1, "fail_verify_error": 0,
                                       "connection_error": 3}


def test_the_identity_is_the_spiffe_uri_of_the_certificate_it_holds() -> None:
    certs = {"certificates": [{"ca_cert": [{"subject_alt_names": []}], "cert_chain": [
        {"subject_alt_names": [{"dns": "cas"}, {"uri": "spiffe://cluster.local/ns/ottlab/sa/cas"}]}]}]}
    assert Canned(certs=certs).identity() == "spiffe://cluster.local/ns/ottlab/sa/cas"
    with pytest.raises(LabError, match="no certificate with a SPIFFE identity"):
        Canned().identity()


def test_the_uri_of_a_workload_certificate(tmp_path: Path) -> None:
    issued = identity.LabCA.ensure(tmp_path / "ca").issue("license", directory=tmp_path / "license")
    der = x509.load_pem_x509_certificate(issued.chain.read_bytes()).public_bytes(Encoding.DER)
    assert sidecar.spiffe_uri(der) == identity.spiffe_id("license")
    assert sidecar.spiffe_uri(None) is None


def test_a_port_nobody_listens_on_is_a_refusal_not_an_answer() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    tls = sidecar.handshake("127.0.0.1", port, timeout=2)
    plain = sidecar.plaintext("127.0.0.1", port, timeout=2)
    assert tls.status is None and tls.peer is None and tls.refused, tls
    assert plain.status is None and plain.refused, plain


def test_one_clusters_counters_by_short_name_and_zero_for_one_not_created_yet() -> None:
    names = ["upstream_rq_retry", "outlier_detection.ejections_active", "upstream_rq_pending_overflow"]
    assert Canned().cluster_counters(CAS, names) == {
        "upstream_rq_retry": 5, "outlier_detection.ejections_active": 1, "upstream_rq_pending_overflow": 0}
    # The name is matched whole: license's retries are not cas's, and '|' in a cluster name is no alternative.
    assert Canned().cluster_counters("outbound|8000||license.ottlab.svc.cluster.local",
                                     ["upstream_rq_retry"]) == {"upstream_rq_retry": 7}


def test_the_hosts_of_a_cluster_their_requests_and_the_one_ejected() -> None:
    hosts = Canned().hosts(CAS)
    assert [h.address for h in hosts] == ["127.0.0.1:17680", "127.0.0.1:17681", "127.0.0.1:17682"]
    assert [h.ejected for h in hosts] == [False, True, False]
    assert (hosts[1].requests, hosts[1].successes, hosts[1].errors) == (5, 0, 5)
    assert hosts[1].as_dict() == {"address": "127.0.0.1:17681", "requests": 5, "successes": 0, "errors": 5,
                                  "health": "failed_outlier_check"}
    assert hosts[0].as_dict()["health"] == "healthy" and hosts[0].failing == ()
    assert Canned().hosts("inbound|8000||")[0].address == "unix:/lab/run/mesh/cas-0.sock"


def test_a_cluster_the_sidecar_does_not_have_is_named_with_those_it_has() -> None:
    with pytest.raises(LabError, match=r"(?s)no cluster 'outbound\|8000\|\|qoe.*its clusters: outbound\|8000\|\|auth"):
        Canned().hosts("outbound|8000||qoe.ottlab.svc.cluster.local")
