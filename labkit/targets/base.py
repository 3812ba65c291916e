"""The interface both targets implement, and the status record they report.

A notebook or the CLI holds a :class:`Target` and never asks which kind it is::

    target = labkit.target()          # local unless OTTLAB_TARGET / TARGET says kube
    target.up()
    print(target.status_frame())
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, LabError, MissingCapabilityError, UnknownComponentError
from labkit.platform.component import Component

if TYPE_CHECKING:
    import pandas as pd

    from labkit.clients.sidecar import Handshake, Plaintext
    from labkit.platform.mesh.faults import ReplicaFault
    from labkit.platform.mesh.identity import WorkloadCertificate
    from labkit.platform.mesh.resources import Mesh


@dataclass
class ComponentStatus:
    """What a target knows of one component right now."""

    name: str
    layer: str
    state: str  # running | starting | stopped | failed | absent
    healthy: bool
    urls: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    replicas: int = 0
    detail: str = ""
    # The http URL of each running replica, by program name (a CDN PoP is a replica of "edge").
    replica_urls: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AutoscalerStatus:
    """One HorizontalPodAutoscaler as a target runs it: its metrics, replicas and last decisions."""

    hpa: str
    target: str
    active: bool  # the autoscaler acts on it now
    metrics: list[dict[str, Any]] = field(default_factory=list)  # name, current, target
    current: int | None = None
    desired: int | None = None
    # The newest last: at (epoch seconds), current, desired, reason, message, metrics (as ``metrics``).
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inside_media_root(relative: str) -> str:
    """``relative`` when it names something inside the media root (no absolute path, no ``..``); else a ConfigError."""
    from pathlib import PurePosixPath

    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        raise ConfigError(f"{relative!r} is not a path inside the media root",
                          hint="give a relative path, e.g. live/x/index.m3u8")
    return relative


class Target(abc.ABC):
    """Where the platform runs. Every method is bounded by a timeout."""

    name: str
    # The mesh's authorization refuses with 403 and a body starting "RBAC: access denied" (Istio's whole
    # body) on every target; True where the body goes on to name the AuthorizationPolicy and the caller.
    mesh_denial_names_policy: bool = False

    def __init__(self, cfg: LabConfig, components: Sequence[Component]) -> None:
        self.cfg = cfg
        self.components = list(components)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise UnknownComponentError(name, [c.name for c in self.components])

    def component_names(self) -> set[str]:
        """The names of the components this target runs: what its status lists (a local lab with the
        mesh adds each workload's sidecar; a cluster runs the declared components)."""
        return {c.name for c in self.components}

    def scrape_jobs(self, layers: Sequence[str] | None = None) -> list[str]:
        """The Prometheus jobs of what this target runs (of ``layers``), in start order: what a notebook waits for.

        The components' declared jobs (:func:`labkit.platform.scrape_jobs`) and, with the mesh on, its
        sidecars' (:data:`labkit.platform.mesh.STATS_JOB`); besides them, the probes' job
        (:data:`labkit.platform.PROBE_JOB`).
        """
        return list(dict.fromkeys(c.scrape_job for c in self.select(layers) if c.scrape_job is not None))

    def select(self, layers: Sequence[str] | None) -> list[Component]:
        """The components of ``layers`` (all when None), in declaration order."""
        if not layers:
            return list(self.components)
        known = {c.layer for c in self.components}
        unknown = [layer for layer in layers if layer not in known]
        if unknown:
            raise UnknownComponentError(unknown[0], sorted(known))
        return [c for c in self.components if c.layer in layers]

    @abc.abstractmethod
    def up(self, layers: Sequence[str] | None = None) -> list[ComponentStatus]:
        """Start (or converge) the given layers and wait until every component is ready."""

    @abc.abstractmethod
    def down(self, *, purge: bool = False) -> None:
        """Stop everything this target started; ``purge`` also removes its state."""

    @abc.abstractmethod
    def status(self) -> list[ComponentStatus]:
        """One record per declared component, running or not."""

    @abc.abstractmethod
    def logs(self, component: str, lines: int = 100) -> str:
        """The last ``lines`` log lines of a component."""

    @abc.abstractmethod
    def restart(self, component: str) -> ComponentStatus:
        """Restart a component and wait until it is ready again."""

    @abc.abstractmethod
    def scale(self, component: str, replicas: int) -> ComponentStatus:
        """Run ``replicas`` copies of a component (within its declared bounds)."""

    @abc.abstractmethod
    def stop(self, component: str) -> ComponentStatus:
        """Stop every replica of a component until :meth:`start` (an outage a drill keeps going)."""

    @abc.abstractmethod
    def start(self, component: str) -> ComponentStatus:
        """Start a stopped component again (its replicas as before) and wait until it is ready."""

    def stop_replica(self, component: str, replica: int) -> ComponentStatus:
        """Stop one replica (``edge``, 1: the PoP edge-1) until :meth:`start` brings it back: one PoP of many down.

        Only the component's own program stops: with the service mesh on, the replica's sidecar keeps
        running and answers its callers 503 for it, a bad replica for outlier detection (notebook 05).
        """
        raise MissingCapabilityError(self.name, "stop one replica of a component", "it is not implemented there",
                                     hint=f"stop the whole component instead: target.stop({component!r})")

    def route_alerts(self, webhook: str | None) -> None:
        """Point Alertmanager's receivers at ``webhook`` (every notification, resolutions too); None: as declared."""
        raise MissingCapabilityError(self.name, "point Alertmanager at a webhook on this machine",
                                     "its Alertmanager cannot reach this machine's loopback",
                                     hint="read the alerts from Alertmanager's API: labkit.clients.alerts.alerts(url)")

    def mesh(self) -> Mesh:
        """The mesh's Istio resources in force now (VirtualServices, DestinationRules, PeerAuthentications, ...).

        :mod:`labkit.platform.mesh.faults` edits what this returns and gives it to :meth:`apply_mesh`.
        """
        raise MissingCapabilityError(self.name, "read the service mesh's resources", "it runs no mesh yet",
                                     hint="use the kube target with Istio installed (ottlab addons install istio)")

    def apply_mesh(self, mesh: Mesh) -> None:
        """Put ``mesh`` in force: what changed since :meth:`mesh` is applied, the rest stays as it is.

        Checked first (:func:`labkit.platform.mesh.resources.check`): a mesh with a problem changes nothing.
        """
        raise MissingCapabilityError(self.name, "change the service mesh's resources", "it runs no mesh yet",
                                     hint="use the kube target with Istio installed (ottlab addons install istio)")

    def mesh_address(self, service: str) -> tuple[str, int]:
        """(host, port) where ``service``'s sidecar takes its callers (mutual TLS under STRICT), reachable from here."""
        raise MissingCapabilityError(self.name, "reach a service's sidecar directly", "it is not implemented there",
                                     hint="run the lesson on the local target with OTTLAB_MESH=strict")

    def mesh_sidecar(self, service: str, replica: int = 0) -> str:
        """The base URL of the Envoy admin API of ``service``'s sidecar (its stats, certificates), reachable from here.

        ``gateway`` is the gateway's own sidecar, through which it calls the services.
        """
        raise MissingCapabilityError(self.name, "read a sidecar's admin API", "it is not implemented there",
                                     hint="run the lesson on the local target with OTTLAB_MESH=strict")

    def mesh_handshake(self, service: str, certificate: WorkloadCertificate | None = None, *,
                       path: str = "/") -> Handshake:
        """A TLS client outside the mesh at ``service``'s port, presenting ``certificate`` (none: anonymous).

        What its sidecar presented and answered, or why it refused (:func:`labkit.clients.sidecar.handshake`),
        from where a client without a sidecar stands: here, at :meth:`mesh_address`.
        """
        from labkit.clients.sidecar import handshake

        return handshake(*self.mesh_address(service), certificate, path=path)

    def mesh_plaintext(self, service: str, method: str = "GET", path: str = "/") -> Plaintext:
        """A plaintext HTTP client outside the mesh at ``service``'s port: the answer, or the refusal."""
        from labkit.clients.sidecar import plaintext

        return plaintext(*self.mesh_address(service), method, path)

    def inject_replica_fault(self, fault: ReplicaFault) -> None:
        """Make one replica of a meshed service answer badly (a flaky pod): ``fault`` at that replica's sidecar.

        Its other replicas are untouched; callers meet it through their load balancing, retries and
        outlier detection. A fault already on that replica is replaced. :meth:`clear_replica_faults`
        removes it (``down`` forgets it too); nothing restarts either way.
        """
        raise MissingCapabilityError(self.name, "inject a fault into one replica", "it is not implemented there",
                                     hint="run the lesson on the local target with OTTLAB_MESH=strict")

    def replica_faults(self) -> list[ReplicaFault]:
        """The faults of single replicas in force now (:meth:`inject_replica_fault`), by service and replica."""
        return []

    def clear_replica_faults(self, service: str | None = None) -> list[ReplicaFault]:
        """Remove the faults of single replicas (of ``service`` only, when given); the faults removed."""
        return []

    def start_version(self, service: str, version: str) -> ComponentStatus:
        """Run ``service``'s release ``version`` next to the declared one (a canary: catalog ``v2``) and wait for it.

        Its pods carry the label ``version: <version>``, the one the DestinationRule's subset selects;
        it takes requests only once a VirtualService gives its subset a weight (:meth:`apply_mesh`).
        """
        raise MissingCapabilityError(self.name, "run a second release of a service", "it runs no mesh yet",
                                     hint="run the lesson on the local target with OTTLAB_MESH=strict")

    def stop_version(self, service: str, version: str) -> None:
        """Stop what :meth:`start_version` started; refused while the mesh in force still sends it requests."""
        raise MissingCapabilityError(self.name, "stop a second release of a service", "it runs no mesh yet",
                                     hint="run the lesson on the local target with OTTLAB_MESH=strict")

    @abc.abstractmethod
    def kill(self, component: str) -> None:
        """Kill a component abruptly (SIGKILL / pod delete), as a failure drill does."""

    @abc.abstractmethod
    def endpoint(self, component: str, port: str = "http") -> str:
        """A base URL reachable from this machine (a port-forward on kube)."""

    def endpoint_as(self, component: str, caller: str) -> tuple[str, ssl.SSLContext | None]:
        """Where ``caller``'s calls to ``component`` go from here, and the TLS context carrying ``caller``'s
        mesh identity (None: no mesh on the way), for what a policy lets only ``caller`` do (keys: the
        transcoder's). Without a mesh to pass, the tools' :meth:`endpoint`."""
        return self.endpoint(component), None

    def service_token(self) -> str:
        """The lab's service-to-service secret, for admin calls such as seeding."""
        raise LabError(f"the {self.name} target cannot read the lab's service token")

    def set_env(self, component: str, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set (or, with ``None``, remove) ``OTT_*`` settings of ``component`` and restart it with them.

        Returns the component's settings set this way. On Kubernetes a service's settings are its
        Deployment's: edit ``k8s/`` (or ``kubectl set env``), so the cluster keeps one source of truth.
        """
        raise MissingCapabilityError(
            self.name, "set a service's settings", "they are the Deployment's environment, declared in k8s/",
            hint=f"edit the Deployment in k8s/ or run: kubectl -n {self.cfg.namespace} set env "
                 f"deployment/{component} NAME=VALUE")

    def set_pop_capacity(self, rps: int | None) -> int | None:
        """Give every PoP a capacity of ``rps`` media requests a second (None: no limit); the capacity in force after.

        The lab's per-PoP limit (:data:`labkit.platform.layers.cdn.POP_CAPACITY_RPS`), enforced by nginx's
        limit_req on every PoP, the ones an HPA adds too. Locally the edge's setting (``ottlab env edge
        OTT_EDGE_CAPACITY_RPS=80``); on kube the edge StatefulSet's environment, its PoPs rolled. Checked first.
        """
        raise MissingCapabilityError(self.name, "set the PoPs' capacity", "it is not implemented there",
                                     hint="use the local or the kube target")

    # -- capabilities where the targets differ ---------------------------------------------
    # A target that truly cannot do one raises MissingCapabilityError, saying why and what instead;
    # notebooks and instruments call these and never ask which target they hold.

    # The kinds of program (labkit.core.environment's ``needed_by``) this target runs on this machine.
    programs_needed_by: tuple[str, ...] = ("all",)

    @classmethod
    def missing_programs(cls, tools: pd.DataFrame) -> pd.DataFrame:
        """The rows of :func:`labkit.core.environment.report` this target needs and this machine lacks."""
        return tools[tools["needed_by"].isin(cls.programs_needed_by) & ~tools["found"]]

    @abc.abstractmethod
    def describe(self) -> str:
        """Which target and where it keeps the platform, in words: ``local target: lab directory /…/var``,
        ``kube target: namespace ottlab at …``."""

    @abc.abstractmethod
    def signing_secret(self) -> str:
        """The lab's URL-signing secret, shared by license (which signs) and the PoPs (which check)."""

    @abc.abstractmethod
    def media_root(self) -> Path:
        """The origin's media root as a folder of this machine: what the transcoder publishes, the origin serves."""

    def media_folder(self, title: str, version: str) -> Path:
        """A published version's folder on this machine (``<title>/<version>`` of the media root), to read its files.

        Where the media root is a folder of this machine, the folder itself; the kube target copies the
        version from the origin first (:mod:`labkit.targets.kube.mirror`).
        """
        return self.media_root() / title / version

    def write_media(self, relative: str, content: bytes) -> None:
        """Publish ``content`` at ``relative`` in the origin's media root, as a packager does: aside, then renamed over.

        Readers (the origin) never see half a file. On the kube target the file is written in a pod
        that mounts the media volume (:meth:`labkit.targets.kube.target.KubeTarget.write_media`).
        """
        path = self.media_root() / inside_media_root(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(path.name + ".tmp")
        aside.write_bytes(content)
        aside.replace(path)

    def remove_media(self, relative: str) -> None:
        """Delete the file or folder ``relative`` of the origin's media root; nothing when it is not there."""
        import shutil

        path = self.media_root() / inside_media_root(relative)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    @abc.abstractmethod
    def access_log(self, pop: str) -> list[dict[str, Any]]:
        """The requests PoP ``pop`` (``edge-0``) logged, one dict per JSON line of its access log; ``[]`` before any."""

    def autoscale(self, on: bool, *, scale_down_window: float | None = None,
                  metric_targets: Mapping[str, float] | None = None) -> list[AutoscalerStatus]:
        """Switch the lab's HorizontalPodAutoscalers (k8s/base/autoscaling) on or off; their status after.

        Kubernetes' controller acts on kube; labkit's, on the same objects and algorithm, locally.
        ``scale_down_window`` (seconds) shortens every scaleDown stabilization window, for a lesson
        that cannot wait the default 300 s; ``metric_targets`` replaces the target of the metrics it
        names (``{"ott_edge_egress_bytes_per_second": 2e6}``), for a machine too small to reach them.
        """
        raise MissingCapabilityError(self.name, "autoscale", "it has no autoscaler", hint="scale by hand: ottlab scale")

    def autoscale_status(self) -> list[AutoscalerStatus]:
        """Each HPA: its metrics (current and target), current and desired replicas, its last decisions."""
        raise MissingCapabilityError(self.name, "report autoscaling", "it has no autoscaler",
                                     hint="ottlab status shows the replicas")

    def follow_autoscaler(self) -> None:  # noqa: B027 - optional hook: an autoscaler that scales through scale()
        """Bring what follows a component's replica count (license's PoP list, the probes' targets) to the
        count an autoscaler set: an explicit step, since reading :meth:`autoscale_status` writes nothing.

        Here nothing to do: an autoscaler that scales through :meth:`scale` (the local one) brings
        them along itself; the kube target's HPA controller scales the workloads on its own.
        """

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each running component's processes and their children used so far.

        By component name, replicas summed; the difference between two calls is the CPU a step of
        load cost. Here read from the processes of this machine (:attr:`ComponentStatus.pids`);
        the kube target reads each container's cAdvisor counter through the lab's Prometheus
        (:mod:`labkit.targets.kube.usage`). :meth:`cpu_meter` reads the same often and cheaply.
        """
        return self.cpu_meter()()

    def cpu_meter(self) -> Callable[[], dict[str, float]]:
        """A reader of :meth:`cpu_seconds` for the processes running now, cheap enough to call every 0.1 s.

        It asks for the components' processes once (:meth:`status` probes every component) and then
        reads only their CPU times (and their children's, found again at each reading). A reader
        whose values stand for an earlier time (Prometheus' counters, scraped every few seconds)
        says how much earlier in its attribute ``lag_s``; the capacity ramp's sampler allows for it.
        """
        import psutil

        statuses = [s for s in self.status() if s.pids]
        if not statuses:
            raise MissingCapabilityError(
                self.name, "measure CPU per component", "no component runs as a process of this machine",
                hint="read CPU per container from the cluster (metrics-server, `kubectl top pods`)")
        roots: dict[str, list[psutil.Process]] = {}
        for status in statuses:
            for pid in status.pids:
                try:
                    roots.setdefault(status.name, []).append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    continue  # exited since status(): it uses no more CPU

        def read() -> dict[str, float]:
            used: dict[str, float] = {}
            for name, processes in roots.items():
                total = 0.0
                for root in processes:
                    try:
                        family = [root, *root.children(recursive=True)]
                    except psutil.Error:
                        continue  # the component's process is gone: nothing more to count
                    for proc in family:
                        try:
                            times = proc.cpu_times()
                        except psutil.Error:
                            continue  # a child that exited between the listing and now
                        total += times.user + times.system
                used[name] = total
            return used

        return read

    def cpu_shares(self) -> dict[str, float]:
        """The cores each running component can use before it is saturated: one per replica here.

        The lab's processes are single-threaded (a Python service, an nginx with one worker), so a
        replica runs out near one core. The capacity ramp names a component saturated at 80 % of it.
        """
        return {s.name: float(max(1, s.replicas)) for s in self.status() if s.pids}

    def status_frame(self) -> pd.DataFrame:
        """:meth:`status` as a DataFrame, for a notebook table."""
        import pandas as pd

        rows = []
        for s in self.status():
            row = s.as_dict()
            row["urls"] = " ".join(s.urls.values())
            row["pids"] = " ".join(str(p) for p in s.pids)
            rows.append(row)
        return pd.DataFrame(rows, columns=["name", "layer", "state", "healthy", "replicas", "pids", "urls", "detail"])

    def close(self) -> None:  # noqa: B027 - optional hook: most targets hold nothing to release
        """Release client resources (port-forwards, connections). The platform keeps running."""
