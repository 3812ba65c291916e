"""Faults injected into a service's traffic by the mesh: delays and aborts, as Istio's VirtualService ``fault``.

A :class:`Fault` (a delay of so many seconds and/or an abort with an HTTP status, for a
percentage of requests, optionally only those carrying a header) becomes routes added to the
service's own VirtualService, **before** its committed routes: a copy of each committed route
(same matches, same destinations and weights) with the header match added and Istio's
``fault:``. Requests that match go where they always went, delayed or aborted; the others meet
the committed routes unchanged. The routes are named ``ottlab-fault.<n>[.<header>]``, which is
how :func:`listing` finds them and :func:`clear` removes them and nothing else.

- Istio enables neither timeouts nor retries on a route with a fault (HTTPRoute.fault's own
  reference), so the fault routes say ``retries: {attempts: 0}`` and carry no timeout: both
  targets behave alike, and an abort is never retried into a success.
- A scoped fault (``--header``) is put before an unscoped one of the same service, so a lesson's
  own traffic meets its own fault even while the whole service is delayed.
- A second fault on the same service and header is **refused** (it would silently hide the
  first): clear it first, or pass ``replace=True`` (``ottlab fault inject --replace``).

Everything is checked before anything changes: a service no VirtualService routes, a percentage
outside 0-100, neither delay nor abort, a delay under 1 ms, an abort status that is not an HTTP
error (400-599; Istio itself accepts 200-599), a malformed header. Each refusal is a
:class:`FaultError` naming the problem and what to do.

Example::

    fault = Fault("license", delay_s=2, percent=100, header=header("x-ottlab-user=alice"))
    mesh = inject(target.mesh(), fault)     # pure: a new Mesh, validated against Istio's schema
    target.apply_mesh(mesh)                 # or, in one step: inject_on(target, fault)
    listing(target.mesh())                  # [Fault('license', 2.0, None, 100.0, ('x-ottlab-user', 'alice'))]
    target.apply_mesh(clear(target.mesh())) # every fault gone, the committed routes as they were
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labkit.platform.mesh import schema
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.resources import NAMESPACE, Mesh, Resource, short_host
from labkit.platform.mesh.units import duration_seconds

if TYPE_CHECKING:
    from labkit.targets.base import Target

ROUTE_PREFIX = "ottlab-fault"
# Istio's header keys: lowercase, hyphen separated (HTTPMatchRequest.headers).
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
MIN_DELAY_S = 0.001  # Istio refuses a fixedDelay under 1 ms
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


class FaultError(MeshConfigError):
    """A fault that cannot be injected as asked (or a fault to clear that is not there); nothing changed."""


@dataclass(frozen=True)
class Fault:
    """A delay and/or an abort of ``percent`` % of the requests to ``service`` (those with ``header`` only, if set)."""

    service: str
    delay_s: float | None = None
    abort_status: int | None = None
    percent: float = 100.0
    header: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def match(self) -> str:
        """The requests it applies to, in words: ``x-ottlab-user: alice`` or ``every request``."""
        return f"{self.header[0]}: {self.header[1]}" if self.header else "every request"

    def describe(self) -> str:
        """``delay 2s and abort 503 of 50% of the requests to license with x-ottlab-user: alice``."""
        what = [f"delay {self.delay_s:g}s" if self.delay_s is not None else "",
                f"abort {self.abort_status}" if self.abort_status is not None else ""]
        scope = f"with {self.match}" if self.header else "(every request)"
        return f"{' and '.join(w for w in what if w)} of {self.percent:g}% of the requests to {self.service} {scope}"

    def route_fault(self) -> dict[str, Any]:
        """Istio's ``HTTPFaultInjection`` of this fault."""
        out: dict[str, Any] = {}
        if self.delay_s is not None:
            out["delay"] = {"percentage": {"value": float(self.percent)}, "fixedDelay": _duration(self.delay_s)}
        if self.abort_status is not None:
            out["abort"] = {"percentage": {"value": float(self.percent)}, "httpStatus": self.abort_status}
        return out


