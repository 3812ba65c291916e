"""The media plots: one line per rung, values in kbit/s from the segments, labelled axes."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from labkit.analysis import plots
from ott.media import ladder
from ott.media.analysis import Rung, Segment, Title


def _rung(name: str, height: int, sizes: list[int], durations: list[float]) -> Rung:
    folder = Path("/title") / name
    segments = tuple(
        Segment(uri=f"seg_{i:05d}.m4s", path=folder / f"seg_{i:05d}.m4s", duration=duration, size=size,
                first_video_pts=sum(durations[:i]), starts_with_keyframe=True, keyframes=(), iframe_ranges=())
        for i, (size, duration) in enumerate(zip(sizes, durations, strict=True))
    )
    return Rung(name=name, playlist=folder / "index.m3u8", uri=f"{name}/index.m3u8", target_duration=4,
                segments=segments, width=height * 16 // 9, height=height, fps=25.0, video_codec="avc1.64001f",
                audio_codec="mp4a.40.2", init_uri="init.mp4", key_line=None, fmp4=True)


@pytest.fixture
def title() -> Title:
    # 720p: 4 s at 800 kB (1600 kbit/s), 4 s at 700 kB (1400 kbit/s), 2 s at 300 kB (1200 kbit/s).
    return Title(root=Path("/title"), master=Path("/title/master.m3u8"), encrypted=False, rungs=(
        _rung("360p", 360, [250_000, 200_000, 100_000], [4.0, 4.0, 2.0]),
        _rung("720p", 720, [800_000, 700_000, 300_000], [4.0, 4.0, 2.0]),
    ))


def _axes(fig: Figure) -> Axes:
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    return ax


def test_segment_bitrates_draws_one_step_line_per_rung_in_kbits(title: Title) -> None:
    ax = _axes(plots.segment_bitrates(title))
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["720p", "360p"]   # tallest first
    top = lines[0]
    assert top.get_drawstyle() == "steps-post"
    # Each segment's bitrate from its start; the last value is held to the end of the stream (10 s).
    assert list(top.get_xdata()) == [0.0, 4.0, 8.0, 10.0]
    assert list(top.get_ydata()) == pytest.approx([1600.0, 1400.0, 1200.0, 1200.0])
    assert ax.get_xlabel() == "media time (s)" and ax.get_ylabel() == "kbit/s"
    assert ax.get_ylim()[0] == 0


def test_segment_bitrates_marks_each_rungs_average_dashed(title: Title) -> None:
    ax = _axes(plots.segment_bitrates(title))
    averages = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(averages) == 2
    levels = sorted(segment[0][1] for c in averages for segment in c.get_segments())
    # 1.8 MB over 10 s = 1440 kbit/s; 550 kB over 10 s = 440 kbit/s (Rung.average_bps, rounded up).
    assert levels == pytest.approx([440.0, 1440.0], abs=0.01)
    assert title.rungs[1].average_bps == 1_440_000


def test_segment_bitrates_of_a_title_without_segments_says_no_data() -> None:
    empty = Title(root=Path("/t"), master=Path("/t/master.m3u8"), rungs=(), encrypted=False)
    ax = _axes(plots.segment_bitrates(empty))
    assert ax.get_lines() == []
    assert [t.get_text() for t in ax.texts] == ["no data"]


def test_ladder_chart_plots_targets_by_resolution_with_rung_names() -> None:
    small = ladder.load("small")
    ax = _axes(plots.ladder_chart(small))
    (target,) = ax.get_lines()
    assert list(target.get_xdata()) == [360, 480, 720]
    assert list(target.get_ydata()) == [400 + 96, 700 + 96, 1500 + 96]   # video + audio kbit/s
    assert sorted(t.get_text() for t in ax.texts) == ["360p", "480p", "720p"]
    assert ax.get_xlabel() == "vertical resolution (px)" and ax.get_ylabel() == "kbit/s"


def test_ladder_chart_puts_measured_beside_declared_and_marks_dropped_rungs(title: Title) -> None:
    default = ladder.load("default")   # 1080p, 720p, 480p, 360p; the title has 720p and 360p
    ax = _axes(plots.ladder_chart(default, title))
    by_label = {line.get_label(): line for line in ax.get_lines()}
    assert set(by_label) == {"target: video + audio", "measured average", "measured peak segment"}
    assert list(by_label["measured average"].get_xdata()) == [360, 720]
    assert list(by_label["measured average"].get_ydata()) == pytest.approx([440.0, 1440.0])
    assert list(by_label["measured peak segment"].get_ydata()) == pytest.approx([500.0, 1600.0])
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["1080p (not encoded)", "360p", "480p (not encoded)", "720p"]
