"""``ottlab fault`` on a local lab with the mesh on: a delay and an abort injected, seen, listed and cleared.

The commands run as a participant types them (the CLI, the lab's own environment); the requests
go where license's app sends its calls to CAS (its sidecar's outbound port), with and without the
header each fault is scoped by. No process restarts on the way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _labs import running_lab
from click.testing import CliRunner, Result

from labkit.cli import main
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration
BASE_PORT = 19000  # sidecar ports reach +715: kept below the ephemeral range (32768-60999)
DELAY_S = 1.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("mesh-faults"), BASE_PORT, ["apis"], mesh="strict") as target:
        yield target


def ottlab(lab: LocalTarget, *args: str) -> Result:
    env = {"OTTLAB_HOME": str(lab.cfg.home), "OTTLAB_BASE_PORT": str(lab.cfg.base_port), "OTTLAB_MESH": "strict",
           "OTTLAB_TARGET": "local"}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def call_cas(lab: LocalTarget, headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
    url = f"http://127.0.0.1:{lab.component('license').local_port(lab.cfg, 'out-cas')}/sessions"
    started = time.monotonic()
    answer = httpx.post(url, json={}, headers=headers or {}, timeout=10)
    return answer, time.monotonic() - started


def stat(lab: LocalTarget, name: str) -> int:
    admin = f"http://127.0.0.1:{lab.component(local_mesh.proxy_name('license')).local_port(lab.cfg, 'http')}"
    return int(local_mesh.stats(admin, f"^{name.replace('.', chr(92) + '.')}$").get(name, "0"))


def test_a_delay_and_an_abort_injected_and_cleared_through_the_cli(lab: LocalTarget, tmp_path: Path) -> None:
    pids = {s.name: s.pids for s in lab.status()}
    _, plain_before = call_cas(lab)

    injected = ottlab(lab, "fault", "inject", "cas", "--delay", f"{DELAY_S:g}", "--header", "x-ottlab-fault=delay")
    assert "injecting: delay 1s of 100% of the requests to cas with x-ottlab-fault: delay" in injected.output
    ottlab(lab, "fault", "inject", "cas", "--abort", "503", "--header", "x-ottlab-abort=yes")
    listed = ottlab(lab, "fault", "list").output.splitlines()
    assert listed[0].split() == ["SERVICE", "MATCH", "DELAY", "ABORT", "PERCENT"]
    assert [line.split() for line in listed[1:]] == [
        ["cas", "x-ottlab-abort:", "yes", "-", "503", "100"],
        ["cas", "x-ottlab-fault:", "delay", "1s", "-", "100"],
    ]

    delays, aborts = stat(lab, "http.outbound_0.0.0.0_8000;.fault.delays_injected"), stat(
        lab, "http.outbound_0.0.0.0_8000;.fault.aborts_injected")
    delayed, took = call_cas(lab, {"x-ottlab-fault": "delay"})
    assert delayed.status_code != 503 and took >= DELAY_S
    aborted, _ = call_cas(lab, {"x-ottlab-abort": "yes"})
    assert aborted.status_code == 503 and "fault filter abort" in aborted.text
    plain, quick = call_cas(lab)
    assert plain.status_code != 503 and quick < DELAY_S / 2, (quick, plain_before)
    assert stat(lab, "http.outbound_0.0.0.0_8000;.fault.delays_injected") == delays + 1
    assert stat(lab, "http.outbound_0.0.0.0_8000;.fault.aborts_injected") == aborts + 1

    cleared = ottlab(lab, "fault", "clear", "cas").output
    assert "cleared: abort 503" in cleared and "cleared: delay 1s" in cleared
    assert ottlab(lab, "fault", "list").output.strip() == "no fault injected"
    after, took = call_cas(lab, {"x-ottlab-fault": "delay", "x-ottlab-abort": "yes"})
    assert after.status_code != 503 and took < DELAY_S / 2
    # The sidecars took each change as it came: no process was restarted.
    assert {s.name: s.pids for s in lab.status()} == pids
