"""What notebook 07 (load, capacity, autoscaling) asks of its target, the kube target and the rendered manifests give.

Notebooks 00-04 and 06 are checked by test_notebook_waits.py; 07 asks other things of a target.
Its code is read cell by cell (ast), so a new call is picked up:

- each ``target.<method>`` it calls, and each labkit function it gives the target (with what
  that function asks of the target: :data:`FUNCTIONS`), is classified; an unknown one fails until
  someone says what it needs on kube;
- a method the kube target does not implement (the base's :class:`MissingCapabilityError`) would stop
  the kube variant there: no cell may call one (the PoPs' capacity is ``set_pop_capacity``, which the
  kube target implements, where ``set_env`` is refused), and the ramp's methods are the kube target's
  own (``cpu_meter``: cAdvisor through Prometheus, :mod:`labkit.targets.kube.usage`);
- what ``set_pop_capacity`` waits for on kube (the rollout of the workload the edge's HPA scales) is
  what the manifests make of it: a StatefulSet whose PoPs' start script reads the setting it sets;
- what those reach on the cluster: a Service for each endpoint named, Prometheus' remote-write
  receiver (k6's metrics), the cAdvisor job and the ClusterRole bound to Prometheus' account (the
  ramp's CPU), and the HorizontalPodAutoscalers and custom metrics the notebook names.

This is offline: a real cluster running 07 is not part of the test suite.
"""

from __future__ import annotations

import ast
import functools
import inspect
from typing import Any

import pytest
import yaml
from test_notebook_waits import applied, one, workload

from labkit.core.config import repo_root
from labkit.platform import hpa
from labkit.platform.layers import monitoring
from labkit.targets.base import Target
from labkit.targets.kube import manifest, usage
from labkit.targets.kube.target import KubeTarget

NOTEBOOK = repo_root() / "notebooks" / "07-load-autoscaling.ipynb"
# Target methods that ask nothing of the cluster beyond what `up` applied.
INERT = {"describe", "status", "status_frame"}
# labkit functions given the target, and the target methods each calls.
FUNCTIONS: dict[str, set[str]] = {
    "seed_target": {"service_token", "endpoint"},
    "sample_clip": set(),
    "transcode": {"endpoint"},
    "run": {"endpoint"},  # labkit.traffic.loadtest.run: k6 on the gateway, remote write to Prometheus
    "ramp": {"cpu_meter", "cpu_shares", "endpoint", "status"},  # labkit.traffic.capacity.ramp
    # a ramp's settle: the HPA's next sync, then license's PoP list brought along
    "autoscaler_synced": {"autoscale_status", "follow_autoscaler"},
}
# The cell whose call the kube variant must get past.
RAMP = "ramp"


