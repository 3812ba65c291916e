"""`ottlab viewers`: bad arguments exit 2 with a clear message; good ones reach the simulator and print JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from labkit.cli import main
from labkit.traffic import audience
from labkit.traffic.bandwidth import Fixed, Trace

BASE = ["viewers", "--count", "3", "--seconds", "20", "--title", "lab-clock"]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OTTLAB_HOME", str(tmp_path / "lab"))
    monkeypatch.setenv("OTTLAB_BASE_PORT", "30900")
    return CliRunner()


class Recorded:
    """Stands in for labkit.traffic.audience.run: records its arguments, answers a summary."""

    def __init__(self, started: int = 3) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.started = started

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        started = self.started

        class Result:
            def summary(self) -> dict[str, Any]:
                return {"viewers": 3, "started": started, "failures": {} if started else {"unknown_title": 3}}

        return Result()


@pytest.mark.parametrize(("extra", "message"), [
    (["--kbps", "600", "--trace", "commute"], "--kbps and --trace both limit the bandwidth"),
    (["--trace", "lte"], "no shipped bandwidth trace named 'lte'"),
    (["--kbps", "0"], "out of range"),
    (["--kbps", "fast"], "'fast' is not a valid float"),
    (["--abr", "magic"], "'magic' is not one of 'ewma', 'bola'"),
    (["--user", "mallory"], "no demo user 'mallory'"),
    (["--arrivals", "30"], "arrivals_s must be at least 0 and less than seconds"),
    (["--trace", "missing.csv"], "cannot read the trace"),
    (["--title", "Lab Clock"], "invalid title id 'Lab Clock'"),
    (["--title", "../lab-clock"], "path traversal"),
])
def test_bad_arguments_exit_2(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, extra: list[str],
                              message: str) -> None:
    result = runner.invoke(main, [*BASE, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_count_is_required_and_positive(runner: CliRunner) -> None:
    result = runner.invoke(main, ["viewers", "--count", "0", "--seconds", "5", "--title", "x"])
    assert result.exit_code == 2 and "--count" in result.output
    result = runner.invoke(main, ["viewers", "--seconds", "5", "--title", "x"])
    assert result.exit_code == 2 and "Missing option '--count'" in result.output


def test_the_options_reach_the_simulator(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Recorded()
    monkeypatch.setattr(audience, "run", fake)
    result = runner.invoke(main, [*BASE, "--abr", "bola", "--trace", "stairs", "--seed", "9", "--pop", "edge-1",
                                  "--no-beacons", "--user", "bob"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"viewers": 3, "started": 3, "failures": {}}
    ((args, kwargs),) = fake.calls
    assert args == ("http://127.0.0.1:30900", "lab-clock", 3, 20.0)
    assert kwargs | {"bandwidth": None} == {"user": "bob", "abr": "bola", "bandwidth": None, "pops": ["edge-1"],
                                           "arrivals_s": None, "seed": 9, "beacons": False}
    assert kwargs["bandwidth"] == Trace.named("stairs")
    runner.invoke(main, [*BASE, "--kbps", "750"])
    assert fake.calls[-1][1]["bandwidth"] == Fixed(750) and fake.calls[-1][1]["pops"] is None


def test_no_viewer_started_exits_1_after_the_summary(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audience, "run", Recorded(started=0))
    result = runner.invoke(main, BASE)
    assert result.exit_code == 1
    assert '"started": 0' in result.output and "no viewer started: unknown_title (3)" in result.output
