"""The Kubernetes manifests, offline: they render, they validate, and they agree with labkit.

- every overlay (and the base) renders with ``kubectl kustomize``;
- every rendered object validates against the schemas of Kubernetes :data:`K8S_VERSION`
  (``kubernetes-validate`` bundles them: no network), strictly: an unknown field is an error;
- each declared component (``labkit.platform.components()``, and the apis layer's) has the
  Deployment and Service the kube target expects, with the declared ports, readiness path and
  replicas; a component that ``follows`` another is instead a sidecar container in the pods of
  the one it follows, with its module, port, probe and metrics;
- the alert rules and Alertmanager's configuration are the very ones the local target loads;
- every container runs locked down (non-root, read-only root, no privilege, no capability);
- no Secret is committed: the lab's Secrets are generated per lab (labkit.targets.kube.secrets).

The apis layer's own checks (environment, mounts, the gateway's config, the Dockerfile) are in
test_apis_manifests.py.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from labkit import platform
from labkit.core.config import repo_root
from labkit.platform import nginx
from labkit.platform.component import Component
from labkit.platform.layer import Layer
from labkit.platform.layers import apis, cdn, monitoring, player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.media import origin
from labkit.platform.mesh import schema as mesh_schema
from labkit.targets.kube import manifest

# The Kubernetes version the manifests must be valid for: the kubectl of `make bootstrap`.
K8S_VERSION = "1.32.0"
NAMESPACE = "ottlab"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
DIRECTORIES = ["base", *(f"overlays/{name}" for name in manifest.overlays())]


def declared_layers() -> list[Layer]:
    """The platform's layers, with the apis layer even before labkit.platform registers it."""
    layers = platform.layers()
    if apis.LAYER.name not in {layer.name for layer in layers}:
        layers.append(apis.LAYER)
    return layers


COMPONENTS = [c for layer in declared_layers() for c in layer.components]
# A component that follows another is a second container in that one's pods: no Deployment, no Service.
DEPLOYED = [c for c in COMPONENTS if c.follows is None]
FOLLOWERS = [c for c in COMPONENTS if c.follows is not None]
# What a liveness probe may ask besides the readiness path: every ott service and the gateway
# answer /healthz while the process is alive, whatever their dependencies (a database) say.
LIVENESS_PATHS = {"/healthz"}


@functools.cache
def rendered(directory: str) -> tuple[dict[str, Any], ...]:
    """The objects of ``k8s/<directory>``, rendered once per test session."""
    return tuple(manifest.render(repo_root() / "k8s" / directory))


def only(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def followers_of(component: Component) -> list[Component]:
    return [c for c in FOLLOWERS if c.follows == component.name]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The number a probe's ``port`` stands for in ``container`` (a number, or one of its port names)."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    return int(number)


def test_the_default_overlay_and_minikube_exist() -> None:
    assert manifest.DEFAULT_OVERLAY in manifest.overlays()
    assert "minikube" in manifest.overlays()


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_renders_with_kubectl_kustomize(directory: str) -> None:
    objects = rendered(directory)
    assert objects, f"k8s/{directory} rendered nothing"
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects), "duplicate objects"


