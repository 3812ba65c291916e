"""The cdn layer on Kubernetes, offline: k8s/base/cdn agrees with labkit/platform/layers/cdn/__init__.py.

- the edge's ConfigMap is ``labkit.platform.layers.cdn.render_kube()`` byte for byte, and so is the committed
  ``k8s/base/cdn/edge/nginx.conf``; nginx runs that file, as non-root, from the gateway's image;
- every path the config names is a volume of the pod: the URL-signing Secret's file where the
  config includes it, the cache, the temp folder and the access log's folder (writable);
- one pod per PoP: the Deployment runs ``DEFAULT_POPS`` replicas, each its own cache;
- each pod runs the PoP's exporter (``EXPORTER``) beside nginx: the declared command translated
  for the pod (its log, the pod's name as the PoP's id), the log's folder shared read-write, as
  the log's owner (it empties the log), and the pod scraped on the exporter's port;
- the URL-signing secret is never in the manifests: labkit.targets.kube.secrets creates it per lab;
- the config is valid for nginx itself (``nginx -t``, marked integration), run through the container's
  start script: the PoP's capacity from the environment ``Target.set_pop_capacity`` sets is written
  as the very lines the local target renders, where the config includes them; a bad one stops the pod.

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
from test_apis_manifests import IMAGE, base, only, pod_spec, project_version
from test_manifests import DIRECTORIES, rendered
from test_media_manifests import main_container

from labkit.core.config import repo_root
from labkit.platform.component import Component
from labkit.platform.layers import cdn, media
from labkit.platform.layers.media import origin
from labkit.targets.kube import manifest, secrets

LAYER = cdn.LAYER.name


def deployment() -> dict[str, Any]:
    """The edge's workload: a StatefulSet, so that its pods (the PoPs) are edge-0, edge-1 ..."""
    return only("StatefulSet", cdn.EDGE.name)


def container_named(name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(deployment())["containers"] if c["name"] == name]
    return dict(found)


def edge_container() -> dict[str, Any]:
    return container_named(cdn.EDGE.name)


def exporter_container() -> dict[str, Any]:
    return container_named(cdn.EXPORTER.name)


