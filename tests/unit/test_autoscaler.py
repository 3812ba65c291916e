"""The local autoscaler's algorithm against the Kubernetes documentation's worked examples.

Doc: https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/ (sections
"Algorithm details", "Stabilization window", "Scaling policies", "Default Behavior" and the behavior
examples). The clock is injected: every sync happens at a time the test sets.
"""

from __future__ import annotations

from typing import Any

import pytest

from labkit.core.errors import ConfigError
from labkit.platform import hpa as hpa_mod
from labkit.platform.autoscaler import Autoscaler, PodSample, metric_replicas
from labkit.platform.hpa import Hpa, MetricTarget, Policy, ScalingRules


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pods(*values: float | None, ready: bool = True) -> list[PodSample]:
    return [PodSample(f"p{i}", v, ready) for i, v in enumerate(values)]


CPU = MetricTarget("Resource", "cpu", "Utilization", 50.0)
MILLI = MetricTarget("Pods", "work", "AverageValue", 0.1)  # 100m


def make(*, min_r: int = 1, max_r: int = 100, metrics: tuple[MetricTarget, ...] = (MILLI,),
         up: ScalingRules = hpa_mod.DEFAULT_SCALE_UP, down: ScalingRules = hpa_mod.DEFAULT_SCALE_DOWN) -> Hpa:
    return Hpa("web", "web", min_r, max_r, metrics, up, down)


def run(scaler: Autoscaler, clock: Clock, current: int, value_of: Any, steps: int, every: float) -> list[int]:
    """Sync ``steps`` times, ``every`` seconds apart, scaling as decided; the replica counts after each sync."""
    counts = []
    for _ in range(steps):
        decision = scaler.decide(current, {m.name: pods(*[value_of(current)] * current) for m in scaler.hpa.metrics})
        scaler.scaled(current, decision.desired)
        current = decision.desired
        counts.append(current)
        clock.now += every
    return counts


# -- Algorithm details ---------------------------------------------------------------------------


def test_200m_against_100m_doubles_the_replicas() -> None:
    """Doc, "Algorithm details": "if the current metric value is 200m, and the desired value is 100m,
    the number of replicas will be doubled, since 200.0 / 100.0 == 2.0"."""
    assert metric_replicas(3, pods(0.2, 0.2, 0.2), 0.1, cpu=False) == (6, 0.2)
    clock = Clock()
    decision = Autoscaler(make(), clock).decide(3, {"work": pods(0.2, 0.2, 0.2)})
    assert (decision.proposed, decision.desired, decision.rescale_reason) == (6, 6, "work above target")


def test_50m_against_100m_halves_the_replicas() -> None:
    """Doc: "If the current value is instead 50m, you'll halve the number of replicas, since 50.0 / 100.0 == 0.5"."""
    assert metric_replicas(4, pods(0.05, 0.05, 0.05, 0.05), 0.1, cpu=False)[0] == 2


def test_a_ratio_within_the_tolerance_changes_nothing() -> None:
    """Doc: "The control plane skips any scaling action if the ratio is sufficiently close to 1.0 (within a
    globally-configurable tolerance, 0.1 by default)" (--horizontal-pod-autoscaler-tolerance)."""
    assert metric_replicas(10, pods(*[0.108] * 10), 0.1, cpu=False)[0] == 10  # ratio 1.08
    assert metric_replicas(10, pods(*[0.092] * 10), 0.1, cpu=False)[0] == 10  # ratio 0.92
    assert metric_replicas(10, pods(*[0.112] * 10), 0.1, cpu=False)[0] == 12  # ratio 1.12: ceil(11.2)
    # A tighter global tolerance acts on 1.08.
    assert metric_replicas(10, pods(*[0.108] * 10), 0.1, cpu=False, tolerance=0.05)[0] == 11


def test_fifty_replicas_at_90_percent_against_75_go_to_sixty() -> None:
    """Kubernetes v1.33 blog, "HPA configurable tolerance" (2025-04-28): 50 replicas at 90% CPU with a 75%
    target: ratio 1.2, outside the default 10% tolerance, gives ceil(50 × 1.2) = 60 replicas."""
    cpu75 = MetricTarget("Resource", "cpu", "Utilization", 75.0)
    decision = Autoscaler(make(metrics=(cpu75,)), Clock()).decide(50, {"cpu": pods(*[90.0] * 50)})
    assert decision.proposed == 60
    # The default scale-up policies (100% or 4 pods per 15 s) allow it at once.
    assert decision.desired == 60


