"""WorkloadCertificateExpiring on real Envoy sidecars and a real Prometheus, on loopback.

Two sidecars rendered from the committed mesh resources, with Istio's stat tags as the local target
gives them: cas holding a certificate issued for 1 h, license one issued for the usual 24 h. A
Prometheus scrapes both admins' ``/stats/prometheus`` as the job ``envoy-stats`` and evaluates the
declared rules (a test lab's timing: ``for:`` 30 s). The alert fires for cas's sidecar, with the
time left its expression reads, and never for license's.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labkit.core import programs
from labkit.core.wait import until
from labkit.platform.layers.monitoring import alerting
from labkit.platform.mesh import envoy, identity, resources
from labkit.targets.local.mesh import ISTIO_STATS_TAGS, SERVICE_PORTS, STATS_JOB

pytestmark = pytest.mark.integration
ALERT = "WorkloadCertificateExpiring"


def free_port() -> int:
    # Bound, read and released: another process could take it first (a small race).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[dict[str, int]]:
    """cas (a 1 h certificate) and license (24 h) Envoys: their admin ports by workload."""
    ca = identity.LabCA.ensure(tmp_path / "ca")
    inbound = free_port()
    instances = [envoy.Instance(s, s, envoy.Address(port=inbound if s == "cas" else 9)) for s in SERVICE_PORTS]
    admins = {"cas": free_port(), "license": free_port()}
    sidecars = [
        envoy.Sidecar("cas", "cas", ca.issue("cas", ttl=dt.timedelta(hours=1)), admin=envoy.Address(port=admins["cas"]),
                      inbound=envoy.Address(port=inbound), app=envoy.Address(path=str(tmp_path / "cas.sock"))),
        envoy.Sidecar("license", "license", ca.issue("license"), admin=envoy.Address(port=admins["license"]),
                      outbound={"cas": envoy.Address(port=free_port())}),
    ]
    procs = []
    try:
        for sidecar in sidecars:
            bootstrap = envoy.render(resources.load(), sidecar, instances, SERVICE_PORTS, clients=["ottlab-tools"])
            bootstrap["stats_config"] = {"use_all_default_tags": False, "stats_tags": ISTIO_STATS_TAGS}
            config = envoy.write(bootstrap, tmp_path / f"{sidecar.workload}.json")
            with config.with_suffix(".log").open("wb") as out:
                procs.append(subprocess.Popen(
                    [str(programs.envoy()), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
                     "--log-level", "warn"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
        for name, port in admins.items():
            def live(port: int = port) -> bool:
                return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).text.strip() == "LIVE"

            until(live, 20, 0.05, f"{name}'s envoy to be LIVE", ignoring=(httpx.TransportError,))
        yield admins
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture
def prometheus(tmp_path: Path, sidecars: dict[str, int]) -> Iterator[str]:
    rules = tmp_path / "rules.yml"
    rules.write_text(alerting.dump(alerting.rules(alerting.FAST)))
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "2s", "evaluation_interval": alerting.FAST.evaluation_interval},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": STATS_JOB, "metrics_path": "/stats/prometheus",
                            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in sidecars.values()]}]}],
    }))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as out:
        proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        until(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, 30, 0.1,
              "prometheus to be ready", ignoring=(httpx.TransportError,))
        yield url
    finally:
        stop(proc)


def test_a_sidecar_whose_certificate_ends_within_two_hours_warns(sidecars: dict[str, int], prometheus: str) -> None:
    def ours() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in found if a["labels"]["alertname"] == ALERT]

    for_s = alerting.seconds(alerting.scaled_for(alerting.alert(ALERT).for_, alerting.FAST))
    firing = until(lambda: [a for a in ours() if a["state"] == "firing"], for_s + 30, 0.5, f"{ALERT} to fire")
    cas, license_ = f"127.0.0.1:{sidecars['cas']}", f"127.0.0.1:{sidecars['license']}"
    assert [a["labels"]["instance"] for a in firing] == [cas]
    assert firing[0]["labels"]["job"] == STATS_JOB and firing[0]["labels"]["severity"] == "warning"
    assert all(a["labels"]["instance"] != license_ for a in ours())
    # What the expression reads: under an hour left for cas, about 24 h for license.
    expr = alerting.alert(ALERT).expr.rsplit(" < ", 1)[0]
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]
    left = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
    assert 0 < left[cas] < 3600
    assert 23 * 3600 < left[license_] <= 24 * 3600
