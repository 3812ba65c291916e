"""The play path through the gateway: what one more play costs the OTT services, against a do-nothing upstream.

Traffic as players make it: a device signs in once (argon2id, slow on purpose) and then plays many
times on its access token. One *play* is what a player does to start and stop a title:
license authorisation (license checks the entitlement with subscription and opens a CAS stream
session) -> the title's key with that authorisation -> a heartbeat -> end the session.
``CONCURRENCY`` devices play back to back for ``SECONDS``; we report plays/s and p50/p99 latency
of a whole play, at each concurrency given.

Sign-in is measured on its own, once per simulated device before the plays: logins/s and their
latency through the gateway, next to one argon2id verification in this process (the lab's
default parameters), which is what a login costs and why it is kept off the play path.

Both sides run the lab's gateway configuration (same routes, auth_request, retries), rendered
twice with only the upstreams different, and with the per-address login limit lifted (every
bench client shares one address): ours in front of the real services, the baseline in front of
``minimal_asgi.py`` on uvicorn. Ours and the baseline alternate in ``--rounds`` rounds, so a
neighbour's load on the machine hits both. The ratio says what the OTT services cost on top of
the gateway.

Routes the play does not take (QoE beacons, the player's page) lead to the minimal app on
both sides: the gateway is rendered with every route it has, and only these are measured.

The lab runs without the service mesh (``mesh="off"``, whatever ``OTTLAB_MESH`` says): what is measured
here is the services' own work behind a gateway that calls them directly, comparable run to run.
What the mesh's sidecars add to this same play is ``bench_mesh.py``'s measurement (both labs, one run).

    python bench/bench_api_roundtrip.py [--smoke] [--concurrency 1,4,8] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from argon2 import PasswordHasher

from labkit import platform
from labkit.clients import seed
from labkit.clients.api import service_client
from labkit.core.config import LabConfig
from labkit.core.console import echo_command
from labkit.core.ports import ensure_free
from labkit.core.wait import until
from labkit.platform import nginx
from labkit.platform.component import Readiness
from labkit.platform.layers import apis
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import LOGIN_LIMIT, ROUTES, RateLimit
from labkit.platform.readiness import probe
from labkit.targets.local.target import LocalTarget

HERE = Path(__file__).resolve().parent
TITLE = "lab-clock"
# The goals of the play path (issue "the playback-start path, faster").
GOAL_RATIO = 0.3
GOAL_P99_MS = 50.0


@dataclass
class Device:
    """A simulated player: its account, and its access token once signed in."""

    name: str
    email: str
    password: str
    headers: dict[str, str] = field(default_factory=dict)


async def sign_in(http: httpx.AsyncClient, device: Device) -> float:
    """Log the device in (once, as a player does); seconds the login took."""
    started = time.perf_counter()
    login = await http.post("/api/auth/login", json={"email": device.email, "password": device.password})
    login.raise_for_status()
    device.headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    return time.perf_counter() - started


async def play(http: httpx.AsyncClient, device: Device) -> None:
    """One play: authorise, fetch the key, one heartbeat, end the session."""
    grant = await http.post("/api/license/authorizations", json={"title_id": TITLE, "device_id": device.name},
                            headers=device.headers)
    grant.raise_for_status()
    body = grant.json()
    key = await http.get(f"/api/license/keys/{TITLE}", headers={"Authorization": f"Bearer {body['authorization']}"})
    key.raise_for_status()
    session = f"/api/cas/sessions/{body['session_id']}"
    (await http.post(f"{session}/heartbeat", headers=device.headers)).raise_for_status()
    (await http.delete(session, headers=device.headers)).raise_for_status()


def _client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits)


async def sign_in_all(base_url: str, devices: list[Device], concurrency: int) -> tuple[list[float], float]:
    """Every device signs in, ``concurrency`` at a time: each login's seconds, and the wall time."""
    gate = asyncio.Semaphore(concurrency)
    async with _client(base_url, concurrency) as http:

        async def one(device: Device) -> float:
            async with gate:
                return await sign_in(http, device)

        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(d) for d in devices))
        return list(latencies), time.perf_counter() - started


