"""Each sidecar's Envoy configuration, rendered from the mesh's Istio resources as Istio would program it.

One Envoy per workload (its sidecar), configured statically (a bootstrap file):

- **inbound**: a listener where peers reach the workload, mutual TLS required by its
  PeerAuthentication (STRICT: TLS only, a client certificate of the lab's CA with a SPIFFE
  identity; PERMISSIVE: TLS or plaintext; DISABLE: plaintext), then Envoy's RBAC filter built from
  the AuthorizationPolicies selecting the workload (principals are the peer's SPIFFE URI SAN), then
  the app (a unix socket, so nothing reaches it around the sidecar). A refusal is a 403 whose body
  names the policy, counted in ``http.inbound_0.0.0.0_<port>;.rbac.denied`` (:func:`hcm_stat_prefix`).
- **outbound**: a plaintext listener on loopback per service the workload calls, routed by that
  service's VirtualService: header/URI matches, weighted subsets (a canary), the route timeout,
  retries (``retry_on``, ``num_retries``, ``per_try_timeout``) and faults (delay/abort percentages,
  Envoy's fault filter per route); clusters named as Istio names them
  (``outbound|8000|v1|catalog.ottlab.svc.cluster.local``) with the DestinationRule's mutual TLS
  (the peer must present its service account's identity), circuit breakers and outlier detection.
- **admin** on a loopback port: ``/stats``, ``/clusters``, ``/config_dump``.

What Istio's own translation does that this one does not (it is refused with a message, never
ignored): AuthorizationPolicy ``when``/``notPrincipals``/``ports``/``ipBlocks``, actions AUDIT and
CUSTOM; VirtualService mirrors, redirects, rewrites, header edits, CORS and query matches;
DestinationRule ``portLevelSettings``, TLS modes other than ISTIO_MUTUAL/DISABLE, consistent hashing.

Example::

    bootstrap = envoy.render(mesh, sidecar, instances, ports={"license": 8000, "cas": 8000})
    envoy.write(bootstrap, lab_dir / "mesh" / "license.json")
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labkit.platform.mesh import releases, resources
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.faults import ReplicaFault
from labkit.platform.mesh.identity import WorkloadCertificate, spiffe_id
from labkit.platform.mesh.resources import NAME_LABEL, NAMESPACE, TRUST_DOMAIN, Mesh, Topology, short_host
from labkit.platform.mesh.units import duration_seconds

Config = dict[str, Any]

# Istio's defaults where a resource says nothing (its Envoy config dump shows these).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2
DEFAULT_CONNECT_TIMEOUT = "10s"
UNLIMITED = 4294967295
# Envoy's watchdogs wake every thread at half the shortest timeout (200 ms by default): an idle sidecar
# woke 36 times a second, each wake-up about 55 us of CPU on a 2-core VM (2.1 ms/s doing nothing). With
# these it wakes 7 times a second (0.4 ms/s); a thread stuck 5 s still counts as a miss (watchdog_miss).
WATCHDOG = {"miss_timeout": "5s", "megamiss_timeout": "10s"}
FAULT_FILTER = "envoy.filters.http.fault"
RBAC_FILTER = "envoy.filters.http.rbac"
_TYPES = {
    "hcm": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "router": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    "fault": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "rbac": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "downstream_tls": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "upstream_tls": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "tls_inspector": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "http_options": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
}


@dataclass(frozen=True)
class Address:
    """A TCP address on loopback, or a unix socket (``path``)."""

    host: str = "127.0.0.1"
    port: int = 0
    path: str | None = None

    def envoy(self) -> Config:
        if self.path is not None:
            return {"pipe": {"path": self.path}}
        return {"socket_address": {"address": self.host, "port_value": self.port}}

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Instance:
    """One replica of a service as its peers reach it: its sidecar's inbound address, its pod's labels."""

    service: str
    account: str
    address: Address
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def pod_labels(self) -> dict[str, str]:
        """Its pod's labels: the service's name, its release (a service's declared one unless ``labels`` says)."""
        return {NAME_LABEL: self.service, **releases.labels(self.service), **self.labels}


@dataclass(frozen=True)
class Sidecar:
    """One workload's sidecar: who it is, where it listens, and the services its app calls through it."""

    workload: str
    account: str
    certificate: WorkloadCertificate
    admin: Address
    # Where peers reach the workload (mutual TLS), and where its app listens; None for a pure client.
    inbound: Address | None = None
    app: Address | None = None
    # The port of the workload's Service (inbound cluster name, and the port VirtualServices route to).
    service_port: int = 8000
    # Each service the app calls -> where the app sends those calls (plaintext, loopback).
    outbound: Mapping[str, Address] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE
    # A fault of this replica alone, in its inbound side (a flaky pod: :meth:`Target.inject_replica_fault`).
    fault: ReplicaFault | None = None

    @property
    def pod_labels(self) -> dict[str, str]:
        return {NAME_LABEL: self.workload, **self.labels}


def seconds(value: float) -> str:
    """A protobuf JSON duration: ``2.000s``."""
    return f"{value:.3f}s"


def _duration(text: str) -> str:
    return seconds(duration_seconds(text))


def _percent(value: float) -> Config:
    """Istio's ``percentage.value`` (0-100, fractions allowed) as Envoy's FractionalPercent."""
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


def fqdn(service: str, namespace: str = NAMESPACE) -> str:
    return f"{service}.{namespace}.svc.{TRUST_DOMAIN}"


def hcm_stat_prefix(direction: Literal["inbound", "outbound"], port: int) -> str:
    """The stat prefix Istio (1.25) gives a sidecar's HTTP connection manager: ``inbound_0.0.0.0_8000;``.

    Its direction and its listener's name (wildcard address and port), ended by the ``;`` its stats
    tag regex looks for (pilot's ENABLE_DELIMITED_STATS_TAG_REGEX, on by default). One inbound prefix
    per port of the workload; one outbound prefix per port for every service called on it (their
    counters add up), as on Istio: ``http.outbound_0.0.0.0_8000;.fault.delays_injected``.
    """
    return f"{direction}_0.0.0.0_{port};"


def cluster_name(service: str, port: int, subset: str = "", namespace: str = NAMESPACE) -> str:
    """Istio's name of an outbound cluster: ``outbound|8000|v1|catalog.ottlab.svc.cluster.local``."""
    return f"outbound|{port}|{subset}|{fqdn(service, namespace)}"


def _selects(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = obj["spec"].get("selector")
    return selector is None or all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _unsupported(where: str, keys: set[str]) -> None:
    if keys:
        raise MeshConfigError(f"{where}: {', '.join(sorted(keys))} not supported by the local mesh",
                              hint="leave it out, or use the kube target where Istio enforces it")


# -- inbound: mTLS and authorization ----------------------------------------------------------


def peer_mode(mesh: Mesh, sidecar: Sidecar) -> str:
    """The workload's mTLS mode: its own PeerAuthentication, else the namespace's, else PERMISSIVE (Istio's)."""
    own = [p for p in mesh.of_kind("PeerAuthentication")
           if "selector" in p["spec"] and _selects(p, sidecar.pod_labels)]
    namespace_wide = [p for p in mesh.of_kind("PeerAuthentication") if "selector" not in p["spec"]]
    for policy in [*own, *namespace_wide]:
        mode = policy["spec"].get("mtls", {}).get("mode", "UNSET")
        if mode != "UNSET":
            return str(mode)
    return "PERMISSIVE"


def _string_match(pattern: str) -> Config:
    """Istio's path/principal wildcards: exact, ``prefix*``, ``*suffix``, ``*`` (anything)."""
    if pattern == "*":
        return {"prefix": ""}
    if pattern.endswith("*"):
        return {"prefix": pattern[:-1]}
    if pattern.startswith("*"):
        return {"suffix": pattern[1:]}
    return {"exact": pattern}


def _any_of(items: list[Config], key: str) -> Config:
    return items[0] if len(items) == 1 else {key: {"rules" if key == "or_rules" else "ids": items}}


def _permission(operation: Mapping[str, Any], where: str) -> Config:
    _unsupported(where, set(operation) - {"methods", "paths"})
    parts: list[Config] = []
    if operation.get("methods"):
        parts.append(_any_of([{"header": {"name": ":method", "string_match": {"exact": m}}}
                              for m in operation["methods"]], "or_rules"))
    if operation.get("paths"):
        parts.append(_any_of([{"url_path": {"path": _string_match(p)}} for p in operation["paths"]], "or_rules"))
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_rules": {"rules": parts}}


def _principal(source: Mapping[str, Any], where: str) -> Config:
    _unsupported(where, set(source) - {"principals", "namespaces"})
    parts: list[Config] = []
    if source.get("principals"):
        parts.append(_any_of([{"authenticated": {"principal_name": _string_match(
            p if p == "*" else f"spiffe://{p}")}} for p in source["principals"]], "or_ids"))
    if source.get("namespaces"):
        parts.append(_any_of([{"authenticated": {"principal_name": {
            "prefix": f"spiffe://{TRUST_DOMAIN}/ns/{n}/"}}} for n in source["namespaces"]], "or_ids"))
    if not parts:
        return {"any": True}
    return parts[0] if len(parts) == 1 else {"and_ids": {"ids": parts}}


def rbac_policies(policy: Mapping[str, Any]) -> dict[str, Config]:
    """An AuthorizationPolicy's rules as Envoy RBAC policies, named as Istio names them."""
    meta = policy["metadata"]
    namespace, name = meta.get("namespace", NAMESPACE), meta["name"]
    found: dict[str, Config] = {}
    for i, rule in enumerate(policy["spec"].get("rules", [])):
        where = f"authorizationpolicy/{name}: spec.rules.{i}"
        _unsupported(where, set(rule) - {"from", "to"})
        sources = [_principal(s.get("source", {}), f"{where}.from.{j}.source")
                   for j, s in enumerate(rule.get("from", []))]
        operations = [_permission(t.get("operation", {}), f"{where}.to.{j}.operation")
                      for j, t in enumerate(rule.get("to", []))]
        found[f"ns[{namespace}]-policy[{name}]-rule[{i}]"] = {
            "permissions": [_any_of(operations, "or_rules")] if operations else [{"any": True}],
            "principals": [_any_of(sources, "or_ids")] if sources else [{"any": True}],
        }
    return found


def authorization_filters(mesh: Mesh, sidecar: Sidecar) -> tuple[list[Config], list[str]]:
    """The RBAC filters (DENY before ALLOW, as Istio evaluates them) and the names of the policies in force."""
    selected = [p for p in mesh.of_kind("AuthorizationPolicy") if _selects(p, sidecar.pod_labels)]
    filters: list[Config] = []
    names: list[str] = []
    for action in ("DENY", "ALLOW"):
        policies = [p for p in selected if p["spec"].get("action", "ALLOW") == action]
        if not policies:
            continue
        rules: dict[str, Config] = {}
        for policy in policies:
            rules |= rbac_policies(policy)
            names.append(f"{policy['metadata'].get('namespace', NAMESPACE)}/{policy['metadata']['name']}")
        filters.append({"name": RBAC_FILTER, "typed_config": {
            "@type": _TYPES["rbac"], "rules": {"action": action, "policies": rules},
        }})
    for policy in selected:
        action = policy["spec"].get("action", "ALLOW")
        if action not in {"ALLOW", "DENY"}:
            _unsupported(f"authorizationpolicy/{policy['metadata']['name']}: spec.action", {action})
    return filters, names


def _tls_context(certificate: WorkloadCertificate, peers: Config) -> Config:
    return {
        "tls_certificates": [{"certificate_chain": {"filename": str(certificate.chain)},
                              "private_key": {"filename": str(certificate.key)}}],
        "validation_context": {"trusted_ca": {"filename": str(certificate.ca)},
                               "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": peers}]},
    }


