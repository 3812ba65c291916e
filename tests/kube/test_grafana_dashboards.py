"""The dashboards reach Grafana on kube: the monitoring layer's ConfigMap holds the committed JSON,
labelled for the Grafana add-on's dashboard sidecar, which watches the lab's namespace; the
datasource the panels name is the one the add-on provisions.

Offline: the kustomize base and every overlay, and the values file. With a cluster (``kube``
marker, the chart's repository reachable): the official chart rendered with those values runs the
sidecar on that label and namespace.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import yaml

from labkit.analysis import dashboards
from labkit.analysis.dashboards import panel
from labkit.core.config import repo_root
from labkit.targets.kube import addons, manifest

NAMESPACE = "ottlab"
CONFIG_MAP = "grafana-dashboards"


@functools.cache
def rendered(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(repo_root() / "k8s" / directory))


def grafana() -> addons.Addon:
    return next(a for a in addons.declared() if a.name == "grafana")


def values() -> dict[str, Any]:
    file = grafana().values_file()
    assert file is not None
    loaded: dict[str, Any] = yaml.safe_load(file.read_text())
    return loaded


@pytest.mark.parametrize("directory", ["base", *(f"overlays/{name}" for name in manifest.overlays())])
def test_the_config_map_holds_every_committed_dashboard(directory: str) -> None:
    (config_map,) = [o for o in rendered(directory) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == CONFIG_MAP]
    labels = config_map["metadata"]["labels"]
    sidecar = values()["sidecar"]["dashboards"]
    assert labels[sidecar["label"]] == sidecar["labelValue"] == "1"
    assert labels[manifest.LAYER_LABEL] == "monitoring" and config_map["metadata"]["namespace"] == NAMESPACE
    assert set(config_map["data"]) == {f"{name}.json" for name in dashboards.names()}
    for name in dashboards.names():
        assert config_map["data"][f"{name}.json"] == dashboards.path(name).read_text()
        assert json.loads(config_map["data"][f"{name}.json"])["uid"] == dashboards.load(name)["uid"]
    # Server-side apply keeps no last-applied annotation, and a ConfigMap holds at most 1 MiB.
    assert sum(len(text.encode()) for text in config_map["data"].values()) < 1024 * 1024 * 0.9


def test_the_sidecar_watches_the_labs_namespace_and_the_datasource_is_the_panels() -> None:
    sidecar = values()["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True and sidecar["searchNamespace"] == NAMESPACE
    assert dict(grafana().settings_for("lab2"))["sidecar.dashboards.searchNamespace"] == "lab2"
    (source,) = values()["datasources"]["datasources.yaml"]["datasources"]
    assert (source["uid"], source["type"]) == (panel.DATASOURCE_UID, "prometheus")
    for name in dashboards.names():
        for item in dashboards.load(name)["panels"]:
            if item["type"] != "row":
                assert item["datasource"]["uid"] == source["uid"], (name, item["title"])


@pytest.mark.kube
@pytest.mark.timeout(600)
def test_the_official_chart_runs_the_dashboard_sidecar_on_that_label() -> None:
    objects = addons.render(grafana(), lab_namespace=NAMESPACE)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "grafana"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == "grafana-sc-dashboard"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert (env["LABEL"], env["LABEL_VALUE"], env["NAMESPACE"]) == ("grafana_dashboard", "1", NAMESPACE)
    provisioned = [o for o in objects if o["kind"] == "ConfigMap" and "datasources.yaml" in o.get("data", {})]
    assert provisioned and "uid: prometheus" in provisioned[0]["data"]["datasources.yaml"]
