"""The lab's public entry on Kubernetes, offline: what viewers get is what the manifests and cluster configs provide.

- every overlay renders one NodePort Service per viewer URL (the gateway, the origin, each PoP
  edge-0..edge-3), at 30000 + the component's local offset, and kind's and k3d's cluster configs map
  exactly those node ports to 127.0.0.1 of this machine;
- the overlays that map them (kind, k3d) declare the public host, minikube does not;
- ``labkit.targets.kube.entry`` chooses node ports or port-forwards from the overlay and the
  environment, refuses a wrong OTTLAB_KUBE_ENTRY, and writes the ConfigMap ott-public that license
  and the transcoder read, the PoPs' URLs as the local target's edges file has them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import pytest
import yaml

from labkit import platform
from labkit.core.config import LabConfig, repo_root
from labkit.core.errors import ConfigError
from labkit.platform.layers import apis, cdn, media
from labkit.targets.kube import entry, manifest

VIEWER_SERVICES = ["edge-0", "edge-1", "edge-2", "edge-3", "gateway", "origin"]


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay)))


def components() -> list[Any]:
    found = {c.name: c for c in (*platform.components(), *apis.LAYER.components, *media.LAYER.components,
                                 *cdn.LAYER.components)}
    return list(found.values())


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_each_viewer_url_is_a_node_port_at_30000_plus_the_local_offset(overlay: str) -> None:
    ports = entry.node_ports(rendered(overlay))
    assert sorted(ports) == VIEWER_SERVICES
    by_name = {c.name: c for c in components()}
    for service, port in ports.items():
        if service.startswith("edge-"):
            replica = int(service.removeprefix("edge-"))
            assert port == 30000 + cdn.EDGE.port("http").offset + replica
        else:
            assert port == 30000 + by_name[service].port("http").offset


@pytest.mark.parametrize("overlay", ["kind", "k3d"])
def test_the_cluster_config_maps_exactly_the_node_ports_to_this_machine(overlay: str) -> None:
    config = yaml.safe_load((manifest.overlay_dir(overlay) / "cluster.yaml").read_text())
    if overlay == "kind":
        (node,) = config["nodes"]
        mapped = {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in node["extraPortMappings"]}
        assert config["kind"] == "Cluster" and node["role"] == "control-plane"
    else:
        mapped = set()
        for mapping in config["ports"]:
            address, host_port, node_port = mapping["port"].split(":")
            mapped.add((int(node_port), int(host_port), address))
            assert mapping["nodeFilters"] == ["server:0"]
        assert config["kind"] == "Simple" and config["servers"] == 1
    ports = entry.node_ports(rendered(overlay))
    assert mapped == {(port, port, "127.0.0.1") for port in ports.values()}
    assert entry.declared_host(rendered(overlay), environ={}) == "127.0.0.1"


def test_minikube_declares_no_host_so_viewers_get_port_forwards_unless_told() -> None:
    objects = rendered("minikube")
    cfg = LabConfig(base_port=40000)
    assert entry.declared_host(objects, environ={}) == ""
    assert entry.chosen(objects, cfg, components(), environ={}).mode == "forwards"
    told = entry.chosen(objects, cfg, components(), environ={entry.HOST_ENV: "192.168.49.2"})
    assert (told.mode, told.url("gateway"), told.url("edge-1")) == (
        "nodeport", "http://192.168.49.2:30000", "http://192.168.49.2:30101")


def test_the_environment_chooses_over_the_overlay_and_a_wrong_choice_is_refused() -> None:
    objects = rendered("kind")
    cfg = LabConfig(base_port=40000)
    assert entry.chosen(objects, cfg, components(), environ={}).mode == "nodeport"
    forwards = entry.chosen(objects, cfg, components(), environ={entry.ENTRY_ENV: "forwards"})
    # Port-forwards listen where the local target's components do: the same URLs on both targets.
    assert forwards.url("gateway") == apis.GATEWAY.url(cfg) == "http://127.0.0.1:40000"
    assert forwards.url("edge-2") == cdn.EDGE.url(cfg, "http", 2)
    with pytest.raises(ConfigError, match="OTTLAB_KUBE_ENTRY='ingress'") as caught:
        entry.chosen(objects, cfg, components(), environ={entry.ENTRY_ENV: "ingress"})
    assert "nodeport, forwards" in caught.value.hint
    with pytest.raises(ConfigError, match="no host is known") as caught:
        entry.chosen(rendered("minikube"), cfg, components(), environ={entry.ENTRY_ENV: "nodeport"})
    assert "minikube ip" in caught.value.hint
    with pytest.raises(ConfigError, match="not part of the lab's public entry"):
        entry.chosen(objects, cfg, components(), environ={}).url("prometheus")


def test_ott_public_names_the_gateway_the_origin_and_the_running_pops_as_the_local_edges_file_does() -> None:
    cfg = LabConfig(base_port=40000)
    forwards = entry.Entry.forwards(cfg, components())
    config = entry.public_config(forwards, pops=3)
    assert config["metadata"]["name"] == entry.PUBLIC_CONFIG
    assert config["metadata"]["labels"] == {manifest.PART_OF_LABEL: manifest.PART_OF}
    data = config["data"]
    assert data[entry.MODE_KEY] == "forwards"
    assert data[entry.GATEWAY_KEY] == "http://127.0.0.1:40000" and data[entry.ORIGIN_KEY] == "http://127.0.0.1:40060"
    # What the local target writes for license (its edges file) with three PoPs, key for key.
    three = [dataclasses.replace(c, replicas=3) if c.name == cdn.EDGE.name else c for c in components()]
    assert json.loads(data[entry.EDGES_KEY]) == cdn.edge_urls(cfg, three) == {
        cdn.pop_id(i): cdn.EDGE.url(cfg, "http", i) for i in range(3)}
    nodeport = entry.public_config(entry.Entry.nodeport("127.0.0.1", entry.node_ports(rendered("kind"))), pops=2)
    assert json.loads(nodeport["data"][entry.EDGES_KEY]) == {"edge-0": "http://127.0.0.1:30100",
                                                             "edge-1": "http://127.0.0.1:30101"}
    # The hash that rolls the readers changes with the content, and only with it.
    assert entry.config_hash(config) == entry.config_hash(entry.public_config(forwards, pops=3))
    assert entry.config_hash(config) != entry.config_hash(entry.public_config(forwards, pops=2))
    # ... and a reader's hash only with what it reads: the PoPs are license's, not the transcoder's.
    two = entry.public_config(forwards, pops=2)
    assert entry.config_hash(config, {entry.ORIGIN_KEY}) == entry.config_hash(two, {entry.ORIGIN_KEY})
    assert entry.config_hash(config, {entry.EDGES_KEY}) != entry.config_hash(two, {entry.EDGES_KEY})


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_license_and_the_transcoder_read_ott_public_and_the_stored_mode_comes_back(overlay: str) -> None:
    objects = rendered(overlay)
    assert entry.readers(objects) == ["license", "transcoder"]
    workloads = {manifest.name(o): o for o in objects if o["kind"] == "Deployment"}
    assert entry.keys_read(workloads["license"]) == {entry.GATEWAY_KEY, entry.EDGES_KEY}
    assert entry.keys_read(workloads["transcoder"]) == {entry.ORIGIN_KEY}
    license = next(o for o in objects if o["kind"] == "Deployment" and manifest.name(o) == "license")
    stamped = entry.stamped(license, "abc")
    assert stamped["spec"]["template"]["metadata"]["annotations"][entry.CONFIG_HASH_ANNOTATION] == "abc"
    cfg = LabConfig(base_port=40000)
    choices = (entry.Entry.nodeport("10.0.0.9", entry.node_ports(objects)), entry.Entry.forwards(cfg, components()))
    for chosen in choices:
        back = entry.from_config(entry.public_config(chosen, 2), cfg, components(), objects)
        assert (back.mode, back.url("gateway"), back.url("edge-1")) == (
            chosen.mode, chosen.url("gateway"), chosen.url("edge-1"))



def test_the_readme_walks_through_the_cluster_configs() -> None:
    readme = (repo_root() / "README.md").read_text()
    assert "kind create cluster --config k8s/overlays/kind/cluster.yaml" in readme
    assert "k3d cluster create --config k8s/overlays/k3d/cluster.yaml" in readme
    assert entry.HOST_ENV in readme and entry.ENTRY_ENV in readme
