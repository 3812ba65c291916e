"""The lab's Kubernetes manifests: an overlay of ``k8s/`` rendered by ``kubectl kustomize``.

Every object carries ``app.kubernetes.io/part-of: ottlab``; the objects of a layer also carry
``ottlab.io/layer: <layer>``. A component's Deployment and Service are named after it and
labelled ``app.kubernetes.io/name: <component>``.

Example::

    objects = render(overlay_dir("kind"))      # prints: + .venv/bin/kubectl kustomize k8s/overlays/kind
    monitoring = of_layers(objects, ["monitoring"])
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from labkit.core import programs
from labkit.core.config import repo_root
from labkit.core.console import echo_command, progress
from labkit.core.errors import ConfigError, KubeError, TimeoutExpired

KubeObject = dict[str, Any]

OVERLAY_ENV = "OTTLAB_KUBE_OVERLAY"
DEFAULT_OVERLAY = "kind"
# Where the services keep their data: SQLite on a one-node claim (the base), or a PostgreSQL
# server, the kustomize component k8s/components/postgres added to the overlay.
DATABASE_ENV = "OTTLAB_KUBE_DATABASE"
DATABASES: dict[str, tuple[str, ...]] = {"sqlite": (), "postgres": ("postgres",)}
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "ottlab"
LAYER_LABEL = "ottlab.io/layer"
NAME_LABEL = "app.kubernetes.io/name"
AUTOSCALER_KIND = "HorizontalPodAutoscaler"
# kustomize renders the lab in well under a second; a minute means it is stuck.
RENDER_TIMEOUT = 60.0

# Dependencies first: a namespace before what lives in it, a ServiceAccount and its
# ConfigMaps before the pods that mount them, CRDs before their custom objects.
_APPLY_ORDER = (
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "HorizontalPodAutoscaler",
)


def k8s_dir() -> Path:
    """The ``k8s/`` directory of this checkout."""
    return repo_root() / "k8s"


def overlays() -> list[str]:
    """The overlays under ``k8s/overlays`` (directories holding a kustomization.yaml)."""
    root = k8s_dir() / "overlays"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "kustomization.yaml").is_file())


def default_overlay(environ: Mapping[str, str] | None = None) -> str:
    """``$OTTLAB_KUBE_OVERLAY``, or ``kind``."""
    env = os.environ if environ is None else environ
    return env.get(OVERLAY_ENV, "").strip() or DEFAULT_OVERLAY


def overlay_dir(overlay: str) -> Path:
    """The directory of ``overlay``; a :class:`ConfigError` naming the known ones if absent."""
    known = overlays()
    if overlay not in known:
        raise ConfigError(
            f"no Kubernetes overlay named {overlay!r} under {k8s_dir() / 'overlays'}",
            hint=f"set {OVERLAY_ENV} to one of: {', '.join(known) or '(none found)'}",
        )
    return k8s_dir() / "overlays" / overlay


def database(environ: Mapping[str, str] | None = None) -> str:
    """``$OTTLAB_KUBE_DATABASE``: ``sqlite`` (the default) or ``postgres``; a :class:`ConfigError` otherwise."""
    env = os.environ if environ is None else environ
    chosen = env.get(DATABASE_ENV, "").strip() or "sqlite"
    if chosen not in DATABASES:
        raise ConfigError(f"{DATABASE_ENV}={chosen!r} is not a database the lab's manifests offer",
                          hint=f"set it to one of: {', '.join(DATABASES)} (or unset it for sqlite)")
    return chosen


def component_dir(component: str) -> Path:
    """``k8s/components/<component>``; a :class:`ConfigError` if it has no kustomization."""
    directory = k8s_dir() / "components" / component
    if not (directory / "kustomization.yaml").is_file():
        raise ConfigError(f"no kustomize component {directory}", hint="is this checkout complete? (git status)")
    return directory


def render(directory: Path, *, components: Sequence[str] = (), timeout: float = RENDER_TIMEOUT) -> list[KubeObject]:
    """The objects ``kubectl kustomize directory`` renders, in its output order.

    The kubectl is :func:`labkit.core.programs.kubectl` (the virtualenv's pinned one first). The
    command is echoed as ``+ .venv/bin/kubectl kustomize <dir>`` (paths relative to the checkout,
    where it runs) so it can be pasted into a shell. ``components`` (names under
    ``k8s/components``) are added on top, through a kustomization written for the purpose in a
    scratch folder (kustomize takes components from a kustomization file only).
    """
    if not components:
        return _kustomize(directory, timeout)
    with tempfile.TemporaryDirectory(prefix="ottlab-kustomize-") as scratch:
        # kustomize refuses absolute paths here: relative ones, from the scratch folder.
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(directory, scratch)],
            "components": [os.path.relpath(component_dir(c), scratch) for c in components],
        }
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        root = repo_root()
        base = directory.relative_to(root) if directory.is_relative_to(root) else directory
        added = ", ".join(f"k8s/components/{c}" for c in components)
        progress(f"{scratch}/kustomization.yaml: {base} with the component(s) {added}")
        return _kustomize(Path(scratch), timeout)


def _kustomize(directory: Path, timeout: float) -> list[KubeObject]:
    root = repo_root()

    def shown(path: Path) -> str:
        return str(path.relative_to(root) if path.is_relative_to(root) else path)

    cmd = [shown(programs.kubectl()), "kustomize", shown(directory)]
    echo_command(cmd)
    try:
        proc = subprocess.run(
            cmd, cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise TimeoutExpired(f"`{shlex.join(cmd)}`", timeout) from None
    except OSError as exc:  # found a moment ago, gone or unrunnable now
        raise KubeError(f"`{shlex.join(cmd)}` cannot run: {exc}", hint="run `make bootstrap`") from None
    if proc.returncode != 0:
        raise KubeError(
            f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}",
            hint="fix the manifests under k8s/; `pytest tests/kube/test_manifests.py` points at the culprit",
        )
    try:
        docs = list(yaml.safe_load_all(proc.stdout))
    except yaml.YAMLError as exc:
        raise KubeError(f"`{shlex.join(cmd)}` printed YAML that does not parse: {exc}") from None
    return [doc for doc in docs if isinstance(doc, dict)]


def name(obj: Mapping[str, Any]) -> str:
    """``metadata.name``."""
    return str(obj.get("metadata", {}).get("name", ""))


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """``metadata.labels`` (empty when there are none)."""
    return dict(obj.get("metadata", {}).get("labels") or {})


def ref(obj: Mapping[str, Any]) -> str:
    """``kind/name``, as kubectl prints it: ``deployment/prometheus``."""
    return f"{str(obj.get('kind', '')).lower()}/{name(obj)}"


def of_layers(objects: Iterable[KubeObject], layers: Sequence[str] | None) -> list[KubeObject]:
    """The objects of ``layers`` (every object when None), plus the Namespace objects.

    The namespace belongs to no layer: every layer needs it.
    """
    wanted = None if layers is None else set(layers)
    return [
        obj
        for obj in objects
        if obj.get("kind") == "Namespace" or wanted is None or labels(obj).get(LAYER_LABEL) in wanted
    ]


def autoscalers(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """The HorizontalPodAutoscalers among ``objects`` (k8s/base/autoscaling): `ottlab autoscale on` applies them."""
    return [obj for obj in objects if obj.get("kind") == AUTOSCALER_KIND]


def without_autoscalers(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """``objects`` but the HorizontalPodAutoscalers: what ``up`` applies (autoscaling is switched on apart)."""
    return [obj for obj in objects if obj.get("kind") != AUTOSCALER_KIND]


def in_apply_order(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """``objects`` sorted so that each comes after what it depends on (stable otherwise)."""

    def rank(obj: KubeObject) -> int:
        kind = str(obj.get("kind", ""))
        return _APPLY_ORDER.index(kind) if kind in _APPLY_ORDER else len(_APPLY_ORDER)

    return sorted(objects, key=rank)
