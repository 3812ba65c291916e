"""Prometheus' jobs and labels are the same on both targets: one declaration, two configurations.

The local target writes one scrape config per component with metrics, named
:attr:`~labkit.platform.component.Component.scrape_job`; on Kubernetes one pod scrape config
discovers the pods and relabels their annotations. Here the shipped ``prometheus.yml`` ConfigMap's
relabel rules are applied (tests/_scrape.py) to every pod template of every rendered overlay, and:

- each component with metrics becomes a kube target with the local job name, on its declared
  port and metrics path, served by its own container (a sidecar's too), with the same labels as
  the local target's but those that name one target (``instance``, ``pod``);
- no other job exists on kube (a pod asking to be scraped without ``prometheus.io/job`` would be
  ``kubernetes-pods``), and a finished pod is not scraped;
- the alert rules, which both targets load, and their promtool tests select only declared jobs.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from _scrape import ScrapeTarget, discovered, relabel, targets

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform import mesh
from labkit.platform.component import Component
from labkit.platform.layers import monitoring
from labkit.platform.layers.monitoring import probes
from labkit.targets.kube import manifest

NAMESPACE = "ottlab"
OVERLAYS = manifest.overlays()
SCRAPED = [c for c in platform.components() if c.scrape_job is not None]
# Labels naming one target: its address, its pod (and the pod's namespace, which prometheus-adapter
# needs). Every other label must read the same on both targets.
PER_TARGET = {"instance", "pod", "namespace"}
RULES_TESTS = manifest.k8s_dir().parent / "tests" / "monitoring" / "alert-rules.test.yml"


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay)))


def kube_config(overlay: str) -> dict[str, Any]:
    (config_map,) = [o for o in rendered(overlay) if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return config


@functools.cache
def kube_targets(overlay: str) -> tuple[ScrapeTarget, ...]:
    return tuple(targets(kube_config(overlay), rendered(overlay), NAMESPACE))


def local_jobs() -> dict[str, dict[str, Any]]:
    config = monitoring.prometheus_config(LabConfig(base_port=20000), platform.components())
    jobs: list[dict[str, Any]] = config["scrape_configs"]  # type: ignore[assignment]
    return {job["job_name"]: job for job in jobs}


def runs(container: dict[str, Any], component: Component) -> bool:
    """Whether ``container`` runs ``component``'s program (by its name, or its ``python -m`` module)."""
    if container["name"] == component.name:
        return True
    command = [*container.get("command", []), *container.get("args", [])]
    return component.args[:1] == ("-m",) and command[1:3] == ["-m", component.args[1]]


# -- the evaluator, on the documentation's own rules -----------------------------------------


