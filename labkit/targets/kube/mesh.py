"""The mesh on a cluster: the Istio resources of the lab's namespace, read and changed through the API server.

:func:`read` lists the VirtualServices, DestinationRules (``networking.istio.io/v1``),
PeerAuthentications and AuthorizationPolicies (``security.istio.io/v1``) of the namespace, each
as it would be declared (apiVersion, kind, name, labels, spec: none of the server's bookkeeping).
:func:`apply` puts a changed :class:`~labkit.platform.mesh.resources.Mesh` in force: it is checked
first (Istio's CRD schemas, then the names it uses against the lab's manifests), and a mesh with a
problem sends nothing; then only what differs from the cluster is sent, each changed object by a
server-side apply (field manager ``labkit``, as ``ottlab up`` applies), each object gone by a delete.

Faults (:mod:`labkit.platform.mesh.faults`) are routes of the service's own VirtualService, so
injecting or clearing one is one apply of that VirtualService. Not a VirtualService of its own
per fault: Istio merges several VirtualServices of one host only when they are bound to a gateway;
for the sidecars (the ``mesh`` gateway) a second one for the same host conflicts (``istioctl
analyze``'s IST0109) and only one of them is used, which one being undefined.

Example::

    mesh = read(cluster, "ottlab")
    apply(cluster, "ottlab", faults.inject(mesh, fault), topology)   # one PATCH of virtualservice/<service>
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labkit.core.config import DEFAULT_MESH
from labkit.core.console import progress
from labkit.core.errors import KubeError
from labkit.platform.mesh import resources
from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.resources import Mesh, Resource, Topology
from labkit.platform.mesh.schema import ISTIO_VERSION
from labkit.targets.kube.cluster import Cluster, ResourceType
from labkit.targets.kube.manifest import KubeObject

if TYPE_CHECKING:
    from labkit.platform.mesh.faults import ReplicaFault

# The kinds of the mesh and the version labkit reads and writes them as (Istio 1.22+ serves v1).
API_VERSIONS = {
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "VirtualService": "networking.istio.io/v1",
}
# What kubectl adds to an object it applied client-side: not part of the declaration.
_BOOKKEEPING_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
# The kustomize component of the mesh (k8s/components/mesh), which the kube target adds to its
# overlay when the lab runs with the mesh (OTTLAB_MESH=strict or permissive).
COMPONENT = "mesh"
# The container Istio's injector adds to a meshed pod, and its Envoy's admin API: on the pod's
# loopback only (127.0.0.1:15000), so reached by a port-forward into the pod, as `istioctl
# dashboard envoy` does; the API server's pod proxy dials the pod's IP and cannot.
PROXY_CONTAINER = "istio-proxy"
ADMIN_PORT = 15000
INSTALL_HINT = (f"install Istio {ISTIO_VERSION} on the cluster first: ottlab addons install istio-base istiod "
                "(its CRDs serve these kinds), or istioctl install of the same version")


def _types(cluster: Cluster) -> dict[str, ResourceType]:
    types: dict[str, ResourceType] = {}
    for kind in resources.MESH_KINDS:
        try:
            types[kind] = cluster.resource_type(API_VERSIONS[kind], kind)
        except KubeError as exc:
            raise KubeError(exc.message, hint=INSTALL_HINT) from None
    return types


def require_istio(cluster: Cluster, mode: str) -> None:
    """A :class:`KubeError` when the cluster does not serve the mesh's kinds, for a lab with the mesh in ``mode``.

    Asked before anything is applied (API discovery, as ``kubectl api-resources`` does): it says the
    lab needs Istio (the version ``ottlab addons install`` pins), how to install it, and that
    ``OTTLAB_MESH=off`` brings the lab up without the mesh.
    """
    try:
        _types(cluster)
    except KubeError as exc:
        default = ", the default" if mode == DEFAULT_MESH else ""
        raise KubeError(
            f"the lab runs with the service mesh (OTTLAB_MESH={mode}{default}), which needs Istio {ISTIO_VERSION} "
            f"on the cluster, and {exc.message}: nothing was applied",
            hint=f"{INSTALL_HINT}; or bring the lab up without the mesh: OTTLAB_MESH=off ottlab up --target kube",
        ) from None


def with_mode(objects: Sequence[KubeObject], mode: str) -> list[KubeObject]:
    """``objects`` with the namespace-wide PeerAuthentication's mTLS mode ``mode`` (``OTTLAB_MESH``).

    The committed one is STRICT; ``permissive`` starts the lab where Istio's migration starts.
    """
    out = []
    for obj in objects:
        if obj.get("kind") == "PeerAuthentication" and "selector" not in (obj.get("spec") or {}):
            obj = {**obj, "spec": {**obj["spec"], "mtls": {"mode": mode.upper()}}}
        out.append(obj)
    return out


def meshed(workload: Mapping[str, Any]) -> bool:
    """Whether Istio injects its sidecar into the pods of ``workload`` (in a namespace asking for injection)."""
    labels = ((workload.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    return labels.get("sidecar.istio.io/inject") != "false"


def without_sidecar(pods: Sequence[KubeObject], objects: Sequence[KubeObject]) -> list[str]:
    """The pods of the meshed workloads among ``objects`` that run no sidecar (Istio did not inject it), by name.

    A pod being deleted is left out: its replacement is what counts.
    """
    wanted = {str(o["metadata"]["name"]) for o in objects
              if o.get("kind") in ("Deployment", "StatefulSet") and meshed(o)}
    return sorted(str(p["metadata"]["name"]) for p in pods
                  if (p.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/name") in wanted
                  and not p.get("metadata", {}).get("deletionTimestamp") and not has_sidecar(p))


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """Whether ``pod`` runs Istio's sidecar (a container, or a native sidecar among its init containers)."""
    spec = pod.get("spec") or {}
    return any(c.get("name") == PROXY_CONTAINER for c in [*(spec.get("containers") or []),
                                                          *(spec.get("initContainers") or [])])


