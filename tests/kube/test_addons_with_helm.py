"""The add-ons with the real helm: against a chart repository on 127.0.0.1 here, the official ones on a cluster.

Offline (runs anywhere): a stand-in chart for every declared chart name, at its pinned version,
is packaged with ``helm package``, indexed with ``helm repo index`` and served by a stdlib HTTP
server on 127.0.0.1, which ``OTTLAB_CHART_MIRROR`` names. labkit's own code then runs the real
helm against it: ``helm show chart`` (the reachability check) and ``helm template`` with each
add-on's values file and settings, whose result the stand-in chart echoes back. This proves the
helm invocations, not the official charts.

``kube``-marked (skipped without a cluster, with the reason tests/kube/conftest.py gives): the
official charts are rendered and validated against the Kubernetes schema, then installed with
``ottlab addons install`` and their Deployments must become available. Those reach the official
chart repositories, which a machine with a cluster normally can.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from labkit.core import programs
from labkit.core.errors import ChartsUnreachableError
from labkit.targets.kube import addons

K8S_VERSION = "1.32.0"

# A chart whose only object is a ConfigMap holding the values it was rendered with.
_TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-values
  namespace: {{ .Release.Namespace }}
data:
  values.json: {{ toJson .Values | quote }}
"""


def _helm(*args: str, cwd: Path) -> None:
    subprocess.run([str(programs.helm()), *args], cwd=cwd, check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def chart_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Helm repository on 127.0.0.1 with a stand-in of every declared chart at its pinned version; its URL."""
    root = tmp_path_factory.mktemp("charts")
    served = root / "repo"
    served.mkdir()
    for chart, version in {(a.chart, a.version) for a in addons.declared()}:
        source = root / "src" / chart
        (source / "templates").mkdir(parents=True)
        (source / "Chart.yaml").write_text(f"apiVersion: v2\nname: {chart}\nversion: {version}\n")
        (source / "templates" / "values.yaml").write_text(_TEMPLATE)
        _helm("package", str(source), "--destination", str(served), cwd=root)
    _helm("repo", "index", str(served), cwd=root)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _helm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """helm's cache and config in the test's own directory, not the user's."""
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv(addons.MIRROR_ENV, raising=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_pinned_chart_answers_from_a_reachable_repository(chart_repo: str) -> None:
    assert addons.unreachable(addons.declared(), environ={addons.MIRROR_ENV: chart_repo}) == {}


def test_a_repository_without_the_pinned_version_is_reported(chart_repo: str) -> None:
    grafana = next(a for a in addons.declared() if a.name == "grafana")
    other = addons.Addon(**{**grafana.__dict__, "version": "0.0.1"})
    problems = addons.unreachable([other], environ={addons.MIRROR_ENV: chart_repo})
    assert list(problems) == [chart_repo]
    assert "grafana 0.0.1" in problems[chart_repo] and "0.0.1" in problems[chart_repo].split(":", 1)[1]


def test_install_refuses_when_the_repository_does_not_answer(tmp_path: Path) -> None:
    mirror = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ChartsUnreachableError) as caught:
        addons.install(["metrics-server", "grafana"], lab_namespace="ottlab", environ={addons.MIRROR_ENV: mirror})
    assert list(caught.value.repos) == [mirror]
    assert "connection refused" in caught.value.repos[mirror].lower()


@pytest.mark.parametrize("name", [a.name for a in addons.declared()])
def test_helm_template_gets_each_addons_values_and_settings(chart_repo: str, name: str) -> None:
    addon = next(a for a in addons.declared() if a.name == name)
    objects = addons.render(addon, lab_namespace="lab2", environ={addons.MIRROR_ENV: chart_repo})
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects] == [
        ("ConfigMap", f"{addon.name}-values", addon.namespace)]
    values = json.loads(objects[0]["data"]["values.json"])
    if name == "grafana":
        # --set-string changes the one field and keeps the rest of the list item from the values file.
        assert values["datasources"]["datasources.yaml"]["datasources"] == [{
            "name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy", "isDefault": True,
            "url": "http://prometheus.lab2.svc:9090", "jsonData": {"timeInterval": "5s"}}]
        assert values["sidecar"]["dashboards"]["searchNamespace"] == "lab2"
    elif name == "prometheus-adapter":
        assert values["prometheus"] == {"url": "http://prometheus.lab2.svc", "port": 9090, "path": ""}
    elif name == "metrics-server":
        assert values["args"] == ["--kubelet-insecure-tls"]
    elif name == "istio-ingressgateway":
        assert values["service"] == {"type": "NodePort"}
    elif name == "argocd":
        assert values["fullnameOverride"] == "argocd"
    elif addon.values is None:
        assert values == {}


# On a real cluster, with the official charts.

def _official_kinds(obj: dict[str, Any]) -> bool:
    """Whether the Kubernetes schema knows the object's kind (not a custom resource of the chart's CRDs)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@pytest.mark.kube
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [a.name for a in addons.declared()])
def test_the_official_chart_renders_and_validates(name: str) -> None:
    addon = next(a for a in addons.declared() if a.name == name)
    objects = addons.render(addon, lab_namespace="ottlab")
    assert objects, f"{name} rendered nothing"
    problems = []
    for obj in filter(_official_kinds, objects):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert set(addon.deployments) <= rendered, f"{name} renders the Deployments {sorted(rendered)}"


@pytest.mark.kube
@pytest.mark.timeout(3600)
def test_install_makes_every_addons_deployments_available() -> None:
    installed = addons.install(lab_namespace="ottlab")
    kubectl = str(programs.kubectl())
    for addon in installed:
        for deployment in addon.deployments:
            proc = subprocess.run(
                [kubectl, "wait", f"deployment/{deployment}", "-n", addon.namespace, "--for=condition=Available",
                 "--timeout=300s"], capture_output=True, text=True, timeout=330, check=False,
            )
            assert proc.returncode == 0, f"{addon.name}: {deployment}: {proc.stderr}"
