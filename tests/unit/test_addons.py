"""``ottlab addons``: the declaration of k8s/addons/addons.yaml and the helm commands, with a stand-in helm.

No cluster and no chart repository is reached here: ``helm`` is a tiny shell script that records
its arguments and exits as told (per subcommand). tests/kube/test_addons_with_helm.py runs the real helm
against a chart repository served on 127.0.0.1, and installs the real charts where a cluster is.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from labkit.cli import main
from labkit.core import programs
from labkit.core.errors import AddonError, ChartsUnreachableError, ConfigError
from labkit.targets.kube import addons

# What issue 12 asks for: each of these is a declared release.
REQUIRED = {"metrics-server", "istio-base", "istiod", "istio-ingressgateway", "grafana", "prometheus-adapter", "argocd"}
OFFICIAL_REPOS = {
    "metrics-server": "https://kubernetes-sigs.github.io/metrics-server/",
    "base": "https://istio-release.storage.googleapis.com/charts",
    "istiod": "https://istio-release.storage.googleapis.com/charts",
    "gateway": "https://istio-release.storage.googleapis.com/charts",
    "grafana": "https://grafana.github.io/helm-charts",
    "prometheus-adapter": "https://prometheus-community.github.io/helm-charts",
    "argo-cd": "https://argoproj.github.io/argo-helm",
}


class FakeHelm:
    """A ``helm`` that appends its arguments to a log and exits with the code set for its subcommand."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "helm"
        self.log = directory / "helm.log"
        self.exits: dict[str, int] = {}
        self.failing_release = ""
        self.write()

    def write(self) -> None:
        cases = "".join(f"  {sub}) code={code} ;;\n" for sub, code in self.exits.items())
        fail = (f'case " $* " in *" upgrade --install {self.failing_release} "*) '
                'echo "Error: context deadline exceeded" >&2; exit 1 ;; esac\n') if self.failing_release else ""
        self.path.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$*" >> {shlex.quote(str(self.log))}\n'
            f"{fail}"
            f'code=0\ncase "$1" in\n{cases}esac\n'
            'if [ "$code" != 0 ]; then echo "Error: looks like \\"$4\\" is not a valid chart repository" >&2; fi\n'
            'exit "$code"\n'
        )
        self.path.chmod(0o755)

    @property
    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def helm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHelm:
    fake = FakeHelm(tmp_path)
    monkeypatch.setattr(programs, "helm", lambda: fake.path)
    monkeypatch.delenv(addons.MIRROR_ENV, raising=False)
    monkeypatch.delenv("OTTLAB_NAMESPACE", raising=False)
    return fake


def test_every_addon_of_the_issue_is_declared_from_its_official_repository_at_an_exact_version() -> None:
    declared = addons.declared()
    assert {a.name for a in declared} == REQUIRED
    for addon in declared:
        assert re.fullmatch(r"\d+\.\d+\.\d+", addon.version), addon
        assert addon.repo == OFFICIAL_REPOS[addon.chart], addon
        assert addon.timeout > 0
    istio = [a for a in declared if a.repo == OFFICIAL_REPOS["istiod"]]
    assert len({a.version for a in istio}) == 1, "Istio's charts are one release"


def test_istio_base_comes_before_istiod_before_the_gateway() -> None:
    order = [a.name for a in addons.declared()]
    assert order.index("istio-base") < order.index("istiod") < order.index("istio-ingressgateway")


def test_values_point_at_the_labs_prometheus_and_metrics_server_skips_kubelet_tls() -> None:
    by_name = {a.name: a for a in addons.declared()}
    grafana = yaml.safe_load(by_name["grafana"].values_file().read_text())  # type: ignore[union-attr]
    assert grafana["datasources"]["datasources.yaml"]["datasources"][0]["url"] == "http://prometheus.ottlab.svc:9090"
    adapter = yaml.safe_load(by_name["prometheus-adapter"].values_file().read_text())  # type: ignore[union-attr]
    assert (adapter["prometheus"]["url"], adapter["prometheus"]["port"]) == ("http://prometheus.ottlab.svc", 9090)
    metrics = yaml.safe_load(by_name["metrics-server"].values_file().read_text())  # type: ignore[union-attr]
    assert "--kubelet-insecure-tls" in metrics["args"]
    # The settings follow another lab namespace.
    assert dict(by_name["grafana"].settings_for("lab2")) == {
        r"datasources.datasources\.yaml.datasources[0].url": "http://prometheus.lab2.svc:9090",
        "sidecar.dashboards.searchNamespace": "lab2"}
    assert dict(by_name["prometheus-adapter"].settings_for("lab2")) == {"prometheus.url": "http://prometheus.lab2.svc"}


@pytest.mark.parametrize("version", ["^1.25.0", "1.25", "v1.25.2", "~3.12", ">=8.0.0"])
def test_a_version_that_is_not_exact_is_refused(tmp_path: Path, version: str) -> None:
    path = tmp_path / "addons.yaml"
    path.write_text(yaml.safe_dump({"addons": [{"name": "x", "chart": "x", "version": version, "repo": "http://r",
                                                "namespace": "n", "timeout": 60}]}))
    with pytest.raises(ConfigError, match="exact chart version"):
        addons.declared(path)


