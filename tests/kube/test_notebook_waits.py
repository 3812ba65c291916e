"""What notebooks 00-04 and 06 wait for and reach on a target, the rendered kube manifests produce.

The notebooks' code is read (ast), not copied here, so a new wait is picked up:

- ``target.up(layers)``: each component of those layers is a Deployment of those layers (a
  follower: a container in the pods of the one it follows);
- ``target.endpoint(name)`` and ``service_client(target, name)``: a Service ``name`` among the
  objects ``up`` applied, on the component's http port, selecting its pods (the kube target
  port-forwards to it); ``target.stop/start(name)``: its Deployment;
- ``wait_for_targets(jobs)`` and ``wait_for_samples(by="job", groups=jobs)``: the argument is
  evaluated as the notebook writes it (a labkit declaration, or ``target.scrape_jobs()`` as the
  kube target answers it from the rendered overlay) and each job is a target the shipped
  Prometheus relabelling makes of the pods ``up`` applied (tests/_scrape.py); with the mesh, of
  those pods as Istio's injector leaves them (test_mesh_on_kube.injected);
- each ``ott_*`` metric the notebook names: an ott module defines it, and a component running
  that module is scraped on kube among those pods;
- ``target.signing_secret()`` / ``service_token()``: the Secret labkit.targets.kube.secrets
  creates for those layers holds the key the target reads, and the edges mount the key they include;
- ``target.access_log(pop)`` (``wait_for_sessions``): the PoP's exporter echoes its access log to the
  pod's log, which the kube target reads;
- the URLs viewers get: each endpoint a viewer uses (the gateway, the origin) is a NodePort of the lab's
  public entry; ``pop_urls`` and ``wait_for_sessions``: the edge is a StatefulSet with one Service per
  PoP (edge-0 ... up to MAX_POPS), each selecting that pod alone at a node port; the pods that write
  viewers' URLs (license, the transcoder) read only keys of the ConfigMap ott-public the kube target writes;
- ``target.stop_replica(name, n)`` (notebook 06's incident): the workload runs replica ``n`` and its
  pods hold the component's container (the one the kube target gives the pause image); a PoP's pods
  also hold the nginx exporter that keeps reporting that PoP (``nginx_up``, PoPDown); ``start(name)``
  brings it back (its workload, as for ``stop``);
- ``target.route_alerts``: Alertmanager's Deployment mounts one ConfigMap, holding the configuration
  the kube target patches back for ``None`` (the declared one, real timing);
- ``probe_success`` named: Prometheus reads the probes' ConfigMap the kube target writes, and its
  probes (probes.kube_targets for the declared PoPs) go through every PoP the notebook stops;
- any other ``target`` method, or labkit function given the target, must be classified below:
  an unknown one fails this test until someone says what it needs on kube.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _scrape import targets
from test_mesh_on_kube import injected

import labkit
from labkit import platform
from labkit.core.config import repo_root
from labkit.platform.component import Component
from labkit.platform.layers import apis, cdn
from labkit.platform.layers.monitoring import alerting, probes
from labkit.platform.mesh import STATS_JOB
from labkit.targets.kube import entry, manifest, monitoring, secrets
from labkit.targets.kube import target as kube_target

NAMESPACE = "ottlab"
NOTEBOOKS = sorted((repo_root() / "notebooks").glob("0[0-46]-*.ipynb"))
# Target methods a notebook may call that ask nothing of the manifests beyond what `up` applied.
INERT = {"component_names", "describe", "missing_programs", "status", "status_frame"}
# ... the ones the kube target answers from the rendered overlay alone (KubeOffline): a notebook's use
# of the answer is what is checked (the jobs it waits for).
OFFLINE = {"scrape_jobs"}
# ... and the ones the kube target cannot answer from the manifests: it says so (MissingCapabilityError).
NOT_ON_KUBE = {"media_root"}
# Target methods that read what the pods write: each one's source among the applied objects is checked.
FROM_PODS = {"access_log"}
CHECKED = {"up", "endpoint", "stop", "start", "signing_secret", "service_token", "stop_replica", "route_alerts"}
# Services whose URLs viewers get (key URIs, the player page; master playlists): the lab's public entry.
VIEWER_FACING = {entry.GATEWAY, entry.ORIGIN}
# labkit functions that reach each PoP on its own.
PER_POP = {"pop_urls", "wait_for_sessions", "run"}
# labkit functions given the target: what each reaches on it (endpoints; secrets).
TAKES_TARGET: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "seed_target": (("catalog",), ("service_token",)),
    "sample_clip": ((), ()),
    "transcode": (("transcoder",), ()),
    "pop_urls": ((cdn.EDGE.name,), ()),
    "wait_for_sessions": ((), ("access_log",)),
    "service_client": ((), ("service_token",)),
    "status_panel": ((), ()),
    # Target.media_folder: on kube, a copy of the version fetched through the origin's URL.
    "published_folder": (("origin",), ()),
    # labkit.drills.live_playlist.LiveChannel.new: Target.write_media, on kube in a transcoder pod (exec).
    "new": (("transcoder",), ("signing_secret",)),
    "herds": (("origin",), ()),  # labkit.drills.cache_lock.herds: a scratch PoP on this machine, on the copy
    # labkit.traffic.showcase.run (notebook 06): viewers through the gateway, a forged URL at every PoP.
    "run": (("gateway",), ()),
}


@dataclass
class Waits:
    """What one notebook asks of its target."""

    notebook: str
    layers: list[str] | None = None
    endpoints: set[str] = field(default_factory=set)
    deployments: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    metrics: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    # It reaches the PoPs one by one (pop_urls, wait_for_sessions).
    pops: bool = False
    # stop_replica's (component, replica); whether it routes Alertmanager; whether it reads the probes.
    stopped: set[tuple[str, int]] = field(default_factory=set)
    routes_alerts: bool = False
    probes: bool = False


def code(notebook: Path) -> ast.Module:
    cells = yaml.safe_load(notebook.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    # IPython magics are not Python.
    return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@functools.cache
def rendered_lab(overlay: str, mesh: bool) -> tuple[dict[str, Any], ...]:
    """The overlay as the kube target renders it: with k8s/components/mesh when the lab runs with the mesh."""
    return tuple(manifest.render(manifest.overlay_dir(overlay), components=("mesh",) if mesh else ()))


class KubeOffline:
    """The kube target's answers that its rendered overlay alone gives (no cluster), for the waits' arguments."""

    def __init__(self, overlay: str, mesh: bool) -> None:
        self.overlay, self.mesh = overlay, mesh

    def scrape_jobs(self, layers: list[str] | None = None) -> list[str]:
        return monitoring.scrape_jobs(rendered_lab(self.overlay, self.mesh), layers)


@functools.cache
def waits(notebook: Path, overlay: str = "kind", mesh: bool = False) -> Waits:
    """What ``notebook`` asks of the kube target running ``overlay`` (with the mesh, or without)."""
    tree = code(notebook)
    found = Waits(notebook.stem)
    assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}

    def value(expr: ast.expr) -> Any:
        """The argument as the notebook computes it, from labkit's declarations."""
        if isinstance(expr, ast.Name) and expr.id in assigned:
            expr = assigned[expr.id]
        try:
            return eval(compile(ast.Expression(expr), notebook.name, "eval"),
                        {"labkit": labkit, "target": KubeOffline(overlay, mesh)})
        except Exception as exc:  # any failure: say which wait cannot be resolved offline
            raise AssertionError(f"{notebook.name}: cannot evaluate {ast.unparse(expr)!r} offline ({exc}): "
                                 "write the wait's argument from labkit's declarations") from exc

    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        func, args = call.func, call.args
        keywords = {k.arg: k.value for k in call.keywords}
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "target":
            method = func.attr
            if method == "up":
                found.layers = value(args[0]) if args else None
            elif method == "endpoint":
                found.endpoints.add(value(args[0]))
            elif method in {"stop", "start"}:
                found.deployments.add(value(args[0]))
            elif method == "stop_replica":
                found.stopped.add((value(args[0]), value(args[1])))
            elif method == "route_alerts":
                found.routes_alerts = True
            elif method in {"signing_secret", "service_token"} | NOT_ON_KUBE | FROM_PODS:
                found.secrets.add(method)
            elif method not in INERT | OFFLINE:
                found.unknown.add(f"target.{method}")
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if any(isinstance(a, ast.Name) and a.id == "target" for a in args) and name:
            if name not in TAKES_TARGET:
                found.unknown.add(name)
            else:
                endpoints, needs = TAKES_TARGET[name]
                found.endpoints.update(endpoints)
                found.pops |= name in PER_POP
                found.secrets.update(needs)
                if name == "service_client":
                    found.endpoints.add(value(args[1]))
        if name == "wait_for_targets":
            found.jobs.update(value(args[0]))
        by = keywords.get("by")
        if name == "wait_for_samples" and isinstance(by, ast.Constant) and by.value == "job":
            found.jobs.update(value(keywords["groups"]))
    found.metrics = {m for s in _strings(tree) for m in re.findall(r"\bott_[a-z0-9_]+", s)}
    found.probes = any("probe_success" in s for s in _strings(tree))
    return found


