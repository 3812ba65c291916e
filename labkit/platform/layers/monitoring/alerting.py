"""The lab's service-level objectives and alerts, declared once: every rule, route and inhibition comes from here.

**SLOs** (:data:`SLOS`): each is a ratio of bad events to all events over a window, and an
objective (the share of good events); its error budget is ``1 - objective``. For each SLO the
generated rules record the error ratio over the windows the alerts need
(``slo:<name>:error_ratio:rate<window>``) and alert on how fast the budget burns, the SRE
workbook's multi-window multi-burn-rate pattern (https://sre.google/workbook/alerting-on-slos/):

* ``<Name>BudgetBurn`` (``severity: page``): 14.4 times the budget over 1 h *and* over 5 m (2 %
  of a 30-day budget in an hour), or 6 times over 6 h *and* 30 m (5 % in six hours). The long
  window says it matters, the short one that it is still happening (the alert resolves minutes
  after a fix, not an hour).
* ``<Name>BudgetBurnSlow`` (``severity: ticket``): 3 times over 1 d and 2 h (10 % of the budget in
  a day). The workbook's ticket is 1 times over 3 d; the lab's Prometheus keeps 2 days of data.

**Cause alerts** (:data:`CAUSES`, ``severity: warning``) name what is broken (a PoP, the origin, a
probe); the symptom alerts page on what viewers feel. **Inhibitions** (:data:`INHIBITIONS`) keep
one incident from notifying several times: an origin outage mutes every PoP's hit-ratio and the
offload alerts, a PoP down mutes that PoP's probe and hit-ratio alerts, a page mutes the ticket of
the same SLO.

**Timing** (:data:`REAL`, :data:`FAST`): the committed files (``k8s/base/monitoring/alert-rules.yml``,
``alertmanager.yml``) carry the real ``for:`` durations and Alertmanager intervals; a lab started
with ``CI=true`` or ``OTTLAB_ALERT_TIMING=fast`` writes its own copies with every ``for:`` divided by
:attr:`Timing.for_divisor` (but kept at :attr:`Timing.min_for_s`, or as declared when shorter) and
short group intervals, so that a test sees an alert in seconds and in the order the real rules say.

**An incident's alerts** (:func:`firing_window`, :func:`firing_order`, :func:`inhibited`): when a
fault turns an alert's condition true at the first scrape after it, the declarations say when the
alert fires (its ``for:`` after that scrape and an evaluation), which alerts must fire before
which, and which of them Alertmanager holds back.

``python -m labkit.platform.layers`` writes the committed rules, the Alertmanager configuration
and the promtool tests (tests/unit/test_alerting.py fails when any is stale).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from labkit.core.config import repo_root
from labkit.platform import mesh

RUNBOOKS = "docs/runbooks"
# The runbook_url annotation: the runbook's path in the repository (the lab has no web host for
# them; labkit.clients.alerts reads the file a notification names).
RUNBOOK_URL = RUNBOOKS + "/{alert}.md"
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d")
# Every certificate an Envoy sidecar holds, by its expiry (unix seconds): per listener and per cluster,
# the certificate's name in the stat's name (Istio's stat tags do not extract it).
CERT_EXPIRY_METRICS = "envoy_(listener|cluster)_ssl_certificate_(.+_)?expiration_unix_time_seconds"
# A sidecar's certificate with less than this left warns: the local target's renewal window
# (labkit.targets.local.mesh.RENEW_BEFORE, a test holds them equal).
CERT_EXPIRY_WARN_S = 2 * 3600


# -- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How fast rules and notifications move: the real values, or a test's."""

    name: str
    evaluation_interval: str
    for_divisor: int
    group_wait: str
    group_interval: str
    repeat_interval: str
    # A fast lab still waits this long before an alert fires (or the declared `for:`, when shorter).
    min_for_s: int = 0


# Real: Prometheus evaluates every 5 s (the lab scrapes every 5 s); Alertmanager waits 30 s before
# the first notification of a group (time for an inhibiting cause alert to arrive with it), 5 min
# before telling about new alerts of a notified group, and repeats a firing group every 4 h
# (Alertmanager's documented defaults, OPERATIONS.md 3.2).
REAL = Timing("real", evaluation_interval="5s", for_divisor=1, group_wait="30s", group_interval="5m",
              repeat_interval="4h")
# Tests and CI: every `for:` a tenth, but at least 30 s (a shorter one as declared), a group notified
# 5 s after its first alert and again 10 s after a change: an incident fires, notifies and resolves
# within a minute or two. The floor keeps the cause alerts' own durations (PoPDown 20 s, ProbeFailing
# and ComponentDown 30 s): 10 s apart, more than a scrape and an evaluation, so they fire in the
# order the real rules say and an inhibiting alert arrives within its target's group wait.
FAST = Timing("fast", evaluation_interval="2s", for_divisor=10, group_wait="5s", group_interval="10s",
              repeat_interval="1h", min_for_s=30)
TIMINGS = {t.name: t for t in (REAL, FAST)}


