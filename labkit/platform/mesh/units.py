"""The units Istio's resources write: durations (``"2s"``, ``"500ms"``, ``"1m30s"``, ``"0.5s"``)."""

from __future__ import annotations

import re

from labkit.platform.mesh.errors import MeshConfigError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")


def duration_seconds(text: str) -> float:
    """Seconds in a duration as Istio (protobuf JSON and CEL's ``duration()``) writes it.

    >>> duration_seconds("1m30s"), duration_seconds("500ms")
    (90.0, 0.5)
    """
    if not isinstance(text, str) or not text:
        raise MeshConfigError(f"{text!r} is not a duration", hint='write one like "2s", "500ms" or "1m30s"')
    position, total = 0, 0.0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise MeshConfigError(f"{text!r} is not a duration", hint='write one like "2s", "500ms" or "1m30s"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total