def test_the_notebooks_are_read() -> None:
    assert [n.stem[:2] for n in NOTEBOOKS] == ["00", "01", "02", "03", "04", "06"]
    # The extraction finds the waits the lessons are known to have (else it reads nothing).
    assert waits(NOTEBOOKS[0]).jobs == set(platform.scrape_jobs())
    assert waits(NOTEBOOKS[0], "kind", True).jobs == {*platform.scrape_jobs(), STATS_JOB}
    assert waits(NOTEBOOKS[1]).layers == ["monitoring", apis.LAYER.name]
    assert "ott_http_requests_total" in waits(NOTEBOOKS[1]).metrics
    assert "origin" in waits(NOTEBOOKS[3]).deployments and "signing_secret" in waits(NOTEBOOKS[3]).secrets
    incident = waits(NOTEBOOKS[5])
    assert incident.stopped == {(cdn.EDGE.name, 1)} and incident.routes_alerts and incident.probes
    assert cdn.EDGE.name in incident.deployments and "alertmanager" in incident.endpoints


# -- against the rendered overlays ----------------------------------------------------------------


@functools.cache
def applied(overlay: str, layers: tuple[str, ...] | None, mesh: bool = False) -> tuple[dict[str, Any], ...]:
    """What ``target.up(layers)`` applies of ``overlay``; with the mesh, the workloads as Istio injects their pods."""
    objects = manifest.of_layers(rendered_lab(overlay, mesh), None if layers is None else list(layers))
    return tuple(injected(o) if mesh and o["kind"] in {"Deployment", "StatefulSet"} else o for o in objects)


