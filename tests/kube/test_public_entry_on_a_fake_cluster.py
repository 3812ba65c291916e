"""The kube target gives viewers URLs they reach, against the fake API server (kmock, test_kube_target.py's).

- ``up`` applies the ConfigMap ott-public right after the Namespace, before the pods that read it,
  and stamps its hash on license's and the transcoder's pod templates (a change rolls them);
- each PoP is its own Service: ``labkit.pops.pop_urls`` gives one URL per PoP, and each one
  reaches that PoP's pod, through a port-forward of its own on the local target's port;
- ``scale edge 3`` rewrites ott-public's edges and rolls license, so it signs for three PoPs;
- node ports that do not answer from this machine end in port-forwards, with a message saying why
  and what to do (the cluster config), and the readers rolled with the new URLs;
- a PoP's access log is read from its pod's log, where its exporter echoes each line;
- a live playlist (the drill of notebook 03) is written and removed by python in a transcoder pod
  (the API's exec), and the script it runs, run here, writes the file aside and renames it over.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
from test_kube_target import (
    KUBE_BASE_PORT,
    NAMESPACE,
    POD_REPLY,
    STATEFULSETS,
    FakeCluster,
    deployment,
    header,
    pod,
    serve_istio,
    settle_deployments,
)

from labkit.clients import pops
from labkit.core.errors import ConfigError, KubeError
from labkit.drills import live_playlist
from labkit.platform.layers import apis, cdn, media
from labkit.platform.layers.media import origin
from labkit.targets.kube import entry, manifest
from labkit.targets.kube import target as kube_target
from labkit.targets.kube.target import KubeTarget

CONFIGMAPS = "v1/configmaps"
READ_BY_LICENSE = {entry.GATEWAY_KEY, entry.EDGES_KEY}
DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
SERVICES = "v1/services"


def public(fake: FakeCluster) -> dict[str, str]:
    stored = fake.stored(CONFIGMAPS, entry.PUBLIC_CONFIG)
    assert stored is not None, "no configmap/ott-public"
    data: dict[str, str] = stored["data"]
    return data


def local(offset: int) -> str:
    return f"http://127.0.0.1:{KUBE_BASE_PORT + offset}"


def pop_pod(replica: int) -> dict[str, Any]:
    """A ready pod of the edge StatefulSet, labelled as its controller labels it."""
    made = pod(cdn.EDGE.name)
    made["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = cdn.pop_id(replica)
    return made


def test_up_writes_ott_public_before_its_readers_and_stamps_its_hash_on_them(
    fake: FakeCluster, target: KubeTarget
) -> None:
    settle_deployments(serve_istio(fake))   # Istio installed: the lab's mesh (on by default) needs it

    target.up(["apis"])

    data = public(fake)
    assert data[entry.MODE_KEY] == "forwards"
    assert data[entry.GATEWAY_KEY] == local(0) == apis.GATEWAY.url(target.cfg)
    assert data[entry.ORIGIN_KEY] == local(60)
    assert json.loads(data[entry.EDGES_KEY]) == {"edge-0": local(100), "edge-1": local(101)}
    order = fake.requests()
    written = next(i for i, r in enumerate(order) if r.method == "PATCH" and r.name == entry.PUBLIC_CONFIG)
    namespace = next(i for i, r in enumerate(order) if r.url.path == f"/api/v1/namespaces/{NAMESPACE}")
    first_deployment = next(i for i, r in enumerate(order) if r.method == "PATCH" and r.data["kind"] == "Deployment")
    assert namespace < written < first_deployment
    assert header(order[written], "Content-Type") == "application/apply-patch+yaml"
    license = fake.stored(DEPLOYMENTS, "license")
    assert license is not None
    stamp = license["spec"]["template"]["metadata"]["annotations"][entry.CONFIG_HASH_ANNOTATION]
    # The hash of what license reads: its key URIs' base and its PoPs.
    assert entry.keys_read(license) == {entry.GATEWAY_KEY, entry.EDGES_KEY}
    assert stamp == entry.config_hash({"data": data}, {entry.GATEWAY_KEY, entry.EDGES_KEY})
    # Only the readers: the other services' pods do not roll when viewers' URLs change.
    auth = fake.stored(DEPLOYMENTS, "auth")
    assert auth is not None
    assert entry.CONFIG_HASH_ANNOTATION not in (auth["spec"]["template"]["metadata"].get("annotations") or {})
    # The gateway viewers reach is the one license writes into key URIs.
    assert target.endpoint("gateway") == data[entry.GATEWAY_KEY]


def test_each_pop_is_reached_through_its_own_service_and_port(fake: FakeCluster, target: KubeTarget) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    for replica in range(2):
        fake.put(PODS, cdn.pop_id(replica), pop_pod(replica))

    urls = pops.pop_urls(target)

    # The local target's PoP URLs: license's edges file names the same ones.
    assert urls == {"edge-0": local(100), "edge-1": local(101)} == json.loads(public(fake)[entry.EDGES_KEY])
    for name, url in urls.items():
        answer = httpx.get(f"{url}/healthz", timeout=10)
        assert (answer.status_code, answer.content) == (200, POD_REPLY)
        forwards = [r for r in fake.requests("GET") if r.subresource == "portforward"]
        # Through that PoP's Service to that PoP's pod, and no other.
        assert forwards[-1].url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/portforward"
    assert pops.reachable(f"{urls['edge-1']}/s/t/1/title/master.m3u8", urls) == f"{local(101)}/s/t/1/title/master.m3u8"


def test_scaling_the_edge_to_three_tells_license_of_three_pops(fake: FakeCluster, target: KubeTarget) -> None:
    settle_deployments(fake)
    target.up(["cdn"])
    license = deployment("license")
    license["spec"]["template"] = {"metadata": {"labels": {manifest.NAME_LABEL: "license"}},
                                   "spec": {"containers": [{"name": "license", "image": "x"}]}}
    fake.put(DEPLOYMENTS, "license", license)
    before = len([r for r in fake.requests("PATCH") if r.name == "license"])

    status = target.scale("edge", 3)

    stored = fake.stored(STATEFULSETS, "edge")
    assert stored is not None and stored["spec"]["replicas"] == 3
    edges = json.loads(public(fake)[entry.EDGES_KEY])
    assert edges == {"edge-0": local(100), "edge-1": local(101), "edge-2": local(102)}
    assert status.replica_urls == edges
    rolled = [r for r in fake.requests("PATCH") if r.name == "license"][before:]
    assert len(rolled) == 1
    assert header(rolled[0], "Content-Type") == "application/strategic-merge-patch+json"
    annotations = rolled[0].data["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {entry.CONFIG_HASH_ANNOTATION: entry.config_hash({"data": public(fake)}, READ_BY_LICENSE)}
    # The transcoder reads only the origin's URL, which did not change: it is not rolled (its jobs go on).
    assert not [r for r in fake.requests("PATCH") if r.name == "transcoder"]

    # The same count again (start after stop does this) changes nothing and rolls nothing.
    target.scale("edge", 3)
    assert len([r for r in fake.requests("PATCH") if r.name == "license"][before:]) == 1


def test_node_ports_that_do_not_answer_end_in_port_forwards_saying_what_to_do(
    fake: FakeCluster, target: KubeTarget, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(entry.ENTRY_ENV)
    monkeypatch.setattr(kube_target, "ENTRY_TIMEOUT", 0.6)
    settle_deployments(serve_istio(fake))   # Istio installed: the lab's mesh (on by default) needs it
    # Nothing listens on the gateway's node port of this machine: a kind cluster made without its config.
    with pytest.raises(httpx.HTTPError):
        httpx.get("http://127.0.0.1:30000/healthz", timeout=1)

    target.up(["apis"])

    out = capsys.readouterr().out
    assert "the lab's node ports do not answer at 127.0.0.1" in out
    assert "falling back to port-forwards" in out and "k8s/overlays/kind/cluster.yaml" in out
    applied = [r.data["data"] for r in fake.requests("PATCH") if r.name == entry.PUBLIC_CONFIG]
    assert [d[entry.MODE_KEY] for d in applied] == ["nodeport", "forwards"]
    assert applied[0][entry.GATEWAY_KEY] == "http://127.0.0.1:30000"
    assert public(fake)[entry.GATEWAY_KEY] == local(0)
    for reader in ("license",):   # the apis layer: the transcoder (media) is not applied
        stored = fake.stored(DEPLOYMENTS, reader)
        assert stored is not None
        stamp = stored["spec"]["template"]["metadata"]["annotations"][entry.CONFIG_HASH_ANNOTATION]
        assert stamp == entry.config_hash({"data": public(fake)}, entry.keys_read(stored))
    assert target.endpoint("gateway") == local(0)


def test_a_pops_access_log_is_its_exporters_echo_in_the_pod_log(fake: FakeCluster, target: KubeTarget) -> None:
    """nginx's JSON lines, as the exporter echoes them (--echo), between the exporter's own JSON log lines."""
    request = {"time": "2026-12-04T21:00:00+00:00", "msec": 1796418000.125, "pop": "edge-1", "method": "GET",
               "path": "/lab-clock/v1/360p/seg_00001.m4s", "status": 200, "bytes": 1200, "request_time": 0.002,
               "cache": "HIT", "cmcd": "sid%3D%22s1%22", "request_id": "r1"}
    own = {"time": "2026-12-04 21:00:00", "level": "INFO", "name": "ott.edgelog", "message": "started",
           "event": "started", "pop": "edge-1"}
    log = kmock.resource("", "v1", "pods"), kmock.subresource("log")
    text = f"{json.dumps(own)}\n{json.dumps(request)}\nnot json\n".encode()
    fake.server[(*log, kmock.name("edge-1"))] << text

    assert target.access_log("edge-1") == [request]
    (read,) = [r for r in fake.requests("GET") if r.subresource == "log"]
    assert read.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/edge-1/log"
    assert read.params == {"container": cdn.EXPORTER.name}
    # A PoP whose pod does not exist has logged nothing; a name that is no PoP is refused.
    assert target.access_log("edge-3") == []
    with pytest.raises(ConfigError, match="no PoP named 'edge-9'"):
        target.access_log("edge-9")


def transcoder_pod(fake: FakeCluster) -> None:
    """The transcoder's Service and one ready pod behind it (its pods mount the media volume read-write)."""
    service = {"spec": {"selector": {manifest.NAME_LABEL: media.TRANSCODER.name},
                        "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}}
    fake.put(SERVICES, media.TRANSCODER.name, service)
    fake.put(PODS, "transcoder-a", pod(media.TRANSCODER.name))


def run_here(command: list[str], pod_root: str, root: Path) -> None:
    """Run a command the target sent to a pod with this machine's python, the pod's media root mapped to ``root``."""
    assert command[:2] == ["python", "-c"]
    args = [a.replace(pod_root, str(root)) for a in command[3:]]
    subprocess.run([sys.executable, "-c", command[2], *args], check=True, timeout=30)


def test_a_live_playlist_is_written_and_removed_in_a_transcoder_pod(
    fake: FakeCluster, target: KubeTarget, tmp_path: Path
) -> None:
    transcoder_pod(fake)
    channel = live_playlist.LiveChannel.new(target, "lab-clock-cdn")

    channel.publish(7)
    channel.publish(8)

    (first, second) = fake.server.execs
    path, command, container = second
    assert path == f"/api/v1/namespaces/{NAMESPACE}/pods/transcoder-a/exec"
    assert container == media.TRANSCODER.name
    assert command[3] == f"{origin.KUBE_MEDIA_ROOT}/live/{channel.name}/index.m3u8"
    # The script the pod runs, run here: the playlist lands whole, written aside and renamed over.
    run_here(first[1], origin.KUBE_MEDIA_ROOT, tmp_path)
    run_here(command, origin.KUBE_MEDIA_ROOT, tmp_path)
    written = tmp_path / "live" / channel.name / "index.m3u8"
    assert live_playlist.sequence_of(written.read_text()) == 8
    assert sorted(p.name for p in written.parent.iterdir()) == ["index.m3u8"]

    channel.remove()
    _, command, _ = fake.server.execs[-1]
    assert command[3] == f"{origin.KUBE_MEDIA_ROOT}/live/{channel.name}"
    run_here(command, origin.KUBE_MEDIA_ROOT, tmp_path)
    run_here(command, origin.KUBE_MEDIA_ROOT, tmp_path)   # twice is fine: nothing left to remove
    assert not written.parent.exists()


def test_a_command_that_fails_in_the_pod_says_so_and_paths_outside_the_media_root_are_refused(
    fake: FakeCluster, target: KubeTarget
) -> None:
    transcoder_pod(fake)
    fake.server.exec_failure = "command terminated with non-zero exit code: error executing command"
    with pytest.raises(KubeError, match="the command in pod/transcoder-a failed: command terminated") as caught:
        target.write_media("live/x/index.m3u8", b"#EXTM3U\n")
    assert "done" in caught.value.message   # the pod's output, to see why
    before = len(fake.server.execs)
    for bad in ("../etc/passwd", "/etc/passwd", ""):
        with pytest.raises(ConfigError, match="not a path inside the media root"):
            target.write_media(bad, b"x")
    assert len(fake.server.execs) == before
