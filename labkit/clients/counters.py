"""Counters from Prometheus read as of now: CPU seconds per component, as an exporter counts them.

A counter in Prometheus is as old as its last scrape (5 s on both targets; a kubelet's cAdvisor
refreshes its own every 10-15 s). Read twice a second and subtracted, raw values would make a step
of load start and end up to one scrape late. :func:`extrapolated` carries each series from its
last sample to the query's time at its last rate (``irate``); :class:`CounterMeter` sums the
series per component and keeps the total of a series that went away (a pod deleted, a process
exited), so the total never falls while a meter is in use::

    prom = Prometheus(target.endpoint("prometheus"))
    meter = counters.process_meter(prom)      # job `process`: the process exporter's groups
    before = meter(); ...; after = meter()    # {"edge": 12.3, "gateway": 4.5, ...}

The capacity ramp takes such a reader from :meth:`labkit.targets.base.Target.cpu_meter`; the
kube target's is :func:`labkit.targets.kube.usage.cpu_meter` (cAdvisor, job ``cadvisor``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from labkit.clients.prometheus import Prometheus

# The process exporter's CPU counter (labkit.platform.layers.monitoring.processes), one series per
# group (a component) and mode (user, system).
PROCESS_CPU = "namedprocess_namegroup_cpu_seconds_total"
# Over this window irate finds a counter's last two samples (a few scrapes).
RATE_WINDOW = "1m"
# A series below this share of its last value restarted (a container, a process) and counts again from 0;
# a smaller fall is the extrapolation overshooting a slowdown, and the total holds until the counter catches up.
RESTART_SHARE = 0.5


def extrapolated(selector: str, by: Sequence[str], window: str = RATE_WINDOW) -> str:
    """PromQL: the counters of ``selector`` as of the query's time, summed ``by`` these labels.

    Each series is its last sample plus its last rate times the sample's age; a series with one
    sample so far (no rate yet) is its sample.

    >>> extrapolated('x{a="1"}', ["a"])
    'sum by (a) ((x{a="1"} + irate(x{a="1"}[1m]) * (time() - timestamp(x{a="1"}))) or x{a="1"})'
    """
    now = f"({selector} + irate({selector}[{window}]) * (time() - timestamp({selector}))) or {selector}"
    return f"sum by ({', '.join(by)}) ({now})"


class CounterMeter:
    """A reader of cumulative counters per component: ``query`` answers one series per key of ``by`` labels.

    ``component`` names the component of a series (its labels), or None for one that is not the
    lab's (skipped). Each key's total never falls: a key that disappears keeps its last value, one
    that fell below :data:`RESTART_SHARE` of it restarted and counts on from that value.
    """

    def __init__(self, prometheus: Prometheus, query: str, by: Sequence[str],
                 component: Callable[[Mapping[str, str]], str | None]) -> None:
        self.prometheus = prometheus
        self.query = query
        self.by = tuple(by)
        self.component = component
        self._last: dict[tuple[str, ...], float] = {}
        self._base: dict[tuple[str, ...], float] = {}
        self._names: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, float]:
        frame = self.prometheus.query(self.query)
        with self._lock:
            for labels in frame.to_dict("records"):
                key = tuple(str(labels.get(name, "")) for name in self.by)
                value = float(labels["value"])
                last = self._last.get(key)
                if last is None:
                    name = self.component({k: str(v) for k, v in labels.items() if k in self.by})
                    if name is None:
                        continue
                    self._names[key] = name
                elif value < last * RESTART_SHARE:
                    self._base[key] = self._base.get(key, 0.0) + last
                else:
                    value = max(value, last)
                self._last[key] = value
            used: dict[str, float] = {}
            for key, name in self._names.items():
                used[name] = used.get(name, 0.0) + self._base.get(key, 0.0) + self._last[key]
            return used


def process_meter(prometheus: Prometheus, components: Sequence[str] | None = None,
                  job: str = "process") -> CounterMeter:
    """CPU seconds per component from the process exporter (job ``process``): its groups are the components.

    ``components`` limits it to those names (None: every group).
    """
    keep = None if components is None else set(components)
    query = extrapolated(f'{PROCESS_CPU}{{job="{job}"}}', ["groupname"])
    return CounterMeter(prometheus, query, ["groupname"],
                        lambda labels: labels["groupname"] if keep is None or labels["groupname"] in keep else None)
