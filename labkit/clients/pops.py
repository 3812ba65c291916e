"""The CDN layer seen from a notebook: the PoPs' URLs, signed URLs you can reach, waits on their logs and metrics.

On the local target every PoP is a port of this machine and its access log a file; on Kubernetes
each PoP is a pod of the edge StatefulSet with a Service of its own, reached at its node port or a
port-forward of its own (labkit.targets.kube.entry), and its access log is in its pod's log. A PoP's
access log is :meth:`labkit.targets.base.Target.access_log`::

    pops = pop_urls(target)                               # {"edge-0": "http://127.0.0.1:18100", ...}
    url = reachable(grant["playback"][0]["url"], pops)    # license's signed URL, via a URL of this machine

a bounded wait until the access logs hold the requests of some CMCD sessions (``wait_for_sessions``),
and two small Prometheus helpers: the value of a query per label (``values_by``) and a bounded wait
until a counter has caught up with requests just sent (``wait_for_values``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import httpx

from labkit.analysis import experience
from labkit.core.wait import until
from labkit.platform.layers import cdn
from labkit.targets.base import Target

if TYPE_CHECKING:
    import pandas as pd

    from labkit.clients.prometheus import Prometheus


def pop_urls(target: Target) -> dict[str, str]:
    """Every running PoP's URL by its id; on a target whose PoPs share one Service: ``{"edge": <its URL>}``."""
    for status in target.status():
        if status.name == cdn.EDGE.name and status.replica_urls:
            return dict(status.replica_urls)
    return {cdn.EDGE.name: target.endpoint(cdn.EDGE.name)}


def reachable(url: str, pops: Mapping[str, str], pop: str | None = None) -> str:
    """``url`` (a signed URL license issued for a PoP) through the URL this machine reaches that PoP at.

    The URL's path and query are kept; its scheme, host and port become those of ``pops[pop]``, or
    of the only PoP when there is one entry (a Service in front of every PoP), or are kept when the
    URL already names one of ``pops``.

    >>> reachable("http://edge-0.cdn:8080/s/t/1/a/m.m3u8", {"edge": "http://127.0.0.1:40001"})
    'http://127.0.0.1:40001/s/t/1/a/m.m3u8'
    >>> reachable("http://127.0.0.1:18101/s/t/1/a/m.m3u8", {"edge-0": "http://127.0.0.1:18100",
    ...                                                      "edge-1": "http://127.0.0.1:18101"})
    'http://127.0.0.1:18101/s/t/1/a/m.m3u8'
    """
    parsed = httpx.URL(url)
    if pop is None:
        if any(httpx.URL(base).netloc == parsed.netloc for base in pops.values()):
            return url
        if len(pops) != 1:
            raise ValueError(f"{url} is at none of the PoPs {sorted(pops)}: name the PoP to reach it through")
        pop = next(iter(pops))
    base = httpx.URL(pops[pop])
    return str(parsed.copy_with(scheme=base.scheme, host=base.host, port=base.port))


def wait_for_sessions(target: Target, sessions: Collection[str], window: Sequence[float], *,
                      timeout: float = 60.0, interval: float = 0.5,
                      settle: float = cdn.LOG_FLUSH_S) -> pd.DataFrame:
    """Every PoP's requests started in ``window`` (epoch seconds, start and end), once ``sessions`` are all in them.

    The answer is :func:`labkit.analysis.experience.edge_requests` rows (one per request, with its CMCD) from the
    access logs of every local PoP, read again every ``interval`` seconds until each CMCD session id
    (``sid``) of ``sessions`` has a request there. A PoP writes its log buffer every ``settle``
    seconds (:data:`labkit.platform.layers.cdn.LOG_FLUSH_S`), so the logs are read last at least that long after
    this call: the last requests of sessions that ended before it are in too. Bounded by
    ``timeout`` seconds (:class:`labkit.core.errors.TimeoutExpired`, naming the sessions still missing)::

        requests = wait_for_sessions(target, set(audience.sessions["session"]), (t0, t1), timeout=120)
        edge = experience.edge_sessions(requests)

    The logs come from :meth:`labkit.targets.base.Target.access_log`: a target that cannot read them
    says why at once (:class:`labkit.core.errors.MissingCapabilityError`).
    """
    start, end = float(window[0]), float(window[1])
    wanted = set(sessions)
    every_pop = sorted(pop_urls(target))
    replicas = len(every_pop)
    settled = time.monotonic() + settle
    missing = sorted(wanted)
    requests = experience.edge_requests([])

    def all_in() -> bool:
        nonlocal missing, requests
        records = [r for pop in every_pop for r in target.access_log(pop)]
        requests = experience.edge_requests(records)
        requests = requests[requests["started"].between(start, end)].reset_index(drop=True)
        missing = sorted(wanted - set(requests["sid"].dropna()))
        return not missing and time.monotonic() >= settled

    def still_missing() -> str:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        return f"{len(missing)} of {len(wanted)} sessions in the access logs of {replicas} PoP(s) (missing: {shown})"

    until(all_in, max(timeout, settle), interval, still_missing,
          hint="were they played through these PoPs, in this window? Else raise the timeout")
    return requests


def values_by(prom: Prometheus, promql: str, by: str) -> dict[str, float]:
    """An instant query's value per value of the label ``by`` (``{}`` when it has no series yet)::

        values_by(prom, "sum by (pop)(ott_edge_requests_total)", "pop")   # {"edge-0": 812.0, ...}
    """
    frame = prom.query(promql)
    if frame.empty or by not in frame.columns:
        return {}
    return {str(k): float(v) for k, v in zip(frame[by], frame["value"], strict=True)}


def wait_for_values(prom: Prometheus, promql: str, *, by: str, at_least: Mapping[str, float],
                    timeout: float = 60.0, interval: float = 1.0) -> dict[str, float]:
    """Wait until :func:`values_by` reaches ``at_least[g]`` for every group ``g``; the values then.

    For a counter and requests just sent: Prometheus has them once it scraped the exporters after
    the last one (every few seconds), so the wait is short and bounded by ``timeout`` seconds
    (:class:`labkit.core.errors.TimeoutExpired`, with the last values seen).
    """
    values: dict[str, float] = {}

    def reached() -> bool:
        nonlocal values
        values = values_by(prom, promql, by)
        return all(values.get(group, float("-inf")) >= minimum for group, minimum in at_least.items())

    wanted = ", ".join(f"{g} >= {m:g}" for g, m in sorted(at_least.items()))
    until(reached, timeout, interval, lambda: f"{promql!r} to reach {wanted} (last seen: {values})")
    return values
