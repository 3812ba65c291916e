"""The k6 load test on Kubernetes, offline: k8s/loadtest renders, validates and agrees with the lab.

- the kustomization renders with ``kubectl kustomize`` and every object validates strictly against
  the schemas of Kubernetes :data:`K8S_VERSION`; everything is the lab's (``ottlab down`` deletes it);
- the Job runs k6 once, bounded in time, locked down, with the script from the generated ConfigMap,
  which is ``viewer-journey.js`` byte for byte;
- k6's Prometheus remote-write output points at the prometheus Service of k8s/base, which runs with
  the remote-write receiver (a flag the machine's Prometheus, the release the manifest runs, accepts);
- the environment the Job sets is what the script reads, the gateway URL names the gateway Service,
  and the title is the one the transcode-sample Job publishes;
- every API path the script calls is routed by the gateway (labkit.platform.layers.apis.routes) to a service that has
  that route for that method;
- the script parses (``node --check``), and its helpers, run by node with stand-ins for the k6
  modules, write CMCD that :mod:`ott.cmcd` reads back, read playlists as the ``m3u8`` library does
  and write QoE error events that :mod:`ott.beacon` accepts.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import m3u8
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from test_manifests import K8S_VERSION, NAMESPACE, rendered

from labkit.core.config import repo_root
from labkit.platform.layers import cdn
from labkit.platform.layers.apis import routes
from labkit.targets.kube import manifest
from ott import beacon, cmcd

LOADTEST = repo_root() / "k8s" / "loadtest"
SCRIPT = LOADTEST / "viewer-journey.js"
JOB = "k6-viewer-journey"
NODE_TIMEOUT = 30.0


@functools.cache
def objects() -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(LOADTEST))


def job() -> dict[str, Any]:
    (found,) = [o for o in objects() if o["kind"] == "Job" and o["metadata"]["name"] == JOB]
    return found


def k6() -> dict[str, Any]:
    (container,) = job()["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in k6()["env"]}


def service_url(name: str) -> str:
    """``http://<Service>:<its http port>`` of the Service ``name`` in k8s/base."""
    (service,) = [o for o in rendered("base") if o["kind"] == "Service" and o["metadata"]["name"] == name]
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    return f"http://{name}:{http['port']}"


def script_reads() -> set[str]:
    """The environment variables the script reads (``env.NAME``, ``__ENV.NAME``)."""
    return set(re.findall(r"\b(?:env|__ENV)\.([A-Z][A-Z0-9_]*)", SCRIPT.read_text()))


def script_api() -> dict[str, tuple[str, str]]:
    """The script's ``API`` table: name -> (method, path on the gateway)."""
    (block,) = re.findall(r"export const API = \{(.*?)\n\};", SCRIPT.read_text(), flags=re.DOTALL)
    return {name: (method, path) for name, method, path in re.findall(r"(\w+): \['(\w+)', '([^']+)'\]", block)}


# -- the manifests ---------------------------------------------------------------------------


def test_renders_and_validates_strictly_against_the_kubernetes_schema() -> None:
    assert {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else manifest.name(o))
            for o in objects()} == {("Job", JOB), ("ConfigMap", JOB)}
    problems = []
    for obj in objects():
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{manifest.ref(obj)}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_everything_is_the_labs_and_in_its_namespace() -> None:
    for obj in objects():
        assert obj["metadata"]["namespace"] == NAMESPACE, manifest.ref(obj)
        assert manifest.labels(obj)[manifest.PART_OF_LABEL] == manifest.PART_OF, manifest.ref(obj)
    # `ottlab down` waits for the lab's pods by this label.
    assert job()["spec"]["template"]["metadata"]["labels"][manifest.PART_OF_LABEL] == manifest.PART_OF