@functools.cache
def cells() -> tuple[ast.Module, ...]:
    """The notebook's code cells, parsed (IPython magics dropped)."""
    found = []
    for cell in yaml.safe_load(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            found.append(ast.parse("\n".join(line for line in source.splitlines()
                                             if not line.lstrip().startswith(("%", "!")))))
    return tuple(found)


def calls(tree: ast.AST) -> tuple[set[str], set[str], list[ast.Call]]:
    """The ``target.<method>`` names, the functions given ``target``, and the method calls themselves."""
    methods, functions, method_calls = set(), set(), []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "target":
            methods.add(func.attr)
            method_calls.append(call)
        if any(isinstance(a, ast.Name) and a.id == "target" for a in call.args):
            functions.add(func.attr if isinstance(func, ast.Attribute) else ast.unparse(func))
    return methods, functions, method_calls


def asks(tree: ast.AST) -> set[str]:
    """Every target method a cell calls, itself or through a labkit function."""
    methods, functions, _ = calls(tree)
    return methods | {m for f in functions if f in FUNCTIONS for m in FUNCTIONS[f]}


def on_kube(method: str) -> bool:
    """Whether the kube target does ``method`` (its own, or the base's that does not refuse)."""
    own = getattr(KubeTarget, method)
    base = getattr(Target, method, None)
    if base is None or own is not base or getattr(base, "__isabstractmethod__", False):
        return True
    return "MissingCapabilityError" not in inspect.getsource(base)


def test_every_call_of_notebook_07_on_a_target_is_classified() -> None:
    methods, functions, _ = calls(ast.Module(body=[s for c in cells() for s in c.body], type_ignores=[]))
    unknown = {f for f in functions if f not in FUNCTIONS} | {m for m in methods if not hasattr(KubeTarget, m)}
    assert not unknown, f"{NOTEBOOK.name} gives the target to {sorted(unknown)}: say what they need on kube here"
    assert RAMP in functions and {"up", "endpoint", "autoscale"} <= methods  # the extraction reads something


def test_the_kube_variant_calls_nothing_the_kube_target_refuses() -> None:
    steps = [asks(c) for c in cells()]
    ramp_cells = [i for i, c in enumerate(cells()) if RAMP in calls(c)[1]]
    gaps = [(i, sorted(m for m in asked if not on_kube(m))) for i, asked in enumerate(steps)]
    first_gap = next((i for i, missing in gaps if missing), len(steps))
    assert first_gap == len(steps), (
        f"on kube, cell {first_gap} calls {dict(gaps)[first_gap]}, which the kube target does not implement "
        f"(the capacity ramps are cells {ramp_cells})")
    assert len(ramp_cells) == 3  # the capacity curve, the PoPs' capacity before and with the HPAs
    # The PoPs' capacity is set through the Target method both targets implement, not a setting kube refuses.
    methods = {m for c in cells() for m in calls(c)[0]}
    assert "set_pop_capacity" in methods and "set_env" not in methods
    assert KubeTarget.set_pop_capacity is not Target.set_pop_capacity
    # The ramp's CPU per component is the kube target's own: cAdvisor through its Prometheus, read lagging.
    assert KubeTarget.cpu_meter is not Target.cpu_meter and on_kube("cpu_meter")
    assert usage.LAG_S > 0


@functools.cache
def _asked_endpoints() -> set[str]:
    found = set()
    for tree in cells():
        for call in calls(tree)[2]:
            if isinstance(call.func, ast.Attribute) and call.func.attr == "endpoint":
                (arg,) = call.args
                assert isinstance(arg, ast.Constant), f"endpoint({ast.unparse(arg)}): name the component"
                found.add(str(arg.value))
    return found


def _prometheus_config(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and "prometheus.yml" in o.get("data", {})]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["prometheus.yml"])
    return config


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_what_notebook_07_reaches_is_in_the_manifests(overlay: str) -> None:
    methods = {m for c in cells() for m in calls(c)[0]}
    assert "up" in methods
    objects = applied(overlay, None)  # 07 brings every layer up
    # target.endpoint(name): a Service of that name on the component's http port (loadtest.run: the gateway too).
    for name in _asked_endpoints() | {"gateway", "prometheus"}:
        service = one(objects, "Service", name)
        assert "http" in {p["name"] for p in service["spec"]["ports"]}, service
    # k6's metrics arrive by remote write (loadtest.run): Prometheus' receiver is on.
    (container,) = [c for c in workload(objects, "prometheus")["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "prometheus"]
    assert "--web.enable-remote-write-receiver" in [*container.get("command", []), *container.get("args", [])]
    # The ramp's CPU per component: the kubelets' cAdvisor, scraped with the ClusterRole bound to Prometheus' account.
    assert usage.JOB in {j["job_name"] for j in _prometheus_config(objects)["scrape_configs"]}
    account = workload(objects, "prometheus")["spec"]["template"]["spec"]["serviceAccountName"]
    binding = one(objects, "ClusterRoleBinding", usage.CLUSTER_ROLE)
    assert binding["roleRef"]["name"] == usage.CLUSTER_ROLE and one(objects, "ClusterRole", usage.CLUSTER_ROLE)
    assert any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"])
    assert binding["metadata"]["labels"][manifest.LAYER_LABEL] == monitoring.LAYER.name  # applied with `up`


def test_the_autoscalers_and_metrics_notebook_07_names_are_rendered_and_served() -> None:
    objects = manifest.render(manifest.overlay_dir(manifest.default_overlay()))
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == manifest.AUTOSCALER_KIND}
    named = {n.value for c in cells() for n in ast.walk(c) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    declared = {h.name: h for h in hpa.load()}
    hpas = named & set(declared)
    assert hpas and hpas <= rendered, (hpas, rendered)
    custom = {m.name for h in declared.values() for m in h.metrics if m.type != "Resource" and m.name in named}
    assert custom, "the notebook names no custom metric of the HPAs (it lowers the edge's egress target)"
    assert custom <= set(hpa.adapter_rules()), "prometheus-adapter serves every custom metric the notebook names"



def test_what_set_pop_capacity_waits_for_on_kube_is_what_the_manifests_make() -> None:
    """The notebook's capacity cell on kube: the edge's pod template gets the setting, its rollout is awaited.

    That workload is the one the edge's HPA scales (its PoPs the HPA adds start from the same
    template), a StatefulSet the kube target waits for as such; its container ``edge`` runs the start
    script, which reads the very variable set (test_cdn_manifests runs the script and nginx -t).
    """
    from labkit.platform.layers import cdn

    objects = manifest.render(manifest.overlay_dir(manifest.default_overlay()))
    (edge_hpa,) = [o for o in manifest.autoscalers(objects) if o["metadata"]["name"] == cdn.EDGE.name]
    ref = edge_hpa["spec"]["scaleTargetRef"]
    (edge,) = [o for o in objects if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"]]
    assert edge["kind"] == "StatefulSet" and ref["name"] == cdn.EDGE.name
    (container,) = [c for c in edge["spec"]["template"]["spec"]["containers"] if c["name"] == cdn.EDGE.name]
    assert container["command"][:2] == ["sh", f"/etc/ottlab/edge/{cdn.KUBE_START.name}"]
    assert f'rps="${{{cdn.CAPACITY_SETTING}:-}}"' in cdn.render_kube_start()
    # Not set by the manifests: the PoPs start without a limit, as the local ones do, until the lesson sets it.
    assert cdn.CAPACITY_SETTING not in {e["name"] for e in container.get("env", [])}
    # The value the notebook sets is one the script takes (1 to MAX_CAPACITY_RPS, no leading zero).
    assert cdn.capacity_value(cdn.POP_CAPACITY_RPS) == cdn.POP_CAPACITY_RPS
    assert not str(cdn.POP_CAPACITY_RPS).startswith("0")


def test_every_series_the_hpas_custom_metrics_read_carries_the_namespace_and_pod_the_adapter_needs() -> None:
    """prometheus-adapter's rules select ``{namespace!="",pod!=""}``: every job scraping pods must label both.

    Notebook 07 waits on the edge's sessions per PoP and its HPA scales on them: the nginx exporters'
    ``nginx_connections_active``, scraped by the job ``nginx``, which labelled ``pod`` only, so the
    adapter found no series and the HPA had no ``ott_edge_sessions`` on a cluster.
    """
    objects = applied(manifest.default_overlay(), None)
    config = _prometheus_config(objects)
    rules = hpa.adapter_rules()
    for job in config["scrape_configs"]:
        if not any(sd.get("role") == "pod" for sd in job.get("kubernetes_sd_configs", [])):
            continue
        labelled = {r.get("target_label"): r.get("source_labels") for r in job.get("relabel_configs", [])}
        assert labelled.get("namespace") == ["__meta_kubernetes_namespace"], job["job_name"]
        assert labelled.get("pod") == ["__meta_kubernetes_pod_name"], job["job_name"]
    # The sessions' series is the edge pods' nginx exporter's, which says which PoP (the notebook's `pop`).
    (edge,) = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "edge"]
    args = [a for c in edge["spec"]["template"]["spec"]["containers"] for a in c.get("command", [])]
    assert rules["ott_edge_sessions"].series == "nginx_connections_active"
    assert "-prometheus.const-labels=component=edge,pop=$(POD_NAME)" in args
