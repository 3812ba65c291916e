"""Plots: each takes data and returns a matplotlib Figure; none calls show() or picks a backend."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
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


# -- player QoE -------------------------------------------------------------------------------------


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def startup_distribution(
    startup_s: Iterable[float],
    *,
    quantiles: Sequence[float] = (0.5, 0.95),
    heading: str = "Video startup time",
) -> Figure:
    """Two panels: a histogram of startup times and their ECDF, with a dashed line at each quantile.

    ``startup_s`` are seconds from the play request to the first frame (NaN, for viewers who never
    started, are left out). The ECDF's y is the share of started viewers who had started by x.

    Example::

        fig = startup_distribution(audience.sessions["startup_s"])
    """
    values = np.sort(np.asarray([v for v in startup_s if v is not None and not math.isnan(float(v))], dtype=float))
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    hist, ecdf = fig.subplots(1, 2, sharex=True)
    if values.size == 0:
        _no_data(hist)
        _no_data(ecdf)
    else:
        hist.hist(values, bins=min(30, max(5, values.size // 3)), color="tab:blue", alpha=0.8)
        ecdf.step(values, np.arange(1, values.size + 1) / values.size, where="post", color="tab:blue")
        for q, style in zip(quantiles, ("--", ":", "-."), strict=False):
            at = float(np.quantile(values, q))
            label = f"p{q * 100:g} = {at:.3g} s"
            hist.axvline(at, color="black", linestyle=style, label=label)
            ecdf.axvline(at, color="black", linestyle=style, label=label)
        hist.legend(loc="upper right", fontsize="small")
        ecdf.set_ylim(0, 1.02)
    hist.set_title(f"{heading}: {values.size} viewers")
    hist.set_xlabel("seconds")
    hist.set_ylabel("viewers")
    ecdf.set_title("Share of viewers started by then (ECDF)")
    ecdf.set_xlabel("seconds")
    ecdf.set_ylabel("share of viewers")
    for ax in (hist, ecdf):
        ax.grid(alpha=0.3)
    return fig


def _limit_line(ax: Axes, timeline: pd.DataFrame) -> None:
    """The bandwidth limit (``limit_kbps``, NaN when none) as a dashed black step line: the first viewer's."""
    if "limit_kbps" not in timeline.columns or timeline["limit_kbps"].isna().all():
        return
    rows = timeline.dropna(subset=["limit_kbps"]).sort_values("t_s")
    rows = rows[rows["viewer"] == rows["viewer"].iloc[0]]
    ax.plot(rows["t_s"], rows["limit_kbps"], drawstyle="steps-post", color="black", linestyle="--",
            linewidth=1.2, label="bandwidth limit")


def buffer_and_bitrate(
    timeline: pd.DataFrame,
    *,
    viewers: Sequence[object] | None = None,
    heading: str = "Buffer and bitrate over time",
) -> Figure:
    """Two panels sharing the time axis: each viewer's buffer (s) and chosen bitrate (kbit/s).

    ``timeline`` has one row per viewer per segment decision: ``viewer``, ``t_s`` (since the
    viewer's play), ``buffer_s``, ``bitrate_kbps`` and optionally ``limit_kbps`` (the bandwidth
    limit then, drawn dashed) and ``estimate_kbps`` (the player's throughput estimate, dotted).
    ``viewers`` picks whom to draw (default: the first four).

    Example::

        fig = buffer_and_bitrate(audience.timeline, viewers=[0, 1, 2])
    """
    chosen = list(viewers) if viewers is not None else list(pd.unique(timeline["viewer"]))[:4]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    rows = timeline[timeline["viewer"].isin(chosen)].sort_values("t_s")
    if rows.empty:
        _no_data(top)
        _no_data(bottom)
    else:
        for viewer in chosen:
            mine = rows[rows["viewer"] == viewer]
            if mine.empty:
                continue
            (line,) = top.plot(mine["t_s"], mine["buffer_s"], marker=".", label=f"viewer {viewer}")
            bottom.plot(mine["t_s"], mine["bitrate_kbps"], drawstyle="steps-post", color=line.get_color(),
                        label=f"viewer {viewer}")
            if "estimate_kbps" in mine.columns and mine["estimate_kbps"].notna().any():
                bottom.plot(mine["t_s"], mine["estimate_kbps"], linestyle=":", color=line.get_color(), alpha=0.6)
        _limit_line(bottom, rows)
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
    top.set_title(heading)
    top.set_ylabel("buffer (s)")
    bottom.set_ylabel("bitrate (kbit/s)\ndotted: estimate")
    bottom.set_xlabel("seconds since play")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return fig


