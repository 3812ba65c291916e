"""CMCD at the edge: what the players' Common Media Client Data (CTA-5004) tells each PoP.

Every request of the lab's players carries CMCD; each PoP's exporter keeps the live sessions'
last values (``ott_edge_cmcd_session_*``, ``content`` is the CMCD cid: the title). Buffer
starvation share (``bs``), buffer length (``bl``) and throughput headroom ``1 − mtp/br`` (above 0
the player downloads slower than the rung it plays: its buffer drains) per PoP: a server-side view
of rebuffering without any beacon.
"""

from __future__ import annotations

from typing import Any

from labkit.analysis.dashboards.panel import (
    RATE,
    Query,
    dashboard,
    falling,
    rising,
    stat,
    timeseries,
    variable,
)

UID = "ottlab-cmcd"
TITLE = "CMCD at the edge"
SESSION = '{pop=~"$pop", content=~"$title"}'
STARVED = f"sum by (pop) (rate(ott_edge_cmcd_session_buffer_starvation_total{SESSION}[{RATE}]))"
CARRIED = f"sum by (pop) (rate(ott_edge_cmcd_session_requests_total{SESSION}[{RATE}]))"
# Per session 1 − mtp/br, then its mean per PoP: > 0 downloads slower than it plays.
DRAIN = (f"avg by (pop) (1 - ott_edge_cmcd_session_throughput_kbps{SESSION}"
         f" / ott_edge_cmcd_session_bitrate_kbps{SESSION})")
BUFFER = f"ott_edge_cmcd_session_buffer_ms{SESSION} / 1000"


def build() -> dict[str, Any]:
    starved = rising(0.005, 0.02)
    buffer = falling(4, 10)    # below one 4 s segment the next late download stalls
    drain = rising(-0.2, 0)    # less than 20 % headroom is thin; above 0 the buffer drains
    return dashboard(UID, TITLE, __doc__ or "", [
        variable("pop", "PoP", "ott_edge_cmcd_sessions"),
        variable("title", "Title", "ott_edge_cmcd_session_requests_total", of="content"),
    ], [
        ("Now", [
            stat("Live CMCD sessions", "Sessions that sent a request within the exporter's TTL", "short",
                 Query('sum(ott_edge_cmcd_sessions{pop=~"$pop"})')),
            stat("Starvation share", "Requests with CMCD bs (the buffer ran dry) / requests with CMCD", "percentunit",
                 Query(f"sum({STARVED}) / sum({CARRIED})"), steps=starved),
            stat("Median buffer", "Median of the sessions' last CMCD bl", "s",
                 Query(f"quantile(0.5, {BUFFER})"), steps=buffer),
            stat("Throughput headroom", "Mean of the sessions' 1 − mtp/br (above 0: draining)", "percentunit",
                 Query(f"avg(1 - ott_edge_cmcd_session_throughput_kbps{SESSION}"
                       f" / ott_edge_cmcd_session_bitrate_kbps{SESSION})"), steps=drain),
        ]),
        ("Per PoP", [
            timeseries("Starvation share per PoP", "Requests with CMCD bs / requests with CMCD", "percentunit",
                       Query(f"{STARVED} / {CARRIED}", "{{pop}}"), steps=starved, minimum=0),
            timeseries("Buffer length per PoP", "The sessions' last CMCD bl: median and the worst tenth", "s",
                       Query(f"quantile by (pop) (0.5, {BUFFER})", "{{pop}} median"),
                       Query(f"quantile by (pop) (0.1, {BUFFER})", "{{pop}} p10"), steps=buffer, minimum=0),
            timeseries("Throughput headroom 1 − mtp/br per PoP", "Mean over the PoP's sessions; above 0 the "
                       "buffer drains", "percentunit", Query(DRAIN, "{{pop}}"), steps=drain),
            timeseries("Live sessions per PoP", "CMCD sessions seen within the TTL", "short",
                       Query('sum by (pop) (ott_edge_cmcd_sessions{pop=~"$pop"})', "{{pop}}"), minimum=0),
            timeseries("Requests by CMCD", "Requests with valid, invalid or no CMCD, per second", "reqps",
                       Query(f'sum by (pop, result) (rate(ott_edge_cmcd_requests_total{{pop=~"$pop"}}[{RATE}]))',
                             "{{pop}} {{result}}"), minimum=0),
            timeseries("Sessions starting or stalled", "Sessions whose last request carried CMCD su", "short",
                       Query(f"sum by (pop) (ott_edge_cmcd_session_startup{SESSION})", "{{pop}}"), minimum=0),
        ]),
    ])
