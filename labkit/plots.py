"""Plots: each takes data and returns a matplotlib Figure; none calls show() or picks a backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ott.media.analysis import Title
    from ott.media.ladder import Ladder


def timeseries(
    frame: pd.DataFrame,
    *,
    by: str,
    title: str,
    ylabel: str,
    value: str = "value",
) -> Figure:
    """One line per distinct value of column ``by`` over ``timestamp`` (a :meth:`Prometheus.query_range` frame).

    Example::

        fig = timeseries(prom.query_range("scrape_duration_seconds"), by="job",
                         title="Scrape duration", ylabel="seconds")
    """
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if frame.empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        for key, group in frame.sort_values("timestamp").groupby(by):
            ax.plot(group["timestamp"], group[value], marker=".", label=str(key))
        ax.legend(title=by, loc="best", fontsize="small")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return fig


def segment_bitrates(title: Title, *, heading: str | None = None) -> Figure:
    """The bitrate of every segment (size × 8 / duration) over media time: one step line per rung.

    A dashed line in the rung's colour marks its average (the playlist's ``AVERAGE-BANDWIDTH``);
    the highest step is its peak (``BANDWIDTH``). Sizes are what a client downloads, so audio and
    container overhead are included.

    Example::

        fig = segment_bitrates(analyse(media_root / "lab-clock"))
    """
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for rung in sorted(title.rungs, key=lambda r: r.height, reverse=True):
        segments = [s for s in rung.segments if s.duration > 0]
        if not segments:
            continue
        starts, rates, t = [], [], 0.0
        for segment in segments:
            starts.append(t)
            rates.append(segment.size * 8 / segment.duration / 1000)
            t += segment.duration
        # steps-post holds each value until the next start; repeat the last one to the end of the stream.
        (line,) = ax.plot([*starts, t], [*rates, rates[-1]], drawstyle="steps-post", label=rung.name)
        ax.hlines(rung.average_bps / 1000, 0, t, colors=line.get_color(), linestyles="dashed", alpha=0.7)
        drawn += 1
    if drawn:
        ax.legend(title="rung", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(heading or f"Bitrate per segment: {title.root.name} (dashed: average)")
    ax.set_xlabel("media time (s)")
    ax.set_ylabel("kbit/s")
    ax.grid(alpha=0.3)
    return fig


def ladder_chart(ladder: Ladder, title: Title | None = None, *, heading: str | None = None) -> Figure:
    """The ladder on a bitrate / vertical-resolution chart, with what an encode measured beside it.

    Each rung's target is its video bitrate plus the audio bitrate (what a variant carries), with a
    bar up to its capped maximum (maxrate + audio). With ``title`` (an :func:`ott.media.analysis.analyse`
    result) the measured average and peak segment bitrate of each published rung are drawn too;
    ladder rungs the title lacks (taller than the source, so dropped) are marked "not encoded".

    Example::

        fig = ladder_chart(ladder.load("default"), analyse(media_root / "lab-clock"))
    """
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    rungs = sorted(ladder.rungs, key=lambda r: r.height)
    heights = [r.height for r in rungs]
    targets = [r.video_kbps + ladder.audio_kbps for r in rungs]
    ax.plot(heights, targets, marker="o", label="target: video + audio")
    ax.vlines(heights, targets, [r.maxrate_kbps + ladder.audio_kbps for r in rungs], colors="tab:blue",
              alpha=0.4, linewidth=4, label="up to maxrate + audio")
    measured = {r.name: r for r in title.rungs} if title is not None else {}
    for rung, target in zip(rungs, targets, strict=True):
        missing = title is not None and rung.name not in measured
        ax.annotate(f"{rung.name} (not encoded)" if missing else rung.name, (rung.height, target),
                    textcoords="offset points", xytext=(-8, 8), ha="right", fontsize="small",
                    color="grey" if missing else "black")
    if title is not None and title.rungs:
        encoded = sorted(title.rungs, key=lambda r: r.height)
        ax.plot([r.height for r in encoded], [r.average_bps / 1000 for r in encoded], marker="s", linestyle="--",
                label="measured average")
        ax.plot([r.height for r in encoded], [r.peak_bps / 1000 for r in encoded], marker="^", linestyle=":",
                label="measured peak segment")
        heights = sorted({*heights, *(r.height for r in encoded)})
    ax.set_xticks(heights, [f"{h}p" for h in heights])
    ax.margins(x=0.1)   # room for the rung names left of the smallest rung
    ax.set_ylim(bottom=0)
    ax.set_title(heading or f"Ladder {ladder.name!r}: bitrate by resolution")
    ax.set_xlabel("vertical resolution (px)")
    ax.set_ylabel("kbit/s")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def grouped_bars(
    frame: pd.DataFrame,
    *,
    title: str,
    ylabel: str,
    xlabel: str = "",
    log: bool = False,
    annotate: bool = True,
) -> Figure:
    """One group of bars per row of ``frame`` (its index labels the groups), one bar per column.

    For comparisons such as the latency of each request on a cold and on a warm cache (columns
    ``cold`` and ``warm``, ``log=True``) or the origin fetches per segment with and without the
    cache lock. ``annotate`` writes each bar's value above it (integers as such).

    Example::

        fig = grouped_bars(pd.DataFrame({"lock on": [1, 1], "lock off": [57, 61]}, index=["seg 0", "seg 1"]),
                           title="Origin fetches per segment", ylabel="origin fetches")
    """
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if frame.empty or not len(frame.columns):
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        positions = list(range(len(frame.index)))
        width = 0.8 / len(frame.columns)
        for i, column in enumerate(frame.columns):
            offsets = [p - 0.4 + width * (i + 0.5) for p in positions]
            values = [float(v) for v in frame[column]]
            bars = ax.bar(offsets, values, width=width, label=str(column))
            if annotate:
                labels = [f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}" for v in values]
                ax.bar_label(bars, labels=labels, fontsize="x-small", padding=1)
        ax.set_xticks(positions, [str(i) for i in frame.index],
                      rotation=30 if len(frame.index) > 6 else 0, ha="right" if len(frame.index) > 6 else "center",
                      fontsize="small")
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
        ax.legend(loc="best", fontsize="small")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="y")
    return fig


def cache_ratios(
    hit_ratio: pd.DataFrame,
    offload: pd.DataFrame,
    *,
    by: str = "pop",
    offload_by: str = "measure",
    heading: str = "CDN cache efficiency",
) -> Figure:
    """Two panels over time, as percentages: each PoP's hit ratio, and the origin offload.

    Both frames are :meth:`Prometheus.query_range` results (``timestamp``, ``value`` from 0 to 1),
    one line per distinct value of ``by`` (hit ratio) and ``offload_by`` (offload, e.g. counted in
    requests and in bytes). The panels share the time axis.

    Example::

        ratio = prom.query_range('sum by (pop)(rate(ott_edge_requests_total{cache="HIT"}[30s]))'
                                 ' / sum by (pop)(rate(ott_edge_requests_total[30s]))', minutes=3)
        fig = cache_ratios(ratio, offload)
    """
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, frame, key, name in ((top, hit_ratio, by, "hit ratio"), (bottom, offload, offload_by, "origin offload")):
        if frame.empty or key not in frame.columns:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            for label, group in frame.sort_values("timestamp").groupby(key):
                ax.plot(group["timestamp"], group["value"] * 100, marker=".", label=str(label))
            ax.legend(title=key, loc="lower right", fontsize="small")
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"{name} (%)")
        ax.grid(alpha=0.3)
    top.set_title(heading)
    bottom.set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    return fig
