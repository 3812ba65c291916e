"""Sample content: deterministic bytes, video + audio of the requested duration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ott.media.sample import make_sample

pytestmark = pytest.mark.integration


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    first = make_sample(tmp_path / "a.mp4", 2, width=320, height=180)
    second = make_sample(tmp_path / "b.mp4", 2, width=320, height=180)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no .part leftovers


def test_clip_has_video_and_audio_of_the_right_duration(sample_clip: Path, clip_seconds: float) -> None:
    probe = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(sample_clip)],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=True)
    streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["profile"], video["width"], video["height"]) == ("h264", "High", 1280, 720)
    assert video["avg_frame_rate"] == "25/1" and video["pix_fmt"] == "yuv420p"
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000"
    assert float(video["duration"]) == pytest.approx(clip_seconds, abs=0.05)
    assert float(audio["duration"]) == pytest.approx(clip_seconds, abs=0.05)


def test_beep_is_on_each_second(tmp_path: Path) -> None:
    # The beep gates a 1 kHz tone on for 100 ms at every whole second: loud there, silent mid-second.
    clip = make_sample(tmp_path / "c.mp4", 2, width=320, height=180)

    def volume(start: float) -> float:
        result = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-ss", str(start), "-t", "0.08", "-i",
                                 str(clip), "-af", "volumedetect", "-vn", "-f", "null", "-"],
                                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=True)
        line = next(x for x in result.stderr.splitlines() if "mean_volume" in x)
        return float(line.split("mean_volume:")[1].split("dB")[0])

    assert volume(1.01) > -20
    assert volume(1.5) < -60
