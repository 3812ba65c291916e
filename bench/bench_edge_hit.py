"""Edge cache HITs: a PoP serving a cached segment against nginx serving the same file statically.

Ours is the lab's PoP ``edge-0`` as it runs (signed URL checked by ``secure_link``, cache lookup,
JSON access log followed by its exporter), asked for a ~650 KB segment it already holds (warmed
until ``X-Cache-Status: HIT``). The baseline is a scratch nginx with the same preamble (one worker)
serving the lab's media root as plain static files the usual way (``sendfile``, ``tcp_nopush``),
without an access log. Both are loaded by ``wrk`` with the same threads, connections and duration,
in alternating runs (the order swapped every round); we print the median req/s and MB/s of each and
``ratio: ours/static`` of the medians (goal: at least 0.90), and the best runs' ratio too: on a
shared machine other work only ever slows a run down.

A local PoP does not use sendfile: it copies each cached file through one buffer
(``cdn.LOCAL_FILE_OUTPUT``; why is said there). A third nginx serves the same static file that way
too, and ``like for like: ours/static copy`` is the PoP against it: what the PoP's own work (link
check, cache lookup, log line) costs, with the way bytes are sent taken out.

Next to the ratio, where the time goes: the CPU seconds per 1,000 requests of each process involved
on each side (the serving nginx's worker and master, the PoP's log exporter, ``wrk``, the rest of
the lab and the other sides' idle nginx, and what the machine spent outside all these: other
processes, interrupts), how busy each CPU was, and per request the bytes the serving worker read
(``rchar``: read, pread and sendfile calls, from the page cache) and read from the disk
(``read_bytes``), and its system calls. Process figures come from ``/proc`` (``psutil``) before and
after each ``wrk`` run, ``wrk``'s own from its rusage.

With two CPUs or more, every nginx (master and worker) is pinned to the first CPU, ``wrk`` and the
PoP's exporter to the others (``--no-pin``: leave it to the scheduler): on two cores, whether the
load generator or the exporter shares the server's core decides more than most of what is
measured here.

The lab runs without the service mesh (``mesh="off"``): no request measured here passes a sidecar (viewer,
PoP and origin are nginx talking plain HTTP), and the idle Envoys of the media layer would only be more
processes on the machine while the PoPs are measured.

    python bench/bench_edge_hit.py [--quick | --smoke] [--runs 5] [--seconds 4] [--threads 1] [--connections 8]

``--quick``: 2 rounds of 2 s; ``--smoke``: 1 round of 1 s with a 64 KB segment, to check it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.core.wait import until
from labkit.platform import credentials
from labkit.platform.layers import cdn, media
from labkit.targets.local.target import LocalTarget
from labkit.traffic.herd import ScratchStatic
from ott import signing

TITLE = "bench-hit"
SEGMENT = "/720p/seg_00000.m4s"
GOAL = 0.90
NAMES = {"ours": "edge HIT", "static": "static", "copy": "static copy"}
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
            cpus: set[int] | None = None) -> tuple[WrkRun, float]:
    """One ``wrk`` run and the CPU seconds ``wrk`` spent (its rusage: the only child waited for meanwhile)."""
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]  # taskset execs wrk: one process
    echo_command(cmd)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with status {done.returncode}: {done.stderr.strip()}")
    run = parse_wrk(label, done.stdout)
    if run.bad:
        raise RuntimeError(f"{label}: {run.bad} of {run.requests} requests failed:\n{done.stdout}")
    return run, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# -- where the time goes ------------------------------------------------------------------------

ROWS = ("nginx worker", "nginx master", "log exporter", "wrk", "rest of the lab, the idle nginx", "outside these")


@dataclass(frozen=True)
class ProcSample:
    """A process's cumulative CPU seconds and I/O counters at one moment (zeros once it is gone)."""

    cpu_s: float = 0.0
    rchar: int = 0  # bytes through read(2), pread(2), sendfile(2)...: from the page cache or the disk
    read_bytes: int = 0  # bytes the storage layer fetched for it: from the disk
    syscalls: int = 0  # read and write system calls

    def __sub__(self, other: ProcSample) -> ProcSample:
        return ProcSample(self.cpu_s - other.cpu_s, self.rchar - other.rchar, self.read_bytes - other.read_bytes,
                          self.syscalls - other.syscalls)


def proc_sample(proc: psutil.Process) -> ProcSample:
    try:
        with proc.oneshot():
            times, io = proc.cpu_times(), proc.io_counters()
    except psutil.NoSuchProcess:
        return ProcSample()
    return ProcSample(times.user + times.system, io.read_chars, io.read_bytes, io.read_count + io.write_count)


def total(samples: Iterable[ProcSample]) -> ProcSample:
    result = ProcSample()
    for s in samples:
        result = ProcSample(result.cpu_s + s.cpu_s, result.rchar + s.rchar, result.read_bytes + s.read_bytes,
                            result.syscalls + s.syscalls)
    return result


