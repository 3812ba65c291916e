"""The encoding ladder, declared once as data (``ladder.yml``) and loaded into frozen dataclasses.

Example::

    >>> from ott.media import ladder
    >>> small = ladder.load("small")
    >>> [r.name for r in small.rungs]
    ['720p', '480p', '360p']
    >>> small.gop_seconds, small.segment_seconds
    (2, 4)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ott.media.errors import LadderError, UnsupportedSource

LADDER_FILE = Path(__file__).with_name("ladder.yml")

PROFILES = ("baseline", "main", "high")
# x264 presets, fastest first.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_LEVEL = re.compile(r"^[1-6](\.[0-2])?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Rung:
    """One rendition: output height (width follows the source aspect) and capped-VBR rate control."""

    name: str
    height: int
    video_kbps: int
    maxrate_kbps: int
    bufsize_kbps: int

    def width_for(self, source_width: int, source_height: int) -> int:
        """Width keeping the source aspect ratio, rounded to an even number (what ``scale=-2:h`` does).

        >>> Rung("360p", 360, 800, 856, 1200).width_for(1920, 1080)
        640
        """
        return max(2, round(source_width * self.height / source_height / 2) * 2)


@dataclass(frozen=True)
class Ladder:
    """A full ladder: rungs (tallest first) plus the settings every rung shares."""

    name: str
    rungs: tuple[Rung, ...]
    gop_seconds: int
    segment_seconds: int
    audio_kbps: int
    audio_sample_rate: int
    profile: str
    level: str
    preset: str

    def fitting(self, source_height: int, source: Path | None = None) -> Ladder:
        """The ladder without rungs taller than the source.

        Decision: we drop rungs that would upscale (upscaling wastes bits and adds no detail,
        and Apple's ladders stop at the source resolution). A source shorter than the smallest
        rung cannot be served by this ladder at all: :class:`UnsupportedSource`.
        """
        kept = tuple(r for r in self.rungs if r.height <= source_height)
        if not kept:
            smallest = min(r.height for r in self.rungs)
            raise UnsupportedSource(
                source or Path("?"),
                f"source height {source_height}px is below the smallest rung of ladder {self.name!r} "
                f"({smallest}px); use a taller source or a ladder with a smaller rung",
            )
        return dataclasses.replace(self, rungs=kept)

    def with_preset(self, preset: str) -> Ladder:
        """Same ladder with another x264 preset (e.g. ``ultrafast`` in tests)."""
        if preset not in PRESETS:
            raise LadderError(f"{self.name}.preset", f"unknown x264 preset {preset!r}; one of {', '.join(PRESETS)}")
        return dataclasses.replace(self, preset=preset)


def load(name: str = "default", path: Path = LADDER_FILE) -> Ladder:
    """Load and validate the ladder called ``name`` from ``path``.

    >>> load("default").rungs[0].video_kbps
    5000
    """
    try:
        with path.open(encoding="utf-8") as fh:
            document = yaml.safe_load(fh)
    except OSError as exc:
        raise LadderError("<file>", f"cannot read the ladder file: {exc}", path=path) from exc
    except yaml.YAMLError as exc:
        raise LadderError("<file>", f"not valid YAML: {exc}", path=path) from exc
    if not isinstance(document, Mapping):
        raise LadderError("<file>", "the top level must be a mapping of ladder names", path=path)
    if name not in document:
        known = ", ".join(sorted(str(k) for k in document))
        raise LadderError(name, f"no such ladder; known ladders: {known}", path=path)
    return parse(name, document[name], path=path)


def parse(name: str, data: Any, *, path: Path | None = None) -> Ladder:
    """Validate one ladder's mapping; every mistake raises :class:`LadderError` naming the field."""
    if not isinstance(data, Mapping):
        raise LadderError(name, "must be a mapping", path=path)
    allowed = {f.name for f in dataclasses.fields(Ladder)} - {"name"}
    for key in data:
        if key not in allowed:
            raise LadderError(f"{name}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}", path=path)

    def need(key: str) -> Any:
        if key not in data:
            raise LadderError(f"{name}.{key}", "missing", path=path)
        return data[key]

    gop = _positive_int(need("gop_seconds"), f"{name}.gop_seconds", path)
    segment = _positive_int(need("segment_seconds"), f"{name}.segment_seconds", path)
    if segment % gop:
        raise LadderError(f"{name}.segment_seconds",
                          f"{segment} is not a multiple of gop_seconds ({gop}); segments must start on a keyframe",
                          path=path)
    profile = need("profile")
    if profile not in PROFILES:
        raise LadderError(f"{name}.profile", f"{profile!r} is not one of {', '.join(PROFILES)}", path=path)
    level = str(need("level"))
    if not _LEVEL.match(level):
        raise LadderError(f"{name}.level", f"{level!r} is not an H.264 level such as '4.1'", path=path)
    preset = need("preset")
    if preset not in PRESETS:
        raise LadderError(f"{name}.preset", f"unknown x264 preset {preset!r}; one of {', '.join(PRESETS)}",
                          path=path)
    rungs_data = need("rungs")
    if not isinstance(rungs_data, list) or not rungs_data:
        raise LadderError(f"{name}.rungs", "must be a non-empty list", path=path)
    rungs = tuple(_rung(r, f"{name}.rungs[{i}]", path) for i, r in enumerate(rungs_data))
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise LadderError(f"{name}.rungs", f"rung names must be unique, got {names}", path=path)
    heights = [r.height for r in rungs]
    if heights != sorted(heights, reverse=True) or len(set(heights)) != len(heights):
        raise LadderError(f"{name}.rungs", f"rungs must be listed tallest first with distinct heights, got {heights}",
                          path=path)
    return Ladder(
        name=name,
        rungs=rungs,
        gop_seconds=gop,
        segment_seconds=segment,
        audio_kbps=_positive_int(need("audio_kbps"), f"{name}.audio_kbps", path),
        audio_sample_rate=_positive_int(need("audio_sample_rate"), f"{name}.audio_sample_rate", path),
        profile=profile,
        level=level,
        preset=preset,
    )


def _rung(data: Any, field: str, path: Path | None) -> Rung:
    if not isinstance(data, Mapping):
        raise LadderError(field, "must be a mapping", path=path)
    allowed = {f.name for f in dataclasses.fields(Rung)}
    for key in data:
        if key not in allowed:
            raise LadderError(f"{field}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}", path=path)
    for key in allowed:
        if key not in data:
            raise LadderError(f"{field}.{key}", "missing", path=path)
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise LadderError(f"{field}.name", f"{name!r} must be a short lowercase name such as '720p'", path=path)
    height = _positive_int(data["height"], f"{field}.height", path)
    if height % 2:
        raise LadderError(f"{field}.height", f"{height} is odd; H.264 4:2:0 needs even dimensions", path=path)
    video = _positive_int(data["video_kbps"], f"{field}.video_kbps", path)
    maxrate = _positive_int(data["maxrate_kbps"], f"{field}.maxrate_kbps", path)
    bufsize = _positive_int(data["bufsize_kbps"], f"{field}.bufsize_kbps", path)
    if maxrate < video:
        raise LadderError(f"{field}.maxrate_kbps", f"{maxrate} is below video_kbps {video}", path=path)
    if bufsize < maxrate:
        raise LadderError(f"{field}.bufsize_kbps", f"{bufsize} is below maxrate_kbps {maxrate}", path=path)
    return Rung(name=name, height=height, video_kbps=video, maxrate_kbps=maxrate, bufsize_kbps=bufsize)


def _positive_int(value: Any, field: str, path: Path | None) -> int:
    # bool is an int subclass: `true` in YAML must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LadderError(field, f"{value!r} must be a positive integer", path=path)
    return value
