"""The mesh's Istio resources, read from ``k8s/components/mesh`` and checked before anything uses them.

The same files drive both targets: Istio applies them on a cluster, and the local target renders
each sidecar's Envoy configuration from them (:mod:`labkit.platform.mesh.envoy`). Before either,
:func:`check` refuses what Istio would refuse or could not mean: an object its CRD schema refuses
(:mod:`labkit.platform.mesh.schema`), a route to a host or port no Service has, a route to a
subset no DestinationRule declares or no pod has (a canary not running), weights that do not sum
to 100, a percentage outside 0-100, a policy selecting no workload or naming an identity that does
not exist. Each problem is one line naming
the object and the field; nothing is rendered while one remains.

Example::

    mesh = resources.load()                               # the committed resources
    resources.check(mesh, resources.Topology.of(objects)) # objects: rendered manifests
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit.core.config import repo_root
from labkit.platform.mesh import schema
from labkit.platform.mesh.errors import MeshConfigError

NAMESPACE = "ottlab"
TRUST_DOMAIN = "cluster.local"
NAME_LABEL = "app.kubernetes.io/name"
MESH_KINDS = ("PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService")

Resource = dict[str, Any]


def component_dir() -> Path:
    return repo_root() / "k8s" / "components" / "mesh"


@dataclass(frozen=True, eq=False)
class Mesh:
    """The Istio resources of the mesh, by kind, in file order.

    Two meshes are equal when they hold the same resources, in any order (Istio gives them none):
    the mesh a cluster lists, kind by kind and name by name, equals the one the files declare.
    """

    objects: tuple[Resource, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mesh):
            return NotImplemented
        return _canonical(self.objects) == _canonical(other.objects)

    def of_kind(self, kind: str) -> list[Resource]:
        return [o for o in self.objects if o["kind"] == kind]

    def replaced(self, obj: Resource) -> Mesh:
        """This mesh with ``obj`` added, or in place of the object of its kind and name."""
        key = (obj["kind"], obj["metadata"]["name"])
        kept = [o for o in self.objects if (o["kind"], o["metadata"]["name"]) != key]
        return Mesh((*kept, obj))


def _canonical(objects: Iterable[Resource]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True, default=str) for o in objects)


def load(directory: Path | None = None) -> Mesh:
    """The Istio objects of the kustomization in ``directory`` (its ``resources`` files, in order)."""
    directory = directory or component_dir()
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Resource] = []
    for name in kustomization.get("resources", []):
        for obj in yaml.safe_load_all((directory / name).read_text()):
            if obj and schema.is_istio(obj):
                objects.append(obj)
    return Mesh(tuple(objects))


@dataclass(frozen=True)
class Workload:
    """Pods of one Deployment: their labels, the account they run as, and the Services selecting them."""

    name: str
    labels: Mapping[str, str]
    account: str


@dataclass(frozen=True)
class Topology:
    """What the resources may name: Services and their ports, workloads, service accounts."""

    services: Mapping[str, Sequence[int]]
    workloads: Sequence[Workload] = ()
    accounts: frozenset[str] = field(default_factory=frozenset)
    namespace: str = NAMESPACE

    @classmethod
    def of(cls, objects: Iterable[Mapping[str, Any]]) -> Topology:
        """The topology of rendered Kubernetes objects (``kubectl kustomize`` output)."""
        objects = list(objects)
        services = {
            o["metadata"]["name"]: [int(p["port"]) for p in o["spec"].get("ports", [])]
            for o in objects if o["kind"] == "Service"
        }
        workloads = [
            Workload(o["metadata"]["name"], dict(o["spec"]["template"]["metadata"].get("labels", {})),
                     o["spec"]["template"]["spec"].get("serviceAccountName", "default"))
            for o in objects if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
        ]
        accounts = frozenset(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
        return cls(services=services, workloads=workloads, accounts=accounts | {"default"})

    def principal(self, account: str) -> str:
        """Istio's principal of ``account``: ``cluster.local/ns/<namespace>/sa/<account>``."""
        return f"{TRUST_DOMAIN}/ns/{self.namespace}/sa/{account}"