def test_relabelling_follows_prometheus_semantics() -> None:
    labels = {"__address__": "10.0.0.7:8080", "__meta_kubernetes_pod_annotation_prometheus_io_port": "9145", "a": "x"}
    # The documented address rewrite (kubernetes example config): host from the address, port from the annotation.
    port_rule = {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2", "target_label": "__address__"}
    assert relabel(labels, [port_rule])["__address__"] == "10.0.0.7:9145"  # type: ignore[index]
    # Regexes are anchored; keep drops on no match, drop on a match.
    assert relabel(labels, [{"source_labels": ["a"], "action": "keep", "regex": "x|y"}]) == labels
    assert relabel(labels, [{"source_labels": ["a"], "action": "keep", "regex": "xx?y"}]) is None
    assert relabel(labels, [{"source_labels": ["a"], "action": "drop", "regex": "."}]) is None
    # A source that is absent reads as "": replaced with an empty value, the target label is deleted.
    assert "a" not in relabel(labels, [{"source_labels": ["missing"], "target_label": "a"}])  # type: ignore[operator]
    # ... and with regex (.+) nothing matches: the label stays.
    assert relabel(labels, [{"source_labels": ["missing"], "regex": "(.+)", "target_label": "a"}])["a"] == "x"  # type: ignore[index]
    mapped = relabel({"__meta_kubernetes_pod_label_app": "web"},
                     [{"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"}])
    assert mapped == {"__meta_kubernetes_pod_label_app": "web", "app": "web"}
    with pytest.raises(NotImplementedError):
        relabel(labels, [{"action": "hashmod", "source_labels": ["a"], "modulus": 2, "target_label": "b"}])


# -- one job name, one set of labels -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kube_has_exactly_the_declared_scrape_jobs(overlay: str) -> None:
    declared = platform.scrape_jobs()
    # ... and the synthetic probes' job, whose targets are what the exporter fetches, not pods.
    assert set(local_jobs()) == {*declared, probes.JOB}
    assert probes.JOB in {job["job_name"] for job in kube_config(overlay)["scrape_configs"]}
    found = {t.job for t in kube_targets(overlay)}
    assert found == set(declared), (
        f"kube jobs {sorted(found)} != declared {sorted(declared)}: each scraped pod template says its "
        "component's scrape_job in the annotation prometheus.io/job")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("component", SCRAPED, ids=lambda c: c.name)
def test_the_kube_relabelling_gives_the_local_job_and_labels(overlay: str, component: Component) -> None:
    local = local_jobs()[str(component.scrape_job)]
    # A job shared by several components (the nginx exporters) has one static config per component.
    (static,) = [st for st in local["static_configs"]
                 if f"127.0.0.1:{component.local_port(LabConfig(base_port=20000))}" in st["targets"]]
    local_labels = {"job": local["job_name"], **static["labels"]}

    # Of a shared job, the targets of this component's containers.
    mine = [t for t in kube_targets(overlay) if t.job == component.scrape_job
            and (component.job is None or t.container == component.name)]
    assert mine, f"no pod of overlay {overlay} is scraped as job {component.scrape_job}"
    for target in mine:
        assert (target.port, target.metrics_path) == (component.port("http").container, component.metrics_path), target
        assert {k: v for k, v in target.labels if k not in PER_TARGET} == local_labels, target
        workload = next(o for o in rendered(overlay) if o["kind"] in {"Deployment", "StatefulSet", "Job"}
                        and o["metadata"]["name"] == target.workload)
        (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == target.container]
        assert runs(container, component), f"{target.workload}: scraped {target.container}, not {component.name}"
    # The component's own pods (or those it follows) are among them: as many targets as pods.
    assert component.follows or component.name in {t.workload for t in mine}
    assert not component.follows or component.follows in {t.workload for t in mine}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_finished_pod_is_not_scraped(overlay: str) -> None:
    # A Job's pod stays listed once done: scraped, it would be a target down (ComponentDown) forever.
    (job,) = [o for o in rendered(overlay) if o["kind"] == "Job"]
    config = kube_config(overlay)
    assert targets(config, [job], NAMESPACE), "the Job's pod is scraped while it runs"
    for pods in [c for c in config["scrape_configs"]
                 if any(sd.get("role") == "pod" for sd in c.get("kubernetes_sd_configs", []))]:
        for phase in ("Succeeded", "Failed"):
            for labels in discovered(job, NAMESPACE):
                done = {**labels, "__meta_kubernetes_pod_phase": phase, "job": pods["job_name"]}
                assert relabel(done, pods["relabel_configs"]) is None


# -- the alert rules, shared by both targets, select declared jobs -----------------------------

JOB_MATCHER = re.compile(r"""\bjob\s*(=~|!~|!=|=)\s*["']([^"']*)["']""")


def job_matchers(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in JOB_MATCHER.finditer(text)]


def test_alert_rules_and_their_tests_select_only_declared_jobs() -> None:
    declared = {*platform.scrape_jobs(), probes.JOB, mesh.STATS_JOB}
    rules = yaml.safe_load(monitoring.rules_file().read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    series = [s["series"] for t in yaml.safe_load(RULES_TESTS.read_text())["tests"] for s in t.get("input_series", [])]
    for op, value in [m for text in (*exprs, *series) for m in job_matchers(text)]:
        if op == "=":
            assert value in declared, f'job="{value}" is no declared scrape job: {sorted(declared)}'
        elif op == "=~":
            assert any(re.fullmatch(value, job) for job in declared), f'job=~"{value}" matches no declared job'
    # The promtool tests stand for real series: they name jobs (else this test would check nothing there).
    assert any(job_matchers(s) for s in series)


# -- the synthetic probes ------------------------------------------------------------------------


def probe_targets(config: dict[str, Any], file_sd: str | None = None) -> list[dict[str, str]]:
    """The blackbox job's targets: the labels each target has after the job's relabelling.

    Its static targets, or (on kube) those of ``file_sd``, the file its ``file_sd_configs`` reads."""
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == probes.JOB]
    assert job["metrics_path"] == "/probe"
    groups = job.get("static_configs") or []
    if "file_sd_configs" in job:
        ((files,),) = [sd["files"] for sd in job["file_sd_configs"]]
        assert files == f"{probes.KUBE_TARGETS_DIR}/{probes.KUBE_TARGETS_FILE}"
        assert file_sd is not None
        groups = json.loads(file_sd)
    found = []
    for static in groups:
        for address in static["targets"]:
            labels = relabel({"__address__": address, **static["labels"]}, job["relabel_configs"])
            assert labels is not None
            found.append(labels)
    return found


def what_is_probed(labels: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    """Each probe as (pop, probe, module, path): the URL's path, whatever host reaches it."""
    return sorted((t["pop"], t["probe"], t["__param_module"], urlsplit(t["__param_target"]).path) for t in labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_use_the_shipped_modules_and_the_same_labels_on_both_targets(overlay: str) -> None:
    modules = set(yaml.safe_load(Path(probes.modules_file()).read_text())["modules"])
    local = probe_targets(monitoring.prometheus_config(LabConfig(base_port=20000), platform.components(), "s3cret"))
    # On kube, the file the kube target writes for the same PoPs (labkit/targets/kube/target.py).
    written = probes.file_sd(probes.kube_targets(["edge-0", "edge-1"], "s3cret"))
    kube = probe_targets(kube_config(overlay), written)
    for labels in (*local, *kube):
        assert labels["__param_module"] in modules, labels
        assert labels["__param_target"].startswith("http://"), labels
        assert set(labels) - {"__address__", "__param_module", "__param_target"} == {"pop", "probe", "instance"}
    # Two probes per PoP (signed) and the key path, on both targets: the same paths, signatures and labels.
    assert sorted((t["pop"], t["probe"]) for t in local) == [
        ("edge-0", "playlist"), ("edge-0", "segment"), ("edge-1", "playlist"), ("edge-1", "segment"),
        ("gateway", "key")]
    assert what_is_probed(kube) == what_is_probed(local)
    strip = {"__address__", "__param_target"}
    assert sorted(sorted((k, v) for k, v in t.items() if k not in strip) for t in kube) == sorted(
        sorted((k, v) for k, v in t.items() if k not in strip) for t in local)
    key = next(t for t in kube if t["probe"] == "key")
    assert key["__param_target"].endswith(probes.key_path())
    for target in kube:
        assert target["__address__"] == f"{probes.BLACKBOX.name}:{probes.BLACKBOX.port('http').container}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_injected_sidecar_is_scraped_as_the_mesh_stats_job(overlay: str) -> None:
    # Istio's injector adds the container istio-proxy with port 15090 named http-envoy-prom; no base pod has it.
    assert mesh.STATS_JOB not in {t.job for t in kube_targets(overlay)}
    (cas,) = [o for o in rendered(overlay) if o["kind"] == "Deployment" and o["metadata"]["name"] == "cas"]
    injected = json.loads(json.dumps(cas))
    injected["spec"]["template"]["spec"]["containers"].append(
        {"name": "istio-proxy", "image": "istio/proxyv2",
         "ports": [{"name": "http-envoy-prom", "containerPort": 15090}]})
    stats = [t for t in targets(kube_config(overlay), [injected], NAMESPACE) if t.job == mesh.STATS_JOB]
    assert [(t.container, t.port, t.metrics_path) for t in stats] == [("istio-proxy", 15090, "/stats/prometheus")]
    assert dict(stats[0].labels)["pod"] == "cas-0"