def _inbound_listener(mesh: Mesh, sidecar: Sidecar) -> Config:
    assert sidecar.inbound is not None
    filters, names = authorization_filters(mesh, sidecar)
    port = sidecar.service_port
    policies = ", ".join(names)
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": _TYPES["hcm"],
        "stat_prefix": hcm_stat_prefix("inbound", port),
        # The app may read who called it, as Istio passes it: the peer's SPIFFE identity.
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
        "route_config": {"name": f"inbound|{port}", "virtual_hosts": [{
            "name": "inbound", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"inbound|{port}||", "timeout": "0s"},
                        # A replica's own fault is its route's (a route change, not a listener's: routes_by_rds).
                        **({"typed_per_filter_config": {FAULT_FILTER: inbound_fault(
                            sidecar.fault, sidecar.workload)["typed_config"]}} if sidecar.fault else {})}],
        }]},
        "http_filters": [*filters, {"name": FAULT_FILTER, "typed_config": {"@type": _TYPES["fault"]}},
                         {"name": "envoy.filters.http.router", "typed_config": {"@type": _TYPES["router"]}}],
        # The only local 403 on this listener is RBAC's: say which policy refused whom.
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 403, "runtime_key": "mesh.rbac_denied_status"}}}},
            "body_format_override": {"text_format_source": {"inline_string": (
                f"RBAC: access denied by AuthorizationPolicy {policies} of workload {sidecar.workload}: "
                "no rule allows %DOWNSTREAM_PEER_URI_SAN% to %REQ(:METHOD)% %REQ(:PATH)% "
                "(%RESPONSE_CODE_DETAILS%)\n")}},
        }]} if names else {},
    }}
    mode = peer_mode(mesh, sidecar)
    trust_domain = {"prefix": f"spiffe://{TRUST_DOMAIN}/"}
    mtls_chain = {
        "filters": [hcm],
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": _TYPES["downstream_tls"], "require_client_certificate": True,
            "common_tls_context": _tls_context(sidecar.certificate, trust_domain),
        }},
    }
    plain_chain: Config = {"filters": [hcm]}
    listener: Config = {"name": f"inbound_{port}", "address": sidecar.inbound.envoy()}
    if mode == "STRICT":
        listener["filter_chains"] = [mtls_chain]
    elif mode == "DISABLE":
        listener["filter_chains"] = [plain_chain]
    elif mode == "PERMISSIVE":
        listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                         "typed_config": {"@type": _TYPES["tls_inspector"]}}]
        listener["filter_chains"] = [{**mtls_chain, "filter_chain_match": {"transport_protocol": "tls"}},
                                     {**plain_chain, "filter_chain_match": {"transport_protocol": "raw_buffer"}}]
    else:
        raise MeshConfigError(f"PeerAuthentication mode {mode!r} for {sidecar.workload} is not one of "
                              "STRICT, PERMISSIVE, DISABLE, UNSET")
    return listener


