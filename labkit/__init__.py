"""labkit: the instruments of OTT Lab.

The curated public API: a notebook needs nothing else.

    >>> import labkit
    >>> target = labkit.make_target()            # doctest: +SKIP
    >>> target.up()                              # doctest: +SKIP
"""

from labkit import monitoring, platform
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
    "PrometheusError",
    "Target",
    "TimeoutExpired",
    "UnknownComponentError",
    "UnknownTargetError",
    "make_target",
    "monitoring",
    "platform",
]
