"""`ottlab sample` makes a real, playable clip with ffmpeg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ott.media.probe import inspect

pytestmark = pytest.mark.integration


def test_sample_writes_a_clip_of_the_asked_length(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "sample", "--seconds", "2", "--out", str(out),
                           "--width", "640", "--height", "360"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "+ " in done.stdout and done.stdout.strip().endswith(str(out))  # the ffmpeg command is echoed
    info = inspect(out)
    assert (info.width, info.height, info.has_audio) == (640, 360, True)
    assert abs(info.duration - 2) < 0.1


def test_sample_where_a_folder_cannot_be_made_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "sample", "--seconds", "1", "--out",
                           str(tmp_path / "notes.txt" / "clip.mp4")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ottlab: error" in done.stderr and "notes.txt" in done.stderr