def timing_from(environ: Mapping[str, str] | None = None) -> Timing:
    """``OTTLAB_ALERT_TIMING`` (``real`` or ``fast``); by default fast under ``CI=true``, else real."""
    env = os.environ if environ is None else environ
    name = env.get("OTTLAB_ALERT_TIMING") or ("fast" if env.get("CI", "").lower() == "true" else "real")
    if name not in TIMINGS:
        from labkit.core.errors import ConfigError

        raise ConfigError(f"OTTLAB_ALERT_TIMING={name!r} is not a timing", hint="use real or fast")
    return TIMINGS[name]


def timing_evaluated_every(interval_s: float) -> Timing:
    """The declared timing whose rule groups are evaluated every ``interval_s`` seconds, as a running
    Prometheus reports its groups (a kube lab runs the committed rules: real, whatever ``CI`` says)."""
    for timing in TIMINGS.values():
        if seconds(timing.evaluation_interval) == interval_s:
            return timing
    from labkit.core.errors import ConfigError

    raise ConfigError(f"no declared alert timing evaluates every {interval_s:g} s",
                      hint="the lab's rules come from alerting.rules(); regenerate them or start the lab again")


_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """``"5m"`` -> 300 (Prometheus durations of one unit, as this module writes them)."""
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def duration(total_s: int) -> str:
    for unit in ("d", "h", "m"):
        if total_s % _UNIT_S[unit] == 0 and total_s >= _UNIT_S[unit]:
            return f"{total_s // _UNIT_S[unit]}{unit}"
    return f"{total_s}s"


