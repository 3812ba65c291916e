"""A fault of one replica: rendered in that replica's own sidecar (its inbound side), kept and read back."""

from __future__ import annotations

from typing import Any

import pytest
from _mesh import STRICT

from labkit.platform.mesh import envoy, identity, resources
from labkit.platform.mesh.faults import Fault, FaultError, ReplicaFault

INSTANCES = [envoy.Instance("cas", "cas", envoy.Address(port=9104)), envoy.Instance("license", "license",
                                                                                   envoy.Address(port=9103))]
PORTS = {"cas": 8000, "license": 8000}


def inbound_hcm(ca: identity.LabCA, fault: ReplicaFault | None) -> dict[str, Any]:
    sidecar = envoy.Sidecar("cas", "cas", ca.issue("cas"), admin=envoy.Address(port=9900),
                            inbound=envoy.Address(port=9104), app=envoy.Address(path="/tmp/cas.sock"), fault=fault)
    bootstrap = envoy.render(resources.Mesh((STRICT,)), sidecar, INSTANCES, PORTS)
    (inbound,) = [x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "inbound_8000"]
    hcm: dict[str, Any] = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def route_fault(ca: identity.LabCA, fault: ReplicaFault | None) -> dict[str, Any] | None:
    """The fault of the inbound route (its fault filter's per-route config), None without one."""
    (route,) = inbound_hcm(ca, fault)["route_config"]["virtual_hosts"][0]["routes"]
    config: dict[str, Any] | None = route.get("typed_per_filter_config", {}).get(envoy.FAULT_FILTER)
    return config


def test_a_replica_fault_is_its_inbound_routes_fault_and_the_listener_stays_the_same(ca: identity.LabCA) -> None:
    faulty = ReplicaFault(Fault("cas", abort_status=503, percent=30), 1)
    # The fault filter is always before the router; the fault itself is the route's (it comes by RDS,
    # so injecting it changes no listener and reaches the connections already held).
    without, with_fault = inbound_hcm(ca, None), inbound_hcm(ca, faulty)
    assert [f["name"] for f in with_fault["http_filters"]] == [envoy.FAULT_FILTER, "envoy.filters.http.router"]
    assert with_fault["http_filters"] == without["http_filters"]
    assert route_fault(ca, None) is None
    config = route_fault(ca, faulty)
    assert config is not None and config["@type"].endswith("HTTPFault")
    assert config["abort"] == {"http_status": 503, "percentage": {"numerator": 300000, "denominator": "MILLION"}}
    assert "delay" not in config and "headers" not in config


def test_a_scoped_delay_matches_its_header_and_method(ca: identity.LabCA) -> None:
    config = route_fault(ca, ReplicaFault(Fault("cas", delay_s=1.5, header=("x-user-id", "u1")), 0, "POST"))
    assert config is not None
    assert config["delay"] == {"fixed_delay": "1.500s", "percentage": {"numerator": 1000000, "denominator": "MILLION"}}
    assert config["headers"] == [{"name": "x-user-id", "string_match": {"exact": "u1"}},
                                 {"name": ":method", "string_match": {"exact": "POST"}}]


def test_a_replica_fault_round_trips_and_says_which_replica() -> None:
    each = ReplicaFault(Fault("cas", abort_status=503, percent=30, header=("x-user-id", "u1")), 2)
    assert ReplicaFault.of(each.as_dict()) == each
    assert each.describe() == "abort 503 of 30% of the requests to cas replica 2 with x-user-id: u1"
    posts = ReplicaFault(Fault("cas", abort_status=503, percent=30), 0, "POST")
    assert ReplicaFault.of(posts.as_dict()) == posts
    assert posts.describe() == "abort 503 of 30% of the POST requests to cas replica 0 (every request)"
    with pytest.raises(FaultError, match="not a replica number"):
        ReplicaFault(Fault("cas", abort_status=503), -1)
    with pytest.raises(FaultError, match="not an HTTP method"):
        ReplicaFault(Fault("cas", abort_status=503), 0, "post")
