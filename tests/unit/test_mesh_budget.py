"""The timeout budget along a call chain: the committed routes fit it, a misconfigured chain is named."""

from __future__ import annotations

import math
from typing import Any

import pytest

from labkit.platform.mesh import budget, faults, resources
from labkit.platform.mesh.resources import Mesh

CHAIN: budget.Calls = {"gateway": (("license",),), "license": (("subscription", "catalog"), ("cas",))}


def service(name: str, timeout: str | None = None, retries: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"route": [{"destination": {"host": name}}]}
    if timeout is not None:
        route["timeout"] = timeout
    if retries is not None:
        route["retries"] = retries
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
            "spec": {"hosts": [name], "http": [route]}}


def mesh(**routes: dict[str, Any]) -> Mesh:
    return Mesh(tuple(routes.values()))


def test_a_hop_waits_for_its_timeout_or_its_tries_whichever_is_shorter() -> None:
    m = mesh(cas=service("cas", "10s", {"attempts": 2, "perTryTimeout": "2s"}),
             license=service("license", "1s", {"attempts": 3, "perTryTimeout": "500ms"}),
             catalog=service("catalog", retries={"attempts": 0}))
    cas, lic, catalog = (budget.hop(m, "x", s) for s in ("cas", "license", "catalog"))
    assert (cas.tries, cas.wait_s, cas.budget_s) == (3, 6.0, 10.0)
    assert (lic.tries, lic.wait_s) == (4, 1.0)
    assert (catalog.tries, catalog.timeout_s, catalog.wait_s) == (1, None, math.inf)
    # No VirtualService: Istio's defaults, 2 retries and no bound at all.
    other = budget.hop(m, "x", "auth")
    assert (other.attempts, other.timeout_s, other.per_try_s, other.wait_s) == (2, None, None, math.inf)


def test_calls_made_at_once_count_by_the_longest_and_stages_add_up() -> None:
    m = mesh(subscription=service("subscription", "3s", {"attempts": 0}),
             catalog=service("catalog", "1s", {"attempts": 0}),
             cas=service("cas", "2s", {"attempts": 1, "perTryTimeout": "500ms"}),
             license=service("license", "5s", {"attempts": 0}))
    assert budget.worst_case_s(m, "license", CHAIN) == 3.0 + 1.0
    assert budget.worst_case_s(m, "cas", CHAIN) == 0
    assert budget.violations(m, CHAIN) == []


def test_a_caller_giving_up_before_its_callee_is_named_with_the_callees_calls() -> None:
    m = mesh(subscription=service("subscription", "3s", {"attempts": 0}),
             catalog=service("catalog", "1s", {"attempts": 0}),
             cas=service("cas", "10s", {"attempts": 0}),
             license=service("license", "5s", {"attempts": 0}))
    (problem,) = budget.violations(m, CHAIN)
    assert problem.startswith("gateway → license: gateway gives up after 5 s, but license may wait 13 s")
    assert "subscription 3 s ∥ catalog 1 s, then cas 10 s" in problem and "nobody waits for" in problem


def test_a_callee_without_a_bound_breaks_any_budget() -> None:
    m = mesh(subscription=service("subscription", "1s", {"attempts": 0}),
             catalog=service("catalog", "1s", {"attempts": 0}),
             license=service("license", "15s", {"attempts": 0}))
    (problem,) = budget.violations(m, CHAIN)
    assert "license may wait no bound" in problem and "cas no bound" in problem


def test_retries_that_do_not_fit_their_timeout_are_named() -> None:
    m = mesh(subscription=service("subscription", "1s", {"attempts": 0}),
             catalog=service("catalog", "1s", {"attempts": 0}),
             cas=service("cas", "1s", {"attempts": 2, "perTryTimeout": "500ms"}),
             license=service("license", "15s", {"attempts": 0}))
    (problem,) = budget.violations(m, CHAIN)
    assert problem.startswith("license → cas: 3 tries × 0.5 s per try exceed its timeout 1 s")


def test_a_fault_route_is_not_the_budget_an_ordinary_request_has() -> None:
    m = mesh(cas=service("cas", "2s", {"attempts": 0}))
    faulty = faults.inject(m, faults.Fault("cas", delay_s=5))
    assert faulty.of_kind("VirtualService")[0]["spec"]["http"][0]["name"].startswith(faults.ROUTE_PREFIX)
    assert budget.hop(faulty, "license", "cas") == budget.hop(m, "license", "cas")


def test_the_committed_routes_fit_the_play_starts_chain() -> None:
    committed = resources.load()
    assert budget.violations(committed) == []
    hosts = {h for vs in committed.of_kind("VirtualService") for h in vs["spec"]["hosts"]}
    assert {h.callee for h in budget.hops(committed)} <= hosts       # every hop is bounded by a committed route
    table = budget.frame(committed)
    assert (table["caller waits at most s"] < math.inf).all()
    license_row = table[(table.caller == "gateway") & (table.callee == "license")].iloc[0]
    assert license_row["callee's own worst case s"] < license_row["timeout s"]


@pytest.mark.parametrize("callee", ["subscription", "cas"])
def test_lengthening_a_leafs_timeout_past_the_gateways_breaks_the_committed_chain(callee: str) -> None:
    committed = resources.load()
    vs = next(v for v in committed.of_kind("VirtualService") if v["metadata"]["name"] == callee)
    longer = {**vs, "spec": {**vs["spec"], "http": [{**vs["spec"]["http"][0], "timeout": "30s",
                                                       "retries": {"attempts": 0}}]}}
    found = budget.violations(committed.replaced(longer))
    assert len(found) == 1 and found[0].startswith("gateway → license: gateway gives up after 15 s"), found


def test_bounding_a_route_keeps_its_destination_and_fixes_the_budget() -> None:
    committed = resources.load()
    mis = budget.bounded(budget.bounded(committed, "license", timeout_s=2), "cas", timeout_s=10)
    assert budget.hop(mis, "gateway", "license") == budget.Hop("gateway", "license", 2.0, 0, None)
    assert len(budget.violations(mis)) == 1
    fixed = mis
    for service, share in {"catalog": 8, "subscription": 4, "cas": 4}.items():
        fixed = budget.bounded(fixed, service, timeout_s=2 / share)
    assert budget.violations(fixed) == [] and budget.worst_case_s(fixed, "license") == 1.0
    cas = next(v for v in fixed.of_kind("VirtualService") if v["metadata"]["name"] == "cas")
    assert cas["spec"]["http"][0] == {"route": [{"destination": {"host": "cas", "port": {"number": 8000}}}],
                                      "timeout": "500ms", "retries": {"attempts": 0}}
    retried = budget.bounded(committed, "cas", timeout_s=3, attempts=2, per_try_s=1)
    assert budget.hop(retried, "license", "cas") == budget.Hop("license", "cas", 3.0, 2, 1.0)
    cas = next(v for v in retried.of_kind("VirtualService") if v["metadata"]["name"] == "cas")
    assert cas["spec"]["http"][0]["retries"]["retryOn"] == "connect-failure,refused-stream,gateway-error"
    with pytest.raises(faults.FaultError, match="no VirtualService routes 'nowhere'"):
        budget.bounded(committed, "nowhere", timeout_s=1)
