"""What this machine has: the programs the lab runs, their versions, and what needs each."""

from __future__ import annotations

import platform as host_platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd


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
    Tool("kubectl", ("version", "--client"), "kubernetes-client", "kube"),
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
    """One row per program: where it is, its version, which target needs it, and its package."""
    rows = [{"program": "python", "path": sys.executable, "version": sys.version.split()[0],
             "needed_by": "all", "package": "python3", "found": True}]
    for tool in TOOLS:
        path = next((p for p in (shutil.which(n) for n in (tool.name, *tool.aliases)) if p), None)
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
