"""The dashboards as code: the committed JSON is what the modules generate, every query is PromQL,
every panel has a unit and thresholds, and the renderer lays them out, substitutes the variables and
shows a failing query in its panel."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import promql_parser
import pytest
from matplotlib.figure import Figure

from labkit.analysis import dashboards
from labkit.analysis.dashboards import figure
from labkit.analysis.dashboards.__main__ import main
from labkit.core.errors import ConfigError, PrometheusError

REQUIRED = {"viewer-qoe", "delivery", "cmcd", "platform", "capacity"}


def models() -> list[tuple[str, dict[str, Any]]]:
    return [(name, dashboards.load(name)) for name in dashboards.names()]


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def test_the_committed_json_is_what_the_modules_generate() -> None:
    assert set(dashboards.names()) >= REQUIRED
    assert dashboards.stale() == [], "run `python -m labkit.analysis.dashboards` and commit the JSON"
    assert main(["--check"]) == 0


def test_a_changed_module_makes_its_file_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    original = dashboards.BUILDERS["delivery"]
    monkeypatch.setitem(dashboards.BUILDERS, "delivery", lambda: {**original(), "title": "Renamed"})
    assert dashboards.stale() == ["delivery"]
    assert main(["--check"]) == 1


@pytest.mark.parametrize(("name", "model"), models(), ids=[n for n, _ in models()])
def test_every_query_is_promql_once_its_variables_are_expanded(name: str, model: dict[str, Any]) -> None:
    values = figure.values_of(model)
    found = dashboards.queries(model)
    assert found, name
    for title, expr in found:
        expanded = figure.expand(expr, values, figure.rate_interval(5))
        assert "$" not in expanded, (title, expanded)
        try:
            promql_parser.parse(expanded)
        except ValueError as exc:
            pytest.fail(f"{name} / {title}: {exc}\n{expanded}")


def test_a_syntax_error_is_caught_by_the_check() -> None:
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("sum(rate(ott_edge_requests_total[1m])")


@pytest.mark.parametrize(("name", "model"), models(), ids=[n for n, _ in models()])
def test_every_panel_has_a_unit_thresholds_a_datasource_and_a_place(name: str, model: dict[str, Any]) -> None:
    titles = [p["title"] for p in panels(model)]
    assert len(titles) == len(set(titles)), f"{name}: two panels share a title"
    cells: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= figure.GRID_COLUMNS, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{name}: {panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        assert defaults["thresholds"]["steps"][0]["value"] is None, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"] and all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"])
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])


def test_the_template_variables() -> None:
    def variables(name: str) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in dashboards.load(name)["templating"]["list"]}

    assert set(variables("viewer-qoe")) == {"title", "pop", "client"}
    assert {"pop"} <= set(variables("delivery")) and {"pop", "title"} <= set(variables("cmcd"))
    for name in dashboards.names():
        for var in variables(name).values():
            assert var["includeAll"] and var["allValue"] == ".*" and var["query"].startswith("label_values(")
    # The QoE panels filter on all three.
    for title, expr in dashboards.queries(dashboards.load("viewer-qoe")):
        assert all(f'{v}=~"${v}"' in expr for v in ("title", "pop", "client")), title


def test_thresholds_say_what_good_is() -> None:
    model = dashboards.load("viewer-qoe")
    (startup,) = [p for p in panels(model) if p["title"] == "Startup p95"]
    steps = startup["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (2, "orange"), (3, "red")]
    colour = figure.threshold_colour
    assert colour(1.2, steps) == colour(0.0, steps) != colour(2.5, steps)
    assert figure.threshold_colour(3.5, steps) == figure.threshold_colour(3.0, steps)


def test_unknown_names_list_the_dashboards() -> None:
    with pytest.raises(ConfigError, match="no dashboard named 'nope'") as caught:
        dashboards.load("nope")
    assert all(name in str(caught.value) for name in REQUIRED)


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (0.0123, "percentunit", "1.23%"), (-28.6, "percentunit", "-2,860%"),
    (0.25, "s", "250 ms"), (2.5, "s", "2.5 s"), (3 * 2**20, "bytes", "3 MiB"),
    (2_500_000, "bps", "2.5 Mb/s"), (3200, "Kbits", "3.2 Mb/s"), (12.5, "reqps", "12.5 req/s"),
    (1.8, "suffix:×", "1.8×"), (1500, "short", "1.5 K"), (float("nan"), "s", "–"),
])
def test_values_in_their_unit(value: float, unit: str, shown: str) -> None:
    assert figure.format_value(value, unit) == shown


class FakePrometheus:
    """Answers every range query with two series, except those naming ``failing``, which it refuses."""

    def __init__(self, failing: str = "") -> None:
        self.failing = failing
        self.asked: list[str] = []

    def query_range(self, promql: str, *, minutes: float, step: str, end: Any = None) -> pd.DataFrame:
        self.asked.append(promql)
        if self.failing and self.failing in promql:
            raise PrometheusError("http://127.0.0.1:1", "refused the request: bad_data")
        times = pd.date_range(end=pd.Timestamp("2026-01-01T12:00:00Z"), periods=12, freq=step)
        if "le)" in promql and "histogram_quantile" not in promql:
            return pd.DataFrame([{"le": le, "timestamp": t, "value": float(i * (n + 1))}
                                 for n, le in enumerate(["0.5", "1", "+Inf"]) for i, t in enumerate(times)])
        return pd.DataFrame([{"pop": pop, "timestamp": t, "value": 0.5 + i / 100}
                             for pop in ("edge-0", "edge-1") for i, t in enumerate(times)])


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_renderer_draws_every_panel_where_its_grid_puts_it(name: str) -> None:
    model = dashboards.load(name)
    prom = FakePrometheus()
    fig = figure.render(model, prom, minutes=10)  # type: ignore[arg-type]
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(panels(model))
    assert len(prom.asked) == len(dashboards.queries(model))
    assert not [q for q in prom.asked if "$" in q]
    assert all("[20s]" in q for q in prom.asked if "rate(" in q)   # Grafana's rate interval: 4 scrapes
    # Left to right and top to bottom as in Grafana: a panel further right has its axes further right.
    by_title = {ax.get_title(loc="left"): ax.get_position() for ax in fig.axes}
    for a in panels(model):
        for b in panels(model):
            if a["gridPos"]["y"] == b["gridPos"]["y"] and a["gridPos"]["x"] < b["gridPos"]["x"]:
                assert by_title[a["title"]].x0 < by_title[b["title"]].x0
            if a["gridPos"]["y"] + a["gridPos"]["h"] <= b["gridPos"]["y"]:
                assert by_title[a["title"]].y0 > by_title[b["title"]].y0
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert set(rows) <= set(texts(fig))


def test_variables_are_all_by_default_or_the_given_values() -> None:
    prom = FakePrometheus()
    figure.render(dashboards.load("viewer-qoe"), prom, minutes=5)  # type: ignore[arg-type]
    assert all('title=~".*"' in q and 'client=~".*"' in q for q in prom.asked)
    prom = FakePrometheus()
    figure.render(dashboards.load("viewer-qoe"), prom, minutes=5,  # type: ignore[arg-type]
                  variables={"pop": ["edge-0", "edge-1"], "client": "browser"})
    assert all('pop=~"edge-0|edge-1"' in q and 'client=~"browser"' in q and 'title=~".*"' in q for q in prom.asked)
    with pytest.raises(ConfigError, match="no variable service"):
        figure.render(dashboards.load("viewer-qoe"), prom, variables={"service": "auth"})  # type: ignore[arg-type]


def test_a_failing_query_shows_its_error_in_its_panel_and_the_rest_is_drawn() -> None:
    model = dashboards.load("delivery")
    fig = figure.render(model, FakePrometheus(failing="origin_fetches"), minutes=5)  # type: ignore[arg-type]
    failed = [ax.get_title(loc="left") for ax in fig.axes if any("query failed" in t.get_text() for t in ax.texts)]
    assert failed == ["Origin fetches per PoP"]
    drawn = [ax for ax in fig.axes if ax.lines]
    assert len(drawn) == len([p for p in panels(model) if p["type"] == "timeseries"]) - 1


def test_a_stat_is_its_last_value_in_its_unit_and_threshold_colour() -> None:
    model: dict[str, Any] = {"title": "t", "panels": [{
        "type": "stat", "title": "Startup p95", "gridPos": {"x": 0, "y": 0, "w": 6, "h": 4},
        "targets": [{"expr": "vector(1)", "refId": "A"}],
        "fieldConfig": {"defaults": {"unit": "s", "thresholds": {"steps": [
            {"value": None, "color": "green"}, {"value": 0.5, "color": "red"}]}}}}]}
    fig = figure.render(model, FakePrometheus(), minutes=1)  # type: ignore[arg-type]
    (ax,) = fig.axes
    numbers = {t.get_text(): t.get_color() for t in ax.texts if t.get_text().endswith("ms")}
    assert numbers == {"610 ms": figure.threshold_colour(0.61, model["panels"][0]["fieldConfig"]["defaults"]
                                                             ["thresholds"]["steps"])}
    assert numbers["610 ms"] == "#c4162a"


def test_ottlab_dashboard_lists_writes_and_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from labkit import cli

    runner = CliRunner()
    listed = runner.invoke(cli.main, ["dashboard", "--list"])
    assert listed.exit_code == 0 and [line.split()[0] for line in listed.output.splitlines()] == dashboards.names()
    unknown = runner.invoke(cli.main, ["dashboard", "nope", "--png", str(tmp_path / "x.png")])
    assert unknown.exit_code == 2 and "viewer-qoe, delivery" in unknown.output
    asked: list[str] = []

    def fake(url: str, timeout: float = 10.0) -> FakePrometheus:
        prom = FakePrometheus()
        prom.asked = asked
        return prom

    monkeypatch.setattr(cli, "Prometheus", fake)
    png = tmp_path / "cmcd.png"
    wrote = runner.invoke(cli.main, ["dashboard", "cmcd", "--png", str(png), "--minutes", "3", "--var", "pop=edge-1"])
    assert wrote.exit_code == 0, wrote.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert asked and all('pop=~"edge-1"' in q for q in asked)
    bad = runner.invoke(cli.main, ["dashboard", "cmcd", "--png", str(png), "--var", "pop"])
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output


def test_dead_queries_are_the_empty_the_nan_and_the_refused() -> None:
    class Answers(FakePrometheus):
        def query_range(self, promql: str, *, minutes: float, step: str, end: Any = None) -> pd.DataFrame:
            if "renamed" in promql:
                return pd.DataFrame(columns=["timestamp", "value"])
            if "quantile" in promql:
                return pd.DataFrame([{"timestamp": pd.Timestamp("2026-01-01T12:00:00Z"), "value": float("nan")}])
            return super().query_range(promql, minutes=minutes, step=step, end=end)

    def one(expr: str) -> dict[str, Any]:
        return {"type": "timeseries", "title": expr, "gridPos": {"x": 0, "y": 0, "w": 1, "h": 1},
                "targets": [{"expr": expr}]}

    model = {"panels": [one("renamed_total"), one("histogram_quantile(0.5, x)"), one("up"), one("fails")]}
    dead = figure.dead_queries(model, Answers(failing="fails"), minutes=5)  # type: ignore[arg-type]
    assert dead == ["renamed_total: no data: renamed_total",
                    "histogram_quantile(0.5, x): no data: histogram_quantile(0.5, x)",
                    "fails: failed (Prometheus at http://127.0.0.1:1: refused the request: bad_data): fails"]


class ScrapedJobs:
    """A Prometheus that scrapes targets of ``jobs`` (its ``up`` counted by job)."""

    def __init__(self, *jobs: str) -> None:
        self.jobs = jobs

    def query(self, promql: str) -> pd.DataFrame:
        assert promql == "count by (job) (up)"
        return pd.DataFrame([{"job": job, "value": 1.0} for job in self.jobs], columns=["job", "value"])


def test_the_mesh_panels_are_set_aside_only_where_no_sidecar_is_scraped() -> None:
    model = dashboards.load("platform")
    mesh = [p["title"] for p in panels(model) if any('job=\\"envoy-stats\\"' in json.dumps(t) for t in p["targets"])]
    assert len(mesh) == 6
    no_mesh = ScrapedJobs("auth", "license", "gateway")
    assert figure.unscraped_panels(model, no_mesh) == mesh  # type: ignore[arg-type]
    assert figure.unscraped_panels(model, ScrapedJobs("auth", "envoy-stats")) == []  # type: ignore[arg-type]
    kept = figure.without_panels(model, mesh)
    assert [p["title"] for p in panels(kept)] == [p["title"] for p in panels(model) if p["title"] not in mesh]
    # The other dashboards read no job by name: a lab lacking any job leaves all their panels to be checked.
    for name, other in models():
        assert name == "platform" or figure.unscraped_panels(other, ScrapedJobs()) == []  # type: ignore[arg-type]
