"""The cluster add-ons later lessons need, installed from their official Helm charts at pinned versions.

metrics-server, Istio (base, istiod, an ingress gateway), Grafana, prometheus-adapter and Argo CD
are declared once, in ``k8s/addons/addons.yaml``: each one's release name, chart, exact version,
official repository, namespace, values file (``k8s/addons/values/``) and the settings that follow
the lab's namespace. :func:`install` runs, per add-on and in the declared order::

    helm upgrade --install <release> <chart> --repo <url> --version <v> --namespace <ns> \\
        --create-namespace --wait --timeout <s>s [-f values] [--set-string k=v ...]

each echoed as ``+ cmd`` and bounded by a timeout. Before installing anything it asks every
repository for its chart (``helm show chart``); when one does not answer it refuses at once, with
one error naming them all. ``$OTTLAB_CHART_MIRROR`` replaces every repository with one Helm
repository you can reach that holds all the pinned charts. Example::

    [a.name for a in declared()]   # ['metrics-server', 'istio-base', 'istiod', ...]
    install(["metrics-server"], lab_namespace="ottlab")
    # + helm show chart metrics-server --repo https://kubernetes-sigs.github.io/metrics-server/ --version 3.12.2
    # + helm upgrade --install metrics-server metrics-server --repo ... --version 3.12.2 --namespace kube-system ...
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labkit.core import programs
from labkit.core.config import repo_root
from labkit.core.console import echo_command, progress
from labkit.core.errors import AddonError, ChartsUnreachableError, ConfigError, TimeoutExpired

MIRROR_ENV = "OTTLAB_CHART_MIRROR"
# An exact chart version: never a range, so every machine installs the same thing.
_EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# How long one repository may take to answer `helm show chart` (its index can be a few MB).
SHOW_TIMEOUT = 60.0
# Beyond helm's own --timeout, for helm to give up and report.
_GRACE = 60.0
# How many lines of a failed command's output an error shows.
TAIL_LINES = 20


def addons_dir() -> Path:
    """``k8s/addons``: the declaration and the values files."""
    return repo_root() / "k8s" / "addons"


@dataclass(frozen=True)
class Addon:
    """One add-on: a Helm release of an official chart at an exact version."""

    name: str
    chart: str
    version: str
    repo: str
    namespace: str
    values: str | None
    settings: tuple[tuple[str, str], ...]
    timeout: float
    deployments: tuple[str, ...]

    def values_file(self) -> Path | None:
        """Its values file under ``k8s/addons/values/``, or None."""
        return addons_dir() / "values" / self.values if self.values else None

    def settings_for(self, lab_namespace: str) -> list[tuple[str, str]]:
        """Its ``--set-string`` settings, with ``{namespace}`` made the lab's namespace."""
        return [(key, value.replace("{namespace}", lab_namespace)) for key, value in self.settings]


def declared(path: Path | None = None) -> list[Addon]:
    """The add-ons of ``k8s/addons/addons.yaml``, in install order; a :class:`ConfigError` if it is malformed."""
    source = path or addons_dir() / "addons.yaml"
    document = yaml.safe_load(source.read_text())
    entries = document.get("addons") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source} declares no add-ons", hint="it holds a list under `addons:`")
    addons = [_addon(entry, source) for entry in entries]
    names = [a.name for a in addons]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source} declares an add-on twice: {names}", hint="each release name once")
    return addons


def _addon(entry: Any, source: Path) -> Addon:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: {entry!r} is not an add-on", hint="each add-on is a mapping")
    where = f"{source}: add-on {entry.get('name', '?')!r}"
    missing = [key for key in ("name", "chart", "version", "repo", "namespace", "timeout") if key not in entry]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}", hint="see the comment at the top of the file")
    version = str(entry["version"])
    if not _EXACT_VERSION.match(version):
        raise ConfigError(f"{where} has version {version!r}, not an exact chart version",
                          hint="pin it exactly, e.g. 1.25.2 (no ranges, no `v`)")
    settings = entry.get("set") or {}
    addon = Addon(
        name=str(entry["name"]), chart=str(entry["chart"]), version=version, repo=str(entry["repo"]),
        namespace=str(entry["namespace"]), values=str(entry["values"]) if entry.get("values") else None,
        settings=tuple((str(k), str(v)) for k, v in settings.items()), timeout=float(entry["timeout"]),
        deployments=tuple(str(d) for d in entry.get("deployments") or ()),
    )
    values = addon.values_file()
    if values is not None and not values.is_file():
        raise ConfigError(f"{where} names the values file {values}, which is missing",
                          hint="add it under k8s/addons/values/ or drop `values:`")
    return addon


def select(names: Sequence[str], addons: Sequence[Addon] | None = None) -> list[Addon]:
    """The add-ons named (all when none is), in the declared order; a :class:`ConfigError` for an unknown name."""
    every = list(addons) if addons is not None else declared()
    known = [a.name for a in every]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no add-on named {', '.join(map(repr, unknown))}",
                          hint=f"choose among: {', '.join(known)} (`ottlab addons list`)")
    return [a for a in every if not names or a.name in names]


def repo_of(addon: Addon, environ: Mapping[str, str] | None = None) -> str:
    """Where its chart comes from: ``$OTTLAB_CHART_MIRROR`` when set, else its official repository."""
    env = os.environ if environ is None else environ
    return env.get(MIRROR_ENV, "").strip() or addon.repo


def _chart(addon: Addon, repo: str) -> list[str]:
    return [addon.chart, "--repo", repo, "--version", addon.version]