# -- outbound: routes, retries, faults, clusters ----------------------------------------------


def _string_matcher(spec: Mapping[str, Any], where: str) -> Config:
    _unsupported(where, set(spec) - {"exact", "prefix", "regex"})
    if "regex" in spec:
        return {"safe_regex": {"regex": spec["regex"]}}
    return dict(spec)


def route_match(match: Mapping[str, Any], where: str) -> Config:
    """A VirtualService ``HTTPMatchRequest`` as an Envoy ``RouteMatch``."""
    _unsupported(where, set(match) - {"uri", "headers", "method", "name"})
    out: Config = {"prefix": "/"}
    uri = match.get("uri")
    if uri:
        _unsupported(f"{where}.uri", set(uri) - {"exact", "prefix", "regex"})
        out = ({"path": uri["exact"]} if "exact" in uri else {"prefix": uri["prefix"]} if "prefix" in uri
               else {"safe_regex": {"regex": uri["regex"]}})
    headers = [{"name": name, "string_match": _string_matcher(spec, f"{where}.headers.{name}")}
               for name, spec in match.get("headers", {}).items()]
    if "method" in match:
        headers.append({"name": ":method", "string_match": _string_matcher(match["method"], f"{where}.method")})
    if headers:
        out["headers"] = headers
    return out


