"""The service mesh on the local target: each API service behind its own Envoy sidecar (``OTTLAB_MESH``).

With ``OTTLAB_MESH=strict`` (or ``permissive``) :func:`components` rewrites the APIs layer as a
pod with Istio's sidecar injection would run it:

- each replica of auth, catalog, subscription, license, cas, the QoE collector and the transcoder
  listens on a unix socket of the lab directory (``OTT_UDS``): only its sidecar reaches it;
- its sidecar ``<service>-proxy`` (one Envoy per replica, ``follows`` the service) listens on the
  service's usual port with mutual TLS (the lab CA's certificates, SPIFFE identities) and the
  AuthorizationPolicies, on loopback ports per peer the service calls (``OTT_<PEER>_URL`` point
  there: retries, timeouts and faults of the VirtualServices, mTLS to the peer), on a plaintext
  ``health`` port that passes only ``GET /readyz`` and ``GET /metrics`` to the app (Istio's probe
  rewrite and metrics merge, its port 15020), and its admin API on loopback (Prometheus scrapes
  ``/stats/prometheus`` there as the job ``envoy-stats``);
- the gateway's nginx reaches the services through ``gateway-proxy`` (identity ``gateway``), and
  the lab's tools (seeding, admin calls: :meth:`LocalTarget.endpoint`) through ``tools-proxy``
  (identity ``ottlab-tools``).

The resources in force are kept in the lab directory (``run/mesh/resources.yaml``), initially (and
again after ``down``) the committed ones of ``k8s/components/mesh``. Envoy reads its listeners and
clusters from files it watches (``dynamic_resources`` with ``path_config_source``), and each HTTP
connection manager its routes (RDS, a file per route configuration, as Istio delivers routes): a
route change reaches the connections a listener already holds, and listeners change only when
listeners do. :func:`apply` renders every sidecar, replaces the files that changed by a rename and
waits until each Envoy concerned runs the new version, with no process restarted and no request
dropped; the clusters new routes name first, the routes next, the clusters no route names last
(no request meets a route to a missing cluster). A mesh with a problem changes nothing.

Example::

    mesh = local_mesh.current(cfg)
    local_mesh.apply(cfg, mesh.replaced(faulty_virtual_service))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import yaml

from labkit.core import programs
from labkit.core.config import LabConfig
from labkit.core.console import progress
from labkit.core.errors import LabError, TimeoutExpired
from labkit.core.wait import until
from labkit.platform.component import Component, Port, Readiness
from labkit.platform.mesh import STATS_JOB, envoy, identity, resources
from labkit.platform.mesh.envoy import Address, Config, Instance, Sidecar
from labkit.platform.mesh.errors import CertificateError
from labkit.platform.mesh.resources import Mesh
from labkit.targets.local import releases as local_releases
from labkit.targets.local import replica_faults

# The API services behind sidecars (each calls the others through its own), then the QoE collector
# (it calls no one; the gateway's sidecar brings it the beacons) and the transcoder (it creates keys at
# license and writes titles to catalog through its sidecar). Their sidecars' ports: a block of 20 each.
APIS = ("auth", "catalog", "subscription", "license", "cas")
MESHED = (*APIS, "qoe", "transcoder")
_CALLS = {"qoe": (), "transcoder": ("license", "catalog")}
_BLOCKS = {"auth": 600, "catalog": 620, "subscription": 640, "license": 660, "cas": 680, "qoe": 720, "transcoder": 740}
_REPLICAS = 3
GATEWAY = "gateway"
GATEWAY_PROXY = "gateway-proxy"
TOOLS_PROXY = "tools-proxy"
TOOLS_ACCOUNT = "ottlab-tools"
_GATEWAY_OFFSET = 700
_TOOLS_OFFSET = 710
# The services' Service ports on Kubernetes, which cluster names and VirtualServices use.
SERVICE_PORTS = {"auth": 8000, "catalog": 8000, "subscription": 8000, "license": 8000, "cas": 8000,
                 "qoe": 8000, "player": 8080, "transcoder": 8000, "gateway": 8080}
# Paths the plaintext health port passes to the app (GET only), as Istio's 15020 does for probes and metrics.
HEALTH_PATHS = ("/readyz", "/healthz", "/metrics")
# A certificate closer to its end than this is issued again when the lab comes up.
RENEW_BEFORE = dt.timedelta(hours=2)
APPLY_TIMEOUT = 30.0
# The tags Istio's sidecar bootstrap extracts from stat names, so /stats/prometheus has the labels
# it has on kube: cluster_name="outbound|8000||cas.ottlab.svc.cluster.local" (Envoy's default would
# cut the name at its first dot), response_code, response_code_class, http_conn_manager_prefix,
# listener_address.
ISTIO_STATS_TAGS: list[Config] = [
    {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    # Istio 1.25's, for its delimited prefixes (envoy.hcm_stat_prefix): the tag is inbound_0.0.0.0_8000.
    {"tag_name": "http_conn_manager_prefix",
     "regex": r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)"},
    {"tag_name": "listener_address",
     "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
]


def enabled(cfg: LabConfig) -> bool:
    return cfg.mesh != "off"


def proxy_name(service: str) -> str:
    return f"{service}-proxy"


def calls(service: str) -> list[str]:
    """The services ``service`` calls, each through a port of its sidecar."""
    return list(_CALLS.get(service, [peer for peer in APIS if peer != service]))


def _service_offsets(service: str) -> tuple[int, int, dict[str, int]]:
    """(admin, health, {peer: outbound}) offsets of the sidecars of ``service`` (replica 0; +1 per replica)."""
    base = _BLOCKS[service]
    return base, base + _REPLICAS, {peer: base + 2 * _REPLICAS + _REPLICAS * j
                                     for j, peer in enumerate(calls(service))}


def _envoy_args(program: str) -> tuple[str, ...]:
    return ("-c", "{conf}/mesh/" + program + "-{replica}/bootstrap.json", "--use-dynamic-base-id",
            "--concurrency", "1", "--log-level", "warn",
            # A listener replaced by apply closes its kept-alive connections after their current request.
            "--drain-strategy", "immediate", "--drain-time-s", "2")


def _proxy(name: str, follows: str, admin_offset: int, replicas: int, max_replicas: int,
           description: str, layer: str = "apis") -> Component:
    return Component(
        name=name, layer=layer, binary=str(_envoy_binary()), package=programs.ENVOY_PACKAGE,
        args=_envoy_args(name), ports=(Port("http", offset=admin_offset, container=15000),),
        readiness=Readiness(path="/ready"), replicas=replicas, max_replicas=max_replicas,
        metrics_path="/stats/prometheus", job=STATS_JOB, follows=follows, description=description,
    )


def _envoy_binary() -> Path:
    found = programs.find("envoy")
    return found if found is not None else Path("envoy")


def components(cfg: LabConfig, declared: Sequence[Component]) -> list[Component]:
    """``declared`` as they run with the mesh on: services on unix sockets, a sidecar after each."""
    if not enabled(cfg):
        return list(declared)
    out: list[Component] = []
    for comp in declared:
        if comp.name in MESHED:
            admin, health, outbound = _service_offsets(comp.name)
            env = {**comp.env, "OTT_UDS": "{run}/mesh/" + comp.name + "-{replica}.sock"}
            for peer in outbound:
                env[f"OTT_{peer.upper()}_URL"] = "http://{host}:{port_out-" + peer + "}"
            service = replace(
                comp, env=env,
                # Bound by the sidecar: the health port, and one port per peer the app calls.
                ports=(*comp.ports, Port("health", offset=health, container=15020),
                       *(Port(f"out-{peer}", offset=o, container=15001) for peer, o in outbound.items())),
                readiness=replace(comp.readiness, port="health"), metrics_port="health",
            )
            out += [service, _proxy(proxy_name(comp.name), comp.name, admin, comp.replicas, comp.max_replicas,
                                    f"Envoy sidecar of {comp.name}: mTLS, authorization, retries, faults",
                                    comp.layer)]
        elif comp.name == GATEWAY:
            gateway = _proxy(GATEWAY_PROXY, GATEWAY, _GATEWAY_OFFSET, 1, 1,
                             "Envoy sidecar of the gateway: its calls to the services, in mTLS")
            out += [comp, replace(gateway, ports=(*gateway.ports, *(
                Port(f"out-{s}", offset=_GATEWAY_OFFSET + 1 + i, container=15001) for i, s in enumerate(MESHED))))]
        else:
            out.append(comp)
    if any(c.name == GATEWAY for c in declared):
        tools = _proxy(TOOLS_PROXY, GATEWAY, _TOOLS_OFFSET, 1, 1,
                       "Envoy of the lab's tools (seeding, admin calls), identity ottlab-tools")
        out.append(replace(tools, follows=None, ports=(*tools.ports, *(
            Port(f"out-{s}", offset=_TOOLS_OFFSET + 1 + i, container=15001) for i, s in enumerate(MESHED)))))
    # A service's second release started in this lab (target.start_version), after its own sidecar.
    for name in local_releases.running(cfg):
        at = next((i for i, c in enumerate(out) if c.name == proxy_name(local_releases.service_of(name)[0])), None)
        if at is not None:
            out[at + 1:at + 1] = local_releases.components(name, out[at - 1], out[at])
    return out


def tools_url(cfg: LabConfig, running: Sequence[Component], service: str) -> str | None:
    """Where the lab's tools reach ``service`` (through their sidecar), or None when it is not meshed."""
    tools = next((c for c in running if c.name == TOOLS_PROXY), None)
    if tools is None or service not in MESHED:
        return None
    return tools.url(cfg, f"out-{service}")