def cpu_busy() -> dict[int, float]:
    """Seconds each CPU has been busy (neither idle nor waiting for I/O) since boot."""
    return {i: sum(t) - t.idle - getattr(t, "iowait", 0.0) for i, t in enumerate(psutil.cpu_times(percpu=True))}


@dataclass
class Side:
    """What one side's runs cost, summed over its runs."""

    requests: int = 0
    wall_s: float = 0.0
    cpu_s: Counter[str] = field(default_factory=Counter)
    worker: ProcSample = ProcSample()
    busy_s: Counter[int] = field(default_factory=Counter)

    def per_1000(self, row: str) -> float:
        return self.cpu_s[row] / self.requests * 1000 if self.requests else float("nan")


class Meter:
    """Samples the processes of the benchmark around each ``wrk`` run and adds each side's share.

    ``servers`` maps a side to its nginx master; ``exporter`` is the PoP's log exporter and ``lab``
    every process of the lab (supervisord and its descendants), the PoP's included.
    """

    def __init__(self, servers: Mapping[str, int], exporter: int, lab_root: int) -> None:
        self.masters = {side: psutil.Process(pid) for side, pid in servers.items()}
        self.workers = {side: master.children() for side, master in self.masters.items()}
        self.exporter = psutil.Process(exporter)
        root = psutil.Process(lab_root)
        self.lab = [root, *root.children(recursive=True)]
        self.sides: dict[str, Side] = {side: Side() for side in servers}

    def _processes(self) -> list[psutil.Process]:
        every = {p.pid: p for p in [*self.lab, self.exporter, *self.masters.values(),
                                     *(w for ws in self.workers.values() for w in ws)]}
        return list(every.values())

    def snapshot(self) -> tuple[float, dict[int, ProcSample], dict[int, float]]:
        return time.monotonic(), {p.pid: proc_sample(p) for p in self._processes()}, cpu_busy()

    def add(self, side: str, run: WrkRun, wrk_cpu_s: float,
            before: tuple[float, dict[int, ProcSample], dict[int, float]],
            after: tuple[float, dict[int, ProcSample], dict[int, float]]) -> None:
        wall = after[0] - before[0]
        delta = {pid: after[1][pid] - before[1][pid] for pid in before[1]}
        busy = {cpu: after[2][cpu] - before[2][cpu] for cpu in before[2]}
        workers = total(delta[w.pid] for w in self.workers[side])
        rows = {
            "nginx worker": workers.cpu_s,
            "nginx master": delta[self.masters[side].pid].cpu_s,
            "log exporter": delta[self.exporter.pid].cpu_s,
            "wrk": wrk_cpu_s,
        }
        counted = set(w.pid for w in self.workers[side]) | {self.masters[side].pid, self.exporter.pid}
        rows["rest of the lab, the idle nginx"] = sum(d.cpu_s for pid, d in delta.items() if pid not in counted)
        rows["outside these"] = max(0.0, sum(busy.values()) - sum(rows.values()))
        mine = self.sides[side]
        mine.requests += run.requests
        mine.wall_s += wall
        mine.cpu_s.update(rows)
        mine.worker = total([mine.worker, workers])
        mine.busy_s.update(busy)

    def report(self, names: Mapping[str, str]) -> None:
        sides = list(self.sides)
        print(f"\nCPU seconds per 1,000 requests (all rounds){''.join(f'{names[s]:>12}' for s in sides)}")
        for row in ROWS:
            print(f"  {row:41}" + "".join(f"{self.sides[s].per_1000(row):12.3f}" for s in sides))
        print(f"  {'total':41}" + "".join(
            f"{sum(self.sides[s].cpu_s.values()) / max(1, self.sides[s].requests) * 1000:12.3f}" for s in sides))
        for cpu in sorted(self.sides[sides[0]].busy_s):
            print(f"  {f'CPU {cpu} busy (% of the run)':41}" + "".join(
                f"{100 * self.sides[s].busy_s[cpu] / self.sides[s].wall_s:11.0f}%" for s in sides))
        print(f"per request, the serving nginx worker{' ' * 6}" + "".join(f"{names[s]:>12}" for s in sides))
        for label, attr in (("bytes read (read, pread, sendfile)", "rchar"),
                            ("bytes read from the disk", "read_bytes"), ("read/write system calls", "syscalls")):
            print(f"  {label:41}" + "".join(
                f"{getattr(self.sides[s].worker, attr) / max(1, self.sides[s].requests):12.1f}" for s in sides))


