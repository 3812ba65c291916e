"""The timeout budget along a call chain: timeouts must shrink toward the leaf.

Each hop of a chain (a caller's sidecar calling a service) is bounded by the route of that
service's VirtualService: its ``timeout`` (the whole call, retries included), its ``retries``
(``attempts`` retries after the first try, each cut at ``perTryTimeout``). A caller waits on a hop
at most :attr:`Hop.wait_s`: the timeout, or the tries times the per-try timeout when that is shorter.
A service's own worst case (:func:`worst_case_s`) is what its calls can keep it waiting: the calls
it makes one after the other add up, the ones it makes at once (a *stage*) count by the longest.

:func:`violations` names each hop that breaks the budget:

- **its retries do not fit its timeout**: tries × per-try timeout above the route's timeout, so
  the timeout cuts the last tries (Istio's guidance: the timeout bounds every retry);
- **its caller gives up before its callee can**: the caller's budget (the route's timeout, else its
  tries × per-try timeout) not above the callee's own worst case: the viewer has its timeout
  while the callee keeps working on a request nobody waits for (a session opened, a key issued).

Routes a lesson adds for faults (:mod:`labkit.platform.mesh.faults`) are left out: the budget is
that of the routes an ordinary request takes. A per-try timeout shorter than the callee's worst
case is allowed: a retry then starts while the cut try's work goes on, which the retry lessons
measure rather than this check.

Example::

    budget.violations(resources.load())        # [] : the committed routes fit the play start's chain
    budget.frame(target.mesh())                # one row per hop: its bounds and the callee's worst case
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from labkit.platform.mesh import faults
from labkit.platform.mesh.envoy import DEFAULT_RETRIES
from labkit.platform.mesh.resources import NAMESPACE, Mesh, short_host
from labkit.platform.mesh.units import duration_seconds

# Who calls whom in one request: a caller's stages, in order; the services of a stage are called at once.
Calls = Mapping[str, Sequence[Sequence[str]]]

# The play start (POST /api/license/authorizations through the gateway): license asks subscription
# for the entitlement and catalog for the title's playback URLs at once, then cas for a session;
# subscription asks catalog for the title's tier (ott/license.py, ott/subscription.py).
PLAY_START: Calls = {
    "gateway": (("license",),),
    "license": (("subscription", "catalog"), ("cas",)),
    "subscription": (("catalog",),),
}


@dataclass(frozen=True)
class Hop:
    """``caller`` calling ``callee`` through the route of the callee's VirtualService; None: no bound."""

    caller: str
    callee: str
    timeout_s: float | None
    attempts: int
    per_try_s: float | None

    @property
    def tries(self) -> int:
        return self.attempts + 1

    @property
    def wait_s(self) -> float:
        """The longest the caller waits on this hop: the timeout, or every try cut at its per-try timeout."""
        per_try = self.per_try_s if self.per_try_s is not None else self.timeout_s
        by_tries = self.tries * per_try if per_try is not None else math.inf
        return min(self.timeout_s if self.timeout_s is not None else math.inf, by_tries)

    @property
    def budget_s(self) -> float:
        """What the caller gives the callee for the whole call (its route's timeout, else its tries' bound)."""
        return self.timeout_s if self.timeout_s is not None else self.wait_s


def _seconds(text: str | None) -> float | None:
    """Istio's duration; ``0s`` (or nothing) disables the bound."""
    if text is None:
        return None
    value = duration_seconds(text)
    return value if value > 0 else None


def hop(mesh: Mesh, caller: str, callee: str) -> Hop:
    """The bounds of ``caller``'s calls to ``callee``: the first route of its VirtualService that is no fault's.

    Without a VirtualService (or a route) Istio's defaults apply: no timeout, 2 retries, no per-try timeout.
    """
    routes: list[dict[str, object]] = []
    for vs in mesh.of_kind("VirtualService"):
        namespace = vs["metadata"].get("namespace") or NAMESPACE
        if callee in {short_host(h, namespace) for h in vs["spec"].get("hosts", [])}:
            routes = [r for r in vs["spec"].get("http", []) if not faults.is_fault_route(r)]
            break
    if not routes:
        return Hop(caller, callee, None, DEFAULT_RETRIES, None)
    route = routes[0]
    retries = route.get("retries")
    retries = retries if isinstance(retries, dict) else {}
    timeout = route.get("timeout")
    return Hop(caller, callee, _seconds(timeout if isinstance(timeout, str) else None),
               int(retries.get("attempts", DEFAULT_RETRIES if "retries" not in route else 0)),
               _seconds(retries.get("perTryTimeout")))