# -- resources ---------------------------------------------------------------------------------


def _resources_file(cfg: LabConfig) -> Path:
    return cfg.run_dir / "mesh" / "resources.yaml"


def _dir(cfg: LabConfig) -> Path:
    return cfg.conf_dir / "mesh"


def committed(cfg: LabConfig) -> Mesh:
    """The committed resources, the namespace's mTLS mode set by ``OTTLAB_MESH`` (strict or permissive)."""
    mesh = resources.load()
    objects = []
    for obj in mesh.objects:
        if obj["kind"] == "PeerAuthentication" and "selector" not in obj["spec"]:
            obj = {**obj, "spec": {**obj["spec"], "mtls": {"mode": cfg.mesh.upper()}}}
        objects.append(obj)
    return Mesh(tuple(objects))


def current(cfg: LabConfig) -> Mesh:
    """The resources in force in this lab: the last applied, else :func:`committed`."""
    path = _resources_file(cfg)
    if path.is_file():
        return Mesh(tuple(o for o in yaml.safe_load_all(path.read_text()) if o))
    return committed(cfg)


def forget(cfg: LabConfig) -> None:
    """Forget the resources applied while the lab ran (``down``): the next ``up`` starts from :func:`committed`."""
    _resources_file(cfg).unlink(missing_ok=True)
    replica_faults.save(cfg, [])