def retry_policy(route: Mapping[str, Any]) -> Config | None:
    """The route's ``retries`` as Envoy's RetryPolicy; Istio's default without it; None with 0 attempts."""
    retries = route.get("retries")
    if retries is not None and retries.get("attempts", 0) == 0:
        return None
    retries = retries or {"attempts": DEFAULT_RETRIES, "retryOn": DEFAULT_RETRY_ON + ",503"}
    conditions = [c.strip() for c in retries.get("retryOn", DEFAULT_RETRY_ON + ",503").split(",") if c.strip()]
    statuses = [int(c) for c in conditions if c.isdigit()]
    named = [c for c in conditions if not c.isdigit()]
    if statuses and "retriable-status-codes" not in named:
        named.append("retriable-status-codes")
    policy: Config = {
        "retry_on": ",".join(named),
        "num_retries": retries["attempts"],
        # As Istio: a retry goes to another host when there is one.
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": "5",
    }
    if statuses:
        policy["retriable_status_codes"] = statuses
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = _duration(retries["perTryTimeout"])
    return policy


def fault_config(fault: Mapping[str, Any], where: str) -> Config:
    """A route's ``fault`` as Envoy's HTTPFault (per-route config of the fault filter)."""
    _unsupported(where, set(fault) - {"delay", "abort"})
    out: Config = {"@type": _TYPES["fault"]}
    if "delay" in fault:
        delay = fault["delay"]
        _unsupported(f"{where}.delay", set(delay) - {"fixedDelay", "percentage", "percent"})
        out["delay"] = {"fixed_delay": _duration(delay["fixedDelay"]),
                        "percentage": _percent(delay.get("percentage", {}).get("value", delay.get("percent", 100)))}
    if "abort" in fault:
        abort = fault["abort"]
        _unsupported(f"{where}.abort", set(abort) - {"httpStatus", "percentage"})
        if "httpStatus" not in abort:
            raise MeshConfigError(f"{where}.abort: only httpStatus aborts are supported by the local mesh")
        out["abort"] = {"http_status": abort["httpStatus"],
                        "percentage": _percent(abort.get("percentage", {}).get("value", 100))}
    return out


