"""CPU per component from Prometheus: the queries (PromQL), the meter's totals, kube's mapping to components."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

import promql_parser
import pytest

from labkit import platform
from labkit.analysis.capacity import GENERATOR, OTHER
from labkit.clients import counters
from labkit.clients.counters import CounterMeter
from labkit.targets.kube import usage
from labkit.targets.kube.manifest import NAME_LABEL
from labkit.traffic import capacity as ramps

COMPONENTS = platform.components()


class Answers:
    """A stand-in for :class:`labkit.clients.prometheus.Prometheus`: each ``samples`` call answers the next series."""

    def __init__(self, *answers: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> None:
        self._answers: Iterator[list[tuple[dict[str, str], list[tuple[float, float]]]]] = iter(answers)
        self.url = "http://prometheus.invalid"
        self.asked: list[str] = []

    def samples(self, selector: str, seconds: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        self.asked.append(selector)
        return next(self._answers)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _meter(prom: Answers, component: Callable[[Mapping[str, str]], str | None], clock: Clock,
           lag_s: float = 5.0) -> CounterMeter:
    return CounterMeter(prom, "x", component, lag_s=lag_s, clock=clock)  # type: ignore[arg-type]


def test_a_counter_is_interpolated_between_its_samples_and_held_outside_them() -> None:
    samples = [(10.0, 1.0), (15.0, 2.0), (20.0, 4.0)]
    assert [counters.value_at(samples, t) for t in (5.0, 10.0, 12.5, 15.0, 17.5, 20.0, 30.0)] == [
        1.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.0]


def test_the_meter_reads_each_component_as_of_its_lag_and_skips_what_is_not_the_labs() -> None:
    clock = Clock(20.0)
    prom = Answers([({"groupname": "edge", "mode": "user"}, [(10.0, 1.0), (15.0, 2.0), (20.0, 3.0)]),
                    ({"groupname": "edge", "mode": "system"}, [(10.0, 0.5), (15.0, 0.5)]),
                    ({"groupname": "not-ours", "mode": "user"}, [(10.0, 99.0)])])
    meter = _meter(prom, lambda labels: labels["groupname"] if labels["groupname"] != "not-ours" else None, clock)
    # At 20 - 5 = 15 s: edge's two modes, 2.0 + 0.5.
    assert meter() == {"edge": 2.5}
    assert prom.asked == ["x"] and meter.lag_s == 5.0


def test_a_series_that_goes_away_keeps_its_total_and_a_restart_counts_on() -> None:
    clock = Clock(20.0)
    edge0, edge1 = {"pod": "edge-0", "container": "edge"}, {"pod": "edge-1", "container": "edge"}
    prom = Answers(
        [(edge0, [(10.0, 9.0), (15.0, 10.0)]), (edge1, [(10.0, 3.0), (15.0, 4.0)])],
        # edge-1 deleted (scale down): its 4 s were used and stay counted.
        [(edge0, [(10.0, 9.0), (15.0, 10.0), (20.0, 12.0)])],
        # edge-0's container restarted between 20 and 25 s: its counter starts again, from 0.5.
        [(edge0, [(15.0, 10.0), (20.0, 12.0), (25.0, 0.5), (30.0, 1.5)])],
        [(edge0, [(25.0, 0.5), (30.0, 1.5), (35.0, 2.5)])],
    )
    meter = _meter(prom, lambda labels: "edge", clock)
    totals = []
    for now in (20.0, 25.0, 35.0, 40.0):
        clock.now = now
        totals.append(meter()["edge"])
    assert totals == [14.0, 16.0, 17.5, 18.5]


def test_the_process_meter_reads_the_process_job_by_group() -> None:
    prom = Answers([({"groupname": "edge", "mode": "user"}, [(1.0, 1.5)]),
                    ({"groupname": "prometheus", "mode": "user"}, [(1.0, 3.0)])])
    meter = counters.process_meter(prom, components=["edge"])  # type: ignore[arg-type]
    assert meter() == {"edge": 1.5}
    assert prom.asked == [f'{counters.PROCESS_CPU}{{job="process"}}'] and meter.lag_s == counters.PROCESS_LAG_S
    promql_parser.parse(prom.asked[0])
    promql_parser.parse(usage.selector(usage.CPU, "ottlab"))
    assert usage.selector(usage.CPU, "lab-2") == (
        'container_cpu_usage_seconds_total{job="cadvisor", namespace="lab-2", container!="", container!="POD"}')


@pytest.mark.parametrize(("labels", "container", "component"), [
    ({NAME_LABEL: "edge"}, "edge", "edge"),
    # A sidecar is its own component, as on the local target, where it is a process of its own.
    ({NAME_LABEL: "edge"}, "edge-exporter", "edge-exporter"),
    ({NAME_LABEL: "gateway"}, "gateway-nginx-exporter", "gateway-nginx-exporter"),
    # An init container counts for its pod's component.
    ({NAME_LABEL: "player"}, "files", "player"),
    # A sidecar's name in a pod it does not follow is not that sidecar.
    ({NAME_LABEL: "origin"}, "edge-exporter", "origin"),
    # The transcode Job's pod runs the transcoder's container but is not the transcoder component.
    ({NAME_LABEL: "transcoder-job"}, "transcoder", None),
    ({}, "edge", None),
    (None, "edge", None),
])
def test_a_container_counts_for_its_pods_component_or_its_own_sidecar(
        labels: dict[str, str] | None, container: str, component: str | None) -> None:
    assert usage.component_of(labels, container, COMPONENTS) == component


def test_the_kube_meter_lists_the_pods_again_for_a_pod_it_has_not_seen() -> None:
    listed: list[int] = []
    pods: dict[str, dict[str, str]] = {"edge-0": {NAME_LABEL: "edge"}}

    def list_pods() -> dict[str, dict[str, str]]:
        listed.append(1)
        return dict(pods)

    edge0, edge1 = {"pod": "edge-0", "container": "edge"}, {"pod": "edge-1", "container": "edge"}
    exporter1, other = {"pod": "edge-1", "container": "edge-exporter"}, {"pod": "other", "container": "x"}
    prom = Answers(
        [(edge0, [(0.0, 1.0)])],
        [(edge0, [(0.0, 1.0), (5.0, 2.0)]), (edge1, [(5.0, 0.5)]), (exporter1, [(5.0, 0.25)]), (other, [(5.0, 7.0)])],
        [(other, [(5.0, 7.0), (10.0, 8.0)])],
    )
    meter = usage.cpu_meter(prom, "ottlab", COMPONENTS, list_pods)  # type: ignore[arg-type]
    assert meter() == {"edge": 1.0} and len(listed) == 1
    pods["edge-1"] = {NAME_LABEL: "edge"}  # the autoscaler added a PoP
    assert meter() == {"edge": 2.5, "edge-exporter": 0.25}
    assert len(listed) == 3  # once for edge-1, once for the pod that is not the lab's
    meter()
    assert len(listed) == 3  # ... and never again for either
    assert prom.asked == [usage.selector(usage.CPU, "ottlab")] * 3


def test_the_ramps_sampler_reads_a_lagging_meter_at_the_times_its_readings_stand_for() -> None:
    start = time.monotonic()

    class Lagging:
        """A component that uses 2 cores from ``start`` on, read as of 0.4 s ago (a Prometheus meter)."""

        lag_s = 0.4

        def __call__(self) -> dict[str, float]:
            return {"edge": 2.0 * max(0.0, time.monotonic() - self.lag_s - start)}

    with ramps._Sampler(Lagging(), interval=0.05) as sampler:
        time.sleep(0.6)  # the step's load, not a synchronisation
    (t0, _), (t1, _) = sampler.samples[0], sampler.samples[-1]
    assert t1 - t0 == pytest.approx(0.6, abs=0.05)  # the step, not the wait for the meter after it
    # Read as the meter returned them, the first 0.4 s of readings would stand for before the start: 0.67 cores.
    assert sampler.mean()["edge"] == pytest.approx(2.0, rel=0.05)
    assert set(sampler.samples[-1][1]) == {"edge", GENERATOR, OTHER}
