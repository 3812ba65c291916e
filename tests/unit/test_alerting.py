"""The SLOs and alerts, declared once in labkit.platform.layers.monitoring.alerting, and what is generated from them.

- the committed rules, Alertmanager configuration and promtool tests are what the declaration generates;
- every alert has a firing and a quiet promtool case, and a runbook (and every runbook an alert);
- symptoms page (or ticket), causes warn; every inhibition names alerts that exist;
- a test lab's timing divides every ``for:`` and shortens Alertmanager's intervals.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from labkit.core.config import repo_root
from labkit.core.errors import ConfigError
from labkit.platform.layers.monitoring import alerting

ALERTS = alerting.alerts()
NAMES = [a.name for a in ALERTS]
RUNBOOKS = repo_root() / alerting.RUNBOOKS
SECTIONS = ("## What it means", "## What the viewer sees", "## Confirm", "## What to do by hand", "## Verify the fix")


@pytest.mark.parametrize("path", sorted(alerting.files()), ids=lambda p: Path(p).name)
def test_the_committed_file_is_what_the_declaration_generates(path: str) -> None:
    assert Path(path).read_text() == alerting.files()[path], "stale: run `python -m labkit.platform.layers`"


def test_alert_names_are_unique() -> None:
    assert len(set(NAMES)) == len(NAMES)


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    tests = yaml.safe_load(Path(alerting.tests_path()).read_text())["tests"]
    cases: dict[str, list[bool]] = {}
    for test in tests:
        for check in test["alert_rule_test"]:
            cases.setdefault(check["alertname"], []).append(bool(check["exp_alerts"]))
    for name in NAMES:
        got = cases.get(name)
        assert sorted(got or []) == [False, True], f"{name}: one firing and one quiet case, got {got}"
    assert set(cases) == set(NAMES)


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_every_alert_has_its_runbook(alert: alerting.Alert) -> None:
    rule = next(r for g in alerting.rules()["groups"] for r in g["rules"]  # type: ignore[attr-defined]
                if r.get("alert") == alert.name)
    url = rule["annotations"]["runbook_url"]
    assert url == f"{alerting.RUNBOOKS}/{alert.name}.md"
    runbook = repo_root() / url
    assert runbook.is_file(), f"{alert.name} has no runbook {url}"
    text = runbook.read_text()
    assert text.startswith(f"# {alert.name}\n")
    positions = [text.find(section) for section in SECTIONS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), f"{url}: sections {SECTIONS} in order"
    # What to do is concrete: at least one query to confirm with.
    assert "```promql" in text


def test_every_runbook_has_its_alert() -> None:
    orphans = sorted(p.stem for p in RUNBOOKS.glob("*.md") if p.stem not in NAMES)
    assert orphans == [], f"runbooks without an alert: {orphans}"


def test_symptoms_page_and_causes_warn() -> None:
    for alert in ALERTS:
        if alert.slo:
            assert alert.severity == ("ticket" if alert.name.endswith("Slow") else "page"), alert.name
        else:
            assert alert.severity == "warning", alert.name
    assert {a.slo for a in ALERTS if a.slo} == {s.name for s in alerting.SLOS}


def test_each_slo_has_a_budget_and_the_workbook_burn_rates() -> None:
    for slo in alerting.SLOS:
        assert 0 < slo.budget < 0.1 and slo.why and slo.viewer
        page = next(a for a in ALERTS if a.name == f"{slo.name}BudgetBurn")
        for factor, window in (("14.4", "1h"), ("14.4", "5m"), ("6", "6h"), ("6", "30m")):
            assert f"{slo.record(window)} > {factor} * {slo.budget:g}" in page.expr
        # Every window a burn alert reads is recorded.
        for record in re.findall(r"slo:\w+:error_ratio:rate\w+", page.expr):
            assert record in {slo.record(w) for w in alerting.WINDOWS}


def test_inhibitions_name_existing_alerts_and_labels() -> None:
    severities = {a.severity for a in ALERTS}
    for rule in alerting.INHIBITIONS:
        for matcher in (*rule.source, *rule.target):
            label, op, value = matcher.split(" ", 2)
            if label == "alertname":
                names = value.split("|") if op == "=~" else [value]
                assert set(names) <= set(NAMES), matcher
            else:
                assert label == "severity" and value in severities, matcher
    config = alerting.alertmanager_config()
    assert config["inhibit_rules"] == [i.config() for i in alerting.INHIBITIONS]


def test_a_fast_lab_divides_every_for_and_shortens_the_intervals() -> None:
    real = {r["alert"]: r["for"] for g in alerting.rules(alerting.REAL)["groups"]  # type: ignore[attr-defined]
            for r in g["rules"] if "alert" in r}
    fast = {r["alert"]: r["for"] for g in alerting.rules(alerting.FAST)["groups"]  # type: ignore[attr-defined]
            for r in g["rules"] if "alert" in r}
    for name, value in real.items():
        expected = 0 if alerting.seconds(value) == 0 else max(5, alerting.seconds(value) // 10)
        assert alerting.seconds(fast[name]) == expected, name
    route = alerting.alertmanager_config(alerting.FAST)["route"]
    assert (route["group_wait"], route["group_interval"]) == ("5s", "10s")  # type: ignore[index]


def test_the_timing_comes_from_the_environment() -> None:
    assert alerting.timing_from({}) is alerting.REAL
    assert alerting.timing_from({"CI": "true"}) is alerting.FAST
    assert alerting.timing_from({"CI": "true", "OTTLAB_ALERT_TIMING": "real"}) is alerting.REAL
    with pytest.raises(ConfigError, match="not a timing"):
        alerting.timing_from({"OTTLAB_ALERT_TIMING": "slow"})


def test_a_drill_webhook_is_added_to_every_receiver() -> None:
    config = alerting.alertmanager_config(webhook="http://127.0.0.1:9/alerts")
    for receiver in config["receivers"]:  # type: ignore[attr-defined]
        assert receiver["webhook_configs"] == [{"url": "http://127.0.0.1:9/alerts", "send_resolved": True}]
    assert all("webhook_configs" not in r for r in alerting.alertmanager_config()["receivers"])  # type: ignore[attr-defined]
