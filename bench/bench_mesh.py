"""The play path with the service mesh on (OTTLAB_MESH=strict) against the same path without it, in one run.

Two labs of the APIs layer run side by side, each its own directory and ports: one with the mesh
off (the services in plaintext on their ports) and one with ``mesh="strict"`` (each service on a
unix socket behind its Envoy sidecar, every hop mutual TLS with the AuthorizationPolicies, the
gateway's nginx through ``gateway-proxy``). On each, devices sign in once and then play back to
back through that lab's own gateway, the play of ``bench_api_roundtrip.py`` (its ``load``): license
authorisation (license asks subscription for the entitlement and opens a CAS session) -> the
title's key -> a heartbeat -> end the session. The two labs alternate in ``--rounds`` rounds at
each concurrency, so a neighbour's load on the machine hits both. We report plays/s and p50/p99
of a whole play on each side and the ratios mesh/plaintext; the goal (issue 13) is a p50 at most
1.25x and a throughput at least 0.8x the plaintext path's.

Envoy's cost is measured on the mesh lab's sidecars (the PIDs its supervisor reports): resident
memory (psutil: RSS, and USS, the part no other Envoy shares) and Envoy's own
``server.memory_allocated``, and CPU (:meth:`Target.cpu_meter`) as a share of one core, at idle
(``--idle-s`` with no traffic) and while the mesh side plays.

    python bench/bench_mesh.py [--smoke] [--concurrency 1,4,8] [--seconds 10] [--rounds 2] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from bench_api_roundtrip import TITLE, Device, Figures, bench_devices, concurrencies, figures, line, load, sign_in_all

from labkit import platform
from labkit.clients import seed
from labkit.core.config import LabConfig
from labkit.platform.mesh import identity
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local.target import LocalTarget

GOAL_P50_RATIO = 1.25
GOAL_RATE_RATIO = 0.8
MIB = 1024 * 1024


@dataclass
class Lab:
    """One lab of the comparison: its target, its gateway and its signed-in devices."""

    name: str
    target: LocalTarget
    devices: list[Device] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return self.target.endpoint("gateway")


def start(name: str, home: Path, base_port: int, mesh: str) -> Lab:
    cfg = LabConfig(home=home / name, base_port=base_port, ready_timeout=60, mesh=mesh)
    lab = Lab(name, LocalTarget(cfg, platform.components(), platform.layers()))
    lab.target.up(["apis"])
    seed.seed_target(lab.target)
    return lab


def create_key_as_transcoder(target: LocalTarget, directory: Path) -> None:
    """The title's key, created as the transcoder does: the only identity license's policy lets create keys."""
    ca = identity.LabCA.ensure(target.cfg.conf_dir / "mesh" / "ca")
    certificate = ca.issue("transcoder", directory=directory)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert_file))
    context.check_hostname = False  # the sidecar's only name is its SPIFFE URI: the CA check is what counts
    context.load_cert_chain(str(certificate.chain), str(certificate.key))
    port = target.component("license").local_port(target.cfg, "http")
    httpx.post(f"https://127.0.0.1:{port}/admin/keys/{TITLE}", headers={"X-Service-Token": target.service_token()},
               verify=context, timeout=30).raise_for_status()


# -- the sidecars' memory and CPU -----------------------------------------------------------------


def sidecar_names() -> list[str]:
    return [*(local_mesh.proxy_name(s) for s in local_mesh.MESHED), local_mesh.GATEWAY_PROXY, local_mesh.TOOLS_PROXY]


@dataclass(frozen=True)
class Usage:
    """One sidecar (its replicas summed): resident MiB, of which its own (USS: not shared with the other
    Envoys, such as the binary's pages), MiB Envoy says it allocated, CPU share of one core."""

    rss_mib: float
    uss_mib: float
    allocated_mib: float
    cpu_cores: float


class Sidecars:
    """The mesh lab's Envoy processes, read for memory (now) and CPU (between two marks)."""

    def __init__(self, target: LocalTarget) -> None:
        self.target = target
        running = {s.name: s for s in target.status()}
        self.names = [n for n in sidecar_names() if n in running and running[n].pids]
        self.pids = {n: running[n].pids for n in self.names}
        self.meter: Callable[[], dict[str, float]] = target.cpu_meter()

    def mark(self) -> tuple[float, dict[str, float]]:
        """(now, CPU seconds each sidecar used so far): two marks bound a window."""
        return time.perf_counter(), self.meter()

    @staticmethod
    def cpu_between(before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]]) -> dict[str, float]:
        return {name: used - before[1].get(name, 0.0) for name, used in after[1].items()}

    def usage(self, cpu_s: dict[str, float], seconds: float) -> dict[str, Usage]:
        """Each sidecar's memory now, and ``cpu_s`` (CPU seconds by sidecar) over ``seconds`` as a share of a core."""
        out = {}
        for name in self.names:
            comp = self.target.component(name)
            memory = [psutil.Process(pid).memory_full_info() for pid in self.pids[name]]
            allocated = sum(
                int(local_mesh.stats(f"http://127.0.0.1:{comp.local_port(self.target.cfg, 'http', r)}",
                                     r"^server\.memory_allocated$").get("server.memory_allocated", "0"))
                for r in range(len(self.pids[name])))
            out[name] = Usage(sum(m.rss for m in memory) / MIB, sum(m.uss for m in memory) / MIB,
                              allocated / MIB, cpu_s.get(name, 0.0) / seconds)
        return out

    def upstream(self) -> dict[str, tuple[int, int]]:
        """(requests, connections opened) each sidecar sent to its peers so far, over all its outbound clusters."""
        out = {}
        for name in self.names:
            comp = self.target.component(name)
            requests = connections = 0
            for r in range(len(self.pids[name])):
                admin = f"http://127.0.0.1:{comp.local_port(self.target.cfg, 'http', r)}"
                for stat, value in local_mesh.stats(admin, r"^cluster\.outbound\|.*\.upstream_(rq|cx)_total$").items():
                    if stat.endswith("upstream_rq_total"):
                        requests += int(value)
                    else:
                        connections += int(value)
            out[name] = (requests, connections)
        return out


