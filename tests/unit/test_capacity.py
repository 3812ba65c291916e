"""The capacity curve's analysis on synthetic series: the knee, what saturated, per-core figures, the plot."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from labkit.analysis import capacity
from labkit.analysis.capacity import GENERATOR, OTHER, SLO
from labkit.core.errors import ConfigError
from labkit.traffic import capacity as ramps
from labkit.traffic import loadtest


def _steps(startup: list[float], rebuffering: list[float] | None = None, ttfb: list[float] | None = None,
           errors: list[float] | None = None) -> pd.DataFrame:
    n = len(startup)
    viewers = [50 * 2**i for i in range(n)]
    return pd.DataFrame({
        "viewers": viewers, "seconds": [10.0] * n, "started": viewers, "requests": [v * 9 for v in viewers],
        "errors": [0] * n, "error_ratio": errors or [0.0] * n, "egress_gbps": [v * 0.002 for v in viewers],
        "segment_ttfb_p95_s": ttfb or [0.005] * n, "startup_p95_s": startup,
        "rebuffering_ratio": rebuffering or [0.0] * n, "generator_cores": [0.1] * n,
    }, columns=capacity.STEP_COLUMNS)


def _cpu(**columns: list[float]) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_the_knee_is_the_first_step_that_breaks_an_slo() -> None:
    steps = _steps([0.02, 0.03, 0.3, 2.5, 5.0])
    knee = capacity.knee(steps)
    assert knee is not None and (knee.step, knee.viewers, knee.last_good_viewers) == (3, 400, 200)
    assert knee.breaches == ("startup p95 2.50 s > 2 s",)
    # Rebuffering breaks it earlier; a slow segment (TTFB above half a 4 s segment) too.
    assert capacity.knee(_steps([0.1] * 4, rebuffering=[0, 0.005, 0.02, 0.1])).viewers == 200  # type: ignore[union-attr]
    assert capacity.knee(_steps([0.1] * 3, ttfb=[0.01, 2.1, 0.01])).viewers == 100  # type: ignore[union-attr]
    assert capacity.knee(_steps([0.1] * 3, errors=[0, 0, 0.05])).breaches == ("errors 5.00% of viewers > 1%",)  # type: ignore[union-attr]
    assert capacity.knee(_steps([0.1, 0.2, 1.9])) is None
    first = capacity.knee(_steps([math.nan, 0.1]))
    assert first is not None and first.last_good_viewers == 0 and first.breaches == ("no viewer started",)


def test_the_slo_is_declared_once_and_can_be_tightened() -> None:
    steps = _steps([0.02, 0.6, 1.5])
    assert capacity.knee(steps) is None
    strict = capacity.Slo(startup_p95_s=0.5)
    assert capacity.knee(steps, strict).viewers == 100  # type: ignore[union-attr]
    assert SLO.startup_p95_s == 2.0 and SLO.rebuffering_ratio == 0.01


def test_the_component_that_reached_its_share_first_is_named() -> None:
    steps = _steps([0.02, 0.05, 0.4, 3.0])
    knee = capacity.knee(steps)
    peak = _cpu(edge=[0.1, 0.3, 0.85, 0.95], auth=[0.1, 0.1, 0.2, 0.2], **{GENERATOR: [0.1, 0.2, 0.5, 0.7],
                                                                            OTHER: [0.1, 0.1, 0.1, 0.1]})
    who = capacity.saturated(steps, peak, knee, cores=2)
    assert who is not None and (who.component, who.viewers, who.evidence) == ("edge", 200, "cpu")
    # Three edge replicas: a share of 3 cores, so 0.95 is far from it; nothing else is near its own.
    assert capacity.saturated(steps, peak, knee, cores=4, shares={"edge": 3}).evidence == "latency"  # type: ignore[union-attr]
    # The rest of the machine is never "the component": other work is not the platform's.
    busy_machine = peak.assign(edge=[0.1] * 4, **{OTHER: [1.5] * 4})
    who = capacity.saturated(steps, busy_machine, knee, cores=2)
    assert who is not None and who.evidence == "machine" and who.viewers == 400 and who.component == "auth"


def test_a_saturated_load_generator_says_the_ramp_measured_the_generator() -> None:
    steps = _steps([0.02, 0.3, 2.4])
    peak = _cpu(edge=[0.05, 0.1, 0.2], **{GENERATOR: [0.4, 0.9, 1.0], OTHER: [0.0] * 3})
    who = capacity.saturated(steps, peak, capacity.knee(steps), cores=2)
    assert who is not None and (who.component, who.viewers) == (GENERATOR, 100)


def test_no_knee_and_no_saturation_names_nothing() -> None:
    steps = _steps([0.02, 0.03])
    assert capacity.saturated(steps, _cpu(edge=[0.1, 0.2], **{GENERATOR: [0.1, 0.1]}), None, cores=2) is None


def test_per_core_figures_are_the_platforms_at_the_last_good_step() -> None:
    steps = _steps([0.02, 0.03, 2.5])
    cpu = _cpu(edge=[0.05, 0.08, 0.2], auth=[0.02, 0.02, 0.05], **{GENERATOR: [0.3, 0.6, 0.9],
                                                                    OTHER: [1.0, 1.0, 1.0]})
    figures = capacity.per_core(steps, cpu, capacity.knee(steps))
    assert figures["viewers"] == 100 and figures["platform_cores"] == pytest.approx(0.10)
    assert figures["viewers_per_core"] == pytest.approx(1000) and figures["gbps_per_core"] == pytest.approx(2.0)
    assert math.isnan(capacity.per_core(_steps([3.0]), cpu.head(1), capacity.knee(_steps([3.0])))["viewers_per_core"])
    table = capacity.table(steps, cpu, cpu, cores=2)
    assert (table["knee_viewers"], table["capacity_viewers"], table["saturated"]) == (200, 100, GENERATOR)


def test_peak_cores_over_a_one_second_window() -> None:
    samples = [(0.0, {"edge": 0.0}), (0.5, {"edge": 0.1}), (1.0, {"edge": 0.2}), (1.5, {"edge": 1.1}),
               (2.0, {"edge": 1.2}), (2.5, {"edge": 1.3})]
    assert capacity.peak_cores(samples) == {"edge": pytest.approx(1.0)}   # from 0.5 s to 1.5 s
    assert capacity.peak_cores(samples, window_s=2.5) == {"edge": pytest.approx(1.3 / 2.5)}
    assert capacity.peak_cores(samples[:1]) == {"edge": 0.0}
    assert capacity.peak_cores([(0.0, {"a": 0.0}), (0.4, {"a": 0.2})]) == {"a": pytest.approx(0.5)}


def test_a_step_row_from_a_simulator_run() -> None:
    sessions = pd.DataFrame({"started": [True, True, False], "startup_s": [0.1, 0.3, math.nan],
                             "stalls": [0, 1, 0], "stalled_s": [0.0, 1.0, 0.0], "played_s": [9.0, 9.0, 0.0],
                             "bitrate_kbps": [1000.0, 1000.0, math.nan], "switches": [0, 0, 0],
                             "failure": ["", "", "segment_not_found"], "exit": ["exit", "exit", "error"]})
    requests = pd.DataFrame({"kind": ["segment", "segment", "segment", "master"], "status": [200, 200, 404, 200],
                             "bytes": [500_000, 500_000, 0, 1000], "ttfb_s": [0.01, 0.03, 0.02, 0.001]})
    row = capacity.step_row(3, 4.0, sessions, requests, 0.25)
    assert row["errors"] == 2 and row["error_ratio"] == pytest.approx(1 / 3) and row["started"] == 2
    assert row["egress_gbps"] == pytest.approx(1_001_000 * 8 / 4 / 1e9)
    assert row["rebuffering_ratio"] == pytest.approx(1 / 19)
    assert 0.01 < row["segment_ttfb_p95_s"] <= 0.03 and row["generator_cores"] == 0.25
    assert list(row) == capacity.STEP_COLUMNS


def test_the_curve_is_a_figure() -> None:
    steps = _steps([0.02, 0.3, 2.5])
    cpu = _cpu(edge=[0.05, 0.1, 0.2], **{GENERATOR: [0.3, 0.6, 0.9]})
    fig = capacity.curve(steps, cpu, capacity.knee(steps))
    assert isinstance(fig, Figure) and len(fig.axes) == 4 and "knee at 200 viewers" in fig.texts[0].get_text()


@pytest.mark.parametrize(("steps", "seconds", "words"), [
    ([], 10, "1 to 20 steps"), ([0, 10], 10, "at least 1"), ([-5], 10, "at least 1"), ([20, 10], 10, "must grow"),
    ([10, 10], 10, "must grow"), ([10], 0, "step_seconds"), ([10], -3, "step_seconds"), ([10], 601, "step_seconds"),
])
def test_a_bad_ramp_is_refused_before_any_viewer(steps: list[int], seconds: float, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ramps.ramp(None, "t", steps, seconds)  # type: ignore[arg-type]  # refused before the target is used


def test_a_ramp_larger_than_the_machines_sockets_is_refused() -> None:
    tight = loadtest.SocketBudget(open_files=1024, ephemeral_ports=28232)
    with pytest.raises(loadtest.LoadTooLargeError, match="at most 192 viewers"):
        ramps.ramp(None, "t", [50, 100, 400], 10, budget=tight)  # type: ignore[arg-type]
