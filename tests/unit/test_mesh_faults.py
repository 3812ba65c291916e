"""Faults as routes of the service's VirtualService: added before the committed routes, found, removed, refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from labkit.platform.mesh import envoy, faults, identity, resources, schema
from labkit.platform.mesh.faults import Fault, FaultError

PORTS = {"auth": 8000, "catalog": 8000, "subscription": 8000, "license": 8000, "cas": 8000, "qoe": 8000,
         "player": 8080, "transcoder": 8000, "gateway": 8080}
INSTANCES = [envoy.Instance(s, s, envoy.Address(port=20000 + i)) for i, s in enumerate(PORTS)]
TOPOLOGY = envoy.topology(INSTANCES, PORTS, clients=["ottlab-tools"])
LESSON = ("x-ottlab-user", "alice")


@pytest.fixture(scope="module")
def committed() -> resources.Mesh:
    mesh = resources.load()
    resources.check(mesh, TOPOLOGY)
    return mesh


def routes(mesh: resources.Mesh, name: str) -> list[dict[str, Any]]:
    (vs,) = [v for v in mesh.of_kind("VirtualService") if v["metadata"]["name"] == name]
    http: list[dict[str, Any]] = vs["spec"]["http"]
    return http


def valid(mesh: resources.Mesh) -> resources.Mesh:
    for obj in mesh.objects:
        schema.validate(obj)
    resources.check(mesh, TOPOLOGY)
    return mesh


def test_a_scoped_delay_is_a_route_before_the_committed_one_to_the_same_destination(
        committed: resources.Mesh) -> None:
    mesh = valid(faults.inject(committed, Fault("license", delay_s=2, header=LESSON)))
    first, rest = routes(mesh, "license")[0], routes(mesh, "license")[1:]
    assert rest == routes(committed, "license")
    assert first == {
        "name": "ottlab-fault.0.x-ottlab-user",
        "match": [{"headers": {"x-ottlab-user": {"exact": "alice"}}}],
        "route": [{"destination": {"host": "license", "port": {"number": 8000}}}],
        "fault": {"delay": {"percentage": {"value": 100.0}, "fixedDelay": "2s"}},
        "retries": {"attempts": 0},
    }
    # Nothing else changed, and the committed mesh itself is untouched (a new Mesh came back).
    others = [o for o in mesh.objects if o["metadata"]["name"] != "license" or o["kind"] != "VirtualService"]
    assert others == [o for o in committed.objects if o["metadata"]["name"] != "license"
                      or o["kind"] != "VirtualService"]
    assert len(routes(committed, "license")) == 1


def test_an_abort_on_every_request_has_no_match_and_its_percentage(committed: resources.Mesh) -> None:
    mesh = valid(faults.inject(committed, Fault("cas", abort_status=503, percent=12.5)))
    first = routes(mesh, "cas")[0]
    assert "match" not in first
    assert first["fault"] == {"abort": {"percentage": {"value": 12.5}, "httpStatus": 503}}
    assert faults.listing(mesh) == [Fault("cas", abort_status=503, percent=12.5)]


def test_listing_reads_back_each_fault_and_clear_removes_only_fault_routes(committed: resources.Mesh) -> None:
    both = Fault("license", delay_s=1.5, abort_status=500, percent=50, header=LESSON)
    mesh = faults.inject(faults.inject(committed, both), Fault("catalog", delay_s=0.25))
    mesh = valid(faults.inject(mesh, Fault("license", abort_status=503)))
    assert faults.listing(mesh) == [Fault("catalog", delay_s=0.25), both, Fault("license", abort_status=503)]
    assert routes(mesh, "catalog")[0]["fault"]["delay"]["fixedDelay"] == "250ms"
    # The scoped fault comes first: the lesson's own requests meet it even while every request is aborted.
    assert [r.get("name") for r in routes(mesh, "license")] == [
        "ottlab-fault.0.x-ottlab-user", "ottlab-fault.0", None]
    only_license = valid(faults.clear(mesh, "license"))
    assert faults.listing(only_license) == [Fault("catalog", delay_s=0.25)]
    assert routes(only_license, "license") == routes(committed, "license")
    assert faults.clear(mesh) == committed
    assert faults.clear(committed) == committed


def test_a_fault_copies_every_committed_route_keeping_matches_and_weights(committed: resources.Mesh) -> None:
    (vs,) = [copy.deepcopy(v) for v in committed.of_kind("VirtualService") if v["metadata"]["name"] == "catalog"]
    canary = {"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/titles"}}],
              "route": [{"destination": {"host": "catalog", "port": {"number": 8000}}, "weight": 90},
                        {"destination": {"host": "catalog", "port": {"number": 8000}}, "weight": 10}]}
    vs["spec"]["http"].insert(0, canary)
    mesh = faults.inject(committed.replaced(vs), Fault("catalog", delay_s=2, header=LESSON))
    added = routes(mesh, "catalog")[:2]
    assert added[0]["match"] == [{"headers": {"end-user": {"exact": "jason"}, "x-ottlab-user": {"exact": "alice"}},
                                  "uri": {"prefix": "/titles"}}]
    assert added[0]["route"] == canary["route"]
    assert added[1]["match"] == [{"headers": {"x-ottlab-user": {"exact": "alice"}}}]
    assert [r.get("name") for r in routes(mesh, "catalog")] == [
        "ottlab-fault.0.x-ottlab-user", "ottlab-fault.1.x-ottlab-user", None, None]
    assert faults.listing(mesh) == [Fault("catalog", delay_s=2, header=LESSON)]


def test_a_second_fault_on_the_same_service_and_header_is_refused_unless_replaced(committed: resources.Mesh) -> None:
    mesh = faults.inject(committed, Fault("license", delay_s=2, header=LESSON))
    with pytest.raises(FaultError, match="license already has a fault on x-ottlab-user: alice") as refused:
        faults.inject(mesh, Fault("license", abort_status=503, header=LESSON))
    assert "ottlab fault clear license" in refused.value.hint and "--replace" in refused.value.hint
    # Another value of the same header is the same scope: one fault per service and header name.
    with pytest.raises(FaultError, match="already has a fault"):
        faults.inject(mesh, Fault("license", abort_status=503, header=("x-ottlab-user", "bob")))
    replaced = valid(faults.inject(mesh, Fault("license", abort_status=503, header=LESSON), replace=True))
    assert faults.listing(replaced) == [Fault("license", abort_status=503, header=LESSON)]
    assert len(routes(replaced, "license")) == 2


def test_a_service_without_a_virtual_service_is_refused_naming_the_known_ones(committed: resources.Mesh) -> None:
    with pytest.raises(FaultError, match="no service named 'licence' has a VirtualService") as refused:
        faults.inject(committed, Fault("licence", delay_s=2))
    assert "auth, cas, catalog, license, player, qoe, subscription" in refused.value.hint
    with pytest.raises(FaultError, match="'gateway'"):
        faults.clear(committed, "gateway")


@pytest.mark.parametrize(("fault", "message"), [
    (dict(), "needs a delay, an abort or both"),
    (dict(delay_s=2, percent=-1), "percent -1 is not a percentage"),
    (dict(delay_s=2, percent=100.5), "percent 100.5 is not a percentage"),
    (dict(delay_s=0), "delay 0 s is not a delay"),
    (dict(delay_s=-2), "delay -2 s is not a delay"),
    (dict(delay_s=float("inf")), "delay inf s is not a delay"),
    (dict(abort_status=600), "abort status 600 is not an HTTP status Istio can answer"),
    (dict(abort_status=99), "abort status 99 is not an HTTP status"),
    (dict(abort_status=204), "abort status 204 is not an HTTP error"),
    (dict(abort_status=302), "abort status 302 is not an HTTP error"),
    (dict(delay_s=1, header=("X Bad", "a")), "header name 'X Bad' is not a header"),
    (dict(delay_s=1, header=("x-ok", "a\nb")), "needs a value without control characters"),
])
def test_bad_faults_are_refused_before_anything_changes(fault: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultError, match=message) as refused:
        Fault("license", **fault)
    assert refused.value.hint


@pytest.mark.parametrize("text", ["x-user", "=alice", "x-user=", ""])
def test_a_malformed_header_is_refused(text: str) -> None:
    with pytest.raises(FaultError, match="is not NAME=VALUE"):
        faults.header(text)


def test_a_header_name_is_lowercased_and_its_value_kept() -> None:
    assert faults.header("X-Ottlab-User=Alice=1") == ("x-ottlab-user", "Alice=1")


def test_the_fault_says_what_it_does() -> None:
    assert Fault("license", delay_s=2, abort_status=503, percent=50, header=LESSON).describe() == (
        "delay 2s and abort 503 of 50% of the requests to license with x-ottlab-user: alice")
    assert Fault("cas", abort_status=500).describe() == "abort 500 of 100% of the requests to cas (every request)"


def test_the_sidecar_renders_the_injected_fault_as_envoys_fault_filter(committed: resources.Mesh,
                                                                        tmp_path: Path) -> None:
    ca = identity.LabCA.ensure(tmp_path / "ca")
    mesh = faults.inject(committed, Fault("cas", delay_s=1.5, abort_status=503, percent=25, header=LESSON))
    sidecar = envoy.Sidecar("license", "license", ca.issue("license"), admin=envoy.Address(port=9900),
                            outbound={"cas": envoy.Address(port=9201)})
    bootstrap = envoy.render(mesh, sidecar, INSTANCES, PORTS, clients=["ottlab-tools"])
    (listener,) = [x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "outbound_cas"]
    config = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in config["http_filters"]] == [envoy.FAULT_FILTER, "envoy.filters.http.router"]
    faulty, plain = config["route_config"]["virtual_hosts"][0]["routes"]
    assert faulty["match"] == {"prefix": "/", "headers": [
        {"name": "x-ottlab-user", "string_match": {"exact": "alice"}}]}
    assert faulty["typed_per_filter_config"][envoy.FAULT_FILTER] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": "1.500s", "percentage": {"numerator": 250000, "denominator": "MILLION"}},
        "abort": {"http_status": 503, "percentage": {"numerator": 250000, "denominator": "MILLION"}},
    }
    # As Istio: no retry of an injected fault, no timeout on its route; the committed route keeps both.
    assert "retry_policy" not in faulty["route"] and faulty["route"]["timeout"] == "0s"
    assert faulty["route"]["cluster"] == plain["route"]["cluster"] == "outbound|8000||cas.ottlab.svc.cluster.local"
    assert plain["route"]["timeout"] == "10.000s" and plain["route"]["retry_policy"]["num_retries"] == 2
    assert "typed_per_filter_config" not in plain
    cleared = envoy.render(faults.clear(mesh), sidecar, INSTANCES, PORTS, clients=["ottlab-tools"])
    assert cleared == envoy.render(committed, sidecar, INSTANCES, PORTS, clients=["ottlab-tools"])
