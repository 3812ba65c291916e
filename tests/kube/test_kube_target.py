"""The kube target against a fake API server (kmock), and once against a real cluster.

``fake_cluster`` serves kmock's Kubernetes emulator (an in-process, stateful fake API server)
on 127.0.0.1 from a background event loop: the kube target and the official client are
synchronous, so they must not share a loop with the server. What the target needs of a real
API server and kmock 0.8 does not do is added by :class:`LabApiServer` (four gaps, listed
there), and nothing else.

The fake records every request, so the tests assert what the target asked of the API server:
server-side apply with field manager ``labkit``, the scale subresource, a pod deleted with
grace period 0 ... Deployments only become available when a test installs the "controller"
reaction (:func:`settle_deployments`), as a real cluster's deployment controller would do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, cast

import aiohttp
import aiohttp.web
import attrs
import httpx
import kmock
import pytest
from _fake_transcoder import FakeTranscoder, wire
from kubernetes import client as k8s_client

from labkit import platform
from labkit.clients import transcoding
from labkit.core.config import LabConfig
from labkit.core.errors import (
    ClusterUnreachableError,
    ConfigError,
    KubeError,
    MissingCapabilityError,
    NotRunningError,
    TimeoutExpired,
    UnknownComponentError,
)
from labkit.platform.component import Component, Port, Readiness
from labkit.platform.layers import apis, cdn
from labkit.platform.layers.monitoring import alerting
from labkit.targets.kube import manifest, monitoring, secrets
from labkit.targets.kube import mesh as kube_mesh
from labkit.targets.kube.cluster import Cluster
from labkit.targets.kube.portforward import PortForward
from labkit.targets.kube.target import KubeTarget
from ott import tokens

# -- the fake API server ---------------------------------------------------------------------

NAMESPACE = "ottlab"
# The fake pod's answer to any HTTP request arriving through a port-forward.
POD_REPLY = b"Prometheus Server is Ready.\n"
# What a fake pod prints for any command run in it (pods/<name>/exec).
EXEC_OUTPUT = b"done\n"
SERVER_TIMEOUT = 10.0
NAMESPACES = kmock.resource("", "v1", "namespaces")


class LabApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what the kube target needs of a real API server.

    - ``/api/v1/namespaces/<name>`` is the Namespace ``<name>`` (kmock reads it as the
      namespace of a resource and answers 404);
    - a server-side apply (PATCH ``application/apply-patch+yaml``) creates a missing object,
      where kmock answers 404;
    - a list honours an equality ``labelSelector`` (``a=b,c=d``), which kmock ignores;
    - ``pods/<name>/portforward`` speaks the websocket port-forward protocol
      (``v4.channel.k8s.io``), relaying to a fake pod that answers any HTTP request with
      :data:`POD_REPLY` (kmock serves no websockets);
    - ``pods/<name>/exec`` speaks the exec protocol: it records the command (:attr:`execs`) and
      answers as a command that succeeded (or failed, with :attr:`exec_failure`);
    - a strategic merge patch merges the lists the API server merges by name (containers, env ...)
      and honours ``$patch: delete`` (:func:`strategic_merge`), where kmock replaces every list.
    """

    # What each exec asked: (its path, its command, its container); a failure message to answer with.
    execs: list[tuple[str, list[str], str]]
    exec_failure: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execs = []

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if re.fullmatch(r"/api/v1/namespaces/[^/]+", request.url.path):
            action = {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}
            fixed = attrs.evolve(
                request,
                resource=NAMESPACES,
                namespace=None,
                name=request.namespace,
                action=action.get(request.method.value),
            )
            # kmock matches reactions against the requests it recorded, by identity.
            self._requests[:] = [fixed if r is request else r for r in self._requests]
            request = fixed
        if request.subresource == "portforward":
            return await self._portforward(request)
        if request.subresource == "exec":
            return await self._exec(request)
        content_type = str(request.headers.get("Content-Type", ""))
        if (request.action == kmock.action.UPDATE and content_type.startswith("application/strategic-merge-patch")
                and request.subresource is None):
            assert request.resource is not None and request.name is not None
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key in self.objects and not self.objects[key].deleted:
                    merged = strategic_merge(copy.deepcopy(self.objects[key].raw), request.data)
                    self.objects[key] = merged
                    return aiohttp.web.json_response(merged)
        if request.action == kmock.action.UPDATE and content_type.startswith("application/apply-patch"):
            assert request.resource is not None and request.name is not None
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self.objects:
                    self.objects[key] = request.data
                elif self.objects[key].deleted:
                    self.objects[key].create(request.data)
        response: aiohttp.web.StreamResponse = await super()._handle(request)
        return response

    async def _serve_list(self, request: kmock.Request) -> Any:
        answer = cast(dict[str, Any], await super()._serve_list(request))
        selector = request.params.get("labelSelector")
        if selector:
            wanted = dict(term.split("=", 1) for term in selector.split(","))
            answer["items"] = [
                item
                for item in answer["items"]
                if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
        return answer

    async def _exec(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """``pods/<name>/exec`` over the websocket protocol: the command is recorded in :attr:`execs`, not run.

        It answers :data:`EXEC_OUTPUT` on stdout and a Success status, or, when :attr:`exec_failure` is
        set, that failure's status (as the API server does for a non-zero exit).
        """
        assert request._raw_request is not None
        raw = request._raw_request
        self.execs.append((raw.path, list(raw.query.getall("command", [])), raw.query.get("container", "")))
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(raw)
        await ws.send_bytes(b"\x01" + EXEC_OUTPUT)
        status = ({"status": "Failure", "message": self.exec_failure, "reason": "NonZeroExitCode",
                   "details": {"causes": [{"reason": "ExitCode", "message": "1"}]}}
                  if self.exec_failure else {"status": "Success"})
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

    async def _portforward(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        port = int(request.params["ports"])
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        assert request._raw_request is not None
        await ws.prepare(request._raw_request)
        # Each port opens with its number on its data (0) and error (1) channels.
        await ws.send_bytes(bytes([0]) + port.to_bytes(2, "little"))
        await ws.send_bytes(bytes([1]) + port.to_bytes(2, "little"))
        received = b""
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                break
            received += message.data[1:]
            if b"\r\n\r\n" in received:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                await ws.send_bytes(b"\x00" + head + b"Content-Length: %d\r\n\r\n" % len(POD_REPLY) + POD_REPLY)
                received = b""
        await ws.close()
        return ws


def strategic_merge(live: Any, patch: Any) -> Any:
    """``patch`` merged into ``live`` as a strategic merge patch: lists of named items by name, ``$patch: delete``.

    Enough of the API server's rules for what labkit patches (a pod template's containers and env);
    a list of anything else is replaced, and ``None`` removes a key, as in a JSON merge patch.
    """
    if isinstance(live, dict) and isinstance(patch, dict):
        merged = dict(live)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(live.get(key), value)
        return merged
    if isinstance(live, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged_items = [dict(i) for i in live]
        for item in patch:
            at = next((n for n, i in enumerate(merged_items) if i.get("name") == item["name"]), None)
            if item.get("$patch") == "delete":
                if at is not None:
                    del merged_items[at]
            elif at is None:
                merged_items.append(item)
            else:
                merged_items[at] = strategic_merge(merged_items[at], item)
        return merged_items
    return patch


@dataclass
class FakeCluster:
    """The fake API server, its URL, and an ApiClient aimed at it."""

    server: LabApiServer
    url: str
    api_client: k8s_client.ApiClient

    def requests(self, method: str | None = None) -> list[kmock.Request]:
        """What the server received (with ``method``: only those), in order."""
        return [r for r in list(self.server) if method is None or r.method == method]

    def put(self, resource: str, name: str, obj: dict[str, Any], namespace: str | None = NAMESPACE) -> None:
        """Store an object, as if someone had created it: ``put("apps/v1/deployments", "web", {...})``."""
        meta = {"name": name, **({"namespace": namespace} if namespace else {}), **obj.get("metadata", {})}
        self.server.objects[resource, namespace, name] = {**obj, "metadata": meta}

    def stored(self, resource: str, name: str, namespace: str | None = NAMESPACE) -> dict[str, Any] | None:
        """The object as the server holds it now, or None."""
        try:
            obj = self.server.objects[resource, namespace, name]
        except KeyError:
            return None
        if obj.deleted:
            return None
        raw: dict[str, Any] = obj.raw
        return raw


class _ServerThread:
    """Runs the fake API server on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self.server: LabApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="fake kube-apiserver", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(SERVER_TIMEOUT):
            raise RuntimeError(f"the fake API server did not start in {SERVER_TIMEOUT:g} s: {self._failure!r}")
        if self._failure is not None:
            raise RuntimeError("the fake API server failed to start") from self._failure

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(SERVER_TIMEOUT)
        assert not self._thread.is_alive(), "the fake API server did not stop"
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = LabApiServer()
        # The built-in kinds of a recent cluster, for API discovery (/api/v1, /apis/apps/v1 ...).
        with warnings.catch_warnings():
            # kmock 0.8 reads its bundled file with a deprecated importlib call: not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            server.resources.load_bundled()
        async with server, kmock.Server(server, host="127.0.0.1") as http:
            self.server = server
            self.url = str(http.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()


@contextlib.contextmanager
def running_fake_cluster() -> Iterator[FakeCluster]:
    """A fake Kubernetes API server on 127.0.0.1 and an ApiClient aimed at it, for as long as the block runs."""
    thread = _ServerThread()
    thread.start()
    assert thread.server is not None
    configuration = k8s_client.Configuration()
    configuration.host = thread.url
    api_client = k8s_client.ApiClient(configuration)
    try:
        yield FakeCluster(server=thread.server, url=thread.url, api_client=api_client)
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
        thread.stop()


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    with running_fake_cluster() as fake:
        yield fake


# -- helpers -----------------------------------------------------------------------------------



def _free_base_port() -> int:
    """A base port whose viewer ports (the local target's gateway, origin and PoPs) are free now.

    The kube target's port-forwards for viewers listen on those ports (labkit.targets.kube.entry);
    other test processes on this machine (local labs, another run of this suite) must not hold them.
    """
    offsets = [60, 80, *range(100, 100 + cdn.MAX_POPS)]
    # Below the kernel's ephemeral range (32768-60999 here) and below every test lab's base port (13400 and up):
    # a block free now stays free, as no outgoing connection is given one of its ports meanwhile.
    # Each test process starts its search elsewhere (by its pid): two runs at once do not pick the same block.
    blocks = list(range(3000, 13000, 500))
    start = os.getpid() % len(blocks)
    for base in blocks[start:] + blocks[:start]:
        held = []
        try:
            for offset in offsets:
                held.append(socket.create_server(("127.0.0.1", base + offset)))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no free block of ports for the kube target's port-forwards")


KUBE_BASE_PORT = _free_base_port()
DEPLOYMENTS = "apps/v1/deployments"
STATEFULSETS = "apps/v1/statefulsets"
PODS = "v1/pods"
SERVICES = "v1/services"

# A component the monitoring layer does not have, allowed three replicas, for scale tests.
WEB = Component(
    name="web", layer="monitoring", binary="web", package="web", args=(),
    ports=(Port("http", offset=1, container=8080),), readiness=Readiness(path="/healthz"),
    max_replicas=3,
)  # fmt: skip


def make_target(
    fake: FakeCluster, lab_cfg: LabConfig, *, ready_timeout: float = 5.0, extra: bool = False
) -> KubeTarget:
    components = [*platform.components(), WEB] if extra else platform.components()
    return KubeTarget(
        lab_cfg.with_(ready_timeout=ready_timeout, base_port=KUBE_BASE_PORT), components, api_client=fake.api_client,
        overlay="kind",
    )


# Istio's kinds the mesh uses, by their plural (the CRDs `ottlab addons install istio-base istiod` puts on a cluster).
ISTIO_PLURALS = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules",
                 "PeerAuthentication": "peerauthentications", "AuthorizationPolicy": "authorizationpolicies"}


def serve_istio(fake: FakeCluster) -> FakeCluster:
    """The fake serves Istio's kinds, as a cluster with Istio installed does: what a lab with the mesh
    (STRICT, the default) needs of it; without them ``up`` is refused before anything is applied."""
    for kind, plural in ISTIO_PLURALS.items():
        info: Any = {"namespaced": True, "kind": kind, "singular": kind.lower(),
                     "verbs": {"get", "list", "patch", "delete", "create", "update"}}
        fake.server.resources[f"{kube_mesh.API_VERSIONS[kind]}/{plural}"] = info
    return fake


def settle_deployments(fake: FakeCluster) -> None:
    """Answer every read of a Deployment or a StatefulSet as if its rollout had completed (their controllers)."""

    def settler(resource: str) -> Any:
        def settled(request: kmock.Request) -> dict[str, Any]:
            stored = fake.stored(resource, str(request.name), request.namespace)
            if stored is None:
                raise kmock.KubernetesObjectNotFoundError()
            replicas = stored.get("spec", {}).get("replicas", 1)
            status = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas}
            return {**stored, "status": {**status, "availableReplicas": replicas, "observedGeneration": 1}}

        return settled

    fake.server[kmock.action.FETCH, kmock.resource("apps", "v1", "deployments")] << settler(DEPLOYMENTS)
    fake.server[kmock.action.FETCH, kmock.resource("apps", "v1", "statefulsets")] << settler(STATEFULSETS)


def deployment(name: str, *, replicas: int = 1, available: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"labels": {manifest.PART_OF_LABEL: manifest.PART_OF, manifest.NAME_LABEL: name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {manifest.NAME_LABEL: name}}},
        "status": {"replicas": replicas, "updatedReplicas": replicas, "availableReplicas": available},
    }


def pod(component: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {manifest.NAME_LABEL: component, manifest.PART_OF_LABEL: manifest.PART_OF}},
        "spec": {"containers": [{"name": component, "ports": [{"name": "http", "containerPort": 9090}]}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def header(request: kmock.Request, name: str) -> str:
    return next((str(v) for k, v in request.headers.items() if k.lower() == name.lower()), "")


# -- up --------------------------------------------------------------------------------------


def test_up_applies_each_object_server_side_as_labkit(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    target = make_target(fake_cluster, lab_cfg)

    statuses = target.up(["monitoring"])

    assert [(s.name, s.state, s.healthy, s.replicas) for s in statuses] == [
        ("prometheus", "running", True, 1),
        ("alertmanager", "running", True, 1),
        ("process-exporter", "running", True, 1),
        ("blackbox-exporter", "running", True, 1),
    ]
    rendered = manifest.of_layers(target.manifests(), ["monitoring"])   # what the lab declares (the mesh's too)
    # With the lab's alert timing (the committed files as they are for the real one; fast under CI=true).
    rendered = monitoring.with_alert_timing(rendered, alerting.timing_from())
    patches = fake_cluster.requests("PATCH")
    assert len(patches) == len(rendered)
    for request in patches:
        assert header(request, "Content-Type") == "application/apply-patch+yaml"
        assert request.params == {"fieldManager": "labkit", "force": "true"}
    # The body of each apply is the rendered object itself, sent to that object's own URL.
    assert sorted(json.dumps(r.data, sort_keys=True) for r in patches) == sorted(
        json.dumps(o, sort_keys=True) for o in rendered
    )
    assert {(r.data["kind"], r.name) for r in patches} == {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert patches[0].url.path == f"/api/v1/namespaces/{NAMESPACE}"
    kinds = [r.data["kind"] for r in patches]
    assert kinds.index("ConfigMap") < kinds.index("Deployment")
    assert fake_cluster.stored(DEPLOYMENTS, "prometheus") is not None
    # The apis layer's Secrets are not monitoring's business.
    assert fake_cluster.requests("POST") == []


def test_up_times_out_naming_the_deployment_that_never_becomes_available(
    fake_cluster: FakeCluster, lab_cfg: LabConfig
) -> None:
    stuck = pod("prometheus", ready=False)
    stuck["status"]["containerStatuses"] = [
        {"name": "prometheus", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    ]
    fake_cluster.put(PODS, "prometheus-x", stuck)
    target = make_target(fake_cluster, lab_cfg, ready_timeout=0.6)
    started = time.monotonic()

    with pytest.raises(TimeoutExpired) as caught:
        target.up(["monitoring"])

    assert time.monotonic() - started < 5
    assert caught.value.seconds == 0.6
    message = str(caught.value)
    assert "deployment/prometheus" in message and "deployment/alertmanager" in message
    assert "0/1 available" in message
    assert "pod/prometheus-x: ImagePullBackOff" in message


def test_up_refuses_an_unknown_layer_before_touching_the_cluster(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(UnknownComponentError, match="transcode"):
        target.up(["transcode"])
    assert fake_cluster.requests() == []


def test_an_overlay_that_does_not_exist_is_a_config_error(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    with pytest.raises(ConfigError, match="kind, minikube"):
        KubeTarget(lab_cfg, platform.components(), api_client=fake_cluster.api_client, overlay="k3s")


def test_down_deletes_what_up_applied_and_purge_the_namespace(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    target = make_target(fake_cluster, lab_cfg)
    target.up(["monitoring"])
    applied = {r.url.path for r in fake_cluster.requests("PATCH")}

    target.down(purge=True)

    deleted = fake_cluster.requests("DELETE")
    # Each object is deleted at the URL it was applied to, the namespace included.
    assert sorted(r.url.path for r in deleted) == sorted(applied)
    # The namespace goes last, after everything in it.
    assert deleted[-1].url.path == f"/api/v1/namespaces/{NAMESPACE}"
    lists = [r for r in fake_cluster.requests("GET") if "labelSelector" in r.params]
    assert lists and all(r.params["labelSelector"] == "app.kubernetes.io/part-of=ottlab" for r in lists)
    assert fake_cluster.stored(DEPLOYMENTS, "prometheus") is None


# -- the apis layer's Secrets ----------------------------------------------------------------

SECRETS = "v1/secrets"
# The Secrets the apis layer's pods mount (license signs playback URLs with the CDN's secret).
APIS_SECRETS = ("ott-signing-key", "ott-service-token", "ott-url-signing")


def apis_target(fake: FakeCluster, lab_cfg: LabConfig) -> KubeTarget:
    """A target that knows the apis layer, whether or not labkit.platform registers it yet."""
    components = [*platform.components()]
    components += [c for c in apis.LAYER.components if c.name not in {d.name for d in components}]
    return KubeTarget(lab_cfg.with_(ready_timeout=5.0, base_port=KUBE_BASE_PORT), components,
                      api_client=fake.api_client, overlay="kind")


def secret_data(fake: FakeCluster, name: str) -> dict[str, bytes]:
    stored = fake.stored(SECRETS, name)
    assert stored is not None, f"no secret/{name}"
    return {key: base64.b64decode(value) for key, value in stored["data"].items()}


def test_up_apis_creates_the_lab_secrets_before_the_pods_that_mount_them(
    fake_cluster: FakeCluster, lab_cfg: LabConfig, tmp_path: Path
) -> None:
    settle_deployments(serve_istio(fake_cluster))   # Istio installed: the lab's mesh (on by default) needs it
    target = apis_target(fake_cluster, lab_cfg)

    statuses = target.up(["apis"])

    assert all(s.healthy for s in statuses) and {s.name for s in statuses} == {c.name for c in apis.LAYER.components}
    posts = fake_cluster.requests("POST")
    assert [r.url.path for r in posts] == [f"/api/v1/namespaces/{NAMESPACE}/secrets"] * len(APIS_SECRETS)
    assert {r.data["metadata"]["name"] for r in posts} == set(APIS_SECRETS)
    # Created after the namespace, before any Deployment (a pod must find its Secret volumes).
    order = fake_cluster.requests()
    first_deployment = next(i for i, r in enumerate(order) if r.method == "PATCH" and r.data["kind"] == "Deployment")
    namespace = next(i for i, r in enumerate(order) if r.url.path == f"/api/v1/namespaces/{NAMESPACE}")
    assert all(namespace < order.index(p) < first_deployment for p in posts)
    # Nothing but the rendered objects of the layer went through apply: no Secret in k8s/.
    assert "Secret" not in {r.data["kind"] for r in fake_cluster.requests("PATCH")}

    for name in ("ott-signing-key", "ott-service-token"):
        labels = fake_cluster.stored(SECRETS, name)["metadata"]["labels"]  # type: ignore[index]
        assert labels[manifest.PART_OF_LABEL] == manifest.PART_OF and labels[manifest.LAYER_LABEL] == "apis"
    # auth loads the PEM as its own key, as if it had written it itself.
    pem = secret_data(fake_cluster, "ott-signing-key")[tokens.KEY_FILE]
    (tmp_path / tokens.KEY_FILE).write_bytes(pem)
    key = tokens.SigningKey.load_or_create(tmp_path)
    assert key.private_key.curve.name == "secp256r1" and pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    token = secret_data(fake_cluster, "ott-service-token")["token"].decode()
    assert len(token) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", token)


def test_up_apis_never_overwrites_existing_secrets(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(serve_istio(fake_cluster))   # Istio installed: the lab's mesh (on by default) needs it
    labels = {manifest.PART_OF_LABEL: manifest.PART_OF, manifest.LAYER_LABEL: "apis"}
    mine = {
        "ott-signing-key": {tokens.KEY_FILE: b"-----BEGIN PRIVATE KEY-----\nkept\n-----END PRIVATE KEY-----\n"},
        "ott-service-token": {"token": b"the-token-the-services-already-use"},
        "ott-url-signing": {"secret": b"kept", "secure-link.conf": b'secure_link_md5 "kept";'},
    }
    for name, data in mine.items():
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        fake_cluster.put(SECRETS, name, {"apiVersion": "v1", "kind": "Secret", "metadata": {"labels": labels},
                                         "data": encoded})  # fmt: skip
    target = apis_target(fake_cluster, lab_cfg)

    target.up(["apis"])
    target.up(["apis"])  # and again: a second `up` changes nothing either

    assert fake_cluster.requests("POST") == []
    assert not [r for r in fake_cluster.requests() if "/secrets/" in r.url.path and r.method != "GET"]
    for name, data in mine.items():
        assert secret_data(fake_cluster, name) == data


def test_down_keeps_the_lab_keys_and_purge_deletes_them(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(serve_istio(fake_cluster))   # Istio installed: the lab's mesh (on by default) needs it
    target = apis_target(fake_cluster, lab_cfg)
    target.up(["apis"])
    first = secret_data(fake_cluster, "ott-service-token")
    assert target.service_token() == first["token"].decode()

    # Like the local target's lab directory, keys survive `down`: tokens stay valid across restarts.
    target.down()
    assert fake_cluster.stored(SECRETS, "ott-signing-key") is not None
    target.up(["apis"])
    assert secret_data(fake_cluster, "ott-service-token") == first

    target.down(purge=True)
    assert fake_cluster.stored(SECRETS, "ott-signing-key") is None
    assert fake_cluster.stored(SECRETS, "ott-service-token") is None
    deleted = [r.url.path for r in fake_cluster.requests("DELETE")]
    secret_paths = sorted(f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}" for name in APIS_SECRETS)
    assert sorted(p for p in deleted if "/secrets/" in p) == secret_paths
    # After the Deployments whose pods mount them.
    last_deployment = max(i for i, p in enumerate(deleted) if "/deployments/" in p)
    assert min(i for i, p in enumerate(deleted) if "/secrets/" in p) > last_deployment


# -- the cdn layer's Secret ------------------------------------------------------------------

URL_SIGNING = "ott-url-signing"


def test_up_cdn_creates_the_url_signing_secret_before_the_edges(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    target = apis_target(fake_cluster, lab_cfg)

    target.up(["cdn"])

    # Only the cdn layer's Secret: the apis layer's are not the edges' business.
    posts = fake_cluster.requests("POST")
    assert [(r.url.path, r.data["metadata"]["name"]) for r in posts] == [
        (f"/api/v1/namespaces/{NAMESPACE}/secrets", URL_SIGNING)
    ]
    order = fake_cluster.requests()
    edge_deployment = next(
        i for i, r in enumerate(order) if r.method == "PATCH" and r.data["kind"] == "StatefulSet" and r.name == "edge"
    )
    namespace = next(i for i, r in enumerate(order) if r.url.path == f"/api/v1/namespaces/{NAMESPACE}")
    assert namespace < order.index(posts[0]) < edge_deployment
    assert "Secret" not in {r.data["kind"] for r in fake_cluster.requests("PATCH")}

    labels = fake_cluster.stored(SECRETS, URL_SIGNING)["metadata"]["labels"]  # type: ignore[index]
    assert labels[manifest.PART_OF_LABEL] == manifest.PART_OF and labels[manifest.LAYER_LABEL] == "cdn"
    data = secret_data(fake_cluster, URL_SIGNING)
    assert set(data) == {"secure-link.conf", "secret"}
    raw = data["secret"].decode()
    assert len(raw) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", raw)
    # The file the edges include is the directive for that very secret, the one license will sign with.
    assert data["secure-link.conf"].decode() == cdn.secure_link_directive(raw)
    assert PurePosixPath(cdn.KUBE_SECRET_INCLUDE).name == "secure-link.conf"
    # A fresh secret per lab.
    assert secrets.url_signing()["secret"] != data["secret"]


def test_up_cdn_never_overwrites_the_url_signing_secret(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    labels = {manifest.PART_OF_LABEL: manifest.PART_OF, manifest.LAYER_LABEL: "cdn"}
    mine = {"secure-link.conf": cdn.secure_link_directive("kept").encode(), "secret": b"kept"}
    encoded = {k: base64.b64encode(v).decode() for k, v in mine.items()}
    fake_cluster.put(SECRETS, URL_SIGNING, {"apiVersion": "v1", "kind": "Secret", "metadata": {"labels": labels},
                                            "data": encoded})  # fmt: skip
    target = apis_target(fake_cluster, lab_cfg)

    target.up(["cdn"])
    target.up(["cdn"])

    assert fake_cluster.requests("POST") == []
    assert not [r for r in fake_cluster.requests() if "/secrets/" in r.url.path and r.method != "GET"]
    assert secret_data(fake_cluster, URL_SIGNING) == mine


def test_down_keeps_the_url_signing_secret_and_purge_deletes_it(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    target = apis_target(fake_cluster, lab_cfg)
    target.up(["cdn"])
    first = secret_data(fake_cluster, URL_SIGNING)

    target.down()
    assert fake_cluster.stored(STATEFULSETS, "edge") is None
    target.up(["cdn"])
    assert secret_data(fake_cluster, URL_SIGNING) == first

    target.down(purge=True)
    assert fake_cluster.stored(SECRETS, URL_SIGNING) is None
    deleted = [r.url.path for r in fake_cluster.requests("DELETE")]
    assert [p for p in deleted if "/secrets/" in p] == [f"/api/v1/namespaces/{NAMESPACE}/secrets/{URL_SIGNING}"]
    last_deployment = max(i for i, p in enumerate(deleted) if "/statefulsets/" in p)
    assert deleted.index(f"/api/v1/namespaces/{NAMESPACE}/secrets/{URL_SIGNING}") > last_deployment


def test_the_signing_secret_is_read_from_the_secret_up_created(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(fake_cluster)
    target = apis_target(fake_cluster, lab_cfg)
    with pytest.raises(NotRunningError, match=f"no Secret {URL_SIGNING}"):
        target.signing_secret()

    target.up(["cdn"])

    # The raw secret license signs with: a notebook's own signed URL then matches the PoPs' check.
    assert target.signing_secret() == secret_data(fake_cluster, URL_SIGNING)["secret"].decode()
    assert target.describe() == f"kube target: namespace {NAMESPACE} at {fake_cluster.url}"


@pytest.mark.parametrize(("call", "says"), [
    (lambda t: t.media_root(), "cannot reach the origin's media root from this machine"),
])
def test_what_a_cluster_keeps_in_its_pods_is_a_missing_capability(
    fake_cluster: FakeCluster, lab_cfg: LabConfig, call: Any, says: str
) -> None:
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(MissingCapabilityError, match=f"the kube target {says}") as caught:
        call(target)
    assert caught.value.hint and caught.value.target == "kube"
    assert fake_cluster.requests() == []   # decided without asking the cluster


def test_transcode_sends_the_files_bytes_through_the_transcoders_endpoint_with_the_clusters_token(
    fake_cluster: FakeCluster, lab_cfg: LabConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pod cannot see this machine's files: the source travels as an upload. Offline, the
    # port-forward is replaced by a fake transcoder at the URL endpoint() would give.
    token = "the-token-this-cluster-holds"
    fake_cluster.put(SECRETS, secrets.SERVICE_TOKEN, {"apiVersion": "v1", "kind": "Secret", "metadata": {},
                                                      "data": {secrets.SERVICE_TOKEN_KEY: base64.b64encode(
                                                          token.encode()).decode()}})
    target = make_target(fake_cluster, lab_cfg)
    reached: list[str] = []

    def endpoint(component: str, port: str = "http") -> str:
        reached.append(component)
        return "http://127.0.0.1:1"

    monkeypatch.setattr(target, "endpoint", endpoint)
    fake = wire(FakeTranscoder(token=token), monkeypatch)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))

    job = transcoding.transcode(target, clip, "lab-clock", progress=False)

    assert job.state == "published" and reached == ["transcoder"]
    assert list(fake.uploads.values()) == [clip.read_bytes()]
    assert {r.headers["x-service-token"] for r in fake.requests} == {token}


class SecretStore:
    """Stands in for the API server's Secrets: get and create, nothing else."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}

    def get(self, rtype: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.stored.get(name)

    def create(self, rtype: Any, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        self.stored[obj["metadata"]["name"]] = obj
        return obj


def test_ensure_creates_only_the_secrets_of_the_given_layers() -> None:
    store = SecretStore()
    assert secrets.ensure(cast(Cluster, store), NAMESPACE, ["monitoring", "media"]) == []
    assert secrets.ensure(cast(Cluster, store), NAMESPACE, ["cdn"]) == [URL_SIGNING]
    assert secrets.ensure(cast(Cluster, store), NAMESPACE, ["apis", "cdn"]) == [
        s for s in APIS_SECRETS if s != URL_SIGNING]
    assert secrets.ensure(cast(Cluster, store), NAMESPACE) == []
    assert set(store.stored) == set(secrets.NAMES)


class RacingCluster:
    """Stands in for the API server when another `up` creates each Secret between our GET and POST."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.stored: dict[str, dict[str, Any]] = {}

    def get(self, rtype: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.stored.get(name)

    def create(self, rtype: Any, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if self.refuse:
            raise KubeError("POST /api/v1/namespaces/ottlab/secrets failed with HTTP 403: forbidden")
        self.stored[obj["metadata"]["name"]] = {"theirs": True}
        raise KubeError("POST /api/v1/namespaces/ottlab/secrets failed with HTTP 409: already exists")


def test_ensure_keeps_the_secret_another_up_created_meanwhile() -> None:
    racing = RacingCluster()
    assert secrets.ensure(cast(Cluster, racing), NAMESPACE) == []
    assert racing.stored == {name: {"theirs": True} for name in secrets.NAMES}


def test_ensure_reports_a_refused_create() -> None:
    with pytest.raises(KubeError, match="403"):
        secrets.ensure(cast(Cluster, RacingCluster(refuse=True)), NAMESPACE)


# -- status, scale, restart, kill, logs -----------------------------------------------------


def test_status_reads_each_component_from_its_deployment(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    fake_cluster.put(DEPLOYMENTS, "prometheus", deployment("prometheus", available=1))
    fake_cluster.put(DEPLOYMENTS, "alertmanager", deployment("alertmanager", available=0))
    target = make_target(fake_cluster, lab_cfg, extra=True)

    statuses = {s.name: s for s in target.status()}

    assert (statuses["prometheus"].state, statuses["prometheus"].healthy, statuses["prometheus"].replicas) == (
        "running", True, 1,
    )  # fmt: skip
    assert (statuses["alertmanager"].state, statuses["alertmanager"].healthy) == ("starting", False)
    assert "0/1 available" in statuses["alertmanager"].detail
    assert (statuses["web"].state, statuses["web"].healthy) == ("absent", False)
    assert statuses["web"].layer == "monitoring"
    # One list of each workload kind (the edge's PoPs are a StatefulSet), by the lab's label.
    listings = fake_cluster.requests("GET")
    assert [r.url.path for r in listings] == [f"/apis/apps/v1/namespaces/{NAMESPACE}/{kind}"
                                              for kind in ("deployments", "statefulsets")]
    assert all(r.params["labelSelector"] == "app.kubernetes.io/part-of=ottlab" for r in listings)


def test_a_sidecar_reports_the_deployment_it_runs_in_and_cannot_be_scaled_alone(
    fake_cluster: FakeCluster, lab_cfg: LabConfig
) -> None:
    fake_cluster.put(DEPLOYMENTS, "edge", deployment("edge", available=2, replicas=2))
    target = make_target(fake_cluster, lab_cfg)

    statuses = {s.name: s for s in target.status()}

    assert (statuses["edge-exporter"].state, statuses["edge-exporter"].replicas) == ("running", 2)
    for call in (lambda: target.scale("edge-exporter", 3), lambda: target.restart("edge-exporter"),
                 lambda: target.endpoint("edge-exporter")):
        with pytest.raises(ConfigError, match="sidecar"):
            call()
    assert not fake_cluster.requests("PATCH")


def test_stop_scales_to_zero_and_start_brings_back_the_replicas_it_had(
    fake_cluster: FakeCluster, lab_cfg: LabConfig
) -> None:
    fake_cluster.put(DEPLOYMENTS, "web", deployment("web", replicas=2, available=2))
    settle_deployments(fake_cluster)
    target = make_target(fake_cluster, lab_cfg, extra=True)

    target.stop("web")

    stored = fake_cluster.stored(DEPLOYMENTS, "web")
    assert stored is not None and stored["spec"]["replicas"] == 0
    assert stored["metadata"]["annotations"]["ottlab.io/stopped-replicas"] == "2"
    status = target.start("web")
    assert fake_cluster.stored(DEPLOYMENTS, "web")["spec"]["replicas"] == 2  # type: ignore[index]
    assert status.healthy
    with pytest.raises(ConfigError, match="sidecar"):
        target.stop("edge-exporter")


def test_scale_patches_the_scale_subresource_and_waits(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    fake_cluster.put(DEPLOYMENTS, "web", deployment("web", available=1))
    settle_deployments(fake_cluster)
    target = make_target(fake_cluster, lab_cfg, extra=True)

    status = target.scale("web", 3)

    (patch,) = fake_cluster.requests("PATCH")
    assert patch.url.path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web/scale"
    assert header(patch, "Content-Type") == "application/merge-patch+json"
    assert patch.data == {"spec": {"replicas": 3}}
    assert (status.replicas, status.healthy) == (3, True)
    assert fake_cluster.stored(DEPLOYMENTS, "web")["spec"]["replicas"] == 3  # type: ignore[index]


@pytest.mark.parametrize("replicas", [0, 4, -1])
def test_scale_out_of_the_declared_bounds_is_refused(
    fake_cluster: FakeCluster, lab_cfg: LabConfig, replicas: int
) -> None:
    target = make_target(fake_cluster, lab_cfg, extra=True)
    with pytest.raises(ConfigError, match="1 to 3 replicas"):
        target.scale("web", replicas)
    assert fake_cluster.requests() == []


def test_scale_of_a_component_that_is_not_declared(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(UnknownComponentError, match="grafana"):
        target.scale("grafana", 1)


def test_restart_stamps_the_pod_template_and_waits(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    fake_cluster.put(DEPLOYMENTS, "prometheus", deployment("prometheus", available=1))
    settle_deployments(fake_cluster)
    target = make_target(fake_cluster, lab_cfg)

    status = target.restart("prometheus")

    (patch,) = fake_cluster.requests("PATCH")
    assert patch.url.path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/prometheus"
    assert header(patch, "Content-Type") == "application/strategic-merge-patch+json"
    stamp = patch.data["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
    assert abs((datetime.now().astimezone() - datetime.fromisoformat(stamp)).total_seconds()) < 60
    assert status.healthy
    assert len(fake_cluster.requests("GET")) >= 1  # the rollout was read back


def test_restart_of_a_missing_deployment(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(NotRunningError, match="deployment/prometheus"):
        target.restart("prometheus")


def test_kill_deletes_one_pod_of_the_component_at_once(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    fake_cluster.put(PODS, "prometheus-b", pod("prometheus"))
    fake_cluster.put(PODS, "prometheus-a", pod("prometheus"))
    fake_cluster.put(PODS, "alertmanager-a", pod("alertmanager"))
    target = make_target(fake_cluster, lab_cfg)

    target.kill("prometheus")

    (delete,) = fake_cluster.requests("DELETE")
    assert delete.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/prometheus-a"
    assert delete.params["gracePeriodSeconds"] == "0"
    assert delete.data["gracePeriodSeconds"] == 0
    (listing,) = fake_cluster.requests("GET")
    assert listing.params["labelSelector"] == "app.kubernetes.io/name=prometheus"
    assert fake_cluster.stored(PODS, "prometheus-b") is not None
    assert fake_cluster.stored(PODS, "alertmanager-a") is not None


def test_kill_without_a_pod(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(NotRunningError, match=r"no (live )?pod"):
        target.kill("alertmanager")
    assert fake_cluster.requests("DELETE") == []


def test_logs_tail_each_pod_of_the_component(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    fake_cluster.put(PODS, "prometheus-a", pod("prometheus"))
    fake_cluster.put(PODS, "prometheus-b", pod("prometheus"))
    log = kmock.resource("", "v1", "pods"), kmock.subresource("log")
    fake_cluster.server[(*log, kmock.name("prometheus-a"))] << b"ts=1 msg=Starting\nts=2 msg=Ready\n"
    fake_cluster.server[(*log, kmock.name("prometheus-b"))] << b"ts=3 msg=Ready\n"
    target = make_target(fake_cluster, lab_cfg)

    text = target.logs("prometheus", lines=2)

    assert (
        text
        == "==> pod/prometheus-a <==\nts=1 msg=Starting\nts=2 msg=Ready\n==> pod/prometheus-b <==\nts=3 msg=Ready\n"
    )
    reads = [r for r in fake_cluster.requests("GET") if r.subresource == "log"]
    assert [r.params for r in reads] == [{"tailLines": "2", "container": "prometheus"}] * 2


# -- endpoint (port-forward) ----------------------------------------------------------------


def test_endpoint_forwards_a_local_port_to_a_ready_pod_of_the_service(
    fake_cluster: FakeCluster, lab_cfg: LabConfig
) -> None:
    service = {
        "spec": {
            "selector": {manifest.NAME_LABEL: "prometheus"},
            "ports": [{"name": "http", "port": 9090, "targetPort": "http"}],
        }
    }
    fake_cluster.put(SERVICES, "prometheus", service)
    fake_cluster.put(PODS, "prometheus-a", pod("prometheus", ready=False))
    fake_cluster.put(PODS, "prometheus-b", pod("prometheus"))
    target = make_target(fake_cluster, lab_cfg)
    try:
        url = target.endpoint("prometheus")
        assert url.startswith("http://127.0.0.1:")
        assert target.endpoint("prometheus") == url  # the open forward is reused

        answer = httpx.get(f"{url}/-/ready", timeout=10)

        assert (answer.status_code, answer.content) == (200, POD_REPLY)
        (forward,) = [r for r in fake_cluster.requests("GET") if r.subresource == "portforward"]
        assert forward.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/prometheus-b/portforward"
        assert forward.params["ports"] == "9090"
        prometheus = next(s for s in target.status() if s.name == "prometheus")
        assert prometheus.urls == {"http": url}
    finally:
        target.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/-/ready", timeout=2)


def test_endpoint_needs_a_ready_pod(fake_cluster: FakeCluster, lab_cfg: LabConfig) -> None:
    service = {"spec": {"selector": {manifest.NAME_LABEL: "prometheus"}, "ports": [{"name": "http", "port": 9090}]}}
    fake_cluster.put(SERVICES, "prometheus", service)
    fake_cluster.put(PODS, "prometheus-a", pod("prometheus", ready=False))
    target = make_target(fake_cluster, lab_cfg)
    with pytest.raises(NotRunningError, match="no ready pod behind service/prometheus"):
        target.endpoint("prometheus")
    with pytest.raises(ConfigError, match="no port named 'grpc'"):
        target.endpoint("prometheus", "grpc")


def test_a_forward_whose_tunnel_fails_closes_the_connection() -> None:
    def no_tunnel() -> socket.socket:
        raise OSError("the pod went away")

    with PortForward(no_tunnel, name="gone") as forward:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as conn:
            assert conn.recv(1) == b""  # closed without a byte
        assert "the pod went away" in forward.last_error
    assert not forward.alive


# -- no cluster ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "lab", "cluster": {"server": server}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
                "users": [{"name": "lab", "user": {"token": "not-a-secret"}}],
            }
        )
    )
    return path


def test_a_kubeconfig_pointing_at_a_closed_port_is_an_unreachable_cluster(
    tmp_path: Path, lab_cfg: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")))
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{port}") as caught:
        KubeTarget(lab_cfg, platform.components())
    assert time.monotonic() - started < 10
    assert "KUBECONFIG=" in str(caught.value)
    assert caught.value.retryable


def test_no_kubeconfig_is_an_unreachable_cluster(
    tmp_path: Path, lab_cfg: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config there
    with pytest.raises(ClusterUnreachableError, match="KUBECONFIG is not set"):
        KubeTarget(lab_cfg, platform.components())


def test_a_kubeconfig_that_does_not_exist_is_an_unreachable_cluster(
    tmp_path: Path, lab_cfg: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ClusterUnreachableError, match="cannot load the cluster configuration"):
        KubeTarget(lab_cfg, platform.components())


def test_without_the_kubernetes_package_the_kube_target_says_what_to_install() -> None:
    code = "import sys; sys.modules['kubernetes'] = None; import labkit.targets.kube.target"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False
    )
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and "pip install -e .[kube]" in proc.stderr


# -- a real cluster --------------------------------------------------------------------------


@pytest.mark.kube
@pytest.mark.timeout(600)
def test_monitoring_layer_on_a_real_cluster(lab_cfg: LabConfig) -> None:
    target = KubeTarget(lab_cfg.with_(ready_timeout=300), platform.components())
    try:
        statuses = target.up(["monitoring"])
        assert [(s.name, s.healthy) for s in statuses] == [("prometheus", True), ("alertmanager", True)]
        assert all(s.healthy for s in target.status() if s.layer == "monitoring")
        answer = httpx.get(f"{target.endpoint('prometheus')}/-/ready", timeout=10)
        assert answer.status_code == 200
    finally:
        target.down()
        target.close()
