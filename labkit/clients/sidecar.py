"""What a service mesh's sidecar reports and how its port answers, for the mesh lesson (notebook 05).

- :class:`Sidecar`: an Envoy's admin API (:meth:`Target.mesh_sidecar`): its counters by name (one
  upstream cluster's with :meth:`Sidecar.cluster_counters`: retries, circuit-breaker overflows,
  outlier ejections), the hosts of a cluster with their requests and health (:meth:`Sidecar.hosts`,
  Envoy's ``/clusters``: a replica ejected by outlier detection) and the SPIFFE identity of the
  certificate it holds;
- :func:`handshake`: a TLS client at a service's port (:meth:`Target.mesh_address`), with a
  workload certificate or none: the identity the port presents, and whether a request was answered
  or the connection refused;
- :func:`plaintext`: a plaintext HTTP request at the same port: an answer, or the refusal.

Example::

    cas = Sidecar(target.mesh_sidecar("cas"))
    cas.identity()                                   # 'spiffe://cluster.local/ns/ottlab/sa/cas'
    cas.inbound_counter("rbac.denied")               # 0: http.inbound_0.0.0.0_8000;.rbac.denied, as Istio names it
    gateway = Sidecar(target.mesh_sidecar("gateway"))
    gateway.cluster_counters("outbound|8000||cas.ottlab.svc.cluster.local", ["upstream_rq_retry"])  # {...: 0}
    [h.ejected for h in gateway.hosts("outbound|8000||cas.ottlab.svc.cluster.local")]           # [False]
    handshake(*target.mesh_address("cas"))           # Handshake(peer='spiffe://.../sa/cas', status=None, refused='...')
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509

from labkit.core.errors import LabError
from labkit.platform.mesh import envoy
from labkit.platform.mesh.identity import WorkloadCertificate

TIMEOUT_S = 5.0


class Sidecar:
    """One Envoy's admin API."""

    def __init__(self, admin_url: str, *, timeout: float = TIMEOUT_S) -> None:
        self.url = admin_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, **params: str) -> httpx.Response:
        try:
            answer = httpx.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise LabError(f"the sidecar's admin API at {self.url} did not answer: {exc}",
                           hint="is the lab up with the mesh on? `ottlab status`") from None
        answer.raise_for_status()
        return answer

    def counters(self, pattern: str) -> dict[str, int]:
        """Envoy's counters and gauges whose name matches the regex ``pattern``, by name."""
        found = {}
        for line in self._get("/stats", filter=pattern).text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                found[name] = int(value)
        return found

    def counter(self, name: str) -> int:
        """One counter by its exact name; 0 when Envoy has not created it yet (nothing counted)."""
        return self.counters(f"^{re.escape(name)}$").get(name, 0)

    def inbound_counter(self, name: str, port: int = 8000) -> int:
        """A counter of the HTTP connection manager taking the workload's callers on ``port``.

        ``rbac.denied``, ``fault.aborts_injected``, ``downstream_rq_2xx``...: the stat is named as
        Istio's sidecars name it (:func:`labkit.platform.mesh.envoy.hcm_stat_prefix`), on both targets.
        """
        return self.counter(f"http.{envoy.hcm_stat_prefix('inbound', port)}.{name}")

    def outbound_counter(self, name: str, port: int = 8000) -> int:
        """A counter of the HTTP connection manager of the workload's calls to services on ``port``.

        ``fault.delays_injected``...: as on Istio, one for every service called on that port (their
        counts add up); one service's own upstream counters are :meth:`cluster_counters`.
        """
        return self.counter(f"http.{envoy.hcm_stat_prefix('outbound', port)}.{name}")

    def listener_tls(self) -> dict[str, int]:
        """The TLS outcomes of the connections its listeners accepted, summed over them.

        ``handshake`` (mutual TLS made), ``fail_verify_no_cert`` (a client without a certificate),
        ``fail_verify_error`` (a certificate of another CA), ``connection_error`` (not TLS at all, or cut).
        """
        totals = dict.fromkeys(("handshake", "fail_verify_no_cert", "fail_verify_error", "connection_error"), 0)
        for name, value in self.counters(r"^listener\..*\.ssl\.[a-z_]+$").items():
            outcome = name.rpartition(".")[2]
            if outcome in totals:
                totals[outcome] += value
        return totals

    def identity(self) -> str:
        """The SPIFFE URI of the certificate this sidecar presents (Envoy's ``/certs``)."""
        for each in self._get("/certs").json().get("certificates", []):
            for cert in each.get("cert_chain", []):
                for san in cert.get("subject_alt_names", []):
                    if str(san.get("uri", "")).startswith("spiffe://"):
                        return str(san["uri"])
        raise LabError(f"the sidecar at {self.url} holds no certificate with a SPIFFE identity",
                       hint="its workload certificate is missing: bring the lab up again")

    def cluster_counters(self, cluster: str, names: Iterable[str]) -> dict[str, int]:
        """Counters of one upstream cluster by their names after ``cluster.<cluster>.``; 0 for one not created yet.

        ``names`` such as ``upstream_rq_5xx``, ``upstream_rq_retry``, ``upstream_rq_pending_overflow``,
        ``outlier_detection.ejections_enforced_total``, ``outlier_detection.ejections_active`` (a gauge).
        """
        wanted = list(names)
        prefix = f"cluster.{cluster}."
        found = self.counters(rf"^{re.escape(prefix)}({'|'.join(re.escape(n) for n in wanted)})$")
        return {name: found.get(prefix + name, 0) for name in wanted}

    def hosts(self, cluster: str) -> list[Host]:
        """The hosts (replicas) of one upstream cluster as Envoy's ``/clusters`` reports them, in its order.

        Each with its requests (``rq_total``, ``rq_success``, ``rq_error``: the answers this sidecar
        got from that host, every retry attempt counted) and the health checks it fails now
        (``failed_outlier_check``: ejected by outlier detection).
        """
        statuses = self._get("/clusters", format="json").json().get("cluster_statuses", [])
        for status in statuses:
            if status.get("name") == cluster:
                return [_host(each) for each in status.get("host_statuses", [])]
        raise LabError(f"the sidecar at {self.url} has no cluster {cluster!r}",
                       hint="its clusters: " + ", ".join(str(s.get("name")) for s in statuses))


