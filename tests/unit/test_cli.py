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


def test_status_of_a_lab_never_started(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert '"state": "stopped"' in result.output
