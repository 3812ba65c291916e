"""The cluster runs the lab's alert timing, as the local target does (labkit.targets.kube.monitoring).

Notebook 06 derives its alerts' windows from ``alerting.timing_from()`` (fast under ``CI=true``):
on kube, ``up`` gives Prometheus and Alertmanager the same rules, evaluation interval and group waits
as a local lab of that timing writes, and stamps the timing on their pods so that a change rolls
them; with the real timing the committed files are applied as they are. ``route_alerts`` writes
Alertmanager's configuration of the same timing.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from test_kube_target import FakeCluster, apis_target, settle_deployments

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.layers import monitoring as local_monitoring
from labkit.platform.layers.monitoring import RULES_CONFIG, alerting
from labkit.targets.kube import manifest, monitoring

CONFIGMAPS = "v1/configmaps"
DEPLOYMENTS = "apps/v1/deployments"


@functools.cache
def rendered() -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir("kind")))


def config_with(objects: list[dict[str, Any]], key: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and key in (o.get("data") or {})]
    return found


def test_the_real_timing_applies_the_committed_files_as_they_are() -> None:
    assert monitoring.with_alert_timing(rendered(), alerting.REAL) == list(rendered())


def test_the_fast_timing_gives_the_cluster_what_a_fast_local_lab_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTLAB_ALERT_TIMING", "fast")
    timed = monitoring.with_alert_timing(rendered(), alerting.FAST)
    local = local_monitoring.write_configs(LabConfig(base_port=20000), platform.components())

    rules = config_with(timed, RULES_CONFIG)["data"][RULES_CONFIG]
    assert yaml.safe_load(rules) == yaml.safe_load(local[RULES_CONFIG]) != yaml.safe_load(
        config_with(list(rendered()), RULES_CONFIG)["data"][RULES_CONFIG])
    routes = config_with(timed, monitoring.ALERTMANAGER_CONFIG)["data"][monitoring.ALERTMANAGER_CONFIG]
    assert yaml.safe_load(routes) == yaml.safe_load(local["alertmanager.yml"])
    assert yaml.safe_load(routes)["route"]["group_wait"] == alerting.FAST.group_wait
    prometheus = yaml.safe_load(config_with(timed, monitoring.PROMETHEUS_CONFIG)["data"]["prometheus.yml"])
    committed = yaml.safe_load(config_with(list(rendered()), monitoring.PROMETHEUS_CONFIG)["data"]["prometheus.yml"])
    assert prometheus["global"]["evaluation_interval"] == alerting.FAST.evaluation_interval == yaml.safe_load(
        local["prometheus.yml"])["global"]["evaluation_interval"]
    # Nothing else of Prometheus' configuration changes: the scrape jobs are the committed ones.
    assert {k: v for k, v in prometheus.items() if k != "global"} == {k: v for k, v in committed.items()
                                                                      if k != "global"}
    # Same names (the pods' references hold); the pods that mount them are stamped, and only those.
    assert [manifest.name(o) for o in timed] == [manifest.name(o) for o in rendered()]
    stamped = {manifest.name(o) for o in timed if monitoring.TIMING_ANNOTATION in
               ((o.get("spec") or {}).get("template", {}).get("metadata", {}).get("annotations") or {})}
    assert stamped == {"prometheus", "alertmanager"}
    for before, after in zip(rendered(), timed, strict=True):
        if manifest.name(before) not in stamped and before["kind"] != "ConfigMap":
            assert before == after


@pytest.mark.parametrize("timing", [alerting.REAL, alerting.FAST], ids=lambda t: t.name)
def test_up_applies_the_timing_the_lab_runs_with(
    fake: FakeCluster, lab_cfg: LabConfig, monkeypatch: pytest.MonkeyPatch, timing: alerting.Timing
) -> None:
    monkeypatch.setenv("OTTLAB_ALERT_TIMING", timing.name)
    settle_deployments(fake)
    target = apis_target(fake, lab_cfg)
    try:
        target.up(["monitoring"])
    finally:
        target.close()

    prometheus = fake.stored(DEPLOYMENTS, "prometheus")
    assert prometheus is not None
    annotations = prometheus["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations.get(monitoring.TIMING_ANNOTATION) == (None if timing == alerting.REAL else timing.name)
    alertmanager = fake.stored(DEPLOYMENTS, "alertmanager")
    assert alertmanager is not None
    (name,) = [v["configMap"]["name"] for v in alertmanager["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    stored = fake.stored(CONFIGMAPS, name)
    assert stored is not None
    assert yaml.safe_load(stored["data"][monitoring.ALERTMANAGER_CONFIG])["route"]["group_wait"] == timing.group_wait