def inbound_fault(replica: ReplicaFault, workload: str) -> Config:
    """A fault filter for one replica's inbound side: its delay/abort on ``percent`` % of the authorized
    requests it takes (those with its header and of its method only, if set), whoever calls it."""
    fault = replica.fault
    config = fault_config(fault.route_fault(), f"the replica fault of {workload}")
    headers = [{"name": fault.header[0], "string_match": {"exact": fault.header[1]}}] if fault.header else []
    if replica.method is not None:
        headers.append({"name": ":method", "string_match": {"exact": replica.method}})
    if headers:
        config["headers"] = headers
    return {"name": FAULT_FILTER, "typed_config": config}


def _routes(vs: Mapping[str, Any] | None, service: str, port: int, namespace: str) -> list[Config]:
    if vs is None:
        policy = retry_policy({})
        return [{"name": "default", "match": {"prefix": "/"},
                 "route": {"cluster": cluster_name(service, port, namespace=namespace), "timeout": "0s",
                           **({"retry_policy": policy} if policy else {})}}]
    name = vs["metadata"]["name"]
    routes = []
    for i, http in enumerate(vs["spec"].get("http", [])):
        where = f"virtualservice/{name}: spec.http.{i}"
        _unsupported(where, set(http) - {"name", "match", "route", "timeout", "retries", "fault"})
        destinations = [d for d in http.get("route", []) if d.get("weight", 100 if len(http["route"]) == 1 else 0)]
        clusters = [
            (cluster_name(short_host(d["destination"]["host"], namespace),
                          d["destination"].get("port", {}).get("number", port),
                          d["destination"].get("subset", ""), namespace), d.get("weight", 100))
            for d in destinations
        ]
        if not clusters:
            raise MeshConfigError(f"{where}.route: no destination with a weight above 0")
        action: Config = ({"cluster": clusters[0][0]} if len(clusters) == 1 else
                          {"weighted_clusters": {"clusters": [{"name": c, "weight": w} for c, w in clusters]}})
        action["timeout"] = _duration(http["timeout"]) if "timeout" in http else "0s"
        policy = retry_policy(http)
        if policy is not None:
            action["retry_policy"] = policy
        for j, match in enumerate(http.get("match") or [{}]):
            route: Config = {"name": f"{name}.{i}.{j}", "match": route_match(match, f"{where}.match.{j}"),
                             "route": action}
            if "fault" in http:
                route["typed_per_filter_config"] = {FAULT_FILTER: fault_config(http["fault"], f"{where}.fault")}
            routes.append(route)
    return routes