def test_missing_pods_count_as_the_target_on_a_scale_down() -> None:
    """Doc: missing-metric pods are assumed to consume 100% of the desired value in case of a scale down
    (and 0% on a scale up), then the ratio is recomputed, damping the move."""
    # 4 pods, 3 report 50m (ratio 0.5): 4 × 0.5 = 2 without the fourth; with it at 100m: ceil(4 × 0.625) = 3.
    assert metric_replicas(4, pods(0.05, 0.05, 0.05, None), 0.1, cpu=False)[0] == 3
    # A scale up: the missing pod counts as 0. 3 report 200m: mean over 4 = 150m, ceil(4 × 1.5) = 6 (not 8).
    assert metric_replicas(4, pods(0.2, 0.2, 0.2, None), 0.1, cpu=False)[0] == 6
    # The recomputed ratio within the tolerance: no action. 3 at 115m + one missing (0): 86.25m -> reverses: none.
    assert metric_replicas(4, pods(0.115, 0.115, 0.115, None), 0.1, cpu=False)[0] == 4


def test_not_yet_ready_pods_count_as_zero_on_a_cpu_scale_up() -> None:
    """Doc: "if any pod has not yet become ready ... and the HPA would scale up, not-yet-ready pods are assumed
    to consume 0% of the desired metric, further dampening the magnitude of a scale up"."""
    samples = [*pods(100.0, 100.0), PodSample("new", 5.0, ready=False)]
    # Ready pods at 100% of a 50% target: ratio 2, 2 ready -> 4; with the new pod at 0: 200/3/50 -> ceil(3 × 1.33) = 4.
    assert metric_replicas(3, samples, 50.0, cpu=True)[0] == 4
    samples = [*pods(60.0, 60.0), PodSample("new", 5.0, ready=False)]
    # 60% against 50%: ratio 1.2 from the ready pods, but (60+60+0)/3 = 40%: reverses direction, no action.
    assert metric_replicas(3, samples, 50.0, cpu=True)[0] == 3
    # Not-ready pods are ignored only for cpu: a Pods metric reads them as they report.
    assert metric_replicas(3, samples, 50.0, cpu=False)[0] == 3  # (60+60+5)/3 = 41.7%: ceil(3 × 0.83) = 3


def test_the_largest_proposal_across_metrics_wins_and_a_missing_metric_blocks_a_scale_down() -> None:
    """Doc, "Scaling on multiple metrics": "calculate proposed replica counts for each metric, and then set
    the workload to the highest"; "if some metrics cannot be computed and the computable ones suggest a scale
    down, no scaling" (a scale up still happens)."""
    scaler = Autoscaler(make(metrics=(CPU, MILLI), down=ScalingRules(0, (Policy("Percent", 100, 15),))), Clock())
    decision = scaler.decide(2, {"cpu": pods(100.0, 100.0), "work": pods(0.05, 0.05)})
    assert [m.replicas for m in decision.metrics] == [4, 1]
    assert (decision.desired, decision.rescale_reason) == (4, "cpu above target")
    blocked = scaler.decide(4, {"cpu": pods(10.0, 10.0, 10.0, 10.0)})
    assert (blocked.desired, blocked.reason) == (4, "FailedGetMetrics")
    grows = scaler.decide(4, {"cpu": pods(100.0, 100.0, 100.0, 100.0)})
    assert grows.desired == 8


def test_min_and_max_replicas_bound_the_result() -> None:
    scaler = Autoscaler(make(min_r=2, max_r=5), Clock())
    assert (d := scaler.decide(3, {"work": pods(0.5, 0.5, 0.5)})).desired == 5 and d.reason == "TooManyReplicas"
    assert scaler.decide(7, {"work": pods(*[0.1] * 7)}).desired == 5  # above max: to max at once
    assert scaler.decide(1, {"work": pods(0.1)}).desired == 2  # below min: to min


# -- Stabilization window --------------------------------------------------------------------------


