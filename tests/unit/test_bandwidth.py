"""Bandwidth limits: validation, traces, and pacing that holds downloads to the limit."""

from __future__ import annotations

import asyncio
import doctest
import time
from pathlib import Path

import pytest

from labkit.core.errors import ConfigError
from labkit.traffic import bandwidth
from labkit.traffic.bandwidth import Fixed, Link, Trace
from labkit.traffic.playback import VirtualClock


def test_doctests() -> None:
    result = doctest.testmod(bandwidth)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("kbps", [0, -5, float("nan"), float("inf"), "600", True, 1e12])
def test_a_bad_fixed_rate_is_refused(kbps: object) -> None:
    with pytest.raises(ConfigError, match="kbit/s"):
        Fixed(kbps)  # type: ignore[arg-type]


def test_the_shipped_traces_load_and_loop() -> None:
    assert bandwidth.shipped() == ["commute", "stairs"]
    commute = Trace.named("commute")
    assert commute.period_s == 60 and commute.kbps_at(0) == 3000 and commute.kbps_at(60) == 3000
    assert min(kbps for _, kbps in commute.steps) == 250
    stairs = Trace.named("stairs")
    assert [stairs.kbps_at(t) for t in (5, 15, 45, 85)] == [4000, 2000, 300, 4000]


def test_an_unknown_trace_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="no shipped bandwidth trace named 'lte'") as caught:
        Trace.named("lte")
    assert "commute, stairs" in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", "header"),
    ("seconds,rate\n1,2\n", "header"),
    ("duration_s,kbps\n", "no steps"),
    ("duration_s,kbps\n4,100\n4\n", "line 3"),
    ("# note\nduration_s,kbps\n4,fast\n", "line 3"),
    ("duration_s,kbps\n0,100\n", "duration_s"),
    ("duration_s,kbps\n4,-1\n", "out of range"),
    ("duration_s,kbps\n4,0\n", "0 kbit/s throughout"),
])
def test_a_malformed_trace_says_where(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Trace.parse(text, "mine")


def test_a_trace_file_of_your_own(tmp_path: Path) -> None:
    path = tmp_path / "tunnel.csv"
    path.write_text("# a tunnel\nduration_s,kbps\n5,2000\n2,0\n")
    trace = Trace.from_csv(path)
    assert trace.name == "tunnel" and trace.period_s == 7
    assert trace.finish(4.0, 3_000_000) == pytest.approx(7.5)   # 1 s at 2000, 2 s outage, 0.5 s at 2000
    with pytest.raises(ConfigError, match="cannot read"):
        Trace.from_csv(tmp_path / "missing.csv")


def test_finish_walks_many_periods() -> None:
    trace = Trace([(1, 1000), (1, 3000)])   # 4000 kbit per 2 s period
    assert trace.finish(0, 40_000_000) == pytest.approx(20.0)
    assert trace.finish(101.5, 1_500_000) == pytest.approx(102.0)


def test_pacing_in_virtual_time_is_exact() -> None:
    clock = VirtualClock()
    link = Link(Trace([(2, 800), (2, 400)]), now=clock.now, sleep=clock.sleep)
    done: list[float] = []

    async def download() -> None:
        for _ in range(30):
            await link.pace(10_000)  # 30 chunks of 80 kbit: 2.4 Mbit
        done.append(clock.now())

    asyncio.run(clock.drive([download()], timeout=10))
    # 1.6 Mbit in the first 2 s, 0.8 Mbit in the next 2 s.
    assert done == [pytest.approx(4.0)]


def test_pacing_holds_a_real_download_to_the_limit() -> None:
    async def download() -> float:
        loop = asyncio.get_running_loop()
        link = Link(Fixed(8000), now=loop.time, sleep=asyncio.sleep)
        start = loop.time()
        for _ in range(25):
            await link.pace(16_000)   # 3.2 Mbit at 8 Mbit/s: 0.4 s
        return loop.time() - start

    started = time.perf_counter()
    seconds = asyncio.run(download())
    # Never faster than the limit; slower only by the event loop's wake-up delays (a loaded machine).
    assert 0.4 * 0.98 <= seconds <= 0.4 * 1.5
    assert time.perf_counter() - started < 2
