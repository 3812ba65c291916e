"""The local target's HPA controller: the lab's HorizontalPodAutoscaler objects, acted on by labkit.

Every sync period (15 s, like kube-controller-manager) it reads, for each HPA of
``k8s/base/autoscaling``, its metrics per replica, asks :class:`labkit.platform.autoscaler.Autoscaler`
for the replicas and scales the component as ``ottlab scale`` does (the gateway's upstreams,
license's PoP list and Prometheus' targets follow). Its metrics:

- ``cpu`` (Resource, Utilization): the CPU seconds of each replica's processes (and its followers',
  a pod's other containers) over the last sync, divided by the pod's request in ``k8s/base`` (what
  metrics-server and the kube HPA divide by). A replica seen for the first time has no sample yet
  (missing); a replica that does not answer its readiness probe is not ready.
- a Pods metric: the prometheus-adapter rule of the same name (``k8s/addons/values/prometheus-adapter.yaml``)
  rendered for the local Prometheus, one value per scrape target (replica: the instance is the
  port Prometheus scrapes, the component's ``metrics_port``; with the mesh its sidecar's health port).

It runs as its own process (``python -m labkit.targets.local.autoscaling``), started and stopped by
:meth:`LocalTarget.autoscale`, carrying the lab's id so that ``ottlab down`` stops it with the lab;
it also ends by itself as soon as the lab's supervisor is gone. Its decisions go to
``run/autoscaler.json``, which :meth:`LocalTarget.autoscale_status` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from labkit.clients.prometheus import Prometheus
from labkit.core.errors import ConfigError, LabError, PrometheusError
from labkit.core.wait import until
from labkit.platform import hpa as hpa_mod
from labkit.platform.autoscaler import Autoscaler, Decision, PodSample
from labkit.platform.component import Component
from labkit.platform.hpa import Hpa, MetricTarget

if TYPE_CHECKING:
    from labkit.targets.local.target import LocalTarget

STATE_FILE = "autoscaler.json"
PID_FILE = "autoscaler.pid"
# Decisions kept per HPA in the state file (the newest last).
KEEP_DECISIONS = 20
# How long a check waits for Prometheus to know a metric (a lab just up has scraped once or twice).
METRIC_WAIT = 20.0


@dataclass
class _CpuMark:
    at: float
    seconds: float
    pids: tuple[int, ...]


@dataclass
class Controller:
    """The HPAs of the local lab and their algorithm's state; :meth:`sync` is one pass over all of them."""

    target: LocalTarget
    hpas: Sequence[Hpa]
    prometheus: Prometheus
    clock: Callable[[], float] = time.monotonic
    tolerance: float = hpa_mod.DEFAULT_TOLERANCE
    scalers: dict[str, Autoscaler] = field(default_factory=dict)
    decisions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _cpu: dict[tuple[str, int], _CpuMark] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for h in self.hpas:
            self.scalers[h.name] = Autoscaler(h, self.clock, self.tolerance)
        self.rules = hpa_mod.adapter_rules()
        self.requests = {h.target: hpa_mod.cpu_request(h.target) for h in self.hpas if any(m.is_cpu for m in h.metrics)}

    def sync(self) -> list[Decision]:
        """Decide for every HPA and scale where the decision differs from the current count."""
        made = []
        for h in self.hpas:
            comp = self.target.component(h.target)
            current = self.target.replicas(comp.name)
            samples = {m.name: self.samples(comp, m, current) for m in h.metrics}
            decision = self.scalers[h.name].decide(current, samples)
            outcome = ""
            if decision.desired != current:
                try:
                    self.target.scale(comp.name, decision.desired)
                    self.scalers[h.name].scaled(current, decision.desired)
                except LabError as exc:
                    outcome = f"scaling failed: {exc.message}"
            made.append(decision)
            self.record(h.name, {**decision.as_dict(), "wall": time.time(), "outcome": outcome})
        return made

    def record(self, hpa: str, record: dict[str, Any]) -> None:
        """Keep a decision; one repeating the last (same counts and reasons) only refreshes it.

        A quiet HPA decides the same thing every sync: the history keeps what changed, ``since``
        when, and ``wall`` the last sync that decided it.
        """
        history = self.decisions.setdefault(hpa, [])
        key = ("current", "desired", "reason", "rescale_reason", "outcome")
        if history and all(history[-1].get(k) == record.get(k) for k in key):
            history[-1] = {**record, "since": history[-1].get("since", history[-1]["wall"])}
        else:
            history.append({**record, "since": record["wall"]})
        del history[:-KEEP_DECISIONS]

    # -- metrics -----------------------------------------------------------------------------

    def samples(self, comp: Component, metric: MetricTarget, current: int) -> list[PodSample]:
        status = self.target.replica_states(comp.name)
        values = self._cpu_utilization(comp, current) if metric.is_cpu else self.pods_metric(comp, metric.name)
        return [PodSample(f"{comp.name}-{i}", values.get(i), ready=status.get(i, (False, False))[1],
                          running=status.get(i, (False, False))[0]) for i in range(current)]

    def pods_metric(self, comp: Component, name: str) -> dict[int, float]:
        """The Pods metric ``name`` per replica index, from the adapter rule's query on the local Prometheus."""
        rule = self.rules[name]
        by_instance: dict[str, int] = {}
        jobs = []
        for each in (comp, *self.target.followers(comp.name)):
            if each.scrape_job is not None:
                jobs.append(each.scrape_job)
                # The port Prometheus scrapes: with the mesh a service's metrics come through its
                # sidecar's health port, not its own port (there only mTLS is taken).
                for i in range(each.max_replicas):
                    port = each.local_port(self.target.cfg, each.metrics_port, i)
                    by_instance[f"{self.target.cfg.host}:{port}"] = i
        query = hpa_mod.metric_query(rule, f'job=~"{"|".join(jobs)}"', "instance")
        frame = self.prometheus.query(query)
        values: dict[int, float] = {}
        for _, row in frame.iterrows():
            replica = by_instance.get(str(row.get("instance", "")))
            if replica is not None:
                values[replica] = float(row["value"])
        return values

    def _cpu_utilization(self, comp: Component, current: int) -> dict[int, float]:
        """Percent of the pod's CPU request each replica used since the last sync; none on first sight."""
        now = self.clock()
        values: dict[int, float] = {}
        for replica in range(current):
            pids = tuple(self.target.replica_pids(comp.name, replica))
            if not pids:
                self._cpu.pop((comp.name, replica), None)
                continue
            seconds = _cpu_seconds(pids)
            mark = self._cpu.get((comp.name, replica))
            self._cpu[(comp.name, replica)] = _CpuMark(now, seconds, pids)
            if mark is None or mark.pids != pids or now <= mark.at:
                continue  # a new process: no window to measure yet
            cores = max(0.0, seconds - mark.seconds) / (now - mark.at)
            values[replica] = cores / self.requests[comp.name] * 100
        return values

    # -- state -------------------------------------------------------------------------------

    def write_state(self, path: Path, *, running: bool) -> None:
        state = {
            "pid": os.getpid(), "running": running, "updated": time.time(),
            "hpas": {h.name: {"target": h.target, "min": h.min_replicas, "max": h.max_replicas,
                              "metrics": [m.describe() for m in h.metrics],
                              "targets": {m.name: m.target for m in h.metrics},
                              "decisions": self.decisions.get(h.name, [])} for h in self.hpas},
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` and their children (nginx's workers)."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue  # gone between the listing and the read: it uses no CPU any more
    return total


def check(target: LocalTarget, hpas: Sequence[Hpa], prometheus: Prometheus, *, timeout: float = METRIC_WAIT,
          rules: Mapping[str, hpa_mod.AdapterRule] | None = None) -> None:
    """Refuse what cannot work, before anything starts: unknown components, bounds, unknown metrics.

    A custom metric must have a prometheus-adapter rule, and Prometheus must know its series (the
    metadata its targets expose, or samples): a metric no target exposes would leave the HPA blind.
    """
    hpa_mod.check(hpas, target.components)
    rules = hpa_mod.adapter_rules() if rules is None else rules
    for h in hpas:
        for m in h.metrics:
            if m.is_cpu:
                hpa_mod.cpu_request(h.target)
                continue
            rule = rules.get(m.name)
            if rule is None:
                raise ConfigError(
                    f"HorizontalPodAutoscaler {h.name}: no prometheus-adapter rule defines the metric {m.name!r}",
                    hint=f"add a rule naming it to {hpa_mod.adapter_values_file()} (rules.custom, name.as), "
                         f"or use one of: {', '.join(sorted(rules)) or '(none)'}")
            _require_series(prometheus, h, rule.series, timeout)


def _require_series(prometheus: Prometheus, h: Hpa, series: str, timeout: float) -> None:
    def known() -> bool:
        return series in prometheus.metric_names()

    try:
        until(known, timeout, 1.0, f"Prometheus to know {series}")
    except LabError:
        raise ConfigError(
            f"HorizontalPodAutoscaler {h.name}: Prometheus at {prometheus.url} has no metric {series!r}",
            hint=f"is {h.target}'s layer up and scraped? (ottlab status; its adapter rule reads {series})",
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The controller process: sync every ``--period`` seconds until stopped or the lab is gone."""
    from labkit.targets import make_target
    from labkit.targets.local.target import LocalTarget

    parser = argparse.ArgumentParser(prog="python -m labkit.targets.local.autoscaling")
    parser.add_argument("--period", type=float, default=hpa_mod.DEFAULT_SYNC_PERIOD)
    parser.add_argument("--tolerance", type=float, default=hpa_mod.DEFAULT_TOLERANCE)
    parser.add_argument("--scale-down-window", type=float, default=None,
                        help="seconds; overrides every HPA's scaleDown.stabilizationWindowSeconds")
    parser.add_argument("--metric-target", action="append", default=[], metavar="METRIC=VALUE",
                        help="replace the target of METRIC in every HPA (repeatable)")
    parser.add_argument("--hpa-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    metric_targets = {name: float(value) for name, value in (t.split("=", 1) for t in args.metric_target)}
    target = make_target(target="local")
    assert isinstance(target, LocalTarget)
    hpas = target.autoscalers(args.hpa_dir, args.scale_down_window, metric_targets)
    prometheus = Prometheus(target.endpoint("prometheus"))
    controller = Controller(target, hpas, prometheus, tolerance=args.tolerance)
    state = target.cfg.run_dir / STATE_FILE
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller.write_state(state, running=True)
    while not stop.is_set() and target.supervisor.is_running():
        try:
            controller.sync()
        except (PrometheusError, LabError) as exc:
            # A sync that could not read or act is a decision too: shown by `ottlab autoscale status`.
            for h in hpas:
                controller.record(h.name, {"wall": time.time(), "hpa": h.name, "target": h.target,
                                           "reason": "FailedSync", "rescale_reason": exc.message, "outcome": "",
                                           "current": None, "desired": None, "metrics": []})
        controller.write_state(state, running=True)
        stop.wait(args.period)  # the sync period, ended early by SIGTERM
    controller.write_state(state, running=False)
    with contextlib.suppress(OSError):
        (target.cfg.run_dir / PID_FILE).unlink()
    return 0


def adjusted(hpas: Sequence[Hpa], scale_down_window: float | None = None,
             metric_targets: Mapping[str, float] | None = None) -> list[Hpa]:
    """``hpas`` with every scaleDown window set to ``scale_down_window`` seconds and the targets of the
    metrics named in ``metric_targets`` replaced (a lesson's shortened wait, a small machine's load)."""
    from dataclasses import replace

    adjusted = []
    for h in hpas:
        if scale_down_window is not None:
            h = replace(h, scale_down=replace(h.scale_down, stabilization_window_seconds=int(scale_down_window)))
        if metric_targets:
            h = replace(h, metrics=tuple(replace(m, target=float(metric_targets.get(m.name, m.target)))
                                         for m in h.metrics))
        adjusted.append(h)
    return adjusted


def read_state(path: Path) -> Mapping[str, Any]:
    try:
        state: Mapping[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state


if __name__ == "__main__":
    raise SystemExit(main())
