"""The media layer on Kubernetes, offline: k8s/base/media agrees with labkit/platform/layers/media/__init__.py and ott/.

- the transcoder's environment is its declared one, translated for the cluster as the API
  services' is (test_apis_manifests.cluster_env): every ``OTT_<OTHER>_URL`` names a Service,
  and each path variable is a mounted volume (the database claim, the media claim, the token);
- the origin's ConfigMap is ``labkit.platform.layers.media.origin.render_kube()`` byte for byte, and so is the
  committed ``k8s/base/media/origin/nginx.conf``; nginx runs that file and serves the media
  claim, read-only, at the root the config names;
- the transcode-sample Job runs ``python -m ott.transcoder run`` with arguments the real
  command line accepts, with the transcoder's image, environment and volumes, is scraped on
  its http port while it runs, and no Service sends requests to it;
- the services image carries what the transcoder runs: ffmpeg, ffprobe, the sample's font.

test_manifests.py covers what every layer shares (schemas, labels, ports, probes, lock-down).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from fnmatch import fnmatch
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from test_apis_manifests import (
    DB_CLAIM,
    IMAGE,
    base,
    cluster_env,
    dockerfile,
    env_of,
    only,
    pod_spec,
    project_version,
    public_ref,
)

from labkit import platform
from labkit.core.config import repo_root
from labkit.platform.component import Component
from labkit.platform.layers import media
from labkit.platform.layers.media import origin
from labkit.targets.kube import entry, manifest, secrets
from ott import transcoder
from ott.media import ladder as ladders
from ott.media import sample
from ott.models import TITLE_ID_PATTERN

LAYER = media.LAYER.name
MEDIA_CLAIM = "ott-media"
JOB = "transcode-sample"
JOB_NAME_LABEL = "transcoder-job"
# The media root the transcoder writes and the origin serves: the one the origin's config names.
# The origin's URL in the catalog is the one viewers reach, from the kube target's ConfigMap ott-public.
MEDIA_PATHS = {"OTT_MEDIA_ROOT": origin.KUBE_MEDIA_ROOT, "OTT_ORIGIN_URL": public_ref(entry.ORIGIN_KEY)}


SIDECARS = {c.name for c in platform.components() if c.follows is not None}


def job() -> dict[str, Any]:
    return only("Job", JOB)


def transcoder_deployment() -> dict[str, Any]:
    return only("Deployment", media.TRANSCODER.name)


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    """The workload's own container: not a sidecar (a component that follows another, an nginx's exporter)."""
    (found,) = [c for c in pod_spec(workload)["containers"] if c["name"] not in SIDECARS]
    return dict(found)


def env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's environment; a value from ott-public (a viewer's URL) as ``public_ref``, the only reference."""
    entries = main_container(workload)["env"]
    for e in entries:
        if "value" not in e:
            ref = e["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == entry.PUBLIC_CONFIG and "optional" not in ref, e
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names), f"{manifest.ref(workload)}: a variable is set twice"
    return {e["name"]: e["value"] if "value" in e else public_ref(e["valueFrom"]["configMapKeyRef"]["key"])
            for e in entries}