def short_host(host: str, namespace: str = NAMESPACE) -> str:
    """``cas``, ``cas.ottlab``, ``cas.ottlab.svc`` and ``cas.ottlab.svc.cluster.local`` are one host."""
    for suffix in (f".{namespace}.svc.{TRUST_DOMAIN}", f".{namespace}.svc", f".{namespace}"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


def _ref(obj: Mapping[str, Any]) -> str:
    return f"{str(obj.get('kind', '')).lower()}/{obj.get('metadata', {}).get('name', '?')}"


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    wanted = (selector or {}).get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _known(topology: Topology) -> str:
    return ", ".join(sorted(topology.services))


def _percentage_problems(where: str, spec: Mapping[str, Any] | None) -> list[str]:
    if not spec or "percentage" not in spec:
        return []
    value = spec["percentage"].get("value", 0)
    if not 0 <= float(value) <= 100:
        return [f"{where}.percentage.value: {value} is not a percentage (0 to 100)"]
    return []


def _virtual_service_problems(vs: Resource, mesh: Mesh, topology: Topology) -> list[str]:
    ref = _ref(vs)
    problems = []
    subsets = {
        short_host(dr["spec"]["host"]): {s["name"]: s.get("labels", {}) for s in dr["spec"].get("subsets", [])}
        for dr in mesh.of_kind("DestinationRule")
    }
    for host in vs["spec"].get("hosts", []):
        if short_host(host) not in topology.services:
            problems.append(f"{ref}: spec.hosts: {host!r} is no Service (known: {_known(topology)})")
    for i, route in enumerate(vs["spec"].get("http", [])):
        where = f"{ref}: spec.http.{i}"
        destinations = route.get("route", [])
        for j, destination in enumerate(destinations):
            target = destination["destination"]
            host = short_host(target["host"])
            if host not in topology.services:
                problems.append(f"{where}.route.{j}.destination.host: {target['host']!r} is no Service "
                                f"(known: {_known(topology)})")
                continue
            port = target.get("port", {}).get("number")
            if port is not None and port not in topology.services[host]:
                problems.append(f"{where}.route.{j}.destination.port: Service {host!r} has no port {port} "
                                f"(it has {', '.join(map(str, topology.services[host]))})")
            weight = destination.get("weight")
            if "subset" in target and target["subset"] not in subsets.get(host, {}):
                problems.append(f"{where}.route.{j}.destination.subset: no DestinationRule of {host!r} declares "
                                f"the subset {target['subset']!r}")
            elif "subset" in target and weight != 0 and topology.workloads:
                # Declaring a subset no pod has yet is fine (a release not deployed); sending it requests is not.
                labels = subsets[host][target["subset"]]
                if not any(w.labels.get(NAME_LABEL) == host and _selects({"matchLabels": labels}, w.labels)
                           for w in topology.workloads):
                    problems.append(f"{where}.route.{j}.destination.subset: the subset {target['subset']!r} of "
                                    f"{host!r} selects no pod (labels {labels}): every request sent there would "
                                    "fail; run that version first, or give it weight 0")
            if weight is not None and not 0 <= weight <= 100:
                problems.append(f"{where}.route.{j}.weight: {weight} is not between 0 and 100")
        if len(destinations) > 1:
            total = sum(d.get("weight", 0) for d in destinations)
            if total != 100:
                weights = " + ".join(str(d.get("weight", 0)) for d in destinations)
                problems.append(f"{where}.route: the weights sum to {total} ({weights}), not 100")
        fault = route.get("fault", {})
        problems += _percentage_problems(f"{where}.fault.delay", fault.get("delay"))
        problems += _percentage_problems(f"{where}.fault.abort", fault.get("abort"))
        status = fault.get("abort", {}).get("httpStatus")
        if status is not None and not 200 <= status <= 599:
            problems.append(f"{where}.fault.abort.httpStatus: {status} is not an HTTP status (200 to 599)")
        if route.get("retries", {}).get("attempts", 0) < 0:
            problems.append(f"{where}.retries.attempts: {route['retries']['attempts']} is negative")
    return problems


def _destination_rule_problems(dr: Resource, topology: Topology) -> list[str]:
    ref = _ref(dr)
    host = short_host(dr["spec"]["host"])
    if host not in topology.services:
        return [f"{ref}: spec.host: {dr['spec']['host']!r} is no Service (known: {_known(topology)})"]
    problems = []
    # A subset no pod has is no problem here (a version not deployed yet): a route sending it requests is.
    names = [subset["name"] for subset in dr["spec"].get("subsets", [])]
    problems += [f"{ref}: spec.subsets: {name!r} is declared {names.count(name)} times"
                 for name in sorted(set(names)) if names.count(name) > 1]
    percent = dr["spec"].get("trafficPolicy", {}).get("outlierDetection", {}).get("maxEjectionPercent")
    if percent is not None and not 0 <= percent <= 100:
        problems.append(f"{ref}: spec.trafficPolicy.outlierDetection.maxEjectionPercent: {percent} is not a percentage")
    return problems


def _selector_problems(obj: Resource, topology: Topology) -> list[str]:
    selector = obj["spec"].get("selector")
    if selector is None or not topology.workloads:
        return []
    if any(_selects(selector, w.labels) for w in topology.workloads):
        return []
    return [f"{_ref(obj)}: spec.selector: no workload has the labels {selector.get('matchLabels', {})}"]


def _authorization_problems(policy: Resource, topology: Topology) -> list[str]:
    ref = _ref(policy)
    problems = _selector_problems(policy, topology)
    known = {topology.principal(a) for a in topology.accounts}
    for i, rule in enumerate(policy["spec"].get("rules", [])):
        for j, source in enumerate(rule.get("from", [])):
            for principal in source.get("source", {}).get("principals", []):
                if "*" not in principal and principal not in known:
                    problems.append(f"{ref}: spec.rules.{i}.from.{j}.source.principals: {principal!r} is no "
                                    f"service account of namespace {topology.namespace}")
        for j, operation in enumerate(rule.get("to", [])):
            for path in operation.get("operation", {}).get("paths", []):
                if not (path.startswith("/") or path.startswith("*")):
                    problems.append(f"{ref}: spec.rules.{i}.to.{j}.operation.paths: {path!r} does not start with /")
    return problems


def problems(mesh: Mesh, topology: Topology) -> list[str]:
    """Every problem of the resources, one line each; [] when the mesh can be enforced as written."""
    found: list[str] = []
    for obj in mesh.objects:
        schema_problems = schema.problems(obj)
        found += schema_problems
        if schema_problems:
            continue
        if obj["kind"] == "VirtualService":
            found += _virtual_service_problems(obj, mesh, topology)
        elif obj["kind"] == "DestinationRule":
            found += _destination_rule_problems(obj, topology)
        elif obj["kind"] == "AuthorizationPolicy":
            found += _authorization_problems(obj, topology)
        elif obj["kind"] == "PeerAuthentication":
            found += _selector_problems(obj, topology)
    keys = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in mesh.objects]
    found += [f"{kind.lower()}/{name}: defined {keys.count((kind, ns, name))} times"
              for kind, ns, name in sorted(set(keys)) if keys.count((kind, ns, name)) > 1]
    return found


def check(mesh: Mesh, topology: Topology) -> None:
    """Raise :class:`MeshConfigError` naming every problem of the resources (see :func:`problems`)."""
    found = problems(mesh, topology)
    if found:
        raise MeshConfigError(
            f"the mesh's resources have {len(found)} problem(s):\n" + "\n".join(f"  {p}" for p in found),
            hint="fix them: nothing is rendered from resources with a problem",
        )
