"""The service mesh's resources (k8s/components/mesh), offline: they render, validate and name what exists.

- added to every overlay, the component renders with the pinned kubectl; every object validates
  strictly, the built-in kinds against the Kubernetes schemas and the Istio kinds against the CRD
  schemas of the pinned Istio (the same version ``ottlab addons install`` puts on a cluster);
- each VirtualService, DestinationRule and AuthorizationPolicy names Services, ports, workloads
  and service accounts that exist in the rendered manifests;
- the component changes only what it must: each meshed workload runs as its own service account
  and the namespace asks for sidecar injection;
- the VirtualServices carry the gateway's declared timeouts and retries (routes.py), and the
  AuthorizationPolicies grant the least privileges issue 13 lists.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from test_manifests import NAMESPACE, schema_problems

from labkit.core.config import repo_root
from labkit.platform.layers.apis.routes import ROUTES
from labkit.platform.mesh import resources, schema
from labkit.platform.mesh.units import duration_seconds
from labkit.targets.kube import manifest

MESHED = ["gateway", "auth", "catalog", "subscription", "license", "cas", "qoe", "player", "transcoder"]
SIDECAR_ANNOTATIONS = {"proxy.istio.io/config", "prometheus.istio.io/merge-metrics"}


@functools.cache
def rendered(overlay: str, with_mesh: bool) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay), components=("mesh",) if with_mesh else ()))


def by_ref(objects: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def mesh_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered("kind", True) if o["kind"] == kind}


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_with_every_overlay_every_object_validates_strictly_istio_kinds_included(overlay: str) -> None:
    objects = rendered(overlay, True)
    assert {o["kind"] for o in objects} >= set(resources.MESH_KINDS)
    problems = [p for obj in objects for p in schema_problems(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_every_route_rule_and_policy_names_services_ports_workloads_and_accounts_that_exist(overlay: str) -> None:
    objects = rendered(overlay, True)
    topology = resources.Topology.of(objects)
    mesh = resources.Mesh(tuple(o for o in objects if schema.is_istio(o)))
    assert resources.problems(mesh, topology) == []
    # The same objects as the files labkit reads for the local target.
    def specs(objects: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], Any]:
        return {(o["kind"], o["metadata"]["name"]): o["spec"] for o in objects}

    assert specs(mesh.objects) == specs(resources.load().objects)


def test_a_route_to_a_service_or_port_that_does_not_exist_is_found_in_the_rendered_manifests() -> None:
    objects = rendered("kind", True)
    topology = resources.Topology.of(objects)
    vs = yaml.safe_load(yaml.safe_dump(mesh_objects("VirtualService")["cas"]))
    vs["spec"]["http"][0]["route"][0]["destination"] = {"host": "cas", "port": {"number": 9999}}
    policy = yaml.safe_load(yaml.safe_dump(mesh_objects("AuthorizationPolicy")["cas"]))
    policy["spec"]["rules"][0]["from"][0]["source"]["principals"] = ["cluster.local/ns/ottlab/sa/nobody"]
    mesh = resources.load().replaced(vs).replaced(policy)
    found = resources.problems(mesh, topology)
    assert any("Service 'cas' has no port 9999 (it has 8000)" in p for p in found), found
    assert any("'cluster.local/ns/ottlab/sa/nobody' is no service account" in p for p in found), found


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_it_adds_identities_and_injection_and_changes_nothing_else(overlay: str) -> None:
    plain, meshed = by_ref(rendered(overlay, False)), by_ref(rendered(overlay, True))
    added = set(meshed) - set(plain)
    assert set(plain) <= set(meshed)
    accounts = {("ServiceAccount", n) for n in [*MESHED, "ottlab-tools"]}
    assert {ref for ref in added if ref[0] == "ServiceAccount"} == accounts
    assert {kind for kind, _ in added} == {"ServiceAccount", *resources.MESH_KINDS}
    for ref, obj in plain.items():
        changed = meshed[ref]
        if ref == ("Namespace", NAMESPACE):
            assert changed["metadata"]["labels"] == {**obj["metadata"]["labels"], "istio-injection": "enabled"}
        elif ref[0] == "Deployment" and ref[1] in MESHED:
            assert changed["spec"]["template"]["spec"].pop("serviceAccountName") == ref[1]
            # Istio's sidecar settings (tests/kube/test_mesh_on_kube.py says which and why).
            annotations = changed["spec"]["template"]["metadata"]["annotations"]
            assert {k for k in annotations if "istio.io/" in k} >= SIDECAR_ANNOTATIONS, ref
            changed["spec"]["template"]["metadata"]["annotations"] = {
                k: v for k, v in annotations.items() if "istio.io/" not in k}
            assert changed == obj, f"the component changed more than the account and sidecar of {ref}"
        elif ref[0] in ("Deployment", "StatefulSet", "Job"):
            # A workload outside the mesh says so: no sidecar although the namespace asks for injection.
            assert changed["spec"]["template"]["metadata"]["labels"].pop("sidecar.istio.io/inject") == "false", ref
            assert changed == obj, f"the component changed more than the injection label of {ref}"
        else:
            assert changed == obj, f"the component changed {ref}"
    for ref in added:
        obj = meshed[ref]
        labels = manifest.labels(obj)
        assert obj["metadata"]["namespace"] == NAMESPACE, ref
        assert labels[manifest.PART_OF_LABEL] == manifest.PART_OF and labels.get(manifest.LAYER_LABEL), ref


def test_the_crd_schemas_are_those_of_the_istio_the_addons_install() -> None:
    addons = yaml.safe_load((repo_root() / "k8s" / "addons" / "addons.yaml").read_text())["addons"]
    versions = {a["version"] for a in addons if a["chart"] in {"base", "istiod"}}
    assert versions == {schema.ISTIO_VERSION}
    assert f"tag {schema.ISTIO_VERSION} " in schema.CRDS_FILE.read_text().split("\napiVersion", 1)[0]
    assert {kind for _, kind in schema.kinds()} == set(resources.MESH_KINDS)


def test_mtls_is_strict_for_the_namespace_and_permissive_only_at_the_viewers_entry() -> None:
    policies = mesh_objects("PeerAuthentication")
    assert policies["default"]["spec"] == {"mtls": {"mode": "STRICT"}}
    others = {n: p["spec"] for n, p in policies.items() if n != "default"}
    assert others == {"gateway": {"selector": {"matchLabels": {manifest.NAME_LABEL: "gateway"}},
                                  "mtls": {"mode": "PERMISSIVE"}}}


def test_every_route_of_the_gateway_has_its_declared_timeout_and_retries_in_a_virtual_service() -> None:
    services = mesh_objects("VirtualService")
    assert set(services) == {r.service for r in ROUTES}
    for route in ROUTES:
        (http,) = services[route.service]["spec"]["http"]
        assert duration_seconds(http["timeout"]) == route.timeout_s
        assert http["retries"]["attempts"] == route.retries
        assert duration_seconds(http["retries"]["perTryTimeout"]) == route.per_try_timeout_s
        (only,) = http["route"]
        destination = dict(only["destination"])
        # catalog's requests all go to its release v1 (the DestinationRule's subset; v2 is the canary's).
        assert destination.pop("subset", None) == ("v1" if route.service == "catalog" else None)
        assert set(only) == {"destination"}
        assert destination == {"host": route.service, "port": {"number": route.container_port}}


def test_every_meshed_service_gets_mutual_tls_a_connection_pool_and_outlier_detection() -> None:
    rules = mesh_objects("DestinationRule")
    assert set(rules) == set(MESHED) - {"gateway"}
    for name, rule in rules.items():
        policy = rule["spec"]["trafficPolicy"]
        assert rule["spec"]["host"] == name
        assert policy["tls"] == {"mode": "ISTIO_MUTUAL"}, "without it a STRICT service answers 503"
        assert policy["connectionPool"]["tcp"]["maxConnections"] > 0
        assert policy["outlierDetection"]["consecutive5xxErrors"] > 0


def allowed(service: str, method: str, path: str) -> set[str]:
    """The accounts the AuthorizationPolicy of ``service`` lets call ``method path``."""
    (policy,) = [p for p in mesh_objects("AuthorizationPolicy").values()
                 if p["spec"]["selector"]["matchLabels"] == {manifest.NAME_LABEL: service}]
    assert policy["spec"]["action"] == "ALLOW"
    accounts: set[str] = set()
    for rule in policy["spec"]["rules"]:
        operations = [t["operation"] for t in rule.get("to", [])]

        def matches(op: dict[str, Any]) -> bool:
            paths_ok = any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in op.get("paths", ["*"]))
            return paths_ok and method in op.get("methods", [method])

        if not operations or any(matches(op) for op in operations):
            accounts |= {p.rsplit("/", 1)[1] for s in rule["from"] for p in s["source"]["principals"]}
    return accounts


@pytest.mark.parametrize(("service", "method", "path", "accounts"), [
    ("cas", "POST", "/sessions", {"license"}),
    ("cas", "POST", "/sessions/abc/heartbeat", {"gateway"}),
    ("subscription", "GET", "/entitlements/big-buck-bunny", {"license", "gateway"}),
    ("subscription", "PUT", "/admin/subscriptions/u1", {"ottlab-tools"}),
    ("license", "POST", "/admin/keys/big-buck-bunny", {"transcoder"}),
    ("license", "POST", "/authorizations", {"gateway"}),
    ("license", "GET", "/keys/big-buck-bunny", {"gateway"}),
    ("qoe", "POST", "/beacons", {"gateway"}),
    ("catalog", "PUT", "/titles/big-buck-bunny", {"transcoder", "ottlab-tools"}),
    ("auth", "POST", "/login", {"gateway"}),
    ("auth", "POST", "/admin/users", {"ottlab-tools"}),
    ("transcoder", "POST", "/jobs", {"ottlab-tools"}),
    ("player", "GET", "/player/index.html", {"gateway"}),
    # Nobody: a route the policy does not list is denied.
    ("cas", "PUT", "/sessions", set()),
    ("license", "DELETE", "/authorizations", set()),
])
def test_least_privilege_by_identity(service: str, method: str, path: str, accounts: set[str]) -> None:
    assert allowed(service, method, path) == accounts