@dataclass(frozen=True)
class ReplicaFault:
    """``fault`` in one replica of its service only, at that replica's own sidecar (its inbound side).

    A flaky pod, which a VirtualService cannot express (its faults are the callers'): the replica
    answers ``fault``'s abort or delay to ``fault.percent`` % of whatever reaches it, whoever calls
    it, so the callers' retries and outlier detection meet it as they would a bad replica.
    :meth:`Target.inject_replica_fault` puts it in force, :meth:`Target.clear_replica_faults` removes it.
    """

    fault: Fault
    replica: int
    # Only the requests of this method (``POST``: cas's session openings, not the gateway's ends), if set.
    method: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.replica, bool) or not isinstance(self.replica, int) or self.replica < 0:
            raise FaultError(f"replica {self.replica!r} is not a replica number",
                             hint="give 0 for the first replica, 1 for the second, ...")
        if self.method is not None and self.method not in _METHODS:
            raise FaultError(f"method {self.method!r} is not an HTTP method", hint=f"one of {', '.join(_METHODS)}")

    def describe(self) -> str:
        """``abort 503 of 30% of the POST requests to cas replica 1 (every request)``."""
        what = self.fault.describe().replace(f" to {self.fault.service} ",
                                             f" to {self.fault.service} replica {self.replica} ", 1)
        return what.replace(" of the requests ", f" of the {self.method} requests ", 1) if self.method else what

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.fault.service, "replica": self.replica, "delay_s": self.fault.delay_s,
                "abort_status": self.fault.abort_status, "percent": self.fault.percent,
                "header": list(self.fault.header) if self.fault.header else None, "method": self.method}

    @classmethod
    def of(cls, data: dict[str, Any]) -> ReplicaFault:
        header = data.get("header")
        return cls(Fault(str(data["service"]), delay_s=data.get("delay_s"), abort_status=data.get("abort_status"),
                         percent=float(data.get("percent", 100.0)),
                         header=(str(header[0]), str(header[1])) if header else None), int(data["replica"]),
                   data.get("method"))


def _duration(seconds: float) -> str:
    """Istio's duration of ``seconds``, in milliseconds when that is exact (``2s``, ``1500ms``, ``0.0005s``)."""
    millis = seconds * 1000
    if math.isclose(millis, round(millis), abs_tol=1e-9):
        whole = round(millis)
        return f"{whole // 1000}s" if whole % 1000 == 0 else f"{whole}ms"
    return f"{seconds:.6f}".rstrip("0") + "s"


def duration(seconds: float) -> str:
    """Istio's duration of ``seconds`` (``2s``, ``1500ms``), as the fault routes write it."""
    return _duration(seconds)


def _check(fault: Fault) -> None:
    if fault.delay_s is None and fault.abort_status is None:
        raise FaultError(f"a fault on {fault.service!r} needs a delay, an abort or both",
                         hint="give --delay SECONDS (e.g. 2) and/or --abort STATUS (e.g. 503)")
    percent = fault.percent
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise FaultError(f"percent {percent!r} is not a percentage of requests",
                         hint="give a number from 0 to 100 (--percent 50: every other request)")
    if fault.delay_s is not None:
        delay = fault.delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
                or delay < MIN_DELAY_S:
            raise FaultError(f"delay {delay!r} s is not a delay",
                             hint=f"give a number of seconds of at least {MIN_DELAY_S:g} (Istio's 1 ms), e.g. 2")
    if fault.abort_status is not None:
        status = fault.abort_status
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise FaultError(f"abort status {status!r} is not an HTTP status Istio can answer (200 to 599)",
                             hint="give an HTTP error status, e.g. 503 (unavailable) or 500")
        if status < 400:
            raise FaultError(f"abort status {status} is not an HTTP error: the aborted requests would seem to succeed",
                             hint="give an error status from 400 to 599, e.g. 503 (unavailable) or 500")
    if fault.header is not None:
        name, value = fault.header
        if not _HEADER_NAME.fullmatch(name):
            raise FaultError(f"header name {name!r} is not a header Istio can match",
                             hint="use lowercase letters, digits and hyphens, e.g. --header x-ottlab-user=alice")
        if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise FaultError(f"header {name!r} needs a value without control characters",
                             hint="e.g. --header x-ottlab-user=alice")


