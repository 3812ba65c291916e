"""A Kubernetes API server, reached through the official ``kubernetes`` client.

:class:`Cluster` speaks plain JSON dicts over the client's authenticated transport
(``ApiClient``): one code path serves every kind, custom resources included, and every call
carries a timeout. Failures become lab errors: :class:`~labkit.core.errors.ClusterUnreachableError`
when the server does not answer, :class:`~labkit.core.errors.KubeError` (with the server's message)
when it refuses.

Example::

    cluster = Cluster(load_api_client())          # $KUBECONFIG, checked reachable
    cluster.apply(namespace_object)              # server-side apply, field manager "labkit"
    cluster.get(DEPLOYMENTS, "prometheus", "ottlab")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
import yaml

from labkit.core.errors import ConfigError

try:
    import kubernetes  # noqa: F401  (imported for the check; the names follow below)
except ImportError as exc:  # pragma: no cover - the dev environment has the extra installed
    raise ConfigError(
        "the kube target needs the Python package `kubernetes`, which is not installed",
        hint="install the kube extra: pip install -e .[kube]  (or use --target local)",
    ) from exc
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from labkit.core.errors import ClusterUnreachableError, KubeError
from labkit.targets.kube.manifest import KubeObject

# One API call; a healthy API server answers in milliseconds.
REQUEST_TIMEOUT = 10.0
# The reachability check when the target starts: short, so a missing cluster fails fast.
PROBE_TIMEOUT = 5.0
FIELD_MANAGER = "labkit"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class ResourceType:
    """Where the API serves a kind: ``apps/v1`` ``Deployment`` is ``.../deployments``, namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of the collection, of one object, or of one object's subresource."""
        parts = ["/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


# The built-in kinds labkit reads and changes directly; anything else is discovered.
NAMESPACES = ResourceType("v1", "Namespace", "namespaces", namespaced=False)
PODS = ResourceType("v1", "Pod", "pods", namespaced=True)
SERVICES = ResourceType("v1", "Service", "services", namespaced=True)
PVCS = ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims", namespaced=True)
SECRETS = ResourceType("v1", "Secret", "secrets", namespaced=True)
DEPLOYMENTS = ResourceType("apps/v1", "Deployment", "deployments", namespaced=True)
STATEFULSETS = ResourceType("apps/v1", "StatefulSet", "statefulsets", namespaced=True)
CONFIGMAPS = ResourceType("v1", "ConfigMap", "configmaps", namespaced=True)
NODES = ResourceType("v1", "Node", "nodes", namespaced=False)


def load_api_client(*, probe_timeout: float = PROBE_TIMEOUT) -> k8s_client.ApiClient:
    """An ``ApiClient`` for ``$KUBECONFIG`` (else ``~/.kube/config``, else the pod's service account).

    The cluster must answer ``GET /version`` within ``probe_timeout`` seconds; when there is no
    configuration or the cluster does not answer, :class:`ClusterUnreachableError` says which.
    """
    configuration = k8s_client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG", "").strip()
    default = Path("~/.kube/config").expanduser()
    if kubeconfig or default.is_file():
        source = f"KUBECONFIG={kubeconfig}" if kubeconfig else str(default)
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or str(default), client_configuration=configuration
            )
        except (k8s_config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
            raise ClusterUnreachableError(f"cannot load the cluster configuration from {source}: {exc}") from None
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        source = "the pod's service account"
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (k8s_config.ConfigException, OSError) as exc:
            raise ClusterUnreachableError(f"cannot load the in-cluster configuration: {exc}") from None
    else:
        raise ClusterUnreachableError(f"KUBECONFIG is not set and {default} does not exist")

    # urllib3's default of 3 retries makes an unreachable cluster take ~4x the probe timeout to report.
    configuration.retries = 1
    api_client = k8s_client.ApiClient(configuration)
    try:
        Cluster(api_client, request_timeout=probe_timeout, origin=source).version()
    except (ClusterUnreachableError, KubeError):
        api_client.close()  # type: ignore[no-untyped-call]
        raise
    return api_client


class Cluster:
    """The API server behind ``api_client``: JSON in, JSON out, every call bounded.

    ``origin`` says where its configuration came from (``KUBECONFIG=...``), for error messages.
    """

    def __init__(
        self, api_client: k8s_client.ApiClient, *, request_timeout: float = REQUEST_TIMEOUT, origin: str = ""
    ) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.origin = origin
        self._types: dict[str, list[dict[str, Any]]] = {}

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self.api_client.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        allow_missing: bool = False,
        as_text: bool = False,
    ) -> Any:
        """One API call: the decoded JSON answer (or text with ``as_text``).

        ``allow_missing`` turns a 404 into ``None`` instead of a :class:`KubeError`.
        """
        headers = {"Accept": "*/*" if as_text else "application/json", "Content-Type": content_type}
        try:
            call = self.api_client.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(*call, _request_timeout=self.request_timeout)
            data: bytes = response.read() or b""  # type: ignore[no-untyped-call]
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(method, path, _network_reason(exc)) from None
        except ApiException as exc:
            # The REST layer reports TLS failures this way, with status 0.
            raise self._unreachable(method, path, str(exc.reason)) from None
        status = int(response.status)
        if status == 404 and allow_missing:
            return None
        if not 200 <= status < 300:
            raise _refusal(method, path, status, data)
        if as_text:
            return data.decode("utf-8", errors="replace")
        return json.loads(data) if data else {}

    def _unreachable(self, method: str, path: str, reason: str) -> ClusterUnreachableError:
        where = f"{self.host} (from {self.origin})" if self.origin else self.host
        return ClusterUnreachableError(f"{where} did not answer {method} {path}: {reason}")

    def version(self) -> dict[str, Any]:
        """``GET /version``: the server's build (``gitVersion`` ...)."""
        answer: dict[str, Any] = self.request("GET", "/version")
        return answer

    def resource_type(self, api_version: str, kind: str) -> ResourceType:
        """Where the server serves ``kind`` of ``api_version`` (discovered once, then cached)."""
        if api_version not in self._types:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            answer = self.request("GET", path, allow_missing=True)
            self._types[api_version] = list((answer or {}).get("resources", []))
        for entry in self._types[api_version]:
            if entry.get("kind") == kind and "/" not in str(entry.get("name", "")):
                return ResourceType(api_version, kind, str(entry["name"]), bool(entry.get("namespaced")))
        raise KubeError(
            f"the cluster at {self.host} does not serve {kind} ({api_version})",
            hint="install what provides it first (its CRDs or operator), or check the apiVersion in k8s/",
        )

    def get(self, rtype: ResourceType, name: str, namespace: str | None = None) -> KubeObject | None:
        """The object, or None when it does not exist."""
        found: KubeObject | None = self.request("GET", rtype.path(namespace, name), allow_missing=True)
        return found

    def list(
        self, rtype: ResourceType, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[KubeObject]:
        """The objects of a kind (in ``namespace`` when given) matching ``label_selector``."""
        query = {"labelSelector": label_selector} if label_selector else {}
        answer = self.request("GET", rtype.path(namespace), query=query, allow_missing=True)
        return list((answer or {}).get("items") or [])

    def apply(self, obj: KubeObject, *, namespace: str | None = None) -> KubeObject:
        """Server-side apply ``obj`` as field manager ``labkit``, forcing conflicts.

        Forcing takes over fields another manager (a ``kubectl edit``) changed since: the
        manifests under k8s/ are the lab's truth. ``namespace`` is used when the object has none.
        """
        rtype = self.resource_type(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        meta = obj.get("metadata", {})
        ns = (meta.get("namespace") or namespace) if rtype.namespaced else None
        applied: KubeObject = self.request(
            "PATCH",
            rtype.path(ns, str(meta.get("name", ""))),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type=APPLY_PATCH,
        )
        return applied

    def create(self, rtype: ResourceType, obj: KubeObject, namespace: str | None = None) -> KubeObject:
        """Create ``obj`` (a POST): a :class:`KubeError` when it already exists, never an overwrite."""
        created: KubeObject = self.request(
            "POST", rtype.path(namespace), query={"fieldManager": FIELD_MANAGER}, body=obj
        )
        return created

    def patch(
        self,
        rtype: ResourceType,
        name: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
    ) -> KubeObject | None:
        """Patch an object (or its ``subresource``, e.g. ``scale``); None when it does not exist."""
        patched: KubeObject | None = self.request(
            "PATCH",
            rtype.path(namespace, name, subresource),
            query={"fieldManager": FIELD_MANAGER},
            body=dict(body),
            content_type=content_type,
            allow_missing=True,
        )
        return patched

    def delete(
        self, rtype: ResourceType, name: str, namespace: str | None = None, *, grace_period_seconds: int | None = None
    ) -> bool:
        """Delete an object (its dependents in the background); False when it was already gone."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        query: dict[str, str] = {}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
            query["gracePeriodSeconds"] = str(grace_period_seconds)
        answer = self.request("DELETE", rtype.path(namespace, name), query=query, body=options, allow_missing=True)
        return answer is not None

    def text(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """A plain-text answer, such as a pod's log."""
        answer: str = self.request("GET", path, query=query, as_text=True)
        return answer


def _network_reason(exc: urllib3.exceptions.HTTPError) -> str:
    reason: object = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    text = str(reason)
    # urllib3 starts with the connection object's repr; the words after it are the news.
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


_HINTS = {
    401: "the cluster refused the credentials of your kubeconfig: refresh them "
    "(kind export kubeconfig, minikube update-context) or point KUBECONFIG at a valid file",
    403: "your user may not do this: the kube target creates namespaces, RBAC and workloads, "
    "so it needs cluster-admin on the lab cluster",
    409: "something else changed the object meanwhile: run the command again",
    422: "the API server rejected the object: check the manifests under k8s/ "
    "(pytest tests/kube/test_manifests.py validates them offline)",
}


def _refusal(method: str, path: str, status: int, data: bytes) -> KubeError:
    message = data.decode("utf-8", errors="replace").strip()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("message"):
        message = str(answer["message"])
    error = KubeError(
        f"{method} {path} failed with HTTP {status}: {message[:500]}",
        hint=_HINTS.get(status, "read the server's message above; `kubectl get events -A` may tell more"),
    )
    # Conflicts, throttling and server trouble pass; a refusal or an invalid object does not.
    error.retryable = status in (409, 429) or status >= 500
    return error