def _outbound_listener(service: str, address: Address, vs: Mapping[str, Any] | None, port: int,
                       namespace: str) -> Config:
    return {"name": f"outbound_{service}", "address": address.envoy(), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": _TYPES["hcm"],
            "stat_prefix": hcm_stat_prefix("outbound", port),
            # Not checked against the clusters Envoy has when the listener loads (Istio's setting too): a
            # route to a new subset's cluster arrives with it, the listeners' and clusters' files in any order.
            "route_config": {"name": service, "validate_clusters": False, "virtual_hosts": [{
                "name": fqdn(service, namespace), "domains": ["*"], "routes": _routes(vs, service, port, namespace),
            }]},
            "http_filters": [
                {"name": FAULT_FILTER, "typed_config": {"@type": _TYPES["fault"]}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _TYPES["router"]}},
            ],
        },
    }]}]}


def _merged_policy(rule: Mapping[str, Any] | None, subset: str) -> Config:
    if rule is None:
        return {}
    policy = dict(rule["spec"].get("trafficPolicy", {}))
    for declared in rule["spec"].get("subsets", []):
        if declared["name"] == subset:
            policy |= declared.get("trafficPolicy", {})
    return policy


def traffic_policy(policy: Mapping[str, Any], where: str) -> Config:
    """A DestinationRule's ``trafficPolicy`` as cluster fields: timeouts, circuit breakers, outlier detection."""
    _unsupported(where, set(policy) - {"tls", "connectionPool", "outlierDetection", "loadBalancer"})
    out: Config = {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}
    pool = policy.get("connectionPool", {})
    tcp, http = pool.get("tcp", {}), pool.get("http", {})
    _unsupported(f"{where}.connectionPool.tcp", set(tcp) - {"maxConnections", "connectTimeout"})
    _unsupported(f"{where}.connectionPool.http", set(http) - {
        "http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries", "idleTimeout"})
    if "connectTimeout" in tcp:
        out["connect_timeout"] = _duration(tcp["connectTimeout"])
    out["circuit_breakers"] = {"thresholds": [{
        "max_connections": tcp.get("maxConnections", UNLIMITED),
        "max_pending_requests": http.get("http1MaxPendingRequests", UNLIMITED),
        "max_requests": http.get("http2MaxRequests", UNLIMITED),
        "max_retries": http.get("maxRetries", UNLIMITED),
    }]}
    options: Config = {}
    if "maxRequestsPerConnection" in http:
        options["max_requests_per_connection"] = http["maxRequestsPerConnection"]
    if "idleTimeout" in http:
        options["idle_timeout"] = _duration(http["idleTimeout"])
    if options:
        out["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPES["http_options"], "common_http_protocol_options": options,
            "explicit_http_config": {"http_protocol_options": {}},
        }}
    detection = policy.get("outlierDetection")
    if detection is not None:
        _unsupported(f"{where}.outlierDetection", set(detection) - {
            "consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
            "maxEjectionPercent", "minHealthPercent"})
        outlier: Config = {"enforcing_success_rate": 0}
        if "consecutive5xxErrors" in detection:
            errors = detection["consecutive5xxErrors"]
            outlier |= {"consecutive_5xx": errors, "enforcing_consecutive_5xx": 100 if errors else 0}
        if "consecutiveGatewayErrors" in detection:
            errors = detection["consecutiveGatewayErrors"]
            outlier |= {"consecutive_gateway_failure": errors,
                        "enforcing_consecutive_gateway_failure": 100 if errors else 0}
        for istio_key, envoy_key in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
            if istio_key in detection:
                outlier[envoy_key] = _duration(detection[istio_key])
        if "maxEjectionPercent" in detection:
            outlier["max_ejection_percent"] = detection["maxEjectionPercent"]
        out["outlier_detection"] = outlier
        if "minHealthPercent" in detection:
            out["common_lb_config"] = {"healthy_panic_threshold": {"value": detection["minHealthPercent"]}}
    balancer = policy.get("loadBalancer", {})
    if balancer:
        _unsupported(f"{where}.loadBalancer", set(balancer) - {"simple"})
        simple = {"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST", "RANDOM": "RANDOM"}
        if balancer.get("simple") not in simple:
            raise MeshConfigError(f"{where}.loadBalancer.simple: {balancer.get('simple')!r} is not supported by "
                                  f"the local mesh (supported: {', '.join(simple)})")
        out["lb_policy"] = simple[balancer["simple"]]
    return out


