"""Alertmanager's routing and inhibition, as declared in labkit.platform.layers.monitoring.alerting, by the real tools.

``amtool`` checks the committed configuration and says which receiver each severity reaches; a
real Alertmanager, started here on a free port with that configuration, is sent the alerts of
incidents and asked which it inhibits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from labkit.core.wait import until
from labkit.platform.layers.monitoring import alerting

pytestmark = pytest.mark.integration
CONFIG = alerting.alertmanager_path()


def amtool(*args: str) -> str:
    proc = subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_committed_configuration_is_valid() -> None:
    out = amtool("check-config", CONFIG)
    assert f"{len(alerting.INHIBITIONS)} inhibit rules" in out


@pytest.mark.parametrize(("severity", "receiver"), [*alerting.RECEIVERS.items(), ("info", alerting.RECEIVER)])
def test_each_severity_reaches_its_receiver(severity: str, receiver: str) -> None:
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}", f"severity={severity}", "alertname=Any")
    assert out.split() == [receiver]


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "prometheus-alertmanager is not installed (make bootstrap)"
    home: Path = tmp_path_factory.mktemp("am")
    with socket.socket() as sock:  # a free port, as the other integration tests find one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, f"--config.file={CONFIG}", f"--storage.path={home}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(ready, 30, 0.2, "the test's Alertmanager to be ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _send(url: str, *alerts: dict[str, str]) -> None:
    body = [{"labels": labels} for labels in alerts]
    assert httpx.post(f"{url}/api/v2/alerts", json=body, timeout=5).status_code == 200


def _inhibited(url: str, alertname: str, **labels: str) -> list[str]:
    """The alerts inhibiting the one named (its fingerprint's inhibitors' names are not given: their fingerprints)."""
    for alert in httpx.get(f"{url}/api/v2/alerts", timeout=5).json():
        if alert["labels"]["alertname"] == alertname and all(alert["labels"].get(k) == v for k, v in labels.items()):
            return list(alert["status"]["inhibitedBy"])
    raise AssertionError(f"{alertname} {labels} is not in Alertmanager")


def test_a_pop_down_inhibits_its_own_probe_alerts_only(alertmanager: str) -> None:
    _send(alertmanager,
          {"alertname": "PoPDown", "pop": "edge-1", "severity": "warning"},
          {"alertname": "ProbeFailing", "pop": "edge-1", "probe": "segment", "severity": "warning"},
          {"alertname": "ProbeFailing", "pop": "edge-0", "probe": "segment", "severity": "warning"})

    def settled() -> bool:
        return bool(_inhibited(alertmanager, "ProbeFailing", pop="edge-1"))

    until(settled, 15, 0.2, "ProbeFailing of edge-1 to be inhibited by PoPDown of edge-1")
    assert _inhibited(alertmanager, "ProbeFailing", pop="edge-0") == []
    assert _inhibited(alertmanager, "PoPDown", pop="edge-1") == []


def test_an_origin_outage_inhibits_every_pops_hit_ratio_and_the_offload(alertmanager: str) -> None:
    _send(alertmanager,
          {"alertname": "OriginDown", "severity": "warning"},
          {"alertname": "HitRatioDrop", "pop": "edge-0", "severity": "warning"},
          {"alertname": "HitRatioDrop", "pop": "edge-3", "severity": "warning"},
          {"alertname": "OriginOffloadDrop", "severity": "warning"},
          {"alertname": "CasRefusalsSpike", "severity": "warning"})

    def settled() -> bool:
        return all(_inhibited(alertmanager, name, **labels) for name, labels in (
            ("HitRatioDrop", {"pop": "edge-0"}), ("HitRatioDrop", {"pop": "edge-3"}), ("OriginOffloadDrop", {})))

    until(settled, 15, 0.2, "OriginDown to inhibit the hit-ratio and offload alerts")
    assert _inhibited(alertmanager, "CasRefusalsSpike") == []


def test_a_page_inhibits_the_ticket_of_its_slo_only(alertmanager: str) -> None:
    _send(alertmanager,
          {"alertname": "VideoStartFailuresBudgetBurn", "slo": "VideoStartFailures", "severity": "page"},
          {"alertname": "VideoStartFailuresBudgetBurnSlow", "slo": "VideoStartFailures", "severity": "ticket"},
          {"alertname": "StartupTimeBudgetBurnSlow", "slo": "StartupTime", "severity": "ticket"})

    def settled() -> bool:
        return bool(_inhibited(alertmanager, "VideoStartFailuresBudgetBurnSlow"))

    until(settled, 15, 0.2, "the VSF page to inhibit the VSF ticket")
    assert _inhibited(alertmanager, "StartupTimeBudgetBurnSlow") == []