def print_usage(title: str, usage: dict[str, Usage]) -> None:
    print(title)
    print(f"  {'sidecar':20} {'RSS MiB':>8} {'own MiB':>8} {'allocated MiB':>14} {'CPU % of a core':>16}")
    for name, u in usage.items():
        print(f"  {name:20} {u.rss_mib:8.1f} {u.uss_mib:8.1f} {u.allocated_mib:14.1f} {100 * u.cpu_cores:16.1f}")
    total = Usage(*(sum(getattr(u, f) for u in usage.values()) for f in ("rss_mib", "uss_mib", "allocated_mib",
                                                                           "cpu_cores")))
    print(f"  {'all ' + str(len(usage)):20} {total.rss_mib:8.1f} {total.uss_mib:8.1f} {total.allocated_mib:14.1f} "
          f"{100 * total.cpu_cores:16.1f}")


# -- the comparison -----------------------------------------------------------------------------


def measure(plain: Lab, meshed: Lab, concurrency: int, seconds: float, rounds: int,
            sidecars: Sidecars) -> tuple[Figures, Figures, dict[str, Usage]]:
    """Plays on both labs, alternating ``rounds`` times: the figures of each (mesh first), and the sidecars'
    memory after and CPU during the mesh lab's rounds."""
    ours: list[float] = []
    base: list[float] = []
    busy = 0.0
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        before = sidecars.mark()
        ours += asyncio.run(load(meshed.gateway, meshed.devices[:concurrency], seconds))
        after = sidecars.mark()
        busy += after[0] - before[0]
        for name, used in Sidecars.cpu_between(before, after).items():
            cpu[name] = cpu.get(name, 0.0) + used
        base += asyncio.run(load(plain.gateway, plain.devices[:concurrency], seconds))
    return figures(ours, seconds * rounds), figures(base, seconds * rounds), sidecars.usage(cpu, busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=concurrencies, default=[1, 4, 8],
                        help="devices playing at once, one run per value (default: 1,4,8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per side and round (default: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="mesh/plaintext alternations (default: 2)")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds the sidecars' idle CPU is read over")
    # Below the ephemeral range (32768-), where a client's passing connection could hold a lab's port.
    parser.add_argument("--base-port", type=int, default=25000,
                        help="the mesh lab's base port; the plaintext lab's is 2000 above (default: 25000)")
    parser.add_argument("--smoke", action="store_true", help="2 devices for 1 s each: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.seconds, args.rounds, args.idle_s = [2], 1.0, 1, 1.0

    with tempfile.TemporaryDirectory(prefix="ottlab-bench-mesh-") as tmp:
        labs: list[Lab] = []
        try:
            labs.append(start("plaintext", Path(tmp), args.base_port + 2000, "off"))
            labs.append(start("mesh", Path(tmp), args.base_port, "strict"))
            plain, meshed = labs
            count = max(args.concurrency)
            plain.devices = bench_devices(plain.target, count)
            create_key_as_transcoder(meshed.target, Path(tmp) / "transcoder")
            meshed.devices = bench_devices(meshed.target, count, create_key=False)
            for lab in labs:
                logins, wall = asyncio.run(sign_in_all(lab.gateway, lab.devices, min(4, count)))
                print(f"{lab.name}: {len(logins)} devices signed in through its gateway in {wall:.1f} s")

            sidecars = Sidecars(meshed.target)
            idle = sidecars.mark()
            time.sleep(args.idle_s)  # the measured window: no traffic while it lasts
            quiet = sidecars.mark()
            print_usage(f"\nEnvoy sidecars of the mesh lab, idle ({args.idle_s:g} s, no traffic):",
                        sidecars.usage(Sidecars.cpu_between(idle, quiet), quiet[0] - idle[0]))
            print(f"\none play = license authorisation (subscription, CAS session), key, heartbeat, end session; "
                  f"{args.seconds:g} s per side and round, {args.rounds} round(s) alternated")
            for concurrency in args.concurrency:
                mesh_f, plain_f, usage = measure(plain, meshed, concurrency, args.seconds, args.rounds, sidecars)
                p50, p99, rate = (mesh_f.p50_ms / plain_f.p50_ms, mesh_f.p99_ms / plain_f.p99_ms,
                                  mesh_f.rate / plain_f.rate)
                print(f"\nconcurrency {concurrency}")
                print("  " + line("mesh", "plays/s", mesh_f))
                print("  " + line("plaintext", "plays/s", plain_f))
                met = p50 <= GOAL_P50_RATIO and rate >= GOAL_RATE_RATIO
                print(f"ratio: p50 mesh/plaintext at concurrency {concurrency} = {p50:.3f}   "
                      f"(goal <= {GOAL_P50_RATIO:g})")
                print(f"ratio: p99 mesh/plaintext at concurrency {concurrency} = {p99:.3f}")
                print(f"ratio: plays/s mesh/plaintext at concurrency {concurrency} = {rate:.3f}   "
                      f"(goal >= {GOAL_RATE_RATIO:g}; both goals: {'met' if met else 'not met'})")
                cpu_ms = sum(u.cpu_cores for u in usage.values()) * args.seconds * args.rounds * 1000 / mesh_f.count
                print_usage(f"  Envoy sidecars while the mesh side played at concurrency {concurrency} "
                            f"({cpu_ms:.1f} ms of sidecar CPU per play):", usage)
            print("\nconnections the sidecars opened to their peers (each a mutual TLS handshake) for their requests:")
            for name, (requests, connections) in sidecars.upstream().items():
                if requests:
                    print(f"  {name:20} {requests:7d} requests over {connections:5d} connections")
        finally:
            for lab in reversed(labs):
                lab.target.down(purge=True)


if __name__ == "__main__":
    main()
