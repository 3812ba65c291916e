"""A Grafana dashboard drawn by matplotlib: the same JSON, queried through labkit's Prometheus client.

No Grafana server is needed: :func:`render` reads a dashboard's JSON model (the committed file of
:mod:`labkit.analysis.dashboards`), runs each panel's PromQL over the last ``minutes`` and lays the
panels out on Grafana's 24-column grid by their ``gridPos``, in their unit and thresholds::

    fig = render("delivery", Prometheus(target.endpoint("prometheus")), minutes=10, variables={"pop": "edge-0"})
    fig.savefig("delivery.png")

* ``timeseries``: one line per series (named by the query's legend), thresholds as dashed lines;
* ``stat``: the last value as a big number in its threshold step's colour;
* ``heatmap``: a histogram's buckets over time;
* a ``row``: its title across the figure; any other panel type says it is not drawn here.

Template variables are ``.*`` (Grafana's All) unless ``variables`` gives a value (a list is
joined with ``|``); ``$__rate_interval`` is Grafana's rule, max(4 × scrape interval, step +
scrape interval). A query that fails (a syntax error, Prometheus down) shows its error in its
panel; the other panels are drawn.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from labkit.clients.prometheus import Prometheus
from labkit.core.errors import ConfigError, LabError
from labkit.core.wait import until
from labkit.platform.layers.monitoring import SCRAPE_INTERVAL

GRID_COLUMNS = 24
FIGURE_WIDTH_IN = 18.0
GRID_ROW_IN = 0.3            # one gridPos unit of height (Grafana's is 30 px)
POINTS = 120                 # samples per series over the window
SCRAPE_S = int(SCRAPE_INTERVAL.rstrip("s"))
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_JOB = re.compile(r'\bjob="([^"]+)"')
_COLOURS = {"green": "#37872d", "orange": "#e07b00", "red": "#c4162a", "blue": "#1f60c4", "yellow": "#e0b400"}


def step_seconds(minutes: float) -> int:
    """The range queries' step: about :data:`POINTS` samples over the window, never below the scrape interval."""
    return max(SCRAPE_S, math.ceil(minutes * 60 / POINTS))


def rate_interval(step_s: int) -> str:
    """Grafana's ``$__rate_interval`` for a step: max(4 × scrape interval, step + scrape interval)."""
    return f"{max(4 * SCRAPE_S, step_s + SCRAPE_S)}s"


def values_of(model: Mapping[str, Any], given: Mapping[str, str | Sequence[str]] | None = None) -> dict[str, str]:
    """Each template variable of ``model``: its given value (a list joined by ``|``) or its All value (``.*``).

    A value given for a variable the dashboard does not have is a :class:`ConfigError`.
    """
    declared = {v["name"]: v.get("allValue") or ".*" for v in model.get("templating", {}).get("list", [])}
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(f"dashboard {model.get('title', '?')!r} has no variable {', '.join(unknown)}",
                          hint=f"its variables: {', '.join(declared) or 'none'}")
    values = dict(declared)
    for name, value in given.items():
        values[name] = value if isinstance(value, str) else "|".join(value)
    return values


def expand(expr: str, values: Mapping[str, str], rate: str) -> str:
    """``expr`` with ``$__rate_interval`` and the template variables (``$x``, ``${x}``, ``[[x]]``) replaced."""
    expr = expr.replace("$__rate_interval", rate)

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(one, expr)


def legend(template: str, labels: Mapping[str, Any], fallback: str) -> str:
    """A series' name from its query's legend format (``{{pop}} {{status}}``), else ``fallback``."""
    if not template:
        return fallback
    return _LEGEND.sub(lambda m: str(labels.get(m.group(1), "")), template).strip() or fallback


def format_value(value: float, unit: str) -> str:
    """``value`` as Grafana shows it in ``unit`` (the units the lab's dashboards use; others as a suffix)."""
    if value is None or not math.isfinite(value):
        return "–"
    if unit == "percentunit":
        return f"{_number(value * 100)}%"
    if unit == "percent":
        return f"{_number(value)}%"
    if unit == "s":
        if abs(value) < 1 and value != 0:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s" if abs(value) < 120 else f"{value / 60:.3g} min"
    if unit == "ms":
        return f"{value:.3g} ms"
    if unit == "bytes":
        return _scaled(value, 1024, ["B", "KiB", "MiB", "GiB", "TiB"])
    if unit == "bps":
        return _scaled(value, 1000, ["b/s", "kb/s", "Mb/s", "Gb/s", "Tb/s"])
    if unit == "Kbits":
        return _scaled(value * 1000, 1000, ["b/s", "kb/s", "Mb/s", "Gb/s", "Tb/s"])
    if unit == "reqps":
        return f"{_short(value)} req/s"
    if unit in ("cps", "ops"):
        return f"{_short(value)}/s"
    if unit.startswith("suffix:"):
        return f"{_short(value)}{unit.removeprefix('suffix:')}"
    if unit in ("short", "none", ""):
        return _short(value)
    return f"{_short(value)} {unit}"


