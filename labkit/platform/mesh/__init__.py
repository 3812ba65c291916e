"""The service mesh: Istio's resources (``k8s/components/mesh``) as the one source of truth.

- :mod:`~labkit.platform.mesh.schema`: the resources validated offline against the pinned Istio CRDs;
- :mod:`~labkit.platform.mesh.resources`: read them, and refuse what cannot be enforced as written;
- :mod:`~labkit.platform.mesh.identity`: the lab's CA and the workloads' SPIFFE certificates;
- :mod:`~labkit.platform.mesh.envoy`: each sidecar's Envoy bootstrap rendered from the resources.
- :mod:`~labkit.platform.mesh.faults`: delays and aborts added to (and removed from) a service's VirtualService.
- :mod:`~labkit.platform.mesh.budget`: the timeout budget along a call chain (timeouts shrink toward the leaf).

On a cluster Istio enforces the same files; on the local target, with ``OTTLAB_MESH`` on, Envoy sidecars
rendered from them (:mod:`labkit.targets.local.mesh`).
"""

# Every sidecar's Envoy statistics, one Prometheus job on both targets: the name Istio's Prometheus
# configuration gives the sidecars' own metrics (``/stats/prometheus`` on each pod's port 15090).
STATS_JOB = "envoy-stats"
