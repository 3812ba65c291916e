"""The shapes every dashboard is made of, built with Grafana's foundation SDK.

A dashboard module lists rows of panels; each panel is one of :func:`timeseries`, :func:`stat` or
:func:`heatmap`, with its unit, its thresholds and its PromQL (``$pop``-style template variables and
``$__rate_interval`` as Grafana writes them). :func:`dashboard` turns the rows into Grafana's JSON
model, which is what is committed and what :mod:`labkit.analysis.dashboards.figure` draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as gcb
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import heatmap as gh
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gs
from grafana_foundation_sdk.builders import timeseries as gt
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gc
from grafana_foundation_sdk.models import dashboard as gm
from grafana_foundation_sdk.models import prometheus as gpm

# The Prometheus datasource every panel reads: the Grafana add-on provisions it with this uid.
DATASOURCE_UID = "prometheus"
DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
RATE = "$__rate_interval"
TAGS = ["ottlab"]

Builder = gt.Panel | gs.Panel | gh.Panel


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and its legend (``{{label}}`` placeholders, as in Grafana)."""

    expr: str
    legend: str = ""


Steps = Sequence[tuple[float | None, str]]

# Threshold steps: the colour from each value up. Lower is better, or higher is better.
GOOD = "green"
WARN = "orange"
BAD = "red"


def rising(warn: float, bad: float) -> Steps:
    """Green below ``warn``, orange from it, red from ``bad``: for a number that should stay low."""
    return [(None, GOOD), (warn, WARN), (bad, BAD)]


def falling(bad: float, good: float) -> Steps:
    """Red below ``bad``, orange up to ``good``, green from it: for a number that should stay high."""
    return [(None, BAD), (bad, WARN), (good, GOOD)]


NEUTRAL: Steps = [(None, "blue")]


def _thresholds(steps: Steps) -> gd.ThresholdsConfig:
    return (gd.ThresholdsConfig().mode(gm.ThresholdsMode.ABSOLUTE)
            .steps([gm.Threshold(value=value, color=color) for value, color in steps]))


def _targets(panel: Builder, queries: Sequence[Query], heatmap: bool = False) -> None:
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        target = gp.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        if heatmap:
            target = target.format(gpm.PromQueryFormat.HEATMAP)
        panel.with_target(target)


def timeseries(title: str, description: str, unit: str, *queries: Query, steps: Steps = NEUTRAL,
               width: int = 12, height: int = 8, minimum: float | None = None) -> gt.Panel:
    """Lines over time; thresholds drawn as dashed lines."""
    panel = (gt.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .span(width).height(height).thresholds(_thresholds(steps)).line_width(1).fill_opacity(10)
             .thresholds_style(gcb.GraphThresholdsStyleConfig().mode(
                 gc.GraphThresholdsStyleMode.DASHED if steps is not NEUTRAL else gc.GraphThresholdsStyleMode.OFF))
             .legend(gcb.VizLegendOptions().show_legend(True).display_mode(gc.LegendDisplayMode.LIST)
                     .placement(gc.LegendPlacement.BOTTOM)))
    if minimum is not None:
        panel = panel.min(minimum)
    _targets(panel, queries)
    return panel


def stat(title: str, description: str, unit: str, *queries: Query, steps: Steps = NEUTRAL,
         width: int = 4, height: int = 4) -> gs.Panel:
    """A big number, the last value, coloured by its threshold step."""
    panel = (gs.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .span(width).height(height).thresholds(_thresholds(steps))
             .color_mode(gc.BigValueColorMode.VALUE).graph_mode(gc.BigValueGraphMode.AREA)
             .reduce_options(gcb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    _targets(panel, queries)
    return panel


def heatmap(title: str, description: str, unit: str, query: Query, *, width: int = 12, height: int = 8) -> gh.Panel:
    """A histogram's buckets over time (``query`` sums by ``le``): Grafana's heatmap of Prometheus buckets."""
    panel = (gh.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .span(width).height(height).calculate(False).thresholds(_thresholds(NEUTRAL))
             .y_axis(gh.YAxisConfig().unit(unit)))
    _targets(panel, [query], heatmap=True)
    return panel


def variable(name: str, label: str, metric: str, *, of: str | None = None) -> gd.QueryVariable:
    """A template variable listing the values of label ``of`` (default ``name``) on ``metric``; All is ``.*``."""
    query = f"label_values({metric}, {of or name})"
    return (gd.QueryVariable(name).label(label).datasource(DATASOURCE).query(query).definition(query)
            .multi(True).include_all(True).all_value(".*").refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .current(gm.VariableOption(text="All", value="$__all", selected=True)))


def dashboard(uid: str, title: str, description: str, variables: Sequence[gd.QueryVariable],
              rows: Sequence[tuple[str, Sequence[Builder]]]) -> dict[str, Any]:
    """Grafana's JSON model of a dashboard: ``rows`` of panels laid out left to right, top to bottom."""
    board = (gd.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
             .time("now-15m", "now").refresh("10s").timezone("browser")
             .tooltip(gm.DashboardCursorSync.CROSSHAIR))
    for item in variables:
        board = board.with_variable(item)
    for name, panels in rows:
        board = board.with_row(gd.Row(name))
        for panel in panels:
            board = board.with_panel(panel)
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    return model