def _number(value: float) -> str:
    """Three significant digits; a large number in full with thousands separators, never 1e+03."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _short(value: float) -> str:
    return _scaled(value, 1000, ["", "K", "M", "G", "T"]).rstrip()


def _scaled(value: float, base: int, names: list[str]) -> str:
    index = 0
    while abs(value) >= base and index < len(names) - 1:
        value /= base
        index += 1
    return f"{value:.3g} {names[index]}".rstrip()


def _colour(name: str) -> str:
    return _COLOURS.get(name, name)


def threshold_colour(value: float, steps: Sequence[Mapping[str, Any]]) -> str:
    """The colour of the highest threshold step ``value`` reaches (the first step has no value: the base)."""
    colour = "blue"
    for step in steps:
        if step.get("value") is None or (math.isfinite(value) and value >= step["value"]):
            colour = step.get("color", colour)
    return _colour(colour)


def render(model: Mapping[str, Any], prometheus: Prometheus, *, minutes: float = 15.0,
           variables: Mapping[str, str | Sequence[str]] | None = None, end: datetime | None = None) -> Figure:
    """Dashboard ``model`` (Grafana's JSON) over the last ``minutes`` as one figure, panels where gridPos puts them."""
    if minutes <= 0:
        raise ConfigError(f"minutes must be positive, got {minutes:g}")
    values = values_of(model, variables)
    step = step_seconds(minutes)
    window = _Window(prometheus, minutes, f"{step}s", end or datetime.now(UTC), values, rate_interval(step))
    panels = model.get("panels", [])
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    height = rows * GRID_ROW_IN + 0.6
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height))
    chosen = ", ".join(f"{k}={v}" for k, v in values.items() if v != ".*") or "all"
    fig.suptitle(f"{model.get('title', '')}: last {minutes:.3g} min ({chosen})", x=0.01, ha="left",
                 y=1 - 0.15 / height, fontsize=13, fontweight="bold")
    top = 1 - 0.5 / height   # figure fraction where grid row 0 starts
    unit_h = (top - 0.1 / height) / rows
    for panel in panels:
        grid = panel["gridPos"]
        left, width = grid["x"] / GRID_COLUMNS, grid["w"] / GRID_COLUMNS
        bottom = top - (grid["y"] + grid["h"]) * unit_h
        if panel.get("type") == "row":
            fig.text(left + 0.005, top - (grid["y"] + 0.5) * unit_h, panel.get("title", ""), fontsize=12,
                     fontweight="bold", va="center")
            continue
        pad = 0.004 if panel.get("type") == "stat" else 0.04   # room for the value axis' labels
        ax = fig.add_axes((left + pad, bottom + 0.8 * unit_h, width - pad - 0.006, (grid["h"] - 1.6) * unit_h))
        ax.set_title(panel.get("title", ""), fontsize=9, loc="left")
        _draw(ax, panel, window)
    return fig


def dead_queries(model: Mapping[str, Any], prometheus: Prometheus, *, minutes: float = 15.0,
                 variables: Mapping[str, str | Sequence[str]] | None = None,
                 end: datetime | None = None) -> list[str]:
    """The queries of ``model`` that show nothing over the last ``minutes``, each as ``panel: why: query``.

    A query is dead when Prometheus refuses it, returns no series, or only NaN and infinities: the
    panel would say "No data" (a renamed metric does that). Empty list: every panel has data.
    """
    values = values_of(model, variables)
    step = step_seconds(minutes)
    window = _Window(prometheus, minutes, f"{step}s", end or datetime.now(UTC), values, rate_interval(step))
    dead = []
    for panel in model.get("panels", []):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            try:
                frame = window.query(expr)
            except LabError as exc:
                dead.append(f"{panel.get('title')}: failed ({exc.message}): {expr}")
                continue
            if frame.empty or not np.isfinite(frame["value"].to_numpy(dtype=float)).any():
                dead.append(f"{panel.get('title')}: no data: {expr}")
    return dead


