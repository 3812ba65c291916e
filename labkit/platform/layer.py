"""A layer of the platform: a named group of components and the config files they need.

``write_configs`` returns file contents keyed by a path relative to the lab's ``conf``
directory; the local target writes them before starting the layer's processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from labkit.core.config import LabConfig
from labkit.platform.component import Component

ConfigWriter = Callable[[LabConfig, Sequence[Component]], Mapping[str, str]]


def _no_configs(cfg: LabConfig, platform: Sequence[Component]) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class Layer:
    name: str
    components: tuple[Component, ...]
    # Receives every component of the platform, so monitoring can scrape them all.
    write_configs: ConfigWriter = _no_configs
    description: str = ""