async def load(base_url: str, devices: list[Device], seconds: float) -> list[float]:
    """Each device plays back to back for ``seconds``: the seconds of every play."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with _client(base_url, len(devices)) as http:

        async def player(device: Device) -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                await play(http, device)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(player(d) for d in devices))
    return latencies


def argon2_verify_s(samples: int = 5) -> list[float]:
    """Seconds of one argon2id verification with the lab's (argon2-cffi's default) parameters."""
    hasher = PasswordHasher()
    stored = hasher.hash("bench-password")
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        hasher.verify(stored, "bench-password")
        times.append(time.perf_counter() - started)
    return times


def bench_devices(target: LocalTarget, count: int, *, create_key: bool = True) -> list[Device]:
    """One account per device (the CAS stream limit, 2 per account, must not refuse the bench), with the title's
    key (created as the transcoder, the only identity the mesh lets create it) unless ``create_key`` is False."""
    token = {"X-Service-Token": target.service_token()}
    devices = []
    with httpx.Client(timeout=30, headers=token) as http:
        if create_key:
            with service_client(target, "license", caller="transcoder", timeout=30) as license_admin:
                license_admin.post(f"/admin/keys/{TITLE}").raise_for_status()
        for i in range(count):
            email, password = f"bench-{i}@example.com", f"bench-password-{i}"
            user = http.post(f"{target.endpoint('auth')}/admin/users", json={"email": email, "password": password})
            user.raise_for_status()
            http.put(f"{target.endpoint('subscription')}/admin/subscriptions/{user.json()['id']}",
                     json={"plan": "free"}).raise_for_status()
            devices.append(Device(f"bench-{i}", email, password))
    return devices


@dataclass(frozen=True)
class Figures:
    rate: float
    p50_ms: float
    p99_ms: float
    count: int


def figures(latencies: list[float], seconds: float) -> Figures:
    ordered = sorted(latencies)
    if not ordered:
        raise RuntimeError("no play completed in the measured time: raise --seconds")
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Figures(len(ordered) / seconds, statistics.median(ordered) * 1000, p99 * 1000, len(ordered))


def line(name: str, unit: str, f: Figures) -> str:
    return f"{name:9} {f.rate:8.1f} {unit:9} p50 {f.p50_ms:7.1f} ms   p99 {f.p99_ms:7.1f} ms   (n={f.count})"


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
                                   login_limit=unlimited, user=nginx.lab_user()))
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


def measure(ours_url: str, base_url: str, devices: list[Device], seconds: float,
            rounds: int) -> tuple[Figures, Figures]:
    """Plays on both sides, alternating ``rounds`` times: the figures of each side over all its rounds."""
    ours: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        ours += asyncio.run(load(ours_url, devices, seconds))
        base += asyncio.run(load(base_url, devices, seconds))
    return figures(ours, seconds * rounds), figures(base, seconds * rounds)


def concurrencies(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(not 1 <= v <= 64 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give concurrencies from 1 to 64, comma-separated, e.g. 1,4,8")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=concurrencies, default=[1, 4, 8],
                        help="devices playing at once, one run per value (default: 1,4,8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per side and round (default: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="ours/baseline alternations (default: 2)")
    parser.add_argument("--base-port", type=int, default=29000)
    parser.add_argument("--smoke", action="store_true", help="2 devices for 1 s each: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.seconds, args.rounds = [2], 1.0, 1

    with tempfile.TemporaryDirectory(prefix="ottlab-bench-") as tmp:
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60, mesh="off")
        target = LocalTarget(cfg, platform.components(), platform.layers())
        procs: list[subprocess.Popen[bytes]] = []
        try:
            target.up(["apis"])
            seed.seed_target(target)
            devices = bench_devices(target, max(args.concurrency))
            minimal = f"127.0.0.1:{args.base_port + 900}"
            services = {s.name: target.endpoint(s.name).removeprefix("http://") for s in apis.SERVICES}
            procs.append(start_minimal_asgi(args.base_port + 900))
            procs.append(start_gateway("ours", args.base_port + 901, upstreams(services, minimal), Path(tmp)))
            procs.append(start_gateway("baseline", args.base_port + 902, upstreams({}, minimal), Path(tmp)))
            ours_url, base_url = (f"http://127.0.0.1:{args.base_port + p}" for p in (901, 902))

            signing = min(4, len(devices))
            logins, wall = asyncio.run(sign_in_all(ours_url, devices, signing))
            verify = statistics.median(argon2_verify_s()) * 1000
            hasher = PasswordHasher()
            print(f"\nsign-in, once per device ({len(devices)} devices, {signing} at a time): "
                  f"{len(logins) / wall:.1f} logins/s, p50 {statistics.median(logins) * 1000:.0f} ms; "
                  f"one argon2id verification here: {verify:.0f} ms (t={hasher.time_cost}, "
                  f"m={hasher.memory_cost} KiB, p={hasher.parallelism}), the cost of a login by design")
            print(f"one play = license authorisation, key, heartbeat, end session; {args.seconds:g} s per side "
                  f"and round, {args.rounds} round(s) alternated")
            for concurrency in args.concurrency:
                ours, base = measure(ours_url, base_url, devices[:concurrency], args.seconds, args.rounds)
                ratio = ours.rate / base.rate
                print(f"concurrency {concurrency}")
                print("  " + line("ottlab", "plays/s", ours))
                print("  " + line("baseline", "plays/s", base))
                met = ratio >= GOAL_RATIO and ours.p99_ms < GOAL_P99_MS
                print(f"ratio: plays/s ottlab/baseline at concurrency {concurrency} = {ratio:.3f}   "
                      f"(goal >= {GOAL_RATIO:g} with p99 < {GOAL_P99_MS:g} ms: {'met' if met else 'not met'})")
        finally:
            stop(procs)
            target.down(purge=True)


if __name__ == "__main__":
    main()