def wait_for_data(model: Mapping[str, Any], prometheus: Prometheus, *, minutes: float = 15.0,
                  timeout: float = 30.0, variables: Mapping[str, str | Sequence[str]] | None = None) -> None:
    """Wait until every query of ``model`` has data (:func:`dead_queries` empty), at most ``timeout`` s.

    A counter born with its first event needs a second scrape before ``rate()`` has a point: a few
    scrape intervals, then a panel still empty is dead, and the error lists its queries.
    """
    dead: list[str] = []

    def alive() -> bool:
        nonlocal dead
        dead = dead_queries(model, prometheus, minutes=minutes, variables=variables)
        return not dead

    title = model.get("title", "?")
    until(alive, timeout, 2, lambda: f"every panel of {title} to show data; dead:\n" + "\n".join(dead))


def unscraped_panels(model: Mapping[str, Any], prometheus: Prometheus) -> list[str]:
    """The titles of the panels whose every query reads a job (``job="..."``) of which Prometheus scrapes no target.

    Such a panel cannot have data in this lab, and it is not broken: the Platform dashboard's mesh
    panels read the Envoy sidecars (job ``envoy-stats``), which a lab without the service mesh does
    not run. A query naming no job, or one job that is scraped, keeps its panel among those that
    must have data.
    """
    found = prometheus.query("count by (job) (up)")
    scraped = set(found["job"]) if "job" in found else set()
    titles = []
    for panel in model.get("panels", []):
        jobs = [set(_JOB.findall(t["expr"])) for t in panel.get("targets", []) if t.get("expr")]
        if jobs and all(named and not named & scraped for named in jobs):
            titles.append(str(panel.get("title")))
    return titles


def without_panels(model: Mapping[str, Any], titles: Sequence[str]) -> dict[str, Any]:
    """``model`` without the panels titled ``titles`` (its rows stay)."""
    return {**model, "panels": [p for p in model.get("panels", []) if p.get("title") not in set(titles)]}


def empty_panels(fig: Figure) -> list[str]:
    """The titles of the panels :func:`render` drew without data ("No data") or with a failed query."""
    return [ax.get_title(loc="left") for ax in fig.axes
            if any(t.get_text() == "No data" or t.get_text().startswith("query failed") for t in ax.texts)]


class _Window:
    """The range every panel is queried over, and its queries' substitutions."""

    def __init__(self, prometheus: Prometheus, minutes: float, step: str, end: datetime,
                 values: Mapping[str, str], rate: str) -> None:
        self.prometheus = prometheus
        self.minutes = minutes
        self.step = step
        self.end = end
        self.values = values
        self.rate = rate

    def query(self, expr: str) -> pd.DataFrame:
        return self.prometheus.query_range(expand(expr, self.values, self.rate), minutes=self.minutes,
                                           step=self.step, end=self.end)


def _draw(ax: Axes, panel: Mapping[str, Any], window: _Window) -> None:
    kind = panel.get("type")
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    steps = defaults.get("thresholds", {}).get("steps", [])
    frames: list[tuple[Mapping[str, Any], pd.DataFrame]] = []
    try:
        for target in panel.get("targets", []):
            if target.get("expr"):
                frames.append((target, window.query(target["expr"])))
    except LabError as exc:
        columns = max(24, 5 * panel.get("gridPos", {}).get("w", 12))   # about the panel's width in characters
        _message(ax, "query failed:\n" + textwrap.fill(str(exc), columns), "#c4162a")
        return
    if kind == "timeseries":
        _timeseries(ax, frames, unit, steps, panel, window)
    elif kind == "stat":
        _stat(ax, frames, unit, steps)
    elif kind == "heatmap":
        _heatmap(ax, frames, unit)
    else:
        _message(ax, f"panel type {kind!r} is not drawn here", "grey")


def _message(ax: Axes, text: str, colour: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=colour, fontsize=8)


