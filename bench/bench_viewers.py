"""Simulated viewers: how many one process sustains, ours (labkit.traffic.audience) against Locust.

Both sides play the same published title (a clear 24 s clip, ladder "small", x264 ultrafast) through
the lab's PoPs, as players do: multivariant playlist, media playlist, init segment, then every
segment, each with CMCD, paced by a buffer model (wait while more than 12 s of media is ahead).
A *stall* is a segment arriving after the buffer ran dry: the load generator fell behind.

- ours: ``labkit.traffic.audience.run(gateway, title, count, ...)`` in this process (asyncio), the viewers
  playing through one login and one license grant, with ABR (``ewma``) and QoE beacons as the lab
  runs it;
- baseline: ``bench/locustfile_viewers.py`` run headless by ``locust`` (FastHttpUser, gevent), one
  user per viewer, the same requests and pacing on signed URLs from one license grant.

Each side ramps through ``--counts`` (both at a count, then the next) until its first stall, error
or unfinished viewer, and we print, per count, stalls, errors and CPU seconds per viewer per minute
of each (ours: this process's CPU time; Locust's: its process's, from its test start to its end;
per minute of the title each viewer watches),
then the largest count each sustained cleanly and the ratios. Each step also says what the side
fetched per viewer (media requests and megabytes; ours adds its beacons): the sides are comparable
only when those match. On loopback ours settles on the top rung after its first segment (hls.js
starts low), Locust fetches the top rung throughout. The lab (edges, origin, gateway,
APIs) runs on the same cores as the load generators: every figure includes that contention.

With the service mesh on (the lab's default, STRICT; ``--mesh off`` or ``OTTLAB_MESH=off`` runs the lab
without it, as the viewers' side of a comparison) every call between services, and the
gateway's to them (logins, license grants, QoE beacons), goes through Envoy sidecars; the segments do
not (the PoPs serve them). Then each sidecar's memory (RSS, its own USS, Envoy's allocated) and CPU
share of a core is printed at idle (``--idle-s`` before the first step) and during each step, as
``bench_mesh.py`` measures them (:class:`bench_mesh.Sidecars`).

    python bench/bench_viewers.py [--smoke | --quick] [--counts 25,50,100,200,400,800] [--sample-seconds 24]
                                  [--mesh off|permissive|strict] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_mesh import Sidecars, print_usage

from labkit import platform
from labkit.clients import seed
from labkit.clients.api import OttClient
from labkit.clients.transcoding import transcode
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.targets.local.target import LocalTarget
from ott.media.sample import make_sample

TITLE = "bench-viewers"
DEVICE = "bench-viewers"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile_viewers.py"
MAX_BUFFER_S = 12.0
# Time past the title's length a step may take (arrivals, start-up, a slow tail) before it is cut.
STEP_MARGIN_S = 45.0


@dataclass(frozen=True)
class Step:
    side: str  # "ours" or "locust"
    count: int
    finished: int  # viewers that played the title to its end
    stalls: int
    errors: int  # failed requests, failed viewers (no start, no end)
    cpu_s: float
    wall_s: float
    media_s: float  # the title's length: each viewer watches this much
    requests: int = 0  # media requests (playlists, inits, segments)
    megabytes: float = 0.0  # media received
    beacons: int = 0  # QoE beacons sent (ours only)
    note: str = ""

    @property
    def clean(self) -> bool:
        return self.stalls == 0 and self.errors == 0 and self.finished == self.count

    @property
    def cpu_per_viewer_minute(self) -> float:
        """CPU seconds per minute of playback per viewer."""
        return self.cpu_s / (self.count * self.media_s / 60)

    def fetched(self) -> str:
        """Requests and megabytes per viewer: what the side made the lab serve."""
        beacons = f" + {self.beacons / self.count:.1f} beacons" if self.beacons else ""
        return f"{self.requests / self.count:.1f} req{beacons}, {self.megabytes / self.count:.2f} MB per viewer"

    def cells(self) -> str:
        return f"{self.stalls:>6} {self.errors:>6} {self.cpu_per_viewer_minute:>9.3f}"


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# -- the lab ---------------------------------------------------------------------------------


def publish(target: LocalTarget, sample_seconds: float) -> None:
    seed.seed_target(target)
    sample = target.cfg.data_dir / "sources" / f"bench-{sample_seconds:g}s-1280x720.mp4"
    make_sample(sample, sample_seconds, width=1280, height=720)
    transcode(target, sample, TITLE, encrypt=False, ladder="small", preset="ultrafast", tier="free", progress=False,
              name="Bench viewers clip", description="bench/bench_viewers.py")


def signed_master_urls(gateway: str) -> list[str]:
    """One signed multivariant URL per PoP (valid for hours), the stream session ended at once."""
    alice = seed.demo_user("alice")
    client = OttClient(gateway)
    client.login(alice.email, alice.password)
    for session in client.sessions():
        client.end_session(session["session_id"])
    grant = client.authorize(TITLE, device_id=DEVICE)
    client.end_session(grant["session_id"])
    return [str(p["url"]) for p in grant["playback"]]


# -- ours ------------------------------------------------------------------------------------


def run_ours(gateway: str, count: int, sample_seconds: float, arrivals_s: float) -> Step:
    from labkit.traffic import audience

    cpu, clock = cpu_seconds(resource.RUSAGE_SELF), time.monotonic()
    # Long enough for every viewer to reach the title's end (a viewer who does ends "ended" and stops).
    result = audience.run(gateway, TITLE, count, sample_seconds + arrivals_s + STEP_MARGIN_S, abr="ewma", seed=0,
                          beacons=True, arrivals_s=arrivals_s, max_buffer_s=MAX_BUFFER_S)
    wall, cpu = time.monotonic() - clock, cpu_seconds(resource.RUSAGE_SELF) - cpu
    sessions, requests = result.sessions, result.requests
    finished = int((sessions["started"] & (sessions["exit"] == "ended")).sum())
    failed_requests = int(((requests["status"] == 0) | (requests["status"] >= 400)).sum())
    failed_viewers = int((sessions["failure"] != "").sum())
    note = ", ".join(sorted(set(sessions["failure"]) - {""}))
    media = requests[requests["kind"] != "key"]
    return Step("ours", count, finished, int(sessions["stalls"].sum()), failed_requests + failed_viewers, cpu, wall,
                sample_seconds, len(media), float(media["bytes"].sum()) / 1e6, result.beacons_sent, note)


# -- Locust ----------------------------------------------------------------------------------


def run_locust(locust: str, gateway: str, master_urls: list[str], count: int, sample_seconds: float,
               arrivals_s: float, workdir: Path) -> Step:
    report = workdir / f"locust-{count}.json"
    limit = math.ceil(sample_seconds + arrivals_s + STEP_MARGIN_S)
    cmd = [locust, "-f", str(LOCUSTFILE), "--headless", "-u", str(count), "-r", f"{max(1.0, count / arrivals_s):g}",
           "-t", f"{limit}s", "--host", gateway, "--csv", str(workdir / f"locust-{count}"), "--only-summary",
           "--loglevel", "WARNING", "--stop-timeout", "5"]
    env = {**os.environ, "OTT_BENCH_MASTER_URLS": json.dumps(master_urls), "OTT_BENCH_TITLE": TITLE,
           "OTT_BENCH_MAX_BUFFER_S": str(MAX_BUFFER_S), "OTT_BENCH_VIEWERS": str(count),
           "OTT_BENCH_REPORT": str(report)}
    echo_command(cmd)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit + 60, check=False)
    if not report.is_file():
        raise RuntimeError(f"locust wrote no report (exit {done.returncode}):\n{done.stderr[-2000:]}")
    figures = json.loads(report.read_text())
    # Locust's own statistics agree with the report on failed requests (its --csv "Aggregated" row).
    with (workdir / f"locust-{count}_stats.csv").open() as stats:
        (total,) = [row for row in csv.DictReader(stats) if row["Name"] == "Aggregated"]
    if int(total["Failure Count"]) != figures["errors"]:
        raise RuntimeError(f"locust's CSV counts {total['Failure Count']} failures, its report {figures['errors']}")
    failed_viewers = count - figures["ended"]
    note = "; ".join(f"{f['occurrences']}x {f['name']}: {f['error'][:60]}" for f in figures["failures"][:3])
    return Step("locust", count, figures["ended"], figures["stalls"], figures["errors"] + failed_viewers,
                figures["cpu_s"], figures["wall_s"], sample_seconds, figures["requests"],
                figures.get("bytes", 0) / 1e6, 0, note)


# -- the run ---------------------------------------------------------------------------------


def sustained(steps: list[Step], side: str) -> int:
    """The largest count before the side's first unclean step (0 when the first was unclean)."""
    best = 0
    for step in (s for s in steps if s.side == side):
        if not step.clean:
            break
        best = step.count
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="counts 10,20,40 and a 12 s clip")
    parser.add_argument("--smoke", action="store_true", help="2 viewers of a 4 s clip: proves the benchmark runs")
    parser.add_argument("--counts", default="25,50,100,200,400,800",
                        help="viewer counts to ramp through, comma-separated (default: 25..800)")
    parser.add_argument("--sample-seconds", type=float, default=24.0, help="length of the clip")
    parser.add_argument("--arrivals", type=float, default=5.0, help="the viewers arrive over this many seconds")
    parser.add_argument("--side", choices=("both", "ours", "locust"), default="both")
    parser.add_argument("--base-port", type=int, default=31100)
    parser.add_argument("--mesh", choices=("off", "permissive", "strict"), default=None,
                        help="the lab's service mesh (default: OTTLAB_MESH, else the lab's default)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="with the mesh on: seconds the sidecars' idle CPU is read over (default: 5)")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.sample_seconds = "10,20,40", 12.0
    if args.smoke:
        args.counts, args.sample_seconds, args.arrivals, args.idle_s = "2", 4.0, 1.0, 1.0
    counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 2000 or not 4 <= args.sample_seconds <= 120:
        parser.error("need counts from 1 to 2000 and --sample-seconds from 4 to 120")
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    sides = ["ours", "locust"] if args.side == "both" else [args.side]
    if "ours" in sides:
        try:
            import labkit.traffic.audience  # noqa: F401
        except ImportError:
            print("labkit.traffic.audience is missing: measuring Locust alone", file=sys.stderr)
            sides.remove("ours")
    if "locust" in sides and not Path(locust).is_file():
        parser.error("locust is not installed in this environment (pip install -c constraints.txt locust)")
    if not sides:
        return 2

    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="ottlab-bench-viewers-") as tmp:
        cfg = LabConfig.from_env(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60, mesh=args.mesh)
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up()
            publish(target, args.sample_seconds)
            gateway = target.endpoint("gateway")
            master_urls = signed_master_urls(gateway)
            print(f"\n{TITLE}: {args.sample_seconds:g} s clip, {len(master_urls)} PoP(s), viewers arrive over "
                  f"{args.arrivals:g} s, max buffer {MAX_BUFFER_S:g} s; {os.cpu_count()} CPUs shared by the lab "
                  f"(edges, origin, gateway, APIs) and the load generator; mesh {cfg.mesh}", flush=True)
            sidecars = Sidecars(target) if cfg.mesh != "off" else None
            if sidecars is not None:
                idle = sidecars.mark()
                time.sleep(args.idle_s)  # the measured window: no traffic while it lasts
                quiet = sidecars.mark()
                print_usage(f"Envoy sidecars, idle ({args.idle_s:g} s, no traffic):",
                            sidecars.usage(Sidecars.cpu_between(idle, quiet), quiet[0] - idle[0]))
            active = list(sides)
            for count in counts:
                for side in list(active):
                    before = sidecars.mark() if sidecars is not None else None
                    if side == "ours":
                        step = run_ours(gateway, count, args.sample_seconds, args.arrivals)
                    else:
                        step = run_locust(locust, gateway, master_urls, count, args.sample_seconds, args.arrivals,
                                          Path(tmp))
                    steps.append(step)
                    print(f"  {side:6} {count:5} viewers: {step.finished:5} finished, {step.stalls} stalls, "
                          f"{step.errors} errors, {step.cpu_s:7.2f} CPU s in {step.wall_s:5.1f} s "
                          f"({step.cpu_per_viewer_minute:.3f} CPU s/viewer/min; {step.fetched()})"
                          f"{'  ' + step.note if step.note else ''}", flush=True)
                    if sidecars is not None and before is not None:
                        after = sidecars.mark()
                        print_usage(f"  Envoy sidecars while {side} played {count} viewers "
                                    f"({after[0] - before[0]:.0f} s):",
                                    sidecars.usage(Sidecars.cpu_between(before, after), after[0] - before[0]))
                    if not step.clean:
                        active.remove(side)
                if not active:
                    break
        finally:
            target.down(purge=True)

    print(f"\n{'viewers':>7} | {'ours: stalls errors CPU/v/min':>30} | {'locust: stalls errors CPU/v/min':>31}")
    for count in sorted({s.count for s in steps}):
        row = {s.side: s for s in steps if s.count == count}
        cells = [row[side].cells() if side in row else f"{'-':>6} {'-':>6} {'-':>9}" for side in ("ours", "locust")]
        print(f"{count:>7} | {cells[0]:>30} | {cells[1]:>31}")
    best = {side: sustained(steps, side) for side in sides}
    for side in sides:
        ramp_end = "" if any(not s.clean for s in steps if s.side == side) else f" (no failure up to {counts[-1]})"
        print(f"{side}: sustained {best[side]} viewers with no stall and no error{ramp_end}")
    print("(the lab serves every viewer on the same cores: the counts are this machine's, lab included)")
    if len(sides) == 2:
        def cpu_at(side: str, count: int) -> float:
            return next(s.cpu_per_viewer_minute for s in steps if s.side == side and s.count == count)

        shared = [c for c in counts if c <= min(best.values())]
        if shared:
            ratios = [cpu_at("ours", c) / cpu_at("locust", c) for c in shared]
            print(f"CPU per viewer, ours/locust at {shared}: {', '.join(f'{r:.2f}' for r in ratios)}")
        if best["locust"]:
            print(f"ratio: ours/locust sustained viewers = {best['ours'] / best['locust']:.2f}")
        else:
            print("ratio: ours/locust sustained viewers = n/a (Locust failed at the first count)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