def _values_and_settings(addon: Addon, lab_namespace: str) -> list[str]:
    values = addon.values_file()
    args = ["-f", str(values)] if values is not None else []
    for key, value in addon.settings_for(lab_namespace):
        args += ["--set-string", f"{key}={value}"]
    return args


def show_command(addon: Addon, *, helm: str = "helm", repo: str | None = None) -> list[str]:
    """``helm show chart``: does the repository answer with this chart at this version?"""
    return [helm, "show", "chart", *_chart(addon, repo or addon.repo)]


def install_command(addon: Addon, *, lab_namespace: str, helm: str = "helm", repo: str | None = None) -> list[str]:
    """``helm upgrade --install`` of the add-on, waiting (bounded) until its workloads are ready."""
    return [
        helm, "upgrade", "--install", addon.name, *_chart(addon, repo or addon.repo),
        "--namespace", addon.namespace, "--create-namespace", "--wait", "--timeout", f"{addon.timeout:g}s",
        *_values_and_settings(addon, lab_namespace),
    ]


def template_command(addon: Addon, *, lab_namespace: str, helm: str = "helm", repo: str | None = None) -> list[str]:
    """``helm template``: the add-on's manifests rendered here, with its values, without a cluster."""
    return [
        helm, "template", addon.name, *_chart(addon, repo or addon.repo), "--namespace", addon.namespace,
        *_values_and_settings(addon, lab_namespace),
    ]


def _run(cmd: Sequence[str], timeout: float, *, what: str, hint: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (echoed), bounded by ``timeout``; a failure is an :class:`AddonError` with its last lines."""
    echo_command(cmd)
    try:
        proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TimeoutExpired(f"`{shlex.join(cmd)}` ({what})", timeout, hint=hint) from None
    except OSError as exc:
        raise AddonError(f"`{shlex.join(cmd)}` cannot run: {exc}", hint=hint) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).rstrip().splitlines()[-TAIL_LINES:])
        raise AddonError(f"{what} failed: `{shlex.join(cmd)}` exited {proc.returncode}; its last lines:\n"
                         f"{_indent(tail)}", hint=hint)
    return proc


def unreachable(addons: Sequence[Addon], *, environ: Mapping[str, str] | None = None,
                timeout: float = SHOW_TIMEOUT) -> dict[str, str]:
    """The repositories that did not give an add-on's chart (``helm show chart``), each with why; {} when all did."""
    helm = str(programs.helm())
    problems: dict[str, str] = {}
    for addon in addons:
        repo = repo_of(addon, environ)
        if repo in problems:
            continue
        cmd = show_command(addon, helm=helm, repo=repo)
        echo_command(cmd)
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            problems[repo] = f"no answer within {timeout:g} s"
            continue
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"helm exited {proc.returncode}"]
            problems[repo] = f"{addon.chart} {addon.version}: {lines[-1]}"
    return problems


def _unreachable_hint(environ: Mapping[str, str] | None) -> str:
    env = os.environ if environ is None else environ
    mirror = env.get(MIRROR_ENV, "").strip()
    using = f" (now {MIRROR_ENV}={mirror})" if mirror else ""
    return (f"run `ottlab addons install` on a machine that reaches them (they are public), or set {MIRROR_ENV} to a "
            f"Helm repository you can reach that holds every pinned chart{using}: `ottlab addons list` names them; "
            "`helm pull CHART --repo URL --version V` each where there is internet, then `helm repo index` and serve "
            "that directory")


def install(names: Sequence[str] = (), *, lab_namespace: str, dry_run: bool = False,
            environ: Mapping[str, str] | None = None) -> list[Addon]:
    """Install (or upgrade) the add-ons named, all when none is, in the declared order; those installed.

    ``dry_run`` prints the ``helm`` commands without running any (nor reaching any repository).
    A repository that does not answer stops everything before the first install, with a
    :class:`ChartsUnreachableError`; a failed install, with an :class:`AddonError`.
    """
    chosen = select(names)
    helm = str(programs.helm())
    commands = [install_command(a, lab_namespace=lab_namespace, helm=helm, repo=repo_of(a, environ)) for a in chosen]
    if dry_run:
        for cmd in commands:
            echo_command(cmd)
        progress(f"dry run: {len(chosen)} add-on(s), nothing installed")
        return chosen
    problems = unreachable(chosen, environ=environ)
    if problems:
        raise ChartsUnreachableError(problems, hint=_unreachable_hint(environ))
    for addon, cmd in zip(chosen, commands, strict=True):
        _run(cmd, addon.timeout + _GRACE, what=f"installing the add-on {addon.name} ({addon.chart} {addon.version})",
             hint=f"read helm's lines above; `helm status {addon.name} -n {addon.namespace}` and "
             f"`kubectl get pods -n {addon.namespace}` tell more; then run `ottlab addons install {addon.name}` again")
        progress(f"installed {addon.name} ({addon.chart} {addon.version}) in namespace {addon.namespace}")
    return chosen


def render(addon: Addon, *, lab_namespace: str, environ: Mapping[str, str] | None = None,
           timeout: float = SHOW_TIMEOUT * 2) -> list[dict[str, Any]]:
    """The add-on's manifests as ``helm template`` renders them from its (reachable) chart, as objects."""
    cmd = template_command(addon, lab_namespace=lab_namespace, helm=str(programs.helm()), repo=repo_of(addon, environ))
    proc = _run(cmd, timeout, what=f"rendering the add-on {addon.name}",
                hint=f"is {repo_of(addon, environ)} reachable? ({_unreachable_hint(environ)})")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if isinstance(obj, dict)]


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines()) or prefix + "(no output)"
