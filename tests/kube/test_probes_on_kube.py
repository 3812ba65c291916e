"""The synthetic probes on kube are the local ones: the same targets, job and labels, through each PoP.

- for any count of PoPs, the probes the kube target writes (:func:`probes.kube_targets`) are the ones
  :mod:`labkit.platform.layers.monitoring.probes` declares for the local lab of as many PoPs: the
  same PoPs, probes, modules, signed paths and labels; only the host differs, and each kube host
  is a Service of the rendered manifests that reaches that PoP's pod (or the gateway's);
- Prometheus' pod mounts the ConfigMap they are written to where the job's ``file_sd_configs`` reads,
  and promtool accepts the job with the file the kube target writes (and refuses a malformed one);
- the canary title they fetch is on the media volume the origin serves: the ConfigMap media-canary
  holds canary.py's files (the committed copies are current), and the transcoder pod's init
  container, run here on a folder, copies them into ``<media root>/<canary title>``;
- on the fake API server: ``up`` writes the ConfigMap with URLs signed by the cluster's Secret,
  ``scale edge 3`` rewrites it for three PoPs, a lab with nothing to probe gets none, ``down`` deletes it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from test_kube_target import (
    NAMESPACE,
    STATEFULSETS,
    FakeCluster,
    serve_istio,
    settle_deployments,
)

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.layers import apis, cdn
from labkit.platform.layers.media import canary, origin
from labkit.platform.layers.monitoring import probes
from labkit.targets.kube import entry, manifest
from labkit.targets.kube.target import KubeTarget, probe_targets_config
from ott import signing

CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
OVERLAYS = manifest.overlays()


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay)))


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def generated(objects: tuple[dict[str, Any], ...], prefix: str) -> dict[str, Any]:
    """A ConfigMap of a configMapGenerator (its name carries a content hash)."""
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(f"{prefix}-")]
    return found


def what(found: list[probes.ProbeTarget]) -> list[tuple[str, str, str, str, str]]:
    return sorted((t.pop, t.probe.name, t.probe.module, urlsplit(t.url).path, json.dumps(t.labels, sort_keys=True))
                  for t in found)


# -- one declaration, both targets ----------------------------------------------------------------


@pytest.mark.parametrize("pops", range(1, cdn.MAX_POPS + 1))
def test_kube_probes_what_probes_py_declares_for_the_same_pops(pops: int) -> None:
    components = [dataclasses.replace(c, replicas=pops) if c.name == cdn.EDGE.name else c
                  for c in platform.components()]
    local = probes.local_targets(LabConfig(base_port=20000), components, "s3cret")
    kube = probes.kube_targets(entry.pop_services(pops), "s3cret")

    assert what(kube) == what(local)
    assert len(kube) == 2 * pops + 1
    # Signed with the lab's secret for the canary title, valid until 2100, as the PoPs check them.
    for target in kube:
        if target.probe.signed:
            assert urlsplit(target.url).path == signing.signed_path(
                "s3cret", canary.TITLE, probes.EXPIRES, target.probe.rest)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kube_probe_reaches_its_pop_through_a_service_of_the_manifests(overlay: str) -> None:
    objects = rendered(overlay)
    edge = one(objects, "StatefulSet", cdn.EDGE.name)
    exporter = one(objects, "Deployment", probes.BLACKBOX.name)
    for target in probes.kube_targets(entry.pop_services(cdn.MAX_POPS), "s3cret"):
        url = urlsplit(target.url)
        service = one(objects, "Service", str(url.hostname))
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        assert port["targetPort"] == "http"
        # Same namespace as the exporter's pod: the Service's short name resolves there.
        assert service["metadata"]["namespace"] == exporter["metadata"]["namespace"] == NAMESPACE
        if target.pop == "gateway":
            assert url.hostname == apis.GATEWAY.name
            continue
        # A PoP's probe goes to that PoP's Service, which selects that pod of the edge StatefulSet alone.
        assert url.hostname == target.pop
        assert service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == target.pop
        assert {k: v for k, v in service["spec"]["selector"].items() if k != "statefulset.kubernetes.io/pod-name"} \
            .items() <= edge["spec"]["template"]["metadata"]["labels"].items()
        (container,) = [c for c in edge["spec"]["template"]["spec"]["containers"] if c["name"] == cdn.EDGE.name]
        (http,) = [p for p in container["ports"] if p["name"] == "http"]
        assert http["containerPort"] == url.port == cdn.EDGE.port("http").container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_reads_the_configmap_the_kube_target_writes(overlay: str) -> None:
    objects = rendered(overlay)
    spec = one(objects, "Deployment", "prometheus")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if (v.get("configMap") or {}).get("name") == probes.KUBE_TARGETS]
    # Optional: Prometheus starts before the kube target has written it (or without it, applied by hand).
    assert volume["configMap"]["optional"] is True
    (mount,) = [m for c in spec["containers"] for m in c.get("volumeMounts") or [] if m["name"] == volume["name"]]
    assert mount["mountPath"] == probes.KUBE_TARGETS_DIR
    config = generated(objects, "prometheus-config")
    (job,) = [j for j in yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]
              if j["job_name"] == probes.JOB]
    assert job["file_sd_configs"] == [{"files": [f"{probes.KUBE_TARGETS_DIR}/{probes.KUBE_TARGETS_FILE}"],
                                       "refresh_interval": "30s"}]
    assert job["relabel_configs"] == probes.relabel_configs(
        f"{probes.BLACKBOX.name}:{probes.BLACKBOX.port('http').container}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_promtool_accepts_the_job_and_the_file_the_kube_target_writes(overlay: str, tmp_path: Path) -> None:
    config = yaml.safe_load(generated(rendered(overlay), "prometheus-config")["data"]["prometheus.yml"])
    # Debian's promtool has no Kubernetes discovery: the blackbox job alone, its file where promtool finds it.
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == probes.JOB]
    written = tmp_path / probes.KUBE_TARGETS_FILE
    ((path,),) = [sd["files"] for sd in job["file_sd_configs"]]
    assert path == f"{probes.KUBE_TARGETS_DIR}/{probes.KUBE_TARGETS_FILE}"
    job["file_sd_configs"][0]["files"] = [str(written)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump({"global": config["global"], "scrape_configs": [job]}))
    found = probes.kube_targets(entry.pop_services(cdn.MAX_POPS), "s3cret")
    written.write_text(probe_targets_config(found)["data"][probes.KUBE_TARGETS_FILE])

    run = subprocess.run(["promtool", "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stderr

    written.write_text(written.read_text().replace('"targets"', '"target"'))   # a file Prometheus would refuse
    refused = subprocess.run(["promtool", "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "checking SD file" in refused.stderr, refused


# -- the canary title on the media volume ---------------------------------------------------------


def test_the_committed_canary_files_are_current() -> None:
    folder = canary.kube_dir()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == canary.files(), (
        "stale: run python -m labkit.platform.layers")


def init_container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec = one(objects, "Deployment", "transcoder")["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = [c for c in spec.get("initContainers") or [] if c["name"] == "canary"]
    assert len(found) == 1, "the transcoder's pod has no init container canary"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_transcoders_pod_publishes_the_canary_on_the_volume_the_origin_serves(overlay: str) -> None:
    objects = rendered(overlay)
    config = generated(objects, "media-canary")
    held = {**{k: v.encode() for k, v in (config.get("data") or {}).items()},
            **{k: base64.b64decode(v) for k, v in (config.get("binaryData") or {}).items()}}
    assert held == canary.files()
    transcoder = one(objects, "Deployment", "transcoder")["spec"]["template"]["spec"]
    container = init_container(objects)
    volumes = {v["name"]: v for v in transcoder["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The media claim, read-write, where the origin finds it; the ConfigMap, read-only.
    media = mounts[origin.KUBE_MEDIA_ROOT]
    assert not media.get("readOnly") and not volumes[media["name"]]["persistentVolumeClaim"].get("readOnly")
    origin_spec = one(objects, "Deployment", "origin")["spec"]["template"]["spec"]
    (served,) = [v for v in origin_spec["volumes"] if "persistentVolumeClaim" in v]
    assert volumes[media["name"]]["persistentVolumeClaim"]["claimName"] == served["persistentVolumeClaim"]["claimName"]
    (source,) = [m for m in container["volumeMounts"] if m is not media]
    assert volumes[source["name"]]["configMap"]["name"] == config["metadata"]["name"] and source["readOnly"]
    # The image the transcoder runs, locked down as it is.
    (main,) = [c for c in transcoder["containers"] if c["name"] == "transcoder"]
    assert container["image"] == main["image"]
    assert container["securityContext"] == main["securityContext"]


def test_the_init_containers_script_copies_the_canary_into_the_media_root(tmp_path: Path) -> None:
    container = init_container(rendered("kind"))
    source = next(m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != origin.KUBE_MEDIA_ROOT)
    media_root, config = tmp_path / "media", tmp_path / "canary"
    media_root.mkdir()
    config.mkdir()
    # As the kubelet mounts a ConfigMap: each key a symlink into a dot folder.
    data = config / "..data"
    data.mkdir()
    for name, content in canary.files().items():
        (data / name).write_bytes(content)
        (config / name).symlink_to(data / name)
    (media_root / canary.TITLE).mkdir()
    (media_root / canary.TITLE / canary.PLAYLIST).write_text("stale\n")
    script = container["command"][-1].replace(origin.KUBE_MEDIA_ROOT, str(media_root)).replace(source, str(config))
    assert container["command"][:2] == ["sh", "-c"]

    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    subprocess.run(["sh", "-c", script], check=True, timeout=30)   # a restarted pod: the same files again

    published = media_root / canary.TITLE
    assert {p.name: p.read_bytes() for p in published.iterdir()} == canary.files()
    assert all(not p.is_symlink() for p in published.iterdir())
    # What the local target publishes, byte for byte.
    local = canary.publish(tmp_path / "local")
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {p.name: p.read_bytes() for p in published.iterdir()}


# -- on the fake API server -------------------------------------------------------------------------


def written(fake: FakeCluster) -> list[probes.ProbeTarget] | None:
    stored = fake.stored(CONFIGMAPS, probes.KUBE_TARGETS)
    if stored is None:
        return None
    assert stored["metadata"]["labels"][manifest.PART_OF_LABEL] == manifest.PART_OF   # `down` deletes it
    groups = json.loads(stored["data"][probes.KUBE_TARGETS_FILE])
    by_url = {t.url: t for pops in (cdn.MAX_POPS,) for t in probes.kube_targets(
        entry.pop_services(pops), secret_of(fake))}
    found = []
    for group in groups:
        (url,) = group["targets"]
        assert group == probes.target_group(by_url[url])
        found.append(by_url[url])
    return found


def secret_of(fake: FakeCluster) -> str:
    stored = fake.stored(SECRETS, "ott-url-signing")
    return "" if stored is None else base64.b64decode(stored["data"]["secret"]).decode()


def test_up_writes_the_probes_signed_with_the_clusters_secret_and_scale_rewrites_them(
    fake: FakeCluster, target: KubeTarget
) -> None:
    settle_deployments(serve_istio(fake))   # Istio installed: the lab's mesh (on by default) needs it

    target.up(["monitoring"])
    assert written(fake) is None     # nothing to probe yet (as locally: no PoP, no gateway)
    target.up(["apis", "cdn"])

    found = written(fake)
    assert found is not None and secret_of(fake)
    assert what(found) == what(probes.kube_targets(["edge-0", "edge-1"], target.signing_secret()))
    (patch,) = [r for r in fake.requests("PATCH") if r.name == probes.KUBE_TARGETS]
    assert patch.params == {"fieldManager": "labkit", "force": "true"}   # server-side apply, as the manifests

    target.scale("edge", 3)

    after = written(fake)
    assert after is not None
    assert sorted({t.pop for t in after}) == ["edge-0", "edge-1", "edge-2", "gateway"]
    assert fake.stored(STATEFULSETS, "edge")["spec"]["replicas"] == 3  # type: ignore[index]

    target.down()
    assert fake.stored(CONFIGMAPS, probes.KUBE_TARGETS) is None
