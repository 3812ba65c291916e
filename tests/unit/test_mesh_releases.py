"""A service's releases side by side (labkit.platform.mesh.releases): names, the split of a route, refusals."""

from __future__ import annotations

import pytest

from labkit.core.errors import ConfigError
from labkit.platform.mesh import releases, resources
from labkit.platform.mesh.errors import MeshConfigError

TOPOLOGY = resources.Topology(
    services={s: [8000] for s in ("auth", "catalog", "subscription", "license", "cas", "qoe", "transcoder")}
    | {"player": [8080], "gateway": [8080]},
    workloads=[
        resources.Workload("catalog", {"app.kubernetes.io/name": "catalog", "version": "v1"}, "catalog"),
        resources.Workload("catalog-v2", {"app.kubernetes.io/name": "catalog", "version": "v2"}, "catalog"),
        *(resources.Workload(s, {"app.kubernetes.io/name": s}, s)
          for s in ("auth", "subscription", "license", "cas", "qoe", "transcoder", "player", "gateway")),
    ],
    accounts=frozenset({"auth", "catalog", "subscription", "license", "cas", "qoe", "transcoder", "player", "gateway",
                        "ottlab-tools", "default"}),
)
WITHOUT_V2 = resources.Topology(TOPOLOGY.services, [w for w in TOPOLOGY.workloads if w.name != "catalog-v2"],
                                TOPOLOGY.accounts)


def test_catalog_has_a_second_release_and_nothing_else_does() -> None:
    assert releases.declared("catalog") == "v1" and releases.declared("cas") is None
    assert releases.name("catalog", "v2") == "catalog-v2"
    for service, version in (("catalog", "v1"), ("catalog", "v3"), ("cas", "v2")):
        with pytest.raises(ConfigError, match=f"{service} has no release '{version}'") as refused:
            releases.name(service, version)
        assert refused.value.hint == "a second release is declared for: catalog v2"


def test_the_committed_mesh_sends_catalog_entirely_to_v1() -> None:
    assert releases.shares(resources.load(), "catalog") == {"v1": 100}
    resources.check(resources.load(), WITHOUT_V2)


def test_a_split_changes_only_the_destinations_of_the_route() -> None:
    committed = resources.load()
    vs = releases.split("catalog", {"v1": 90, "v2": 10}, committed)
    shifted = committed.replaced(vs)
    assert releases.shares(shifted, "catalog") == {"v1": 90, "v2": 10}
    before = next(v for v in committed.of_kind("VirtualService") if v["metadata"]["name"] == "catalog")
    (route,) = vs["spec"]["http"]
    assert {k: v for k, v in route.items() if k != "route"} == {k: v for k, v in before["spec"]["http"][0].items()
                                                                 if k != "route"}
    assert route["route"][1] == {"destination": {"host": "catalog", "port": {"number": 8000}, "subset": "v2"},
                                 "weight": 10}
    resources.check(shifted, TOPOLOGY)
    assert releases.shares(committed, "catalog") == {"v1": 100}        # the mesh given is not changed


@pytest.mark.parametrize(("weights", "problem"), [
    ({"v1": 90, "v2": 20}, "spec.http.0.route: the weights sum to 110 (90 + 20), not 100"),
    ({"v1": 50, "v3": 50}, "spec.http.0.route.1.destination.subset: no DestinationRule of 'catalog' declares the "
                           "subset 'v3'"),
])
def test_bad_weights_and_an_unknown_subset_are_refused_naming_them(weights: dict[str, int], problem: str) -> None:
    shifted = resources.load().replaced(releases.split("catalog", weights, resources.load()))
    with pytest.raises(MeshConfigError) as refused:
        resources.check(shifted, TOPOLOGY)
    assert f"virtualservice/catalog: {problem}" in str(refused.value)


def test_stopping_a_release_the_mesh_still_sends_requests_is_refused() -> None:
    shifted = resources.load().replaced(releases.split("catalog", {"v1": 50, "v2": 50}, resources.load()))
    with pytest.raises(MeshConfigError) as refused, releases.stopping("catalog-v2"):
        resources.check(shifted, WITHOUT_V2)
    assert "catalog-v2 cannot stop: the mesh in force still sends it requests" in refused.value.message
    assert "the subset 'v2' of 'catalog' selects no pod" in refused.value.message
    assert refused.value.hint.startswith("give its subset weight 0 first")
    idle = resources.load().replaced(releases.split("catalog", {"v1": 100, "v2": 0}, resources.load()))
    with releases.stopping("catalog-v2"):
        resources.check(idle, WITHOUT_V2)
    with pytest.raises(MeshConfigError, match="no VirtualService 'web'"):
        releases.split("web", {"v1": 100}, resources.load())