def public_keys(pod_spec: dict[str, Any]) -> set[str]:
    """The keys of ott-public a pod reads: by environment references and by volume items."""
    keys = {env["valueFrom"]["configMapKeyRef"]["key"] for c in pod_spec["containers"] for env in c.get("env") or []
            if env.get("valueFrom", {}).get("configMapKeyRef", {}).get("name") == entry.PUBLIC_CONFIG}
    for volume in pod_spec.get("volumes") or []:
        if volume.get("configMap", {}).get("name") == entry.PUBLIC_CONFIG:
            assert volume["configMap"].get("items"), "a volume of ott-public names the keys it mounts"
            keys |= {item["key"] for item in volume["configMap"]["items"]}
    return keys


def workload(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    """The component's workload: its Deployment, or (the edge, whose pods are the PoPs) its StatefulSet."""
    found = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"} and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one workload {name!r} among what up() applies, found {len(found)}"
    return found[0]


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} among what up() applies, found {len(found)}"
    return found[0]


def component(name: str) -> Component:
    (found,) = [c for c in platform.components() if c.name == name]
    return found


def metric_components(metric: str) -> set[str]:
    """The components whose program defines ``metric``'s family (``ott_<word>_...``): its module, or one it imports."""
    prefix = "ott_" + metric.split("_")[1] + "_"
    defining = {p for p in (repo_root() / "ott").rglob("*.py") if f'"{prefix}' in p.read_text()}
    modules = {".".join(p.relative_to(repo_root()).with_suffix("").parts) for p in defining}
    names = set()
    for comp in platform.components():
        if comp.args[:1] != ("-m",):
            continue
        path = repo_root().joinpath(*comp.args[1].split(".")).with_suffix(".py")
        if not path.is_file():
            continue
        imported = {comp.args[1]}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        if imported & modules:
            names.add(comp.name)
    return names


