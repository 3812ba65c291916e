"""Counters from Prometheus, per component: CPU seconds as an exporter counts them, for the capacity ramp.

A counter in Prometheus is as old as its last scrape (5 s on both targets; a kubelet's cAdvisor
refreshes its own every 10-15 s). Read twice a second, the last sample would make a step of load
start and end up to one scrape late, and carrying it forward at its last rate overshoots every
burst. So :class:`CounterMeter` reads each series' raw samples and interpolates them linearly at
``now - lag_s``, a time every series has been scraped past: its readings trail the clock by
``lag_s`` (:attr:`CounterMeter.lag_s`), which a sampler that knows it takes into account (the
capacity ramp's waits that long after a step, then reads each step's CPU at its real start and
end). Per component, it sums the series and keeps the total of one that went away (a pod deleted,
a process exited), and a counter that restarted counts on, so a total never falls::

    prom = Prometheus(target.endpoint("prometheus"))
    meter = counters.process_meter(prom)      # job `process`: the process exporter's groups
    meter()                                   # {"edge": 12.3, ...}, as of meter.lag_s seconds ago

The kube target's :meth:`~labkit.targets.base.Target.cpu_meter` is
:func:`labkit.targets.kube.usage.cpu_meter` (cAdvisor, job ``cadvisor``); the local target keeps
psutil (no lag, a reading per 0.5 s: its peaks are over 1 s, the exporter's over a scrape).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from labkit.clients.prometheus import Prometheus

# The process exporter's CPU counter (labkit.platform.layers.monitoring.processes), one series per
# group (a component) and mode (user, system).
PROCESS_CPU = "namedprocess_namegroup_cpu_seconds_total"
# The samples a reading asks for: enough to hold a few scrapes before ``now - lag_s``.
WINDOW_S = 60.0
# The process exporter is scraped every 5 s (labkit.platform.layers.monitoring.SCRAPE_INTERVAL): a
# reading 6 s back falls between two scrapes.
PROCESS_LAG_S = 6.0


def value_at(samples: Sequence[tuple[float, float]], at: float) -> float:
    """The counter of ``samples`` (time, value; in time order) at ``at``: interpolated between the two around it.

    Before the first sample, the first; after the last, the last (no guess at what was not scraped).

    >>> value_at([(10.0, 1.0), (15.0, 2.0)], 12.5)
    1.5
    """
    times = [t for t, _ in samples]
    i = bisect.bisect_right(times, at)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 + (v1 - v0) * (at - t0) / (t1 - t0)


class CounterMeter:
    """A reader of cumulative counters per component, as of :attr:`lag_s` seconds ago.

    ``selector`` names the counters; ``component`` names the component of a series (its labels),
    or None for one that is not the lab's (skipped). Each series' samples are kept as they arrive,
    a fall (a restart) adding the value before it, as Prometheus' ``increase`` does: a total never
    falls, and a series that disappears keeps its last value.
    """

    def __init__(self, prometheus: Prometheus, selector: str, component: Callable[[Mapping[str, str]], str | None],
                 *, lag_s: float, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.prometheus = prometheus
        self.selector = selector
        self.component = component
        self.lag_s = lag_s
        self.window_s = window_s
        self.clock = clock
        # Per series: its component, its samples so far (time, value counted on across restarts), the offset.
        self._names: dict[tuple[tuple[str, str], ...], str] = {}
        self._history: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        self._offset: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, float]:
        at = self.clock() - self.lag_s
        found = self.prometheus.samples(self.selector, self.window_s)
        with self._lock:
            for labels, samples in found:
                key = tuple(sorted(labels.items()))
                if key not in self._names:
                    name = self.component(labels)
                    if name is None or not samples:
                        continue
                    self._names[key], self._history[key], self._offset[key] = name, [], 0.0
                self._add(key, samples)
            used: dict[str, float] = {}
            for key, name in self._names.items():
                history = self._history[key]
                # Older samples than the one before ``at`` are never read again.
                del history[:max(0, bisect.bisect_right([t for t, _ in history], at) - 1)]
                used[name] = used.get(name, 0.0) + value_at(history, at)
            return used

    def _add(self, key: tuple[tuple[str, str], ...], samples: Sequence[tuple[float, float]]) -> None:
        history = self._history[key]
        newest = history[-1][0] if history else float("-inf")
        raw_last = history[-1][1] - self._offset[key] if history else None
        for t, raw in samples:
            if t <= newest:
                continue
            if raw_last is not None and raw < raw_last:
                self._offset[key] += raw_last
            history.append((t, raw + self._offset[key]))
            newest, raw_last = t, raw


def process_meter(prometheus: Prometheus, components: Sequence[str] | None = None, *, job: str = "process",
                  lag_s: float = PROCESS_LAG_S) -> CounterMeter:
    """CPU seconds per component from the process exporter (job ``process``): its groups are the components.

    ``components`` limits it to those names (None: every group).
    """
    keep = None if components is None else set(components)
    return CounterMeter(prometheus, f'{PROCESS_CPU}{{job="{job}"}}',
                        lambda labels: labels["groupname"] if keep is None or labels["groupname"] in keep else None,
                        lag_s=lag_s)
