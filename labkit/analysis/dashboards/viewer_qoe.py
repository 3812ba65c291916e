"""Viewer QoE: what the players report to the QoE collector (CTA-2066 vocabulary), by title, PoP and client.

Attempts, startup time (p50/p95 and its distribution), rebuffering ratio and frequency, video start
failures (VSF), playback failures (VPF), exits before video start (EBVS), time-weighted bitrate,
rung switches and concurrent plays, from the collector's ``ott_qoe_*`` series.
"""

from __future__ import annotations

from typing import Any

from labkit.analysis.dashboards.panel import (
    RATE,
    Query,
    dashboard,
    heatmap,
    rising,
    stat,
    timeseries,
    variable,
)

UID = "ottlab-viewer-qoe"
TITLE = "Viewer QoE"
SEL = '{title=~"$title", pop=~"$pop", client=~"$client"}'


def _rate(metric: str, by: str = "", selector: str = SEL) -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[{RATE}]))"


PLAYS = _rate("ott_qoe_plays_total")
PLAYED = _rate("ott_qoe_played_seconds_total")
STALLED = _rate("ott_qoe_stalled_seconds_total")
STARTS = _rate("ott_qoe_startup_seconds_count")
# A failure counter exists once something failed: no failure is a ratio of 0, not "no data".
VSF = f"({_rate('ott_qoe_start_failures_total')} or 0 * {PLAYS}) / {PLAYS}"
VPF = f"({_rate('ott_qoe_playback_failures_total')} or 0 * {STARTS}) / {STARTS}"
EBVS = f"({_rate('ott_qoe_exits_before_start_total')} or 0 * {PLAYS}) / {PLAYS}"
REBUFFERING = f"({STALLED} or 0 * {PLAYED}) / ({PLAYED} + ({STALLED} or 0 * {PLAYED}))"
STALLS_PER_MINUTE = f"60 * ({_rate('ott_qoe_stalls_total')} or 0 * {PLAYED}) / {PLAYED}"
PLAYED_BY_POP = _rate("ott_qoe_played_seconds_total", "pop")
STALLED_BY_POP = f"({_rate('ott_qoe_stalled_seconds_total', 'pop')} or 0 * {PLAYED_BY_POP})"
BITRATE_BY_POP = f"{_rate('ott_qoe_bitrate_kbit_total', 'pop')} / {PLAYED_BY_POP}"


def _quantile(q: float) -> str:
    return f"histogram_quantile({q}, {_rate('ott_qoe_startup_seconds_bucket', 'le')})"


def build() -> dict[str, Any]:
    startup = rising(2, 3)   # p95 < 2 s is the knee (Krishnan & Sitaraman); alerts at 2 s warn, 3 s critical
    return dashboard(UID, TITLE, __doc__ or "", [
        variable("title", "Title", "ott_qoe_plays_total"),
        variable("pop", "PoP", "ott_qoe_plays_total"),
        variable("client", "Client", "ott_qoe_plays_total"),
    ], [
        ("Now", [
            stat("Play attempts", "Plays asked for per second (the viewer pressed play)", "cps", Query(PLAYS)),
            stat("Concurrent plays", "Seconds played per second: the mean number of viewers playing",
                 "short", Query(PLAYED)),
            stat("Startup p95", "95th percentile of the time from play to the first moving frame", "s",
                 Query(_quantile(0.95)), steps=startup),
            stat("Rebuffering ratio", "Stalled / (played + stalled), after the start", "percentunit",
                 Query(REBUFFERING), steps=rising(0.01, 0.03)),
            stat("Video start failures", "Fatal errors before the first frame / attempts (VSF)", "percentunit",
                 Query(VSF), steps=rising(0.01, 0.02)),
            stat("Exits before start", "Attempts the viewer left before the first frame / attempts (EBVS)",
                 "percentunit", Query(EBVS), steps=rising(0.05, 0.13)),
        ]),
        ("Starting", [
            timeseries("Play attempts by client", "Plays asked for per second", "cps",
                       Query(_rate("ott_qoe_plays_total", "client"), "{{client}}"), minimum=0),
            timeseries("Startup time p50 / p95", "Play to first moving frame", "s",
                       Query(_quantile(0.5), "p50"), Query(_quantile(0.95), "p95"), steps=startup, minimum=0),
            heatmap("Startup time distribution", "Starts per startup-time bucket", "s",
                    Query(_rate("ott_qoe_startup_seconds_bucket", "le"), "{{le}}")),
            timeseries("Start failures, playback failures and exits", "VSF / attempts, VPF / starts, EBVS / attempts",
                       "percentunit", Query(VSF, "VSF"), Query(VPF, "VPF"), Query(EBVS, "EBVS"),
                       steps=rising(0.01, 0.02), minimum=0),
            timeseries("Video start failures by reason", "Fatal errors before the first frame, per second", "cps",
                       Query(_rate("ott_qoe_start_failures_total", "reason"), "{{reason}}"), minimum=0),
            timeseries("Playback failures by reason", "Fatal errors after the start, per second", "cps",
                       Query(_rate("ott_qoe_playback_failures_total", "reason"), "{{reason}}"), minimum=0),
        ]),
        ("Playing", [
            timeseries("Rebuffering ratio by PoP", "Stalled / (played + stalled)", "percentunit",
                       Query(f"{STALLED_BY_POP} / ({PLAYED_BY_POP} + {STALLED_BY_POP})", "{{pop}}"),
                       steps=rising(0.01, 0.03), minimum=0),
            timeseries("Rebuffering frequency", "Stalls per minute played", "short",
                       Query(STALLS_PER_MINUTE, "stalls / min"), minimum=0),
            timeseries("Time-weighted bitrate by PoP", "Σ(rung × seconds at it) / seconds played", "Kbits",
                       Query(BITRATE_BY_POP, "{{pop}}"), minimum=0),
            timeseries("Rung switches per minute played", "Up and down switches per minute of playback", "short",
                       Query(f"60 * {_rate('ott_qoe_switches_total', 'direction')} / on() group_left() {PLAYED}",
                             "{{direction}}"), minimum=0),
            timeseries("Concurrent plays by PoP", "Seconds played per second, by PoP", "short",
                       Query(PLAYED_BY_POP, "{{pop}}"), minimum=0),
            timeseries("Concurrent plays by title", "Seconds played per second, by title", "short",
                       Query(_rate("ott_qoe_played_seconds_total", "title"), "{{title}}"), minimum=0),
        ]),
    ])