def declared(obj: Mapping[str, Any]) -> Resource:
    """``obj`` as a manifest declares it: apiVersion, kind, metadata (name, namespace, labels, annotations), spec."""
    meta = obj.get("metadata", {})
    kept: dict[str, Any] = {"name": meta["name"]}
    if meta.get("namespace"):
        kept["namespace"] = meta["namespace"]
    if meta.get("labels"):
        kept["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _BOOKKEEPING_ANNOTATIONS}
    if annotations:
        kept["annotations"] = annotations
    return {"apiVersion": obj.get("apiVersion", API_VERSIONS.get(str(obj.get("kind")), "")), "kind": obj["kind"],
            "metadata": kept, "spec": obj.get("spec", {})}


def read(cluster: Cluster, namespace: str) -> Mesh:
    """The mesh's resources in ``namespace`` now, by kind (in the order of ``resources.MESH_KINDS``), by name."""
    objects: list[Resource] = []
    for kind, rtype in _types(cluster).items():
        found = sorted(cluster.list(rtype, namespace), key=lambda o: str(o.get("metadata", {}).get("name", "")))
        objects += [declared({"apiVersion": rtype.api_version, "kind": kind, **o}) for o in found]
    return Mesh(tuple(objects))


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return str(obj["kind"]), str(obj["metadata"]["name"])


def apply(cluster: Cluster, namespace: str, mesh: Mesh, topology: Topology) -> list[str]:
    """Put ``mesh`` in force in ``namespace``: what changed is applied, what is gone deleted; what was done.

    Checked first (:func:`labkit.platform.mesh.resources.check` against ``topology``, the lab's
    manifests): a mesh with a problem raises :class:`~labkit.platform.mesh.errors.MeshConfigError`
    before any request is sent. An object of a kind that is not the mesh's is refused the same way.
    """
    foreign = sorted({str(o.get("kind")) for o in mesh.objects} - set(resources.MESH_KINDS))
    if foreign:
        raise MeshConfigError(f"the mesh holds objects of kind(s) {', '.join(foreign)}",
                              hint=f"a mesh holds only {', '.join(resources.MESH_KINDS)}")
    resources.check(mesh, topology)
    types = _types(cluster)
    wanted = {_key(o): declared({**o, "apiVersion": API_VERSIONS[str(o["kind"])]}) for o in mesh.objects}
    current = {_key(o): o for o in read(cluster, namespace).objects}
    done: list[str] = []
    for key, obj in wanted.items():
        obj["metadata"]["namespace"] = namespace  # the lab's, whatever the file said
        if current.get(key) == obj:
            continue
        cluster.apply(obj, namespace=namespace)
        done.append(f"applied {key[0].lower()}/{key[1]}")
    for key in current:
        if key not in wanted:
            cluster.delete(types[key[0]], key[1], namespace)
            done.append(f"deleted {key[0].lower()}/{key[1]}")
    for line in done:
        progress(f"  {line}")
    if not done:
        progress(f"  the mesh in namespace {namespace} is already as asked")
    return done


# -- a client outside the mesh, inside the cluster -------------------------------------------
# What a notebook's TLS or plaintext client at a service's port needs on kube: a connection that
# enters the service's pod from the cluster's network, where its sidecar intercepts it. A pod of
# the lab's services image without a sidecar makes it (Istio's mutual TLS migration task uses such
# a "legacy" client) and prints what happened as one JSON line: the bytes of the certificate the
# port presented, the HTTP status and the start of the body, or why the connection was refused.
PROBE_NAME = "ottlab-mesh-probe"
PROBE_TIMEOUT = 120.0   # a pod's start, the image already on the node; the connection itself is bounded at 5 s
PROBE_SCRIPT = r"""
import base64, json, os, socket, ssl, sys, tempfile
host, port, method, path, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
out = {"peer_der": None, "status": None, "body": "", "refused": None}
try:
    sock = socket.create_connection((host, port), timeout=5)
    if mode != "plaintext":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if mode == "certificate":
            folder = tempfile.mkdtemp()
            for name in ("chain", "key"):
                with open(os.path.join(folder, name + ".pem"), "w") as f:
                    f.write(os.environ["PROBE_" + name.upper()])
            context.load_cert_chain(os.path.join(folder, "chain.pem"), os.path.join(folder, "key.pem"))
        sock = context.wrap_socket(sock, server_hostname=host)
        der = sock.getpeercert(binary_form=True)
        out["peer_der"] = base64.b64encode(der).decode() if der else None
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while len(data) < 65536:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.startswith(b"HTTP/"):
        out["status"] = int(data.split()[1])
        out["body"] = data.partition(b"\r\n\r\n")[2][:300].decode(errors="replace")
    else:
        out["refused"] = "the connection closed before an answer"
except (ssl.SSLError, OSError) as exc:
    out["refused"] = f"{type(exc).__name__}: {exc or 'connection closed'}"
print(json.dumps(out))
"""


def probe_pod(name: str, image: str, host: str, port: int, method: str, path: str, *,
              chain: str | None = None, key: str | None = None, tls: bool = True) -> KubeObject:
    """The Pod that runs :data:`PROBE_SCRIPT` once against ``host:port``, outside the mesh (no sidecar).

    ``chain`` and ``key`` (PEM): the client certificate it presents; ``tls=False``: plaintext HTTP.
    """
    mode = "plaintext" if not tls else "certificate" if chain is not None else "anonymous"
    env = [{"name": "PROBE_CHAIN", "value": chain or ""}, {"name": "PROBE_KEY", "value": key or ""}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/name": PROBE_NAME, "app.kubernetes.io/part-of": "ottlab", "ottlab.io/layer": "apis",
            # Outside the mesh: a client with no identity of the mesh, whatever the namespace asks.
            "sidecar.istio.io/inject": "false"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": image,
                "command": ["python", "-c", PROBE_SCRIPT, host, str(port), method, path, mode],
                "env": env if mode == "certificate" else [],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                              "limits": {"cpu": "200m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        },
    }


# -- a fault in one replica (Target.inject_replica_fault) --------------------------------------------
# A VirtualService's fault is in the callers' sidecars and reaches every pod of the service alike.
# A fault in one pod's own sidecar (a flaky replica) is an EnvoyFilter selecting that pod, by a label
# labkit gives it, that inserts the fault filter the local sidecars render for it
# (labkit.platform.mesh.envoy.inbound_fault) before the router of the pod's inbound HTTP chains:
# after the authorization filters, on the requests it lets in, whoever calls.
ENVOY_FILTER_VERSION = "networking.istio.io/v1alpha3"
REPLICA_FAULT_LABEL = "ottlab.io/replica-fault"        # on the pod (its name) and on the EnvoyFilter
REPLICA_FAULT_ANNOTATION = "ottlab.io/replica-fault"   # the ReplicaFault, as JSON


def envoy_filters(cluster: Cluster) -> ResourceType:
    """Istio's EnvoyFilter kind; a :class:`KubeError` saying how to install Istio when the cluster does not serve it."""
    try:
        return cluster.resource_type(ENVOY_FILTER_VERSION, "EnvoyFilter")
    except KubeError as exc:
        raise KubeError(exc.message, hint=INSTALL_HINT) from None


def replica_fault_filter(fault: ReplicaFault, pod: str) -> KubeObject:
    """The EnvoyFilter putting ``fault`` in force in ``pod``'s sidecar (one per service and replica)."""
    import json

    from labkit.platform.mesh import envoy

    service = fault.fault.service
    return {
        "apiVersion": ENVOY_FILTER_VERSION,
        "kind": "EnvoyFilter",
        "metadata": {
            "name": f"ottlab-replica-fault-{service}-{fault.replica}",
            "labels": {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": "ottlab",
                       "ottlab.io/layer": "apis", REPLICA_FAULT_LABEL: "true"},
            "annotations": {REPLICA_FAULT_ANNOTATION: json.dumps(fault.as_dict(), sort_keys=True)},
        },
        "spec": {
            "workloadSelector": {"labels": {REPLICA_FAULT_LABEL: pod}},
            "configPatches": [{
                "applyTo": "HTTP_FILTER",
                "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": {"filter": {
                    "name": "envoy.filters.network.http_connection_manager",
                    "subFilter": {"name": "envoy.filters.http.router"}}}}},
                "patch": {"operation": "INSERT_BEFORE", "value": envoy.inbound_fault(fault, service)},
            }],
        },
    }


def replica_fault_of(obj: Mapping[str, Any]) -> ReplicaFault | None:
    """The ReplicaFault an EnvoyFilter of :func:`replica_fault_filter` holds; None for another EnvoyFilter."""
    import json

    from labkit.platform.mesh.faults import ReplicaFault

    text = (obj.get("metadata", {}).get("annotations") or {}).get(REPLICA_FAULT_ANNOTATION)
    return ReplicaFault.of(json.loads(text)) if text else None
