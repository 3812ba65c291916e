"""The service mesh: Istio's resources (``k8s/components/mesh``) as the one source of truth.

- :mod:`~labkit.platform.mesh.schema`: the resources validated offline against the pinned Istio CRDs;
- :mod:`~labkit.platform.mesh.resources`: read them, and refuse what cannot be enforced as written;
- :mod:`~labkit.platform.mesh.identity`: the lab's CA and the workloads' SPIFFE certificates;
- :mod:`~labkit.platform.mesh.envoy`: each sidecar's Envoy bootstrap rendered from the resources.
- :mod:`~labkit.platform.mesh.faults`: delays and aborts added to (and removed from) a service's VirtualService.

On a cluster Istio enforces the same files. The local platform does not run through the mesh yet.
"""