def _save(cfg: LabConfig, mesh: Mesh) -> None:
    path = _resources_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump_all(list(mesh.objects), sort_keys=False))
    tmp.replace(path)


# -- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """One sidecar replica's files: its bootstrap, listeners (LDS), clusters (CDS) and route
    configurations (RDS, named by its listeners), and its admin URL."""

    program: str
    admin: str
    bootstrap: Config
    listeners: list[Config]
    clusters: list[Config]
    routes: list[Config]


def _certificate(ca: identity.LabCA, account: str, directory: Path) -> identity.WorkloadCertificate:
    chain, key = directory / "cert-chain.pem", directory / "key.pem"
    if chain.is_file() and key.is_file():
        try:
            ca.verify(chain.read_bytes())
            from cryptography import x509

            not_after = x509.load_pem_x509_certificate(chain.read_bytes()).not_valid_after_utc
            if not_after - ca.clock() > RENEW_BEFORE:
                return identity.WorkloadCertificate(identity.spiffe_id(account), chain, key, ca.cert_file, not_after)
        except CertificateError:
            pass  # another CA's or expired: issued again below
    return ca.issue(account, directory=directory)


def client_context(cfg: LabConfig, account: str) -> ssl.SSLContext:
    """A TLS context presenting ``account``'s workload certificate to the sidecars (the lab's CA trusted)."""
    ca = identity.LabCA.ensure(_dir(cfg) / "ca")
    certificate = _certificate(ca, account, _dir(cfg) / "ca" / "workloads" / account)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert_file))
    context.check_hostname = False  # a sidecar's only name is its SPIFFE URI: the CA check is what counts
    context.load_cert_chain(str(certificate.chain), str(certificate.key))
    return context


def _health_listener(address: Address, port: int) -> Config:
    """Plaintext, only GET of the probe and metrics paths, to the app (Istio's port 15020)."""
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    routes: list[Config] = [{"match": {"path": p, "headers": get}, "route": {"cluster": f"inbound|{port}||"}}
                            for p in HEALTH_PATHS]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {
        "inline_string": "the health port serves only GET " + ", ".join(HEALTH_PATHS) + "\n"}}})
    return {"name": "health", "address": address.envoy(), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": envoy._TYPES["hcm"], "stat_prefix": "health",
            "route_config": {"name": "health", "virtual_hosts": [{"name": "health", "domains": ["*"],
                                                                  "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": envoy._TYPES["router"]}}],
        }}]}]}