def scaled_for(value: str, timing: Timing) -> str:
    s = seconds(value)
    if s == 0:
        return "0s"
    return duration(min(s, max(timing.min_for_s, s // timing.for_divisor)))


# -- SLOs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLO:
    """An objective on a ratio of events: ``bad`` and ``total`` are PromQL with ``{w}`` for the window."""

    name: str  # CamelCase: the alerts' prefix
    key: str  # snake_case: the recording rules' middle
    objective: float  # the share of good events
    description: str
    viewer: str  # what a viewer sees when it burns
    why: str  # why this objective
    bad: str
    total: str
    dashboard: str

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)

    def record(self, window: str) -> str:
        return f"slo:{self.key}:error_ratio:rate{window}"


SLOS: tuple[SLO, ...] = (
    SLO(
        "PlaybackAvailability", "playback_availability", 0.995,
        "segment and playlist requests the PoPs answer without a 5xx",
        "segments that do not arrive: the player retries, stalls, then gives up",
        "99.5 % of segment requests succeed (OPERATIONS.md 7.3, the lab's proposal after the SRE "
        "workbook): one failure in 200 requests is one retry every ~13 minutes of 4-second segments, "
        "which a player's buffer hides; more is visible as stalls",
        'sum(rate(ott_edge_requests_total{{object_type=~"segment|playlist",status_class="5xx"}}[{w}]))',
        'sum(rate(ott_edge_requests_total{{object_type=~"segment|playlist"}}[{w}]))',
        "Delivery",
    ),
    SLO(
        "ApiAvailability", "api_availability", 0.999,
        "requests the OTT services answer without a 5xx",
        "login, catalog, license or key requests that fail: no playback starts",
        "99.9 %: a start crosses auth, license (subscription, CAS) and the key, four to six calls; "
        "at 99.9 % each, about 1 start in 200 meets a failure, the VSF objective's half",
        'sum(rate(ott_http_requests_total{{status=~"5.."}}[{w}]))',
        "sum(rate(ott_http_requests_total[{w}]))",
        "Platform",
    ),
    SLO(
        "ApiLatency", "api_latency", 0.99,
        "requests the OTT services answer within 500 ms",
        "a slow license or key: the startup time grows by the wait",
        "99 % under 500 ms: a license or key fetch blocks the start, and OPERATIONS.md 7.3 alerts on "
        "a key-server p95 above 500 ms; 1 % slow keeps p99 of a start's API time near it",
        "(sum(rate(ott_http_request_duration_seconds_count[{w}])) "
        '- sum(rate(ott_http_request_duration_seconds_bucket{{le="0.5"}}[{w}])))',
        "sum(rate(ott_http_request_duration_seconds_count[{w}]))",
        "Platform",
    ),
    SLO(
        "StartupTime", "startup_time", 0.95,
        "plays whose first frame moves within 2 s of the play request (startup p95 under 2 s)",
        "a spinner before the video: past 2 s viewers start leaving, 5.8 % more per second",
        "p95 under 2 s: Krishnan and Sitaraman (IMC 2012, 23 M views) saw abandonment start at 2 s "
        "and grow 5.8 % per extra second; OPERATIONS.md 7.2 lists p95 < 2 s as the common target",
        '(sum(rate(ott_qoe_startup_seconds_count[{w}])) - sum(rate(ott_qoe_startup_seconds_bucket{{le="2.0"}}[{w}])))',
        "sum(rate(ott_qoe_startup_seconds_count[{w}]))",
        "Viewer QoE",
    ),
    SLO(
        "RebufferingRatio", "rebuffering_ratio", 0.99,
        "time spent playing rather than rebuffering (rebuffering ratio under 1 %)",
        "the picture freezes with a spinner during playback",
        "under 1 %: 'acceptable' in public targets (OPERATIONS.md 7.2; 0.5 % excellent), the industry "
        "measured 0.78 % (Conviva 2018), and 1 % of rebuffering costs about 5 % of viewing time",
        "sum(rate(ott_qoe_stalled_seconds_total[{w}]))",
        "(sum(rate(ott_qoe_played_seconds_total[{w}])) + sum(rate(ott_qoe_stalled_seconds_total[{w}])))",
        "Viewer QoE",
    ),
    SLO(
        "VideoStartFailures", "video_start_failures", 0.99,
        "play attempts that start without a fatal error (VSF rate under 1 %)",
        "an error instead of the video: the viewer cannot watch at all",
        "under 1 %: the 'good' VSF in public targets (OPERATIONS.md 7.2); the industry measured 2.6 % "
        "(Conviva 2015), and a failure makes a viewer less likely to come back",
        "sum(rate(ott_qoe_start_failures_total[{w}]))",
        "sum(rate(ott_qoe_plays_total[{w}]))",
        "Viewer QoE",
    ),
)


@dataclass(frozen=True)
class Burn:
    """One condition of a burn-rate alert: the budget burns ``factor`` times too fast over both windows."""

    factor: float
    long: str
    short: str


PAGE_BURNS = (Burn(14.4, "1h", "5m"), Burn(6, "6h", "30m"))
TICKET_BURNS = (Burn(3, "1d", "2h"),)


# -- alerts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """promtool input for one alert: series (PromQL selector -> values), and when to look."""

    series: Mapping[str, str]
    at: str
    interval: str = "1m"


@dataclass(frozen=True)
class Alert:
    """An alerting rule and what it means: the runbook ``docs/runbooks/<name>.md`` says the rest."""

    name: str
    expr: str
    for_: str
    severity: str  # page | ticket | warning
    summary: str  # may use {{ $labels.x }}
    description: str
    firing: Case
    quiet: Case
    fired_labels: Mapping[str, str] = field(default_factory=dict)  # the expression's labels when firing
    slo: str | None = None
    why: str = ""  # why this threshold


def _burn_expr(slo: SLO, burns: Sequence[Burn]) -> str:
    parts = [
        f"({slo.record(b.long)} > {b.factor:g} * {slo.budget:g}"
        f" and {slo.record(b.short)} > {b.factor:g} * {slo.budget:g})"
        for b in burns
    ]
    return "\n or ".join(parts)


def _ratio_case(slo: SLO, bad_share: float) -> dict[str, str]:
    """Counters that make the SLO's error ratio bad/total: the series its ``bad`` and ``total`` read."""
    total_per_min = 600.0
    series: dict[str, str] = {}
    for selector, per_min in _SLO_SERIES[slo.key](bad_share * total_per_min, total_per_min).items():
        series[selector] = f"0+{per_min:g}x40"
    return series


# The raw series behind each SLO's bad and total: (bad per minute, total per minute) -> series rates.
_SLO_SERIES = {
    "playback_availability": lambda bad, total: {
        'ott_edge_requests_total{pop="edge-0",object_type="segment",status_class="5xx",cache="MISS"}': bad,
        'ott_edge_requests_total{pop="edge-0",object_type="segment",status_class="2xx",cache="HIT"}': total - bad,
    },
    "api_availability": lambda bad, total: {
        'ott_http_requests_total{service="license",route="/keys",method="GET",status="500"}': bad,
        'ott_http_requests_total{service="license",route="/keys",method="GET",status="200"}': total - bad,
    },
    "api_latency": lambda bad, total: {
        'ott_http_request_duration_seconds_count{service="license",route="/keys",method="GET"}': total,
        'ott_http_request_duration_seconds_bucket{service="license",route="/keys",method="GET",le="0.5"}': total - bad,
    },
    "startup_time": lambda bad, total: {
        'ott_qoe_startup_seconds_count{title="t",pop="edge-0",client="simulator"}': total,
        'ott_qoe_startup_seconds_bucket{title="t",pop="edge-0",client="simulator",le="2.0"}': total - bad,
    },
    "rebuffering_ratio": lambda bad, total: {
        'ott_qoe_stalled_seconds_total{title="t",pop="edge-0",client="simulator"}': bad,
        'ott_qoe_played_seconds_total{title="t",pop="edge-0",client="simulator"}': total - bad,
    },
    "video_start_failures": lambda bad, total: {
        'ott_qoe_start_failures_total{title="t",pop="edge-0",client="simulator",reason="network_error"}': bad,
        'ott_qoe_plays_total{title="t",pop="edge-0",client="simulator"}': total,
    },
}


def _slo_alerts(slo: SLO) -> list[Alert]:
    budget = slo.budget
    return [
        Alert(
            f"{slo.name}BudgetBurn",
            _burn_expr(slo, PAGE_BURNS), "2m", "page",
            f"{slo.name}: the error budget burns 6 to 14.4 times too fast",
            f"{slo.description}: objective {slo.objective:.1%}. At this rate the 30-day budget is gone in "
            "2 to 5 days; viewers feel it now.",
            # 20 times the budget (at most 90 % bad): over 14.4 times it in every window.
            firing=Case(_ratio_case(slo, min(0.9, budget * 20)), "15m"),
            # Within the objective: a tenth of the budget.
            quiet=Case(_ratio_case(slo, budget / 10), "15m"),
            slo=slo.name,
            why=f"burn rates 14.4 (1 h and 5 m) and 6 (6 h and 30 m) of the {budget:.2%} budget: the SRE "
                f"workbook's paging thresholds. Objective: {slo.why}",
        ),
        Alert(
            f"{slo.name}BudgetBurnSlow",
            _burn_expr(slo, TICKET_BURNS), "15m", "ticket",
            f"{slo.name}: the error budget burns 3 times too fast",
            f"{slo.description}: objective {slo.objective:.1%}. At this rate the 30-day budget is gone in "
            "10 days: not urgent, but it will not last the month.",
            # 4 times the budget for 30 minutes: over 3 times in both windows (of the data there is)
            # for longer than 15 minutes.
            firing=Case(_ratio_case(slo, budget * 4), "30m"),
            # 2 times: a burn, but under the ticket's factor.
            quiet=Case(_ratio_case(slo, budget * 2), "30m"),
            slo=slo.name,
            why=f"burn rate 3 over 1 d and 2 h of the {budget:.2%} budget (10 % of it in a day): a ticket, "
                "the workbook's slow burn within the lab's 2-day retention",
        ),
    ]


CAUSES: tuple[Alert, ...] = (
    Alert(
        "PoPDown", 'max by (pop) (nginx_up{component="edge"}) == 0', "20s", "warning",
        "PoP {{ $labels.pop }} does not answer",
        "The PoP's nginx is not running or not answering its status page; its viewers fail over to "
        "the next PoP of their grant, the others carry its load.",
        firing=Case({'nginx_up{job="nginx",component="edge",pop="edge-1",instance="i1"}': "1 1 0 0 0 0 0 0",
                     'nginx_up{job="nginx",component="edge",pop="edge-0",instance="i0"}': "1x8"}, "70s", "10s"),
        quiet=Case({'nginx_up{job="nginx",component="edge",pop="edge-1",instance="i1"}': "1 1 1 1 0 0 1 1",
                    'nginx_up{job="nginx",component="edge",pop="edge-0",instance="i0"}': "1x8"}, "70s", "10s"),
        fired_labels={"pop": "edge-1"},
        why="20 s: two scrapes of the exporter's status read (5 s apart) and a margin; nginx_up is 0 only "
            "when nginx itself does not answer, so there is nothing to smooth",
    ),
    Alert(
        "OriginDown", 'max(nginx_up{component="origin"}) == 0', "20s", "warning",
        "The origin does not answer",
        "The origin's nginx is down: the PoPs serve what they have cached (stale if need be) and every "
        "miss fails.",
        firing=Case({'nginx_up{job="nginx",component="origin",instance="o"}': "1 0 0 0 0 0 0"}, "60s", "10s"),
        quiet=Case({'nginx_up{job="nginx",component="origin",instance="o"}': "1 0 1 1 1 1 1"}, "60s", "10s"),
        why="20 s, as PoPDown: one origin, and every PoP's misses depend on it",
    ),
    Alert(
        "HitRatioDrop",
        'sum by (pop) (rate(ott_edge_requests_total{object_type="segment",cache="HIT"}[10m]))\n'
        ' / sum by (pop) (rate(ott_edge_requests_total{object_type="segment"}[10m])) < 0.8\n'
        ' and sum by (pop) (rate(ott_edge_requests_total{object_type="segment"}[10m])) > 0.5',
        "15m", "warning",
        "PoP {{ $labels.pop }} serves under 80 % of segments from its cache",
        "Segment requests at this PoP miss its cache more than usual: the origin takes the load and "
        "viewers wait for the origin's answers.",
        firing=Case({'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="HIT",status_class="2xx"}':
                     "0+60x40",
                     'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="MISS",status_class="2xx"}':
                     "0+60x40"}, "30m"),
        quiet=Case({'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="HIT",status_class="2xx"}':
                    "0+57x40",
                    'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="MISS",status_class="2xx"}':
                    "0+3x40"}, "30m"),
        fired_labels={"pop": "edge-0"},
        why="80 % for 15 minutes with at least 0.5 segment requests a second: OPERATIONS.md 7.3's VOD "
            "threshold; a short cold start after a deploy or a new title stays under it",
    ),
    Alert(
        "OriginOffloadDrop",
        "1 - sum(rate(ott_edge_origin_fetches_total[10m])) / sum(rate(ott_edge_requests_total[10m])) < 0.9\n"
        " and sum(rate(ott_edge_requests_total[10m])) > 0.5",
        "15m", "warning",
        "The PoPs send more than 10 % of requests to the origin",
        "Origin offload is under 90 %: a purge, cache-busting query strings or a full cache make the "
        "origin serve what the PoPs should.",
        firing=Case({'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="MISS",status_class="2xx"}':
                     "0+60x40",
                     'ott_edge_origin_fetches_total{pop="edge-0",object_type="segment",upstream_status="200"}':
                     "0+30x40"}, "30m"),
        quiet=Case({'ott_edge_requests_total{pop="edge-0",object_type="segment",cache="MISS",status_class="2xx"}':
                    "0+60x40",
                    'ott_edge_origin_fetches_total{pop="edge-0",object_type="segment",upstream_status="200"}':
                    "0+3x40"}, "30m"),
        why="90 % for 15 minutes (OPERATIONS.md 7.3): the origin is sized for a tenth of the PoPs' requests",
    ),
    Alert(
        "LicenseOrKeyErrors",
        '(sum(rate(ott_http_requests_total{service="license",status=~"5.."}[5m]))\n'
        ' / sum(rate(ott_http_requests_total{service="license"}[5m]))) > 0.01\n'
        ' or sum(rate(ott_license_decisions_total{reason="no_key"}[5m])) > 0',
        "2m", "warning",
        "License answers errors or titles have no key",
        "More than 1 % of license requests fail, or key requests name a title without a key: players "
        "cannot decrypt, starts fail.",
        firing=Case({'ott_http_requests_total{service="license",route="/authorizations",method="POST",status="502"}':
                     "0+5x20",
                     'ott_http_requests_total{service="license",route="/authorizations",method="POST",status="200"}':
                     "0+60x20"}, "10m"),
        quiet=Case({'ott_http_requests_total{service="license",route="/authorizations",method="POST",status="502"}':
                    "0+0x20",
                    'ott_http_requests_total{service="license",route="/authorizations",method="POST",status="200"}':
                    "0+60x20",
                    'ott_license_decisions_total{decision="deny",reason="missing_authorization"}': "0+12x20"}, "10m"),
        why="1 % of license errors for 2 minutes (OPERATIONS.md 7.3: key server 5xx over 1 % is critical); "
            "a key missing for a published title is always a fault. Refusals (401, 403) are not errors",
    ),
    Alert(
        "CasRefusalsSpike",
        'sum(rate(ott_cas_decisions_total{decision="deny"}[5m])) / sum(rate(ott_cas_decisions_total[5m])) > 0.2\n'
        " and sum(rate(ott_cas_decisions_total[5m])) > 0.05",
        "5m", "warning",
        "CAS refuses more than 20 % of stream starts",
        "Conditional access refuses many starts (stream or device limits, viewing window): account "
        "sharing, a client that does not end its streams, or a clock problem.",
        firing=Case({'ott_cas_decisions_total{decision="deny",reason="stream_limit"}': "0+30x20",
                     'ott_cas_decisions_total{decision="grant",reason="ok"}': "0+30x20"}, "12m"),
        quiet=Case({'ott_cas_decisions_total{decision="deny",reason="stream_limit"}': "0+3x20",
                    'ott_cas_decisions_total{decision="grant",reason="ok"}': "0+60x20"}, "12m"),
        why="20 % of refusals for 5 minutes: a household's second device is refused now and then; a fifth "
            "of all starts is a pattern (a client leaking streams holds every account at its limit)",
    ),
    Alert(
        "TranscoderFailures", 'sum(increase(ott_transcode_jobs_total{outcome=~"failed|interrupted"}[15m])) > 0', "0s",
        "warning",
        "Transcode jobs fail",
        "A transcode job failed or was interrupted in the last 15 minutes: a title is not published.",
        firing=Case({'ott_transcode_jobs_total{outcome="failed"}': "0 0 1 1 1",
                     'ott_transcode_jobs_total{outcome="published"}': "0 1 1 2 2"}, "4m"),
        quiet=Case({'ott_transcode_jobs_total{outcome="failed"}': "0 0 0 0 0",
                    'ott_transcode_jobs_total{outcome="rejected"}': "0 1 1 1 1"}, "4m"),
        why="any failure: jobs are few and each is a title that does not reach viewers; a rejected source "
            "(bad input) is the uploader's problem, not an alert",
    ),
    Alert(
        "ProbeFailing", "probe_success == 0", "30s", "warning",
        "The {{ $labels.probe }} probe through {{ $labels.pop }} fails",
        "The synthetic viewer cannot fetch the canary title's signed {{ $labels.probe }} (or the key path "
        "does not refuse it as it should): real viewers on that path see the same.",
        firing=Case({'probe_success{job="blackbox",pop="edge-1",probe="segment",instance="edge-1/segment"}':
                     "1 0 0 0 0 0 0 0 0"}, "80s", "10s"),
        quiet=Case({'probe_success{job="blackbox",pop="edge-1",probe="segment",instance="edge-1/segment"}':
                    "1 0 1 0 1 0 1 0 1"}, "80s", "10s"),
        fired_labels={"job": "blackbox", "pop": "edge-1", "probe": "segment", "instance": "edge-1/segment"},
        why="30 s: six failed probes in a row (one every 5 s), so one lost packet does not warn",
    ),
    Alert(
        "WorkloadCertificateExpiring",
        # Envoy (1.40) gauges each certificate its TLS contexts hold, listeners (inbound) and clusters
        # (outbound), with the certificate's name in the stat's name as Istio's stat tags leave it:
        # envoy_cluster_ssl_certificate_<name>_expiration_unix_time_seconds{cluster_name=...}.
        # server.days_until_first_cert_expiring is whole days: 0 for a 24 h certificate from its issue.
        f"min by (job, instance) ({{job=\"{mesh.STATS_JOB}\",__name__=~\"{CERT_EXPIRY_METRICS}\"}}) - time()"
        f" < {CERT_EXPIRY_WARN_S}",
        "1m", "warning",
        "A sidecar at {{ $labels.instance }} holds a certificate that expires within 2 h",
        "The mesh certificate this Envoy serves or presents (its workload's 24 h SPIFFE certificate, "
        "or the lab CA) ends in less than 2 h: when it does, every mutual TLS hop to and from this "
        "workload is refused.",
        firing=Case({
            'envoy_listener_ssl_certificate_unnamed_cert_e3b0c442_expiration_unix_time_seconds'
            '{job="envoy-stats",instance="127.0.0.1:18500",listener_address="127.0.0.1_18000"}': "3600x20",
            'envoy_listener_ssl_certificate_unnamed_ca_cert_e3b0c442_expiration_unix_time_seconds'
            '{job="envoy-stats",instance="127.0.0.1:18500",listener_address="127.0.0.1_18000"}': "31536000x20",
            'envoy_cluster_ssl_certificate_unnamed_cert_e3b0c442_expiration_unix_time_seconds'
            '{job="envoy-stats",instance="127.0.0.1:18501",cluster_name="outbound|8000||cas.ottlab.svc.cluster.local"}':
            "86400x20"}, "10m"),
        quiet=Case({
            'envoy_listener_ssl_certificate_unnamed_cert_e3b0c442_expiration_unix_time_seconds'
            '{job="envoy-stats",instance="127.0.0.1:18500",listener_address="127.0.0.1_18000"}': "86400x20",
            'envoy_cluster_ssl_certificate_unnamed_cert_e3b0c442_expiration_unix_time_seconds'
            '{job="envoy-stats",instance="127.0.0.1:18501",cluster_name="outbound|8000||cas.ottlab.svc.cluster.local"}':
            "8400x20"}, "10m"),
        fired_labels={"job": "envoy-stats", "instance": "127.0.0.1:18500"},
        why="2 h: the lab issues 24 h workload certificates and `ottlab up` issues one again when less than "
            "2 h is left, but nothing renews them in a running lab, so a sidecar entering that window "
            "needs an operator (Istio's agent rotates at half the lifetime: under 2 h left on a cluster "
            "means rotation has failed for 10 h). The gauge only moves when a sidecar loads a new "
            "certificate: 1 m is a scrape or two, no smoothing needed",
    ),
)

PLATFORM: tuple[Alert, ...] = (
    Alert(
        "ComponentDown", "up == 0", "30s", "warning",
        "{{ $labels.job }} at {{ $labels.instance }} is down",
        "Prometheus could not scrape {{ $labels.job }} at {{ $labels.instance }} for 30 s. Look at `ottlab status` "
        "and `ottlab logs` of the component listening there (a mesh sidecar, job envoy-stats, is SERVICE-proxy).",
        # Every job, the mesh's sidecars' (envoy-stats) too: a sidecar that stops answering its admin
        # port while the other components answer.
        firing=Case({f'up{{job="{mesh.STATS_JOB}",instance="127.0.0.1:18600"}}': "1 1 1 0 0 0 0 0 0 0 0 0 0",
                     'up{job="alertmanager",instance="127.0.0.1:18093"}': "1x12"}, "50s", "5s"),
        quiet=Case({f'up{{job="{mesh.STATS_JOB}",instance="127.0.0.1:18600"}}': "1 1 1 0 0 0 0 0 0 0 0 0 0",
                    'up{job="alertmanager",instance="127.0.0.1:18093"}': "1x12"}, "40s", "5s"),
        fired_labels={"job": mesh.STATS_JOB, "instance": "127.0.0.1:18600"},
        why="30 s: six failed scrapes; a restart by the supervisor takes about two",
    ),
    Alert(
        "ScrapeSlow", "scrape_duration_seconds > 2", "1m", "warning",
        "{{ $labels.job }} at {{ $labels.instance }} is slow to scrape",
        "A scrape slower than 2 s usually means the component is overloaded.",
        firing=Case({'scrape_duration_seconds{job="prometheus",instance="p"}': "0.1 3 3 3 3 3 3"}, "90s", "15s"),
        quiet=Case({'scrape_duration_seconds{job="prometheus",instance="p"}': "0.1 3 3 3 3 3 3"}, "45s", "15s"),
        fired_labels={"job": "prometheus", "instance": "p"},
        why="2 s is 40 % of the 5 s scrape interval, for a minute",
    ),
    Alert(
        "RuleEvaluationFailing", "increase(prometheus_rule_evaluation_failures_total[5m]) > 0", "0s", "warning",
        "Prometheus failed to evaluate rules in {{ $labels.rule_group }}",
        "An alert rule errors at evaluation; check it with `promtool check rules`.",
        firing=Case({'prometheus_rule_evaluation_failures_total{rule_group="g",job="prometheus",instance="p"}':
                     "0 0 2 2"}, "2m"),
        quiet=Case({'prometheus_rule_evaluation_failures_total{rule_group="g",job="prometheus",instance="p"}':
                    "0 0 2 2"}, "1m"),
        fired_labels={"rule_group": "g", "job": "prometheus", "instance": "p"},
        why="any failure: a rule that does not evaluate is an alert that can never fire",
    ),
    Alert(
        "AlertmanagerNotificationsFailing", "rate(alertmanager_notifications_failed_total[5m]) > 0", "1m",
        "warning",
        "Alertmanager fails to deliver notifications to {{ $labels.integration }}",
        "Alerts are firing but nobody is told.",
        firing=Case({'alertmanager_notifications_failed_total{integration="webhook",job="alertmanager",instance="a"}':
                     "0 1 2 3 4 5 6"}, "5m"),
        quiet=Case({'alertmanager_notifications_failed_total{integration="webhook",job="alertmanager",instance="a"}':
                    "0x6"}, "5m"),
        fired_labels={"integration": "webhook", "job": "alertmanager", "instance": "a"},
        why="any failed delivery for a minute: a page that is not delivered is no page",
    ),
)


def alerts() -> list[Alert]:
    """Every alert: the SLOs' symptoms first, then the causes, then the platform's own."""
    return [*(a for slo in SLOS for a in _slo_alerts(slo)), *CAUSES, *PLATFORM]


def runbook_url(alert: str) -> str:
    return RUNBOOK_URL.format(alert=alert)


# -- rules -----------------------------------------------------------------------------------


def _rule(alert: Alert, timing: Timing) -> dict[str, object]:
    labels: dict[str, str] = {"severity": alert.severity}
    if alert.slo:
        labels["slo"] = alert.slo
    return {
        "alert": alert.name,
        "expr": alert.expr,
        "for": scaled_for(alert.for_, timing),
        "labels": labels,
        "annotations": {"summary": alert.summary, "description": alert.description,
                        "runbook_url": runbook_url(alert.name)},
    }


def rules(timing: Timing = REAL) -> dict[str, object]:
    """The rule groups: the SLOs' recording rules, then the alerts (symptoms, causes, platform)."""
    records = [
        {"record": slo.record(w), "expr": f"{slo.bad.format(w=w)}\n/\n{slo.total.format(w=w)}"}
        for slo in SLOS for w in WINDOWS
    ]
    every = alerts()
    symptoms = [a for a in every if a.slo]
    causes = [a for a in every if a in CAUSES]
    platform = [a for a in every if a in PLATFORM]
    interval = timing.evaluation_interval
    return {"groups": [
        {"name": "ottlab-slo-records", "interval": interval, "rules": records},
        {"name": "ottlab-slo-alerts", "interval": interval, "rules": [_rule(a, timing) for a in symptoms]},
        {"name": "ottlab-causes", "interval": interval, "rules": [_rule(a, timing) for a in causes]},
        {"name": "ottlab-platform", "interval": interval, "rules": [_rule(a, timing) for a in platform]},
    ]}


# -- Alertmanager ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Inhibition:
    why: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    equal: tuple[str, ...] = ()

    def config(self) -> dict[str, object]:
        rule: dict[str, object] = {"source_matchers": list(self.source), "target_matchers": list(self.target)}
        if self.equal:
            rule["equal"] = list(self.equal)
        return rule


INHIBITIONS: tuple[Inhibition, ...] = (
    Inhibition("an origin outage explains every PoP's misses and the offload drop",
               ("alertname = OriginDown",), ("alertname =~ HitRatioDrop|OriginOffloadDrop",)),
    Inhibition("a PoP down explains its failing probes and its hit ratio",
               ("alertname = PoPDown",), ("alertname =~ ProbeFailing|HitRatioDrop",), ("pop",)),
    Inhibition("a page on an SLO makes its ticket redundant",
               ("severity = page",), ("severity = ticket",), ("slo",)),
)
# One receiver per severity, so that routing says who is told: pages to whoever is on call, tickets
# to the queue, warnings to the operators' channel; anything else to the default, lab.
RECEIVER = "lab"
RECEIVERS = {"page": "oncall", "ticket": "tickets", "warning": "operators"}
# Alerts are grouped by name and by the PoP they are about: one notification per alert and PoP.
GROUP_BY = ("alertname", "pop")


def alertmanager_config(timing: Timing = REAL, webhook: str | None = None) -> dict[str, object]:
    """Alertmanager's configuration: a route per severity, the inhibitions, the receivers.

    ``webhook``: a URL every receiver posts its notifications to (``send_resolved``), for a drill or
    a test that listens there; without it the alerts stay in Alertmanager's API and UI.
    """
    receivers: list[dict[str, object]] = []
    for name in (RECEIVER, *RECEIVERS.values()):
        receiver: dict[str, object] = {"name": name}
        if webhook:
            receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
        receivers.append(receiver)
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": list(GROUP_BY),
            "group_wait": timing.group_wait,
            "group_interval": timing.group_interval,
            "repeat_interval": timing.repeat_interval,
            "routes": [{"matchers": [f"severity = {s}"], "receiver": r} for s, r in RECEIVERS.items()],
        },
        "inhibit_rules": [i.config() for i in INHIBITIONS],
        "receivers": receivers,
    }