def pin(pid: int, cpus: set[int]) -> None:
    """Keep a process, every thread of it and its children (an nginx's workers) on ``cpus``."""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        for thread in proc.threads():  # sched_setaffinity moves one thread: the exporter has several
            os.sched_setaffinity(thread.id, cpus)


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
    parser.add_argument("--smoke", action="store_true", help="1 round of 1 s, 64 KB segment: does it run")
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds (default: 5)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one wrk run (default: 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin servers and wrk to CPUs")
    parser.add_argument("--segment-kb", type=int, default=650)
    parser.add_argument("--base-port", type=int, default=29300)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 2, 2.0
    if args.smoke:
        args.runs, args.seconds, args.segment_kb = 1, 1.0, 64
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
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60, mesh="off")
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up(["media", "cdn"])
            root = media.media_root(cfg)
            (root / TITLE / "720p").mkdir(parents=True)
            body = os.urandom(args.segment_kb * 1024)
            (root / TITLE / SEGMENT.lstrip("/")).write_bytes(body)
            secret = credentials.signing_secret(cfg)
            ours_url = cdn.EDGE.url(cfg, "http", 0) + signing.signed_path(
                secret, TITLE, int(time.time()) + 3600, SEGMENT)
            warm(ours_url, body)
            with ScratchStatic(root, name="static-baseline") as static, \
                    ScratchStatic(root, name="static-copy", file_output=cdn.LOCAL_FILE_OUTPUT) as copy:
                servers = {"ours": int((cfg.run_dir / "edge" / "0" / "nginx.pid").read_text())}
                sides = [("ours", ours_url)]
                for label, scratch in (("static", static), ("copy", copy)):
                    url = f"{scratch.url}/{TITLE}{SEGMENT}"
                    if httpx.get(url, timeout=10).content != body:
                        raise RuntimeError(f"{url} does not serve the segment's bytes")
                    assert scratch.pid is not None
                    servers[label] = scratch.pid
                    sides.append((label, url))
                exporter_pid = int(target.supervisor.info(f"{cdn.EXPORTER.name}-0")["pid"])
                if server_cpus and client_cpus:
                    for pid in servers.values():
                        pin(pid, server_cpus)
                    # The PoP's exporter parses a log line per request: off the worker's core, as a
                    # sidecar with its own CPU would be. It shares wrk's (the 'CPU busy' rows).
                    pin(exporter_pid, client_cpus)
                supervisord = target.supervisor.pid()
                assert supervisord is not None
                meter = Meter(servers, exporter_pid, supervisord)
                placement = (f"nginx on CPU {sorted(server_cpus)}, wrk and the PoP's exporter on CPU(s) "
                             f"{sorted(client_cpus or [])}" if server_cpus else "not pinned")
                print(f"\n{args.segment_kb} KB segment, wrk -t{args.threads} -c{args.connections} "
                      f"-d{args.seconds:g}s, {args.runs} alternating round(s), {len(cpus)} CPUs ({placement})",
                      flush=True)
                load_before = os.getloadavg()
                runs: list[WrkRun] = []
                for round_ in range(args.runs):
                    for label, url in sides if round_ % 2 == 0 else sides[::-1]:
                        before = meter.snapshot()
                        run, wrk_cpu_s = run_wrk(wrk, label, url, args.threads, args.connections, args.seconds,
                                                 client_cpus)
                        meter.add(label, run, wrk_cpu_s, before, meter.snapshot())
                        runs.append(run)
                        print(f"  round {round_ + 1} {NAMES[label]:11} {runs[-1].requests_per_s:9.1f} req/s  "
                              f"{runs[-1].bytes_per_s / 1e6:8.1f} MB/s", flush=True)
                load_after = os.getloadavg()
            # Still HITs after the load: the figure is the cache's.
            if httpx.get(ours_url, timeout=10).headers.get("x-cache-status") != "HIT":
                raise RuntimeError("the PoP no longer answers HIT")
        finally:
            target.down(purge=True)

    print(f"\n{'':11} {'median req/s':>12} {'median MB/s':>12} {'min..max req/s':>16}")
    medians, best = {}, {}
    for label, _ in sides:
        mine = [r for r in runs if r.label == label]
        rates = [r.requests_per_s for r in mine]
        medians[label], best[label] = statistics.median(rates), max(rates)
        print(f"{NAMES[label]:11} {medians[label]:12.1f} {statistics.median(r.bytes_per_s for r in mine) / 1e6:12.1f} "
              f"{min(rates):7.0f}..{max(rates):<7.0f}")
    meter.report(NAMES)
    ratio = medians["ours"] / medians["static"]
    # Other work on the machine shows here and in the 'outside these' row above.
    print("load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in load_before) + " before the rounds, "
          + " ".join(f"{x:.2f}" for x in load_after) + " after")
    print(f"best runs: ours/static = {best['ours'] / best['static']:.3f}")
    # The baseline sends with sendfile, nginx's usual way; the local PoP copies (cdn.LOCAL_FILE_OUTPUT).
    print(f"like for like: ours/static copy = {medians['ours'] / medians['copy']:.3f}   "
          "(a static nginx sending as the PoP does: the PoP's own work)")
    print(f"ratio: ours/static = {ratio:.3f}   (median req/s; goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
