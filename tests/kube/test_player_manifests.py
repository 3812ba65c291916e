"""The player layer on Kubernetes, offline: k8s/base/player agrees with
labkit/platform/layers/player/__init__.py and ott/.

- the QoE collector runs ``python -m ott.qoe`` from the services image with its declared
  environment translated for the cluster, and is scraped on its metrics path;
- the player's nginx writes only to its temp dir (its ConfigMap, ``labkit.platform.layers.player.render_kube()`` as
  committed in ``k8s/base/player/player/nginx.conf``, is checked with every nginx's in test_manifests.py);
- the files the config serves are in the pod: an init container of the services image copies
  the folder the Dockerfile fills (the page and hls.min.js) into the volume nginx reads;
- the gateway sends ``/player/`` and ``/api/qoe/`` to the two Services, on their ports.

test_manifests.py covers what every layer shares (schemas, labels, ports, probes, lock-down).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from test_apis_manifests import IMAGE, cluster_env, container, dockerfile, env_of, only, pod_spec, project_version

from labkit.core.config import repo_root
from labkit.platform.layers import player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import ROUTES

LAYER = player.LAYER.name


def mounted_at(deployment: dict[str, Any], spec: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume a container (``spec``) of ``deployment`` mounts at ``path``, and its mount."""
    (mount,) = [m for m in spec.get("volumeMounts", []) if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return volume, mount


# -- the QoE collector -------------------------------------------------------------------------


def test_the_collector_runs_the_declared_module_from_the_services_image() -> None:
    spec = container(player.QOE)
    assert spec["image"] == f"{IMAGE}:{project_version()}"
    assert spec["command"] == ["python", *player.QOE.args] == ["python", "-m", "ott.qoe"]
    assert "args" not in spec


def test_the_collectors_environment_is_the_declared_one_translated_for_the_cluster() -> None:
    variables = env_of(player.QOE)
    assert {k: v for k, v in variables.items() if k.startswith("OTT_")} == cluster_env(player.QOE)
    assert {k: v for k, v in variables.items() if not k.startswith("OTT_")} == {"PYTHONDONTWRITEBYTECODE": "1"}


def test_the_collector_keeps_nothing_but_its_tmp_and_mounts_no_secret() -> None:
    # Counters only: no database claim, no token; Prometheus keeps the history.
    deployment = only("Deployment", player.QOE.name)
    volumes = pod_spec(deployment)["volumes"]
    assert [v["name"] for v in volumes] == ["tmp"] and "emptyDir" in volumes[0]
    writable = {m["mountPath"] for m in container(player.QOE)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}


def test_prometheus_scrapes_the_collector_as_its_declaration_says() -> None:
    annotations = only("Deployment", player.QOE.name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/path": player.QOE.metrics_path,
                           "prometheus.io/port": str(player.QOE.port("http").container),
                           "prometheus.io/job": player.QOE.scrape_job}


# -- the player's nginx ------------------------------------------------------------------------


def test_the_player_writes_only_to_its_nginx_temp_dir() -> None:
    # Its config (the committed render_kube(), as a ConfigMap), listen port and image are checked with
    # every nginx's: test_manifests.test_each_nginx_runs_its_rendered_config_as_non_root.
    (pid,) = re.findall(r"^pid (\S+);", player.render_kube(), flags=re.MULTILINE)
    writable = {m["mountPath"] for m in container(player.PLAYER)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {str(PurePosixPath(pid).parent)}


def test_the_files_the_config_serves_are_copied_from_the_services_image_into_the_pod() -> None:
    deployment = only("Deployment", player.PLAYER.name)
    text = player.render_kube()
    served = set(re.findall(r"^\s*alias (\S+);", text, flags=re.MULTILINE))
    assert served == {f"{player.KUBE_SITE}/vendor/hls.min.js", f"{player.KUBE_SITE}/www/$1"}
    # nginx reads them from a volume, read-only ...
    site, mount = mounted_at(deployment, container(player.PLAYER), player.KUBE_SITE)
    assert "emptyDir" in site and mount["readOnly"] is True
    # ... which an init container of the services image fills from the same folder of the image.
    (init,) = pod_spec(deployment)["initContainers"]
    assert init["image"] == f"{IMAGE}:{project_version()}"
    (init_mount,) = init["volumeMounts"]
    assert init_mount["name"] == mount["name"] and not init_mount.get("readOnly", False)
    assert init["command"] == ["cp", "-R", f"{player.KUBE_SITE}/.", init_mount["mountPath"].rstrip("/") + "/"]
    # The Dockerfile puts the page and hls.min.js where the config reads them.
    copies = {args.split()[-1]: args.split()[0] for word, args in dockerfile() if word == "COPY"}
    assert copies[f"{player.KUBE_SITE}/www/"] == "ott/player/www/"
    vendor = copies[f"{player.KUBE_SITE}/vendor/hls.min.js"]
    assert (repo_root() / vendor).resolve() == player.hls_js().resolve()


# -- the gateway -------------------------------------------------------------------------------


def test_the_gateway_sends_the_players_routes_to_the_layers_services() -> None:
    text = gateway.render_kube()
    for component in (player.QOE, player.PLAYER):
        (route,) = [r for r in ROUTES if r.service == component.name]
        (service_port,) = [p["port"] for p in only("Service", component.name)["spec"]["ports"] if p["name"] == "http"]
        assert route.container_port == service_port == component.port("http").container
        assert f"server {component.name}:{service_port} " in text
        assert f"location {route.prefix} {{" in text
    (page,) = [r for r in ROUTES if r.service == player.PLAYER.name]
    assert page.prefix == player.URL_PREFIX and page.upstream_path == player.URL_PREFIX
