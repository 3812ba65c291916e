"""The lab's settings, read once from the environment and validated early.

| variable            | default            | meaning                                             |
|---------------------|--------------------|-----------------------------------------------------|
| ``OTTLAB_TARGET``   | ``local``          | where the platform runs: ``local`` or ``kube``      |
| ``OTTLAB_HOME``     | ``<repo>/var``     | the lab directory: configs, logs, data              |
| ``OTTLAB_BASE_PORT``| ``18000``          | every local port is this base plus a fixed offset   |
| ``OTTLAB_NAMESPACE``| ``ottlab``         | the Kubernetes namespace of the kube target         |
| ``OTTLAB_READY_TIMEOUT`` | ``60``        | seconds a component may take to become ready        |
| ``OTTLAB_MESH``     | ``strict``         | the service mesh: ``strict``, ``permissive``, ``off``  |

Example::

    >>> cfg = LabConfig.from_env({"OTTLAB_BASE_PORT": "19000"})
    >>> cfg.base_port
    19000
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from labkit.core.errors import ConfigError, UnknownTargetError

TARGETS = ("local", "kube")
# The service mesh (OTTLAB_MESH): on with its mTLS mode (STRICT by default, PERMISSIVE for the migration lesson)
# or off; Envoy sidecars rendered by labkit on the local target (labkit.targets.local.mesh),
# k8s/components/mesh under Istio on kube (labkit.targets.kube.mesh).
MESH_MODES = ("off", "permissive", "strict")
# What a lab runs with when nothing says otherwise (a running local lab keeps the mode it came up with).
DEFAULT_MESH = "strict"
HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 18000
# The highest offset a component may use; keeps every port below 65536.
MAX_PORT_OFFSET = 999

T = TypeVar("T")


def repo_root() -> Path:
    """The checkout this labkit was installed from (editable installs, the lab's normal case)."""
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LabConfig:
    target: str = "local"
    home: Path = repo_root() / "var"
    base_port: int = DEFAULT_BASE_PORT
    namespace: str = "ottlab"
    ready_timeout: float = 60.0
    host: str = HOST
    mesh: str = DEFAULT_MESH

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UnknownTargetError(self.target, list(TARGETS))
        if self.mesh not in MESH_MODES:
            raise ConfigError(f"OTTLAB_MESH={self.mesh!r} is not a mesh mode",
                              hint=f"choose one of {', '.join(MESH_MODES)}")
        if not 1024 <= self.base_port <= 65535 - MAX_PORT_OFFSET:
            raise ConfigError(
                f"OTTLAB_BASE_PORT={self.base_port} is out of range",
                hint=f"choose a port from 1024 to {65535 - MAX_PORT_OFFSET}",
            )
        if self.ready_timeout <= 0:
            raise ConfigError(
                f"OTTLAB_READY_TIMEOUT={self.ready_timeout:g} must be positive",
                hint="give the seconds a component may take to start, e.g. 60",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> LabConfig:
        """Build the config from ``OTTLAB_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "OTTLAB_TARGET" in env:
            values["target"] = env["OTTLAB_TARGET"].strip().lower()
        if env.get("OTTLAB_HOME"):
            values["home"] = Path(env["OTTLAB_HOME"]).expanduser()
        if "OTTLAB_BASE_PORT" in env:
            values["base_port"] = _int(env, "OTTLAB_BASE_PORT")
        if env.get("OTTLAB_NAMESPACE"):
            values["namespace"] = env["OTTLAB_NAMESPACE"]
        if "OTTLAB_READY_TIMEOUT" in env:
            values["ready_timeout"] = _float(env, "OTTLAB_READY_TIMEOUT")
        if env.get("OTTLAB_MESH"):
            values["mesh"] = env["OTTLAB_MESH"].strip().lower()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "target" in values:
            values["target"] = str(values["target"]).strip().lower()
        if "home" in values:
            values["home"] = Path(str(values["home"])).expanduser()
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> LabConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    # The lab directory's layout, in one place.
    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"


def _int(env: Mapping[str, str], name: str) -> int:
    return _parse(env, name, int, "a whole number", "a port, e.g. 18000")


def _float(env: Mapping[str, str], name: str) -> float:
    return _parse(env, name, float, "a number", "seconds, e.g. 60")


def _parse(env: Mapping[str, str], name: str, convert: Callable[[str], T], what: str, example: str) -> T:
    try:
        return convert(env[name])
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r} is not {what}", hint=f"set {name} to {example}") from None
