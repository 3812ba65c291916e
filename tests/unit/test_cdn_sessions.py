"""labkit.clients.pops.wait_for_sessions: a bounded, paced wait until the PoPs' access logs hold some CMCD sessions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from labkit.clients import pops
from labkit.core.config import LabConfig
from labkit.core.errors import MissingCapabilityError, TimeoutExpired
from labkit.targets.base import ComponentStatus
from labkit.traffic.herd import parse_log_lines
from ott import cmcd

POPS = {"edge-0": "http://127.0.0.1:29100", "edge-1": "http://127.0.0.1:29101"}
T0 = 1_700_000_000.0


class LogTarget:  # a stand-in for labkit.targets.base.Target (duck-typed): two PoPs whose logs are files
    def __init__(self, cfg: LabConfig, *, logs_readable: bool = True) -> None:
        self.cfg = cfg
        self.logs_readable = logs_readable

    def status(self) -> list[ComponentStatus]:
        return [ComponentStatus("edge", "cdn", "running", True, replica_urls=POPS)]

    def endpoint(self, component: str, port: str = "http") -> str:
        return POPS["edge-0"]

    def log_path(self, pop: str) -> Path:
        return self.cfg.run_dir / pop / "access.log"

    def access_log(self, pop: str) -> list[dict[str, Any]]:
        if not self.logs_readable:
            raise MissingCapabilityError("kube", f"read the access log of PoP {pop!r}", "in its pod", hint="Prometheus")
        path = self.log_path(pop)
        return parse_log_lines(path.read_text().splitlines()) if path.exists() else []


def _line(sid: str, started: float, *, pop: str = "edge-0", seconds: float = 0.2) -> str:
    payload = cmcd.to_query(cmcd.Cmcd(sid=sid, cid="lab-clock-qoe", ot="av", br=700, d=4000))
    return json.dumps({"msec": started + seconds, "request_time": seconds, "pop": pop, "status": 200,
                       "path": f"/t/v/480p/{sid}.m4s", "cmcd": payload})


def _append(target: LogTarget, replica: int, *lines: str) -> None:
    path = target.log_path(f"edge-{replica}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.writelines(line + "\n" for line in lines)


@pytest.fixture
def target(tmp_path: Path) -> LogTarget:
    return LogTarget(LabConfig(home=tmp_path / "lab", base_port=29000))


def test_it_polls_every_pop_until_the_sessions_are_in(target: LogTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    _append(target, 0, _line("a", T0 + 1), _line("old", T0 - 60))
    sleeps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the second PoP flushes its log while we wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            _append(target, 1, _line("b", T0 + 2, pop="edge-1"), _line("late", T0 + 100, pop="edge-1"))
        real_sleep(0)

    monkeypatch.setattr(pops.time, "sleep", sleep)
    requests = pops.wait_for_sessions(target, {"a", "b"}, (T0, T0 + 10), timeout=5, interval=0.25,  # type: ignore[arg-type]
                                     settle=0)
    assert sorted(requests["sid"]) == ["a", "b"]          # only requests started in the window
    assert sorted(requests["pop"]) == ["edge-0", "edge-1"]
    assert sleeps == [0.25, 0.25]                         # paced by the interval, not a busy loop


def test_it_raises_naming_the_missing_sessions(target: LogTarget) -> None:
    _append(target, 0, _line("a", T0 + 1), _line("c", T0 + 50))
    started = time.monotonic()
    with pytest.raises(TimeoutExpired, match=r"2 of 3 sessions .* 2 PoP\(s\) \(missing: b, c\)") as caught:
        pops.wait_for_sessions(target, ["a", "b", "c"], (T0, T0 + 10), timeout=0.3, interval=0.1, settle=0)  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 2 and caught.value.seconds == 0.3


def test_the_logs_are_read_again_once_the_pops_have_flushed(target: LogTarget) -> None:
    # Every session is there at once, but a PoP may still hold later requests in its log buffer.
    _append(target, 0, _line("a", T0 + 1))
    started = time.monotonic()
    requests = pops.wait_for_sessions(target, {"a"}, (T0, T0 + 10), timeout=5, interval=0.05, settle=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.3 and list(requests["sid"]) == ["a"]


def test_a_target_that_cannot_read_the_logs_says_so_at_once(target: LogTarget) -> None:
    started = time.monotonic()
    with pytest.raises(MissingCapabilityError, match="cannot read the access log of PoP 'edge-0'"):
        pops.wait_for_sessions(LogTarget(target.cfg, logs_readable=False), {"a"}, (T0, T0 + 1), timeout=5)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
