"""Istio field -> Envoy field: what labkit.platform.mesh.envoy renders from each resource."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from _mesh import STRICT

from labkit.platform.mesh import envoy, identity, resources
from labkit.platform.mesh.errors import MeshConfigError

PORTS = {"catalog": 8000, "license": 8000, "cas": 8000}
INSTANCES = [
    envoy.Instance("catalog", "catalog", envoy.Address(port=9101), {"version": "v1"}),
    envoy.Instance("catalog", "catalog", envoy.Address(port=9102), {"version": "v2"}),
    envoy.Instance("license", "license", envoy.Address(port=9103)),
    envoy.Instance("cas", "cas", envoy.Address(port=9104)),
]
RULE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
    "metadata": {"name": "catalog", "namespace": "ottlab"},
    "spec": {"host": "catalog", "trafficPolicy": {
        "tls": {"mode": "ISTIO_MUTUAL"},
        "connectionPool": {"tcp": {"maxConnections": 1, "connectTimeout": "250ms"},
                           "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1, "maxRetries": 3}},
        "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m",
                             "maxEjectionPercent": 100, "minHealthPercent": 0}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]},
}
ROUTES: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
    "metadata": {"name": "catalog", "namespace": "ottlab"},
    "spec": {"hosts": ["catalog"], "http": [
        {"match": [{"headers": {"x-lesson": {"exact": "05"}}, "uri": {"prefix": "/titles"}}],
         "fault": {"delay": {"percentage": {"value": 50}, "fixedDelay": "2s"},
                   "abort": {"percentage": {"value": 12.5}, "httpStatus": 503}},
         "route": [{"destination": {"host": "catalog", "subset": "v1"}}]},
        {"route": [{"destination": {"host": "catalog", "subset": "v1"}, "weight": 90},
                   {"destination": {"host": "catalog", "subset": "v2"}, "weight": 10}],
         "timeout": "10s",
         "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "gateway-error,connect-failure,503"}},
    ]},
}
POLICY: dict[str, Any] = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "cas", "namespace": "ottlab"},
    "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "cas"}}, "action": "ALLOW", "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/ottlab/sa/license"]}}],
         "to": [{"operation": {"methods": ["POST"], "paths": ["/sessions"]}}]},
        {"to": [{"operation": {"paths": ["/sessions/*"]}}]},
    ]},
}


def sidecar(ca: identity.LabCA, workload: str, **kwargs: Any) -> envoy.Sidecar:
    return envoy.Sidecar(workload, workload, ca.issue(workload), admin=envoy.Address(port=9900), **kwargs)


def render(ca: identity.LabCA, *objects: dict[str, Any], workload: str = "license", **kwargs: Any) -> dict[str, Any]:
    return envoy.render(resources.Mesh(objects), sidecar(ca, workload, **kwargs), INSTANCES, PORTS)


def listener(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [x for x in bootstrap["static_resources"]["listeners"] if x["name"] == name]
    assert isinstance(found, dict)
    return found


def cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [x for x in bootstrap["static_resources"]["clusters"] if x["name"] == name]
    assert isinstance(found, dict)
    return found


def hcm(chain: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = chain["filters"][0]["typed_config"]
    return config


def outbound_routes(bootstrap: dict[str, Any], service: str) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = hcm(listener(bootstrap, f"outbound_{service}")["filter_chains"][0])[
        "route_config"]["virtual_hosts"][0]["routes"]
    return routes


def test_a_scoped_fault_becomes_the_fault_filters_per_route_config(ca: identity.LabCA) -> None:
    bootstrap = render(ca, RULE, ROUTES, outbound={"catalog": envoy.Address(port=9201)})
    faulty = outbound_routes(bootstrap, "catalog")[0]
    assert faulty["match"] == {"prefix": "/titles", "headers": [{"name": "x-lesson", "string_match": {"exact": "05"}}]}
    fault = faulty["typed_per_filter_config"][envoy.FAULT_FILTER]
    assert fault["delay"] == {"fixed_delay": "2.000s", "percentage": {"numerator": 500000, "denominator": "MILLION"}}
    assert fault["abort"] == {"http_status": 503, "percentage": {"numerator": 125000, "denominator": "MILLION"}}
    assert faulty["route"]["cluster"] == "outbound|8000|v1|catalog.ottlab.svc.cluster.local"
    filters = [f["name"] for f in hcm(listener(bootstrap, "outbound_catalog")["filter_chains"][0])["http_filters"]]
    assert filters == [envoy.FAULT_FILTER, "envoy.filters.http.router"]


def test_weights_timeout_and_retries_become_weighted_clusters_and_a_retry_policy(ca: identity.LabCA) -> None:
    route = outbound_routes(render(ca, RULE, ROUTES, outbound={"catalog": envoy.Address(port=9201)}), "catalog")[1]
    assert route["match"] == {"prefix": "/"}
    action = route["route"]
    assert action["weighted_clusters"]["clusters"] == [
        {"name": "outbound|8000|v1|catalog.ottlab.svc.cluster.local", "weight": 90},
        {"name": "outbound|8000|v2|catalog.ottlab.svc.cluster.local", "weight": 10},
    ]
    assert action["timeout"] == "10.000s"
    retry = action["retry_policy"]
    assert (retry["retry_on"], retry["num_retries"], retry["per_try_timeout"]) == (
        "gateway-error,connect-failure,retriable-status-codes", 3, "0.500s")
    assert retry["retriable_status_codes"] == [503]


def test_without_a_virtual_service_istios_defaults_apply_and_zero_attempts_means_no_retry() -> None:
    default = envoy.retry_policy({})
    assert default is not None
    assert (default["num_retries"], default["retriable_status_codes"]) == (2, [503])
    assert default["retry_on"] == envoy.DEFAULT_RETRY_ON
    assert envoy.retry_policy({"retries": {"attempts": 0}}) is None


def test_a_subset_cluster_holds_only_its_pods_with_the_rules_breakers_and_outlier_detection(ca: identity.LabCA) -> None:
    bootstrap = render(ca, RULE, ROUTES, outbound={"catalog": envoy.Address(port=9201)})
    v2 = cluster(bootstrap, "outbound|8000|v2|catalog.ottlab.svc.cluster.local")
    endpoints = v2["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [9102]
    assert v2["connect_timeout"] == "0.250s"
    assert v2["circuit_breakers"]["thresholds"] == [
        {"max_connections": 1, "max_pending_requests": 1, "max_requests": envoy.UNLIMITED, "max_retries": 3}]
    options = v2["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"max_requests_per_connection": 1}
    assert v2["outlier_detection"] == {
        "enforcing_success_rate": 0, "consecutive_5xx": 1, "enforcing_consecutive_5xx": 100,
        "interval": "1.000s", "base_ejection_time": "180.000s", "max_ejection_percent": 100}
    assert v2["common_lb_config"] == {"healthy_panic_threshold": {"value": 0}}


def test_istio_mutual_is_mtls_that_demands_the_services_identity(ca: identity.LabCA) -> None:
    bootstrap = render(ca, RULE, ROUTES, outbound={"catalog": envoy.Address(port=9201)})
    tls = cluster(bootstrap, "outbound|8000|v1|catalog.ottlab.svc.cluster.local")["transport_socket"]["typed_config"]
    context = tls["common_tls_context"]
    assert context["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/ottlab/sa/catalog"}}]
    assert context["tls_certificates"][0]["certificate_chain"]["filename"].endswith("workloads/license/cert-chain.pem")
    disabled = copy.deepcopy(RULE)
    disabled["spec"]["trafficPolicy"]["tls"] = {"mode": "DISABLE"}
    plain = render(ca, disabled, ROUTES, outbound={"catalog": envoy.Address(port=9201)})
    assert "transport_socket" not in cluster(plain, "outbound|8000|v1|catalog.ottlab.svc.cluster.local")


def inbound(ca: identity.LabCA, *objects: dict[str, Any]) -> dict[str, Any]:
    bootstrap = render(ca, *objects, workload="cas", inbound=envoy.Address(port=9301),
                       app=envoy.Address(path="/tmp/cas.sock"))
    assert cluster(bootstrap, "inbound|8000||")["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"] == {"pipe": {"path": "/tmp/cas.sock"}}
    return listener(bootstrap, "inbound_8000")


def test_strict_requires_a_client_certificate_of_the_trust_domain_and_nothing_else(ca: identity.LabCA) -> None:
    strict = inbound(ca, STRICT, POLICY)
    (chain,) = strict["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]
    assert "listener_filters" not in strict


def test_the_http_stats_are_prefixed_as_istio_prefixes_them(ca: identity.LabCA) -> None:
    # One inbound prefix per port; one outbound prefix per port, whichever service is called on it.
    (chain,) = inbound(ca, STRICT, POLICY)["filter_chains"]
    assert hcm(chain)["stat_prefix"] == "inbound_0.0.0.0_8000;"
    bootstrap = render(ca, RULE, ROUTES, outbound={"catalog": envoy.Address(port=9201),
                                                   "cas": envoy.Address(port=9202)})
    assert {hcm(listener(bootstrap, f"outbound_{s}")["filter_chains"][0])["stat_prefix"]
            for s in ("catalog", "cas")} == {"outbound_0.0.0.0_8000;"}


def test_permissive_takes_tls_and_plaintext(ca: identity.LabCA) -> None:
    permissive = copy.deepcopy(STRICT)
    permissive["spec"]["mtls"]["mode"] = "PERMISSIVE"
    listener_ = inbound(ca, permissive)
    assert [c["filter_chain_match"] for c in listener_["filter_chains"]] == [
        {"transport_protocol": "tls"}, {"transport_protocol": "raw_buffer"}]
    assert listener_["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    # No PeerAuthentication at all: Istio's default, PERMISSIVE.
    assert len(inbound(ca)["filter_chains"]) == 2


def test_an_authorization_policy_becomes_rbac_with_spiffe_principals_and_a_403_naming_it(ca: identity.LabCA) -> None:
    config = hcm(inbound(ca, STRICT, POLICY)["filter_chains"][0])
    (rbac, fault, router) = config["http_filters"]
    assert fault["name"] == envoy.FAULT_FILTER and router["name"] == "envoy.filters.http.router"
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    assert rules["policies"] == {
        "ns[ottlab]-policy[cas]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [
                {"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                {"url_path": {"path": {"exact": "/sessions"}}}]}}],
            "principals": [{"authenticated": {"principal_name": {
                "exact": "spiffe://cluster.local/ns/ottlab/sa/license"}}}],
        },
        "ns[ottlab]-policy[cas]-rule[1]": {
            "permissions": [{"url_path": {"path": {"prefix": "/sessions/"}}}], "principals": [{"any": True}]},
    }
    body = config["local_reply_config"]["mappers"][0]["body_format_override"]["text_format_source"]["inline_string"]
    assert "AuthorizationPolicy ottlab/cas of workload cas" in body and "%DOWNSTREAM_PEER_URI_SAN%" in body


def test_deny_policies_come_first_and_allow_nothing_denies_everything(ca: identity.LabCA) -> None:
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "no-admin", "namespace": "ottlab"},
            "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}}
    nothing = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "allow-nothing", "namespace": "ottlab"}, "spec": {}}
    filters = hcm(inbound(ca, STRICT, deny, nothing)["filter_chains"][0])["http_filters"]
    assert [f["typed_config"]["rules"]["action"] for f in filters[:-2]] == ["DENY", "ALLOW"]
    assert filters[1]["typed_config"]["rules"]["policies"] == {}


def test_what_the_local_mesh_cannot_enforce_is_refused_not_ignored(ca: identity.LabCA) -> None:
    policy = copy.deepcopy(POLICY)
    policy["spec"]["rules"][0]["when"] = [{"key": "request.headers[x-session]", "values": ["*"]}]
    with pytest.raises(MeshConfigError, match=r"authorizationpolicy/cas: spec.rules.0: when not supported"):
        inbound(ca, STRICT, policy)


def test_contradictory_resources_render_nothing(ca: identity.LabCA) -> None:
    bad = copy.deepcopy(ROUTES)
    bad["spec"]["http"][1]["route"][1]["weight"] = 20
    with pytest.raises(MeshConfigError, match=r"the weights sum to 110 \(90 \+ 20\), not 100"):
        render(ca, RULE, bad, outbound={"catalog": envoy.Address(port=9201)})
    with pytest.raises(MeshConfigError, match=r"calls 'search', which is no service"):
        render(ca, RULE, ROUTES, outbound={"search": envoy.Address(port=9201)})


def test_the_admin_interface_is_on_loopback(ca: identity.LabCA, tmp_path: Path) -> None:
    bootstrap = render(ca, STRICT)
    assert bootstrap["admin"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9900}}
    assert bootstrap["node"]["cluster"] == "license"
    assert envoy.write(bootstrap, tmp_path / "license.json").read_text().startswith("{")


def test_the_watchdogs_do_not_wake_an_idle_sidecar_ten_times_a_second(ca: identity.LabCA) -> None:
    """Envoy's watchdogs wake every thread at half the shortest timeout: 100 ms by default, 2.5 s here."""
    watchdogs = render(ca, STRICT)["watchdogs"]
    assert set(watchdogs) == {"main_thread_watchdog", "worker_watchdog"}
    for dog in watchdogs.values():
        shortest = min(float(dog[k].removesuffix("s")) for k in ("miss_timeout", "megamiss_timeout"))
        assert shortest >= 5.0
