"""The QoE plots: startup distribution, buffer and bitrate, rung shares, throttling, player against edge."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from labkit.analysis import plots


def _axes(fig: Figure, count: int) -> list[Axes]:
    assert isinstance(fig, Figure)
    assert len(fig.axes) == count
    return list(fig.axes)


def _vertical_lines(ax: Axes) -> list[float]:
    return [float(line.get_xdata()[0]) for line in ax.lines if len(set(line.get_xdata())) == 1]


@pytest.fixture
def timeline() -> pd.DataFrame:
    """Two viewers over three segment decisions each, under a 900 kbit/s limit."""
    return pd.DataFrame({
        "viewer": [0, 0, 0, 1, 1, 1],
        "t_s": [0.0, 4.0, 8.0, 0.5, 4.5, 8.5],
        "buffer_s": [0.0, 4.0, 7.5, 0.0, 3.0, 6.0],
        "bitrate_kbps": [400, 700, 700, 400, 400, 700],
        "estimate_kbps": [500, 850, 880, 500, 600, 820],
        "limit_kbps": [900.0] * 6,
    })


def test_startup_distribution_marks_the_quantiles_in_both_panels() -> None:
    startup = [0.4, 0.5, 0.6, 0.7, 2.5, math.nan]
    hist, ecdf = _axes(plots.startup_distribution(startup), 2)
    p50, p95 = np.quantile([0.4, 0.5, 0.6, 0.7, 2.5], [0.5, 0.95])
    for ax in (hist, ecdf):
        assert _vertical_lines(ax) == pytest.approx([p50, p95])
    assert [t.get_text() for t in hist.get_legend().get_texts()] == [f"p50 = {p50:.3g} s", f"p95 = {p95:.3g} s"]
    assert sum(patch.get_height() for patch in hist.patches) == 5     # NaN (never started) left out
    (steps,) = [line for line in ecdf.lines if len(set(line.get_xdata())) > 1]
    assert list(steps.get_ydata()) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert "5 viewers" in hist.get_title() and ecdf.get_ylabel() == "share of viewers"


def test_startup_distribution_without_data_says_so() -> None:
    for ax in _axes(plots.startup_distribution([]), 2):
        assert [t.get_text() for t in ax.texts] == ["no data"]


def test_buffer_and_bitrate_share_the_time_axis_and_show_the_limit(timeline: pd.DataFrame) -> None:
    top, bottom = _axes(plots.buffer_and_bitrate(timeline), 2)
    assert top.get_shared_x_axes().joined(top, bottom)
    buffers = [line for line in top.lines]
    assert [line.get_label() for line in buffers] == ["viewer 0", "viewer 1"]
    assert list(buffers[1].get_ydata()) == [0.0, 3.0, 6.0]
    labels = [line.get_label() for line in bottom.lines]
    assert "bandwidth limit" in labels
    limit = bottom.lines[labels.index("bandwidth limit")]
    assert set(limit.get_ydata()) == {900.0} and limit.get_linestyle() == "--"
    rungs = bottom.lines[labels.index("viewer 0")]
    assert list(rungs.get_ydata()) == [400, 700, 700] and rungs.get_drawstyle() == "steps-post"
    assert (top.get_ylabel(), bottom.get_xlabel()) == ("buffer (s)", "seconds since play")


def test_buffer_and_bitrate_draws_the_viewers_asked_for_and_no_limit_without_one(timeline: pd.DataFrame) -> None:
    free = timeline.assign(limit_kbps=math.nan)
    top, bottom = _axes(plots.buffer_and_bitrate(free, viewers=[1]), 2)
    assert [line.get_label() for line in top.lines] == ["viewer 1"]
    assert "bandwidth limit" not in [line.get_label() for line in bottom.lines]
    for ax in _axes(plots.buffer_and_bitrate(free, viewers=[7]), 2):
        assert [t.get_text() for t in ax.texts] == ["no data"]


def test_rung_distribution_in_percent_for_one_or_several_audiences() -> None:
    (ax,) = _axes(plots.rung_distribution(pd.Series({400: 0.25, 700: 0.5, 1500: 0.25})), 1)
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [bar.get_height() for bar in bars] == [25, 50, 25]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["400 kbit/s", "700 kbit/s", "1500 kbit/s"]
    assert ax.get_legend() is None
    table = pd.DataFrame({"no limit": [0.0, 0.2, 0.8], "600 kbit/s": [1.0, 0.0, 0.0]}, index=[400, 700, 1500])
    (ax,) = _axes(plots.rung_distribution(table), 1)
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["no limit", "600 kbit/s"]
    assert [bar.get_height() for bar in containers[1]] == [100, 0, 0]


def test_throttle_steps_draws_each_viewers_rungs_under_the_limit(timeline: pd.DataFrame) -> None:
    (ax,) = _axes(plots.throttle_steps(timeline), 1)
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["viewer 0", "viewer 1", "bandwidth limit"]
    assert list(ax.lines[1].get_ydata()) == [400, 400, 700]
    (empty,) = _axes(plots.throttle_steps(timeline.iloc[0:0]), 1)
    assert [t.get_text() for t in empty.texts] == ["no data"]


def test_qoe_comparison_scatters_sessions_around_the_diagonal() -> None:
    comparison = pd.DataFrame({"session": ["a", "b", "c"], "startup_s_player": [0.8, 1.2, 2.0],
                               "startup_s_edge": [0.6, 1.1, math.nan]})
    (ax,) = _axes(plots.qoe_comparison(comparison, tolerance=0.5), 1)
    (points,) = ax.collections[-1:]
    assert points.get_offsets().tolist() == [[0.8, 0.6], [1.2, 1.1]]   # the session without an edge figure is left out
    diagonal = ax.lines[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y = x", "± 0.5 s", "2 sessions"]
    assert ax.get_xlabel() == "as the player reported it (s)" and "CMCD" in ax.get_ylabel()
    runs = comparison.assign(run=["free", "throttled", "free"], startup_s_edge=[0.6, 1.1, 1.9])
    (ax,) = _axes(plots.qoe_comparison(runs, by="run"), 1)
    assert [c.get_offsets().tolist() for c in ax.collections] == [[[0.8, 0.6], [2.0, 1.9]], [[1.2, 1.1]]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y = x", "free: 2 sessions", "throttled: 1 sessions"]
    (empty,) = _axes(plots.qoe_comparison(comparison.iloc[0:0]), 1)
    assert [t.get_text() for t in empty.texts] == ["no data"]