# -- an incident's alerts --------------------------------------------------------------------


def alert(name: str) -> Alert:
    """The declared alert ``name``."""
    found = {a.name: a for a in alerts()}
    if name not in found:
        from labkit.core.errors import ConfigError

        raise ConfigError(f"no alert named {name!r}", hint=f"the alerts: {', '.join(found)}")
    return found[name]


@dataclass(frozen=True)
class Window:
    """When an alert fires, in seconds after a fault that turns its condition true at the next scrape."""

    alert: str
    for_s: int
    earliest: float
    latest: float

    def holds(self, seconds_after: float, slack_s: float = 1.0) -> bool:
        """Whether an alert that fired ``seconds_after`` the fault fired within the window (± ``slack_s``)."""
        return self.earliest - slack_s <= seconds_after <= self.latest + slack_s


def firing_window(name: str, timing: Timing, scrape_s: float) -> Window:
    """When alert ``name`` fires after a fault its expression sees at the first scrape after it.

    The condition is true from that scrape (within ``scrape_s``); the alert is pending from the first
    evaluation that reads the sample (within an evaluation interval, and one more when the evaluation
    starts while the scrape is written) and fires ``for:`` later, rounded up to the evaluation grid.
    """
    every = seconds(timing.evaluation_interval)
    for_s = seconds(scaled_for(alert(name).for_, timing))
    held = -(-for_s // every) * every
    return Window(name, for_s, float(for_s), float(scrape_s + 2 * every + held))


def firing_order(names: Sequence[str], timing: Timing, scrape_s: float) -> list[tuple[str, str]]:
    """The pairs (a, b) of ``names`` where a must fire before b: a's window ends before b's begins."""
    windows = [firing_window(n, timing, scrape_s) for n in names]
    return [(a.alert, b.alert) for a in windows for b in windows if a.latest < b.earliest]


def _matches(matcher: str, alert: Alert) -> bool:
    label, op, value = matcher.split(" ", 2)
    have = {"alertname": alert.name, "severity": alert.severity, "slo": alert.slo or ""}.get(label, "")
    return have == value if op == "=" else re.fullmatch(value, have) is not None


def inhibited(names: Sequence[str]) -> dict[str, str]:
    """Which of ``names`` (alerts about the same PoP, SLO...) Alertmanager holds back, and by which of them.

    An alert is held back while a source of one of :data:`INHIBITIONS` fires with the same ``equal``
    labels; the alerts here are taken to share them (one incident's alerts about one PoP).
    """
    firing = [alert(n) for n in names]
    held: dict[str, str] = {}
    for rule in INHIBITIONS:
        sources = [a for a in firing if all(_matches(m, a) for m in rule.source)]
        for target in firing:
            source = next((a for a in sources if a is not target), None)
            if source and target.name not in held and all(_matches(m, target) for m in rule.target):
                held[target.name] = source.name
    return held


def inhibition_in_time(source: str, target: str, timing: Timing, scrape_s: float) -> bool:
    """Whether ``source`` reaches Alertmanager before ``target``'s group is first notified, in every case:
    the target's earliest firing plus the group wait is no earlier than the source's latest firing."""
    return (firing_window(target, timing, scrape_s).earliest + seconds(timing.group_wait)
            >= firing_window(source, timing, scrape_s).latest)


# -- promtool tests --------------------------------------------------------------------------


def _expand(text: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def _exp_alert(alert: Alert) -> dict[str, object]:
    labels = {**alert.fired_labels, "severity": alert.severity, **({"slo": alert.slo} if alert.slo else {})}
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": _expand(alert.summary, labels),
                            "description": _expand(alert.description, labels),
                            "runbook_url": runbook_url(alert.name)},
    }


