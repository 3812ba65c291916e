"""The lab's Grafana dashboards, as code: one module per dashboard, one committed JSON each.

Each module builds Grafana's JSON model with the foundation SDK (:mod:`.panel`); the generated
files are committed under ``k8s/base/monitoring/dashboards/`` (the kube target's Grafana gets them
from a ConfigMap kustomize makes of that directory) and :mod:`.figure` draws the same files with
matplotlib from the lab's Prometheus. Regenerate them after changing a module::

    python -m labkit.analysis.dashboards            # writes the JSON files
    python -m labkit.analysis.dashboards --check    # exit 1 when a committed file is stale

and draw one from the lab's Prometheus (``ottlab dashboard NAME --png FILE`` does the same)::

    fig = labkit.dashboards.render("viewer-qoe", labkit.Prometheus(target.endpoint("prometheus")), minutes=10)

Names: ``viewer-qoe``, ``delivery``, ``cmcd``, ``platform``, ``capacity``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.analysis.dashboards import capacity, cmcd, delivery, platform, viewer_qoe
from labkit.core.config import repo_root
from labkit.core.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from labkit.clients.prometheus import Prometheus

# name -> its module's build(); in the order they are listed.
BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "viewer-qoe": viewer_qoe.build,
    "delivery": delivery.build,
    "cmcd": cmcd.build,
    "platform": platform.build,
    "capacity": capacity.build,
}


class UnknownDashboardError(ConfigError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no dashboard named {name!r}", hint=f"choose one of: {', '.join(names())}")


def names() -> list[str]:
    """The dashboards' names, as `ottlab dashboard` takes them."""
    return list(BUILDERS)


def directory() -> Path:
    """Where the generated JSON is committed: ``k8s/base/monitoring/dashboards``."""
    return repo_root() / "k8s" / "base" / "monitoring" / "dashboards"


def path(name: str) -> Path:
    """The committed JSON file of dashboard ``name``."""
    if name not in BUILDERS:
        raise UnknownDashboardError(name)
    return directory() / f"{name}.json"


def build(name: str) -> dict[str, Any]:
    """Grafana's JSON model of dashboard ``name``, generated now from its module."""
    if name not in BUILDERS:
        raise UnknownDashboardError(name)
    return BUILDERS[name]()


def dumps(model: dict[str, Any]) -> str:
    """The committed form of a dashboard: sorted keys, two-space indent, a final newline."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(name: str) -> dict[str, Any]:
    """The committed JSON of dashboard ``name`` (what Grafana on kube is given)."""
    file = path(name)
    try:
        model: dict[str, Any] = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"the dashboard file {file} is missing",
                          hint="run `python -m labkit.analysis.dashboards` to generate it") from None
    return model


def stale() -> list[str]:
    """The dashboards whose committed JSON differs from what their module generates now."""
    return [name for name in names()
            if not path(name).is_file() or path(name).read_text() != dumps(build(name))]


def write() -> list[Path]:
    """Generate every dashboard's JSON into :func:`directory`; the files written."""
    directory().mkdir(parents=True, exist_ok=True)
    written = []
    for name in names():
        file = path(name)
        file.write_text(dumps(build(name)))
        written.append(file)
    return written


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (panel title, PromQL) of a dashboard's JSON model, rows excluded, in panel order."""
    return [(panel.get("title", ""), target["expr"]) for panel in model.get("panels", [])
            if panel.get("type") != "row" for target in panel.get("targets", []) if target.get("expr")]


def render(dashboard: str | Mapping[str, Any], prometheus: Prometheus, *, minutes: float = 15.0,
           variables: Mapping[str, str | Sequence[str]] | None = None, end: datetime | None = None) -> Figure:
    """Dashboard ``dashboard`` (a name: its committed JSON; or a JSON model) drawn from ``prometheus`` as one figure.

    See :mod:`labkit.analysis.dashboards.figure`: every panel's queries over the last ``minutes``,
    template variables All (``.*``) unless ``variables`` names values.
    """
    from labkit.analysis.dashboards import figure

    model = load(dashboard) if isinstance(dashboard, str) else dashboard
    return figure.render(model, prometheus, minutes=minutes, variables=variables, end=end)
