"""The mesh's resources refuse bad input with a message naming the object, the field and why."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from labkit.platform.mesh import resources, schema
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.units import duration_seconds

TOPOLOGY = resources.Topology(
    services={"catalog": [8000], "license": [8000]},
    workloads=[
        resources.Workload("catalog-v1", {"app.kubernetes.io/name": "catalog", "version": "v1"}, "catalog"),
        resources.Workload("catalog-v2", {"app.kubernetes.io/name": "catalog", "version": "v2"}, "catalog"),
        resources.Workload("license", {"app.kubernetes.io/name": "license"}, "license"),
    ],
    accounts=frozenset({"catalog", "license"}),
)
RULE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "catalog"},
    "spec": {"host": "catalog", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                            {"name": "v2", "labels": {"version": "v2"}}]},
}
CANARY: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "catalog"},
    "spec": {"hosts": ["catalog"], "http": [
        {"match": [{"headers": {"x-lesson": {"exact": "05"}}}],
         "fault": {"delay": {"percentage": {"value": 100}, "fixedDelay": "2s"},
                   "abort": {"percentage": {"value": 10}, "httpStatus": 503}},
         "route": [{"destination": {"host": "catalog", "subset": "v1"}}]},
        {"route": [{"destination": {"host": "catalog", "subset": "v1"}, "weight": 90},
                   {"destination": {"host": "catalog.ottlab.svc.cluster.local", "subset": "v2"}, "weight": 10}],
         "timeout": "10s", "retries": {"attempts": 2, "perTryTimeout": "2s", "retryOn": "connect-failure"}},
    ]},
}


def problems_with(vs: dict[str, Any]) -> list[str]:
    return resources.problems(resources.Mesh((RULE, vs)), TOPOLOGY)


def test_a_valid_canary_with_a_scoped_fault_has_no_problem() -> None:
    assert problems_with(CANARY) == []
    resources.check(resources.Mesh((RULE, CANARY)), TOPOLOGY)


def test_weights_not_summing_to_100_are_refused_with_the_sum() -> None:
    vs = copy.deepcopy(CANARY)
    vs["spec"]["http"][1]["route"][1]["weight"] = 20
    with pytest.raises(MeshConfigError) as refused:
        resources.check(resources.Mesh((RULE, vs)), TOPOLOGY)
    assert "virtualservice/catalog: spec.http.1.route: the weights sum to 110 (90 + 20), not 100" in str(refused.value)


def test_an_unknown_host_is_refused_naming_the_known_ones() -> None:
    vs = copy.deepcopy(CANARY)
    vs["spec"]["http"][1]["route"][0]["destination"]["host"] = "catalogue"
    (problem,) = problems_with(vs)
    assert problem == ("virtualservice/catalog: spec.http.1.route.0.destination.host: 'catalogue' is no Service "
                       "(known: catalog, license)")


def test_a_negative_percentage_is_refused() -> None:
    vs = copy.deepcopy(CANARY)
    vs["spec"]["http"][0]["fault"]["delay"]["percentage"]["value"] = -5
    assert problems_with(vs) == [
        "virtualservice/catalog: spec.http.0.fault.delay.percentage.value: -5 is not a percentage (0 to 100)"
    ]


def test_an_abort_status_that_is_no_http_status_and_an_unknown_subset_are_refused() -> None:
    vs = copy.deepcopy(CANARY)
    vs["spec"]["http"][0]["fault"]["abort"]["httpStatus"] = 42
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v3"
    assert problems_with(vs) == [
        "virtualservice/catalog: spec.http.0.route.0.destination.subset: no DestinationRule of 'catalog' declares "
        "the subset 'v3'",
        "virtualservice/catalog: spec.http.0.fault.abort.httpStatus: 42 is not an HTTP status (200 to 599)",
    ]


def test_the_crd_schema_refuses_an_unknown_field_a_wrong_type_and_a_bad_duration() -> None:
    vs = copy.deepcopy(CANARY)
    vs["spec"]["http"][1]["retries"]["perTryTimout"] = "2s"
    vs["spec"]["http"][1]["retries"]["attempts"] = "two"
    vs["spec"]["http"][1]["timeout"] = "ten seconds"
    found = problems_with(vs)
    assert "virtualservice/catalog: spec.http.1.retries: Additional properties are not allowed " \
           "('perTryTimout' was unexpected)" in found
    where = "virtualservice/catalog: spec.http.1"
    assert any(p.startswith(f"{where}.retries.attempts: 'two' is not of type") for p in found)
    assert f"{where}.timeout: 'ten seconds' must be a valid duration greater than 1ms" in found


def test_a_kind_without_a_pinned_schema_is_a_problem_not_a_pass() -> None:
    gateway = {"apiVersion": "networking.istio.io/v1", "kind": "EnvoyFilter", "metadata": {"name": "x"}, "spec": {}}
    (problem,) = schema.problems(gateway)
    assert problem.startswith(f"envoyfilter/x: no Istio {schema.ISTIO_VERSION} schema for apiVersion")


def test_a_policy_must_select_a_workload_and_name_existing_accounts() -> None:
    policy = {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "cas"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "cas"}}, "action": "ALLOW",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/ottlab/sa/licence"]}}],
                            "to": [{"operation": {"paths": ["sessions"]}}]}]},
    }
    assert resources.problems(resources.Mesh((policy,)), TOPOLOGY) == [
        "authorizationpolicy/cas: spec.selector: no workload has the labels {'app.kubernetes.io/name': 'cas'}",
        "authorizationpolicy/cas: spec.rules.0.from.0.source.principals: 'cluster.local/ns/ottlab/sa/licence' is no "
        "service account of namespace ottlab",
        "authorizationpolicy/cas: spec.rules.0.to.0.operation.paths: 'sessions' does not start with /",
    ]


def test_a_subset_no_pod_has_may_be_declared_but_not_sent_requests() -> None:
    rule = copy.deepcopy(RULE)
    rule["spec"]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    # Declared for a version not running yet (Bookinfo's v3): no problem, and none at weight 0.
    assert resources.problems(resources.Mesh((rule, CANARY)), TOPOLOGY) == []
    idle = copy.deepcopy(CANARY)
    idle["spec"]["http"][1]["route"].append({"destination": {"host": "catalog", "subset": "v3"}, "weight": 0})
    assert resources.problems(resources.Mesh((rule, idle)), TOPOLOGY) == []
    sent = copy.deepcopy(CANARY)
    sent["spec"]["http"][1]["route"][1]["destination"]["subset"] = "v3"
    assert resources.problems(resources.Mesh((rule, sent)), TOPOLOGY) == [
        "virtualservice/catalog: spec.http.1.route.1.destination.subset: the subset 'v3' of 'catalog' selects no "
        "pod (labels {'version': 'v3'}): every request sent there would fail; run that version first, or give it "
        "weight 0"
    ]
    # The same route before the canary runs (no pod labelled v2): refused the same way.
    without_v2 = resources.Topology(TOPOLOGY.services, [w for w in TOPOLOGY.workloads if w.name != "catalog-v2"],
                                    TOPOLOGY.accounts)
    (problem,) = resources.problems(resources.Mesh((RULE, CANARY)), without_v2)
    assert problem.startswith("virtualservice/catalog: spec.http.1.route.1.destination.subset: the subset 'v2' of "
                              "'catalog' selects no pod (labels {'version': 'v2'})")


def test_a_subset_declared_twice_is_refused() -> None:
    rule = copy.deepcopy(RULE)
    rule["spec"]["subsets"].append({"name": "v2", "labels": {"version": "v3"}})
    assert resources.problems(resources.Mesh((rule,)), TOPOLOGY) == [
        "destinationrule/catalog: spec.subsets: 'v2' is declared 2 times"
    ]


@pytest.mark.parametrize(("text", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("0.5s", 0.5),
                                               ("1h", 3600.0), ("250us", 0.00025)])
def test_durations_as_istio_writes_them(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "s", "2 s", "-1s", "2sec"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(MeshConfigError, match="is not a duration"):
        duration_seconds(text)