def header(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as a header match ``(name, value)``; the name lowercased, as HTTP/2 and Istio write it."""
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or not name or not value:
        raise FaultError(f"header {text!r} is not NAME=VALUE", hint="e.g. --header x-ottlab-user=alice")
    return name, value


# -- the routes ---------------------------------------------------------------------------------


def _route_name(index: int, fault: Fault) -> str:
    return f"{ROUTE_PREFIX}.{index}" + (f".{fault.header[0]}" if fault.header else "")


def is_fault_route(route: dict[str, Any]) -> bool:
    name = str(route.get("name", ""))
    return name == ROUTE_PREFIX or name.startswith(ROUTE_PREFIX + ".")


def _scoped_header(route: dict[str, Any]) -> str | None:
    """The header a fault route is scoped by (from its name), None when it applies to every request."""
    parts = str(route.get("name", "")).split(".", 2)
    return parts[2] if len(parts) == 3 else None


def _hosts(vs: Resource) -> list[str]:
    namespace = vs["metadata"].get("namespace") or NAMESPACE
    return [short_host(h, namespace) for h in vs["spec"].get("hosts", [])]


def _virtual_service(mesh: Mesh, service: str) -> Resource:
    found = [vs for vs in mesh.of_kind("VirtualService") if service in _hosts(vs)]
    if not found:
        known = sorted({h for vs in mesh.of_kind("VirtualService") for h in _hosts(vs)})
        raise FaultError(f"no service named {service!r} has a VirtualService in the mesh",
                         hint=f"faults go to the services the mesh routes: {', '.join(known) or 'none'}")
    if len(found) > 1:
        names = ", ".join(vs["metadata"]["name"] for vs in found)
        raise FaultError(f"several VirtualServices route {service!r} ({names}): Istio merges none of them",
                         hint="keep one VirtualService per host (k8s/components/mesh/virtual-services.yaml)")
    return found[0]


def _fault_routes(fault: Fault, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of each committed route (its matches, its destinations) with the header match and the fault."""
    routes: list[dict[str, Any]] = []
    for route in committed:
        if "route" not in route:
            continue  # a redirect or a delegate has no destination to delay or abort on the way to
        matches: list[dict[str, Any]] = [copy.deepcopy(m) for m in route.get("match") or [{}]]
        if fault.header is not None:
            name, value = fault.header
            scoped = []
            for match in matches:
                headers = match.get("headers", {})
                if name in headers and headers[name] != {"exact": value}:
                    continue  # the committed route wants another value of it: no request has both
                scoped.append({**match, "headers": {**headers, name: {"exact": value}}})
            matches = scoped
        if not matches:
            continue
        added: dict[str, Any] = {"name": _route_name(len(routes), fault)}
        if matches != [{}]:
            added["match"] = matches
        added |= {"route": copy.deepcopy(route["route"]), "fault": fault.route_fault(),
                  # Istio turns retries off on a fault route; say so, so the local mesh does the same.
                  "retries": {"attempts": 0}}
        routes.append(added)
    if not routes:
        raise FaultError(f"no route of {fault.service!r} can carry the fault {fault.describe()}",
                         hint="its routes are all redirects, or all match other values of the header")
    return routes


def _faults_of(routes: Iterable[dict[str, Any]], service: str) -> list[Fault]:
    found: dict[str | None, Fault] = {}
    for route in routes:
        if not is_fault_route(route):
            continue
        name = _scoped_header(route)
        if name in found:
            continue  # the same fault's copy of another committed route
        spec = route.get("fault", {})
        delay, abort = spec.get("delay"), spec.get("abort")
        percentage = (delay or abort or {}).get("percentage", {}).get("value", 100)
        scope: tuple[str, str] | None = None
        if name is not None:
            wanted = (route.get("match") or [{}])[0].get("headers", {}).get(name) or {}
            scope = (name, str(wanted.get("exact", "")))
        found[name] = Fault(service, delay_s=duration_seconds(delay["fixedDelay"]) if delay else None,
                            abort_status=abort.get("httpStatus") if abort else None, percent=float(percentage),
                            header=scope)
    return list(found.values())


def _service_of(vs: Resource) -> str:
    hosts = _hosts(vs)
    return hosts[0] if hosts else str(vs["metadata"]["name"])


# -- the model ----------------------------------------------------------------------------------


def listing(mesh: Mesh) -> list[Fault]:
    """The faults in ``mesh``, by service (in the order of the VirtualServices), scoped ones first."""
    return [f for vs in mesh.of_kind("VirtualService") for f in _faults_of(vs["spec"].get("http", []), _service_of(vs))]


def inject(mesh: Mesh, fault: Fault, *, replace: bool = False) -> Mesh:
    """``mesh`` with ``fault``'s routes at the head of its service's VirtualService (see the module).

    A fault already on the same service and header is a :class:`FaultError`, unless ``replace``.
    The changed VirtualService is validated against Istio's CRD schema before it is returned.
    """
    vs = _virtual_service(mesh, fault.service)
    routes: list[dict[str, Any]] = vs["spec"].get("http", [])
    scope = fault.header[0] if fault.header else None
    same = [f for f in _faults_of(routes, fault.service) if (f.header[0] if f.header else None) == scope]
    if same and not replace:
        raise FaultError(f"{fault.service} already has a fault on {same[0].match}: {same[0].describe()}",
                         hint=f"clear it first (ottlab fault clear {fault.service}), or replace it "
                              "(ottlab fault inject --replace ...; replace=True)")
    kept = [r for r in routes if not (is_fault_route(r) and _scoped_header(r) == scope)]
    others = [r for r in kept if is_fault_route(r)]
    committed = [r for r in kept if not is_fault_route(r)]
    added = _fault_routes(fault, committed)
    # Scoped faults first, then the one on every request, then the committed routes.
    scoped = [r for r in [*added, *others] if _scoped_header(r) is not None]
    unscoped = [r for r in [*added, *others] if _scoped_header(r) is None]
    changed = copy.deepcopy(vs)
    changed["spec"]["http"] = [*scoped, *unscoped, *copy.deepcopy(committed)]
    schema.validate(changed)
    return _replaced_in_place(mesh, vs, changed)


def clear(mesh: Mesh, service: str | None = None) -> Mesh:
    """``mesh`` without the fault routes (of ``service``'s VirtualService only, when given); the rest untouched."""
    chosen = [_virtual_service(mesh, service)] if service is not None else mesh.of_kind("VirtualService")
    out = mesh
    for vs in chosen:
        routes = vs["spec"].get("http", [])
        if any(is_fault_route(r) for r in routes):
            changed = copy.deepcopy(vs)
            changed["spec"]["http"] = [r for r in changed["spec"]["http"] if not is_fault_route(r)]
            out = _replaced_in_place(out, vs, changed)
    return out


def _replaced_in_place(mesh: Mesh, old: Resource, new: Resource) -> Mesh:
    """``mesh`` with ``new`` where ``old`` was (the order of the objects kept, so a diff shows one change)."""
    return Mesh(tuple(new if o is old else o for o in mesh.objects))


# -- on a target --------------------------------------------------------------------------------


def inject_on(target: Target, fault: Fault, *, replace: bool = False) -> Fault:
    """Inject ``fault`` into the mesh ``target`` runs (:meth:`Target.mesh`, :meth:`Target.apply_mesh`)."""
    target.apply_mesh(inject(target.mesh(), fault, replace=replace))
    return fault


def clear_on(target: Target, service: str | None = None) -> list[Fault]:
    """Remove the faults (of ``service`` only, when given) from the mesh ``target`` runs; the faults removed."""
    mesh = target.mesh()
    removed = [f for f in listing(mesh) if service is None or f.service == service]
    if removed:
        target.apply_mesh(clear(mesh, service))
    elif service is not None:
        _virtual_service(mesh, service)  # an unknown service is an error even with nothing to clear
    return removed


def list_on(target: Target) -> list[Fault]:
    """The faults in the mesh ``target`` runs now."""
    return listing(target.mesh())
