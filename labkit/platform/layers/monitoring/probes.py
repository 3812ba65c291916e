"""Synthetic monitoring: what the blackbox exporter fetches, through which PoP, as job ``blackbox``.

Every PoP is asked, as a viewer's player would, for the canary title's signed playlist and one
signed segment (:mod:`labkit.platform.layers.media.canary`); the key path (gateway, then license)
is asked for a key without a playback authorisation and must refuse it with 401. Each probe is a
target of job :data:`JOB`, labelled ``pop`` (the PoP's id, or ``gateway`` for the key path) and
``probe`` (``playlist``, ``segment``, ``key``); ``probe_success`` is 1 when it answered as it should.

The probe modules (status, body checks, timeouts) are in ``k8s/base/monitoring/blackbox.yml``,
one file for both targets.

The signed URLs carry a signature that expires in 2100: the probe is about the PoP, not about
the expiry of a viewer's URL. They are made with the lab's URL-signing secret: locally
(:func:`labkit.platform.credentials.signing_secret`) when the monitoring configs are written; on
Kubernetes by the kube target at ``up`` (and ``scale edge``), from the lab's Secret, into the
ConfigMap :data:`KUBE_TARGETS` that Prometheus reads with ``file_sd_configs`` (:func:`kube_targets`:
the same probes through each PoP's own Service).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labkit.core.config import LabConfig, repo_root
from labkit.platform.component import Component, Port, Readiness
from labkit.platform.layers import cdn
from labkit.platform.layers.apis import GATEWAY
from labkit.platform.layers.media import canary
from ott import signing

JOB = "blackbox"
# 2100-01-01T00:00:00Z: long past any lab's life.
EXPIRES = 4102444800
BLACKBOX_CONFIG = "blackbox.yml"


def modules_file() -> str:
    """The probe modules, the one file both targets load."""
    return str(repo_root() / "k8s" / "base" / "monitoring" / BLACKBOX_CONFIG)


@dataclass(frozen=True)
class Probe:
    """One kind of probe: the blackbox module it runs and what it fetches (a path, signed or not)."""

    name: str
    module: str
    rest: str  # after the title: "/index.m3u8"
    signed: bool = True


PER_POP: tuple[Probe, ...] = (
    Probe("playlist", "hls_playlist", f"/{canary.PLAYLIST}"),
    Probe("segment", "hls_segment", f"/{canary.SEGMENT}"),
)
KEY = Probe("key", "key_refused", "", signed=False)


def signed_path(secret: str, probe: Probe) -> str:
    return signing.signed_path(secret, canary.TITLE, EXPIRES, probe.rest)


def key_path() -> str:
    """The key path a player takes for the canary title, through the gateway to license."""
    return f"/api/license/keys/{canary.TITLE}"


@dataclass(frozen=True)
class ProbeTarget:
    url: str
    pop: str
    probe: Probe

    @property
    def labels(self) -> dict[str, str]:
        return {"pop": self.pop, "probe": self.probe.name}


def targets(pop_urls: Mapping[str, str], gateway_url: str | None, secret: str) -> list[ProbeTarget]:
    """Every probe, for PoPs at ``pop_urls`` (by id) and the gateway at ``gateway_url`` (None: no key path).

    The one list both targets probe: the local target with its loopback URLs, the kube target with
    the in-cluster Services (:func:`kube_targets`)."""
    found = [ProbeTarget(f"{url}{signed_path(secret, probe)}", pop, probe)
             for pop, url in pop_urls.items() for probe in PER_POP]
    if gateway_url is not None:
        found.append(ProbeTarget(f"{gateway_url}{key_path()}", "gateway", KEY))
    return found


def local_targets(cfg: LabConfig, platform: Sequence[Component], secret: str) -> list[ProbeTarget]:
    """Every probe of the local lab: each running PoP's playlist and segment, and the key path (of the
    layers in ``platform``: a lab without its CDN layer has no PoP to probe)."""
    names = {c.name for c in platform}
    gateway = next((c for c in platform if c.name == GATEWAY.name), None)
    return targets(cdn.edge_urls(cfg, platform) if cdn.EDGE.name in names else {},
                   None if gateway is None else gateway.url(cfg), secret)


def kube_targets(pops: Sequence[str], secret: str, *, gateway: bool = True) -> list[ProbeTarget]:
    """The probes of a lab on Kubernetes: through each PoP's own Service (``edge-0`` ... selects that pod
    of the edge StatefulSet) and the gateway's Service, as the blackbox exporter's pod reaches them."""
    return targets({pop: f"http://{pop}:{cdn.EDGE.port('http').container}" for pop in pops},
                   f"http://{GATEWAY.name}:{GATEWAY.port('http').container}" if gateway else None, secret)


def target_group(target: ProbeTarget) -> dict[str, object]:
    """One target as Prometheus reads it: a static config locally, an entry of the file_sd file on kube."""
    return {
        "targets": [target.url],
        "labels": {**target.labels, "instance": f"{target.pop}/{target.probe.name}",
                   "__param_module": target.probe.module},
    }


def relabel_configs(exporter: str) -> list[dict[str, object]]:
    """The job's relabelling: the target becomes /probe's ``target`` parameter, the exporter the address."""
    return [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"target_label": "__address__", "replacement": exporter},
    ]


def scrape_config(cfg: LabConfig, platform: Sequence[Component], exporter: str, secret: str) -> dict[str, object]:
    """The local Prometheus job :data:`JOB`: one target per probe, scraped at ``exporter``'s /probe.

    ``secret``: the lab's URL-signing secret, as written with the configs
    (:func:`labkit.platform.credentials.signing_secret`)."""
    return {
        "job_name": JOB,
        "metrics_path": "/probe",
        "static_configs": [target_group(t) for t in local_targets(cfg, platform, secret)],
        "relabel_configs": relabel_configs(exporter),
    }


# On Kubernetes the signed URLs are written by labkit at `up` (the signing secret is the cluster's
# Secret, which no committed file may hold): the ConfigMap KUBE_TARGETS, mounted in Prometheus'
# pod at KUBE_TARGETS_DIR, read by the job's file_sd_configs (k8s/base/monitoring/prometheus.yml).
KUBE_TARGETS = "blackbox-targets"
KUBE_TARGETS_FILE = "probes.json"
KUBE_TARGETS_DIR = "/etc/prometheus/probes"


def file_sd(target_list: Sequence[ProbeTarget]) -> str:
    """The file :data:`KUBE_TARGETS_FILE`: the targets as Prometheus' file_sd reads them (JSON)."""
    return json.dumps([target_group(t) for t in target_list], indent=1, sort_keys=True) + "\n"


BLACKBOX = Component(
    name="blackbox-exporter",
    layer="monitoring",
    binary="prometheus-blackbox-exporter",
    package="prometheus-blackbox-exporter",
    binary_aliases=("blackbox_exporter",),
    args=(f"--config.file={{conf}}/{BLACKBOX_CONFIG}", "--web.listen-address={host}:{port_http}"),
    ports=(Port("http", offset=221, container=9115),),
    readiness=Readiness(path="/-/healthy"),
    description="synthetic monitoring: fetches a signed playlist and segment through every PoP, and the key path",
)
