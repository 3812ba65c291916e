"""Bad sources, made with plain ffmpeg calls: shared by the pipeline's and the transcoder's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from ott.media import errors


def ffmpeg(*args: str) -> None:
    """Make a test input (bad or odd media) with a plain ffmpeg call."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args],
                   check=True, stdin=subprocess.DEVNULL, timeout=60)


def _truncated_index(tmp: Path, clip: Path) -> Path:
    # An upload cut short, MP4 with its index (moov) at the end: the index never arrived.
    whole = tmp / "moov-at-end.mp4"
    ffmpeg("-i", str(clip), "-c", "copy", "-movflags", "-faststart", str(whole))
    cut = tmp / "cut-index.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def _truncated_data(tmp: Path, clip: Path) -> Path:
    # Index first (faststart), media data cut: ffprobe is happy, decoding is not.
    cut = tmp / "cut-data.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    return cut


def _audio_only(tmp: Path, clip: Path) -> Path:
    out = tmp / "audio.m4a"
    ffmpeg("-i", str(clip), "-vn", "-c", "copy", str(out))
    return out


def _not_media(tmp: Path, clip: Path) -> Path:
    out = tmp / "notes.mp4"  # the extension lies
    out.write_text("these are meeting notes, not a video\n" * 50)
    return out


def _empty(tmp: Path, clip: Path) -> Path:
    out = tmp / "empty.mp4"
    out.touch()
    return out


def _too_small(tmp: Path, clip: Path) -> Path:
    out = tmp / "tiny.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=1", "-c:v", "libx264",
           "-preset", "ultrafast", str(out))
    return out


def _grey_16bit(tmp: Path, clip: Path) -> Path:
    out = tmp / "grey16.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=1", "-c:v", "ffv1", "-pix_fmt",
           "gray16le", str(out))
    return out


def _ten_bit(tmp: Path, clip: Path) -> Path:
    out = tmp / "10bit.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=1", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", str(out))
    return out


BAD_INPUTS: list[tuple[Callable[[Path, Path], Path], type[errors.MediaError], str]] = [
    (_truncated_index, errors.TruncatedMedia, "truncated"),
    (_truncated_data, errors.TruncatedMedia, "truncated"),
    (_audio_only, errors.NoVideoStream, "no video stream"),
    (_not_media, errors.NotMedia, "not a media file"),
    (_empty, errors.EmptySource, "is empty"),
    (_too_small, errors.UnsupportedSource, "below the smallest rung"),
    (_grey_16bit, errors.UnsupportedSource, "pixel format 'gray16le'"),
    (_ten_bit, errors.UnsupportedSource, "pixel format 'yuv420p10le'"),
]
