"""Capacity: CPU and memory per lab component, nginx's connections, the synthetic probes and the scrapes.

Per-process CPU and resident memory from the process exporter (``groupname`` is the component),
connections and requests of every nginx from its nginx exporter (``component``), and the blackbox
exporter's probes of each PoP (a signed playlist, a segment and the key path).
"""

from __future__ import annotations

from typing import Any

from labkit.analysis.dashboards.panel import (
    RATE,
    Query,
    Steps,
    dashboard,
    falling,
    stat,
    timeseries,
    variable,
)

UID = "ottlab-capacity"
TITLE = "Capacity"
CPU = f"sum by (groupname) (rate(namedprocess_namegroup_cpu_seconds_total[{RATE}]))"
MEMORY = 'sum by (groupname) (namedprocess_namegroup_memory_bytes{memtype="resident"})'
PROBE_UP: Steps = [(None, "red"), (1, "green")]


def build() -> dict[str, Any]:
    return dashboard(UID, TITLE, __doc__ or "", [
        variable("pop", "PoP", "probe_success"),
    ], [
        ("Now", [
            stat("CPU, all components", "CPU seconds per second (1 = one core)", "short", Query(f"sum({CPU})")),
            stat("Memory, all components", "Resident memory", "bytes", Query(f"sum({MEMORY})")),
            stat("nginx connections", "Connections open on every nginx", "short",
                 Query("sum(nginx_connections_active)")),
            stat("Probes failing", "Probes of the PoPs that fail now", "short",
                 Query('count(probe_success{pop=~"$pop"} == 0) or vector(0)'),
                 steps=[(None, "green"), (1, "red")]),
            stat("Probe success", "Share of the PoP probes that succeed", "percentunit",
                 Query('avg(probe_success{pop=~"$pop"})'), steps=falling(0.99, 1)),
            stat("Scrape targets up", "Targets Prometheus scraped successfully / all", "percentunit",
                 Query("sum(up) / count(up)"), steps=falling(0.9, 1)),
        ]),
        ("Processes", [
            timeseries("CPU per component", "CPU seconds per second (1 = one core)", "short",
                       Query(CPU, "{{groupname}}"), minimum=0),
            timeseries("Memory per component", "Resident memory", "bytes", Query(MEMORY, "{{groupname}}"), minimum=0),
        ]),
        ("nginx", [
            timeseries("Connections per nginx", "Active connections (reading, writing, waiting)", "short",
                       Query("sum by (component) (nginx_connections_active)", "{{component}}"), minimum=0),
            timeseries("Requests per nginx", "Requests handled per second", "reqps",
                       Query(f"sum by (component) (rate(nginx_http_requests_total[{RATE}]))", "{{component}}"),
                       minimum=0),
        ]),
        ("Probes and scrapes", [
            timeseries("Probe success per PoP", "1 when the probe got its answer", "short",
                       Query('min by (pop, probe) (probe_success{pop=~"$pop"})', "{{pop}} {{probe}}"),
                       steps=PROBE_UP, minimum=0),
            timeseries("Probe duration per PoP", "Time the whole probe took", "s",
                       Query('max by (pop, probe) (probe_duration_seconds{pop=~"$pop"})', "{{pop}} {{probe}}"),
                       minimum=0),
            timeseries("Scrape targets up per job", "Targets up / targets, per Prometheus job", "percentunit",
                       Query("sum by (job) (up) / count by (job) (up)", "{{job}}"), steps=falling(0.9, 1), minimum=0),
        ]),
    ])
