"""The apis layer on Kubernetes, offline: k8s/base/apis agrees with labkit/platform/layers/apis/__init__.py and ott/.

- each API service's environment is its declared one, translated for the cluster: every
  ``OTT_<OTHER>_URL`` names the other's Service (license's ``OTT_PUBLIC_URL`` the gateway's),
  and each path variable is a mounted volume
  (the database claim, the service token Secret, auth's signing key Secret);
- the gateway's ConfigMap is ``labkit.platform.layers.apis.gateway.render_kube()`` byte for byte, and so is the
  committed ``k8s/base/apis/gateway/nginx.conf`` (a stale file fails here);
- the Secrets the pods mount are the ones ``labkit.targets.kube.secrets`` creates, with its keys;
- the services image's Dockerfile is pinned, non-root and installs with the constraints.

test_manifests.py covers what every layer shares (schemas, labels, ports, probes, lock-down).
"""

from __future__ import annotations

import functools
import re
import shlex
import tomllib
from pathlib import PurePosixPath
from typing import Any

import pytest

from labkit import platform
from labkit.core.config import repo_root
from labkit.platform.component import Component
from labkit.platform.layers import apis
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import MAX_BODY_BYTES
from labkit.targets.kube import entry, manifest, secrets
from ott import tokens

# Where the manifests put what the declaration keeps under the lab directory.
DB_DIR = "/var/lib/ott"
KEYS_DIR = "/var/run/ott/keys"
TOKEN_FILE = "/var/run/ott/service/token"
IMAGE = "ottlab/ott-services"
DB_CLAIM = "ott-db"
LAYER = apis.LAYER.name


@functools.cache
def base() -> tuple[dict[str, Any], ...]:
    """The objects of k8s/base, rendered once per test session."""
    return tuple(manifest.render(repo_root() / "k8s" / "base"))


def only(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in base() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r}, found {len(found)}"
    return found[0]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(component: Component) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(only("Deployment", component.name))["containers"] if c["name"] == component.name]
    return dict(found)


def public_ref(key: str) -> str:
    """How :func:`env_of` shows a value read from the kube target's ConfigMap ott-public (a viewer's URL)."""
    return f"configmap/{entry.PUBLIC_CONFIG}[{key}]"


def env_of(component: Component) -> dict[str, str]:
    """The container's environment; a value from ott-public as :func:`public_ref`, the only reference allowed."""
    entries = container(component)["env"]
    for e in entries:
        if "value" not in e:
            ref = e["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == entry.PUBLIC_CONFIG and "optional" not in ref, e
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names), f"{component.name}: a variable is set twice"
    return {e["name"]: e["value"] if "value" in e else public_ref(e["valueFrom"]["configMapKeyRef"]["key"])
            for e in entries}