def mounted_at(container: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume of the edge's pod mounted at ``path`` in ``container``, and its mount."""
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{container['name']}: expected one mount at {path}, found {len(mounts)}"
    (volume,) = [v for v in pod_spec(deployment())["volumes"] if v["name"] == mounts[0]["name"]]
    return volume, mounts[0]


def edge_config_map() -> dict[str, Any]:
    (found,) = [o for o in base() if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("edge-config-")]
    return found


def directive(name: str) -> str:
    """The one value of the top-level or http-level directive ``name`` in render_kube()."""
    (value,) = re.findall(rf"^\s*{name} (\S+)[ ;]", cdn.render_kube(), flags=re.MULTILINE)
    return str(value)


def access_log() -> PurePosixPath:
    (path,) = re.findall(r"^\s*access_log (\S+) edge[ ;]", cdn.render_kube(), flags=re.MULTILINE)
    return PurePosixPath(path)


def writable_mounts(container: dict[str, Any]) -> set[str]:
    return {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}


def run_as(container: dict[str, Any]) -> tuple[int, int]:
    """The user and group the container runs as: its own securityContext's, else the pod's."""
    pod = pod_spec(deployment())["securityContext"]
    own = container.get("securityContext", {})
    return own.get("runAsUser", pod["runAsUser"]), own.get("runAsGroup", pod["runAsGroup"])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


# -- the config ------------------------------------------------------------------------------


def test_the_edge_config_map_is_render_kube_byte_for_byte() -> None:
    text = edge_config_map()["data"]["nginx.conf"]
    assert text.encode() == cdn.render_kube().encode(), "stale: run `python -m labkit.platform.layers`"
    committed = repo_root() / "k8s" / "base" / "cdn" / "edge" / "nginx.conf"
    assert committed.read_bytes() == text.encode()
    assert committed.resolve() == cdn.KUBE_CONFIG.resolve(), "where `python -m labkit.platform.layers` writes"
    assert manifest.labels(edge_config_map())[manifest.LAYER_LABEL] == LAYER
    # The container's command beside it: render_kube_start(), committed as generated.
    start = edge_config_map()["data"][cdn.KUBE_START.name]
    assert start == cdn.render_kube_start() == cdn.KUBE_START.read_text(), "stale: python -m labkit.platform.layers"


def test_the_edge_runs_the_mounted_config_as_non_root() -> None:
    spec = edge_container()
    assert spec["name"] == cdn.EDGE.name
    command = spec["command"]
    # The start script (the PoP's capacity), which execs nginx with the arguments after it.
    assert command[0] == "sh" and command[-2:] == ["-g", "daemon off;"]
    assert "args" not in spec
    config = PurePosixPath(command[command.index("-c") + 1])
    script = PurePosixPath(command[1])
    assert script == config.parent / cdn.KUBE_START.name
    volume, mount = mounted_at(spec, str(config.parent))
    assert volume["configMap"]["name"] == edge_config_map()["metadata"]["name"]
    assert mount["readOnly"] is True and config.name == "nginx.conf"
    # The gateway's and the origin's image: nginx without root (uid 101), at the release tested locally.
    assert spec["image"] == main_container(only("Deployment", media.ORIGIN.name))["image"]
    assert spec["image"] == main_container(only("Deployment", "gateway"))["image"]
    assert pod_spec(deployment())["securityContext"]["runAsUser"] != 0


def test_the_edge_listens_where_its_service_sends_and_fetches_from_the_origin_service() -> None:
    (listen,) = re.findall(r"^\s*listen 0\.0\.0\.0:(\d+);", cdn.render_kube(), flags=re.MULTILINE)
    assert int(listen) == cdn.EDGE.port("http").container == cdn.CONTAINER_PORT
    (peer,) = re.findall(r"^\s*server (\S+) ", cdn.render_kube(), flags=re.MULTILINE)
    host, port = peer.split(":")
    (http,) = [p for p in only("Service", host)["spec"]["ports"] if p["name"] == "http"]
    assert int(port) == http["port"] == origin.CONTAINER_PORT
    assert manifest.labels(only("Service", host))[manifest.LAYER_LABEL] == media.LAYER.name


# -- the pod's volumes -----------------------------------------------------------------------


def test_the_url_signing_secret_is_mounted_where_the_config_includes_it() -> None:
    include = PurePosixPath(cdn.KUBE_SECRET_INCLUDE)
    assert f"include {include};" in cdn.render_kube()
    volume, mount = mounted_at(edge_container(), str(include.parent))
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
    assert data[secrets.URL_SIGNING_DIRECTIVE_KEY].decode() == cdn.secure_link_directive(
        data[secrets.URL_SIGNING_SECRET_KEY].decode()
    )


def test_each_pop_caches_in_its_own_empty_dir_at_the_configured_path() -> None:
    cache_dir = directive("proxy_cache_path")
    assert cache_dir == cdn.KUBE_CACHE_DIR
    volume, mount = mounted_at(edge_container(), cache_dir)
    assert volume["emptyDir"]["sizeLimit"] == "1Gi"
    assert not mount.get("readOnly", False)
    (max_size,) = re.findall(r"max_size=(\d+)m ", cdn.render_kube())
    assert int(max_size) < 1024, "nginx evicts before the kubelet does"


def test_the_access_log_folder_is_a_writable_volume() -> None:
    volume, mount = mounted_at(edge_container(), str(access_log().parent))
    assert "emptyDir" in volume and not mount.get("readOnly", False)
    # The exporter empties the log past ACCESS_LOG_MAX_BYTES: the kubelet's limit is well above.
    assert mebibytes(volume["emptyDir"]["sizeLimit"]) >= 2 * cdn.ACCESS_LOG_MAX_BYTES / 2**20


def test_the_edge_writes_only_to_its_empty_dirs() -> None:
    pid = PurePosixPath(directive("pid"))
    temp_dir = str(pid.parent)
    volume, _ = mounted_at(edge_container(), temp_dir)
    assert "emptyDir" in volume
    for path in re.findall(r"_temp_path (\S+);", cdn.render_kube()):
        assert PurePosixPath(path).is_relative_to(temp_dir), path
    # The start script writes the PoP's capacity there too, and the config includes it from there.
    assert PurePosixPath(cdn.KUBE_CAPACITY_DIR).is_relative_to(temp_dir)
    assert {PurePosixPath(p).parent for p in re.findall(r"include (/tmp/\S+);", cdn.render_kube())} == {
        PurePosixPath(cdn.KUBE_CAPACITY_DIR)}
    writable = writable_mounts(edge_container())
    assert writable == {temp_dir, cdn.KUBE_CACHE_DIR, str(access_log().parent)}
    for name in writable:
        volume, _ = mounted_at(edge_container(), name)
        assert "emptyDir" in volume, name
    assert edge_container()["securityContext"]["readOnlyRootFilesystem"] is True


# -- the PoPs --------------------------------------------------------------------------------


def test_one_pod_per_pop() -> None:
    assert deployment()["spec"]["replicas"] == cdn.DEFAULT_POPS == cdn.EDGE.replicas
    # A PoP is named by its pod's hostname: the pod must not set one of its own.
    assert "hostname" not in pod_spec(deployment())
    assert "X-PoP $hostname" in cdn.render_kube()
    # A StatefulSet's pods are <name>-<ordinal>: the local target's PoP ids, edge-0, edge-1 ...
    assert [cdn.pop_id(i) for i in range(2)] == ["edge-0", "edge-1"]
    assert deployment()["spec"]["podManagementPolicy"] == "Parallel"
    assert deployment()["spec"]["serviceName"] == cdn.EDGE.name


def test_each_pop_has_a_service_of_its_own_at_a_node_port() -> None:
    """edge-N selects the pod edge-N alone, on its http port, at node port 30000 + its local offset."""
    pod_labels = pod_spec_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    services = [o for o in base() if o["kind"] == "Service" and o["metadata"]["name"].startswith("edge-")]
    assert sorted(manifest.name(s) for s in services) == [cdn.pop_id(i) for i in range(cdn.MAX_POPS)]
    for replica in range(cdn.MAX_POPS):
        spec = only("Service", cdn.pop_id(replica))["spec"]
        assert spec["selector"] == {manifest.NAME_LABEL: cdn.EDGE.name,
                                    "statefulset.kubernetes.io/pod-name": cdn.pop_id(replica)}
        # Its other selector labels are the pods' own: the Service would select nothing otherwise.
        assert pod_labels[manifest.NAME_LABEL] == pod_spec_labels[manifest.NAME_LABEL] == cdn.EDGE.name
        (port,) = spec["ports"]
        assert port["targetPort"] == "http" and port["port"] == cdn.CONTAINER_PORT
        assert spec["type"] == "NodePort"
        assert port["nodePort"] == 30000 + cdn.EDGE.port("http").offset + replica


@pytest.mark.parametrize("component", cdn.LAYER.components, ids=lambda c: c.name)
def test_every_object_of_the_layer_is_labelled_cdn(component: Component) -> None:
    # A follower (the exporter) has no objects of its own: it lives in the pods it follows.
    name = component.follows or component.name
    for kind in ("StatefulSet", "Service"):
        assert manifest.labels(only(kind, name))[manifest.LAYER_LABEL] == LAYER
    for pop in range(cdn.MAX_POPS):
        assert manifest.labels(only("Service", cdn.pop_id(pop)))[manifest.LAYER_LABEL] == LAYER


# -- the PoP's exporter ----------------------------------------------------------------------


def test_the_exporter_is_a_sidecar_of_the_edge() -> None:
    assert cdn.EXPORTER.follows == cdn.EDGE.name
    assert [c["name"] for c in pod_spec(deployment())["containers"]] == [
        cdn.EDGE.name, cdn.EXPORTER.name, cdn.NGINX_EXPORTER.name]
    assert "initContainers" not in pod_spec(deployment())


def test_the_exporter_runs_the_declared_command_translated_for_the_pod() -> None:
    spec = exporter_container()
    # The API services' image: ott.edgelog is part of the ott package.
    assert spec["image"] == f"{IMAGE}:{project_version()}"
    assert "args" not in spec
    # The declaration's templates as the pod reads them; every other argument as declared.
    in_the_pod = {
        "{run}/edge/{replica}/access.log": str(access_log()),
        "edge-{replica}": "$(POD_NAME)",  # the PoP's id: the pod's name, nginx's $hostname
        "{host}": "0.0.0.0",  # every interface: the kubelet's probes and Prometheus
        "{port_http}": str(cdn.EXPORTER.port("http").container),
    }
    # ... and --echo: on the cluster the access log's lines also go to the pod's log (Target.access_log reads them).
    assert spec["command"] == ["python", *(in_the_pod.get(a, a) for a in cdn.EXPORTER.args), "--echo"]
    assert set(in_the_pod) <= set(cdn.EXPORTER.args), "a template changed in the declaration"
    command = spec["command"]
    assert command[command.index("--truncate-at") + 1] == str(cdn.ACCESS_LOG_MAX_BYTES)


def test_the_exporters_pop_id_is_the_pod_name_nginx_logs() -> None:
    env = {e["name"]: e for e in exporter_container()["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PYTHONDONTWRITEBYTECODE"]["value"] == "1"
    # nginx's $hostname is the pod's name as long as the pod sets no hostname of its own.
    text = cdn.render_kube()
    assert '"pop":"$hostname"' in text and "X-PoP $hostname" in text
    assert not {"hostname", "subdomain", "setHostnameAsFQDN"} & set(pod_spec(deployment()))


def test_the_exporter_shares_the_log_folder_read_write_and_nothing_else() -> None:
    folder = str(access_log().parent)
    edge_volume, _ = mounted_at(edge_container(), folder)
    volume, mount = mounted_at(exporter_container(), folder)
    assert volume == edge_volume and "emptyDir" in volume
    assert not mount.get("readOnly", False), "the exporter empties the log"
    # No Secret, no cache: the log is all it reads.
    assert [m["name"] for m in exporter_container()["volumeMounts"]] == [volume["name"]]
    assert writable_mounts(exporter_container()) == {folder}


def test_the_exporter_runs_as_the_logs_owner() -> None:
    # nginx creates its access log with mode 0644: only its owner can empty it (the pod's group,
    # fsGroup, may read it). So the exporter runs as nginx's user, not as the image's 10001.
    assert run_as(exporter_container()) == run_as(edge_container())
    assert run_as(exporter_container())[0] != 0
    security = exporter_container()["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True


def test_the_pods_are_scraped_on_the_exporters_port() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    port = cdn.EXPORTER.port("http").container
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": cdn.EXPORTER.metrics_path,
        # The exporter's job, not the pod's name (edge): test_monitoring_manifests.py relabels it.
        "prometheus.io/job": cdn.EXPORTER.scrape_job,
    }
    (declared,) = [p for p in exporter_container()["ports"] if p["containerPort"] == port]
    # "http" is nginx's port (the Service's target); port names are unique in a pod.
    assert declared["name"] != "http"
    (service_port,) = only("Service", cdn.EDGE.name)["spec"]["ports"]
    assert service_port["port"] == cdn.EDGE.port("http").container


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


def _pod_files(tmp_path: Path) -> tuple[Path, Path]:
    """The pod's nginx.conf and start script, their paths moved into ``tmp_path``; (config, script)."""
    text, script = cdn.render_kube(), cdn.render_kube_start()
    include = tmp_path / "signing" / PurePosixPath(cdn.KUBE_SECRET_INCLUDE).name
    include.parent.mkdir()
    include.write_text(cdn.secure_link_directive(secrets.url_signing()[secrets.URL_SIGNING_SECRET_KEY].decode()))
    replacements = {
        cdn.KUBE_SECRET_INCLUDE: str(include),
        cdn.KUBE_CACHE_DIR: str(tmp_path / "cache"),
        str(access_log().parent): str(tmp_path / "log"),
        # The run volume: temp paths, the pid file and the capacity's folder (the script's too).
        str(PurePosixPath(directive("pid")).parent): str(tmp_path / "run"),
        # nginx -t resolves the upstream's host names; no `origin` here.
        f"server origin:{origin.CONTAINER_PORT} ": "server 127.0.0.1:1 ",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
        script = script.replace(old, new)
    assert str(tmp_path / "run") in script
    for folder in ("cache", "log", "run"):
        (tmp_path / folder).mkdir()
    (tmp_path / "nginx.conf").write_text(text)
    (tmp_path / "start.sh").write_text(script)
    return tmp_path / "nginx.conf", tmp_path / "start.sh"


@pytest.mark.integration
@pytest.mark.parametrize("rps", [None, cdn.POP_CAPACITY_RPS])
def test_nginx_accepts_the_pods_config_through_its_start_script(tmp_path: Path, rps: int | None) -> None:
    """The container's command as the pod runs it (sh start.sh <nginx's arguments>), nginx -t at the end.

    With the capacity in the environment (what Target.set_pop_capacity sets on the StatefulSet), the
    files the config includes hold the lines the local target renders for the same capacity; unset, nothing.
    """
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("needs nginx")
    config, script = _pod_files(tmp_path)
    command = edge_container()["command"]
    arguments = [a.replace(command[command.index("-c") + 1], str(config)) for a in command[2:]
                 if a not in ("-g", "daemon off;")]
    env = {"PATH": f"{Path(nginx).parent}:/usr/bin:/bin"}
    if rps is not None:
        env[cdn.CAPACITY_SETTING] = str(rps)

    result = subprocess.run(
        ["sh", str(script), "-t", "-p", str(tmp_path), *arguments],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    written = tuple((tmp_path / "run" / "capacity" / name).read_text().splitlines() for name in cdn.CAPACITY_FILES)
    assert written == tuple(cdn.capacity_directives(rps)), written
    # Included where the local config writes the lines: at the http level once, in every media location.
    text = config.read_text()
    assert text.count(f"include {tmp_path}/run/capacity/{cdn.CAPACITY_FILES[0]};") == 1
    assert text.count(f"include {tmp_path}/run/capacity/{cdn.CAPACITY_FILES[1]};") == len(cdn.OBJECT_TYPES)


@pytest.mark.parametrize("value", ["0", "080", "-5", "fast", "1.5", "1000001"])
def test_the_start_script_refuses_what_is_no_capacity_before_nginx_starts(tmp_path: Path, value: str) -> None:
    _, script = _pod_files(tmp_path)
    result = subprocess.run(["sh", str(script), "-v"], capture_output=True, text=True, timeout=30, check=False,
                            env={"PATH": "/usr/bin:/bin", cdn.CAPACITY_SETTING: value})
    assert result.returncode == 64, (result.returncode, result.stderr)
    assert f"{cdn.CAPACITY_SETTING}={value}: a PoP's capacity" in result.stderr
    assert "nginx version" not in result.stderr