def _by_name(running: Iterable[Component]) -> dict[str, Component]:
    return {c.name: c for c in running}


def render_all(cfg: LabConfig, mesh: Mesh, running: Sequence[Component], *,
               serving: Mapping[str, int] | None = None) -> list[Rendered]:
    """Every sidecar replica of ``running``, rendered from ``mesh``; :class:`MeshConfigError` naming a problem.

    ``serving``: for a service, how many of its replicas its peers route to, when fewer than run (a
    replica ``scale`` is starting: a Service lists a pod once it is ready, else Envoy's connection
    failures to it would have outlier detection eject it before it ever served).
    """
    comps = _by_name(running)
    ca = identity.LabCA.ensure(_dir(cfg) / "ca")
    certs = _dir(cfg) / "ca" / "workloads"
    listed = {s: min(comps[s].replicas, (serving or {}).get(s, comps[s].replicas)) for s in MESHED if s in comps}
    instances = [Instance(s, s, Address(port=comps[s].local_port(cfg, "http", r)))
                 for s, count in listed.items() for r in range(count)]
    # Declared by the resources, not behind sidecars here (or their layer is not up): named, never routed to.
    instances += [Instance(s, s, Address(port=9)) for s in SERVICE_PORTS if s not in MESHED or s not in comps]
    # Pods labelled by their release (catalog's: version v1), then those of a release started beside them.
    instances = [replace(i, labels=local_releases.labels(i.service)) for i in instances]
    started = [n for n in local_releases.running(cfg) if n in comps]
    instances += [Instance(local_releases.service_of(n)[0], local_releases.service_of(n)[0],
                           Address(port=comps[n].local_port(cfg, "http", r)), local_releases.labels(n))
                  for n in started for r in range(comps[n].replicas)]
    rendered: list[Rendered] = []

    def add(program: str, sidecar: Sidecar, extra: list[Config]) -> None:
        bootstrap = envoy.render(mesh, sidecar, instances, SERVICE_PORTS, clients=[TOOLS_ACCOUNT])
        static = bootstrap.pop("static_resources")
        directory = _dir(cfg) / program
        # Each RDS subscription costs the Envoy an inotify instance (its file's watcher), out of the user's 128
        # (fs.inotify.max_user_instances' default) shared by every sidecar of every lab the user runs: the
        # health port's routes, which never change, stay in its listener.
        listeners, routes = envoy.routes_by_rds([*static["listeners"], *extra],
                                                lambda name: _source(directory, _routes_file(name)),
                                                inline=("health",))
        rendered.append(Rendered(program, f"http://{sidecar.admin}", bootstrap, listeners, static["clusters"], routes))

    flaky = replica_faults.load(cfg)
    for name, service in [*((s, s) for s in MESHED), *((n, local_releases.service_of(n)[0]) for n in started)]:
        if name not in comps or proxy_name(name) not in comps:
            continue
        comp, proxy = comps[name], comps[proxy_name(name)]
        certificate = _certificate(ca, service, certs / service)
        for replica in range(comp.replicas):
            outbound = {peer: Address(port=comp.local_port(cfg, f"out-{peer}", replica)) for peer in calls(service)}
            sidecar = Sidecar(service, service, certificate, admin=Address(port=proxy.local_port(cfg, "http", replica)),
                              inbound=Address(port=comp.local_port(cfg, "http", replica)),
                              app=Address(path=str(cfg.run_dir / "mesh" / f"{name}-{replica}.sock")),
                              labels=local_releases.labels(name),
                              service_port=SERVICE_PORTS[service], outbound=outbound,
                              fault=replica_faults.of(flaky, service, replica) if name == service else None)
            add(f"{proxy.name}-{replica}", sidecar,
                [_health_listener(Address(port=comp.local_port(cfg, "health", replica)), SERVICE_PORTS[service])])
    for name, account in ((GATEWAY_PROXY, GATEWAY), (TOOLS_PROXY, TOOLS_ACCOUNT)):
        client = comps.get(name)
        if client is None:
            continue
        sidecar = Sidecar(account, account, _certificate(ca, account, certs / account),
                          admin=Address(port=client.local_port(cfg)),
                          outbound={s: Address(port=client.local_port(cfg, f"out-{s}")) for s in MESHED if s in comps})
        add(f"{name}-0", sidecar, [])
    return rendered


