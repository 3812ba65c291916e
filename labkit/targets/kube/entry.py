"""The lab's public entry on Kubernetes: the URLs a viewer gets, and how they reach the cluster.

A viewer (a notebook, the simulator, the browser player) gets three kinds of URL from the lab:
the gateway's (key URIs, the player page), the origin's (master playlists the transcoder lists in
the catalog) and one per PoP (license's signed playback URLs). On the cluster each of them is a
Service, ``gateway``, ``origin`` and ``edge-0`` ... ``edge-3`` (one per pod of the edge
StatefulSet), and each Service is a NodePort: ``30000 +`` the component's local port offset, the
lab's **public entry**, declared once in the manifests (``k8s/base/cdn/pops.yaml``).

Two ways to reach them, written for the pods in the ConfigMap :data:`PUBLIC_CONFIG`, which
license (``OTT_PUBLIC_URL``, its edges file) and the transcoder (``OTT_ORIGIN_URL``) read:

* ``nodeport``: ``http://<host>:<nodePort>``, where ``<host>`` is the overlay's
  ``ottlab.io/public-host`` annotation (kind and k3d: ``127.0.0.1``, their cluster configs map the
  node ports to this machine) or ``$OTTLAB_PUBLIC_HOST`` (minikube: ``$(minikube ip)``);
* ``forwards``: ``http://127.0.0.1:<local port>``, the local target's own URLs, served by
  port-forwards that labkit holds in the process using the lab (a notebook's kernel). The
  fallback when no host is known, or when the node ports do not answer.

Example::

    entry = Entry.nodeport("127.0.0.1", {"gateway": 30000, "origin": 30060, "edge-0": 30100})
    entry.url("edge-0")                # http://127.0.0.1:30100
    public_config(entry, pops=2)       # the ConfigMap ott-public for a lab with two PoPs
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from labkit.platform.component import Component
from labkit.platform.layers import cdn
from labkit.targets.kube import manifest
from labkit.targets.kube.manifest import KubeObject

PUBLIC_CONFIG = "ott-public"
GATEWAY_KEY = "gateway-url"
ORIGIN_KEY = "origin-url"
EDGES_KEY = "edges.json"
MODE_KEY = "mode"
# A pod-template annotation of the ConfigMap's readers: its content's hash, so a change rolls them.
CONFIG_HASH_ANNOTATION = "ottlab.io/public-config"
HOST_ANNOTATION = "ottlab.io/public-host"
HOST_ENV = "OTTLAB_PUBLIC_HOST"
ENTRY_ENV = "OTTLAB_KUBE_ENTRY"
MODES = ("nodeport", "forwards")
# The Services a viewer's URLs name, besides the PoPs'.
GATEWAY = "gateway"
ORIGIN = "origin"


@dataclass(frozen=True)
class Entry:
    """How viewers reach the lab: ``mode`` ``nodeport`` (``host`` and each Service's node port) or ``forwards``."""

    mode: str
    host: str = ""
    node_ports: Mapping[str, int] = field(default_factory=dict)
    # forwards: each Service's local URL (the local target's port for its component and replica).
    local_urls: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def nodeport(cls, host: str, node_ports: Mapping[str, int]) -> Entry:
        return cls("nodeport", host=host, node_ports=dict(node_ports))

    @classmethod
    def forwards(cls, cfg: LabConfig, components: Sequence[Component]) -> Entry:
        return cls("forwards", local_urls=local_urls(cfg, components))

    def url(self, service: str) -> str:
        """The URL a viewer uses for ``service`` (``gateway``, ``origin``, ``edge-1`` ...)."""
        if self.mode == "nodeport":
            if service not in self.node_ports:
                raise ConfigError(f"service/{service} is not part of the lab's public entry (no node port)",
                                  hint=f"the entry's Services: {', '.join(sorted(self.node_ports))}")
            return f"http://{self.host}:{self.node_ports[service]}"
        if service not in self.local_urls:
            raise ConfigError(f"service/{service} has no local port for a port-forward",
                              hint=f"the forwarded Services: {', '.join(sorted(self.local_urls))}")
        return self.local_urls[service]


def pop_services(count: int) -> list[str]:
    """The Services of the first ``count`` PoPs: ``edge-0`` ... (the pods of the edge StatefulSet)."""
    return [cdn.pop_id(i) for i in range(count)]


def local_urls(cfg: LabConfig, components: Sequence[Component]) -> dict[str, str]:
    """Each viewer-facing Service's URL on this machine: the local target's URL of the same component and replica."""
    by_name = {c.name: c for c in components}
    urls = {name: by_name[name].url(cfg) for name in (GATEWAY, ORIGIN) if name in by_name}
    edge = by_name.get(cdn.EDGE.name, cdn.EDGE)
    urls.update({cdn.pop_id(i): edge.url(cfg, "http", i) for i in range(edge.max_replicas)})
    return urls


def node_ports(objects: Iterable[KubeObject]) -> dict[str, int]:
    """The node port of each rendered Service's ``http`` port, by Service name (NodePort Services only)."""
    found = {}
    for obj in objects:
        spec = obj.get("spec") or {}
        if obj.get("kind") != "Service" or spec.get("type") != "NodePort":
            continue
        for port in spec.get("ports") or []:
            if port.get("name") == "http" and port.get("nodePort"):
                found[manifest.name(obj)] = int(port["nodePort"])
    return found


def declared_host(objects: Iterable[KubeObject], environ: Mapping[str, str] | None = None) -> str:
    """``$OTTLAB_PUBLIC_HOST``, else the overlay's ``ottlab.io/public-host`` annotation, else ``""`` (none known)."""
    env = os.environ if environ is None else environ
    chosen = env.get(HOST_ENV, "").strip()
    if chosen:
        return chosen
    for obj in objects:
        host = ((obj.get("metadata") or {}).get("annotations") or {}).get(HOST_ANNOTATION)
        if host:
            return str(host)
    return ""


def chosen(objects: Sequence[KubeObject], cfg: LabConfig, components: Sequence[Component],
           environ: Mapping[str, str] | None = None) -> Entry:
    """The entry a lab starts with: ``$OTTLAB_KUBE_ENTRY`` when set, else the node ports when a host is known."""
    env = os.environ if environ is None else environ
    wanted = env.get(ENTRY_ENV, "").strip()
    if wanted and wanted not in MODES:
        raise ConfigError(f"{ENTRY_ENV}={wanted!r} is not a way to reach the lab",
                          hint=f"set it to one of: {', '.join(MODES)} (or unset it: node ports when the overlay "
                               f"or {HOST_ENV} names a host, else port-forwards)")
    host = declared_host(objects, env)
    ports = node_ports(objects)
    if wanted == "forwards" or (not wanted and not host) or not ports:
        return Entry.forwards(cfg, components)
    if not host:
        raise ConfigError(f"{ENTRY_ENV}=nodeport, but no host is known for the cluster's node ports",
                          hint=f"set {HOST_ENV} to the address of a node (minikube: `minikube ip`)")
    return Entry.nodeport(host, ports)


def public_config(entry: Entry, pops: int) -> KubeObject:
    """The ConfigMap :data:`PUBLIC_CONFIG`: the gateway's, the origin's and the first ``pops`` PoPs' public URLs."""
    edges = {pop: entry.url(pop) for pop in pop_services(pops)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": PUBLIC_CONFIG,
            "labels": {manifest.PART_OF_LABEL: manifest.PART_OF},
        },
        "data": {
            MODE_KEY: entry.mode,
            GATEWAY_KEY: entry.url(GATEWAY),
            ORIGIN_KEY: entry.url(ORIGIN),
            EDGES_KEY: json.dumps(edges, sort_keys=True) + "\n",
        },
    }