@dataclass(frozen=True)
class Host:
    """One host of a sidecar's upstream cluster: its address, the requests it answered, its health."""

    address: str
    requests: int
    successes: int
    errors: int
    # The health checks it fails now ("failed_outlier_check": ejected), empty when healthy.
    failing: tuple[str, ...]

    @property
    def ejected(self) -> bool:
        return "failed_outlier_check" in self.failing

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "requests": self.requests, "successes": self.successes,
                "errors": self.errors, "health": ", ".join(self.failing) or "healthy"}


def _host(status: Mapping[str, Any]) -> Host:
    """A host of ``/clusters?format=json``: Envoy leaves a zero counter's ``value`` out."""
    stats = {str(s.get("name")): int(s.get("value", 0)) for s in status.get("stats", [])}
    address = status.get("address", {})
    if "socket_address" in address:
        where = f"{address['socket_address'].get('address')}:{address['socket_address'].get('port_value')}"
    else:
        where = f"unix:{address.get('pipe', {}).get('path', '?')}"
    health = status.get("health_status", {})
    failing = tuple(sorted(k for k, v in health.items() if v is True))
    return Host(where, stats.get("rq_total", 0), stats.get("rq_success", 0), stats.get("rq_error", 0), failing)


@dataclass(frozen=True)
class Handshake:
    """A TLS client's visit to a sidecar's port: who it presented, the HTTP status, or why it was refused."""

    peer: str | None
    status: int | None
    refused: str | None