def rung_distribution(shares: pd.Series | pd.DataFrame, *, heading: str = "Share of play time per rung") -> Figure:
    """The share of play time spent on each rung (index: bitrate in kbit/s), in percent.

    A Series is one audience; a DataFrame compares several (one column each, e.g. without and with
    a bandwidth limit), as :func:`labkit.analysis.experience.rung_shares` returns them.

    Example::

        fig = rung_distribution(qoe.rung_shares(timeline, by="run"))
    """
    frame = shares.to_frame("share") if isinstance(shares, pd.Series) else shares
    percent = (frame * 100).round(1)
    percent.index = [f"{float(rung):g} kbit/s" for rung in frame.index]
    fig = grouped_bars(percent, title=heading, ylabel="share of play time (%)", xlabel="rung")
    legend = fig.axes[0].get_legend()
    if isinstance(shares, pd.Series) and legend is not None:
        legend.remove()
    return fig


def throttle_steps(
    timeline: pd.DataFrame,
    *,
    viewers: Sequence[object] | None = None,
    heading: str = "Bitrate chosen under a bandwidth limit",
) -> Figure:
    """The rungs the viewers chose over time (step lines) against the bandwidth limit (dashed).

    ``timeline`` as for :func:`buffer_and_bitrate`; ``viewers`` picks whom to draw (default: up to
    six). Each chosen rung should sit below the limit once the player's estimate has adapted.

    Example::

        fig = throttle_steps(throttled.timeline)
    """
    chosen = list(viewers) if viewers is not None else list(pd.unique(timeline["viewer"]))[:6]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax = fig.add_subplot()
    rows = timeline[timeline["viewer"].isin(chosen)].sort_values("t_s")
    if rows.empty:
        _no_data(ax)
    else:
        for viewer in chosen:
            mine = rows[rows["viewer"] == viewer]
            if not mine.empty:
                ax.plot(mine["t_s"], mine["bitrate_kbps"], drawstyle="steps-post", marker=".", alpha=0.8,
                        label=f"viewer {viewer}")
        _limit_line(ax, rows)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title(heading)
    ax.set_xlabel("seconds since play")
    ax.set_ylabel("kbit/s")
    ax.grid(alpha=0.3)
    return fig


def qoe_comparison(
    comparison: pd.DataFrame,
    *,
    x: str = "startup_s_player",
    y: str = "startup_s_edge",
    tolerance: float | None = None,
    by: str | None = None,
    heading: str = "Startup per session: player against edge (CMCD)",
    unit: str = "s",
    xlabel: str = "as the player reported it",
    ylabel: str = "as the edge estimated it (CMCD)",
) -> Figure:
    """A scatter of one figure per session as the player reported it (x) and as the edge saw it (y).

    The solid line is y = x (perfect agreement); with ``tolerance`` a shaded band shows how far
    apart the two may be (± tolerance, in the figures' unit). ``comparison`` is a
    :func:`labkit.analysis.experience.compare` frame; ``by`` names a column whose values get a colour each (e.g.
    the run a session belongs to).

    Example::

        fig = qoe_comparison(qoe.compare(audience.sessions, edge), tolerance=0.5)
    """
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    points = comparison[[x, y, *([by] if by else [])]].dropna(subset=[x, y])
    if points.empty:
        _no_data(ax)
    else:
        high = float(max(points[x].max(), points[y].max())) * 1.1 or 1.0
        diagonal = np.array([0.0, high])
        ax.plot(diagonal, diagonal, color="black", linewidth=1, label="y = x")
        if tolerance is not None:
            ax.fill_between(diagonal, diagonal - tolerance, diagonal + tolerance, color="grey", alpha=0.2,
                            label=f"± {tolerance:g} {unit}")
        groups: list[tuple[str | None, pd.DataFrame]] = (
            [(str(name), group) for name, group in points.groupby(by, sort=False)] if by else [(None, points)])
        for name, group in groups:
            label = f"{len(group)} sessions" if name is None else f"{name}: {len(group)} sessions"
            ax.scatter(group[x], group[y], s=18, alpha=0.8, label=label)
        ax.set_xlim(0, high)
        ax.set_ylim(0, high)
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize="small")
    ax.set_title(heading)
    ax.set_xlabel(f"{xlabel} ({unit})")
    ax.set_ylabel(f"{ylabel} ({unit})")
    ax.grid(alpha=0.3)
    return fig