def config_hash(config: Mapping[str, object], keys: Collection[str] | None = None) -> str:
    """A short hash of a ConfigMap's data (only ``keys`` when given), for :data:`CONFIG_HASH_ANNOTATION`.

    A reader is stamped with the hash of the keys it reads: a change of the PoPs rolls license, not
    the transcoder (whose rollout would fail the jobs it runs).
    """
    data = config.get("data") or {}
    assert isinstance(data, Mapping)
    chosen = {k: v for k, v in data.items() if keys is None or k in keys}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def keys_read(obj: KubeObject) -> set[str]:
    """The keys of :data:`PUBLIC_CONFIG` a workload's pods read: by environment references and by volume items."""
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    keys = {str(env["valueFrom"]["configMapKeyRef"]["key"])
            for container in spec.get("containers") or [] for env in container.get("env") or []
            if (env.get("valueFrom") or {}).get("configMapKeyRef", {}).get("name") == PUBLIC_CONFIG}
    for volume in spec.get("volumes") or []:
        if (volume.get("configMap") or {}).get("name") == PUBLIC_CONFIG:
            keys |= {str(item["key"]) for item in volume["configMap"].get("items") or []}
    return keys


def readers(objects: Iterable[KubeObject]) -> list[str]:
    """The Deployments whose pods read :data:`PUBLIC_CONFIG` (an env reference or a volume)."""
    names = []
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        if f'"{PUBLIC_CONFIG}"' in json.dumps(obj.get("spec", {}).get("template", {}).get("spec", {})):
            names.append(manifest.name(obj))
    return names


def stamped(obj: KubeObject, digest: str) -> KubeObject:
    """``obj`` (a Deployment reading the ConfigMap) with the config's hash on its pod template."""
    template = dict(obj["spec"]["template"])
    meta = dict(template.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), CONFIG_HASH_ANNOTATION: digest}
    template["metadata"] = meta
    return {**obj, "spec": {**obj["spec"], "template": template}}


def from_config(config: Mapping[str, object], cfg: LabConfig, components: Sequence[Component],
                objects: Sequence[KubeObject]) -> Entry:
    """The entry a stored :data:`PUBLIC_CONFIG` describes (its ``mode`` key)."""
    data = config.get("data") or {}
    mode = str(data.get(MODE_KEY, "")) if isinstance(data, Mapping) else ""
    if mode == "nodeport":
        host = str(data.get(GATEWAY_KEY, "")).removeprefix("http://").rsplit(":", 1)[0] if isinstance(
            data, Mapping) else ""
        return Entry.nodeport(host, node_ports(objects))
    return Entry.forwards(cfg, components)
