"""One service-mesh hop alone: what two Envoy sidecars and mutual TLS add to one call, against the direct call.

The lab's play crosses six meshed hops; on a busy machine each also waits for a core, so
``bench_mesh.py`` cannot tell the proxies' own cost from the waiting. Here nothing else runs: two
sidecars rendered by :func:`labkit.platform.mesh.envoy.render` from the committed resources, as the
local mesh runs them (``--concurrency 1``, Istio's stat tags) - the gateway's, whose outbound
listener for subscription is the caller's address, and subscription's, with its inbound mutual
TLS, the AuthorizationPolicy and its unix socket to the app. The app is a do-nothing Envoy that
answers at once, on that socket and on a TCP port: ``wrk`` (one thread, ``--connections``
kept-alive connections) calls ``GET /entitlements/<title>`` through the hop, then directly on the
TCP port (the baseline: the call without the mesh). We print requests/s, p50/p99 and the two
sidecars' CPU per request, and the ratios hop/direct.

    python bench/bench_mesh_hop.py [--smoke] [--seconds 5] [--connections 1,8] [--rounds 2] [--base-port 26100]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from bench_api_roundtrip import concurrencies
from bench_edge_hit import parse_wrk

from labkit.core import programs
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.core.wait import until
from labkit.platform.mesh import envoy, identity, resources
from labkit.platform.mesh.envoy import Address, Instance, Sidecar
from labkit.targets.local import mesh as local_mesh

PATH = "/entitlements/lab-clock"   # a route subscription's policy grants the gateway
BODY = '{"title_id": "lab-clock", "entitled": true}'


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the two sidecars' CPU per request (0 for the direct call)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _ms(text: str) -> float:
    """A latency as wrk prints it (``812.00us``, ``1.30ms``, ``2.01s``, ``1.02m``), in milliseconds."""
    found = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if found is None:
        raise RuntimeError(f"cannot read wrk's latency {text!r}")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[found.group(2)]


def wrk(url: str, connections: int, seconds: float, sidecars: list[psutil.Process]) -> Run:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    echo_command(cmd)
    before = sum(sum(p.cpu_times()[:2]) for p in sidecars)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    used = sum(sum(p.cpu_times()[:2]) for p in sidecars) - before
    run = parse_wrk(url, done.stdout)
    if run.bad:
        raise RuntimeError(f"{url}: {run.bad} of {run.requests} requests failed:\n{done.stdout}")
    p50, p99 = (re.search(rf"\n\s+{q}%\s+(\S+)", done.stdout) for q in (50, 99))
    if p50 is None or p99 is None:
        raise RuntimeError(f"wrk printed no latency distribution:\n{done.stdout}")
    return Run(run.requests, seconds, _ms(p50.group(1)), _ms(p99.group(1)), used / run.requests * 1e6)


def app_bootstrap(socket: Path, port: int, admin: int) -> envoy.Config:
    """The do-nothing app: a direct answer on the unix socket and on a TCP port."""
    def listener(name: str, address: Address) -> envoy.Config:
        return {"name": name, "address": address.envoy(), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": envoy._TYPES["hcm"], "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{
                    "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": BODY}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": envoy._TYPES["router"]}}]}}]}]}

    return {"admin": {"address": Address(port=admin).envoy()}, "static_resources": {"listeners": [
        listener("app_uds", Address(path=str(socket))), listener("app_tcp", Address(port=port))]}}


def sidecar_bootstraps(directory: Path, base: int) -> dict[str, tuple[envoy.Config, int]]:
    """The gateway's and subscription's sidecars, rendered from the committed mesh: (bootstrap, admin port)."""
    ca = identity.LabCA.ensure(directory / "ca")
    mesh = local_mesh.committed(LabConfig(home=directory, mesh="strict"))
    instances = [Instance("subscription", "subscription", Address(port=base + 1))]
    instances += [Instance(s, s, Address(port=9)) for s in local_mesh.SERVICE_PORTS if s != "subscription"]
    gateway = Sidecar("gateway", "gateway", ca.issue("gateway", directory=directory / "gateway"),
                      admin=Address(port=base + 10), outbound={"subscription": Address(port=base)})
    subscription = Sidecar("subscription", "subscription",
                           ca.issue("subscription", directory=directory / "subscription"),
                           admin=Address(port=base + 11), inbound=Address(port=base + 1),
                           app=Address(path=str(directory / "app.sock")), service_port=8000)
    out = {}
    for sidecar in (gateway, subscription):
        bootstrap = envoy.render(mesh, sidecar, instances, local_mesh.SERVICE_PORTS, clients=[local_mesh.TOOLS_ACCOUNT])
        bootstrap["stats_config"] = {"use_all_default_tags": False, "stats_tags": local_mesh.ISTIO_STATS_TAGS}
        out[sidecar.workload] = (bootstrap, sidecar.admin.port)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run (default: 5)")
    parser.add_argument("--connections", type=concurrencies, default=[1, 8],
                        help="wrk's kept-alive connections, one run per value (default: 1,8)")
    parser.add_argument("--rounds", type=int, default=2, help="hop/direct alternations (default: 2)")
    parser.add_argument("--base-port", type=int, default=26100, help="ports base..base+12 (default: 26100)")
    parser.add_argument("--smoke", action="store_true", help="1 s per side, one connection: proves it runs")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.connections, args.rounds = 1.0, [1], 1
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian package wrk; `make bootstrap` installs it)")
    resources.load()  # the committed mesh must load before anything starts
    base = args.base_port
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ottlab-bench-hop-") as tmp:
        directory = Path(tmp)
        try:
            configs = {"app": (app_bootstrap(directory / "app.sock", base + 2, base + 12), base + 12),
                       **sidecar_bootstraps(directory, base)}
            admins = {}
            for name, (bootstrap, admin) in configs.items():
                path = envoy.write(bootstrap, directory / f"{name}.json")
                cmd = [str(programs.envoy()), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1",
                       "--log-level", "warn"]
                echo_command(cmd)
                processes.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=(directory / f"{name}.log").open("w")))
                admins[name] = f"http://127.0.0.1:{admin}"
            def ready() -> bool:
                return all(httpx.get(f"{admin}/ready", timeout=2).status_code == 200 for admin in admins.values())

            until(ready, 30, 0.1, "the app's and the two sidecars' Envoys to be ready", ignoring=(httpx.HTTPError,))
            hop, direct = f"http://127.0.0.1:{base}{PATH}", f"http://127.0.0.1:{base + 2}{PATH}"
            answer = httpx.get(hop, timeout=5)
            if answer.status_code != 200:
                raise RuntimeError(f"the hop answered {answer.status_code}: {answer.text}")
            sidecars = [psutil.Process(p.pid) for p in processes[1:]]
            print(f"one hop: wrk -> gateway's sidecar -> mutual TLS -> subscription's sidecar (RBAC) -> unix "
                  f"socket -> app; direct: wrk -> app; {args.seconds:g} s per side and round, {args.rounds} round(s)")
            for connections in args.connections:
                wrk(hop, connections, 1.0, sidecars)  # warm: the pools' connections and TLS handshakes
                runs: dict[str, list[Run]] = {"hop": [], "direct": []}
                for _ in range(args.rounds):
                    runs["hop"].append(wrk(hop, connections, args.seconds, sidecars))
                    runs["direct"].append(wrk(direct, connections, args.seconds, []))
                mean = {side: Run(sum(r.requests for r in rs), sum(r.seconds for r in rs),
                                  sum(r.p50_ms for r in rs) / len(rs), sum(r.p99_ms for r in rs) / len(rs),
                                  sum(r.cpu_us * r.requests for r in rs) / sum(r.requests for r in rs))
                        for side, rs in runs.items()}
                print(f"\n{connections} connection(s)")
                for side, run in mean.items():
                    print(f"  {side:7} {run.rate:8.0f} req/s   p50 {run.p50_ms:7.3f} ms   p99 {run.p99_ms:7.3f} ms"
                          + (f"   sidecars' CPU {run.cpu_us:6.1f} us/request" if side == "hop" else ""))
                h, d = mean["hop"], mean["direct"]
                print(f"  the hop adds {h.p50_ms - d.p50_ms:.3f} ms at p50")
                print(f"ratio: p50 hop/direct at {connections} connection(s) = {h.p50_ms / d.p50_ms:.2f}")
                print(f"ratio: req/s hop/direct at {connections} connection(s) = {h.rate / d.rate:.2f}")
            handshakes = local_mesh.stats(admins["subscription"], r"^listener\..*\.ssl\.handshake$")
            print(f"\nmutual TLS handshakes at subscription's sidecar, all runs: {sum(map(int, handshakes.values()))}")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
