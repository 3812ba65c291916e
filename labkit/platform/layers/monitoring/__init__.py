"""The monitoring layer: Prometheus and Alertmanager, configured from the component declarations,
and the exporters for what the services do not measure themselves.

Prometheus scrapes every component that declares a ``metrics_path``, as its ``scrape_job``
(components sharing a job, like the nginx exporters, are one job). The alert rules live in
one file, ``k8s/base/monitoring/alert-rules.yml``: the local Prometheus loads it from there and
kustomize ships the same file as the ConfigMap on Kubernetes.

Exporters: :mod:`~labkit.platform.layers.monitoring.processes` (job ``process``: CPU and memory
per component), :mod:`~labkit.platform.layers.monitoring.probes` (job ``blackbox``: synthetic
probes through every PoP); each nginx's own exporter (job ``nginx``) is declared next to its nginx
(:func:`labkit.platform.nginx.exporter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from labkit.core.config import LabConfig, repo_root
from labkit.platform.component import Component, Port, Readiness
from labkit.platform.credentials import SIGNING_SECRET_FILE, signing_secret
from labkit.platform.layer import Layer
from labkit.platform.layers.monitoring import probes, processes

SCRAPE_INTERVAL = "5s"
EVALUATION_INTERVAL = "5s"


def rules_file() -> Path:
    """The one alert-rules file both targets load."""
    return repo_root() / "k8s" / "base" / "monitoring" / "alert-rules.yml"


PROMETHEUS = Component(
    name="prometheus",
    layer="monitoring",
    binary="prometheus",
    package="prometheus",
    args=(
        "--config.file={conf}/prometheus.yml",
        "--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=2d",
        "--web.listen-address={host}:{port_http}",
        "--web.enable-lifecycle",
        # POST /api/v1/write: `ottlab k6` pushes k6's metrics here, as the kube Job does (k8s/loadtest).
        "--web.enable-remote-write-receiver",
    ),
    ports=(Port("http", offset=90, container=9090),),
    readiness=Readiness(path="/-/ready"),
    metrics_path="/metrics",
    description="time-series database: scrapes every component and evaluates the alert rules",
)

ALERTMANAGER = Component(
    name="alertmanager",
    layer="monitoring",
    binary="prometheus-alertmanager",
    package="prometheus-alertmanager",
    binary_aliases=("alertmanager",),
    args=(
        "--config.file={conf}/alertmanager.yml",
        "--storage.path={data}",
        "--web.listen-address={host}:{port_http}",
        # An empty cluster address turns off the HA gossip port, which would bind 0.0.0.0.
        "--cluster.listen-address=",
    ),
    ports=(Port("http", offset=93, container=9093),),
    readiness=Readiness(path="/-/ready"),
    metrics_path="/metrics",
    description="routes the alerts Prometheus fires",
)


def prometheus_config(cfg: LabConfig, platform: Sequence[Component], secret: str | None = None) -> dict[str, object]:
    """Prometheus' configuration for the local target, as a dict.

    ``secret``: the URL-signing secret the probes' URLs are signed with (the lab's, by default).
    """
    statics: dict[tuple[str, str], list[dict[str, object]]] = {}
    for comp in platform:
        if comp.scrape_job is None or comp.metrics_path is None:
            continue
        targets = [f"{cfg.host}:{comp.local_port(cfg, 'http', i)}" for i in range(comp.replicas)]
        statics.setdefault((comp.scrape_job, comp.metrics_path), []).append(
            {"targets": targets, "labels": {"layer": comp.layer}})
    scrape_configs: list[dict[str, object]] = [
        {"job_name": job, "metrics_path": path, "static_configs": configs} for (job, path), configs in statics.items()
    ]
    blackbox = next((c for c in platform if c.name == probes.BLACKBOX.name), None)
    if blackbox is not None and probes.local_targets(cfg, platform, "-"):
        scrape_configs.append(probes.scrape_config(cfg, platform, f"{cfg.host}:{blackbox.local_port(cfg)}",
                                                   secret or signing_secret(cfg)))
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": EVALUATION_INTERVAL,
            "external_labels": {"lab": "ottlab", "target": "local"},
        },
        "rule_files": [str(rules_file())],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"{cfg.host}:{ALERTMANAGER.local_port(cfg)}"]}]}]
        },
        "scrape_configs": scrape_configs,
    }


def alertmanager_config() -> dict[str, object]:
    """Alertmanager's configuration: group by alert and component, keep alerts in the UI.

    The receiver has no integration yet: alerts are read from Alertmanager's API by the
    notebooks (drills add a webhook receiver when they need one).
    """
    return {
        "route": {
            "receiver": "lab",
            "group_by": ["alertname", "job"],
            "group_wait": "5s",
            "group_interval": "30s",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "lab"}],
    }


def write_configs(cfg: LabConfig, platform: Sequence[Component]) -> Mapping[str, str]:
    # Written here too (the first layer up creates it): the probes' URLs are signed with it.
    secret = signing_secret(cfg)
    return {
        SIGNING_SECRET_FILE: secret + "\n",
        "prometheus.yml": yaml.safe_dump(prometheus_config(cfg, platform, secret), sort_keys=False),
        "alertmanager.yml": yaml.safe_dump(alertmanager_config(), sort_keys=False),
        processes.CONFIG: yaml.safe_dump(processes.config(cfg, platform), sort_keys=False),
        probes.BLACKBOX_CONFIG: Path(probes.modules_file()).read_text(),
    }


LAYER = Layer(
    name="monitoring",
    components=(PROMETHEUS, ALERTMANAGER, processes.PROCESS_EXPORTER, probes.BLACKBOX),
    write_configs=write_configs,
    description="Prometheus and Alertmanager",
)