def _outbound_cluster(name: str, service: str, subset: str, rule: Mapping[str, Any] | None,
                      instances: Sequence[Instance], sidecar: Sidecar) -> Config:
    where = f"destinationrule/{rule['metadata']['name']}: spec.trafficPolicy" if rule else name
    policy = _merged_policy(rule, subset)
    labels: Mapping[str, str] = {}
    if subset:
        declared = [s for s in (rule or {"spec": {}})["spec"].get("subsets", []) if s["name"] == subset]
        if not declared:
            raise MeshConfigError(f"{name}: no DestinationRule of {service!r} declares the subset {subset!r}")
        labels = declared[0].get("labels", {})
    members = [i for i in instances
               if i.service == service and all(i.pod_labels.get(k) == v for k, v in labels.items())]
    cluster: Config = {
        "name": name, "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": i.address.envoy()}} for i in members]}]},
        **traffic_policy(policy, where),
    }
    mode = policy.get("tls", {}).get("mode", "ISTIO_MUTUAL")
    if mode == "ISTIO_MUTUAL":
        # The peer must prove it is the service: one of the identities its replicas run as.
        accounts = sorted({i.account for i in instances if i.service == service}) or [service]
        peers: list[Config] = [{"san_type": "URI", "matcher": {"exact": spiffe_id(a, sidecar.namespace)}}
                               for a in accounts]
        context = _tls_context(sidecar.certificate, peers[0]["matcher"])
        context["validation_context"]["match_typed_subject_alt_names"] = peers
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": _TYPES["upstream_tls"], "common_tls_context": context,
            "sni": name.replace("|", "_."),
        }}
    elif mode != "DISABLE":
        raise MeshConfigError(f"{where}.tls.mode: {mode!r} is not supported by the local mesh "
                              "(ISTIO_MUTUAL or DISABLE)")
    return cluster


# -- the bootstrap -----------------------------------------------------------------------------


def topology(instances: Sequence[Instance], ports: Mapping[str, int], clients: Sequence[str] = (),
             namespace: str = NAMESPACE) -> Topology:
    """What the resources may name: the instances the sidecars route to, and accounts that only call (``clients``)."""
    return Topology(
        services={s: [p] for s, p in ports.items()},
        workloads=[resources.Workload(i.service, i.pod_labels, i.account) for i in instances],
        accounts=frozenset([*(i.account for i in instances), *clients]),
        namespace=namespace,
    )