def test_scale_down_waits_for_the_highest_recommendation_of_the_window() -> None:
    """Doc, "Stabilization window": "the algorithm ... infers a previous desired state and uses the highest
    value from the specified interval"; the default scaleDown window is 300 s."""
    clock = Clock()
    scaler = Autoscaler(make(), clock)
    # 10 replicas at 50m (proposal 5), every 15 s: held at 10 for the window (the HPA starts with 10 recorded).
    counts = run(scaler, clock, 10, lambda n: 0.05 * 10 / n, steps=22, every=15)
    assert counts[:20] == [10] * 20  # t = 0 .. 285 s
    assert counts[20] == 5  # t = 300 s: the recommendation of t = 0 (10) left the window
    # A burst inside the window holds the count: a 9 recommended 60 s ago keeps 9 of 10.
    clock2 = Clock()
    scaler2 = Autoscaler(make(down=ScalingRules(120, (Policy("Percent", 100, 15),))), clock2)
    assert scaler2.decide(10, {"work": pods(*[0.085] * 10)}).desired == 10  # 9 proposed, window starts at 10
    clock2.now += 130
    assert scaler2.decide(10, {"work": pods(*[0.085] * 10)}).desired == 9
    clock2.now += 15
    decision = scaler2.decide(10, {"work": pods(*[0.05] * 10)})  # proposes 5; the window still holds 9
    assert (decision.desired, decision.reason) == (9, "ScaleDownStabilized")


# -- Scaling policies ------------------------------------------------------------------------------


def test_four_pods_or_ten_percent_per_minute_the_larger_change() -> None:
    """Doc, "Scaling policies": scaleDown policies Pods 4 / 60 s and Percent 10 / 60 s. "if there are 80 replicas
    and the target has to be scaled down to 10 replicas then during the first step 8 replicas will be reduced. In
    the next iteration when the number of replicas is 72, 10% of the pods is 7.2 but the number is rounded up to 8
    ... When the number of replicas falls below 40 the first policy (Pods) is applied and 4 replicas will be
    reduced at a time." (The default 300 s window applies first: the doc's example leaves it unset.)"""
    clock = Clock()
    down = ScalingRules(300, (Policy("Pods", 4, 60), Policy("Percent", 10, 60)))
    scaler = Autoscaler(make(min_r=10, down=down), clock)
    counts = run(scaler, clock, 80, lambda n: 0.001, steps=76, every=15)  # far below target: down to minReplicas
    assert counts[:20] == [80] * 20  # the 300 s window
    # One change per minute (4 syncs 15 s apart); 10% rounded up while above 40, then 4 pods; 10 is minReplicas.
    assert counts[20::4] == [72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10]
    assert counts[20:24] == [72] * 4


def test_at_most_ten_percent_but_no_more_than_five_pods_per_minute_with_select_policy_min() -> None:
    """Doc, "Example: limit scale down rate": Percent 10 per 60 s; "to ensure that no more than 5 Pods are
    removed per minute, you can add a second scale-down policy with a fixed size of 5, and set selectPolicy to
    minimum" (the policy that changes the fewest Pods)."""
    down = ScalingRules(0, (Policy("Percent", 10, 60), Policy("Pods", 5, 60)), "Min")
    clock = Clock()
    scaler = Autoscaler(make(down=down), clock)
    assert scaler.decide(100, {"work": pods(*[0.001] * 100)}).desired == 95  # 10% would be 10: 5 wins
    assert scaler.decide(30, {"work": pods(*[0.001] * 30)}).desired == 27  # 10% of 30 is 3: fewer than 5
    only_percent = Autoscaler(make(down=ScalingRules(0, (Policy("Percent", 10, 60),))), Clock())
    assert only_percent.decide(100, {"work": pods(*[0.001] * 100)}).desired == 90


def test_select_policy_disabled_never_scales_that_way() -> None:
    """Doc, "Example: disable scale down": selectPolicy: Disabled."""
    scaler = Autoscaler(make(down=ScalingRules(0, (Policy("Percent", 100, 15),), "Disabled")), Clock())
    assert scaler.decide(10, {"work": pods(*[0.01] * 10)}).desired == 10
    assert scaler.decide(10, {"work": pods(*[0.5] * 10)}).desired == 20  # up is allowed (100% per 15 s)


def test_default_scale_up_is_four_pods_or_double_per_15_seconds() -> None:
    """Doc, "Default Behavior": scaleUp policies Percent 100 / 15 s and Pods 4 / 15 s, selectPolicy Max, no
    window: "the number of pods can be increased by 100% or 4 pods every 15 seconds, whichever is higher"."""
    clock = Clock()
    scaler = Autoscaler(make(), clock)
    counts = run(scaler, clock, 1, lambda n: 0.1 * 30 / n, steps=5, every=15)  # the metric wants 30
    assert counts == [5, 10, 20, 30, 30]  # 1+4; then doubling
    # Two syncs within the same 15 s: the second may not add on top of the first.
    clock2 = Clock()
    scaler2 = Autoscaler(make(), clock2)
    first = scaler2.decide(2, {"work": pods(*[1.0] * 2)})
    scaler2.scaled(2, first.desired)
    clock2.now += 5
    second = scaler2.decide(first.desired, {"work": pods(*[1.0] * first.desired)})
    assert (first.desired, second.desired, second.reason) == (6, 6, "ScaleUpLimit")