def test_the_job_runs_once_bounded_in_time_and_locked_down() -> None:
    spec = job()["spec"]
    assert spec["backoffLimit"] == 0
    assert 0 < spec["activeDeadlineSeconds"] <= 3600
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    container = k6()
    assert re.fullmatch(r"(docker\.io/)?grafana/k6:\d+\.\d+\.\d+", container["image"]), "pin a k6 release"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_k6_runs_the_script_of_the_generated_config_map_byte_for_byte() -> None:
    (config_map,) = [o for o in objects() if o["kind"] == "ConfigMap"]
    assert config_map["data"][SCRIPT.name].encode() == SCRIPT.read_bytes()
    args = k6()["args"]
    assert args[0] == "run"
    script = PurePosixPath(args[-1])
    assert script.name == SCRIPT.name
    (mount,) = [m for m in k6()["volumeMounts"] if m["mountPath"] == str(script.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in job()["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_k6_writes_its_metrics_to_the_labs_prometheus() -> None:
    args = k6()["args"]
    outputs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-o", "--out")]
    assert outputs == ["experimental-prometheus-rw"]
    assert env()["K6_PROMETHEUS_RW_SERVER_URL"] == f"{service_url('prometheus')}/api/v1/write"
    stats = env()["K6_PROMETHEUS_RW_TREND_STATS"].split(",")
    assert stats and all(re.fullmatch(r"p\(\d+(\.\d+)?\)|count|sum|min|max|avg|med", s) for s in stats), stats


def test_prometheus_receives_remote_writes() -> None:
    (prometheus,) = [o for o in rendered("base") if o["kind"] == "Deployment" and manifest.name(o) == "prometheus"]
    (container,) = prometheus["spec"]["template"]["spec"]["containers"]
    assert "--web.enable-remote-write-receiver" in container["args"]


@pytest.mark.integration
def test_the_machines_prometheus_knows_the_remote_write_receiver_flag() -> None:
    # The local target runs the same release as the manifest (v2.42): the flag must exist in it.
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make bootstrap`"
    done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert "--web.enable-remote-write-receiver" in done.stdout + done.stderr


def test_the_job_sets_what_the_script_reads_and_points_at_the_gateway_service() -> None:
    ours = {name for name in env() if not name.startswith("K6_")}
    reads = script_reads()
    assert ours <= reads, f"the script does not read {sorted(ours - reads)}"
    assert {"GATEWAY_URL", "TITLE", "VUS", "DURATION"} <= ours
    assert env()["GATEWAY_URL"] == service_url("gateway")
    # The script's defaults are the cluster's too.
    assert f"env.GATEWAY_URL || '{service_url('gateway')}'" in SCRIPT.read_text()
    assert int(env()["VUS"]) >= 1 and re.fullmatch(r"\d+[smh]", env()["DURATION"])


def test_in_the_cluster_pops_and_keys_are_reached_by_their_services(node: str, tmp_path: Path) -> None:
    """License signs for the public entry; the Job (IN_CLUSTER=1) reaches edge-N's Service and the gateway's."""
    assert env()["IN_CLUSTER"] == "1"
    shutil.copyfile(SCRIPT, tmp_path / "viewer-journey.mjs")
    (tmp_path / "node_modules" / "k6").mkdir(parents=True)
    stubs = tmp_path / "node_modules" / "k6"
    (stubs / "package.json").write_text(json.dumps({"name": "k6", "type": "module", "exports": {
        ".": "./index.js", "./http": "./http.js", "./metrics": "./metrics.js"}}))
    (stubs / "index.js").write_text("export function check() { return true; }\nexport function sleep() {}\n")
    (stubs / "http.js").write_text("export default {};\n")
    (stubs / "metrics.js").write_text("export class Counter { add() {} }\nexport class Rate { add() {} }\n"
                                      "export class Trend { add() {} }\n")
    # k6 hands the script __ENV; node has none: a module evaluated first sets it from the process's environment.
    (tmp_path / "k6env.mjs").write_text("globalThis.__ENV = { IN_CLUSTER: process.env.IN_CLUSTER };\n")
    harness = tmp_path / "harness.mjs"
    harness.write_text("import './k6env.mjs';\nimport { inCluster } from './viewer-journey.mjs';\n"
                       "console.log(JSON.stringify([\n"
                       "  inCluster('http://127.0.0.1:30101/s/t/9/sample/v1/master.m3u8?a=1', 'http://edge-1:8080'),\n"
                       "  inCluster('http://127.0.0.1:30000/api/license/keys/sample/0a', 'http://gateway:8080/'),\n"
                       "]));\n")
    answers = {}
    for flag in ("1", ""):
        done = subprocess.run([node, str(harness)], capture_output=True, text=True, timeout=NODE_TIMEOUT,
                              check=True, cwd=tmp_path, env={"PATH": os.environ.get("PATH", ""), "IN_CLUSTER": flag})
        answers[flag] = json.loads(done.stdout)
    assert answers["1"] == ["http://edge-1:8080/s/t/9/sample/v1/master.m3u8?a=1",
                            "http://gateway:8080/api/license/keys/sample/0a"]
    # Outside the cluster (ottlab k6 on this machine) the URLs are used as license wrote them.
    assert answers[""] == ["http://127.0.0.1:30101/s/t/9/sample/v1/master.m3u8?a=1",
                           "http://127.0.0.1:30000/api/license/keys/sample/0a"]
    # edge-N is a Service of the lab (one per PoP) on the port the script asks.
    for pop in range(cdn.MAX_POPS):
        assert service_url(cdn.pop_id(pop)) == f"http://{cdn.pop_id(pop)}:8080"
        assert "`http://${chosen.pop}:8080`" in SCRIPT.read_text()


def test_the_title_is_the_one_the_transcode_job_publishes() -> None:
    (transcode,) = [o for o in rendered("base") if o["kind"] == "Job" and manifest.name(o) == "transcode-sample"]
    command = transcode["spec"]["template"]["spec"]["containers"][0]["command"]
    assert env()["TITLE"] == command[command.index("--title") + 1]
    assert f"env.TITLE || '{env()['TITLE']}'" in SCRIPT.read_text()


# -- the script's API calls ------------------------------------------------------------------


def service_routes(service: str) -> set[tuple[str, str]]:
    """(method, path) of every route of the module ``ott.<service>``'s routers."""
    module = importlib.import_module(f"ott.{service}")
    found = set()
    for router in (v for v in vars(module).values() if isinstance(v, APIRouter)):
        for route in router.routes:
            if isinstance(route, APIRoute):
                found |= {(method, route.path) for method in route.methods}
    return found


def test_every_api_path_of_the_script_is_a_route_of_the_gateway_and_of_its_service() -> None:
    api = script_api()
    assert {"login", "authorize", "endSession"} <= set(api)
    by_prefix = {route.prefix: route for route in routes.ROUTES}
    for name, (method, path) in api.items():
        prefix = "/".join(path.split("/", 3)[:3]) + "/"
        assert prefix in by_prefix, f"{name}: the gateway routes no {prefix} (routes.ROUTES)"
        rest = "/" + path.split("/", 3)[3]
        service = by_prefix[prefix].service
        assert (method, rest) in service_routes(service), f"{name}: ott.{service} has no {method} {rest}"


def test_the_script_calls_each_api_with_its_method() -> None:
    calls = re.findall(r"http\.(get|post|put|del)\(api\('(\w+)'", SCRIPT.read_text())
    methods = {"get": "GET", "post": "POST", "put": "PUT", "del": "DELETE"}
    api = script_api()
    assert calls and {name for _, name in calls} == set(api)
    for verb, name in calls:
        assert methods[verb] == api[name][0], f"{name} is called with {verb}"


# -- the script itself, with node ------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    assert binary, "node is not installed: run `make bootstrap`"
    return binary


def test_the_script_parses(node: str, tmp_path: Path) -> None:
    # k6 scripts are ES modules; `node --check` parses without resolving imports such as 'k6/http'.
    copy = tmp_path / "viewer-journey.mjs"
    shutil.copyfile(SCRIPT, copy)
    done = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=NODE_TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stderr
    # ... and it does catch a syntax error.
    copy.write_text(SCRIPT.read_text().replace("export default function () {", "export default function ( {", 1))
    broken = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=NODE_TIMEOUT,
                            check=False)
    assert broken.returncode != 0 and "SyntaxError" in broken.stderr


MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=1650000,AVERAGE-BANDWIDTH=1500000,RESOLUTION=1280x720,CODECS="avc1.64001f,mp4a.40.2"
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=770000,RESOLUTION=854x480,CODECS="avc1.64001e,mp4a.40.2"
480p/index.m3u8
"""
MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-KEY:METHOD=AES-128,URI="http://gateway:8080/api/license/keys/sample/0123456789abcdef",IV=0x00000000000000000000000000000001
#EXT-X-MAP:URI="init.mp4"
#EXTINF:4.000000,
seg_00000.m4s
#EXTINF:2.500000,
seg_00001.m4s
#EXT-X-ENDLIST
"""
HARNESS = """
import {
  cmcdPayload, withCmcd, parseMultivariant, parseMedia, resolve, Buffer, errorEvent,
} from './viewer-journey.mjs';
let t = 100;
const b = new Buffer(() => t);
const trace = [b.add(4)];            // playback starts at t=100 with 4 s
t = 103; trace.push(b.level());       // 1 s ahead
t = 106; trace.push(b.level());       // ran dry at t=104
trace.push(b.starved); t = 107.5;
trace.push(b.add(4));                 // the stall lasted 3.5 s
t = 108.5; trace.push(b.level());
console.log(JSON.stringify({
  payload: cmcdPayload({ sid: 'a"b', cid: 'sample', sf: 'h', st: 'v', ot: 'av', br: 1650, tb: 1650, bl: 2300,
                         d: 4000, su: true, bs: null, mtp: 5400 }),
  url: withCmcd('http://edge:8080/s/t/1/sample/v1/720p/seg_00000.m4s?x=1', { ot: 'i', su: true }),
  master: parseMultivariant(process.env.MASTER),
  media: parseMedia(process.env.MEDIA),
  resolved: [resolve('http://edge:8080/s/t/1/sample/v1/master.m3u8', '720p/index.m3u8'),
             resolve('http://edge:8080/a/b.m3u8?x=1', '/c.m4s'),
             resolve('http://edge:8080/a/b.m3u8', 'http://gateway:8080/k')],
  trace,
  errors: [errorEvent(80, 'license', { status: 403, json: () => 'not_entitled' }, false),
           errorEvent(900, 'master', { status: 0, json: () => { throw new Error('no body'); } }, false),
           errorEvent(5000, 'segment', { status: 404, json: () => '' }, true)],
}));
"""


def test_the_scripts_helpers_write_cmcd_and_read_playlists_as_the_platform_does(node: str, tmp_path: Path) -> None:
    # Stand-ins for the k6 modules the script imports: its helpers need none of them.
    stubs = tmp_path / "node_modules" / "k6"
    stubs.mkdir(parents=True)
    (stubs / "package.json").write_text(json.dumps({"name": "k6", "type": "module", "exports": {
        ".": "./index.js", "./http": "./http.js", "./metrics": "./metrics.js"}}))
    (stubs / "index.js").write_text("export function check() { return true; }\nexport function sleep() {}\n")
    (stubs / "http.js").write_text("export default {};\n")
    (stubs / "metrics.js").write_text("export class Counter { add() {} }\nexport class Rate { add() {} }\n"
                                      "export class Trend { add() {} }\n")
    shutil.copyfile(SCRIPT, tmp_path / "viewer-journey.mjs")
    (tmp_path / "harness.mjs").write_text(HARNESS)
    done = subprocess.run([node, "harness.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=NODE_TIMEOUT,
                          check=False, env={"MASTER": MASTER, "MEDIA": MEDIA, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    parsed = cmcd.parse(out["payload"])
    assert parsed == cmcd.Cmcd(sid='a"b', cid="sample", sf="h", st="v", ot="av", br=1650, tb=1650, bl=2300,
                               d=4000, su=True, mtp=5400)
    assert out["payload"] == cmcd.format(parsed), "keys in order, as ott.cmcd writes them"
    query = out["url"].split("CMCD=", 1)[1]
    assert out["url"].startswith("http://edge:8080/s/t/1/sample/v1/720p/seg_00000.m4s?x=1&CMCD=")
    assert cmcd.from_request(query, {}) == cmcd.Cmcd(ot="i", su=True)

    master = m3u8.loads(MASTER)
    assert [(v["uri"], v["bandwidth"]) for v in out["master"]] == [
        (p.uri, p.stream_info.bandwidth) for p in master.playlists]
    assert "mp4a" in out["master"][0]["codecs"]
    media = m3u8.loads(MEDIA)
    assert out["media"]["key"] == {"method": media.keys[0].method, "uri": media.keys[0].uri}
    assert out["media"]["init"] == media.segment_map[0].uri
    assert [(s["uri"], s["duration"]) for s in out["media"]["segments"]] == [
        (s.uri, s.duration) for s in media.segments]

    assert out["resolved"] == ["http://edge:8080/s/t/1/sample/v1/720p/index.m3u8", "http://edge:8080/c.m4s",
                               "http://gateway:8080/k"]
    # The buffer: no stall on the first segment, 1 s ahead, dry, starved, a 3.5 s stall, 3 s ahead.
    assert out["trace"] == [0, 1, 0, True, 3.5, 3]

    # Error events the collector accepts, saying whether the session had started (start vs playback failure).
    report = beacon.Beacon.model_validate({"v": beacon.VERSION, "session": "k6-1", "title": "sample", "pop": "edge",
                                           "client": "k6", "events": out["errors"]})
    assert [(e.reason, e.fatal, e.started, e.detail) for e in report.events if isinstance(e, beacon.Error)] == [
        ("not_entitled", True, False, "license HTTP 403"), ("network_error", True, False, "master HTTP 0"),
        ("segment_not_found", True, True, "segment HTTP 404")]
