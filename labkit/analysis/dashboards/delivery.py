"""Delivery: what the edge PoPs served, from their access logs (``ott_edge_*``), per PoP.

Requests and egress, cache hit ratio, origin offload, origin fetches, 4xx/5xx, response time, the
time to first byte the synthetic probes measure through each PoP (``probe_http_duration_seconds``)
and the signed-URL refusals (the edge answers 403/410 before its cache when a URL's signature is bad or
expired).
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

UID = "ottlab-delivery"
TITLE = "Delivery"
HITS = 'cache=~"HIT|STALE|UPDATING|REVALIDATED"'
# What the PoP had to fetch from the origin to answer (a miss, an expired entry, a bypass).
FETCHED = 'cache=~"MISS|EXPIRED|BYPASS"'
CACHED = 'cache!="NONE"'
SERVER_ERRORS = 'status_class="5xx"'
# The edge checks a URL's signature before its cache: a 4xx there is a refused signed URL (403, 410).
REFUSED = 'cache="NONE", status_class="4xx"'


def _rate(metric: str, by: str = "pop", matchers: str = "") -> str:
    selector = f'{{pop=~"$pop"{", " + matchers if matchers else ""}}}'
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[{RATE}]))"


HIT_RATIO = (f"{_rate('ott_edge_requests_total', matchers=HITS)} / "
             f"{_rate('ott_edge_requests_total', matchers=CACHED)}")
OFFLOAD = (f"1 - ({_rate('ott_edge_response_bytes_total', '', FETCHED)} or vector(0)) / "
           f"{_rate('ott_edge_response_bytes_total', '')}")


def _p95(object_type: str) -> str:
    return (f"histogram_quantile(0.95, sum by (pop, le) (rate(ott_edge_request_duration_seconds_bucket"
            f'{{pop=~"$pop", object_type="{object_type}"}}[{RATE}])))')


def build() -> dict[str, Any]:
    hit = falling(0.8, 0.9)   # VOD: a PoP below 80 % hits for long is a warning
    return dashboard(UID, TITLE, __doc__ or "", [
        variable("pop", "PoP", "ott_edge_requests_total"),
    ], [
        ("Now", [
            stat("Requests", "Requests the PoPs answered per second", "reqps",
                 Query(_rate("ott_edge_requests_total", ""))),
            stat("Egress", "Bits the PoPs sent per second", "bps",
                 Query(f"8 * {_rate('ott_edge_response_bytes_total', '')}")),
            stat("Hit ratio", "Hits / requests that reached the cache", "percentunit",
                 Query(f"{_rate('ott_edge_requests_total', '', HITS)} / "
                       f"{_rate('ott_edge_requests_total', '', CACHED)}"), steps=hit),
            stat("Origin offload", "1 − bytes fetched from the origin / bytes sent", "percentunit", Query(OFFLOAD),
                 steps=falling(0.8, 0.9)),
            stat("5xx", "Share of answers that were server errors", "percentunit",
                 Query(f"({_rate('ott_edge_requests_total', '', SERVER_ERRORS)} or vector(0)) / "
                       f"{_rate('ott_edge_requests_total', '')}"), steps=rising(0.001, 0.01)),
            stat("Signed-URL refusals", "Requests refused before the cache (403 bad signature, 410 expired) "
                 "per second", "reqps",
                 Query(f"{_rate('ott_edge_requests_total', '', REFUSED)} or vector(0)"),
                 steps=rising(0.5, 5)),
        ]),
        ("Traffic", [
            timeseries("Requests per PoP", "Requests answered per second", "reqps",
                       Query(_rate("ott_edge_requests_total"), "{{pop}}"), minimum=0),
            timeseries("Egress per PoP", "Bits sent per second", "bps",
                       Query(f"8 * {_rate('ott_edge_response_bytes_total')}", "{{pop}}"), minimum=0),
            timeseries("Hit ratio per PoP", "Hits / requests that reached the cache", "percentunit",
                       Query(HIT_RATIO, "{{pop}}"), steps=hit, minimum=0),
            timeseries("Origin fetches per PoP", "Requests the PoP made to the origin, by the origin's answer",
                       "reqps", Query(_rate("ott_edge_origin_fetches_total", "pop, upstream_status"),
                                      "{{pop}} {{upstream_status}}"), minimum=0),
        ]),
        ("Errors and latency", [
            timeseries("4xx / 5xx per PoP", "Error answers per second, by class", "reqps",
                       Query(_rate("ott_edge_requests_total", "pop, status_class", 'status_class=~"4xx|5xx"'),
                             "{{pop}} {{status_class}}"), minimum=0),
            timeseries("Signed-URL refusals per PoP", "403/410 answered before the cache, per second", "reqps",
                       Query(_rate("ott_edge_requests_total", "pop", REFUSED), "{{pop}}"),
                       minimum=0),
            timeseries("Segment response time p95 per PoP", "nginx's request time for segments, 95th percentile "
                       "(the whole answer; the first byte comes sooner)", "s",
                       Query(_p95("segment"), "{{pop}}"), steps=rising(1, 2), minimum=0),
            timeseries("Time to first byte per PoP", "The synthetic probes' wait for the first byte after the "
                       "request (blackbox phase processing), playlist and segment", "s",
                       Query('max by (pop, probe) (probe_http_duration_seconds{phase="processing", pop=~"$pop", '
                             'probe=~"playlist|segment"})', "{{pop}} {{probe}}"), steps=rising(0.5, 2), minimum=0),
            timeseries("Playlist response time p95 per PoP", "nginx's request time for playlists, 95th percentile",
                       "s", Query(_p95("playlist"), "{{pop}}"), steps=rising(0.25, 0.5), minimum=0),
        ]),
    ])