def _discovery(kind: str, items: list[Config]) -> tuple[str, Config]:
    """A DiscoveryResponse file of ``items`` and its version: a hash of their content."""
    type_url = {"listeners": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "routes": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}[kind]
    body = json.dumps(items, sort_keys=True)
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return version, {"version_info": version, "resources": [{"@type": type_url, **item} for item in items]}


def _source(directory: Path, name: str) -> Config:
    """A ConfigSource: the file ``name`` of ``directory``, read again when a file is moved into the directory."""
    return {"path_config_source": {"path": str(directory / name), "watched_directory": {"path": str(directory)}},
            "resource_api_version": "V3"}


def _routes_file(name: str) -> str:
    """The file of a route configuration (file-based RDS takes one per file): ``rds-inbound_8000.json``."""
    return "rds-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".json"


def _bootstrap(rendered: Rendered, directory: Path) -> Config:
    return {**rendered.bootstrap,
            "stats_config": {"use_all_default_tags": False, "stats_tags": ISTIO_STATS_TAGS},
            "dynamic_resources": {"lds_config": _source(directory, "lds.json"),
                                  "cds_config": _source(directory, "cds.json")}}


def _replace(path: Path, text: str) -> bool:
    """Write ``text`` at ``path`` by a rename (Envoy never reads half a file); False when it was already so."""
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


@dataclass(frozen=True)
class Change:
    """One sidecar whose files changed: the versions it must report (:func:`versions`), and its previous files."""

    program: str
    admin: str
    versions: Mapping[str, str]
    previous: Mapping[Path, str | None]


@dataclass(frozen=True)
class _File:
    """A file of a sidecar, and the version the Envoy reports once it runs it (``stat``: cds, lds, rds NAME)."""

    path: Path
    text: str
    stat: str | None = None
    version: str = ""


def _resource_file(path: Path, kind: str, items: list[Config], stat: str) -> _File:
    version, body = _discovery(kind, items)
    return _File(path, json.dumps(body, indent=1) + "\n", stat, version)


def _files(cfg: LabConfig, each: Rendered, clusters: list[Config] | None = None) -> list[_File]:
    """The files of ``each`` in the order they are replaced: clusters, routes, listeners, bootstrap."""
    directory = _dir(cfg) / each.program
    return [
        _resource_file(directory / "cds.json", "clusters", each.clusters if clusters is None else clusters, "cds"),
        *(_resource_file(directory / _routes_file(r["name"]), "routes", [r], f"rds {r['name']}") for r in each.routes),
        _resource_file(directory / "lds.json", "listeners", each.listeners, "lds"),
        _File(directory / "bootstrap.json", json.dumps(_bootstrap(each, directory), indent=1) + "\n"),
    ]