def test_the_lab_hpas_parse_and_name_their_components() -> None:
    from labkit import platform

    hpas = hpa_mod.load()
    hpa_mod.check(hpas, platform.components())
    assert {h.target for h in hpas} == {"auth", "catalog", "subscription", "license", "cas", "edge"}
    edge = next(h for h in hpas if h.target == "edge")
    assert [m.name for m in edge.metrics] == ["cpu", "ott_edge_egress_bytes_per_second", "ott_edge_sessions"]
    assert edge.metrics[2].target == 10
    rules = hpa_mod.adapter_rules()
    for h in hpas:
        for m in h.metrics:
            assert m.is_cpu or m.name in rules, f"{h.name}: {m.name} has no prometheus-adapter rule"


# -- bad input: a clear error before anything starts --------------------------------------------------


def _object(**spec: Any) -> dict[str, Any]:
    body = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "catalog"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
    body.update(spec)
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "bad"},
            "spec": body}


def test_an_hpa_naming_no_component_is_refused() -> None:
    from labkit import platform

    wrong = hpa_mod.parse(_object(scaleTargetRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "catalogue"}))
    with pytest.raises(ConfigError, match="scales 'catalogue', which is no component") as err:
        hpa_mod.check([wrong], platform.components())
    assert "catalog" in err.value.hint
    follower = hpa_mod.parse(_object(scaleTargetRef={"apiVersion": "apps/v1", "kind": "Deployment",
                                                     "name": "edge-exporter"}))
    with pytest.raises(ConfigError, match="follows edge"):
        hpa_mod.check([follower], platform.components())
    too_many = hpa_mod.parse(_object(maxReplicas=9))
    with pytest.raises(ConfigError, match=r"maxReplicas 9 is above catalog's max_replicas \(3\)"):
        hpa_mod.check([too_many], platform.components())