def render(mesh: Mesh, sidecar: Sidecar, instances: Sequence[Instance], ports: Mapping[str, int],
           clients: Sequence[str] = ()) -> Config:
    """The Envoy bootstrap of ``sidecar``, or :class:`MeshConfigError` naming what the resources get wrong.

    ``instances`` are every replica of every service (their sidecars' inbound addresses, labels and
    accounts), ``ports`` each service's port (the one VirtualServices and cluster names use),
    ``clients`` the accounts that call services but serve nothing (the lab's tools: ``ottlab-tools``).
    """
    me = Instance(sidecar.workload, sidecar.account, Address(), sidecar.labels)
    resources.check(mesh, topology([*instances, me], ports, clients, sidecar.namespace))
    listeners: list[Config] = []
    clusters: list[Config] = []
    if sidecar.inbound is not None:
        if sidecar.app is None:
            raise MeshConfigError(f"the sidecar of {sidecar.workload} has an inbound listener but no app address")
        listeners.append(_inbound_listener(mesh, sidecar))
        clusters.append({"name": f"inbound|{sidecar.service_port}||", "type": "STATIC",
                         "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
                         "load_assignment": {"cluster_name": f"inbound|{sidecar.service_port}||", "endpoints": [
                             {"lb_endpoints": [{"endpoint": {"address": sidecar.app.envoy()}}]}]}})
    services = {short_host(vs_host, sidecar.namespace): vs for vs in mesh.of_kind("VirtualService")
                for vs_host in vs["spec"].get("hosts", [])}
    rules = {short_host(r["spec"]["host"], sidecar.namespace): r for r in mesh.of_kind("DestinationRule")}
    wanted: dict[str, tuple[str, str, int]] = {}
    for service, address in sorted(sidecar.outbound.items()):
        if service not in ports:
            raise MeshConfigError(f"the sidecar of {sidecar.workload} calls {service!r}, which is no service "
                                  f"(known: {', '.join(sorted(ports))})")
        vs = services.get(service)
        listener = _outbound_listener(service, address, vs, ports[service], sidecar.namespace)
        listeners.append(listener)
        for route in listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
                "routes"]:
            action = route["route"]
            for name in ([action["cluster"]] if "cluster" in action else
                         [c["name"] for c in action["weighted_clusters"]["clusters"]]):
                _, port, subset, host = name.split("|")
                wanted[name] = (short_host(host.removesuffix(f".svc.{TRUST_DOMAIN}"), sidecar.namespace),
                                subset, int(port))
    for name, (service, subset, _port) in sorted(wanted.items()):
        clusters.append(_outbound_cluster(name, service, subset, rules.get(service), instances, sidecar))
    return {
        # Istio's node id form: sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<trust domain>.
        "node": {"id": f"sidecar~127.0.0.1~{sidecar.workload}.{sidecar.namespace}~{fqdn('', sidecar.namespace)[1:]}",
                 "cluster": sidecar.workload},
        "admin": {"address": sidecar.admin.envoy()},
        "watchdogs": {"main_thread_watchdog": WATCHDOG, "worker_watchdog": WATCHDOG},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def routes_by_rds(listeners: Sequence[Config], source: Callable[[str], Config],
                  inline: Collection[str] = ()) -> tuple[list[Config], list[Config]]:
    """``listeners`` whose HTTP connection managers take their routes by RDS, and those route configurations.

    As Istio delivers routes: each inline ``route_config`` is replaced by ``rds`` (its name, and the
    ConfigSource ``source(name)`` says where it comes from), so a route change updates the routes of
    connections already accepted instead of replacing the listener (whose kept connections would
    keep the old routes while it drains). One configuration per name, in the order first met; those named
    in ``inline`` (routes that never change) stay in their listeners.
    """
    out = copy.deepcopy(list(listeners))
    routes: dict[str, Config] = {}
    for listener in out:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                if (hcm.get("@type") != _TYPES["hcm"] or "route_config" not in hcm
                        or hcm["route_config"].get("name") in inline):
                    continue
                route_config = hcm.pop("route_config")
                routes.setdefault(route_config["name"], route_config)
                hcm["rds"] = {"route_config_name": route_config["name"], "config_source": source(route_config["name"])}
    return out, list(routes.values())


def write(bootstrap: Config, path: Path) -> Path:
    """``bootstrap`` as JSON at ``path`` (Envoy reads ``-c path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap, indent=2) + "\n")
    return path
