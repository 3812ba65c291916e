"""What a source file is, asked of ffprobe (JSON) and, for damage, of ffmpeg's decoder.

Example::

    info = inspect(Path("clip.mp4"))
    info.width, info.height, info.fps, info.has_audio
    # -> (1280, 720, 25.0, True)
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ott.media import process
from ott.media.errors import (
    EmptySource,
    NotMedia,
    NoVideoStream,
    ProbeFailed,
    SourceNotFound,
    TruncatedMedia,
    UnsupportedSource,
)

# Pixel formats we accept and convert to yuv420p 8-bit: 8-bit YUV and NV12. High bit depth, RGB,
# palette and grey sources would need a conversion decision (tone mapping, colour matrix) we do not make.
SUPPORTED_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})
MIN_FPS, MAX_FPS = 10.0, 60.0

# Phrases ffprobe/ffmpeg print for inputs that stop early rather than inputs that never were media.
_TRUNCATION_HINTS = ("moov atom not found", "partial file", "end of file", "truncat", "invalid nal",
                     "error while decoding", "packet mismatch", "incomplete")


@dataclass(frozen=True)
class SourceInfo:
    """The facts of a source the transcoder needs."""

    path: Path
    duration: float
    width: int
    height: int
    fps: float
    pix_fmt: str
    has_audio: bool
    video_codec: str


def ffprobe_json(path: Path | str, *extra: str, timeout: float = 30, quiet: bool = True) -> dict[str, Any]:
    """Run ffprobe with JSON output on ``path`` and return the parsed document.

    Raises :class:`ProbeFailed` with ffprobe's message if it fails or times out.
    """
    args = [process.FFPROBE, "-v", "error", "-of", "json", *extra, str(path)]
    try:
        result = process.run(args, timeout=timeout, quiet=quiet)
    except subprocess.TimeoutExpired as exc:
        raise ProbeFailed(f"ffprobe took longer than {timeout}s on {path}") from exc
    if result.returncode != 0:
        raise ProbeFailed(f"ffprobe failed on {path}: {result.stderr.strip()[-500:]}")
    try:
        document: dict[str, Any] = json.loads(result.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise ProbeFailed(f"ffprobe printed invalid JSON for {path}: {exc}") from exc
    return document


def inspect(path: Path, *, timeout: float = 60, decode_check: bool = True) -> SourceInfo:
    """Describe ``path`` or raise the specific :class:`~ott.media.errors.SourceError` for what is wrong.

    Order matters: missing → empty → not media / truncated header → no video → unsupported →
    damaged data (a full decode with ``ffmpeg -v error``; set ``decode_check=False`` to skip it).
    """
    # Absolute, so a name starting with '-' or containing ':' is never read as an option or protocol.
    path = path.absolute()
    if not path.is_file():
        raise SourceNotFound(path)
    if path.stat().st_size == 0:
        raise EmptySource(path)
    args = [process.FFPROBE, "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)]
    try:
        result = process.run(args, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise NotMedia(path, f"ffprobe gave no answer within {timeout}s") from exc
    stderr = result.stderr.strip()
    if result.returncode != 0:
        detail = stderr.splitlines()[-1] if stderr else f"ffprobe exit status {result.returncode}"
        # ffprobe says "moov atom not found" for *any* unreadable .mp4; only a file that starts like
        # an MP4 (ftyp/mdat box) and lacks its index is a truncated upload rather than a wrong file.
        if _starts_like_mp4(path) and any(hint in stderr.lower() for hint in _TRUNCATION_HINTS):
            raise TruncatedMedia(path, stderr.splitlines()[0])
        raise NotMedia(path, detail)
    document = json.loads(result.stdout or "{}")
    streams: list[dict[str, Any]] = document.get("streams", [])
    fmt: dict[str, Any] = document.get("format", {})
    # Attached pictures (cover art) are "video" streams ffprobe lists for audio files: not video.
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not s.get("disposition", {}).get("attached_pic")]
    if not videos:
        if not streams:
            raise NotMedia(path, "no audio or video streams")
        raise NoVideoStream(path)
    video = videos[0]
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    pix_fmt = str(video.get("pix_fmt") or "unknown")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    if width <= 0 or height <= 0:
        raise UnsupportedSource(path, "the video stream has no frame size (damaged header?)")
    if pix_fmt not in SUPPORTED_PIX_FMTS:
        raise UnsupportedSource(path, f"pixel format {pix_fmt!r} is not supported; convert it to 8-bit "
                                      f"YUV (one of {', '.join(sorted(SUPPORTED_PIX_FMTS))}) first")
    if not MIN_FPS <= fps <= MAX_FPS:
        raise UnsupportedSource(path, f"frame rate {fps:.3f} is outside {MIN_FPS:g}-{MAX_FPS:g} fps")
    if duration <= 0:
        raise TruncatedMedia(path, "no duration: the container index is missing")
    if decode_check:
        _decode_check(path, timeout=max(timeout, duration * 4))
    return SourceInfo(path=path, duration=duration, width=width, height=height, fps=fps, pix_fmt=pix_fmt,
                      has_audio=any(s.get("codec_type") == "audio" for s in streams),
                      video_codec=str(video.get("codec_name")))


def _decode_check(path: Path, *, timeout: float) -> None:
    """Decode everything; a cut ``mdat`` or corrupt slices show up as errors here, not in ffprobe."""
    args = [process.FFMPEG, "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), "-f", "null", "-"]
    try:
        result = process.run(args, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TruncatedMedia(path, f"decoding did not finish within {timeout:.0f}s") from exc
    errors = result.stderr.strip()
    if result.returncode != 0 or errors:
        raise TruncatedMedia(path, errors.splitlines()[0] if errors else f"ffmpeg exit status {result.returncode}")


def _starts_like_mp4(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    return len(head) >= 8 and head[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip")


def _rate(value: Any) -> float:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(rate)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
