"""The HorizontalPodAutoscaler's algorithm, as Kubernetes documents and implements it, with an injected clock.

Source: https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/ ("Algorithm
details", "Stabilization window", "Scaling policies"), and the controller it describes
(kubernetes/pkg/controller/podautoscaler: replica_calculator.go, horizontal.go). Per sync:

1. per metric, the pods are grouped: not running (pending) or, for cpu, not ready: *unready*; no sample:
   *missing*; else ready. ``ratio = mean(ready values) / target``; within the tolerance of 1.0
   (``--horizontal-pod-autoscaler-tolerance``, 0.1) nothing changes, else ``ceil(ratio × ready pods)``.
   With missing pods (assumed at 100% of the target on a scale-down, 0 on a scale-up) or unready pods on
   a scale-up (assumed 0), the ratio is recomputed; if it flips direction or falls within the
   tolerance, nothing changes;
2. the largest proposal across metrics wins; a metric that cannot be computed blocks a scale-down;
3. current replicas outside min/max go to the bound; otherwise the proposal is stabilized (scale-down:
   the highest recommendation of the window, 300 s by default; scale-up: the lowest of its window,
   0 s) and limited by the ``behavior`` policies (Pods or Percent per periodSeconds, selectPolicy
   Max, Min or Disabled), then by min/max.

Example::

    scaler = Autoscaler(hpa, clock=lambda: now)
    decision = scaler.decide(current=2, samples={"cpu": [PodSample("a", 160), PodSample("b", 200)]})
    decision.desired, decision.reason
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from labkit.platform.hpa import DEFAULT_TOLERANCE, Hpa, MetricTarget, ScalingRules


@dataclass(frozen=True)
class PodSample:
    """One replica's value of one metric: ``None`` when the metrics source has none (missing)."""

    pod: str
    value: float | None
    ready: bool = True
    running: bool = True


@dataclass(frozen=True)
class MetricProposal:
    """What one metric asks for."""

    metric: str
    current: float | None  # the average over ready pods with a value (what `kubectl get hpa` shows)
    target: float
    replicas: int | None  # None: the metric could not be computed
    detail: str = ""
    # Each pod's value as read (None: missing) and whether it counted as ready.
    pods: tuple[tuple[str, float | None, bool], ...] = ()


@dataclass(frozen=True)
class Decision:
    """One sync of one HPA: what the metrics asked, what was decided and why."""

    at: float
    hpa: str
    target: str
    current: int
    proposed: int  # the metrics' proposal, before stabilization and policies
    desired: int
    reason: str  # ScaleUpStabilized, ScaleDownLimit, TooFewReplicas, DesiredWithinRange, ...
    rescale_reason: str  # "cpu above target", "All metrics below target", ...
    metrics: tuple[MetricProposal, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at, "hpa": self.hpa, "target": self.target, "current": self.current,
            "proposed": self.proposed, "desired": self.desired, "reason": self.reason,
            "rescale_reason": self.rescale_reason,
            "metrics": [{"metric": m.metric, "current": m.current, "target": m.target, "replicas": m.replicas,
                         "detail": m.detail, "pods": [list(p) for p in m.pods]} for m in self.metrics],
        }


