"""labkit: the instruments of OTT Lab.

The curated public API: a notebook needs nothing else.

    >>> import labkit
    >>> target = labkit.make_target()            # doctest: +SKIP
    >>> target.up()                              # doctest: +SKIP
"""

import importlib
from types import ModuleType

from labkit import environment, monitoring, platform
from labkit.config import LabConfig
from labkit.errors import (
    ClusterUnreachableError,
    ComponentFailedError,
    ConfigError,
    LabBusyError,
    LabDirError,
    LabError,
    MissingBinaryError,
    NotRunningError,
    PortInUseError,
    PrometheusError,
    TimeoutExpired,
    UnknownComponentError,
    UnknownTargetError,
)
from labkit.prometheus import Prometheus
from labkit.targets import ComponentStatus, Target, make_target

__version__ = "0.1.0"

__all__ = [
    "ClusterUnreachableError",
    "ComponentFailedError",
    "ComponentStatus",
    "ConfigError",
    "LabBusyError",
    "LabConfig",
    "LabDirError",
    "LabError",
    "MissingBinaryError",
    "NotRunningError",
    "PortInUseError",
    "Prometheus",
    "PrometheusError",
    "Target",
    "TimeoutExpired",
    "UnknownComponentError",
    "UnknownTargetError",
    "audience",
    "bandwidth",
    "browser",
    "environment",
    "make_target",
    "monitoring",
    "panels",
    "platform",
    "plots",
    "qoe",
]


def __getattr__(name: str) -> ModuleType:
    # Widgets and matplotlib load only when a notebook asks for them, keeping `ottlab` quick.
    if name in ("apis", "audience", "bandwidth", "browser", "client", "panels", "plots", "qoe", "seed"):
        return importlib.import_module(f"labkit.{name}")
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
