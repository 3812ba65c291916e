"""Platform: the OTT services' own metrics, per service and route.

Rate, errors and duration (``ott_http_*``, every service), license decisions by reason, CAS
decisions and sessions started, entitlement checks, the transcoder's jobs and speed, and the service
mesh as its Envoy sidecars count it (job ``envoy-stats``, Istio's ``cluster_name`` label, one series per
destination cluster such as ``outbound|8000||license.ottlab.svc.cluster.local``): requests, retries,
timeouts, outlier ejections, circuit-breaker overflows and upstream latency. Those panels have data
with the mesh on (``OTTLAB_MESH=strict`` or ``permissive``, and on kube with Istio's sidecars).
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
from labkit.platform.mesh import STATS_JOB

UID = "ottlab-platform"
TITLE = "Platform"
SERVICE = '{service=~"$service"}'
REQUESTS = f"rate(ott_http_requests_total{SERVICE}[{RATE}])"
ERRORS = f'rate(ott_http_requests_total{{service=~"$service", status=~"5.."}}[{RATE}])'


# The sidecars' outbound clusters of the services the $service variable selects (a subset, a canary's v1/v2, included).
MESH = f'{{job="{STATS_JOB}", cluster_name=~"outbound\\\\|[0-9]+\\\\|[^|]*\\\\|($service)\\\\..+"}}'


def _mesh_rate(counter: str) -> str:
    """Per second, by destination cluster, summed over every sidecar that calls it."""
    return f"sum by (cluster_name) (rate({counter}{MESH}[{RATE}]))"


def _latency(q: float, by: str) -> str:
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate(ott_http_request_duration_seconds_bucket{SERVICE}[{RATE}])))")


def build() -> dict[str, Any]:
    latency = rising(0.25, 0.5)   # an API answer the player waits for: a quarter second is felt
    errors = rising(0.001, 0.01)
    return dashboard(UID, TITLE, __doc__ or "", [
        variable("service", "Service", "ott_http_requests_total"),
    ], [
        ("Now", [
            stat("API requests", "Requests the services answered per second", "reqps", Query(f"sum({REQUESTS})")),
            stat("API 5xx", "Share of answers that were server errors", "percentunit",
                 Query(f"(sum({ERRORS}) or 0 * sum({REQUESTS})) / sum({REQUESTS})"), steps=errors),
            stat("API p95", "95th percentile of the services' answer time", "s",
                 Query(f"histogram_quantile(0.95, sum by (le) "
                       f"(rate(ott_http_request_duration_seconds_bucket{SERVICE}[{RATE}])))"), steps=latency),
            stat("CAS sessions started", "Streams CAS granted per second", "cps",
                 Query(f'sum(rate(ott_cas_decisions_total{{decision="grant"}}[{RATE}]))')),
            stat("Transcoder speed", "Encode speed of the published jobs, × realtime (mean since start)", "suffix:×",
                 Query("sum(ott_transcode_speed_ratio_sum) / sum(ott_transcode_speed_ratio_count)"),
                 steps=falling(1, 2)),
            stat("Transcode jobs waiting", "Jobs queued and running", "short",
                 Query("sum(ott_transcode_jobs_queued) + sum(ott_transcode_jobs_running)")),
        ]),
        ("Rate, errors, duration", [
            timeseries("Requests per service and route", "Answers per second", "reqps",
                       Query(f"sum by (service, route) ({REQUESTS})", "{{service}} {{route}}"), minimum=0),
            timeseries("5xx share per service", "Server errors / answers", "percentunit",
                       Query(f"(sum by (service) ({ERRORS}) or 0 * sum by (service) ({REQUESTS}))"
                             f" / sum by (service) ({REQUESTS})", "{{service}}"), steps=errors, minimum=0),
            timeseries("Answers by status per service", "Answers per second, by HTTP status", "reqps",
                       Query(f"sum by (service, status) ({REQUESTS})", "{{service}} {{status}}"), minimum=0),
            timeseries("Duration p95 per service and route", "95th percentile of the answer time", "s",
                       Query(_latency(0.95, "service, route"), "{{service}} {{route}}"), steps=latency, minimum=0),
        ]),
        ("Decisions", [
            timeseries("License decisions by reason", "Authorisations and key deliveries per second", "cps",
                       Query(f"sum by (decision, reason) (rate(ott_license_decisions_total[{RATE}]))",
                             "{{decision}} {{reason}}"), minimum=0),
            timeseries("CAS decisions by reason", "Stream starts granted or refused per second", "cps",
                       Query(f"sum by (decision, reason) (rate(ott_cas_decisions_total[{RATE}]))",
                             "{{decision}} {{reason}}"), minimum=0),
            timeseries("Entitlement checks", "Subscription decisions per second", "cps",
                       Query(f"sum by (result, reason) (rate(ott_entitlement_checks_total[{RATE}]))",
                             "{{result}} {{reason}}"), minimum=0),
        ]),
        ("Transcoder", [
            timeseries("Transcode jobs by outcome", "Jobs ended since the transcoder started", "short",
                       Query("sum by (outcome) (ott_transcode_jobs_total)", "{{outcome}}"), minimum=0),
            timeseries("Transcode queue", "Jobs waiting and running", "short",
                       Query("sum(ott_transcode_jobs_queued)", "queued"),
                       Query("sum(ott_transcode_jobs_running)", "running"), minimum=0),
            timeseries("Transcode speed", "Mean encode speed of the published jobs, × realtime", "suffix:×",
                       Query("sum(ott_transcode_speed_ratio_sum) / sum(ott_transcode_speed_ratio_count)", "speed"),
                       steps=falling(1, 2), minimum=0),
        ]),
        ("Service mesh (Envoy sidecars)", [
            timeseries("Mesh requests per destination", "Requests the sidecars sent to each destination cluster, "
                       "per second", "reqps",
                       Query(_mesh_rate("envoy_cluster_upstream_rq_total"), "{{cluster_name}}"), minimum=0),
            timeseries("Mesh p95 upstream latency", "95th percentile of the time a destination took to answer the "
                       "calling sidecar (retries included)", "ms",
                       Query(f"histogram_quantile(0.95, sum by (cluster_name, le) "
                             f"(rate(envoy_cluster_upstream_rq_time_bucket{MESH}[{RATE}])))", "{{cluster_name}}"),
                       steps=rising(250, 500), minimum=0),
            timeseries("Mesh retries", "Retries the sidecars made (VirtualService retries), per second", "reqps",
                       Query(_mesh_rate("envoy_cluster_upstream_rq_retry"), "{{cluster_name}}"), minimum=0),
            timeseries("Mesh timeouts", "Requests cut by the route's timeout, and tries cut by the per-try timeout, "
                       "per second", "reqps",
                       Query(_mesh_rate("envoy_cluster_upstream_rq_timeout"), "{{cluster_name}} route"),
                       Query(_mesh_rate("envoy_cluster_upstream_rq_per_try_timeout"), "{{cluster_name}} per try"),
                       minimum=0),
            timeseries("Mesh outlier ejections", "Hosts ejected by outlier detection (DestinationRule), per second",
                       "cps", Query(_mesh_rate("envoy_cluster_outlier_detection_ejections_enforced_total"),
                                    "{{cluster_name}}"), minimum=0),
            timeseries("Mesh pending overflow", "Requests refused by the connection pool's circuit breaker "
                       "(http1MaxPendingRequests), per second", "reqps",
                       Query(_mesh_rate("envoy_cluster_upstream_rq_pending_overflow"), "{{cluster_name}}"),
                       minimum=0),
        ]),
    ])
