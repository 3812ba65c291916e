"""Benchmarks that cannot rot: every ``bench/bench_*.py`` runs at its ``--smoke`` size and prints its ratio.

A benchmark nobody runs breaks without anyone noticing (a gateway route added, a module moved).
Here each one runs as a user runs it, a child process from the repository's root, at sizes that
take seconds; its figures mean nothing at that size, so only that it completes and prints its
``ratio: <ours>/<baseline> = <x>`` line is checked. ``make bench`` runs the full sizes.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
BENCHES = sorted((REPO / "bench").glob("bench_*.py"))
# The slowest smoke runs start a whole lab, publish a clip and play it (about a minute or two).
SMOKE_TIMEOUT_S = 420
# A benchmark stopped with SIGINT runs its `finally:` and brings its lab down in this time.
STOP_GRACE_S = 60
RATIO = re.compile(r"^ratio: \S.* = .*?(\d+(?:\.\d+)?)", re.MULTILINE)


def run_smoke(script: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python <script> --smoke``; on timeout, interrupted (so its lab goes down) before it is killed."""
    cmd = [sys.executable, str(script), "--smoke"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"{script.name} --smoke did not finish within {timeout:g} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_the_benchmarks_are_found() -> None:
    # A glob that finds nothing would make the smoke runs below pass by running none.
    assert {p.name for p in BENCHES} >= {"bench_api_roundtrip.py", "bench_edge_hit.py", "bench_viewers.py"}


@pytest.mark.timeout(SMOKE_TIMEOUT_S + STOP_GRACE_S + 30)
@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.stem)
def test_a_benchmark_completes_its_smoke_run_and_prints_its_ratio(script: Path) -> None:
    done = run_smoke(script, SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"{script.name} --smoke exited with status {done.returncode}:\n{done.stdout[-3000:]}"
    ratios = [float(value) for value in RATIO.findall(done.stdout)]
    assert ratios, f"{script.name} --smoke printed no 'ratio: <ours>/<baseline> = <x>' line:\n{done.stdout[-3000:]}"
    assert all(math.isfinite(r) for r in ratios)
