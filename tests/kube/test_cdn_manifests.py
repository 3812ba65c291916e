"""The cdn layer on Kubernetes, offline: k8s/base/cdn agrees with labkit/edge.py.

- the edge's ConfigMap is ``labkit.edge.render_kube()`` byte for byte, and so is the committed
  ``k8s/base/cdn/edge/nginx.conf``; nginx runs that file, as non-root, from the gateway's image;
- every path the config names is a volume of the pod: the URL-signing Secret's file where the
  config includes it, the cache, the temp folder and the access log's folder (writable);
- one pod per PoP: the Deployment runs ``DEFAULT_POPS`` replicas, each its own cache;
- the URL-signing secret is never in the manifests: labkit.kube.secrets creates it per lab;
- the config is valid for nginx itself (``nginx -t``, marked integration).

test_manifests.py covers what every layer shares (schemas, labels, ports, probes, lock-down).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from test_apis_manifests import base, only, pod_spec
from test_manifests import DIRECTORIES, rendered
from test_media_manifests import main_container, mounted_at

from labkit import edge, media, origin
from labkit.component import Component
from labkit.config import repo_root
from labkit.kube import manifest, secrets

LAYER = edge.LAYER.name


def deployment() -> dict[str, Any]:
    return only("Deployment", edge.EDGE.name)


def edge_config_map() -> dict[str, Any]:
    (found,) = [o for o in base() if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("edge-config-")]
    return found


def directive(name: str) -> str:
    """The one value of the top-level or http-level directive ``name`` in render_kube()."""
    (value,) = re.findall(rf"^\s*{name} (\S+)[ ;]", edge.render_kube(), flags=re.MULTILINE)
    return str(value)


def writable_mounts() -> set[str]:
    return {m["mountPath"] for m in main_container(deployment())["volumeMounts"] if not m.get("readOnly")}


# -- the config ------------------------------------------------------------------------------


def test_the_edge_config_map_is_render_kube_byte_for_byte() -> None:
    text = edge_config_map()["data"]["nginx.conf"]
    assert text.encode() == edge.render_kube().encode(), "stale: run `python -m labkit.edge`"
    committed = repo_root() / "k8s" / "base" / "cdn" / "edge" / "nginx.conf"
    assert committed.read_bytes() == text.encode()
    assert committed.resolve() == edge.KUBE_CONFIG.resolve(), "where `python -m labkit.edge` writes"
    assert manifest.labels(edge_config_map())[manifest.LAYER_LABEL] == LAYER


def test_the_edge_runs_the_mounted_config_as_non_root() -> None:
    spec = main_container(deployment())
    assert spec["name"] == edge.EDGE.name
    command = spec["command"]
    assert command[0] == "nginx" and command[-2:] == ["-g", "daemon off;"]
    assert "args" not in spec
    config = PurePosixPath(command[command.index("-c") + 1])
    volume, mount = mounted_at(deployment(), str(config.parent))
    assert volume["configMap"]["name"] == edge_config_map()["metadata"]["name"]
    assert mount["readOnly"] is True and config.name == "nginx.conf"
    # The gateway's and the origin's image: nginx without root (uid 101), at the release tested locally.
    assert spec["image"] == main_container(only("Deployment", media.ORIGIN.name))["image"]
    assert spec["image"] == main_container(only("Deployment", "gateway"))["image"]
    assert pod_spec(deployment())["securityContext"]["runAsUser"] != 0


def test_the_edge_listens_where_its_service_sends_and_fetches_from_the_origin_service() -> None:
    (listen,) = re.findall(r"^\s*listen \S+:(\d+);", edge.render_kube(), flags=re.MULTILINE)
    assert int(listen) == edge.EDGE.port("http").container == edge.CONTAINER_PORT
    (peer,) = re.findall(r"^\s*server (\S+) ", edge.render_kube(), flags=re.MULTILINE)
    host, port = peer.split(":")
    (http,) = [p for p in only("Service", host)["spec"]["ports"] if p["name"] == "http"]
    assert int(port) == http["port"] == origin.CONTAINER_PORT
    assert manifest.labels(only("Service", host))[manifest.LAYER_LABEL] == media.LAYER.name


# -- the pod's volumes -----------------------------------------------------------------------


def test_the_url_signing_secret_is_mounted_where_the_config_includes_it() -> None:
    include = PurePosixPath(edge.KUBE_SECRET_INCLUDE)
    assert f"include {include};" in edge.render_kube()
    volume, mount = mounted_at(deployment(), str(include.parent))
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secrets.URL_SIGNING
    # Only the nginx line: the raw secret (for the signer) stays out of the edges' pods.
    assert volume["secret"]["items"] == [{"key": secrets.URL_SIGNING_DIRECTIVE_KEY, "path": include.name}]
    assert "optional" not in volume["secret"], "an edge without the secret must not start"
    # Never the apis layer's Secrets.
    names = {v.get("secret", {}).get("secretName") for v in pod_spec(deployment())["volumes"]}
    assert names - {None} == {secrets.URL_SIGNING}


def test_the_url_signing_secret_is_made_for_the_cdn_layer() -> None:
    (made,) = [s for s in secrets.LAB_SECRETS if s.name == secrets.URL_SIGNING]
    assert LAYER in made.layers
    data = made.make()
    assert data[secrets.URL_SIGNING_DIRECTIVE_KEY].decode() == edge.secure_link_directive(
        data[secrets.URL_SIGNING_SECRET_KEY].decode()
    )


def test_each_pop_caches_in_its_own_empty_dir_at_the_configured_path() -> None:
    cache_dir = directive("proxy_cache_path")
    assert cache_dir == edge.KUBE_CACHE_DIR
    volume, mount = mounted_at(deployment(), cache_dir)
    assert volume["emptyDir"]["sizeLimit"] == "1Gi"
    assert not mount.get("readOnly", False)
    (max_size,) = re.findall(r"max_size=(\d+)m ", edge.render_kube())
    assert int(max_size) < 1024, "nginx evicts before the kubelet does"


def test_the_access_log_folder_is_a_writable_volume() -> None:
    (access_log,) = re.findall(r"^\s*access_log (\S+) edge;", edge.render_kube(), flags=re.MULTILINE)
    volume, mount = mounted_at(deployment(), str(PurePosixPath(access_log).parent))
    assert "emptyDir" in volume and not mount.get("readOnly", False)


def test_the_edge_writes_only_to_its_empty_dirs() -> None:
    pid = PurePosixPath(directive("pid"))
    temp_dir = str(pid.parent)
    volume, _ = mounted_at(deployment(), temp_dir)
    assert "emptyDir" in volume
    for path in re.findall(r"_temp_path (\S+);", edge.render_kube()):
        assert PurePosixPath(path).is_relative_to(temp_dir), path
    (access_log,) = re.findall(r"^\s*access_log (\S+) edge;", edge.render_kube(), flags=re.MULTILINE)
    assert writable_mounts() == {temp_dir, edge.KUBE_CACHE_DIR, str(PurePosixPath(access_log).parent)}
    for name in writable_mounts():
        volume, _ = mounted_at(deployment(), name)
        assert "emptyDir" in volume, name
    assert main_container(deployment())["securityContext"]["readOnlyRootFilesystem"] is True


# -- the PoPs --------------------------------------------------------------------------------


def test_one_pod_per_pop() -> None:
    assert deployment()["spec"]["replicas"] == edge.DEFAULT_POPS == edge.EDGE.replicas
    # A PoP is named by its pod's hostname: the pod must not set one of its own.
    assert "hostname" not in pod_spec(deployment())
    assert "X-PoP $hostname" in edge.render_kube()


@pytest.mark.parametrize("component", edge.LAYER.components, ids=lambda c: c.name)
def test_every_object_of_the_layer_is_labelled_cdn(component: Component) -> None:
    for kind in ("Deployment", "Service"):
        assert manifest.labels(only(kind, component.name))[manifest.LAYER_LABEL] == LAYER


def test_the_cdn_layer_follows_the_media_layer_in_the_base() -> None:
    # The edges fetch from the media layer's origin Service.
    kustomization = yaml.safe_load((repo_root() / "k8s" / "base" / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert resources.index(LAYER) == resources.index(media.LAYER.name) + 1


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_no_secret_and_no_signing_secret_is_in_the_manifests(directory: str) -> None:
    objects = rendered(directory)
    assert [manifest.ref(o) for o in objects if o["kind"] == "Secret"] == []
    # The config only includes the secret's file: no secure_link_md5 line (with a secret) is committed.
    assert "secure_link_md5" not in yaml.safe_dump_all(objects)


# -- nginx itself ----------------------------------------------------------------------------


@pytest.mark.integration
def test_nginx_accepts_the_pods_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("needs nginx")
    text = edge.render_kube()
    (access_log,) = re.findall(r"^\s*access_log (\S+) edge;", text, flags=re.MULTILINE)
    include = tmp_path / "signing" / PurePosixPath(edge.KUBE_SECRET_INCLUDE).name
    include.parent.mkdir()
    include.write_text(edge.secure_link_directive(secrets.url_signing()[secrets.URL_SIGNING_SECRET_KEY].decode()))
    replacements = {
        edge.KUBE_SECRET_INCLUDE: str(include),
        edge.KUBE_CACHE_DIR: str(tmp_path / "cache"),
        str(PurePosixPath(access_log).parent): str(tmp_path / "log"),
        str(PurePosixPath(directive("pid")).parent): str(tmp_path / "run"),
        # nginx -t resolves the upstream's host names; no `origin` here.
        f"server origin:{origin.CONTAINER_PORT} ": "server 127.0.0.1:1 ",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    for folder in ("cache", "log", "run"):
        (tmp_path / folder).mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(text)

    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", "stderr"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
