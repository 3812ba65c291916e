"""The platform as declared: its layers in start order, and lookups over their components.

- :mod:`~labkit.platform.component`: a component, declared once for both targets;
- :mod:`~labkit.platform.layer`: a named group of components and their config files;
- :mod:`~labkit.platform.readiness`: readiness probes;
- :mod:`~labkit.platform.nginx`: what every nginx of the lab has in common;
- :mod:`~labkit.platform.layers`: one package per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from labkit.core.errors import UnknownComponentError
from labkit.platform.component import Component
from labkit.platform.layer import Layer
from labkit.platform.layers import apis, cdn, media, monitoring, player
from labkit.platform.layers.monitoring import probes

LAYERS: tuple[Layer, ...] = (monitoring.LAYER, apis.LAYER, media.LAYER, cdn.LAYER, player.LAYER)


# The synthetic probes' job (the blackbox exporter's requests through every PoP): one more job in
# Prometheus besides the components' own :func:`scrape_jobs`, on every target.
PROBE_JOB = probes.JOB


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


def scrape_jobs(layer_names: Sequence[str] | None = None) -> list[str]:
    """The Prometheus job of every component (of ``layer_names``, or all) that has metrics, in start order.

    The same names on every target: what a notebook waits for with ``Prometheus.wait_for_targets``.

    >>> scrape_jobs(["monitoring"])
    ['prometheus', 'alertmanager']
    """
    wanted = None if layer_names is None else [layer(name) for name in layer_names]
    return [c.scrape_job for lay in (wanted or LAYERS) for c in lay.components if c.scrape_job is not None]