def mounted_at(workload: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mounted at ``path`` in the workload's container, and its mount."""
    mounts = [m for m in main_container(workload).get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{manifest.ref(workload)}: expected one mount at {path}, found {len(mounts)}"
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
    return volume, mounts[0]


def claim_users(claim: str) -> dict[str, dict[str, Any]]:
    """The workloads whose pods mount the claim, by ``kind/name``."""
    return {
        manifest.ref(o): o
        for o in base()
        if o["kind"] in ("Deployment", "Job")
        and claim in {v.get("persistentVolumeClaim", {}).get("claimName") for v in pod_spec(o).get("volumes", [])}
    }


def writers() -> list[dict[str, Any]]:
    """The transcoder Deployment and the Job: both run ott.transcoder and write the media root."""
    return [transcoder_deployment(), job()]


# -- the transcoder ----------------------------------------------------------------------------


def test_the_transcoder_runs_the_declared_module_from_the_services_image() -> None:
    spec = main_container(transcoder_deployment())
    assert spec["name"] == media.TRANSCODER.name
    assert spec["image"] == f"{IMAGE}:{project_version()}"
    assert spec["command"] == ["python", *media.TRANSCODER.args]
    assert "args" not in spec


def test_the_transcoders_environment_is_the_declared_one_translated_for_the_cluster() -> None:
    variables = env_of(media.TRANSCODER)
    assert {k: v for k, v in variables.items() if k.startswith("OTT_")} == cluster_env(media.TRANSCODER, MEDIA_PATHS)
    # The only addition: the root filesystem is read-only, so Python must not write .pyc files.
    assert {k: v for k, v in variables.items() if not k.startswith("OTT_")} == {"PYTHONDONTWRITEBYTECODE": "1"}
    assert variables["OTT_PORT"] == str(media.TRANSCODER.port("http").container)


@pytest.mark.parametrize("workload", ["Deployment/transcoder", f"Job/{JOB}"])
def test_every_url_names_a_service_on_its_http_port(workload: str) -> None:
    kind, name = workload.split("/")
    variables = env(only(kind, name))
    urls = {k: v for k, v in variables.items() if k.endswith("_URL") and v.startswith("http://")}
    assert {"OTT_LICENSE_URL", "OTT_CATALOG_URL"} <= set(urls)
    # The origin's, which the catalog lists for viewers, is the lab's public entry.
    assert variables["OTT_ORIGIN_URL"] == public_ref(entry.ORIGIN_KEY)
    for key, url in urls.items():
        host, port = url.removeprefix("http://").split(":")
        (http,) = [p for p in only("Service", host)["spec"]["ports"] if p["name"] == "http"]
        assert int(port) == http["port"], f"{workload}: {key}={url}"


def test_only_one_transcoder_runs_even_during_a_rollout() -> None:
    # A starting transcoder fails the jobs the database says are running: never beside another.
    deployment = transcoder_deployment()
    assert deployment["spec"]["replicas"] == media.TRANSCODER.replicas == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# -- volumes: database, media, token ------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["transcoder", "job"])
def test_the_transcoder_writes_the_media_claim_at_its_media_root(index: int) -> None:
    workload = writers()[index]
    root = env(workload)["OTT_MEDIA_ROOT"]
    assert root == origin.KUBE_MEDIA_ROOT
    volume, mount = mounted_at(workload, root)
    assert volume["persistentVolumeClaim"]["claimName"] == MEDIA_CLAIM
    assert not volume["persistentVolumeClaim"].get("readOnly", False)
    assert not mount.get("readOnly", False), "it stages and publishes there"
    assert "subPath" not in mount, "staging and titles on one volume: a publish is one rename"


@pytest.mark.parametrize("index", [0, 1], ids=["transcoder", "job"])
def test_the_transcoders_database_is_the_apis_shared_claim(index: int) -> None:
    workload = writers()[index]
    url = env(workload)["OTT_DATABASE_URL"]
    assert url == env_of(media.TRANSCODER)["OTT_DATABASE_URL"]
    database = PurePosixPath(url.removeprefix("sqlite:///"))
    volume, mount = mounted_at(workload, str(database.parent))
    assert volume["persistentVolumeClaim"]["claimName"] == DB_CLAIM
    assert not mount.get("readOnly", False), "SQLite writes its file, journal and WAL there"


@pytest.mark.parametrize("index", [0, 1], ids=["transcoder", "job"])
def test_the_transcoder_reads_the_service_token_from_its_secret(index: int) -> None:
    workload = writers()[index]
    token_file = PurePosixPath(env(workload)["OTT_SERVICE_TOKEN_FILE"])
    volume, mount = mounted_at(workload, str(token_file.parent))
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secrets.SERVICE_TOKEN
    assert volume["secret"]["items"] == [{"key": secrets.SERVICE_TOKEN_KEY, "path": token_file.name}]
    # Never auth's private key.
    names = {v.get("secret", {}).get("secretName") for v in pod_spec(workload)["volumes"]}
    assert secrets.SIGNING_KEY not in names


@pytest.mark.parametrize("index", [0, 1], ids=["transcoder", "job"])
def test_the_transcoder_has_a_writable_tmp(index: int) -> None:
    # Read-only root: the sample clip, ffprobe's scratch files and Python's tempfile go here.
    workload = writers()[index]
    assert main_container(workload)["securityContext"]["readOnlyRootFilesystem"] is True
    volume, mount = mounted_at(workload, "/tmp")
    assert "emptyDir" in volume and not mount.get("readOnly", False)


def test_the_media_claim_is_shared_by_the_origin_the_transcoder_and_the_job() -> None:
    claim = only("PersistentVolumeClaim", MEDIA_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert manifest.labels(claim)[manifest.LAYER_LABEL] == LAYER
    users = claim_users(MEDIA_CLAIM)
    assert set(users) == {"deployment/origin", "deployment/transcoder", f"job/{JOB}"}
    # One group for the volume's files: a pod's fsGroup may re-own the volume, so pods that
    # disagreed would take it from each other at every start.
    groups = {manifest.ref(o): pod_spec(o)["securityContext"].get("fsGroup") for o in users.values()}
    assert len(set(groups.values())) == 1, groups


# -- the origin --------------------------------------------------------------------------------


def origin_config_map() -> dict[str, Any]:
    (found,) = [o for o in base() if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("origin-config-")]
    return found


def test_the_origin_config_map_is_render_kube_byte_for_byte() -> None:
    text = origin_config_map()["data"]["nginx.conf"]
    assert text.encode() == origin.render_kube().encode(), "stale: run `python -m labkit.platform.layers`"
    committed = repo_root() / "k8s" / "base" / "media" / "origin" / "nginx.conf"
    assert committed.read_bytes() == text.encode()
    assert committed.resolve() == origin.KUBE_CONFIG.resolve(), \
        "where `python -m labkit.platform.layers` writes"
    assert manifest.labels(origin_config_map())[manifest.LAYER_LABEL] == LAYER


def test_the_origin_runs_the_mounted_config_as_non_root() -> None:
    deployment = only("Deployment", media.ORIGIN.name)
    spec = main_container(deployment)
    assert spec["name"] == media.ORIGIN.name
    command = spec["command"]
    assert command[0] == "nginx" and command[-2:] == ["-g", "daemon off;"]
    config = PurePosixPath(command[command.index("-c") + 1])
    volume, mount = mounted_at(deployment, str(config.parent))
    assert volume["configMap"]["name"] == origin_config_map()["metadata"]["name"]
    assert mount["readOnly"] is True and config.name == "nginx.conf"
    # The gateway's image: nginx without root (uid 101), at the nginx release tested locally.
    assert spec["image"] == main_container(only("Deployment", "gateway"))["image"]
    assert spec["image"].startswith("docker.io/nginxinc/nginx-unprivileged:")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] != 0


def test_the_origin_serves_the_media_claim_read_only_at_its_configured_root() -> None:
    text = origin.render_kube()
    (root,) = re.findall(r"^\s*root (\S+);", text, flags=re.MULTILINE)
    assert root == origin.KUBE_MEDIA_ROOT
    volume, mount = mounted_at(only("Deployment", media.ORIGIN.name), root)
    assert volume["persistentVolumeClaim"] == {"claimName": MEDIA_CLAIM, "readOnly": True}
    assert mount["readOnly"] is True


def test_the_origin_listens_where_its_service_sends_and_writes_only_to_its_empty_dir() -> None:
    deployment = only("Deployment", media.ORIGIN.name)
    text = origin.render_kube()
    (listen,) = re.findall(r"^\s*listen 0\.0\.0\.0:(\d+);", text, flags=re.MULTILINE)
    assert int(listen) == media.ORIGIN.port("http").container == origin.CONTAINER_PORT
    (pid,) = re.findall(r"^pid (\S+);", text, flags=re.MULTILINE)
    temp_dir = str(PurePosixPath(pid).parent)
    volume, _ = mounted_at(deployment, temp_dir)
    assert "emptyDir" in volume
    for path in re.findall(r"_temp_path (\S+);", text):
        assert PurePosixPath(path).is_relative_to(temp_dir), path
    writable = {m["mountPath"] for m in main_container(deployment)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {temp_dir}


# -- the transcode-sample Job -------------------------------------------------------------------


def job_arguments() -> list[str]:
    command = main_container(job())["command"]
    assert command[:3] == ["python", "-m", "ott.transcoder"], command
    assert "args" not in main_container(job())
    return list(command[3:])


def test_the_job_runs_the_one_shot_mode_with_arguments_the_command_line_accepts() -> None:
    arguments = job_arguments()
    args = transcoder.parser().parse_args(arguments)  # SystemExit (a failed test) when it would refuse them
    assert args.mode == "run"
    assert args.source is None and args.sample_seconds and args.sample_seconds > 0
    assert re.fullmatch(TITLE_ID_PATTERN, args.title)
    ladders.load(args.ladder)  # a ladder of ladder.yml
    # What main() builds from them: a valid job (main would exit 2 otherwise).
    transcoder.JobOptions(
        title_id=args.title,
        encrypt=args.encrypt,
        ladder=args.ladder,
        preset=args.preset,
        name=args.name,
        tier=args.tier,
    )


def test_the_job_has_the_transcoders_image_environment_volumes_and_lock_down() -> None:
    deployment, workload = transcoder_deployment(), job()
    ours, theirs = main_container(workload), main_container(deployment)
    assert ours["image"] == theirs["image"]
    variables = env(workload)
    extra = {k: v for k, v in variables.items() if k not in env(deployment)}
    assert set(extra) == {"OTT_METRICS_LINGER"}
    assert {k: v for k, v in variables.items() if k in env(deployment)} == env(deployment)
    assert ours["volumeMounts"] == theirs["volumeMounts"]
    # All but the canary's, which only the Deployment's init container reads (test_probes_on_kube.py).
    assert pod_spec(workload)["volumes"] == [v for v in pod_spec(deployment)["volumes"] if v["name"] != "canary"]
    assert ours["securityContext"] == theirs["securityContext"]
    assert pod_spec(workload)["securityContext"] == pod_spec(deployment)["securityContext"]
    for key in ("automountServiceAccountToken", "enableServiceLinks"):
        assert pod_spec(workload)[key] is False


def test_the_job_runs_once_and_is_bounded_in_time() -> None:
    spec = job()["spec"]
    assert pod_spec(job())["restartPolicy"] == "Never"
    assert 0 <= spec["backoffLimit"] <= 1
    assert 0 < spec["activeDeadlineSeconds"] <= 3600
    assert spec["ttlSecondsAfterFinished"] > 0, "a finished Job is removed in time"
    assert manifest.labels(job())[manifest.LAYER_LABEL] == LAYER


def scrape_interval_seconds() -> float:
    (config_map,) = [o for o in base() if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    interval = str(yaml.safe_load(config_map["data"]["prometheus.yml"])["global"]["scrape_interval"])
    match = re.fullmatch(r"(\d+)s", interval)
    assert match, f"scrape_interval {interval!r}: expected seconds"
    return float(match.group(1))


def test_the_jobs_pod_is_scraped_on_its_http_port_while_it_runs_and_after() -> None:
    template = job()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (http,) = [p for p in main_container(job())["ports"] if p["name"] == "http"]
    variables = env(job())
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http["containerPort"]) == variables["OTT_PORT"]
    assert annotations["prometheus.io/path"] == media.TRANSCODER.metrics_path
    assert variables["OTT_HOST"] == "0.0.0.0", "Prometheus scrapes the pod's address"
    # /metrics outlives the job long enough for a last scrape of the final counts.
    assert float(variables["OTT_METRICS_LINGER"]) >= 2 * scrape_interval_seconds()


def test_no_service_sends_requests_to_the_jobs_pod() -> None:
    labels = job()["spec"]["template"]["metadata"]["labels"]
    assert labels[manifest.NAME_LABEL] == JOB_NAME_LABEL != media.TRANSCODER.name
    assert manifest.labels(job())[manifest.NAME_LABEL] == JOB_NAME_LABEL
    for service in (o for o in base() if o["kind"] == "Service"):
        selector = service["spec"].get("selector", {})
        selected = bool(selector) and all(labels.get(k) == v for k, v in selector.items())
        assert not selected, f"{manifest.ref(service)} selects the Job's pod"


# -- the layer ---------------------------------------------------------------------------------


# A sidecar (an nginx's exporter) is in the pods of the one it follows: no Deployment of its own.
@pytest.mark.parametrize("component", [c for c in media.LAYER.components if c.follows is None], ids=lambda c: c.name)
def test_every_object_of_the_layer_is_labelled_media(component: Component) -> None:
    for kind in ("Deployment", "Service"):
        assert manifest.labels(only(kind, component.name))[manifest.LAYER_LABEL] == LAYER


def test_the_media_layer_follows_the_apis_layer_in_the_base() -> None:
    # The transcoder uses the apis layer's database claim and token Secret.
    kustomization = yaml.safe_load((repo_root() / "k8s" / "base" / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert resources.index(LAYER) == resources.index("apis") + 1


# -- the services image ------------------------------------------------------------------------


def test_the_image_installs_ffmpeg_and_the_samples_font_without_recommends() -> None:
    instructions = dockerfile()
    runs = [args for word, args in instructions if word == "RUN"]
    (apt,) = [shlex.split(r) for r in runs if "apt-get install" in r]
    install = apt[apt.index("install") : apt.index("&&", apt.index("install"))]
    assert {"-y", "--no-install-recommends", "ffmpeg", "fonts-dejavu-core"} <= set(install)
    assert "apt-get update" in " ".join(apt)
    assert "rm -rf /var/lib/apt/lists/*" in " ".join(apt), "no package lists left in the image"
    # As root, before the image switches to its user.
    words = [word for word, _ in instructions]
    (apt_index,) = [i for i, (word, args) in enumerate(instructions) if word == "RUN" and "apt-get install" in args]
    assert apt_index < words.index("USER")
    # The font file the sample clip burns its clock in is fonts-dejavu-core's (Debian).
    assert str(sample.FONT.parent) == "/usr/share/fonts/truetype/dejavu"


def test_the_ladder_file_is_installed_with_the_package() -> None:
    with (repo_root() / "pyproject.toml").open("rb") as fh:
        package_data = tomllib.load(fh)["tool"]["setuptools"]["package-data"]
    patterns = [*package_data.get("*", []), *package_data.get("ott.media", [])]
    assert any(fnmatch(ladders.LADDER_FILE.name, p) for p in patterns), "the image would have no ladder.yml"