def bounded(mesh: Mesh, service: str, *, timeout_s: float | None, attempts: int = 0,
            per_try_s: float | None = None, retry_on: str | None = None) -> Mesh:
    """``mesh`` with the ordinary route of ``service``'s VirtualService bounded so (None: no timeout, no per-try).

    Its matches and destinations are kept; ``retry_on`` keeps the route's own conditions unless given.
    """
    vs = next((v for v in mesh.of_kind("VirtualService")
               if service in {short_host(h, v["metadata"].get("namespace") or NAMESPACE) for h in v["spec"]["hosts"]}),
              None)
    if vs is None:
        raise faults.FaultError(f"no VirtualService routes {service!r}",
                                hint="bound a service of k8s/components/mesh/virtual-services.yaml")
    changed = copy.deepcopy(vs)
    routes = changed["spec"]["http"]
    index = next(i for i, r in enumerate(routes) if not faults.is_fault_route(r))
    route = {k: v for k, v in routes[index].items() if k not in {"timeout", "retries"}}
    if timeout_s is not None:
        route["timeout"] = faults.duration(timeout_s)
    retries: dict[str, object] = {"attempts": attempts}
    if attempts and per_try_s is not None:
        retries["perTryTimeout"] = faults.duration(per_try_s)
    conditions = retry_on or routes[index].get("retries", {}).get("retryOn")
    if attempts and conditions:
        retries["retryOn"] = conditions
    route["retries"] = retries
    routes[index] = route
    return Mesh(tuple(changed if o is vs else o for o in mesh.objects))


def hops(mesh: Mesh, calls: Calls = PLAY_START) -> list[Hop]:
    """Every hop of ``calls``, callers in their order, each caller's callees in the order it calls them."""
    return [hop(mesh, caller, callee) for caller, stages in calls.items() for stage in stages for callee in stage]


def worst_case_s(mesh: Mesh, service: str, calls: Calls = PLAY_START) -> float:
    """The longest ``service``'s own calls can keep it waiting: its stages one after another, each its longest hop."""
    return sum(max(hop(mesh, service, callee).wait_s for callee in stage) for stage in calls.get(service, ()) if stage)


def _s(value: float | None) -> str:
    return "no bound" if value is None or math.isinf(value) else f"{value:g} s"


def _stages(mesh: Mesh, service: str, calls: Calls) -> str:
    return ", then ".join(" ∥ ".join(f"{callee} {_s(hop(mesh, service, callee).wait_s)}" for callee in stage)
                          for stage in calls.get(service, ()) if stage)


def violations(mesh: Mesh, calls: Calls = PLAY_START) -> list[str]:
    """Each hop of ``calls`` that breaks the budget (see the module), one line naming it; [] when none does."""
    found = []
    for each in hops(mesh, calls):
        where = f"{each.caller} → {each.callee}"
        if each.timeout_s is not None and each.per_try_s is not None and each.tries * each.per_try_s > each.timeout_s:
            found.append(f"{where}: {each.tries} tries × {_s(each.per_try_s)} per try exceed its timeout "
                         f"{_s(each.timeout_s)}: the timeout cuts the last tries (fewer attempts, a shorter "
                         "perTryTimeout or a longer timeout)")
        inner = worst_case_s(mesh, each.callee, calls)
        if each.callee in calls and not inner < each.budget_s:
            found.append(f"{where}: {each.caller} gives up after {_s(each.budget_s)}, but {each.callee} may wait "
                         f"{_s(inner)} on its own calls ({_stages(mesh, each.callee, calls)}): {each.callee} would "
                         "keep working on a request nobody waits for (shrink the timeouts toward the leaf)")
    return found


def frame(mesh: Mesh, calls: Calls = PLAY_START) -> pd.DataFrame:
    """One row per hop: its timeout, tries and per-try timeout, the caller's longest wait, the callee's worst case."""
    rows = [{"caller": h.caller, "callee": h.callee, "timeout s": h.timeout_s, "tries": h.tries,
             "per try s": h.per_try_s, "caller waits at most s": h.wait_s,
             "callee's own worst case s": worst_case_s(mesh, h.callee, calls)} for h in hops(mesh, calls)]
    return pd.DataFrame(rows)
