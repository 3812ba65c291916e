"""The local target itself: start, stop, scale and inspect the supervised processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from labkit.core import ports
from labkit.core.config import DEFAULT_MESH, MESH_MODES, LabConfig
from labkit.core.console import progress
from labkit.core.errors import (
    ComponentFailedError,
    ConfigError,
    LabError,
    MissingBinaryError,
    NotRunningError,
    TimeoutExpired,
)
from labkit.core.wait import until
from labkit.platform import hpa
from labkit.platform.component import Component
from labkit.platform.credentials import SIGNING_SECRET_FILE
from labkit.platform.layer import Layer
from labkit.platform.layers import cdn, media
from labkit.platform.readiness import probe
from labkit.targets.base import AutoscalerStatus, ComponentStatus, Target
from labkit.targets.local.labdir import LabDir
from labkit.targets.local.supervisor import Supervisor, log_tail, program_names

if TYPE_CHECKING:
    from labkit.platform.mesh.faults import ReplicaFault
    from labkit.platform.mesh.resources import Mesh

# supervisord states in which a process will not come up without help.
_DEAD = {"FATAL", "EXITED", "STOPPED", "UNKNOWN"}


_OTT_SETTING = re.compile(r"OTT_[A-Z0-9_]+")
# The mesh mode a running lab came up with (OTTLAB_MESH), under its run directory; `down` removes it.
MESH_MODE_FILE = "mesh-mode"


class LocalTarget(Target):
    """Real processes on this machine under one lab directory.

    Example::

        target = LocalTarget(LabConfig.from_env(), platform.components(), platform.layers())
        target.up()                    # idempotent
        target.status_frame()
        target.down(purge=True)
    """

    name = "local"
    programs_needed_by = ("all", "local")   # every program of the platform runs here
    mesh_denial_names_policy = True          # its sidecars' 403 names the policy (envoy.py's local reply)

    def __init__(self, cfg: LabConfig, components: Sequence[Component], layers: Sequence[Layer] = ()) -> None:
        # The mode this command asked for; a running lab keeps its own: every later command sees it so,
        # asked or not (`up` refuses a different mode asked on purpose, see _record_mesh).
        self._asked_mesh = cfg.mesh
        running_mesh = _running_mesh(cfg) if Supervisor(cfg).pid() is not None else None
        if running_mesh is not None and running_mesh != cfg.mesh:
            cfg = cfg.with_(mesh=running_mesh)
        # As declared: the mesh's sidecars, and a release started beside its service, are added to them.
        self._declared = list(components)
        if cfg.mesh != "off":
            from labkit.targets.local import mesh as local_mesh

            # The services on unix sockets behind their Envoy sidecars (OTTLAB_MESH).
            components = local_mesh.components(cfg, components)
        super().__init__(cfg, components)
        self.layers = list(layers)
        self.labdir = LabDir(cfg)
        self.supervisor = Supervisor(cfg)
        # Replica counts changed by `scale`, and the layers brought up, while the platform runs;
        # `down` forgets both.
        self._replicas_file = cfg.run_dir / "replicas.json"
        self._layers_file = cfg.run_dir / "layers.json"
        # Services' OTT_* settings set with `set_env` (`ottlab env`); `down` forgets them too.
        self._env_file = cfg.run_dir / "service-env.json"

    # -- lifecycle -----------------------------------------------------------------------

    def up(self, layers: Sequence[str] | None = None) -> list[ComponentStatus]:
        selected = self.select(layers)
        self._check_binaries(selected)
        started = time.monotonic()
        with self.labdir.lock():
            self.supervisor.lab_id = self.labdir.lab_id()
            self._record_mesh()
            active = sorted(set(self._active_layers()) | {c.layer for c in selected})
            self._layers_file.write_text(json.dumps(active))
            self._write_layer_configs()
            self.supervisor.write_config(self._configured_components())
            if not self.supervisor.is_running():
                self._reap_orphans()
            running = self._running_programs()
            # Each with the replicas `scale` (or the autoscaler) gave it, as its configs list them: `up` again
            # undoes no scaling, as on kube, where an HPA's workload keeps its live replicas.
            scaled = {c.name: c for c in self._scaled_components()}
            selected = [scaled[c.name] for c in selected]
            wanted_ports = [p for c in selected if not self._is_up(c, running) for p in self._ports_of(c)]
            ports.ensure_free(wanted_ports, self.cfg.host)
            if self.supervisor.is_running():
                self.supervisor.reload()
            else:
                progress(f"starting the supervisor for {self.cfg.home}")
                self.supervisor.start()
            # A layer's components start together, then each is awaited: layers start in order,
            # so a later layer can rely on an earlier one being ready.
            for layer in dict.fromkeys(c.layer for c in selected):
                self._start_all([c for c in selected if c.layer == layer])
            self._reload_prometheus()
        progress(f"platform ready in {time.monotonic() - started:.1f} s")
        return [s for s in self.status() if s.name in {c.name for c in selected}]

    def down(self, *, purge: bool = False) -> None:
        if not self.labdir.path.exists():
            return
        self.labdir.check()
        if self.labdir.exists():
            # A command changing the lab (the autoscaler's scale waits for its replicas) ends within a start's
            # bound: wait for it, else the lab would stay running, its directory maybe purged under it.
            with self.labdir.lock(wait=self.cfg.ready_timeout + 30):
                self._stop_autoscaler()
                (self.cfg.run_dir / "autoscaler.json").unlink(missing_ok=True)
                if self.supervisor.pid() is not None:
                    progress("stopping every component and the supervisor")
                    self.supervisor.shutdown()
                self._replicas_file.unlink(missing_ok=True)
                self._layers_file.unlink(missing_ok=True)
                self._env_file.unlink(missing_ok=True)
                (self.cfg.run_dir / MESH_MODE_FILE).unlink(missing_ok=True)
                if self.cfg.mesh != "off":
                    from labkit.targets.local import mesh as local_mesh
                    from labkit.targets.local import releases as local_releases

                    local_mesh.forget(self.cfg)
                    local_releases.record(self.cfg, [])  # a release started by a lesson does not outlive the lab
                self._reap_orphans()
                self._wait_ports_closed()
        if purge:
            progress(f"removing {self.labdir.path}")
            self.labdir.purge()

    def restart(self, component: str) -> ComponentStatus:
        comp = self.component(component)
        self._require_supervisor()
        with self.labdir.lock():
            for program in self._active_programs(comp):
                self.supervisor.stop_program(program)
            self._start(comp)
        return self._status_of(comp, self.supervisor.all_info())

    def scale(self, component: str, replicas: int) -> ComponentStatus:
        comp = self.component(component)
        if not 1 <= replicas <= comp.max_replicas:
            raise ConfigError(
                f"{component} can run 1 to {comp.max_replicas} replicas, not {replicas}",
                hint=f"choose a count from 1 to {comp.max_replicas}",
            )
        if comp.follows is not None:
            raise ConfigError(f"{component} runs one replica per {comp.follows} replica",
                              hint=f"scale {comp.follows} instead: `ottlab scale {comp.follows} {replicas}`")
        self._require_supervisor()
        followers = [c for c in self.components if c.follows == comp.name]
        with self.labdir.lock():
            before = self.replicas(comp.name)
            counts = self._replica_overrides()
            for each in (comp, *followers):
                counts[each.name] = replicas
            self._replicas_file.write_text(json.dumps(counts))
            # The configs first (a new PoP needs its own, a new replica's sidecar its files; the mesh's
            # peers route to it once it is ready), then the new replicas and their helpers.
            self._write_layer_configs(serving={comp.name: min(before, replicas)})
            self._start_all([comp, *followers], replicas)
            # New replicas join the gateway, the sidecars and Prometheus before old ones leave: no request is lost.
            self._reload_configs()
            if self.cfg.mesh != "off":
                from labkit.targets.local import mesh as local_mesh

                active = set(self._active_layers())
                local_mesh.settle(self.cfg, [c for c in self._scaled_components() if c.layer in active])
            for each in (comp, *followers):
                for program in program_names(each)[replicas:]:
                    self.supervisor.stop_program(program)
        return self._status_of(comp, self.supervisor.all_info())

    def stop(self, component: str) -> ComponentStatus:
        comp = self.component(component)
        self._require_supervisor()
        with self.labdir.lock():
            for program in self._active_programs(comp):
                progress(f"stopping {program}")
                self.supervisor.stop_program(program)
        return self._status_of(comp, self.supervisor.all_info())

    def start(self, component: str) -> ComponentStatus:
        comp = next(c for c in self._scaled_components() if c.name == self.component(component).name)
        self._require_supervisor()
        with self.labdir.lock():
            self._start(comp)
        return self._status_of(comp, self.supervisor.all_info())

    def stop_replica(self, component: str, replica: int) -> ComponentStatus:
        comp = next(c for c in self._scaled_components() if c.name == self.component(component).name)
        if not 0 <= replica < comp.replicas:
            raise ConfigError(f"{component} runs replicas 0 to {comp.replicas - 1}, not {replica}",
                              hint=f"choose a replica from 0 to {comp.replicas - 1}")
        program = program_names(comp)[replica]
        self._require_supervisor()
        with self.labdir.lock():
            progress(f"stopping {program}")
            self.supervisor.stop_program(program)
        return self._status_of(comp, self.supervisor.all_info())

    def route_alerts(self, webhook: str | None) -> None:
        from labkit.clients import alerts
        from labkit.platform.layers.monitoring import alerting

        config = alerting.alertmanager_config(alerting.timing_from(), webhook=webhook)
        (self.cfg.conf_dir / "alertmanager.yml").write_text(alerting.dump(config))
        alerts.reload(self.endpoint("alertmanager"))

    def kill(self, component: str) -> None:
        comp = self.component(component)
        self._require_supervisor()
        info = self.supervisor.all_info()
        pids = [info[p]["pid"] for p in program_names(comp) if p in info and info[p]["pid"]]
        if not pids:
            raise NotRunningError(f"component {component!r}")
        # SIGKILL like a crash: supervisord's autorestart brings it back per its restart policy.
        os.kill(pids[0], signal.SIGKILL)

    # -- observation ---------------------------------------------------------------------

    def status(self) -> list[ComponentStatus]:
        info = self.supervisor.all_info() if self.labdir.exists() else {}
        return [self._status_of(c, info) for c in self.components]

    def logs(self, component: str, lines: int = 100) -> str:
        comp = self.component(component)
        parts = []
        for program in program_names(comp):
            tail = log_tail(self.cfg.log_dir / f"{program}.log", lines)
            if tail:
                parts.append(tail if len(program_names(comp)) == 1 else f"==> {program} <==\n{tail}")
        return "\n".join(parts)

    def endpoint(self, component: str, port: str = "http") -> str:
        if self.cfg.mesh != "off" and port == "http":
            from labkit.targets.local import mesh as local_mesh

            # A service in the mesh takes only mTLS: the lab's tools reach it through their own sidecar.
            through = local_mesh.tools_url(self.cfg, self.components, self.component(component).name)
            if through is not None:
                return through
        return self.component(component).url(self.cfg, port)

    def endpoint_as(self, component: str, caller: str) -> tuple[str, ssl.SSLContext | None]:
        from labkit.targets.local import mesh as local_mesh

        name = self.component(component).name
        if self.cfg.mesh == "off" or name not in local_mesh.MESHED:
            return super().endpoint_as(component, caller)
        # Straight to the service's sidecar in mutual TLS, with the lab CA's certificate for ``caller``.
        port = self.component(name).local_port(self.cfg, "http")
        return f"https://{self.cfg.host}:{port}", local_mesh.client_context(self.cfg, caller)

    def service_token(self) -> str:
        from labkit.platform.credentials import SERVICE_TOKEN_FILE

        path = self.cfg.conf_dir / SERVICE_TOKEN_FILE
        if not path.exists():
            raise NotRunningError("the APIs layer (it creates the lab's service token)")
        return path.read_text().strip()

    # -- capabilities ----------------------------------------------------------------------

    def describe(self) -> str:
        return f"local target: lab directory {self.cfg.home}"

    def signing_secret(self) -> str:
        """The secret license and the PoPs share: a file of the lab directory, written when the platform came up."""
        path = self.cfg.conf_dir / SIGNING_SECRET_FILE
        if not path.is_file():
            raise NotRunningError("the cdn layer (it creates the lab's URL-signing secret)")
        return path.read_text().strip()

    def media_root(self) -> Path:
        return media.media_root(self.cfg)

    def access_log(self, pop: str) -> list[dict[str, Any]]:
        """PoP ``edge-<n>``'s JSON access log, a file of the lab directory (its exporter reads it too).

        Lines that are not a JSON object (a line being written) are skipped. The exporter empties the
        file past :data:`labkit.platform.layers.cdn.ACCESS_LOG_MAX_BYTES`, so this is the recent past.
        """
        from labkit.traffic.herd import parse_log_lines

        known = [cdn.pop_id(replica) for replica in range(cdn.EDGE.max_replicas)]
        if pop not in known:
            raise ConfigError(f"no PoP named {pop!r}",
                              hint=f"a PoP is {known[0]} to {known[-1]}; "
                                   "labkit.pops.pop_urls(target) names the running ones")
        path = self.cfg.run_dir / cdn.EDGE.name / str(known.index(pop)) / "access.log"
        if not path.exists():
            return []
        return parse_log_lines(path.read_text(errors="replace").splitlines())

    # -- the service mesh (labkit.targets.local.mesh) ---------------------------------------------

    def mesh(self) -> Mesh:
        """The mesh's resources in force in this lab (the committed ones until :meth:`apply_mesh`)."""
        from labkit.targets.local import mesh as local_mesh

        self._require_mesh()
        return local_mesh.current(self.cfg)

    def apply_mesh(self, mesh: Mesh) -> None:
        """Render every sidecar from ``mesh`` and have the running Envoys take it, none restarted.

        A resource with a problem raises :class:`~labkit.platform.mesh.errors.MeshConfigError`, a
        configuration an Envoy refuses a :class:`LabError`; either way the previous mesh stays in force.
        """
        from labkit.targets.local import mesh as local_mesh

        self._require_mesh()
        with self.labdir.lock():
            active = set(self._active_layers())
            local_mesh.apply(self.cfg, mesh, [c for c in self._scaled_components() if c.layer in active])

    def mesh_address(self, service: str) -> tuple[str, int]:
        from labkit.targets.local import mesh as local_mesh

        self._require_mesh()
        if service not in local_mesh.MESHED:
            raise ConfigError(f"{service!r} has no sidecar here", hint=f"one of {', '.join(local_mesh.MESHED)}")
        return self.cfg.host, self.component(service).local_port(self.cfg, "http")

    def mesh_sidecar(self, service: str, replica: int = 0) -> str:
        from labkit.targets.local import mesh as local_mesh

        self._require_mesh()
        name = local_mesh.GATEWAY_PROXY if service == local_mesh.GATEWAY else local_mesh.proxy_name(service)
        return self.component(name).url(self.cfg, "http", replica)

    def inject_replica_fault(self, fault: ReplicaFault) -> None:
        """``fault`` in one replica's own sidecar (its inbound side), taken by that Envoy without a restart."""
        from labkit.targets.local import mesh as local_mesh

        self._require_mesh()
        service = fault.fault.service
        if service not in local_mesh.MESHED:
            raise ConfigError(f"{service!r} has no sidecar here: no replica of it can be given a fault",
                              hint=f"one of {', '.join(local_mesh.MESHED)}")
        replicas = self.replicas(service)
        if fault.replica >= replicas:
            raise ConfigError(f"{service} runs {replicas} replica(s): there is no replica {fault.replica}",
                              hint=f"give a replica from 0 to {replicas - 1}")
        kept = [f for f in self.replica_faults()
                if (f.fault.service, f.replica) != (service, fault.replica)]
        self._set_replica_faults([*kept, fault])

    def replica_faults(self) -> list[ReplicaFault]:
        from labkit.targets.local import replica_faults

        return replica_faults.load(self.cfg) if self.cfg.mesh != "off" else []

    def clear_replica_faults(self, service: str | None = None) -> list[ReplicaFault]:
        in_force = self.replica_faults()
        removed = [f for f in in_force if service is None or f.fault.service == service]
        if removed:
            self._set_replica_faults([f for f in in_force if f not in removed])
        return removed

    def _set_replica_faults(self, chosen: list[ReplicaFault]) -> None:
        """Keep ``chosen`` and have the sidecars take them; on a refusal the previous faults stay in force."""
        from labkit.targets.local import mesh as local_mesh
        from labkit.targets.local import replica_faults

        with self.labdir.lock():
            previous = replica_faults.load(self.cfg)
            active = set(self._active_layers())
            running = [c for c in self._scaled_components() if c.layer in active]
            replica_faults.save(self.cfg, chosen)
            try:
                local_mesh.apply(self.cfg, local_mesh.current(self.cfg), running)
            except LabError:
                replica_faults.save(self.cfg, previous)  # apply put the sidecars' previous files back
                raise
            local_mesh.settle(self.cfg, running)  # replicas scaled just before are in every peer's clusters

    def _record_mesh(self) -> None:
        """Remember the mesh mode the lab runs with (off included); a running lab cannot switch it (`down` first).

        A command that asked for the default mode (it may not have asked at all) joins the lab as it runs."""
        running = _running_mesh(self.cfg) if self.supervisor.is_running() else None
        asked = self._asked_mesh
        if running is not None and running != asked and asked != DEFAULT_MESH:
            raise ConfigError(f"this lab runs with OTTLAB_MESH={running}, not {asked}",
                              hint=f"bring it down first (ottlab down), then up with OTTLAB_MESH={asked}")
        path = self.cfg.run_dir / MESH_MODE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.cfg.mesh + "\n")

    def _require_mesh(self) -> None:
        if self.cfg.mesh == "off":
            raise ConfigError("this lab runs without the service mesh",
                              hint="bring it up with OTTLAB_MESH=strict (or permissive): "
                                   "ottlab down, then OTTLAB_MESH=strict ottlab up")

    def start_version(self, service: str, version: str) -> ComponentStatus:
        """Run ``<service>-<version>`` behind a sidecar of its own (:mod:`labkit.targets.local.releases`), ready.

        It gets requests once a VirtualService gives its subset a weight (:meth:`apply_mesh`).
        """
        from labkit.platform.mesh import releases
        from labkit.targets.local import releases as local_releases

        self._require_mesh()
        self._require_supervisor()
        name = releases.name(service, version)
        with self.labdir.lock():
            started = local_releases.running(self.cfg)
            local_releases.record(self.cfg, [*started, name] if name not in started else started)
            self._redeclare()
            self._write_layer_configs()  # its sidecar's files; no peer's change until a route names its subset
            if self.supervisor.write_config(self._configured_components()):
                self.supervisor.reload()
            release = next(c for c in self._scaled_components() if c.name == name)
            self._start_all([release, *self.followers(name)])
            self._reload_prometheus()
        return self._status_of(self.component(name), self.supervisor.all_info())

    def stop_version(self, service: str, version: str) -> None:
        """Stop that release and its sidecar; refused (nothing changed) while the mesh in force routes it requests."""
        from labkit.platform.mesh import releases
        from labkit.targets.local import mesh as local_mesh
        from labkit.targets.local import releases as local_releases

        self._require_mesh()
        self._require_supervisor()
        name = releases.name(service, version)
        with self.labdir.lock():
            started = local_releases.running(self.cfg)
            if name not in started:
                progress(f"{name} is not running")
                return
            active = set(self._active_layers())
            gone = {name, local_mesh.proxy_name(name)}
            without = [c for c in self._scaled_components() if c.layer in active and c.name not in gone]
            with releases.stopping(name):
                # Every sidecar rendered without it: refused while a route still gives its subset a weight.
                local_mesh.apply(self.cfg, local_mesh.current(self.cfg), without)
            local_mesh.drained(self.cfg, without)  # connections kept from an earlier route to it
            local_releases.record(self.cfg, [n for n in started if n != name])
            for comp in (self.component(local_mesh.proxy_name(name)), self.component(name)):
                for program in self._active_programs(comp):
                    progress(f"stopping {program}")
                    self.supervisor.stop_program(program)
            self._redeclare()
            self.supervisor.write_config(self._configured_components())
            self.supervisor.reload()
            self._write_layer_configs()
            self._reload_prometheus()

    def _redeclare(self) -> None:
        """The components again from the declarations, with the releases started now (``start_version``)."""
        from labkit.targets.local import mesh as local_mesh

        self.components = local_mesh.components(self.cfg, self._declared)

    # -- autoscaling (labkit.targets.local.autoscaling) ------------------------------------------

    def autoscale(self, on: bool, *, scale_down_window: float | None = None,
                  metric_targets: Mapping[str, float] | None = None,
                  period: float = hpa.DEFAULT_SYNC_PERIOD) -> list[AutoscalerStatus]:
        """Start (or stop) labkit's HPA controller for this lab, a process of its own that stops with the lab.

        Before it starts, the HPAs are checked (components, bounds, adapter rules, metrics Prometheus
        knows): a :class:`ConfigError` says what is wrong. ``period`` is the sync period (15 s).
        """
        from labkit.clients.prometheus import Prometheus
        from labkit.targets.local import autoscaling

        self._require_supervisor()
        if on:
            hpas = self.autoscalers(None, scale_down_window, metric_targets)
            if not hpas:
                raise ConfigError(f"no HorizontalPodAutoscaler of {hpa.autoscaling_dir()} scales a layer that is up",
                                  hint="bring up the apis or cdn layer first: ottlab up --layer apis")
            autoscaling.check(self, hpas, Prometheus(self.endpoint("prometheus")))
        self._stop_autoscaler()
        if on:
            args = ["--period", str(period)]
            if scale_down_window is not None:
                args += ["--scale-down-window", str(scale_down_window)]
            for name, value in (metric_targets or {}).items():
                args += ["--metric-target", f"{name}={value!r}"]
            env = {**os.environ, "OTTLAB_TARGET": "local", "OTTLAB_HOME": str(self.cfg.home),
                   "OTTLAB_BASE_PORT": str(self.cfg.base_port), "OTTLAB_READY_TIMEOUT": str(self.cfg.ready_timeout),
                   "OTTLAB_MESH": self.cfg.mesh,
                   # `down` (and `up` after a crash) stop every process carrying the lab's id: this one too.
                   "OTTLAB_LAB_ID": self.labdir.lab_id() or ""}
            self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.cfg.log_dir / "autoscaler.log").open("ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "labkit.targets.local.autoscaling", *args],
                                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
            (self.cfg.run_dir / autoscaling.PID_FILE).write_text(f"{proc.pid}\n")
            progress(f"autoscaler started (pid {proc.pid}, a sync every {period:g} s)")
            state = self.cfg.run_dir / autoscaling.STATE_FILE

            def started() -> bool:
                if proc.poll() is not None:
                    raise ComponentFailedError("autoscaler", f"it exited with {proc.returncode}",
                                               log_tail(self.cfg.log_dir / "autoscaler.log", 15))
                return autoscaling.read_state(state).get("pid") == proc.pid

            until(started, 30, 0.2, "the autoscaler to start")
        return self.autoscale_status()

    def autoscale_status(self) -> list[AutoscalerStatus]:
        from labkit.targets.local import autoscaling

        state = autoscaling.read_state(self.cfg.run_dir / autoscaling.STATE_FILE)
        active = self._autoscaler_process() is not None
        rows = []
        for h in self.autoscalers():
            mine = (state.get("hpas") or {}).get(h.name, {})
            decisions = list(mine.get("decisions") or [])
            last = decisions[-1] if decisions else {}
            rows.append(AutoscalerStatus(
                hpa=h.name, target=h.target, active=active,
                # Before its first decision: the targets the controller runs with (a lesson may lower them).
                metrics=list(last.get("metrics") or [
                    {"metric": m.name, "current": None, "target": (mine.get("targets") or {}).get(m.name, m.target)}
                    for m in h.metrics]),
                current=self.replicas(h.target), desired=last.get("desired"),
                decisions=[{"at": d.get("since", d.get("wall")), "last": d.get("wall"),
                            "current": d.get("current"), "desired": d.get("desired"),
                            "reason": d.get("reason"), "metrics": d.get("metrics") or [],
                            "message": "; ".join(x for x in (d.get("rescale_reason"), d.get("outcome")) if x)}
                           for d in decisions]))
        return rows

    def autoscalers(self, directory: Path | None = None, scale_down_window: float | None = None,
                    metric_targets: Mapping[str, float] | None = None) -> list[hpa.Hpa]:
        """The HPAs (k8s/base/autoscaling) of the layers that are up, checked, adjusted as :meth:`autoscale` asks."""
        from labkit.targets.local import autoscaling

        hpas = hpa.load(directory)
        hpa.check(hpas, self.components)
        hpa.check_metric_targets(hpas, metric_targets)
        active = set(self._active_layers())
        return autoscaling.adjusted([h for h in hpas if self.component(h.target).layer in active],
                                    scale_down_window, metric_targets)

    def replicas(self, component: str) -> int:
        """The replicas ``component`` is meant to run now (its declaration, or what `scale` set)."""
        return next(c.replicas for c in self._scaled_components() if c.name == self.component(component).name)

    def followers(self, component: str) -> list[Component]:
        """The components that run one replica per replica of ``component`` (a pod's other containers)."""
        return [c for c in self.components if c.follows == component]

    def replica_pids(self, component: str, replica: int) -> list[int]:
        """The pids of replica ``replica`` of ``component`` and of its followers (a pod's processes)."""
        info = self.supervisor.all_info()
        pids = []
        for comp in (self.component(component), *self.followers(component)):
            names = program_names(comp)
            if replica < len(names) and info.get(names[replica], {}).get("statename") == "RUNNING":
                pids.append(int(str(info[names[replica]]["pid"])))
        return pids

    def replica_states(self, component: str) -> dict[int, tuple[bool, bool]]:
        """``{replica: (running, ready)}``: running under supervisord, answering its readiness probe."""
        comp = self.component(component)
        info = self.supervisor.all_info()
        states = {}
        for replica, program in enumerate(program_names(comp)):
            running = info.get(program, {}).get("statename") == "RUNNING"
            ready = running and probe(comp.url(self.cfg, comp.readiness.port, replica), comp.readiness)[0]
            states[replica] = (running, ready)
        return states

    def _autoscaler_process(self) -> psutil.Process | None:
        from labkit.targets.local import autoscaling

        try:
            proc = psutil.Process(int((self.cfg.run_dir / autoscaling.PID_FILE).read_text().strip()))
            # A recycled pid runs something else: only our controller counts.
            if "labkit.targets.local.autoscaling" in " ".join(proc.cmdline()) and proc.is_running():
                return proc
        except (OSError, ValueError, psutil.Error):
            return None
        return None

    def _stop_autoscaler(self) -> None:
        from labkit.targets.local import autoscaling

        proc = self._autoscaler_process()
        if proc is not None:
            progress(f"stopping the autoscaler (pid {proc.pid})")
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
            _, alive = psutil.wait_procs([proc], timeout=self.cfg.ready_timeout + 10)
            for each in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    each.kill()
        (self.cfg.run_dir / autoscaling.PID_FILE).unlink(missing_ok=True)

    # -- internals -----------------------------------------------------------------------

    def _check_binaries(self, comps: Sequence[Component]) -> None:
        for comp in comps:
            if comp.resolve_binary() is None:
                raise MissingBinaryError(comp.binary, comp.package)

    def _write_layer_configs(self, serving: Mapping[str, int] | None = None) -> None:
        # Only the layers brought up: Prometheus must not scrape (and alert on) what was never started.
        active = set(self._active_layers())
        # With the settings `set_env` gave them: a layer may render one (the edge's capacity).
        overrides = self._env_overrides()
        running = [replace(c, env={**c.env, **overrides[c.name]}) if c.name in overrides else c
                   for c in self._scaled_components() if c.layer in active]
        for layer in self.layers:
            if layer.name in active:
                for relative, text in layer.write_configs(self.cfg, running).items():
                    self.labdir.write_file(relative, text)
        if self.cfg.mesh != "off":
            from labkit.targets.local import mesh as local_mesh

            # Each sidecar's certificate and Envoy files, from the mesh's resources in force.
            local_mesh.ensure(self.cfg, running, serving=serving)

    def _active_layers(self) -> list[str]:
        try:
            return [str(name) for name in json.loads(self._layers_file.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def _scaled_components(self) -> list[Component]:
        """The declarations with the replica counts `scale` set (gateway upstreams, scrape targets)."""
        counts = self._replica_overrides()
        return [replace(c, replicas=counts[c.name]) if c.name in counts else c for c in self.components]

    def set_env(self, component: str, changes: Mapping[str, str | None]) -> dict[str, str]:
        comp = self.component(component)
        for name, value in changes.items():
            if not _OTT_SETTING.fullmatch(name):
                raise ConfigError(f"{name!r} is not a service setting",
                                  hint="service settings are OTT_ and capitals, e.g. OTT_PLAYBACK_TTL=5")
            if name in comp.env:
                raise ConfigError(f"{component} gets {name} from the lab (its declaration)",
                                  hint="the lab wires ports, URLs, files and limits itself; set another OTT_* setting")
            if value is not None and ("\n" in value or '"' in value):
                raise ConfigError(f"{name}: a value may not hold a newline or a double quote",
                                  hint="give a plain value, e.g. OTT_PLAYBACK_TTL=5")
        with self.labdir.lock():
            overrides = self._env_overrides()
            mine = {**overrides.get(comp.name, {}), **{k: v for k, v in changes.items() if v is not None}}
            for name in (k for k, v in changes.items() if v is None):
                mine.pop(name, None)
            overrides[comp.name] = mine
            self._env_file.parent.mkdir(parents=True, exist_ok=True)
            self._env_file.write_text(json.dumps({k: v for k, v in overrides.items() if v}, sort_keys=True))
            self._write_layer_configs()
            if self.supervisor.is_running() and self.supervisor.write_config(self._configured_components()):
                self.supervisor.reload()
                self._start(next(c for c in self._scaled_components() if c.name == comp.name))
        return mine

    def set_pop_capacity(self, rps: int | None) -> int | None:
        """The edge's setting :data:`cdn.CAPACITY_SETTING` (``ottlab env edge``): every PoP's nginx.conf renders it.

        Through :meth:`set_env`: the PoPs' configs are written again and the edge restarted with them;
        a PoP :meth:`scale` or the autoscaler adds later renders it too. Checked before anything changes.
        """
        capacity = cdn.capacity_value(rps)
        settings = self.set_env(cdn.EDGE.name, {cdn.CAPACITY_SETTING: None if capacity is None else str(capacity)})
        return cdn.capacity_value(settings.get(cdn.CAPACITY_SETTING))

    def _env_overrides(self) -> dict[str, dict[str, str]]:
        try:
            return {str(c): {str(k): str(v) for k, v in env.items()}
                    for c, env in json.loads(self._env_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _configured_components(self) -> list[Component]:
        """The declarations with the settings `set_env` added: what supervisord runs."""
        overrides = self._env_overrides()
        return [replace(c, env={**c.env, **overrides[c.name]}) if c.name in overrides else c
                for c in self.components]

    def _replica_overrides(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self._replicas_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _reload_configs(self) -> None:
        """Rewrite generated configs and tell the running readers: nginx re-reads on HUP."""
        self._write_layer_configs()
        info = self.supervisor.all_info()
        for comp in self.components:
            if comp.binary == "nginx":
                for program in program_names(comp):
                    if info.get(program, {}).get("statename") == "RUNNING":
                        pid = int(str(info[program]["pid"]))
                        # A reload closes its clients' kept-alive connections (one sending a request just then
                        # gets no answer): an nginx whose configuration did not change since it loaded it (the
                        # gateway's, with the mesh, when catalog scales) is left alone.
                        loaded = self._nginx_loaded(program)
                        now = _nginx_config(pid)
                        if now is None or not loaded.exists() or loaded.read_text() != now:
                            _reload_nginx(self.supervisor, program, pid)
                            self._note_nginx_config(program, pid)
        self._reload_prometheus()

    def _ports_of(self, comp: Component) -> list[int]:
        return [comp.local_port(self.cfg, p.name, i) for p in comp.ports for i in range(comp.replicas)]

    def _running_programs(self) -> dict[str, dict[str, object]]:
        return self.supervisor.all_info() if self.supervisor.is_running() else {}

    def _is_up(self, comp: Component, info: dict[str, dict[str, object]]) -> bool:
        return all(info.get(p, {}).get("statename") == "RUNNING" for p in program_names(comp)[: comp.replicas])

    def _active_programs(self, comp: Component) -> list[str]:
        info = self.supervisor.all_info()
        active = ("RUNNING", "STARTING", "BACKOFF")
        return [p for p in program_names(comp) if info.get(p, {}).get("statename") in active]

    def _start(self, comp: Component, replicas: int | None = None) -> None:
        self._start_all([comp], replicas)

    def _start_all(self, comps: Sequence[Component], replicas: int | None = None) -> None:
        """Start every replica of ``comps`` at once, then wait for each to be ready."""
        wanted = [
            (comp, replica, program)
            for comp in comps
            for replica, program in enumerate(program_names(comp)[: comp.replicas if replicas is None else replicas])
        ]
        started = set()
        for _, _, program in wanted:
            if self.supervisor.info(program)["statename"] != "RUNNING":
                progress(f"starting {program}")
                self.supervisor.start_program(program)
                started.add(program)
        for comp, replica, program in wanted:
            self._wait_ready(comp, program, replica)
            if comp.binary == "nginx" and program in started:
                self._note_nginx_config(program, int(str(self.supervisor.info(program)["pid"])))

    def _nginx_loaded(self, program: str) -> Path:
        """Where the digest of the configuration nginx ``program`` last loaded is kept."""
        return self.cfg.run_dir / f"{program}.loaded-config"

    def _note_nginx_config(self, program: str, master_pid: int) -> None:
        """Remember the configuration this nginx runs (it just started or reloaded): see :meth:`_reload_configs`."""
        loaded = self._nginx_loaded(program)
        if (digest := _nginx_config(master_pid)) is None:
            loaded.unlink(missing_ok=True)
        else:
            loaded.write_text(digest)

    def _wait_ready(self, comp: Component, program: str, replica: int) -> None:
        url = comp.url(self.cfg, comp.readiness.port, replica)
        log = self.cfg.log_dir / f"{program}.log"
        reason = "no probe ran"

        def ready() -> bool:
            nonlocal reason
            answering, reason = probe(url, comp.readiness)
            state = self.supervisor.info(program)["statename"]
            # Ready means answering *and* past supervisord's startsecs, so status agrees.
            if answering and state == "RUNNING":
                return True
            if answering:
                reason = f"answering, but supervisord still reports {state}"
            if state in _DEAD:
                raise ComponentFailedError(comp.name, f"its process is {state}", log_tail(log, 15))
            return False

        try:
            until(ready, self.cfg.ready_timeout, 0.2, f"{program} to be ready at {url}")
        except TimeoutExpired:
            raise ComponentFailedError(comp.name, f"{reason} (waited {self.cfg.ready_timeout:g} s)",
                                       log_tail(log, 15)) from None
        progress(f"  {program} ready at {url}")

    def _status_of(self, comp: Component, info: dict[str, dict[str, object]]) -> ComponentStatus:
        programs = [p for p in program_names(comp) if p in info]
        states = [str(info[p]["statename"]) for p in programs]
        running = [p for p in programs if info[p]["statename"] == "RUNNING"]
        pids = [int(str(info[p]["pid"])) for p in running]
        urls = {p.name: comp.url(self.cfg, p.name) for p in comp.ports}
        if not programs:
            return ComponentStatus(comp.name, comp.layer, "stopped", False, urls, detail="supervisor not running")
        if running:
            healthy_count = 0
            detail = ""
            for replica, program in enumerate(program_names(comp)):
                if program in running:
                    ok, why = probe(comp.url(self.cfg, comp.readiness.port, replica), comp.readiness)
                    healthy_count += ok
                    detail = detail or why
            state = "running"
            healthy = healthy_count == len(running)
        else:
            state = "failed" if "FATAL" in states or "BACKOFF" in states else "stopped"
            if "STARTING" in states:
                state = "starting"
            healthy = False
            detail = str(info[programs[0]].get("description", ""))
        replica_urls = {program: comp.url(self.cfg, "http", replica)
                        for replica, program in enumerate(program_names(comp)) if program in running}
        return ComponentStatus(comp.name, comp.layer, state, healthy, urls, pids, len(running), detail, replica_urls)

    def _reload_prometheus(self) -> None:
        # Prometheus re-reads its scrape targets when a layer was added after it started.
        import httpx

        for comp in self.components:
            if comp.name == "prometheus" and self._is_up(comp, self._running_programs()):
                try:
                    httpx.post(comp.url(self.cfg) + "/-/reload", timeout=10)
                except httpx.HTTPError as exc:
                    progress(f"warning: Prometheus did not reload its configuration: {exc}")

    def _reap_orphans(self, timeout: float = 10.0) -> None:
        """Stop processes this lab started whose supervisor died (killed, OOM, reboot of a kernel).

        They are recognised by this lab directory's unique id in their environment, so a
        process that some other lab or user started is never touched.
        """
        lab_id = self.labdir.lab_id()
        if not lab_id:
            return
        orphans = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("OTTLAB_LAB_ID") == lab_id:
                    orphans.append(proc)
            except (psutil.Error, OSError):
                continue  # gone, or not ours to read: either way not one of our orphans
        orphans += [p for p in self._pidfile_processes() if p.pid not in {o.pid for o in orphans}]
        if not orphans:
            return
        progress("stopping processes left by a dead supervisor: " + ", ".join(
            f"{p.name()} (pid {p.pid})" for p in orphans))
        for proc in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(orphans, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)

    def _pidfile_processes(self) -> list[psutil.Process]:
        """Processes named in our components' pidfiles (in this lab directory) that still run them."""
        found = []
        for comp in self.components:
            for replica in range(comp.max_replicas):
                path = comp.pidfile_path(self.cfg, replica)
                if path is None:
                    continue
                try:
                    proc = psutil.Process(int(Path(path).read_text().strip()))
                    # A recycled pid would run another program: only ours is stopped.
                    if Path(comp.binary).name in proc.name():
                        found.append(proc)
                except (OSError, ValueError, psutil.Error):
                    continue  # no pidfile, or its process is gone
        return found

    def _require_supervisor(self) -> None:
        if not self.supervisor.is_running():
            raise NotRunningError(f"the local platform in {self.cfg.home}")

    def _wait_ports_closed(self, timeout: float = 10.0) -> None:
        all_ports = [p for c in self.components for p in c.local_ports(self.cfg)]
        try:
            until(lambda: not ports.listening(all_ports, self.cfg.host), timeout, 0.2, "the lab's ports to close")
        except TimeoutExpired:
            still = ports.listening(all_ports, self.cfg.host)
            holders = ", ".join(f"{p}: {ports.holder(p) or 'unknown'}" for p in still)
            progress(f"warning: ports still listening after down: {holders}")


def _running_mesh(cfg: LabConfig) -> str:
    """The mesh mode the lab in ``cfg.home`` came up with (ask only while its supervisor runs): ``off`` when
    it recorded none (a lab brought up before the mode was recorded had no mesh)."""
    try:
        mode = (cfg.run_dir / MESH_MODE_FILE).read_text().strip()
    except OSError:
        return "off"
    return mode if mode in MESH_MODES else "off"


def _nginx_config(master_pid: int) -> str | None:
    """A digest of this nginx's configuration directory (``-c``'s) as it is now; None when unknown."""
    try:
        args = psutil.Process(master_pid).cmdline()
        directory = Path(args[args.index("-c") + 1]).parent
        digest = hashlib.sha256()
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    except (psutil.Error, ValueError, IndexError, OSError):
        return None
    return digest.hexdigest()


def _reload_nginx(supervisor: Supervisor, program: str, master_pid: int, timeout: float = 10.0) -> None:
    """HUP nginx and wait until every worker runs the new configuration.

    nginx reloads asynchronously: new workers start, old ones finish their requests and exit.
    Returning before the old workers are gone would let requests meet the old upstreams.
    """
    try:
        master = psutil.Process(master_pid)
        old_workers = {p.pid for p in master.children()}
    except psutil.Error:
        old_workers = set()
    supervisor.signal(program, "HUP")

    def reloaded() -> bool:
        try:
            workers = {p.pid for p in psutil.Process(master_pid).children()}
        except psutil.Error:
            return True  # the master is gone: no worker runs the old configuration
        return bool(workers) and not workers & old_workers

    try:
        until(reloaded, timeout, 0.05, f"{program}'s workers to run the new configuration")
    except TimeoutExpired:
        progress(f"warning: {program} still has workers with the old configuration after {timeout:g} s")
