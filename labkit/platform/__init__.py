"""The platform as declared: its layers in start order, and lookups over their components.

- :mod:`~labkit.platform.component`: a component, declared once for both targets;
- :mod:`~labkit.platform.layer`: a named group of components and their config files;
- :mod:`~labkit.platform.readiness`: readiness probes;
- :mod:`~labkit.platform.nginx`: what every nginx of the lab has in common;
- :mod:`~labkit.platform.layers`: one package per layer.
"""

from __future__ import annotations

from labkit.core.errors import UnknownComponentError
from labkit.platform.component import Component
from labkit.platform.layer import Layer
from labkit.platform.layers import apis, cdn, media, monitoring, player

LAYERS: tuple[Layer, ...] = (monitoring.LAYER, apis.LAYER, media.LAYER, cdn.LAYER, player.LAYER)


def layers() -> list[Layer]:
    return list(LAYERS)


def layer(name: str) -> Layer:
    for candidate in LAYERS:
        if candidate.name == name:
            return candidate
    raise UnknownComponentError(name, [lay.name for lay in LAYERS])


def components() -> list[Component]:
    """Every declared component, in start order."""
    return [c for lay in LAYERS for c in lay.components]
