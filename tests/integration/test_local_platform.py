"""The local target with real processes: supervisord, Prometheus, Alertmanager on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from labkit import platform
from labkit.clients.prometheus import Prometheus
from labkit.core.config import LabConfig
from labkit.core.errors import ComponentFailedError, LabBusyError, MissingBinaryError, PortInUseError
from labkit.core.ports import listening
from labkit.core.wait import until
from labkit.platform.layers import monitoring
from labkit.platform.layers.monitoring import probes
from labkit.targets.local.labdir import LabDir
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration


def _all_ports(target: LocalTarget) -> list[int]:
    # The target's components: the platform's, with the mesh's sidecars when it is on.
    return [p for c in target.components for p in c.local_ports(target.cfg)]


def test_up_status_and_down_leave_nothing_behind(local_lab: LocalTarget) -> None:
    statuses = local_lab.up()
    assert {s.name: (s.state, s.healthy) for s in statuses} == {
        c.name: ("running", True) for c in local_lab.components}
    pids = [pid for s in statuses for pid in s.pids]
    supervisor_pid = local_lab.supervisor.pid()
    assert supervisor_pid is not None

    # Prometheus scrapes every component that exposes metrics, as its job
    prom = Prometheus(local_lab.endpoint("prometheus"))
    # (the nginx exporters share the job nginx) and probes through every PoP (the job blackbox).
    # With the mesh on, the sidecars' Envoy stats too (their job envoy-stats).
    jobs = {*platform.scrape_jobs(), probes.JOB, *(c.scrape_job for c in local_lab.components if c.scrape_job)}
    targets = prom.wait_for_targets(sorted(jobs), timeout=60)
    assert set(targets["job"]) == jobs
    # ...and loaded the one rules file.
    rules = httpx.get(local_lab.endpoint("prometheus") + "/api/v1/rules", timeout=5).json()
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert "ComponentDown" in names

    # Each component's own log is one call away.
    assert "Server is ready to receive web requests" in local_lab.logs("prometheus")
    assert len(local_lab.logs("alertmanager", lines=3).splitlines()) <= 3

    # A second up is idempotent: same processes, still healthy.
    again = local_lab.up()
    assert sorted(pid for s in again for pid in s.pids) == sorted(pids)

    local_lab.down()
    for pid in [*pids, supervisor_pid]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert listening(_all_ports(local_lab)) == []
    assert all(s.state == "stopped" for s in local_lab.status())
    assert LabDir(local_lab.cfg).exists()  # down keeps state; purge removes it


def test_platform_outlives_the_process_that_started_it(lab_cfg: LabConfig) -> None:
    env = {**os.environ, "OTTLAB_HOME": str(lab_cfg.home), "OTTLAB_BASE_PORT": str(lab_cfg.base_port)}
    ottlab = [sys.executable, "-m", "labkit.cli"]
    try:
        subprocess.run([*ottlab, "up"], env=env, check=True, timeout=120, capture_output=True)
        # The `up` process has exited; its platform keeps serving, as a cluster would.
        assert httpx.get(f"http://127.0.0.1:{lab_cfg.base_port + 90}/-/ready", timeout=5).status_code == 200
        out = subprocess.run([*ottlab, "status", "--json"], env=env, check=True, timeout=60,
                             capture_output=True, text=True).stdout
        assert '"healthy": true' in out and '"scrape_targets"' in out
    finally:
        subprocess.run([*ottlab, "down", "--purge"], env=env, check=True, timeout=120)
    assert not lab_cfg.home.exists()
    assert listening(_all_ports(LocalTarget(lab_cfg, platform.components(), platform.layers()))) == []


def test_killed_component_is_restarted_and_keeps_its_data(local_lab: LocalTarget) -> None:
    local_lab.up(["monitoring"])
    prom = Prometheus(local_lab.endpoint("prometheus"))
    prom.wait_for_targets(["prometheus"], timeout=30)
    data_dir = local_lab.cfg.data_dir / "prometheus"
    assert any(data_dir.iterdir())
    old_pid = local_lab.status()[0].pids[0]
    prom.wait_for_targets(["prometheus", "alertmanager"], timeout=30)
    # At least one scrape of both is in the TSDB before the kill.
    prom.wait_for_samples("up", by="job", count=1, groups=["prometheus", "alertmanager"], minutes=2, timeout=30)
    killed_at = pd.Timestamp.now(tz="UTC")

    local_lab.kill("prometheus")

    def restarted() -> bool:
        status = {s.name: s for s in local_lab.status()}["prometheus"]
        return status.healthy and bool(status.pids) and status.pids[0] != old_pid

    until(restarted, 30, 0.5, "prometheus to come back (healthy, a new pid) after SIGKILL")
    # The TSDB written before the kill is still there: samples from before the restart answer.
    frame = prom.query_range("up", minutes=2, step="1s")
    before = frame[frame["timestamp"] < killed_at]
    assert {"prometheus", "alertmanager"} <= set(before["job"]) <= set(platform.scrape_jobs(["monitoring"])), frame


def test_restart_gives_a_new_process(local_lab: LocalTarget) -> None:
    local_lab.up(["monitoring"])
    before = {s.name: s.pids for s in local_lab.status()}["alertmanager"]
    after = local_lab.restart("alertmanager")
    assert after.healthy and after.pids != before


def test_taken_port_names_its_holder(local_lab: LocalTarget) -> None:
    port = monitoring.ALERTMANAGER.local_port(local_lab.cfg)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests leave TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(PortInUseError, match=rf"port {port} .* in use by \S+ \(pid {os.getpid()}\)") as info:
            local_lab.up()
    assert "OTTLAB_BASE_PORT" in str(info.value)
    assert local_lab.supervisor.pid() is None  # nothing was started


def test_second_up_while_one_is_running_is_refused(local_lab: LocalTarget) -> None:
    with LabDir(local_lab.cfg).lock(), pytest.raises(LabBusyError, match="another ottlab command"):
        local_lab.up()


def test_missing_binary_is_named_with_its_package(lab_cfg: LabConfig) -> None:
    broken = replace(monitoring.ALERTMANAGER, binary="ottlab-no-such-program", binary_aliases=())
    target = LocalTarget(lab_cfg, [monitoring.PROMETHEUS, broken], platform.layers())
    with pytest.raises(MissingBinaryError, match="'ottlab-no-such-program' is not installed") as info:
        target.up()
    assert "prometheus-alertmanager" in str(info.value) and "make bootstrap" in str(info.value)


def test_failed_start_reports_the_last_log_lines(lab_cfg: LabConfig) -> None:
    broken = replace(monitoring.PROMETHEUS, args=("--config.file=/nonexistent/prometheus.yml",
                                                  "--web.listen-address={host}:{port_http}"))
    target = LocalTarget(replace(lab_cfg, ready_timeout=20), [broken], ())
    try:
        with pytest.raises(ComponentFailedError, match="prometheus") as info:
            target.up()
        assert "nonexistent" in info.value.log_tail
        assert "ottlab logs prometheus" in str(info.value)
    finally:
        target.down(purge=True)


def test_down_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    target = LocalTarget(LabConfig(home=tmp_path, base_port=28000), platform.components(), platform.layers())
    with pytest.raises(Exception, match="not made by ottlab"):
        target.down(purge=True)
    assert (tmp_path / "notes.txt").exists()


def test_orphan_free_after_supervisor_is_killed(local_lab: LocalTarget) -> None:
    """If supervisord itself dies, `down` still stops the children it left (they are ours)."""
    local_lab.up()
    pid = local_lab.supervisor.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, 0.05,
          f"supervisord (pid {pid}) to die", ignoring=(psutil.NoSuchProcess,))
    local_lab.down()
    assert listening(_all_ports(local_lab)) == []
