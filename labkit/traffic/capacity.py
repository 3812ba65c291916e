"""The capacity ramp: an audience played in steps of growing size, measured step by step.

Each step is one run of the viewer simulator (:mod:`labkit.traffic.audience`): ``viewers``
viewers arrive within ``arrivals_s`` seconds and play for ``step_seconds``. Around each step the
target's CPU seconds per component are read (:meth:`~labkit.targets.base.Target.cpu_seconds`),
so the step's row says how many cores each component used; the simulator's own CPU is the
:data:`~labkit.analysis.capacity.GENERATOR` column (it runs on the same machine). The rows and
what to read from them are :mod:`labkit.analysis.capacity`'s::

    ramp = capacity.ramp(target, "lab-clock", steps=[25, 50, 100, 200], step_seconds=15)
    ramp.steps, ramp.cpu            # one row per step
    ramp.table()                    # knee, viewers per core, Gbit/s per core, what saturated

Bounded: the largest step is checked against the sockets this machine can open before the
first step starts (:func:`labkit.traffic.loadtest.check_sockets`), each step ends after
``step_seconds`` (the simulator's own bound), and a ramp may stop at the first step past the
knee (``stop_after_knee``), as there is nothing more to learn by pushing further.

**With an autoscaler.** A real audience grows over minutes, and an HPA reacts within a sync
period (15 s); a lab's steps last seconds. ``settle`` runs after each step but the last: with
:func:`autoscaler_synced` the next step waits until the HPA's controller has decided once since
the step ended, so what it made of the step (more PoPs, license's list following) is in place
when the next crowd arrives. ``ramp.replicas`` says how many replicas each component ran at each
step, and how many PoPs the step's viewers were served by::

    ramp = capacity.ramp(target, "lab-clock", [25, 50, 100], 12,
                         settle=capacity.autoscaler_synced(target, "edge", timeout=60))
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from labkit.analysis import capacity as analysis
from labkit.core.console import progress
from labkit.core.errors import ConfigError
from labkit.core.wait import until
from labkit.targets.base import Target
from labkit.traffic import audience, loadtest

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

MAX_STEPS = 20


@dataclass
class Ramp:
    """A finished ramp: ``steps`` (:data:`~labkit.analysis.capacity.STEP_COLUMNS`), ``cpu`` and ``peak``.

    ``cpu``: the cores each component used on average over each step; ``peak``: the most over any
    second of it. Both have the load generator's and the rest of the machine's columns too.
    """

    steps: pd.DataFrame
    cpu: pd.DataFrame
    peak: pd.DataFrame
    cores: int
    segment_s: float
    shares: dict[str, float]
    slo: analysis.Slo = analysis.SLO
    # One row per step: the replicas each component ran when it started, and "pops_used": the PoPs
    # that served its viewers' media.
    replicas: pd.DataFrame | None = None

    def knee(self) -> analysis.Knee | None:
        return analysis.knee(self.steps, self.slo, segment_s=self.segment_s)

    def table(self) -> dict[str, Any]:
        return analysis.table(self.steps, self.cpu, self.peak, cores=self.cores, slo=self.slo, segment_s=self.segment_s,
                              shares=self.shares)

    def curve(self, heading: str = "Capacity curve") -> Figure:
        return analysis.curve(self.steps, self.cpu, self.knee(), self.slo, heading=heading)


def doubling(first: int, last: int) -> list[int]:
    """Steps from ``first`` viewers doubling up to ``last`` (included when it is on the way).

    >>> doubling(100, 1000)
    [100, 200, 400, 800]
    """
    if isinstance(first, bool) or not isinstance(first, int) or first < 1 or not isinstance(last, int) or last < first:
        raise ConfigError(f"a ramp from {first!r} to {last!r} viewers: both whole numbers, 1 <= first <= last",
                          hint="e.g. from 100 to 3200")
    steps = [first]
    while steps[-1] * 2 <= last:
        steps.append(steps[-1] * 2)
    return steps


def _check_steps(steps: Sequence[int], step_seconds: float, arrivals_s: float) -> None:
    if not steps or len(steps) > MAX_STEPS:
        raise ConfigError(f"a ramp has 1 to {MAX_STEPS} steps, got {len(steps)}", hint="e.g. steps=[25, 50, 100]")
    for n in steps:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"a step of {n!r} viewers: each step is a whole number of viewers, at least 1",
                              hint="e.g. steps=[25, 50, 100]")
    if list(steps) != sorted(set(steps)):
        raise ConfigError(f"steps {list(steps)} must grow: each larger than the one before",
                          hint="e.g. steps=[25, 50, 100]")
    if n > audience.MAX_VIEWERS:
        raise ConfigError(f"a step of {n} viewers is above the simulator's bound of {audience.MAX_VIEWERS}")
    if not (isinstance(step_seconds, int | float) and math.isfinite(step_seconds) and 2 <= step_seconds <= 600):
        raise ConfigError(f"step_seconds={step_seconds!r} must be from 2 to 600 seconds", hint="e.g. 15")
    if not (isinstance(arrivals_s, int | float) and 0 <= arrivals_s < step_seconds):
        raise ConfigError(f"arrivals_s={arrivals_s!r} must be at least 0 and less than step_seconds ({step_seconds})")


def ramp(target: Target, title: str, steps: Sequence[int], step_seconds: float, *, arrivals_s: float = 2.0,
         max_buffer_s: float = 8.0, segment_s: float = 4.0, abr: str = "ewma", seed: int = 0,
         stop_after_knee: bool = True, slo: analysis.Slo = analysis.SLO,
         budget: loadtest.SocketBudget | None = None, settle: Callable[[], None] | None = None) -> Ramp:
    """Play ``steps`` audiences of ``title`` one after the other, each for ``step_seconds``; the :class:`Ramp`.

    Viewers of a step arrive within ``arrivals_s`` (a crowd at kick-off) and keep at most
    ``max_buffer_s`` buffered, so after their start they fetch one segment per segment duration, as
    real players do. Bad input (steps that do not grow, a step larger than the machine can open
    sockets for) raises :class:`ConfigError` before any viewer starts. ``settle`` is called after
    every step that another follows (e.g. :func:`autoscaler_synced`).
    """
    import pandas as pd

    _check_steps(steps, step_seconds, arrivals_s)
    loadtest.check_sockets(max(steps), per_viewer=audience.VIEWER_CONNECTIONS, budget=budget)
    gateway = target.endpoint("gateway")
    shares = target.cpu_shares()
    rows: list[dict[str, Any]] = []
    cpu_rows: list[dict[str, float]] = []
    meter = target.cpu_meter()
    peak_rows: list[dict[str, float]] = []
    replica_rows: list[dict[str, int]] = []
    for i, viewers in enumerate(steps):
        if i and settle is not None:
            settle()
        replicas = {s.name: s.replicas for s in target.status()}
        with _Sampler(meter) as sampler:
            run = audience.run(gateway, title, viewers, step_seconds, arrivals_s=arrivals_s,
                               max_buffer_s=max_buffer_s, abr=abr, seed=seed + i, beacons=False)
        cores = sampler.mean()
        cpu_rows.append(cores)
        peak_rows.append(analysis.peak_cores(sampler.samples))
        row = analysis.step_row(viewers, step_seconds, run.sessions, run.requests, cores[analysis.GENERATOR])
        rows.append(row)
        served = run.requests[run.requests["kind"].isin(("master", "playlist", "init", "segment"))]
        replica_rows.append({**replicas, "pops_used": int(served["pop"].nunique())})
        platform = sum(v for k, v in cores.items() if k not in analysis.NOT_PLATFORM)
        progress(f"step {i + 1}/{len(steps)}: {viewers} viewers, startup p95 {row['startup_p95_s']:.2f} s, "
                 f"rebuffering {row['rebuffering_ratio']:.2%}, {row['egress_gbps']:.3f} Gbit/s; cores: platform "
                 f"{platform:.2f}, simulator {cores[analysis.GENERATOR]:.2f} (peak "
                 f"{peak_rows[-1][analysis.GENERATOR]:.2f}), rest of the machine {cores[analysis.OTHER]:.2f}")
        if stop_after_knee and slo.breaches(row, segment_s):
            break
    frame = pd.DataFrame(rows, columns=analysis.STEP_COLUMNS)
    cpu, peak = pd.DataFrame(cpu_rows).fillna(0.0), pd.DataFrame(peak_rows).fillna(0.0)
    busy = peak.drop(columns=list(analysis.NOT_PLATFORM)).max()
    # Components that never used a hundredth of a core only clutter the table.
    keep = [*busy[busy >= 0.01].index, *analysis.NOT_PLATFORM]
    return Ramp(frame, cpu[keep], peak[keep], os.cpu_count() or 1, segment_s, shares, slo,
                pd.DataFrame(replica_rows).set_index(frame["viewers"]))


def autoscaler_synced(target: Target, hpa: str, timeout: float,
                      clock: Callable[[], float] = time.time) -> Callable[[], None]:
    """A ramp's ``settle``: wait until ``hpa``'s controller has decided once since the call (its reaction in place).

    The local controller records every sync (``last``, its wall time), after it scaled. Bounded by
    ``timeout`` seconds (more than one sync period): a controller that stopped is a
    :class:`~labkit.core.errors.TimeoutExpired`, not a ramp that silently goes on without it. Then
    :meth:`~labkit.targets.base.Target.follow_autoscaler`: the next step's viewers get the PoPs the
    HPA added (on kube its controller scales the edge without license's list).
    """
    if not any(a.hpa == hpa for a in target.autoscale_status()):
        raise ConfigError(f"no HorizontalPodAutoscaler named {hpa!r}",
                          hint="one of: " + ", ".join(a.hpa for a in target.autoscale_status()))

    def settle() -> None:
        since = clock()

        def decided() -> bool:
            status = next(a for a in target.autoscale_status() if a.hpa == hpa)
            return any(float(d.get("last") or d.get("at") or 0) > since for d in status.decisions)

        until(decided, timeout, 0.5, f"the {hpa} HPA's next sync")
        target.follow_autoscaler()

    return settle


class _Sampler:
    """Reads the platform's CPU, this process' (the simulator) and the machine's every ``interval`` s meanwhile.

    A meter whose readings trail the clock (its ``lag_s``: a Prometheus meter reads as of that long
    ago, :class:`labkit.clients.counters.CounterMeter`) is read on after the step until a reading
    stands for its end. Its readings are placed at the times they stand for and interpolated at the
    sampler's own, so each of ``samples`` pairs the platform's CPU with the simulator's and the
    machine's at one moment, from the step's start to its end (psutil's readings have no lag).
    """

    def __init__(self, meter: Callable[[], dict[str, float]], interval: float = 0.5) -> None:
        self.meter = meter
        self.interval = interval
        self.lag = float(getattr(meter, "lag_s", 0.0))
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._platform: list[tuple[float, dict[str, float]]] = []  # the time a reading stands for, the reading
        self._local: list[tuple[float, float, float]] = []  # time, the simulator's CPU seconds, the machine's busy
        self._end: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capacity-cpu-sampler", daemon=True)

    def _sample(self) -> None:
        now = time.monotonic()
        if self._end is None:
            machine = psutil.cpu_times()
            busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
            self._local.append((now, time.process_time(), busy))
        self._platform.append((now - self.lag, self.meter()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):  # the sampler's pace, not a synchronisation
            self._sample()

    def __enter__(self) -> _Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lag:
            self._sample()
            end = self._end = self._local[-1][0]
            until(lambda: max(t for t, _ in self._platform) >= end, self.lag + 10 * self.interval + 10,
                  self.interval, f"a CPU reading that stands for the step's end ({self.lag:g} s behind)")
        self._stop.set()
        self._thread.join(timeout=5 * self.interval + 5)
        if not self.lag:
            self._sample()
        self._align()

    def _align(self) -> None:
        from labkit.clients.counters import value_at

        readings = sorted(self._platform, key=lambda r: r[0])
        names = list(dict.fromkeys(name for _, used in readings for name in used))
        series = {name: [(t, used[name]) for t, used in readings if name in used] for name in names}
        for t, generator, busy in self._local:
            used = {name: value_at(series[name], t) for name in names}
            used[analysis.GENERATOR] = generator
            used[analysis.OTHER] = busy - sum(used.values())
            self.samples.append((t, used))

    def mean(self) -> dict[str, float]:
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        return {name: max(0.0, last.get(name, 0.0) - used) / (t1 - t0) for name, used in first.items()}