def _series(frame: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """One (labels, its rows by time) per series of a range query's long frame that has a finite value.

    A series of NaN only (a ratio of zero rates, a quantile of an empty histogram) is no data, as in Grafana.
    """
    frame = frame[np.isfinite(frame["value"].to_numpy(dtype=float))] if not frame.empty else frame
    if frame.empty:
        return []
    labels = [c for c in frame.columns if c not in ("timestamp", "value")]
    if not labels:
        return [({}, frame.sort_values("timestamp"))]
    out = []
    for key, rows in frame.groupby(labels, dropna=False, sort=True):
        keys = key if isinstance(key, tuple) else (key,)
        out.append(({k: v for k, v in zip(labels, keys, strict=True) if isinstance(v, str)},
                    rows.sort_values("timestamp")))
    return out


def _timeseries(ax: Axes, frames: list[tuple[Mapping[str, Any], pd.DataFrame]], unit: str,
                steps: Sequence[Mapping[str, Any]], panel: Mapping[str, Any], window: _Window) -> None:
    drawn = 0
    for target, frame in frames:
        for labels, rows in _series(frame):
            fallback = ", ".join(f"{k}={v}" for k, v in labels.items()) or target.get("refId", "")
            ax.plot(rows["timestamp"], rows["value"], linewidth=1.2, marker="." if len(rows) < 3 else None,
                    label=legend(target.get("legendFormat", ""), labels, fallback))
            drawn += 1
    if not drawn:
        _message(ax, "No data", "grey")
        return
    # The whole window, as Grafana's time range, even when the series start late.
    end = pd.Timestamp(window.end)
    ax.set_xlim(cast(Any, end - pd.Timedelta(minutes=window.minutes)), cast(Any, end))   # matplotlib's date units
    style = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("thresholdsStyle", {})
    if style.get("mode", "off") != "off":
        for step in steps:
            if step.get("value") is not None:
                ax.axhline(step["value"], color=_colour(step.get("color", "grey")), linestyle="--", linewidth=0.8)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if drawn <= 12:
        ax.legend(fontsize=6, loc="upper left", ncol=2 if drawn > 4 else 1, framealpha=0.6)


def _stat(ax: Axes, frames: list[tuple[Mapping[str, Any], pd.DataFrame]], unit: str,
          steps: Sequence[Mapping[str, Any]]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    shown = [(labels, rows) for _target, frame in frames for labels, rows in _series(frame)]
    if not shown:
        _message(ax, "No data", "grey")
        return
    shown = shown[:4]
    for index, (labels, rows) in enumerate(shown):
        finite = rows["value"][np.isfinite(rows["value"])]
        last = float(finite.iloc[-1]) if len(finite) else math.nan
        colour = threshold_colour(last, steps)
        y = 1 - (index + 0.5) / len(shown)
        if index == 0:   # the sparkline under the number, as Grafana's graph mode "area"
            ax.fill_between(np.linspace(0, 1, len(rows)), 0, _normalised(rows["value"]) * 0.35,
                            color=colour, alpha=0.12, transform=ax.transAxes)
        name = ", ".join(labels.values())
        ax.text(0.5, y, format_value(last, unit), ha="center", va="center", transform=ax.transAxes,
                fontsize=22 if len(shown) == 1 else 12, fontweight="bold", color=colour)
        if name:
            ax.text(0.02, y, name, ha="left", va="center", transform=ax.transAxes, fontsize=6, color="grey")


def _normalised(values: pd.Series) -> np.ndarray:
    array = np.nan_to_num(values.to_numpy(dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    span = array.max() - array.min() if len(array) else 0
    return (array - array.min()) / span if span > 0 else np.zeros_like(array)


def _heatmap(ax: Axes, frames: list[tuple[Mapping[str, Any], pd.DataFrame]], unit: str) -> None:
    frame = frames[0][1] if frames else pd.DataFrame()
    grid = (frame.pivot_table(index="timestamp", columns="le", values="value", aggfunc="sum")
            if not frame.empty and "le" in frame.columns else pd.DataFrame())
    if len(grid.index) < 2:
        _message(ax, "No data", "grey")
        return
    bounds = sorted(grid.columns, key=float)
    cumulative = grid[bounds].fillna(0).to_numpy()
    per_bucket = np.diff(cumulative, axis=1, prepend=0).clip(min=0)
    # Each column is the interval ending at its sample: n samples, n - 1 cells.
    ax.pcolormesh(grid.index.to_numpy(), np.arange(len(bounds) + 1), per_bucket[1:].T,
                  cmap="YlOrRd", shading="flat")
    ax.set_yticks(np.arange(len(bounds)) + 1)
    ax.set_yticklabels(["+Inf" if float(b) == math.inf else format_value(float(b), unit) for b in bounds],
                       fontsize=6)
    ax.tick_params(labelsize=7)
