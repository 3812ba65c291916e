"""labkit: the instruments of OTT Lab.

The curated public API: a notebook needs nothing else.

    >>> import labkit
    >>> target = labkit.make_target()            # doctest: +SKIP
    >>> target.up()                              # doctest: +SKIP

labkit is organised by kind; each package's docstring lists its modules:

- :mod:`labkit.core`: settings, errors, console output, the one wait helper;
- :mod:`labkit.platform`: the components and layers, declared once for both targets;
- :mod:`labkit.targets`: ``local`` and ``kube`` behind one interface;
- :mod:`labkit.clients`: the APIs, seeding, transcode jobs, Prometheus, the PoPs, one URL fetched, HLS playlists;
- :mod:`labkit.traffic`: simulated viewers, herds and the browser;
- :mod:`labkit.analysis`: QoE maths, plots and panels;
- :mod:`labkit.drills`: faults a lesson injects and clears.
"""

import importlib
from types import ModuleType

from labkit import platform
from labkit.clients.prometheus import Prometheus
from labkit.core import environment
from labkit.core.config import LabConfig
from labkit.core.errors import (
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
from labkit.platform.layers import monitoring
from labkit.targets import ComponentStatus, Target, make_target

__version__ = "0.1.0"

# Modules a notebook reaches as ``labkit.<name>``, loaded on first use: widgets, pandas and
# matplotlib stay out of `ottlab`'s start-up.
_LAZY = {
    "parameters": "labkit.core.parameters",
    "api": "labkit.clients.api",
    "seed": "labkit.clients.seed",
    "transcoding": "labkit.clients.transcoding",
    "pops": "labkit.clients.pops",
    "web": "labkit.clients.web",
    "hls": "labkit.clients.hls",
    "audience": "labkit.traffic.audience",
    "wave": "labkit.traffic.wave",
    "herd": "labkit.traffic.herd",
    "browser": "labkit.traffic.browser",
    "bandwidth": "labkit.traffic.bandwidth",
    "abr": "labkit.traffic.abr",
    "experience": "labkit.analysis.experience",
    "plots": "labkit.analysis.plots",
    "panels": "labkit.analysis.panels",
    "dashboards": "labkit.analysis.dashboards",
    "apis": "labkit.platform.layers.apis",
    "media": "labkit.platform.layers.media",
    "cdn": "labkit.platform.layers.cdn",
    "player": "labkit.platform.layers.player",
    "live_playlist": "labkit.drills.live_playlist",
    "cache_lock": "labkit.drills.cache_lock",
}

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
    "environment",
    "make_target",
    "monitoring",
    "platform",
    *_LAZY,
]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
