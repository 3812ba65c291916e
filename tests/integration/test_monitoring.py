"""The monitoring layer's files checked by the real tools, and the query helpers against a real Prometheus."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from labkit import platform
from labkit.clients.prometheus import Prometheus
from labkit.core.config import LabConfig
from labkit.core.errors import PrometheusError
from labkit.platform import mesh
from labkit.platform.layers import monitoring
from labkit.platform.layers.monitoring import alerting
from labkit.targets.local.labdir import LabDir
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_rules_file_is_valid() -> None:
    out = _run("promtool", "check", "rules", str(monitoring.rules_file()))
    every = [*alerting.alerts()]
    assert f"SUCCESS: {len(every) + len(alerting.SLOS) * len(alerting.WINDOWS)} rules found" in out


def test_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in _run("promtool", "test", "rules", "tests/monitoring/alert-rules.test.yml")


def test_generated_configs_are_valid(lab_cfg: LabConfig) -> None:
    lab = LabDir(lab_cfg)
    lab.ensure()
    for relative, text in monitoring.write_configs(lab_cfg, platform.components()).items():
        lab.write_file(relative, text)
    out = _run("promtool", "check", "config", str(lab_cfg.conf_dir / "prometheus.yml"))
    rules = len(alerting.alerts()) + len(alerting.SLOS) * len(alerting.WINDOWS)
    assert "SUCCESS" in out and f"{rules} rules found" in out
    _run("amtool", "check-config", str(lab_cfg.conf_dir / "alertmanager.yml"))


def test_queries_return_dataframes(local_lab: LocalTarget) -> None:
    local_lab.up(["monitoring"])
    prom = Prometheus(local_lab.endpoint("prometheus"), timeout=5)
    prom.wait_for_targets(["prometheus", "alertmanager"], timeout=30)

    prom.wait_for_targets(["process"], timeout=30)
    instant = prom.query("up")
    # The monitoring layer alone: Prometheus, Alertmanager and the process exporter (no PoP to probe yet).
    assert set(instant["job"]) == {"prometheus", "alertmanager", "process"}
    assert (instant["value"] == 1.0).all()
    assert isinstance(instant["timestamp"].iloc[0], pd.Timestamp)

    series = prom.query_range('up{job="prometheus"}', minutes=1, step="1s")
    assert len(series) >= 1 and list(series.columns)[-2:] == ["timestamp", "value"]

    with pytest.raises(PrometheusError, match="refused") as info:
        prom.query("up{")
    assert not info.value.retryable


def test_a_down_prometheus_is_a_clear_retryable_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PrometheusError, match="cannot connect: is it running") as info:
        Prometheus(f"http://127.0.0.1:{port}", timeout=2).query("up")
    assert info.value.retryable
    assert "ottlab up" in str(info.value)


def test_prometheus_scrapes_only_the_layers_brought_up(local_lab: LocalTarget) -> None:
    local_lab.up(["monitoring"])
    prom = Prometheus(local_lab.endpoint("prometheus"), timeout=5)
    monitoring_jobs = local_lab.scrape_jobs(["monitoring"])
    assert set(prom.wait_for_targets(monitoring_jobs, timeout=30)["job"]) == set(monitoring_jobs)
    local_lab.up(["apis"])  # a later layer joins the scrape config (Prometheus reloads it)
    # ... with the APIs' sidecars when the mesh is on (their job envoy-stats), and the key path's probe
    # (the gateway is up; no PoP is, so no PoP is probed).
    jobs = {*local_lab.scrape_jobs(["monitoring", "apis"]), platform.PROBE_JOB}
    assert (mesh.STATS_JOB in jobs) == (local_lab.cfg.mesh != "off")
    assert set(prom.wait_for_targets(sorted(jobs), timeout=60)["job"]) == jobs
