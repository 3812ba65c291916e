"""The platform: its layers in start order, and lookups over their components."""

from __future__ import annotations

from labkit import apis, edge, media, monitoring, player
from labkit.component import Component
from labkit.errors import UnknownComponentError
from labkit.layer import Layer

LAYERS: tuple[Layer, ...] = (monitoring.LAYER, apis.LAYER, media.LAYER, edge.LAYER, player.LAYER)


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
