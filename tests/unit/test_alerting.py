"""The SLOs and alerts, declared once in labkit.platform.layers.monitoring.alerting, and what is generated from them.

- the committed rules, Alertmanager configuration and promtool tests are what the declaration generates;
- every alert has a firing and a quiet promtool case, and a runbook (and every runbook an alert);
- symptoms page (or ticket), causes warn; every inhibition names alerts that exist;
- a test lab's timing divides every ``for:`` (keeping their order) and shortens Alertmanager's intervals;
- an incident's alerts: when each fires, which must come first, which are held back, from the declarations.
"""

from __future__ import annotations

import dataclasses
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
        declared = alerting.seconds(value)
        # A tenth, at least 30 s, never longer than declared.
        expected = min(declared, max(30, declared // 10))
        assert alerting.seconds(fast[name]) == expected, name
    # The fast lab keeps the order of the real durations (a shorter `for:` is never made longer than a longer one).
    by_real = sorted(real, key=lambda n: alerting.seconds(real[n]))
    assert [alerting.seconds(fast[n]) for n in by_real] == sorted(alerting.seconds(fast[n]) for n in by_real)
    assert (fast["PoPDown"], fast["ProbeFailing"], fast["PlaybackAvailabilityBudgetBurn"]) == ("20s", "30s", "30s")
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


def test_an_alert_fires_within_its_for_after_a_scrape_and_two_evaluations() -> None:
    window = alerting.firing_window("PoPDown", alerting.REAL, 5)
    assert (window.for_s, window.earliest, window.latest) == (20, 20, 5 + 2 * 5 + 20)
    fast = alerting.firing_window("ProbeFailing", alerting.FAST, 5)
    assert (fast.earliest, fast.latest) == (30, 5 + 2 * 2 + 30)
    assert fast.holds(30.5) and fast.holds(39.9) and not fast.holds(28) and not fast.holds(41)
    with pytest.raises(ConfigError, match="no alert named"):
        alerting.firing_window("PopDown", alerting.REAL, 5)


def test_the_order_of_an_incidents_alerts_follows_from_their_windows() -> None:
    # Fast: PoPDown 20 s (fires by 29 s), ProbeFailing 30 s: PoPDown first.
    assert alerting.firing_order(["ProbeFailing", "PoPDown"], alerting.FAST, 5) == [("PoPDown", "ProbeFailing")]
    # Real: with a 5 s evaluation the windows overlap (20-35 s and 30-45 s): the rules do not order them.
    assert alerting.firing_order(["ProbeFailing", "PoPDown"], alerting.REAL, 5) == []
    # A burn-rate page (2 m) comes after both cause alerts in real timing.
    assert set(alerting.firing_order(["PoPDown", "ProbeFailing", "PlaybackAvailabilityBudgetBurn"], alerting.REAL, 5)) \
        == {("PoPDown", "PlaybackAvailabilityBudgetBurn"), ("ProbeFailing", "PlaybackAvailabilityBudgetBurn")}


def test_the_inhibitions_name_which_of_an_incidents_alerts_are_held_back() -> None:
    assert alerting.inhibited(["PoPDown", "ProbeFailing", "HitRatioDrop"]) == \
        {"ProbeFailing": "PoPDown", "HitRatioDrop": "PoPDown"}
    assert alerting.inhibited(["ProbeFailing"]) == {}
    assert alerting.inhibited(["OriginDown", "OriginOffloadDrop", "PoPDown"]) == {"OriginOffloadDrop": "OriginDown"}
    assert alerting.inhibited(["StartupTimeBudgetBurn", "StartupTimeBudgetBurnSlow"]) == \
        {"StartupTimeBudgetBurnSlow": "StartupTimeBudgetBurn"}
    # In time in both timings: the probe alert's group waits until PoPDown has arrived.
    for timing in (alerting.REAL, alerting.FAST):
        assert alerting.inhibition_in_time("PoPDown", "ProbeFailing", timing, 5)
    # Not so had the fast lab divided every `for:` by ten down to 5 s: ProbeFailing could be notified first.
    old_fast = dataclasses.replace(alerting.FAST, min_for_s=5)
    assert not alerting.inhibition_in_time("PoPDown", "ProbeFailing", old_fast, 5)


def test_a_running_prometheus_interval_names_its_timing() -> None:
    assert alerting.timing_evaluated_every(5.0) is alerting.REAL
    assert alerting.timing_evaluated_every(2) is alerting.FAST
    with pytest.raises(ConfigError, match="every 3 s"):
        alerting.timing_evaluated_every(3)


def test_the_certificate_alert_reads_every_sidecar_certificate_within_the_renewal_window() -> None:
    from labkit.platform.mesh import identity
    from labkit.targets.local import mesh as local_mesh

    # The local target issues a certificate again at `up` inside this window: the alert warns at its start.
    renew_s, ttl_s = local_mesh.RENEW_BEFORE.total_seconds(), identity.WORKLOAD_TTL.total_seconds()
    assert alerting.CERT_EXPIRY_WARN_S == renew_s < ttl_s
    expr = alerting.alert("WorkloadCertificateExpiring").expr
    assert f'job="{local_mesh.STATS_JOB}"' in expr
    # The names Envoy 1.40 writes with Istio's stat tags (the certificate's name stays in the stat's
    # name), read from a sidecar's /stats/prometheus; not the whole-days server gauge (0 for 24 h).
    names = re.compile(alerting.CERT_EXPIRY_METRICS)
    for name in ("envoy_listener_ssl_certificate_unnamed_cert_e3b0c442_expiration_unix_time_seconds",
                 "envoy_cluster_ssl_certificate_unnamed_ca_cert_e3b0c442_expiration_unix_time_seconds",
                 "envoy_cluster_ssl_certificate_default_expiration_unix_time_seconds",
                 "envoy_listener_ssl_certificate_expiration_unix_time_seconds"):
        assert names.fullmatch(name), name
    assert not names.fullmatch("envoy_server_days_until_first_cert_expiring")