def _test(alert: Alert, case: Case, firing: bool) -> dict[str, object]:
    what = "fires" if firing else "stays quiet"
    return {
        "name": f"{alert.name} {what}",
        "interval": case.interval,
        "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
        "alert_rule_test": [{"eval_time": case.at, "alertname": alert.name,
                             "exp_alerts": [_exp_alert(alert)] if firing else []}],
    }


def promtool_tests() -> dict[str, object]:
    """One firing and one quiet case per alert, against the committed rules (real timing)."""
    return {
        "rule_files": ["../../k8s/base/monitoring/alert-rules.yml"],
        "evaluation_interval": REAL.evaluation_interval,
        "tests": [t for a in alerts() for t in (_test(a, a.firing, True), _test(a, a.quiet, False))],
    }


# -- files -----------------------------------------------------------------------------------

HEADER = ("# Generated by labkit.platform.layers.monitoring.alerting (python -m labkit.platform.layers):\n"
          "# edit that module, not this file.\n")


def rules_path() -> str:
    return str(repo_root() / "k8s" / "base" / "monitoring" / "alert-rules.yml")


def alertmanager_path() -> str:
    return str(repo_root() / "k8s" / "base" / "monitoring" / "alertmanager.yml")


def tests_path() -> str:
    return str(repo_root() / "tests" / "monitoring" / "alert-rules.test.yml")


def dump(document: Mapping[str, object]) -> str:
    import yaml

    class _Literal(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Literal.add_representer(str, _str)
    return HEADER + yaml.dump(dict(document), Dumper=_Literal, sort_keys=False, width=120, allow_unicode=True)


def files(timing: Timing = REAL) -> dict[str, str]:
    """The generated files by path: the rules and Alertmanager's config with ``timing``, and the tests."""
    return {
        rules_path(): dump(rules(timing)),
        alertmanager_path(): dump(alertmanager_config(timing)),
        tests_path(): dump(promtool_tests()),
    }