CASES = [(overlay, nb, mesh) for overlay in manifest.overlays() for nb in NOTEBOOKS for mesh in (False, True)]


@pytest.mark.parametrize(("overlay", "notebook", "mesh"), CASES,
                         ids=[f"{o}-{n.stem[:2]}{'-mesh' if m else ''}" for o, n, m in CASES])
def test_the_manifests_produce_what_the_notebook_waits_for(overlay: str, notebook: Path, mesh: bool) -> None:
    asked = waits(notebook, overlay, mesh)
    assert not asked.unknown, f"{notebook.name} calls {sorted(asked.unknown)}: classify it in this test"
    layers = None if asked.layers is None else tuple(asked.layers)
    objects = applied(overlay, layers, mesh)

    for comp in (c for lay in platform.layers() if layers is None or lay.name in layers for c in lay.components):
        deployment = workload(objects, comp.follows or comp.name)
        assert comp.name in {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}

    for name in asked.endpoints:
        comp = component(name)
        assert comp.follows is None, f"{name} is a sidecar: it has no Service to port-forward to"
        service = one(objects, "Service", name)
        (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
        assert (http["port"], http["targetPort"]) == (comp.port("http").container, "http")
        pod_labels = workload(objects, name)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        if name in VIEWER_FACING:
            # Its URL is one viewers get (key URIs, master playlists): a node port of the public entry.
            assert name in entry.node_ports(objects), f"service/{name} is not part of the lab's public entry"
    for name in asked.deployments:
        assert component(name).follows is None
        workload(objects, name)
    if asked.pops:
        edge = one(objects, "StatefulSet", cdn.EDGE.name)
        template = edge["spec"]["template"]["metadata"]["labels"]
        ports = entry.node_ports(objects)
        for pop in entry.pop_services(cdn.MAX_POPS):
            selector = one(objects, "Service", pop)["spec"]["selector"]
            # The pod of that name only (the StatefulSet names its pods edge-0, edge-1 ...).
            assert selector == {**{k: template[k] for k in selector if k in template},
                                "statefulset.kubernetes.io/pod-name": pop}, selector
            assert pop in ports, f"service/{pop} is not part of the lab's public entry"
    readers = entry.readers(objects)
    if readers:
        # What they read of ott-public is what the kube target writes there.
        every_port = entry.node_ports(applied(overlay, None, mesh))
        written = set(entry.public_config(entry.Entry.nodeport("127.0.0.1", every_port), 2)["data"])
        for name in readers:
            keys = public_keys(one(objects, "Deployment", name)["spec"]["template"]["spec"])
            assert keys == entry.keys_read(one(objects, "Deployment", name)), name   # what rolls it, see up()
            assert keys and keys <= written, (name, keys - written)

    config_map = one(objects, "ConfigMap", next(o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"
                                                and "prometheus.yml" in o.get("data", {})))
    made = targets(yaml.safe_load(config_map["data"]["prometheus.yml"]), objects, NAMESPACE)
    jobs = {t.job for t in made}
    assert asked.jobs <= jobs, f"waits for jobs {sorted(asked.jobs - jobs)} no applied pod is scraped as"
    for metric in asked.metrics:
        producers = {component(n).scrape_job for n in metric_components(metric)}
        assert producers & jobs, f"{metric}: no scraped job among {sorted(jobs)} runs a program defining it"

    wanted = set(layers) if layers is not None else {lay.name for lay in platform.layers()}
    reads = {"signing_secret": (secrets.URL_SIGNING, secrets.URL_SIGNING_SECRET_KEY),
             "service_token": (secrets.SERVICE_TOKEN, secrets.SERVICE_TOKEN_KEY)}
    if "access_log" in asked.secrets:
        # The kube target reads a PoP's requests from its pod's log, where the exporter echoes its access log.
        (exporter,) = [c for c in workload(objects, cdn.EDGE.name)["spec"]["template"]["spec"]["containers"]
                       if c["name"] == cdn.EXPORTER.name]
        assert "--echo" in exporter["command"], "the PoP's exporter does not echo the access log to the pod's log"
    for method in asked.secrets - NOT_ON_KUBE - FROM_PODS:
        name, key = reads[method]
        (lab_secret,) = [s for s in secrets.LAB_SECRETS if s.name == name]
        assert wanted & set(lab_secret.layers), f"up({layers}) does not create Secret {name}"
        assert key in lab_secret.make(), f"Secret {name} has no key {key}"
    if "signing_secret" in asked.secrets:
        # The edges include the other key of the same Secret.
        volumes = workload(objects, cdn.EDGE.name)["spec"]["template"]["spec"]["volumes"]
        (mounted,) = [v["secret"] for v in volumes if v.get("secret", {}).get("secretName") == secrets.URL_SIGNING]
        (url_signing,) = [s for s in secrets.LAB_SECRETS if s.name == secrets.URL_SIGNING]
        assert {i["key"] for i in mounted["items"]} <= set(url_signing.make())

    for name, replica in asked.stopped:
        comp = component(name)
        assert comp.follows is None, f"{name} is a sidecar: stop_replica stops a component's own container"
        stopped = workload(objects, name)
        assert 0 <= replica < stopped["spec"]["replicas"], f"{name} does not run replica {replica} as declared"
        containers = stopped["spec"]["template"]["spec"]["containers"]
        assert name in {c["name"] for c in containers}, f"no container {name} for stop_replica to stop"
        if name == cdn.EDGE.name:
            # PoPDown reads nginx_up of the PoP: its exporter is another container of the pod, which keeps running.
            assert [c for c in containers if c["name"] != name
                    and f"-prometheus.const-labels=component={name},pop=$(POD_NAME)" in c.get("command", [])]
    if asked.routes_alerts:
        spec = workload(objects, "alertmanager")["spec"]["template"]["spec"]
        (mounted,) = [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
        declared = one(objects, "ConfigMap", mounted)["data"][kube_target.ALERTMANAGER_CONFIG_KEY]
        assert declared == alerting.dump(alerting.alertmanager_config(alerting.REAL))
    if asked.probes:
        spec = workload(objects, "prometheus")["spec"]["template"]["spec"]
        assert probes.KUBE_TARGETS in {(v.get("configMap") or {}).get("name") for v in spec["volumes"]}
        assert probes.JOB in {job["job_name"] for job in yaml.safe_load(config_map["data"]["prometheus.yml"])[
            "scrape_configs"]}
        declared_pops = entry.pop_services(workload(objects, cdn.EDGE.name)["spec"]["replicas"])
        probed = {t.pop for t in probes.kube_targets(declared_pops, "s")}
        assert {cdn.pop_id(replica) for name, replica in asked.stopped if name == cdn.EDGE.name} <= probed