def schema_problems(obj: dict[str, Any]) -> list[str]:
    """What the schema of ``obj``'s kind refuses in it, strictly (an unknown field is a problem).

    Built-in kinds: the Kubernetes :data:`K8S_VERSION` schemas. Istio's kinds: the CRD schemas of
    the pinned Istio (labkit.platform.mesh.schema), which kubernetes-validate does not have. Any
    other kind without a schema is a problem, not a pass.
    """
    if mesh_schema.is_istio(obj):
        return mesh_schema.problems(obj)
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{manifest.ref(obj)}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{manifest.ref(obj)}: {exc.message}"]
    return []


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_object_validates_strictly_against_the_kubernetes_schema(directory: str) -> None:
    problems = [p for obj in rendered(directory) for p in schema_problems(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_object_is_labelled_for_labkit(directory: str) -> None:
    layers = {layer.name for layer in declared_layers()}
    for obj in rendered(directory):
        labels = manifest.labels(obj)
        assert labels.get(manifest.PART_OF_LABEL) == manifest.PART_OF, manifest.ref(obj)
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
            continue
        assert labels.get(manifest.LAYER_LABEL) in layers, f"{manifest.ref(obj)} has no known layer label"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], manifest.ref(obj)
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, manifest.ref(obj)
        if obj["kind"] in WORKLOADS:
            # `down` waits for the lab's pods by these labels.
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert template_labels.get(manifest.PART_OF_LABEL) == manifest.PART_OF, manifest.ref(obj)
            assert template_labels.get(manifest.LAYER_LABEL) == labels[manifest.LAYER_LABEL], manifest.ref(obj)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_overlays_deploy_the_same_objects_as_the_base(overlay: str) -> None:
    def names(objects: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
        # Generated ConfigMaps carry a hash of their content: compare them without it.
        return {
            (o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
            for o in objects
        }

    assert names(rendered(f"overlays/{overlay}")) == names(rendered("base"))
    assert rendered(f"overlays/{overlay}") != rendered("base"), f"overlay {overlay} changes nothing"


# -- one source of truth: the component declarations ----------------------------------------


# What each component runs as: a Deployment, but the edge, whose pods are the PoPs edge-0, edge-1 ...
# (a stable name each, and a Service each: k8s/base/cdn/pops.yaml), is a StatefulSet.
WORKLOAD_KINDS = {**{c.name: "Deployment" for c in DEPLOYED}, "edge": "StatefulSet"}


def workload(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    """The component's workload, of the kind :data:`WORKLOAD_KINDS` says."""
    return only(objects, WORKLOAD_KINDS[name], name)


@pytest.mark.parametrize("component", DEPLOYED, ids=lambda c: c.name)
def test_the_deployment_agrees_with_the_component_declaration(component: Component) -> None:
    deployment = workload(rendered("base"), component.name)
    assert manifest.labels(deployment).get(manifest.LAYER_LABEL) == component.layer
    assert deployment["spec"]["replicas"] == component.replicas
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels[manifest.NAME_LABEL] == component.name
    assert deployment["spec"]["selector"]["matchLabels"] == {manifest.NAME_LABEL: component.name}

    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == component.name]
    declared_ports = {p.name: p.container for p in component.ports}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == declared_ports
    readiness = container["readinessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == (component.readiness.path, component.readiness.port)
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] in {component.readiness.path, *LIVENESS_PATHS}
    assert liveness["port"] == component.readiness.port

    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    # One set of annotations per pod: at most one of its containers declares metrics by them (an nginx's
    # exporter, of the shared job nginx, is found by its port's name instead: test_a_follower_is_a_sidecar...).
    scraped = [c for c in (component, *followers_of(component))
               if c.metrics_path is not None and c.job != nginx.EXPORTER_JOB]
    assert len(scraped) <= 1, f"{[c.name for c in scraped]} share a pod: Prometheus scrapes one port of it"
    if not scraped:
        assert annotations.get("prometheus.io/scrape") != "true"
    elif component.metrics_path is None:
        # The pod is scraped for its sidecar: test_a_follower_is_a_sidecar_of_the_pods_it_follows.
        assert annotations["prometheus.io/port"] != str(component.port("http").container)
    else:
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == component.metrics_path
        assert annotations["prometheus.io/port"] == str(component.port("http").container)


@pytest.mark.parametrize("component", DEPLOYED, ids=lambda c: c.name)
def test_the_service_targets_the_http_port_of_the_components_pods(component: Component) -> None:
    objects = rendered("base")
    service = only(objects, "Service", component.name)
    deployment = workload(objects, component.name)
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and all(template_labels.get(k) == v for k, v in selector.items())
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert http["targetPort"] == "http"
    assert http["port"] == component.port("http").container


def test_every_deployment_is_a_declared_component() -> None:
    declared = {c.name for c in DEPLOYED}
    deployments = {o["metadata"]["name"] for o in rendered("base") if o["kind"] in WORKLOAD_KINDS.values()}
    assert deployments == declared
    assert {o["metadata"]["name"] for o in rendered("base") if o["kind"] == "StatefulSet"} == {
        name for name, kind in WORKLOAD_KINDS.items() if kind == "StatefulSet"}


@pytest.mark.parametrize("follower", FOLLOWERS, ids=lambda c: c.name)
def test_a_follower_is_a_sidecar_of_the_pods_it_follows(follower: Component) -> None:
    objects = rendered("base")
    (followed,) = [c for c in DEPLOYED if c.name == follower.follows]
    assert follower.layer == followed.layer
    # As many as the pods it follows: one per pod.
    assert (follower.replicas, follower.max_replicas) == (followed.replicas, followed.max_replicas)
    # Not a workload of its own, and nothing routes to it but Prometheus (by the pod's annotations).
    assert not [manifest.ref(o) for o in objects if o["metadata"]["name"] == follower.name]
    deployment = workload(objects, followed.name)
    (sidecar,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == follower.name]

    # The declared program: `python -m <module>` in the services' image, else the binary itself.
    if follower.args[0] == "-m":
        assert sidecar["command"][:3] == ["python", "-m", follower.args[1]]
    else:
        assert sidecar["command"][0] in {b.rsplit("/", 1)[-1] for b in (follower.binary, *follower.binary_aliases)}
    assert "args" not in sidecar

    # Its declared ports by number: names are the pod's (unique in it; the followed one has "http").
    numbers = [p["containerPort"] for p in sidecar["ports"]]
    assert sorted(numbers) == sorted(p.container for p in follower.ports)
    readiness = sidecar["readinessProbe"]["httpGet"]
    assert readiness["path"] == follower.readiness.path
    assert container_port(sidecar, readiness["port"]) == follower.port(follower.readiness.port).container
    liveness = sidecar["livenessProbe"]["httpGet"]
    assert liveness["path"] in {follower.readiness.path, *LIVENESS_PATHS}
    assert container_port(sidecar, liveness["port"]) == follower.port(follower.readiness.port).container

    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if follower.job == nginx.EXPORTER_JOB:
        # Scraped by its port's name (the pod's annotations are the other sidecar's), on the declared port.
        (metrics,) = [p for p in sidecar["ports"] if p["name"] == nginx.EXPORTER_PORT_NAME]
        assert metrics["containerPort"] == follower.port("http").container
    elif follower.metrics_path is None:
        assert annotations.get("prometheus.io/port") not in {str(n) for n in numbers}
    else:
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == follower.metrics_path
        assert annotations["prometheus.io/port"] == str(follower.port("http").container)


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_port_names_are_unique_in_each_pod(directory: str) -> None:
    # The API server refuses a pod whose containers repeat a port name; the schemas do not check it.
    for workload in (o for o in rendered(directory) if o["kind"] in WORKLOADS):
        names = [p["name"] for c in containers(workload) for p in c.get("ports", []) if "name" in p]
        assert len(set(names)) == len(names), f"{manifest.ref(workload)}: port names {names}"


# -- one source of truth: configuration files ------------------------------------------------


def config_map_with(key: str) -> dict[str, Any]:
    (found,) = [o for o in rendered("base") if o["kind"] == "ConfigMap" and key in o.get("data", {})]
    return found


def mount_dir(deployment: dict[str, Any], config_map: str) -> str:
    """Where the pod mounts the ConfigMap ``config_map``."""
    (volume,) = [v["name"] for v in pod_spec(deployment)["volumes"] if v.get("configMap", {}).get("name") == config_map]
    mounts = [m["mountPath"] for c in pod_spec(deployment)["containers"] for m in c.get("volumeMounts", [])]
    (path,) = [
        m["mountPath"]
        for c in pod_spec(deployment)["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] == volume
    ]
    assert path in mounts
    return str(path)


def test_the_rules_config_map_is_the_rules_file_byte_for_byte() -> None:
    rules = config_map_with("alert-rules.yml")
    assert rules["data"]["alert-rules.yml"].encode() == monitoring.rules_file().read_bytes()


def test_prometheus_loads_the_mounted_rules_and_alerts_the_alertmanager_service() -> None:
    objects = rendered("base")
    prometheus = only(objects, "Deployment", monitoring.PROMETHEUS.name)
    config = yaml.safe_load(config_map_with("prometheus.yml")["data"]["prometheus.yml"])
    rules_dir = mount_dir(prometheus, config_map_with("alert-rules.yml")["metadata"]["name"])
    assert config["rule_files"] == [f"{rules_dir}/alert-rules.yml"]
    config_dir = mount_dir(prometheus, config_map_with("prometheus.yml")["metadata"]["name"])
    (container,) = pod_spec(prometheus)["containers"]
    assert f"--config.file={config_dir}/prometheus.yml" in container["args"]
    alertmanager_port = monitoring.ALERTMANAGER.port("http").container
    (targets,) = [s["targets"] for a in config["alerting"]["alertmanagers"] for s in a["static_configs"]]
    assert targets == [f"{monitoring.ALERTMANAGER.name}:{alertmanager_port}"]
    (pods,) = [j for j in config["scrape_configs"] if j["job_name"] == "kubernetes-pods"]
    assert pods["kubernetes_sd_configs"][0]["role"] == "pod"


def test_alertmanager_runs_the_configuration_the_local_target_writes() -> None:
    config = config_map_with("alertmanager.yml")
    assert yaml.safe_load(config["data"]["alertmanager.yml"]) == monitoring.alertmanager_config()
    alertmanager = only(rendered("base"), "Deployment", monitoring.ALERTMANAGER.name)
    config_dir = mount_dir(alertmanager, config["metadata"]["name"])
    (container,) = pod_spec(alertmanager)["containers"]
    assert f"--config.file={config_dir}/alertmanager.yml" in container["args"]


# Each nginx of the lab and the module rendering its pod's config (``render_kube``).
NGINX_CONFIGS = {"gateway": gateway, "origin": origin, "edge": cdn, "player": player}


@pytest.mark.parametrize("name", NGINX_CONFIGS)
def test_each_nginx_runs_its_rendered_config_as_non_root(name: str) -> None:
    objects = rendered("base")
    component = next(c for c in COMPONENTS if c.name == name)
    text = NGINX_CONFIGS[name].render_kube()
    deployment = workload(objects, name)
    (spec,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    # The generated ConfigMap holding render_kube(), mounted read-only where `nginx -c` reads it.
    command = spec["command"]
    # nginx itself, or (the edge) its start script beside the config, which execs nginx with these arguments.
    assert command[0] == "nginx" or command[:2] == ["sh", f"{PurePosixPath(command[command.index('-c') + 1]).parent}/"
                                                         f"{cdn.KUBE_START.name}"], command
    assert command[-2:] == ["-g", "daemon off;"]
    config = PurePosixPath(command[command.index("-c") + 1])
    mount = mounts[str(config.parent)]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"] == volumes[mount["name"]]["configMap"]["name"]]
    assert config_map["data"][config.name].encode() == text.encode(), "stale: run `python -m labkit.platform.layers`"
    stale = "stale: run `python -m labkit.platform.layers`"
    assert NGINX_CONFIGS[name].KUBE_CONFIG.read_bytes() == text.encode(), stale
    assert manifest.labels(config_map)[manifest.LAYER_LABEL] == component.layer
    assert mount["readOnly"] is True
    # It listens where its Service sends; its pid and temp files go to an emptyDir.
    (listen,) = re.findall(r"^\s*listen 0\.0\.0\.0:(\d+);", text, flags=re.MULTILINE)
    assert int(listen) == component.port("http").container
    (pid,) = re.findall(r"^pid (\S+);", text, flags=re.MULTILINE)
    temp_dir = PurePosixPath(pid).parent
    assert "emptyDir" in volumes[mounts[str(temp_dir)]["name"]]
    for path in re.findall(r"_temp_path (\S+);", text):
        assert PurePosixPath(path).is_relative_to(temp_dir), path
    # Without root (uid 101), at the nginx release tested locally.
    assert spec["image"].startswith("docker.io/nginxinc/nginx-unprivileged:")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] != 0


# -- locked-down pods ------------------------------------------------------------------------


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_container_runs_locked_down_with_bounded_resources(directory: str) -> None:
    workloads = [o for o in rendered(directory) if o["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        pod = pod_spec(workload).get("securityContext", {})
        for container in containers(workload):
            where = f"{manifest.ref(workload)} container {container['name']}"
            security = container.get("securityContext")
            assert security, f"{where} has no securityContext"
            assert security.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            seccomp = security.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where} has no {bound}"
            if workload["kind"] == "Job":
                # Runs to completion, and nothing routes to it: bounded in time instead of probed.
                assert workload["spec"].get("activeDeadlineSeconds"), f"{where} may run forever"
            elif container in pod_spec(workload).get("initContainers", []):
                # Runs to completion before the pod's containers start: the API server refuses probes on it.
                assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container), where
            else:
                assert container.get("readinessProbe") and container.get("livenessProbe"), where
            # A read-only root filesystem needs its writable places declared as volumes.
            volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])}
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, where


# -- no committed secret ---------------------------------------------------------------------


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_no_secret_is_in_the_manifests(directory: str) -> None:
    # Secrets are generated per lab by the kube target (labkit.targets.kube.secrets), never kept in git.
    objects = rendered(directory)
    assert [manifest.ref(o) for o in objects if o["kind"] == "Secret"] == []
    text = yaml.safe_dump_all(objects)
    assert "PRIVATE KEY" not in text