def volume_at(component: Component, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mounted at ``path`` in the component's container, and its mount."""
    (mount,) = [m for m in container(component).get("volumeMounts", []) if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec(only("Deployment", component.name))["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def cluster_links() -> dict[str, str]:
    """``{link_<name>}`` on the cluster: the Service named after the component, on its http port.

    The gateway (``link_gateway``, license's OTT_PUBLIC_URL) as much as the API services; later
    layers link to their own components the same way (test_media_manifests.py reuses this).
    """
    declared = {c.name: c for c in (*platform.components(), *apis.LAYER.components)}
    return {
        f"link_{c.name}": f"http://{c.name}:{port.container}"
        for c in declared.values()
        for port in c.ports
        if port.name == "http"
    }


# The lab-directory paths the apis layer's pods find at their mounts.
CLUSTER_PATHS = {
    "OTT_DATABASE_URL": f"sqlite:///{DB_DIR}/ott.db",
    "OTT_KEYS_DIR": KEYS_DIR,
    "OTT_SERVICE_TOKEN_FILE": TOKEN_FILE,
    "OTT_SIGNING_SECRET_FILE": "/var/run/ott/signing/secret",
    "OTT_EDGES_FILE": "/etc/ott/edges/edges.json",
    # The URLs license writes for viewers: the lab's public entry, which the kube target writes.
    "OTT_PUBLIC_URL": public_ref(entry.GATEWAY_KEY),
}


def cluster_env(component: Component, paths: dict[str, str] | None = None) -> dict[str, str]:
    """The component's declared environment as it must read on the cluster.

    ``paths``: more (or other) lab-directory variables and the mount paths they become.
    """
    values = {
        "host": "0.0.0.0",  # every interface of the pod: the kubelet's probes and the Service
        "port_http": str(component.port("http").container),
        **cluster_links(),
    }
    # The lab-directory paths become the mounts of the Deployment.
    mounted = {**CLUSTER_PATHS, **(paths or {})}
    return {key: mounted.get(key) or template.format(**values) for key, template in component.env.items()}


def project_version() -> str:
    with (repo_root() / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


# -- the API services --------------------------------------------------------------------------


@pytest.mark.parametrize("service", apis.SERVICES, ids=lambda c: c.name)
def test_the_service_runs_the_declared_module_from_the_services_image(service: Component) -> None:
    spec = container(service)
    assert spec["image"] == f"{IMAGE}:{project_version()}"
    # The declaration's arguments after the interpreter; the image's `python` is the interpreter.
    assert spec["command"] == ["python", *service.args]
    assert "args" not in spec


@pytest.mark.parametrize("service", apis.SERVICES, ids=lambda c: c.name)
def test_the_environment_is_the_declared_one_translated_for_the_cluster(service: Component) -> None:
    env = env_of(service)
    expected = cluster_env(service)
    assert {k: v for k, v in env.items() if k.startswith("OTT_")} == expected
    # The only addition: the root filesystem is read-only, so Python must not write .pyc files.
    assert {k: v for k, v in env.items() if not k.startswith("OTT_")} == {"PYTHONDONTWRITEBYTECODE": "1"}
    for other in apis.SERVICES:
        if other is not service:
            assert env[f"OTT_{other.name.upper()}_URL"] == f"http://{other.name}:8000"
    assert env["OTT_MAX_BODY"] == str(MAX_BODY_BYTES)
    assert env["OTT_PORT"] == str(service.port("http").container)


def test_every_other_services_url_names_a_service_on_its_http_port() -> None:
    for service in apis.SERVICES:
        env = env_of(service)
        for other in apis.SERVICES:
            key = f"OTT_{other.name.upper()}_URL"
            host, port = env[key].removeprefix("http://").split(":")
            assert host == other.name
            (http,) = [p for p in only("Service", host)["spec"]["ports"] if p["name"] == "http"]
            assert int(port) == http["port"], f"{service.name}: {key}={env[key]}"


@pytest.mark.parametrize("service", apis.SERVICES, ids=lambda c: c.name)
def test_the_database_is_on_the_shared_claim(service: Component) -> None:
    url = env_of(service)["OTT_DATABASE_URL"]
    database = PurePosixPath(url.removeprefix("sqlite:///"))
    volume, mount = volume_at(service, str(database.parent))
    assert volume["persistentVolumeClaim"]["claimName"] == DB_CLAIM
    assert not mount.get("readOnly", False), "SQLite writes its file, journal and WAL there"


def test_the_database_claim_is_read_write_once_in_the_apis_layer() -> None:
    claim = only("PersistentVolumeClaim", DB_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert manifest.labels(claim)[manifest.LAYER_LABEL] == LAYER
    assert claim["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("service", apis.SERVICES, ids=lambda c: c.name)
def test_the_service_token_is_mounted_read_only_from_its_secret(service: Component) -> None:
    token_file = PurePosixPath(env_of(service)["OTT_SERVICE_TOKEN_FILE"])
    volume, mount = volume_at(service, str(token_file.parent))
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secrets.SERVICE_TOKEN
    assert volume["secret"]["items"] == [{"key": secrets.SERVICE_TOKEN_KEY, "path": token_file.name}]


def test_auth_reads_its_signing_key_from_the_secret() -> None:
    keys_dir = env_of(apis.AUTH)["OTT_KEYS_DIR"]
    volume, mount = volume_at(apis.AUTH, keys_dir)
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secrets.SIGNING_KEY
    # The file name auth loads (ott.tokens) is the key labkit stores the PEM under.
    assert secrets.SIGNING_KEY_FILE == tokens.KEY_FILE
    assert volume["secret"]["items"] == [{"key": tokens.KEY_FILE, "path": tokens.KEY_FILE}]


@pytest.mark.parametrize("service", [s for s in apis.SERVICES if s is not apis.AUTH], ids=lambda c: c.name)
def test_only_auth_gets_the_private_key(service: Component) -> None:
    # The others verify tokens with auth's public JWKS: a compromised catalog must not mint tokens.
    volumes = pod_spec(only("Deployment", service.name))["volumes"]
    assert secrets.SIGNING_KEY not in {v.get("secret", {}).get("secretName") for v in volumes}


def test_the_pods_mount_only_the_secrets_labkit_creates() -> None:
    mounted = {
        v["secret"]["secretName"]
        for o in base()
        if o["kind"] == "Deployment"
        for v in pod_spec(o).get("volumes", [])
        if "secret" in v
    }
    assert mounted == set(secrets.NAMES)


# A sidecar (an nginx's exporter) is in the pods of the one it follows: no Deployment of its own.
@pytest.mark.parametrize("component", [c for c in apis.LAYER.components if c.follows is None], ids=lambda c: c.name)
def test_every_object_of_the_layer_is_labelled_apis(component: Component) -> None:
    for kind in ("Deployment", "Service"):
        assert manifest.labels(only(kind, component.name))[manifest.LAYER_LABEL] == LAYER
    pod = container(component)
    assert pod["securityContext"]["readOnlyRootFilesystem"] is True
    # A writable /tmp (Python) or nginx's temp directory: the only writable places besides data.
    writable = {m["mountPath"] for m in pod["volumeMounts"] if not m.get("readOnly")}
    assert writable & {"/tmp", "/tmp/nginx"}, component.name


# -- the gateway -------------------------------------------------------------------------------


def gateway_config_map() -> dict[str, Any]:
    (found,) = [o for o in base() if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gateway-config-")]
    return found


def test_the_gateway_config_map_is_render_kube_byte_for_byte() -> None:
    text = gateway_config_map()["data"]["nginx.conf"]
    assert text.encode() == gateway.render_kube().encode(), "stale: run `python -m labkit.platform.layers`"
    committed = repo_root() / "k8s" / "base" / "apis" / "gateway" / "nginx.conf"
    assert committed.read_bytes() == text.encode()
    assert committed.resolve() == gateway.KUBE_CONFIG.resolve(), \
        "where `python -m labkit.platform.layers` writes"
    assert manifest.labels(gateway_config_map())[manifest.LAYER_LABEL] == LAYER


def test_the_gateway_runs_the_mounted_config_as_non_root() -> None:
    deployment = only("Deployment", apis.GATEWAY.name)
    spec = container(apis.GATEWAY)
    command = spec["command"]
    assert command[0] == "nginx" and command[-2:] == ["-g", "daemon off;"]
    config = PurePosixPath(command[command.index("-c") + 1])
    volume, mount = volume_at(apis.GATEWAY, str(config.parent))
    assert volume["configMap"]["name"] == gateway_config_map()["metadata"]["name"]
    assert mount["readOnly"] is True and config.name == "nginx.conf"
    # An image built to run nginx without root (uid 101), at the nginx release tested locally.
    assert spec["image"].startswith("docker.io/nginxinc/nginx-unprivileged:")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] != 0


def test_the_gateway_listens_where_its_service_sends_and_writes_only_to_its_empty_dir() -> None:
    text = gateway.render_kube()
    (listen,) = re.findall(r"^\s*listen 0\.0\.0\.0:(\d+);", text, flags=re.MULTILINE)
    assert int(listen) == apis.GATEWAY.port("http").container == gateway.CONTAINER_PORT
    (pid,) = re.findall(r"^pid (\S+);", text, flags=re.MULTILINE)
    temp_dir = str(PurePosixPath(pid).parent)
    volume, _ = volume_at(apis.GATEWAY, temp_dir)
    assert "emptyDir" in volume
    for path in re.findall(r"_temp_path (\S+);", text):
        assert PurePosixPath(path).is_relative_to(temp_dir), path


def test_the_gateway_proxies_to_services_that_exist_on_their_ports() -> None:
    peers = set(re.findall(r"^\s*server ([a-z-]+):(\d+)", gateway.render_kube(), flags=re.MULTILINE))
    # The APIs, and the player layer's components the viewer reaches through the gateway too.
    assert {name for name, _ in peers} == {s.name for s in apis.SERVICES} | {"qoe", "player"}
    for name, port in peers:
        assert int(port) in {p["port"] for p in only("Service", name)["spec"]["ports"]}


# -- the services image ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = (repo_root() / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_the_dockerfile_starts_from_a_pinned_python_matching_the_project() -> None:
    froms = [args for word, args in dockerfile() if word == "FROM"]
    assert len(froms) == 1, "one stage: nothing is compiled"
    image, _, tag = froms[0].partition(":")
    assert image == "python" and tag and tag != "latest", froms[0]
    assert re.fullmatch(r"3\.\d+(\.\d+)?-slim", tag), tag
    with (repo_root() / "pyproject.toml").open("rb") as fh:
        requires = tomllib.load(fh)["project"]["requires-python"]
    assert requires == ">=" + ".".join(tag.removesuffix("-slim").split(".")[:2])


def test_the_dockerfile_installs_the_project_with_the_constraints_and_no_dev_extra() -> None:
    runs = [args for word, args in dockerfile() if word == "RUN"]
    installs = [shlex.split(r) for r in runs if "pip install" in r]
    assert len(installs) == 1
    words = installs[0]
    words = words[words.index("pip") : words.index("&&") if "&&" in words else len(words)]
    assert words[words.index("-c") + 1] == "constraints.txt"
    assert "--no-cache-dir" in words
    assert words[-1] == ".", "the project itself, no extras (dev tools stay out of the image)"
    assert not any("[" in w or w in ("-e", "--editable") for w in words), words
    copied = " ".join(args for word, args in dockerfile() if word == "COPY").split()
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "ott/"):
        assert needed in copied, f"`pip install .` needs {needed}"
    # The services run ott only: the instruments (labkit) stay out of the image.
    assert "labkit/" not in copied


def test_the_dockerfile_runs_as_a_non_root_user_without_bytecode() -> None:
    users = [args for word, args in dockerfile() if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so the kubelet can check runAsNonRoot"
    # The Deployments run the image as its own user.
    for service in apis.SERVICES:
        assert pod_spec(only("Deployment", service.name))["securityContext"]["runAsUser"] == int(uid)
    env = " ".join(args for word, args in dockerfile() if word == "ENV").split()
    assert {"PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"} <= set(env)


def test_the_docker_build_context_leaves_out_the_labs_state_and_keeps_what_is_copied() -> None:
    ignored = {
        line.strip()
        for line in (repo_root() / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", "reports", "**/node_modules", ".git", "tests", "notebooks", "labkit"} <= ignored
    # Of the front-end packages, only the player's hls.js goes into the image.
    assert [line for line in ignored if line.startswith("!")] == ["!ott/player/node_modules/hls.js/dist/hls.min.js"]
    assert not ignored & {"ott", "pyproject.toml", "constraints.txt", "README.md", "*"}
