"""The viewer's API round trip through the gateway: ours against a do-nothing upstream.

One round trip is what a player does to start a title: login -> catalog -> license
authorisation (which checks entitlement and opens a CAS stream session) -> end the session.
``CONCURRENCY`` viewers repeat it for ``SECONDS``; we report round trips/s and p50/p99 latency.

Both sides run the lab's gateway configuration (same routes, auth_request, retries), rendered
twice with only the upstreams different, and with the per-address login limit lifted (every
bench client shares one address): ours in front of the real services, the baseline in front of
``minimal_asgi.py`` on uvicorn. The ratio says what the OTT services cost on top of the gateway.

Routes the journey does not take (QoE beacons, the player's page) lead to the minimal app on
both sides: the gateway is rendered with every route it has, and only these are measured.

    python bench/bench_api_roundtrip.py [--smoke] [--concurrency 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from labkit import platform
from labkit.clients import seed
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.core.ports import ensure_free
from labkit.core.wait import until
from labkit.platform.component import Readiness
from labkit.platform.layers import apis
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import LOGIN_LIMIT, ROUTES, RateLimit
from labkit.platform.readiness import probe
from labkit.targets.local.target import LocalTarget

HERE = Path(__file__).resolve().parent
TITLE = "lab-clock"


async def journey(http: httpx.AsyncClient, email: str, password: str, device: str) -> None:
    login = await http.post("/api/auth/login", json={"email": email, "password": password})
    login.raise_for_status()
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    (await http.get("/api/catalog/titles", params={"q": "clock"})).raise_for_status()
    grant = await http.post("/api/license/authorizations", json={"title_id": TITLE, "device_id": device}, headers=auth)
    grant.raise_for_status()
    (await http.delete(f"/api/cas/sessions/{grant.json()['session_id']}", headers=auth)).raise_for_status()


async def load(base_url: str, users: list[tuple[str, str]], concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:

        async def viewer(i: int) -> None:
            email, password = users[i % len(users)]
            while time.monotonic() < deadline:
                started = time.perf_counter()
                await journey(http, email, password, f"bench-{i}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(viewer(i) for i in range(concurrency)))
    return latencies


def bench_users(target: LocalTarget, count: int) -> list[tuple[str, str]]:
    token = {"X-Service-Token": target.service_token()}
    users = []
    with httpx.Client(timeout=30, headers=token) as http:
        for i in range(count):
            email, password = f"bench-{i}@example.com", f"bench-password-{i}"
            user = http.post(f"{target.endpoint('auth')}/admin/users", json={"email": email, "password": password})
            user.raise_for_status()
            http.put(f"{target.endpoint('subscription')}/admin/subscriptions/{user.json()['id']}",
                     json={"plan": "free"}).raise_for_status()
            users.append((email, password))
    return users


def summary(name: str, latencies: list[float], seconds: float) -> float:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = len(ordered) / seconds
    print(f"{name:9} {rate:8.1f} round trips/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({len(ordered)} trips)")
    return rate


def upstreams(journey: dict[str, str], other: str) -> dict[str, list[str]]:
    """Every gateway route's peer: ``journey[service]`` for the services a trip calls, else ``other``."""
    return {r.service: [journey.get(r.service, other)] for r in ROUTES}


def start_gateway(
    name: str, listen_port: int, upstreams: dict[str, list[str]], workdir: Path
) -> subprocess.Popen[bytes]:
    """A gateway rendered exactly like the lab's, but with the per-address login limit lifted."""
    ensure_free([listen_port])
    home = workdir / name
    home.mkdir()
    conf = home / "nginx.conf"
    unlimited = RateLimit(LOGIN_LIMIT.path, requests_per_second=100000, burst=100000)
    conf.write_text(gateway.render(listen=f"127.0.0.1:{listen_port}", upstreams=upstreams, temp_dir=str(home),
                                   login_limit=unlimited))
    return _spawn(["nginx", "-p", str(home), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
                  f"http://127.0.0.1:{listen_port}")


def start_minimal_asgi(port: int) -> subprocess.Popen[bytes]:
    ensure_free([port])
    return _spawn([sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "minimal_asgi:app", "--host",
                   "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"],
                  f"http://127.0.0.1:{port}")


def _spawn(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    echo_command(cmd)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    readiness = Readiness(path="/api/catalog/titles" if "nginx" in cmd[0] else "/titles")

    def serving() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with status {proc.returncode} before serving {url}")
        return probe(url, readiness)[0]

    try:
        until(serving, 30, 0.2, f"{cmd[0]} to serve {url}")
    except BaseException:
        proc.kill()
        raise
    return proc


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--base-port", type=int, default=29000)
    parser.add_argument("--smoke", action="store_true", help="2 viewers for 1 s each: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.seconds = 2, 1.0

    with tempfile.TemporaryDirectory(prefix="ottlab-bench-") as tmp:
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60)
        target = LocalTarget(cfg, platform.components(), platform.layers())
        procs: list[subprocess.Popen[bytes]] = []
        try:
            target.up(["apis"])
            seed.seed_target(target)
            # One account per viewer: the CAS stream limit (2 per account) must not refuse the bench.
            users = bench_users(target, args.concurrency)
            minimal = f"127.0.0.1:{args.base_port + 900}"
            services = {s.name: target.endpoint(s.name).removeprefix("http://") for s in apis.SERVICES}
            procs.append(start_minimal_asgi(args.base_port + 900))
            procs.append(start_gateway("ours", args.base_port + 901, upstreams(services, minimal), Path(tmp)))
            procs.append(start_gateway("baseline", args.base_port + 902, upstreams({}, minimal), Path(tmp)))
            print(f"\nconcurrency {args.concurrency}, {args.seconds:g} s each; one trip = login, catalog, "
                  "license authorisation, end session")
            ours = summary("ottlab", asyncio.run(load(f"http://127.0.0.1:{args.base_port + 901}", users,
                                                       args.concurrency, args.seconds)), args.seconds)
            base = summary("baseline", asyncio.run(load(f"http://127.0.0.1:{args.base_port + 902}", users,
                                                         args.concurrency, args.seconds)), args.seconds)
            print(f"ratio: ottlab/baseline = {ours / base:.3f}")
        finally:
            stop(procs)
            target.down(purge=True)


if __name__ == "__main__":
    main()
