"""A canary on the local target with the mesh on: catalog v2 beside v1, requests split by the VirtualService.

catalog's release v2 runs as supervised processes behind a sidecar of its own, its pod label
``version: v2``; the gateway's sidecar sends catalog's requests to the DestinationRule's subsets
by the VirtualService's weights. Each answer says which release gave it (``X-OTT-Version``): the
split measured over N requests is within four standard deviations of the weights, and the
gateway's sidecar counted as many requests per subset cluster. Bad routes are refused with the
previous configuration in force, and v2 cannot stop while it still gets requests.
"""

from __future__ import annotations

import http.client
import math
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from _labs import running_lab

from labkit.clients.sidecar import Sidecar
from labkit.platform.mesh import releases, resources
from labkit.platform.mesh.errors import MeshConfigError
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
N = 400
CLUSTER = "cluster.outbound|8000|{}|catalog.ottlab.svc.cluster.local.upstream_rq_completed"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("mesh-canary"), 13400, ["apis"], mesh="strict") as target:
        yield target


def versions(lab: LocalTarget, n: int) -> Counter[str]:
    with httpx.Client(base_url=lab.endpoint("gateway"), timeout=10) as client:
        answers = [client.get("/api/catalog/titles") for _ in range(n)]
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    return Counter(a.headers["x-ott-version"] for a in answers)


def completed(gateway: Sidecar) -> dict[str, int]:
    return {v: gateway.counter(CLUSTER.format(v)) for v in ("v1", "v2")}


def within(count: int, n: int, share: float) -> bool:
    return abs(count - n * share) <= 4 * math.sqrt(n * share * (1 - share))


def test_the_canary_gets_its_share_and_the_sidecars_count_it(lab: LocalTarget) -> None:
    committed = lab.mesh()
    assert releases.shares(committed, "catalog") == {"v1": 100}
    status = lab.start_version("catalog", "v2")
    assert status.healthy, status
    names = {s.name: s for s in lab.status()}
    assert names["catalog-v2"].healthy and names["catalog-v2-proxy"].healthy
    assert (lab.cfg.run_dir / "mesh" / "catalog-v2-0.sock").is_socket()
    # Started, it gets nothing until a route gives it a weight: the committed mesh sends all to v1.
    assert versions(lab, 20) == Counter({"v1": 20})
    gateway = Sidecar(lab.mesh_sidecar("gateway"))
    for weights in ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}):
        lab.apply_mesh(committed.replaced(releases.split("catalog", weights, committed)))
        before = completed(gateway)
        measured = versions(lab, N)
        counted = {v: n - before[v] for v, n in completed(gateway).items()}
        assert within(measured["v2"], N, weights["v2"] / 100), (weights, measured)
        assert measured["v1"] + measured["v2"] == N
        assert counted == {"v1": measured["v1"], "v2": measured["v2"]}, (counted, measured)
    # v2's own sidecar took them, labelled as the subset: its inbound counted its share (and the probes).
    assert Sidecar(lab.mesh_sidecar("catalog-v2")).inbound_counter("downstream_rq_total") >= measured["v2"]


def test_bad_routes_are_refused_and_the_previous_one_stays(lab: LocalTarget) -> None:
    in_force = lab.mesh()
    gateway = Sidecar(lab.mesh_sidecar("gateway"))
    clusters = local_mesh.versions(gateway.url)
    for weights, problem in (({"v1": 90, "v2": 20}, "the weights sum to 110 (90 + 20), not 100"),
                             ({"v1": 50, "v3": 50}, "no DestinationRule of 'catalog' declares the subset 'v3'")):
        with pytest.raises(MeshConfigError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
            lab.apply_mesh(in_force.replaced(releases.split("catalog", weights, in_force)))
        assert lab.mesh() == in_force
        assert local_mesh.versions(gateway.url) == clusters        # no sidecar got anything new
    # v2 cannot stop while it gets requests; at weight 0 it can, and a route to it is refused after.
    with pytest.raises(MeshConfigError, match="catalog-v2 cannot stop"):
        lab.stop_version("catalog", "v2")
    assert {s.name: s for s in lab.status()}["catalog-v2"].healthy
    lab.apply_mesh(resources.load())
    lab.stop_version("catalog", "v2")
    assert "catalog-v2" not in {c.name for c in lab.components}
    assert versions(lab, 20) == Counter({"v1": 20})
    with pytest.raises(MeshConfigError, match="the subset 'v2' of 'catalog' selects no pod"):
        lab.apply_mesh(resources.load().replaced(releases.split("catalog", {"v1": 90, "v2": 10}, resources.load())))
    assert lab.mesh() == resources.load()


def test_a_kept_connection_takes_the_new_route_on_its_next_request(lab: LocalTarget) -> None:
    """Routes come by RDS: a connection a sidecar already holds takes a route change on its next request.

    Routes inline in a replaced listener stayed with the connections it had accepted while it
    drained: back from 50/50 to v1, such a connection's next request took the old route to the v2
    cluster already removed (Envoy's 503). Here one connection to the gateway's sidecar carries
    every request, before and after, and the sidecar's listeners never change.
    """
    committed = lab.mesh()
    assert lab.start_version("catalog", "v2").healthy
    gateway = Sidecar(lab.mesh_sidecar("gateway"))
    port = lab.component(local_mesh.GATEWAY_PROXY).local_port(lab.cfg, "out-catalog")
    connection = http.client.HTTPConnection(lab.cfg.host, port, timeout=10)

    def answers(n: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            connection.request("GET", "/titles")
            response = connection.getresponse()
            response.read()
            seen[f"{response.status} {response.getheader('x-ott-version')}"] += 1
        return seen

    try:
        lab.apply_mesh(committed.replaced(releases.split("catalog", {"v1": 50, "v2": 50}, committed)))
        split = answers(40)
        assert split["200 v1"] + split["200 v2"] == 40 and split["200 v2"] > 0, split
        assert connection.sock is not None
        kept, before = connection.sock.getsockname(), local_mesh.versions(gateway.url)
        lab.apply_mesh(committed)
        assert answers(40) == Counter({"200 v1": 40})
        assert connection.sock is not None and connection.sock.getsockname() == kept  # one connection all along
        after = local_mesh.versions(gateway.url)
        assert after["lds"] == before["lds"] and after["rds catalog"] != before["rds catalog"]
    finally:
        connection.close()
        lab.apply_mesh(committed)
        lab.stop_version("catalog", "v2")
