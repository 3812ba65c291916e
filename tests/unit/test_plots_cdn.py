"""The CDN plots: grouped bars (cold/warm latency, origin fetches) and hit ratio / offload over time."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from labkit.analysis import plots


def _axes(fig: Figure, count: int = 1) -> list[Axes]:
    assert isinstance(fig, Figure)
    assert len(fig.axes) == count
    return list(fig.axes)


@pytest.fixture
def fetches() -> pd.DataFrame:
    return pd.DataFrame({"lock on": [1, 1, 1], "lock off": [200, 57, 3]},
                        index=["360p/seg_00000.m4s", "360p/seg_00001.m4s", "360p/seg_00002.m4s"])


def test_grouped_bars_draws_one_bar_per_cell_grouped_by_row(fetches: pd.DataFrame) -> None:
    (ax,) = _axes(plots.grouped_bars(fetches, title="Origin fetches", ylabel="fetches", xlabel="segment"))
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["lock on", "lock off"]
    assert [[bar.get_height() for bar in c] for c in containers] == [[1, 1, 1], [200, 57, 3]]
    # Side by side within each group, groups at 0, 1, 2.
    lock_on, lock_off = ([bar.get_x() + bar.get_width() / 2 for bar in c] for c in containers)
    assert all(a < b for a, b in zip(lock_on, lock_off, strict=True))
    assert [round((a + b) / 2, 6) for a, b in zip(lock_on, lock_off, strict=True)] == [0, 1, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(fetches.index)
    assert (ax.get_title(), ax.get_ylabel(), ax.get_xlabel()) == ("Origin fetches", "fetches", "segment")
    assert ax.get_ylim()[0] == 0 and ax.get_yscale() == "linear"


def test_grouped_bars_writes_each_value_above_its_bar(fetches: pd.DataFrame) -> None:
    (ax,) = _axes(plots.grouped_bars(fetches.astype(float) / [1, 7], title="t", ylabel="y"))
    labels = [t.get_text() for t in ax.texts]
    assert labels[:3] == ["1", "1", "1"]            # whole numbers without decimals
    assert labels[3:] == ["28.6", "8.14", "0.429"]   # others to three significant digits
    (bare,) = _axes(plots.grouped_bars(fetches, title="t", ylabel="y", annotate=False))
    assert not bare.texts


def test_grouped_bars_on_a_log_scale() -> None:
    latency = pd.DataFrame({"cold (MISS)": [16.5, 5.4], "warm (HIT)": [2.7, 3.0]}, index=["master.m3u8", "seg"])
    (ax,) = _axes(plots.grouped_bars(latency, title="Latency", ylabel="ms", log=True))
    assert ax.get_yscale() == "log"


def test_grouped_bars_without_data_says_so() -> None:
    (ax,) = _axes(plots.grouped_bars(pd.DataFrame(), title="t", ylabel="y"))
    assert [t.get_text() for t in ax.texts] == ["no data"] and not ax.containers


def _range(by: str, series: dict[str, list[float]]) -> pd.DataFrame:
    times = pd.date_range("2026-01-01 12:00", periods=3, freq="5s", tz="UTC")
    return pd.DataFrame([{by: key, "timestamp": t, "value": v}
                         for key, values in series.items() for t, v in zip(times, values, strict=True)])


def test_cache_ratios_draws_hit_ratio_per_pop_and_offload_per_measure_in_percent() -> None:
    hit = _range("pop", {"edge-1": [0.0, 0.5, 0.8], "edge-0": [0.4, 0.75, 0.9]})
    offload = _range("measure", {"requests": [0.5, 0.7, 0.85], "bytes": [0.3, 0.6, 0.8]})
    top, bottom = _axes(plots.cache_ratios(hit, offload, heading="24 viewers"), count=2)
    assert [line.get_label() for line in top.get_lines()] == ["edge-0", "edge-1"]
    assert list(top.get_lines()[0].get_ydata()) == pytest.approx([40, 75, 90])
    assert [line.get_label() for line in bottom.get_lines()] == ["bytes", "requests"]
    assert list(bottom.get_lines()[1].get_ydata()) == pytest.approx([50, 70, 85])
    assert top.get_ylim() == (0, 105) and bottom.get_ylim() == (0, 105)
    assert (top.get_ylabel(), bottom.get_ylabel()) == ("hit ratio (%)", "origin offload (%)")
    assert top.get_title() == "24 viewers" and bottom.get_xlabel() == "time (UTC)"
    assert top.get_legend().get_title().get_text() == "pop"
    assert bottom.get_legend().get_title().get_text() == "measure"
    assert top.get_shared_x_axes().joined(top, bottom)


def test_cache_ratios_marks_an_empty_panel() -> None:
    top, bottom = _axes(plots.cache_ratios(_range("pop", {"edge-0": [0.1, 0.2, 0.3]}), pd.DataFrame()), count=2)
    assert len(top.get_lines()) == 1 and not top.texts
    assert [t.get_text() for t in bottom.texts] == ["no data"] and not bottom.get_lines()
