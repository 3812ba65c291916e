"""The CLI's answers to bad input: a short message that says what to do, and a distinct exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OTTLAB_HOME", str(tmp_path / "lab"))
    monkeypatch.setenv("OTTLAB_BASE_PORT", "28500")
    return CliRunner()


def test_unknown_target(runner: CliRunner) -> None:
    result = runner.invoke(main, ["up", "--target", "mars"])
    assert result.exit_code == 2
    assert "unknown target 'mars'" in result.output and "local, kube" in result.output


def test_unknown_component(runner: CliRunner) -> None:
    result = runner.invoke(main, ["logs", "nosuch"])
    assert result.exit_code == 2
    assert "no component named 'nosuch'" in result.output and "prometheus" in result.output


def test_restart_when_nothing_runs(runner: CliRunner) -> None:
    result = runner.invoke(main, ["restart", "prometheus"])
    assert result.exit_code == 1
    assert "is not running" in result.output and "ottlab up" in result.output


def test_bad_base_port_from_environment(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTLAB_BASE_PORT", "http")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 2 and "OTTLAB_BASE_PORT='http' is not a whole number" in result.output


def test_foreign_lab_directory(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.txt").write_text("x")
    monkeypatch.setenv("OTTLAB_HOME", str(tmp_path))
    result = runner.invoke(main, ["down", "--purge"])
    assert result.exit_code == 1 and "not made by ottlab" in result.output
    assert (tmp_path / "mine.txt").exists()


def test_up_says_the_mesh_is_on_by_default_and_how_to_run_without_it(runner: CliRunner) -> None:
    result = runner.invoke(main, ["up", "--help"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "STRICT mutual TLS by default" in said and "OTTLAB_MESH=off for none" in said
    assert "ottlab addons install istio-base istiod" in said


def test_status_of_a_lab_never_started(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert '"state": "stopped"' in result.output


def test_kube_target_without_a_cluster(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    result = runner.invoke(main, ["up", "--target", "kube"])
    assert result.exit_code == 1
    assert "no reachable Kubernetes cluster" in result.output and "KUBECONFIG is not set" in result.output
    assert "--target local" in result.output


def test_kube_target_with_a_dead_cluster(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        f"clusters: [{{name: dead, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: nobody}}]\n"
        "users: [{name: nobody, user: {}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = runner.invoke(main, ["status", "--target", "kube"])
    assert result.exit_code == 1
    assert "no reachable Kubernetes cluster" in result.output, result.output


def test_sample_rejects_bad_sizes_before_running_ffmpeg(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["sample", "--out", str(tmp_path / "c.mp4"), "--width", "641", "--height", "360"])
    assert result.exit_code == 2 and "odd side" in result.output
    result = runner.invoke(main, ["sample", "--out", str(tmp_path / "c.mp4"), "--seconds", "0"])
    assert result.exit_code == 2 and "--seconds" in result.output
    assert not (tmp_path / "c.mp4").exists()


def test_the_table_names_the_web_player_once_it_and_the_gateway_are_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli import _print_table
    from labkit.targets import ComponentStatus

    gateway = ComponentStatus("gateway", "apis", "running", True, {"http": "http://127.0.0.1:18000"})
    player = ComponentStatus("player", "player", "running", True, {"http": "http://127.0.0.1:18084"})
    _print_table([gateway, player])
    assert "web player: http://127.0.0.1:18000/player/" in capsys.readouterr().out
    _print_table([gateway, ComponentStatus("player", "player", "stopped", False, {"http": "http://127.0.0.1:18084"})])
    assert "web player" not in capsys.readouterr().out


def test_autoscale_when_nothing_runs(runner: CliRunner) -> None:
    result = runner.invoke(main, ["autoscale", "on"])
    assert result.exit_code == 1
    assert "is not running" in result.output and "ottlab up" in result.output
    status = runner.invoke(main, ["autoscale", "status", "--json"])
    assert status.exit_code == 0 and status.output.strip() == "[]"  # no layer up: no HPA applies
    bad = runner.invoke(main, ["autoscale", "sideways"])
    assert bad.exit_code == 2 and "'on', 'off', 'status'" in bad.output


def test_autoscale_status_prints_each_hpa_its_metrics_and_last_decisions(runner: CliRunner, tmp_path: Path) -> None:
    import json

    run = tmp_path / "lab" / "run"
    run.mkdir(parents=True)
    (run / "layers.json").write_text(json.dumps(["monitoring", "apis"]))
    decision = {"wall": 1700000000.0, "since": 1700000000.0, "current": 1, "desired": 2, "reason": "ScaleUpLimit",
                "rescale_reason": "ott_http_requests_per_second above target", "outcome": "",
                "metrics": [{"metric": "cpu", "current": 12.0, "target": 80.0},
                            {"metric": "ott_http_requests_per_second", "current": 182.0, "target": 50.0}]}
    (run / "autoscaler.json").write_text(json.dumps({"pid": 0, "hpas": {"catalog": {"decisions": [decision]}}}))
    result = runner.invoke(main, ["autoscale", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    catalog = next(line for line in lines if line.startswith("catalog"))
    assert "off" in catalog and "-> 2" in catalog and "ott_http_requests_per_second 182/50" in catalog, catalog
    assert any("1 -> 2 ScaleUpLimit: ott_http_requests_per_second above target" in line for line in lines)
    assert {line.split()[0] for line in lines if not line.startswith(" ")} == {
        "auth", "catalog", "subscription", "license", "cas"}
