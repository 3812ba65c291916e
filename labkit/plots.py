"""Plots: each takes data and returns a matplotlib Figure; none calls show() or picks a backend."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


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