def _write(each: Rendered, files: Sequence[_File]) -> Change | None:
    """Replace the files of ``files`` that differ; the change, or None when every one was already so."""
    files[0].path.parent.mkdir(parents=True, exist_ok=True)
    previous = {f.path: (f.path.read_text() if f.path.is_file() else None) for f in files}
    changed = [_replace(f.path, f.text) for f in files]
    if not any(changed):
        return None
    return Change(each.program, each.admin, {f.stat: f.version for f in files if f.stat is not None}, previous)


def write(cfg: LabConfig, mesh: Mesh, running: Sequence[Component],
          rendered: Sequence[Rendered] | None = None, *, serving: Mapping[str, int] | None = None) -> list[Change]:
    """Render every sidecar from ``mesh`` and replace its files that changed; the sidecars whose files did."""
    rendered = render_all(cfg, mesh, running, serving=serving) if rendered is None else rendered
    changes = [change for each in rendered if (change := _write(each, _files(cfg, each))) is not None]
    _save(cfg, mesh)
    return changes


def _stages(cfg: LabConfig, rendered: Sequence[Rendered]) -> list[list[tuple[Rendered, list[_File]]]]:
    """What :func:`apply` replaces, in steps each Envoy takes in turn: the clusters the new routes name
    beside those the running routes still name, then routes and listeners, then the clusters alone."""
    steps: list[list[tuple[Rendered, list[_File]]]] = [[], [], []]
    for each in rendered:
        cds = _dir(cfg) / each.program / "cds.json"
        running = json.loads(cds.read_text())["resources"] if cds.is_file() else []
        names = {c["name"] for c in each.clusters}
        both = [*each.clusters, *({k: v for k, v in c.items() if k != "@type"} for c in running
                                 if c["name"] not in names)]
        files = _files(cfg, each, both)
        steps[0].append((each, files[:1]))
        steps[1].append((each, files))
        steps[2].append((each, _files(cfg, each)[:1]))
    return steps


def ensure(cfg: LabConfig, running: Sequence[Component], *, serving: Mapping[str, int] | None = None) -> None:
    """The sidecars' files for ``running`` from the resources in force (``up`` and ``scale``; ``serving``
    as :func:`render_all` says)."""
    write(cfg, current(cfg), running, serving=serving)


# -- applying ----------------------------------------------------------------------------------


def stats(admin: str, pattern: str) -> dict[str, str]:
    """Envoy's stats and text readouts whose name matches ``pattern`` (a regex), by name."""
    text = httpx.get(f"{admin}/stats", params={"filter": pattern}, timeout=5).text
    return {name: value.strip() for name, _, value in (line.partition(": ") for line in text.splitlines())}


_XDS = r"^(cluster_manager\.cds|listener_manager\.lds|http\..*\.rds\..*)\."


def _xds(name: str, stat: str) -> str:
    """``cds``, ``lds`` or ``rds NAME`` for the stat ``name`` of a subscription (``http.<prefix>.rds.NAME.<stat>``)."""
    if name.startswith("cluster_manager.cds."):
        return "cds"
    if name.startswith("listener_manager.lds."):
        return "lds"
    return "rds " + name.partition(".rds.")[2].removesuffix(f".{stat}")


def versions(admin: str) -> dict[str, str]:
    """The versions an Envoy runs, as its admin API reports them: of its clusters (``cds``), its
    listeners (``lds``) and each route configuration (``rds NAME``)."""
    return {_xds(name, "version_text"): value.strip('"')
            for name, value in stats(admin, _XDS + r"version_text$").items()}


def _rejected(admin: str) -> dict[str, int]:
    """How many updates each of its subscriptions refused (Envoy's ``update_rejected``)."""
    return {_xds(name, "update_rejected"): int(value)
            for name, value in stats(admin, _XDS + r"update_rejected$").items() if value.isdigit()}


def _runs(admin: str, wanted: Mapping[str, str]) -> bool:
    found = versions(admin)
    return all(found.get(key) == version for key, version in wanted.items())