def test_install_checks_every_chart_then_installs_in_order(helm: FakeHelm,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    installed = addons.install(lab_namespace="lab2")
    assert [a.name for a in installed] == [a.name for a in addons.declared()]
    shows = [c for c in helm.calls if c.startswith("show chart")]
    upgrades = [c for c in helm.calls if c.startswith("upgrade")]
    assert helm.calls == shows + upgrades, "every repository is asked before anything is installed"
    # Each pinned chart is asked for: a repository that answers may still lack that version.
    assert [c.split()[2] for c in shows] == [a.chart for a in installed]
    assert shows[0] == ("show chart metrics-server --repo https://kubernetes-sigs.github.io/metrics-server/ "
                        "--version 3.12.2")
    assert [c.split()[2] for c in upgrades] == [a.name for a in installed]
    grafana = next(a for a in installed if a.name == "grafana")
    assert upgrades[[a.name for a in installed].index("grafana")] == shlex.join([
        "upgrade", "--install", "grafana", "grafana", "--repo", grafana.repo, "--version", grafana.version,
        "--namespace", "monitoring", "--create-namespace", "--wait", "--timeout", f"{grafana.timeout:g}s",
        "-f", str(grafana.values_file()), "--set-string",
        r"datasources.datasources\.yaml.datasources[0].url=http://prometheus.lab2.svc:9090",
        "--set-string", "sidecar.dashboards.searchNamespace=lab2",
    ]).replace("'", "")
    out = capsys.readouterr().out
    assert out.count(f"+ {helm.path} upgrade --install") == len(installed)


def test_install_of_names_keeps_the_declared_order(helm: FakeHelm) -> None:
    addons.install(["istio-ingressgateway", "istio-base", "istiod"], lab_namespace="ottlab")
    assert [c.split()[2] for c in helm.calls if c.startswith("upgrade")] == ["istio-base", "istiod",
                                                                             "istio-ingressgateway"]


def test_an_unknown_name_is_refused_before_helm_runs(helm: FakeHelm) -> None:
    with pytest.raises(ConfigError, match="no add-on named 'istio'") as caught:
        addons.install(["istio"], lab_namespace="ottlab")
    assert "istio-base" in caught.value.hint
    assert helm.calls == []


def test_dry_run_prints_the_commands_and_runs_nothing(helm: FakeHelm, capsys: pytest.CaptureFixture[str]) -> None:
    addons.install(["metrics-server", "argocd"], lab_namespace="ottlab", dry_run=True)
    assert helm.calls == []
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[4] for line in lines if line.startswith("+ ")] == ["metrics-server", "argocd"]
    assert "nothing installed" in lines[-1]


def test_unreachable_repositories_are_refused_in_one_error_before_any_install(helm: FakeHelm) -> None:
    helm.exits["show"] = 1
    helm.write()
    with pytest.raises(ChartsUnreachableError) as caught:
        addons.install(lab_namespace="ottlab")
    assert set(caught.value.repos) == {a.repo for a in addons.declared()}
    message = str(caught.value)
    assert "https://argoproj.github.io/argo-helm: argo-cd 8.5.0: Error: looks like" in message
    assert addons.MIRROR_ENV in message and "a machine that reaches them" in message
    assert not [c for c in helm.calls if c.startswith("upgrade")]


def test_the_mirror_replaces_every_repository(helm: FakeHelm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(addons.MIRROR_ENV, "http://127.0.0.1:9/charts")
    addons.install(["grafana", "argocd"], lab_namespace="ottlab")
    assert helm.calls[0] == "show chart grafana --repo http://127.0.0.1:9/charts --version 8.10.3"
    assert all("--repo http://127.0.0.1:9/charts " in c for c in helm.calls)
    assert len([c for c in helm.calls if c.startswith("show")]) == 2  # a chart each: the mirror holds them all


def test_a_failing_install_stops_there_and_says_what_to_look_at(helm: FakeHelm) -> None:
    helm.failing_release = "istiod"
    helm.write()
    with pytest.raises(AddonError) as caught:
        addons.install(lab_namespace="ottlab")
    message = str(caught.value)
    assert "installing the add-on istiod (istiod 1.25.2) failed" in message
    assert "context deadline exceeded" in message
    assert "helm status istiod -n istio-system" in message
    assert [c.split()[2] for c in helm.calls if c.startswith("upgrade")] == ["metrics-server", "istio-base", "istiod"]


def test_cli_list_and_refusal_exit_codes(helm: FakeHelm) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["addons", "list"])
    assert listed.exit_code == 0, listed.output
    assert "istio-ingressgateway  gateway" in listed.output
    assert "prometheus-adapter" in listed.output and "https://argoproj.github.io/argo-helm" in listed.output
    assert runner.invoke(main, ["addons", "install", "nope"]).exit_code == 2
    helm.exits["show"] = 1
    helm.write()
    refused = runner.invoke(main, ["addons", "install", "grafana"])
    assert refused.exit_code == 1
    assert "cannot reach the Helm chart repositories" in refused.output
    assert not [c for c in helm.calls if c.startswith("upgrade")]


def test_readme_lists_the_declared_addons_in_order() -> None:
    readme = (addons.addons_dir().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| `([a-z-]+)` \| ([0-9.]+) \| `([a-z-]+)` \| (\S+) \|$", readme, re.MULTILINE)
    assert rows == [(a.name, a.chart, a.version, a.namespace, a.repo) for a in addons.declared()]