def spiffe_uri(der: bytes | None) -> str | None:
    """The SPIFFE URI (the first URI name) of the DER certificate ``der``; None without one."""
    if not der:
        return None
    try:
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def handshake(host: str, port: int, certificate: WorkloadCertificate | None = None, *, path: str = "/",
              timeout: float = TIMEOUT_S) -> Handshake:
    """Open TLS to ``host:port`` presenting ``certificate`` (none: an anonymous client) and GET ``path``.

    The server's certificate is read, not verified (a foreign client must still learn who answered);
    a sidecar requiring a client certificate refuses at the handshake or at the first read.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        context.load_cert_chain(str(certificate.chain), str(certificate.key))
    peer = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            peer = spiffe_uri(tls.getpeercert(binary_form=True))
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            first = tls.recv(64)
    except (ssl.SSLError, OSError) as exc:
        return Handshake(peer, None, f"{type(exc).__name__}: {exc}")
    if not first.startswith(b"HTTP/"):
        return Handshake(peer, None, "the connection closed before an answer")
    return Handshake(peer, int(first.split()[1]), None)


@dataclass(frozen=True)
class Plaintext:
    """A plaintext HTTP request: its status and body's start, or why the connection was refused."""

    status: int | None
    body: str
    refused: str | None


def plaintext(host: str, port: int, method: str = "GET", path: str = "/", *, timeout: float = TIMEOUT_S) -> Plaintext:
    """``method path`` in plaintext HTTP at ``host:port``: the answer, or the transport error."""
    try:
        answer = httpx.request(method, f"http://{host}:{port}{path}", timeout=timeout)
    except httpx.TransportError as exc:
        return Plaintext(None, "", f"{type(exc).__name__}: {exc or 'connection closed'}")
    return Plaintext(answer.status_code, answer.text[:300], None)


_OUTBOUND = re.compile(r"^cluster\.outbound\|\d+\|[^|]*\|([a-z0-9-]+)\.[^|]*\.svc\.cluster\.local\.(.+)$")


def hops(sidecars: Mapping[str, Sidecar]) -> list[dict[str, object]]:
    """Each hop ``caller -> callee`` the sidecars (by workload) took: connections, TLS handshakes, requests.

    From the callers' outbound clusters; a hop no request took is left out.
    """
    rows = []
    for caller, sidecar in sidecars.items():
        found: dict[str, dict[str, int]] = {}
        pattern = r"^cluster\.outbound\|.*\.(upstream_cx_total|ssl\.handshake|upstream_rq_completed)$"
        for name, value in sidecar.counters(pattern).items():
            match = _OUTBOUND.match(name)
            if match:
                found.setdefault(match[1], {})[match[2]] = value
        for callee, counts in sorted(found.items()):
            if counts.get("upstream_rq_completed", 0):
                rows.append({"caller": caller, "callee": callee, "connections": counts.get("upstream_cx_total", 0),
                             "mTLS handshakes": counts.get("ssl.handshake", 0),
                             "requests": counts["upstream_rq_completed"]})
    return rows


def inbound(sidecars: Mapping[str, Sidecar], port: int = 8000) -> list[dict[str, object]]:
    """What each service's sidecar accepted on its port: connections, those in TLS, requests, refused by RBAC."""
    rows = []
    for service, sidecar in sidecars.items():
        prefix = f"http.{envoy.hcm_stat_prefix('inbound', port)}."
        counts = sidecar.counters(rf"^{re.escape(prefix)}(downstream_cx_total|downstream_cx_ssl_total|"
                                  r"downstream_rq_total|rbac\.denied)$")
        rows.append({"service": service, "connections": counts.get(prefix + "downstream_cx_total", 0),
                     "in TLS": counts.get(prefix + "downstream_cx_ssl_total", 0),
                     "requests": counts.get(prefix + "downstream_rq_total", 0),
                     "RBAC denied": counts.get(prefix + "rbac.denied", 0)})
    return rows
