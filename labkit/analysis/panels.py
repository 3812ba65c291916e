"""Thin ipywidgets panels for interactive use. Checks never live here: papermill cannot see
errors raised inside widget callbacks, so every notebook asserts in plain cells."""

from __future__ import annotations

import ipywidgets as widgets
from IPython.display import display

from labkit.targets.base import Target


def status_panel(target: Target) -> widgets.VBox:
    """A refresh button over the target's status table."""
    out = widgets.Output()
    button = widgets.Button(description="refresh status", icon="refresh")

    def refresh(_: object = None) -> None:
        out.clear_output(wait=True)
        with out:
            display(target.status_frame())

    button.on_click(refresh)
    refresh()
    return widgets.VBox([button, out])
