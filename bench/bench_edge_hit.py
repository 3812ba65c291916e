"""Edge cache HITs: a PoP serving a cached segment against nginx serving the same file statically.

Ours is the lab's PoP ``edge-0`` as it runs (signed URL checked by ``secure_link``, cache lookup,
JSON access log followed by its exporter), asked for a ~650 KB segment it already holds (warmed
until ``X-Cache-Status: HIT``). The baseline is a scratch nginx with the same preamble (one worker,
sendfile) serving the lab's media root as plain static files, without an access log: what this
machine can do at all. Both are loaded by ``wrk`` with the same threads, connections and duration,
in alternating runs (the order swapped every round); we print the median req/s and MB/s of each and
``ratio: ours/static`` of the medians (goal: at least 0.85), and the best runs' ratio too: on a
shared machine other work only ever slows a run down.

With two CPUs or more, both nginx servers (master and worker) are pinned to the first CPU and
``wrk`` to the second (``--no-pin``: leave it to the scheduler): on two cores, whether the load
generator shares the server's core decides more than anything measured here.

    python bench/bench_edge_hit.py [--smoke | --quick] [--runs 5] [--seconds 4] [--threads 1] [--connections 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.core.wait import until
from labkit.platform.layers import cdn, media
from labkit.targets.local.target import LocalTarget
from labkit.traffic.herd import ScratchStatic
from ott import signing

TITLE = "bench-hit"
SEGMENT = "/720p/seg_00000.m4s"
GOAL = 0.85
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class WrkRun:
    label: str
    requests_per_s: float
    bytes_per_s: float  # what wrk read, headers included
    requests: int
    bad: int  # non-2xx answers plus socket errors


def parse_wrk(label: str, text: str) -> WrkRun:
    """The figures of one ``wrk`` report."""
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", text)
    transfer = re.search(r"Transfer/sec:\s*([0-9.]+)([KMGT]?B)", text)
    total = re.search(r"([0-9]+) requests in", text)
    if not (rps and transfer and total):
        raise RuntimeError(f"cannot read wrk's report:\n{text}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*([0-9]+)", text))
    errors = re.search(r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", text)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    return WrkRun(label, float(rps.group(1)), float(transfer.group(1)) * _UNITS[transfer.group(2)],
                  int(total.group(1)), bad)


def run_wrk(wrk: str, label: str, url: str, threads: int, connections: int, seconds: float,
            cpus: set[int] | None = None) -> WrkRun:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    echo_command(cmd)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with status {done.returncode}: {done.stderr.strip()}")
    run = parse_wrk(label, done.stdout)
    if run.bad:
        raise RuntimeError(f"{label}: {run.bad} of {run.requests} requests failed:\n{done.stdout}")
    return run


def pin(pid: int, cpus: set[int]) -> None:
    """Keep an nginx (its master and its workers) on ``cpus``."""
    master = psutil.Process(pid)
    for proc in [master, *master.children(recursive=True)]:
        proc.cpu_affinity(sorted(cpus))


def warm(url: str, expected: bytes) -> None:
    """Fetch until the PoP answers HIT with the file's bytes."""

    def hit() -> bool:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        if response.content != expected:
            raise RuntimeError(f"{url} does not serve the segment's bytes")
        return bool(response.headers.get("x-cache-status") == "HIT")

    until(hit, 10, 0.1, f"{url} to be a cache HIT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s each")
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds (default: 5)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one wrk run (default: 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin servers and wrk to CPUs")
    parser.add_argument("--segment-kb", type=int, default=650)
    parser.add_argument("--base-port", type=int, default=29300)
    parser.add_argument("--smoke", action="store_true", help="1 round of 1 s runs: proves the benchmark runs")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 2, 2.0
    if args.smoke:
        args.runs, args.seconds = 1, 1.0
    if not (1 <= args.runs <= 10 and 0 < args.seconds <= 30 and 1 <= args.threads <= args.connections <= 512):
        parser.error("need 1 <= runs <= 10, 0 < seconds <= 30, 1 <= threads <= connections <= 512")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("error: the program 'wrk' is not installed (Debian package 'wrk'): run `make bootstrap` "
              "or `sudo apt-get install wrk`", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if args.pin and len(cpus) >= 2 else (None, None)
    if client_cpus and shutil.which("taskset") is None:
        parser.error("taskset (Debian package util-linux) is needed to pin wrk: install it or pass --no-pin")

    with tempfile.TemporaryDirectory(prefix="ottlab-bench-edge-hit-") as tmp:
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60)
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up(["media", "cdn"])
            root = media.media_root(cfg)
            (root / TITLE / "720p").mkdir(parents=True)
            body = os.urandom(args.segment_kb * 1024)
            (root / TITLE / SEGMENT.lstrip("/")).write_bytes(body)
            secret = (cfg.conf_dir / cdn.SIGNING_SECRET_FILE).read_text().strip()
            ours_url = cdn.EDGE.url(cfg, "http", 0) + signing.signed_path(
                secret, TITLE, int(time.time()) + 3600, SEGMENT)
            warm(ours_url, body)
            with ScratchStatic(root, name="static-baseline") as static:
                static_url = f"{static.url}/{TITLE}{SEGMENT}"
                if httpx.get(static_url, timeout=10).content != body:
                    raise RuntimeError(f"{static_url} does not serve the segment's bytes")
                sides = [("ours", ours_url), ("static", static_url)]
                if server_cpus:
                    pin(int((cfg.run_dir / "edge" / "0" / "nginx.pid").read_text()), server_cpus)
                    assert static.pid is not None
                    pin(static.pid, server_cpus)
                placement = (f"nginx on CPU {sorted(server_cpus)}, wrk on CPU(s) {sorted(client_cpus or [])}"
                             if server_cpus else "not pinned")
                print(f"\n{args.segment_kb} KB segment, wrk -t{args.threads} -c{args.connections} "
                      f"-d{args.seconds:g}s, {args.runs} alternating round(s), {len(cpus)} CPUs ({placement})",
                      flush=True)
                runs: list[WrkRun] = []
                for round_ in range(args.runs):
                    for label, url in sides if round_ % 2 == 0 else sides[::-1]:
                        runs.append(run_wrk(wrk, label, url, args.threads, args.connections, args.seconds,
                                            client_cpus))
                        print(f"  round {round_ + 1} {label:6} {runs[-1].requests_per_s:9.1f} req/s  "
                              f"{runs[-1].bytes_per_s / 1e6:8.1f} MB/s", flush=True)
            # Still HITs after the load: the figure is the cache's.
            if httpx.get(ours_url, timeout=10).headers.get("x-cache-status") != "HIT":
                raise RuntimeError("the PoP no longer answers HIT")
        finally:
            target.down(purge=True)

    print(f"\n{'':8} {'median req/s':>12} {'median MB/s':>12} {'min..max req/s':>16}")
    medians, best = {}, {}
    for label, _ in sides:
        mine = [r for r in runs if r.label == label]
        rates = [r.requests_per_s for r in mine]
        medians[label], best[label] = statistics.median(rates), max(rates)
        name = "edge HIT" if label == "ours" else "static"
        print(f"{name:8} {medians[label]:12.1f} {statistics.median(r.bytes_per_s for r in mine) / 1e6:12.1f} "
              f"{min(rates):7.0f}..{max(rates):<7.0f}")
    ratio = medians["ours"] / medians["static"]
    print(f"best runs: ours/static = {best['ours'] / best['static']:.3f}")
    print(f"ratio: ours/static = {ratio:.3f}   (median req/s; goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
