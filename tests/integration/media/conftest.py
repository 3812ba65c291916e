"""Real-ffmpeg fixtures for the media pipeline: one shared sample clip and a fresh media root per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ott.media import ladder
from ott.media.sample import make_sample

# Short clips keep the whole media tier well under 90 s on a 2-core machine; CI uses the shortest.
SECONDS = 4.0 if os.environ.get("CI") == "true" else 6.0


@pytest.fixture(scope="session")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1280×720 timecoded clip: tall enough for every rung of the small ladder."""
    return make_sample(tmp_path_factory.mktemp("sample") / "clip.mp4", SECONDS, width=1280, height=720)


@pytest.fixture
def small_ladder() -> ladder.Ladder:
    return ladder.load("small")


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def clip_seconds() -> float:
    return SECONDS