def test_min_above_max_and_malformed_objects_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"minReplicas \(3\) is above maxReplicas \(2\)"):
        hpa_mod.parse(_object(minReplicas=3, maxReplicas=2))
    with pytest.raises(ConfigError, match="apiVersion"):
        hpa_mod.parse({**_object(), "apiVersion": "autoscaling/v1"})
    with pytest.raises(ConfigError, match="no metrics"):
        hpa_mod.parse(_object(metrics=[]))
    with pytest.raises(ConfigError, match="memory"):
        hpa_mod.parse(_object(metrics=[{"type": "Resource", "resource": {
            "name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}}]))
    with pytest.raises(ConfigError, match="selectPolicy"):
        hpa_mod.parse(_object(behavior={"scaleDown": {"selectPolicy": "Largest"}}))


# -- the local controller, on a stand-in target and Prometheus ------------------------------------


class _Prometheus:
    """Answers the adapter rule's query with recorded per-replica values, and remembers the query."""

    url = "http://stand-in"

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries: list[str] = []

    def query(self, promql: str) -> Any:
        import pandas as pd

        self.queries.append(promql)
        return pd.DataFrame(self.rows)


class _Target:
    """The few LocalTarget methods the controller uses, over a replica count it scales."""

    def __init__(self, count: int, mesh: str = "off") -> None:
        from labkit import platform
        from labkit.core.config import LabConfig
        from labkit.targets.local import mesh as local_mesh

        self.cfg = LabConfig(base_port=40000, mesh=mesh)
        self.components = local_mesh.components(self.cfg, platform.components())
        self.count = count
        self.scaled: list[int] = []

    def component(self, name: str) -> Any:
        return next(c for c in self.components if c.name == name)

    def followers(self, name: str) -> list[Any]:
        return [c for c in self.components if c.follows == name]

    def replicas(self, name: str) -> int:
        return self.count

    def replica_states(self, name: str) -> dict[int, tuple[bool, bool]]:
        return {i: (True, True) for i in range(self.count)}

    def replica_pids(self, name: str, replica: int) -> list[int]:
        return []

    def scale(self, name: str, replicas: int) -> None:
        self.scaled.append(replicas)
        self.count = replicas


def test_the_controller_reads_the_adapter_rule_per_replica_and_scales() -> None:
    """A recorded series of catalog's requests/s per replica (the lab's own HPA: 50 per replica, one pod
    per 15 s up): each sync's decision is ceil(current × mean / 50) bounded by the policy, and the
    controller scales to it."""
    from labkit.targets.local.autoscaling import Controller

    catalog = next(h for h in hpa_mod.load() if h.name == "catalog")
    only_requests = Hpa(catalog.name, catalog.target, catalog.min_replicas, catalog.max_replicas,
                        (catalog.metrics[1],), catalog.scale_up, catalog.scale_down)
    target = _Target(1)
    port = target.component("catalog").local_port(target.cfg, "http", 0)
    # Recorded: 182 requests/s on the one replica, then 2 replicas sharing ~190/s, then the load gone.
    series = [[182.0], [95.0, 96.0], [97.0, 93.0, 0.0], [1.2, 1.1, 1.0]]
    prometheus = _Prometheus([])
    clock = Clock()
    controller = Controller(target, [only_requests], prometheus, clock=clock)  # type: ignore[arg-type]
    decisions = []
    for values in series:
        prometheus.rows = [{"instance": f"127.0.0.1:{port + i}", "value": v} for i, v in enumerate(values)]
        decisions += controller.sync()
        clock.now += 15
    assert prometheus.queries[0] == 'sum(rate(ott_http_requests_total{job=~"catalog"}[1m])) by (instance)'
    assert [(d.current, d.proposed, d.desired) for d in decisions] == [
        (1, 4, 2),  # ceil(1 × 182/50) = 4, one pod per 15 s: 2 (ScaleUpLimit)
        (2, 4, 3),  # mean 95.5: ceil(2 × 1.91) = 4; one more is maxReplicas (TooManyReplicas, as horizontal.go says)
        (3, 4, 3),  # mean 63.3 (the new replica at 0): ceil(3 × 1.27) = 4, capped at maxReplicas 3
        (3, 1, 3),  # idle: 1 proposed, held by the 300 s scale-down window
    ]
    assert [d.reason for d in decisions] == ["ScaleUpLimit", "TooManyReplicas", "TooManyReplicas",
                                             "ScaleDownStabilized"]
    assert target.scaled == [2, 3]
    assert controller.decisions["catalog"][0]["rescale_reason"] == "ott_http_requests_per_second above target"


def test_behind_its_sidecar_a_replica_is_read_at_the_port_prometheus_scrapes() -> None:
    """With the mesh, Prometheus scrapes catalog through its sidecar's plaintext health port (its own
    port takes only mTLS): the controller must find each replica's rate there. Read at catalog's own
    port, the metric was missing for every replica, and a metric that cannot be computed blocks every
    scale-down (catalog stayed at 3 replicas once idle)."""
    from labkit.targets.local.autoscaling import Controller

    catalog = next(h for h in hpa_mod.load() if h.name == "catalog")
    target = _Target(3, mesh="strict")
    comp = target.component("catalog")
    health = [comp.local_port(target.cfg, "health", i) for i in range(3)]
    assert health[0] != comp.local_port(target.cfg, "http", 0)
    rows = [{"instance": f"127.0.0.1:{p}", "value": v} for p, v in zip(health, [1.2, 1.1, 0.0], strict=True)]
    prometheus = _Prometheus(rows)
    controller = Controller(target, [catalog], prometheus, clock=Clock())  # type: ignore[arg-type]
    assert controller.pods_metric(comp, "ott_http_requests_per_second") == {0: 1.2, 1: 1.1, 2: 0.0}
    assert prometheus.queries == [
        'sum(rate(ott_http_requests_total{job=~"catalog|envoy-stats"}[1m])) by (instance)']


def test_a_lesson_may_shorten_the_window_and_lower_a_metric_target() -> None:
    from labkit.targets.local.autoscaling import adjusted

    hpas = hpa_mod.load()
    changed = adjusted(hpas, 20, {"ott_edge_egress_bytes_per_second": 2e6})
    assert {h.scale_down.stabilization_window_seconds for h in changed} == {20}
    edge = next(h for h in changed if h.target == "edge")
    assert [m.target for m in edge.metrics] == [80.0, 2e6, 10.0]
    assert adjusted(hpas) == hpas
    with pytest.raises(ConfigError, match="no HorizontalPodAutoscaler scales on 'ott_egress'"):
        hpa_mod.check_metric_targets(hpas, {"ott_egress": 1.0})
    with pytest.raises(ConfigError, match="must be positive"):
        hpa_mod.check_metric_targets(hpas, {"cpu": 0.0})


def test_kubernetes_quantities() -> None:
    assert [hpa_mod.quantity(q) for q in ("100m", "40M", "2", "1Gi", "1.5k", "1e3", "0.5")] == [
        0.1, 40e6, 2.0, 2**30, 1500.0, 1000.0, 0.5]
    with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
        hpa_mod.quantity("40 MB")