def within_tolerance(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


def metric_replicas(current: int, samples: Sequence[PodSample], target: float, *, cpu: bool,
                    tolerance: float = DEFAULT_TOLERANCE) -> tuple[int, float]:
    """``(replicas, usage)`` for one metric: replica_calculator.go's calcPlainMetricReplicas.

    As there, values are whole numbers: a cpu utilization is a whole percent (the mean truncated),
    any other value is counted in thousandths (Kubernetes' milli-units) and its mean truncated, so
    that 200m against 100m is exactly 2. ``usage`` is the mean over the ready pods that have a
    value, in the metric's unit. A ValueError when no pod has one.
    """
    scale = 1 if cpu else 1000
    goal = round(target * scale)
    ready: dict[str, int] = {}
    unready: list[str] = []
    missing: list[str] = []
    for s in samples:
        if not s.running:
            unready.append(s.pod)
        elif s.value is None:
            missing.append(s.pod)
        elif cpu and not s.ready:
            unready.append(s.pod)
        else:
            # A utilization is summed as a percent and truncated once, as usage x 100 / request is.
            ready[s.pod] = s.value if cpu else round(s.value * scale)  # type: ignore[assignment]
    if not ready:
        raise ValueError("no metrics for the targeted pods (they may be unready)")

    def mean(values: Mapping[str, float]) -> int:
        return int(sum(values.values()) // len(values))

    usage = mean(ready)
    ratio = usage / goal
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if within_tolerance(ratio, tolerance):
            return current, usage / scale
        return math.ceil(ratio * len(ready)), usage / scale
    values: dict[str, float] = dict(ready)
    for pod in missing:
        values[pod] = goal if ratio < 1.0 else 0
    if scale_up_with_unready:
        for pod in unready:
            values[pod] = 0
    new_ratio = mean(values) / goal
    if within_tolerance(new_ratio, tolerance) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current, usage / scale
    replicas = math.ceil(new_ratio * len(values))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current, usage / scale
    return replicas, usage / scale


@dataclass
class _Event:
    at: float
    change: int


@dataclass
class Autoscaler:
    """One HPA's controller state: its recommendations and scale events, on an injected clock (seconds)."""

    hpa: Hpa
    clock: Callable[[], float] = time.monotonic
    tolerance: float = DEFAULT_TOLERANCE
    # (time, recommendation) of past syncs; scale events, for the policies' periods.
    recommendations: list[tuple[float, int]] | None = None
    up_events: list[_Event] = field(default_factory=list)
    down_events: list[_Event] = field(default_factory=list)

    def decide(self, current: int, samples: Mapping[str, Sequence[PodSample]]) -> Decision:
        """The replicas this HPA wants now, given each metric's per-pod samples (by metric name).

        Call it once per sync with ``current`` = the replicas the target runs (its spec); scale to
        ``desired`` when it differs, then report it with :meth:`scaled` so the policies count it.
        """
        hpa = self.hpa
        now = self.clock()
        proposals = tuple(self._proposal(m, current, samples.get(m.name, ())) for m in hpa.metrics)
        if current > hpa.max_replicas:
            return self._decision(now, current, current, hpa.max_replicas, "TooManyReplicas",
                                  "Current number of replicas above Spec.MaxReplicas", proposals)
        if current < hpa.min_replicas:
            return self._decision(now, current, current, hpa.min_replicas, "TooFewReplicas",
                                  "Current number of replicas below Spec.MinReplicas", proposals)
        computed = [p for p in proposals if p.replicas is not None]
        proposed = max((p.replicas for p in computed if p.replicas is not None), default=0)
        invalid = len(proposals) - len(computed)
        if invalid >= len(proposals) or (invalid and proposed < current):
            # horizontal.go: no metric, or some missing while the rest say down: no scaling at all.
            return self._decision(now, current, current, current, "FailedGetMetrics",
                                  "invalid metrics (" + "; ".join(p.detail for p in proposals if p.replicas is None)
                                  + "), no scale-down", proposals)
        winner = next(p for p in computed if p.replicas == proposed)
        if proposed > current:
            rescale = f"{winner.metric} above target"
        elif proposed < current:
            rescale = "All metrics below target"
        else:
            rescale = ""
        stabilized, reason = self._stabilize(now, current, proposed)
        desired, limit_reason = self._limit(now, current, stabilized)
        if limit_reason != "DesiredWithinRange" or stabilized == proposed:
            reason = limit_reason
        return self._decision(now, current, proposed, desired, reason, rescale, proposals)

    def scaled(self, previous: int, new: int) -> None:
        """Record that the target went from ``previous`` to ``new`` replicas now (horizontal.go storeScaleEvent)."""
        if new == previous:
            return
        now = self.clock()
        if new > previous:
            self._store(self.up_events, self.hpa.scale_up, now, new - previous)
        else:
            self._store(self.down_events, self.hpa.scale_down, now, previous - new)

    # -- the steps ----------------------------------------------------------------------------

    def _proposal(self, metric: MetricTarget, current: int, samples: Sequence[PodSample]) -> MetricProposal:
        if not samples:
            return MetricProposal(metric.name, None, metric.target, None, "no pods to read it from")
        pods = tuple((s.pod, s.value, s.running and (s.ready or not metric.is_cpu)) for s in samples)
        try:
            replicas, usage = metric_replicas(current, samples, metric.target, cpu=metric.is_cpu,
                                              tolerance=self.tolerance)
        except ValueError as exc:
            return MetricProposal(metric.name, None, metric.target, None, f"{metric.name}: {exc}", pods)
        return MetricProposal(metric.name, usage, metric.target, replicas, pods=pods)

    def _stabilize(self, now: float, current: int, proposed: int) -> tuple[int, str]:
        """horizontal.go stabilizeRecommendationWithBehaviors (windows of both directions)."""
        if self.recommendations is None:
            # maybeInitScaleDownStabilizationWindow: a new HPA starts with the current count recorded.
            self.recommendations = ([(now, current)] if self.hpa.scale_down.stabilization_window_seconds > 0 else [])
        up_cutoff = now - self.hpa.scale_up.stabilization_window_seconds
        down_cutoff = now - self.hpa.scale_down.stabilization_window_seconds
        up, down = proposed, proposed
        old = None
        for i, (at, rec) in enumerate(self.recommendations):
            if at > up_cutoff:
                up = min(up, rec)
            if at > down_cutoff:
                down = max(down, rec)
            if at < up_cutoff and at < down_cutoff:
                old = i
        recommendation = max(current, up)
        recommendation = min(recommendation, down)
        if old is not None:
            self.recommendations[old] = (now, proposed)
        else:
            self.recommendations.append((now, proposed))
        return recommendation, "ScaleUpStabilized" if proposed >= current else "ScaleDownStabilized"

    def _limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """horizontal.go convertDesiredReplicasWithBehaviorRate: the policies, then min/max."""
        hpa = self.hpa
        if desired > current:
            limit = max(current, self._up_limit(now, current))
            if hpa.max_replicas > limit:
                allowed, why = limit, "ScaleUpLimit"
            else:
                allowed, why = hpa.max_replicas, "TooManyReplicas"
            if desired > allowed:
                return allowed, why
        elif desired < current:
            limit = min(current, self._down_limit(now, current))
            if hpa.min_replicas < limit:
                allowed, why = limit, "ScaleDownLimit"
            else:
                allowed, why = hpa.min_replicas, "TooFewReplicas"
            if desired < allowed:
                return allowed, why
        return desired, "DesiredWithinRange"

    def _up_limit(self, now: float, current: int) -> int:
        rules = self.hpa.scale_up
        if rules.select_policy == "Disabled":
            return current
        pick = min if rules.select_policy == "Min" else max
        result: int | None = None
        for p in rules.policies:
            start = current - _changed(self.up_events, now, p.period_seconds) + _changed(
                self.down_events, now, p.period_seconds)
            proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _down_limit(self, now: float, current: int) -> int:
        rules = self.hpa.scale_down
        if rules.select_policy == "Disabled":
            return current
        # Scaling down, the largest change is the lowest count: Max picks min, Min picks max.
        pick = max if rules.select_policy == "Min" else min
        result: int | None = None
        for p in rules.policies:
            start = current - _changed(self.up_events, now, p.period_seconds) + _changed(
                self.down_events, now, p.period_seconds)
            proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _store(self, events: list[_Event], rules: ScalingRules, now: float, change: int) -> None:
        longest = max((p.period_seconds for p in rules.policies), default=0)
        for event in events:
            if event.at < now - longest:  # outdated (markScaleEventsOutdated): reuse its slot
                event.at, event.change = now, change
                return
        events.append(_Event(now, change))

    def _decision(self, now: float, current: int, proposed: int, desired: int, reason: str, rescale: str,
                  proposals: tuple[MetricProposal, ...]) -> Decision:
        return Decision(now, self.hpa.name, self.hpa.target, current, proposed, desired, reason, rescale, proposals)


def _changed(events: Sequence[_Event], now: float, period: int) -> int:
    """horizontal.go getReplicasChangePerPeriod: the change of the events newer than ``period`` seconds."""
    return sum(e.change for e in events if e.at > now - period)
