"""A Deployment's rollout: how far it is, and a bounded wait until it is complete.

A rollout is complete, as ``kubectl rollout status`` judges it, when the controller has seen
the latest spec (``observedGeneration``), every replica runs that spec (``updatedReplicas``),
every one of them is available, and no replica of an older spec is left.

Example::

    wait_all(cluster, "ottlab", ["prometheus", "alertmanager"], timeout=60)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.core.wait import until
from labkit.targets.kube.cluster import DEPLOYMENTS, PODS, Cluster, ResourceType
from labkit.targets.kube.manifest import KubeObject

# How often a wait reads the Deployments again: quick enough that a lab does not wait for
# nothing, slow enough to be no load on the API server.
POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class RolloutStatus:
    """What a Deployment's status says of its rollout."""

    name: str
    desired: int
    updated: int = 0
    available: int = 0
    total: int = 0
    generation: int = 0
    observed_generation: int = 0
    # The reason the controller gave up (ProgressDeadlineExceeded), if it did.
    failure: str = ""

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> RolloutStatus:
        """The rollout status of a Deployment object."""
        meta = deployment.get("metadata") or {}
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        failure = ""
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
                failure = str(condition.get("message") or "ProgressDeadlineExceeded")
        # A Deployment without spec.replicas runs one.
        desired = spec.get("replicas")
        return cls(
            name=str(meta.get("name", "")),
            desired=1 if desired is None else int(desired),
            updated=int(status.get("updatedReplicas") or 0),
            available=int(status.get("availableReplicas") or 0),
            total=int(status.get("replicas") or 0),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            failure=failure,
        )

    @property
    def complete(self) -> bool:
        """Every desired replica runs the latest spec and is available; no old one is left."""
        return (
            self.observed_generation >= self.generation
            and self.updated == self.desired
            and self.available == self.desired
            and self.total == self.desired
        )

    def describe(self) -> str:
        """One short line: ``1/1 updated, 0/1 available``."""
        if self.observed_generation < self.generation:
            return f"the controller has not seen generation {self.generation} yet"
        text = f"{self.updated}/{self.desired} updated, {self.available}/{self.desired} available"
        if self.total > self.desired:
            text += f", {self.total - self.desired} old replica(s) terminating"
        if self.failure:
            text += f"; {self.failure}"
        return text


def wait_all(
    cluster: Cluster,
    namespace: str,
    names: Sequence[str],
    timeout: float,
    *,
    progress: Callable[[str], None] | None = print,
    poll_interval: float = POLL_INTERVAL,
    check: Callable[[], None] | None = None,
    kinds: Mapping[str, ResourceType] | None = None,
) -> dict[str, RolloutStatus]:
    """Wait until the rollout of every Deployment in ``names`` is complete; their statuses.

    ``kinds`` names the workloads that are not Deployments (the edge's StatefulSet), by name;
    a StatefulSet's status has the same fields (updated, available, replicas, observed generation).

    The Deployments roll out side by side, so they share one deadline, ``timeout`` seconds
    from now. When it passes, :class:`~labkit.core.errors.TimeoutExpired` names each Deployment
    still rolling out, how far it got and why its pods are stuck, when they say. ``check`` is
    called at every poll and ends the wait at once by raising, for trouble no waiting can mend
    (an image the cluster cannot get).
    """
    pending = list(dict.fromkeys(names))

    def kind_of(name: str) -> ResourceType:
        return (kinds or {}).get(name, DEPLOYMENTS)

    def ref(name: str) -> str:
        return f"{kind_of(name).kind.lower()}/{name}"

    done: dict[str, RolloutStatus] = {}
    said: dict[str, str] = {}
    waiting: dict[str, str] = {}

    def rolled_out() -> bool:
        nonlocal pending
        if check is not None:
            check()
        waiting.clear()
        for name in pending:
            deployment = cluster.get(kind_of(name), name, namespace)
            if deployment is None:
                waiting[name] = f"the {kind_of(name).kind.lower()} does not exist"
                continue
            status = RolloutStatus.of(deployment)
            if status.complete:
                done[name] = status
                if progress is not None:
                    progress(f"  {ref(name)} is ready ({status.available}/{status.desired} available)")
            else:
                waiting[name] = status.describe()
        pending = [name for name in pending if name in waiting]
        if pending and progress is not None:
            for name, text in waiting.items():
                if said.get(name) != text:
                    progress(f"  waiting for {ref(name)}: {text}")
                    said[name] = text
        return not pending

    def stuck() -> str:
        return f"the rollout in namespace {namespace} of " + "; ".join(
            f"{ref(name)} ({text}{_pod_trouble(cluster, namespace, name, kind_of(name))})"
            for name, text in waiting.items()
        )

    until(rolled_out, timeout, poll_interval, stuck,
          hint="a first image pull can take minutes: raise OTTLAB_READY_TIMEOUT (e.g. 300) and run "
          f"`ottlab up --target kube` again; `kubectl -n {namespace} describe pods` shows why pods wait")
    return done


def _pod_trouble(cluster: Cluster, namespace: str, name: str, kind: ResourceType = DEPLOYMENTS) -> str:
    """Why the workload's pods are not ready, as their statuses say (``ImagePullBackOff`` ...)."""
    deployment = cluster.get(kind, name, namespace)
    match_labels = ((deployment or {}).get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    if not match_labels:
        return ""
    selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
    reasons = [reason for pod in cluster.list(PODS, namespace, label_selector=selector) if (reason := pod_trouble(pod))]
    return f"; {', '.join(reasons)}" if reasons else ""


def pod_trouble(pod: KubeObject) -> str:
    """``pod/<name>: <reason>`` when a pod's status tells why it is not ready, else ``""``."""
    status = pod.get("status") or {}
    name = pod.get("metadata", {}).get("name", "")
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for phase in ("waiting", "terminated"):
            reason = (state.get(phase) or {}).get("reason")
            if reason:
                return f"pod/{name}: {reason}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"pod/{name}: {condition.get('reason') or 'not scheduled'}"
    return ""
