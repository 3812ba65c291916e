"""The mesh with the real Envoy on loopback, configured from the committed Istio resources.

A tiny upstream ("cas", on a unix socket, so only its sidecar reaches it) sits behind an inbound
sidecar rendered from k8s/components/mesh: STRICT mTLS and the cas AuthorizationPolicy. Client
sidecars ("license", allowed to POST /sessions; "gateway", not) call it through their outbound
listeners. A plaintext client and one holding another CA's certificate are refused; a fault added
to cas's VirtualService (delay and abort, each scoped by a header) shows in the answer and in
Envoy's stats. Every rendered configuration also passes ``envoy --mode validate``. A DestinationRule's
outlier detection ejects a failing replica and its connection pool overflows into counted 503s.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from labkit.core import programs
from labkit.core.wait import until
from labkit.platform.mesh import envoy, identity, resources

pytestmark = pytest.mark.integration
PORTS = {"auth": 8000, "catalog": 8000, "subscription": 8000, "license": 8000, "cas": 8000, "qoe": 8000,
         "player": 8080, "transcoder": 8000, "gateway": 8080}
FAULT_HEADER = "x-ottlab-fault"
DELAY_S = 1.0
# Routes put before the committed one of cas's VirtualService, as `ottlab fault` will.
FAULT_ROUTES: list[dict[str, Any]] = [
    {"match": [{"headers": {FAULT_HEADER: {"exact": "delay"}}}],
     "fault": {"delay": {"percentage": {"value": 100}, "fixedDelay": f"{DELAY_S:g}s"}},
     "route": [{"destination": {"host": "cas", "port": {"number": 8000}}}]},
    {"match": [{"headers": {FAULT_HEADER: {"exact": "abort"}}}],
     "fault": {"abort": {"percentage": {"value": 100}, "httpStatus": 418}},
     "route": [{"destination": {"host": "cas", "port": {"number": 8000}}}]},
]


def free_port() -> int:
    # Bound, read and released: another process could take it first (a small race).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Upstream(BaseHTTPRequestHandler):
    """Answers every request with who called (the identity its sidecar forwards)."""

    def _answer(self) -> None:
        body = f"cas saw {self.command} {self.path} from {self.headers.get('x-forwarded-client-cert', '-')}\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads answers, not logs (and a unix peer has no address to print)."""


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class Envoy:
    """One Envoy process on a rendered bootstrap; stopped (terminate, then kill) by :meth:`stop`."""

    def __init__(self, config: Path, admin_port: int) -> None:
        self.config = config
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log = config.with_suffix(".log")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(programs.envoy()), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
                 "--log-level", "warn"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"envoy exited: {self.log.read_text()[-2000:]}"
            return httpx.get(f"{self.admin}/ready", timeout=1).text.strip() == "LIVE"

        until(ready, 20, 0.05, f"envoy on {self.config.name} to be LIVE", ignoring=(httpx.TransportError,))

    def stat(self, name: str) -> int:
        text = httpx.get(f"{self.admin}/stats", params={"filter": f"^{name}$"}, timeout=5).text
        values = [int(line.split(": ", 1)[1]) for line in text.splitlines() if line.split(": ", 1)[0] == name]
        assert values, f"Envoy has no stat {name!r}"
        return values[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = identity.LabCA.ensure(root / "ca")
        self.cas_inbound = free_port()
        self.outbound = {"license": free_port(), "gateway": free_port()}
        committed = resources.load()
        (cas,) = [vs for vs in committed.of_kind("VirtualService") if vs["metadata"]["name"] == "cas"]
        faulty = {**cas, "spec": {**cas["spec"], "http": [*FAULT_ROUTES, *cas["spec"]["http"]]}}
        self.mesh = committed.replaced(faulty)
        self.sidecars: dict[str, Envoy] = {}

    def configs(self) -> dict[str, tuple[Path, int]]:
        # cas is the only one running; the others are declared (the policies name them) and never called.
        instances = [envoy.Instance(s, s, envoy.Address(port=self.cas_inbound if s == "cas" else 9))
                     for s in PORTS]
        sidecars = [
            envoy.Sidecar("cas", "cas", self.ca.issue("cas"), admin=envoy.Address(port=free_port()),
                          inbound=envoy.Address(port=self.cas_inbound),
                          app=envoy.Address(path=str(self.root / "cas.sock"))),
            *(envoy.Sidecar(name, name, self.ca.issue(name), admin=envoy.Address(port=free_port()),
                            outbound={"cas": envoy.Address(port=port)}) for name, port in self.outbound.items()),
        ]
        rendered = {}
        for sidecar in sidecars:
            bootstrap = envoy.render(self.mesh, sidecar, instances, PORTS, clients=["ottlab-tools"])
            rendered[sidecar.workload] = (envoy.write(bootstrap, self.root / f"{sidecar.workload}.json"),
                                          sidecar.admin.port)
        return rendered

    def url(self, client: str) -> str:
        return f"http://127.0.0.1:{self.outbound[client]}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    lab = Mesh(tmp_path_factory.mktemp("mesh"))
    server = UnixHTTPServer(str(lab.root / "cas.sock"), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name, (config, admin_port) in lab.configs().items():
            lab.sidecars[name] = Envoy(config, admin_port)
        for sidecar in lab.sidecars.values():
            sidecar.wait_ready()
        yield lab
    finally:
        for sidecar in lab.sidecars.values():
            sidecar.stop()
        server.shutdown()
        server.server_close()


def test_every_rendered_configuration_passes_envoys_own_validation(mesh: Mesh) -> None:
    for name, (config, _) in mesh.configs().items():
        checked = subprocess.run([str(programs.envoy()), "--mode", "validate", "-c", str(config)],
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert checked.returncode == 0, f"{name}: {checked.stdout[-2000:]}{checked.stderr[-2000:]}"
        assert "OK" in checked.stdout + checked.stderr


def test_the_committed_resources_render_a_valid_sidecar_for_every_meshed_workload(tmp_path: Path) -> None:
    ca = identity.LabCA.ensure(tmp_path / "ca")
    mesh_ = resources.load()
    instances = [envoy.Instance(s, s, envoy.Address(port=20000 + i)) for i, s in enumerate(PORTS)]
    for i, name in enumerate(PORTS):
        calls = {s: envoy.Address(port=21000 + 10 * i + j) for j, s in enumerate(PORTS) if s != name}
        sidecar = envoy.Sidecar(name, name, ca.issue(name), admin=envoy.Address(port=22000 + i),
                                inbound=envoy.Address(port=23000 + i), app=envoy.Address(path=str(tmp_path / name)),
                                service_port=PORTS[name], outbound=calls)
        config = envoy.write(envoy.render(mesh_, sidecar, instances, PORTS, clients=["ottlab-tools"]),
                             tmp_path / f"{name}.json")
        checked = subprocess.run([str(programs.envoy()), "--mode", "validate", "-c", str(config)],
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert checked.returncode == 0, f"{name}: {checked.stdout[-2000:]}{checked.stderr[-2000:]}"


def test_an_allowed_identity_reaches_the_service_over_mutual_tls(mesh: Mesh) -> None:
    answer = httpx.post(f"{mesh.url('license')}/sessions", timeout=10)
    assert answer.status_code == 200, answer.text
    # The upstream saw the caller's identity, which only the client certificate can have carried.
    assert "cas saw POST /sessions from " in answer.text
    assert "URI=spiffe://cluster.local/ns/ottlab/sa/license" in answer.text
    assert mesh.sidecars["cas"].stat(f"listener.127.0.0.1_{mesh.cas_inbound}.ssl.handshake") >= 1


def test_an_identity_the_policy_does_not_allow_gets_403_naming_the_policy(mesh: Mesh) -> None:
    denied_before = mesh.sidecars["cas"].stat("http.inbound_0.0.0.0_8000;.rbac.denied")
    answer = httpx.post(f"{mesh.url('gateway')}/sessions", timeout=10)
    assert answer.status_code == 403
    assert "AuthorizationPolicy ottlab/cas of workload cas" in answer.text
    assert "spiffe://cluster.local/ns/ottlab/sa/gateway to POST /sessions" in answer.text
    assert mesh.sidecars["cas"].stat("http.inbound_0.0.0.0_8000;.rbac.denied") == denied_before + 1
    # The same gateway may heartbeat: the policy grants it that route.
    assert httpx.post(f"{mesh.url('gateway')}/sessions/s1/heartbeat", timeout=10).status_code == 200


def test_a_plaintext_client_is_refused(mesh: Mesh) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.post(f"http://127.0.0.1:{mesh.cas_inbound}/sessions", timeout=5)


def client_context(chain: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    # The server's name is a SPIFFE URI, which Python does not match: the CA check is what matters here.
    context.check_hostname = False
    context.load_cert_chain(str(chain), str(key))
    return context


def test_a_client_with_another_cas_certificate_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    foreign = identity.LabCA.ensure(tmp_path / "foreign").issue("license")
    context = client_context(foreign.chain, foreign.key, mesh.ca.cert_file)
    with pytest.raises((ssl.SSLError, httpx.TransportError)):
        httpx.post(f"https://127.0.0.1:{mesh.cas_inbound}/sessions", verify=context, timeout=5)
    # The lab's own certificate for the same identity, on the same path, is accepted.
    own = mesh.ca.issue("license", directory=tmp_path / "own")
    answer = httpx.post(f"https://127.0.0.1:{mesh.cas_inbound}/sessions",
                        verify=client_context(own.chain, own.key, mesh.ca.cert_file), timeout=5)
    assert answer.status_code == 200


def test_a_delay_scoped_by_a_header_slows_only_that_request_and_is_counted(mesh: Mesh) -> None:
    license_ = mesh.sidecars["license"]
    before = license_.stat("http.outbound_0.0.0.0_8000;.fault.delays_injected")
    started = time.monotonic()
    assert httpx.post(f"{mesh.url('license')}/sessions", headers={FAULT_HEADER: "delay"}, timeout=10).status_code == 200
    delayed = time.monotonic() - started
    started = time.monotonic()
    assert httpx.post(f"{mesh.url('license')}/sessions", timeout=10).status_code == 200
    plain = time.monotonic() - started
    assert delayed >= DELAY_S
    assert plain < DELAY_S / 2
    assert license_.stat("http.outbound_0.0.0.0_8000;.fault.delays_injected") == before + 1


def test_an_abort_scoped_by_a_header_answers_its_status_and_is_counted(mesh: Mesh) -> None:
    license_ = mesh.sidecars["license"]
    before = license_.stat("http.outbound_0.0.0.0_8000;.fault.aborts_injected")
    answer = httpx.post(f"{mesh.url('license')}/sessions", headers={FAULT_HEADER: "abort"}, timeout=10)
    assert answer.status_code == 418
    assert "fault filter abort" in answer.text
    assert license_.stat("http.outbound_0.0.0.0_8000;.fault.aborts_injected") == before + 1
    # Nothing reached the upstream for it; the cluster counted the other requests only.
    assert httpx.post(f"{mesh.url('license')}/sessions", timeout=10).status_code == 200


# -- circuit breaking and outlier detection, from DestinationRules ------------------------------

SLOW_S = 0.5


class Replica(BaseHTTPRequestHandler):
    """A replica answering its server's ``status`` after its ``delay`` seconds."""

    server: Any

    def do_GET(self) -> None:
        time.sleep(self.server.delay)  # the upstream's own slowness, not a synchronisation
        body = f"{self.server.name}\n".encode()
        self.send_response(self.server.status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def replica(name: str, status: int, delay: float = 0.0) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Replica)
    server.daemon_threads = True
    server.name, server.status, server.delay = name, status, delay  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def plain_rule(host: str, policy: dict[str, Any]) -> dict[str, Any]:
    # Plaintext to the replicas (no sidecars in front of them here): these are client-side behaviours.
    # The committed rule's subsets stay (catalog's route goes to its release v1).
    (committed,) = [r for r in resources.load().of_kind("DestinationRule") if r["spec"]["host"] == host]
    subsets = committed["spec"].get("subsets", [])
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": host, "namespace": "ottlab"},
            "spec": {"host": host, "trafficPolicy": {"tls": {"mode": "DISABLE"}, **policy},
                     **({"subsets": subsets} if subsets else {})}}


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Envoy, dict[str, str]]]:
    root = tmp_path_factory.mktemp("mesh-policies")
    ca = identity.LabCA.ensure(root / "ca")
    servers = {"bad": replica("catalog-bad", 500), "good": replica("catalog-good", 200),
               "slow": replica("subscription-slow", 200, SLOW_S)}
    address = {k: envoy.Address(port=s.server_address[1]) for k, s in servers.items()}
    instances = [envoy.Instance("catalog", "catalog", address["bad"]),
                 envoy.Instance("catalog", "catalog", address["good"]),
                 envoy.Instance("subscription", "subscription", address["slow"]),
                 *(envoy.Instance(s, s, envoy.Address(port=9)) for s in PORTS if s not in {"catalog", "subscription"})]
    mesh_ = resources.load().replaced(plain_rule("catalog", {"outlierDetection": {
        "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m", "maxEjectionPercent": 100}})).replaced(
        plain_rule("subscription", {"connectionPool": {"tcp": {"maxConnections": 1},
                                                       "http": {"http1MaxPendingRequests": 1}}}))
    outbound = {"catalog": free_port(), "subscription": free_port()}
    sidecar = envoy.Sidecar("license", "license", ca.issue("license"), admin=envoy.Address(port=free_port()),
                            outbound={s: envoy.Address(port=p) for s, p in outbound.items()})
    config = envoy.write(envoy.render(mesh_, sidecar, instances, PORTS, clients=["ottlab-tools"]),
                         root / "license.json")
    proxy = Envoy(config, sidecar.admin.port)
    try:
        proxy.wait_ready()
        yield proxy, {s: f"http://127.0.0.1:{p}" for s, p in outbound.items()}
    finally:
        proxy.stop()
        for server in servers.values():
            server.shutdown()
            server.server_close()


def test_outlier_detection_ejects_the_failing_replica(policies: tuple[Envoy, dict[str, str]]) -> None:
    proxy, urls = policies
    answers = [httpx.get(f"{urls['catalog']}/titles", timeout=10) for _ in range(12)]
    statuses = [a.status_code for a in answers]
    # The bad replica answers one 500, is ejected for 3 minutes, and the good one takes every other request.
    assert statuses.count(500) == 1, statuses
    assert statuses[-6:] == [200] * 6
    cluster_ = "cluster.outbound|8000|v1|catalog.ottlab.svc.cluster.local"
    assert proxy.stat(f"{cluster_}.outlier_detection.ejections_enforced_consecutive_5xx") == 1
    assert proxy.stat(f"{cluster_}.outlier_detection.ejections_active") == 1


def test_a_full_connection_pool_overflows_into_503s_counted_by_envoy(policies: tuple[Envoy, dict[str, str]]) -> None:
    proxy, urls = policies
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(httpx.get(f"{urls['subscription']}/plans", timeout=10))

    callers = [threading.Thread(target=call) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=10)
    statuses = sorted(r.status_code for r in results)
    # One connection, one pending request: the rest are refused at once, not queued.
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    overflowed = [r for r in results if r.status_code == 503]
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overflowed)
    cluster_ = "cluster.outbound|8000||subscription.ottlab.svc.cluster.local"
    assert proxy.stat(f"{cluster_}.upstream_rq_pending_overflow") == len(overflowed)