def apply(cfg: LabConfig, mesh: Mesh, running: Sequence[Component], *, timeout: float = APPLY_TIMEOUT) -> list[str]:
    """Put ``mesh`` in force on the running sidecars without restarting them; the programs that changed.

    Checked and rendered first: a problem raises :class:`MeshConfigError` and changes nothing. An
    Envoy that refuses its new files gets its previous ones back (it kept running them), and a
    :class:`LabError` names it and its reason.
    """
    previous = current(cfg)
    comps = _by_name(running)
    rendered = render_all(cfg, mesh, running)  # every problem before any file changes
    rejected_before = {each.program: _rejected(each.admin) for each in rendered if _running(comps, each.program)}
    changes: dict[str, Change] = {}
    before: dict[Path, str | None] = {}
    pending: list[Change] = []

    def settled() -> bool:
        for change in list(pending):
            if _runs(change.admin, change.versions):
                pending.remove(change)
            elif any(n > rejected_before[change.program].get(xds, 0) for xds, n in _rejected(change.admin).items()):
                raise _Refused(change)
        return not pending

    try:
        for step in _stages(cfg, rendered):
            for each, files in step:
                if (change := _write(each, files)) is not None:
                    changes.setdefault(change.program, change)
                    before |= {path: text for path, text in change.previous.items() if path not in before}
                    pending += [change] if change.program in rejected_before else []
            until(settled, timeout, 0.1, "every sidecar to run the new mesh configuration",
                  ignoring=(httpx.HTTPError,))
        _save(cfg, mesh)
    except (_Refused, TimeoutExpired) as exc:
        for path, text in reversed(before.items()):  # routes back before the clusters they name
            if text is not None:
                _replace(path, text)
        _save(cfg, previous)
        if isinstance(exc, _Refused):
            name = exc.change.program.rpartition("-")[0]
            log = cfg.log_dir / f"{exc.change.program if comps[name].max_replicas > 1 else name}.log"
            why = f"{exc.change.program} refused it" + (
                f"; its log ends: {log.read_text(errors='replace')[-600:]}" if log.is_file() else "")
        else:
            why = f"{', '.join(c.program for c in pending)} did not take it within {timeout:g} s"
        raise LabError(f"Envoy refused the new mesh configuration ({why}): the previous one stays in force",
                       hint="fix the resource and apply again") from None
    progress(f"mesh applied: {len(changes)} sidecar(s) changed" + (f" ({', '.join(changes)})" if changes else ""))
    return list(changes)


def settle(cfg: LabConfig, running: Sequence[Component], *, timeout: float = APPLY_TIMEOUT) -> None:
    """Wait until every running sidecar runs the configuration rendered for it (after ``scale``: new peers)
    and no listener it replaced is still draining: a kept-alive connection of one would carry a request
    under the previous configuration (a replica's fault just injected would miss it)."""
    comps = _by_name(running)
    wanted = {each.admin: {f.stat: f.version for f in _files(cfg, each) if f.stat is not None}
              for each in render_all(cfg, current(cfg), running) if _running(comps, each.program)}
    until(lambda: all(_runs(admin, version) and _draining(admin) == 0 for admin, version in wanted.items()),
          timeout, 0.1, "every sidecar to run the configuration rendered for it", ignoring=(httpx.HTTPError,))


def _draining(admin: str) -> int:
    found = stats(admin, r"^listener_manager\.total_listeners_draining$")
    return int(found.get("listener_manager.total_listeners_draining", "0"))


def drained(cfg: LabConfig, running: Sequence[Component], *, timeout: float = APPLY_TIMEOUT) -> None:
    """Wait until no sidecar of ``running`` still serves a listener an apply replaced.

    Connections a listener accepted before it was replaced keep its routes while it drains
    (``--drain-time-s``): before a release those routes named stops, they must be gone.
    """
    admins = [c.url(cfg, "http", r) for c in running if c.job == STATS_JOB for r in range(c.replicas)]
    gauge = "listener_manager.total_listeners_draining"
    until(lambda: all(stats(a, f"^{gauge.replace('.', chr(92) + '.')}$").get(gauge) == "0" for a in admins),
          timeout, 0.1, "the sidecars' replaced listeners to drain", ignoring=(httpx.HTTPError,))


def _running(comps: Mapping[str, Component], program: str) -> bool:
    name, _, replica = program.rpartition("-")
    comp = comps.get(name)
    return comp is not None and int(replica) < comp.replicas


class _Refused(Exception):
    def __init__(self, change: Change) -> None:
        super().__init__(change.program)
        self.change = change

