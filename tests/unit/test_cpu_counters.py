"""CPU per component from Prometheus: the queries (PromQL), the meter's totals, kube's mapping to components."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import promql_parser
import pytest

from labkit import platform
from labkit.clients import counters
from labkit.clients.counters import CounterMeter
from labkit.targets.kube import usage
from labkit.targets.kube.manifest import NAME_LABEL

COMPONENTS = platform.components()


class Answers:
    """A stand-in for :class:`labkit.clients.prometheus.Prometheus`: each query answers the next frame."""

    def __init__(self, *frames: list[dict[str, Any]]) -> None:
        self._frames: Iterator[list[dict[str, Any]]] = iter(frames)
        self.url = "http://prometheus.invalid"
        self.asked: list[str] = []

    def query(self, promql: str) -> pd.DataFrame:
        self.asked.append(promql)
        return pd.DataFrame(next(self._frames))


def _by_group(labels: Mapping[str, str]) -> str | None:
    return labels["groupname"] if labels["groupname"] != "not-ours" else None


def test_the_extrapolating_query_is_promql_and_keeps_a_series_with_one_sample() -> None:
    query = counters.extrapolated(f'{counters.PROCESS_CPU}{{job="process"}}', ["groupname"])
    promql_parser.parse(query)
    assert query.startswith("sum by (groupname) (")
    # Carried forward at its last rate from its last sample; a series without a rate yet is its sample.
    assert "irate(" in query and "time() - timestamp(" in query and ") or namedprocess" in query
    kube = usage.cpu_query("ottlab")
    promql_parser.parse(kube)
    assert kube.startswith("sum by (pod, container) (")
    assert usage.selector(usage.CPU, "lab-2") == (
        'container_cpu_usage_seconds_total{job="cadvisor", namespace="lab-2", container!="", container!="POD"}')


def test_the_meter_sums_each_component_and_skips_what_is_not_the_labs() -> None:
    prom = Answers([{"groupname": "edge", "value": 2.0}, {"groupname": "auth", "value": 5.0},
                    {"groupname": "not-ours", "value": 99.0}])
    meter = CounterMeter(prom, "q", ["groupname"], _by_group)  # type: ignore[arg-type]
    assert meter() == {"edge": 2.0, "auth": 5.0}
    assert prom.asked == ["q"]


def test_a_series_that_goes_away_keeps_its_total_and_a_restart_counts_on() -> None:
    prom = Answers(
        [{"pod": "edge-0", "container": "edge", "value": 10.0}, {"pod": "edge-1", "container": "edge", "value": 4.0}],
        # edge-1 deleted (scale down): its 4 s were used and stay counted.
        [{"pod": "edge-0", "container": "edge", "value": 12.0}],
        # edge-0's container restarted: its counter starts again from 0.5.
        [{"pod": "edge-0", "container": "edge", "value": 0.5}],
        # An extrapolation that overshot (12.4 then 12.3 after a slowdown) does not make time run backwards.
        [{"pod": "edge-0", "container": "edge", "value": 0.4}],
    )
    meter = CounterMeter(prom, "q", ["pod", "container"], lambda labels: "edge")  # type: ignore[arg-type]
    totals = [meter()["edge"] for _ in range(4)]
    assert totals == [14.0, 16.0, 16.5, 16.5]
    assert totals == sorted(totals)


def test_the_process_meter_reads_the_process_job_by_group() -> None:
    prom = Answers([{"groupname": "edge", "value": 1.5}, {"groupname": "prometheus", "value": 3.0}])
    meter = counters.process_meter(prom, components=["edge"])  # type: ignore[arg-type]
    assert meter() == {"edge": 1.5}
    assert prom.asked == [counters.extrapolated(f'{counters.PROCESS_CPU}{{job="process"}}', ["groupname"])]


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

    prom = Answers(
        [{"pod": "edge-0", "container": "edge", "value": 1.0}],
        [{"pod": "edge-0", "container": "edge", "value": 2.0}, {"pod": "edge-1", "container": "edge", "value": 0.5},
         {"pod": "edge-1", "container": "edge-exporter", "value": 0.25},
         {"pod": "other", "container": "x", "value": 7.0}],
        [{"pod": "other", "container": "x", "value": 8.0}],
    )
    meter = usage.cpu_meter(prom, "ottlab", COMPONENTS, list_pods)  # type: ignore[arg-type]
    assert meter() == {"edge": 1.0} and len(listed) == 1
    pods["edge-1"] = {NAME_LABEL: "edge"}  # the autoscaler added a PoP
    assert meter() == {"edge": 2.5, "edge-exporter": 0.25}
    assert len(listed) == 3  # once for edge-1, once for the pod that is not the lab's
    meter()
    assert len(listed) == 3  # ... and never again for either
    assert prom.asked == [usage.cpu_query("ottlab")] * 3
