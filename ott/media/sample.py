"""Deterministic sample content: a timecoded test pattern with a beep every second.

The burned-in clock (``HH:MM:SS.mmm`` from the frame's PTS) and frame counter let later labs read
latency and spot dropped or repeated frames from a screenshot; the 1 kHz beep at each whole second
makes audio continuity (and A/V sync against the clock) audible.

Example::

    from pathlib import Path
    make_sample(Path("/tmp/clip.mp4"), 4, width=640, height=360)
    # -> PosixPath('/tmp/clip.mp4')
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ott.media import process
from ott.media.errors import EncodeFailed, MediaError

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf")
BEEP_HZ = 1000
BEEP_SECONDS = 0.1


def sample_command(out: Path, seconds: float, *, width: int = 1280, height: int = 720, fps: int = 25,
                   font: Path = FONT) -> list[str]:
    """The ffmpeg arguments :func:`make_sample` runs (pure, for inspection and tests)."""
    if seconds <= 0 or width <= 0 or height <= 0 or fps <= 0 or width % 2 or height % 2:
        raise ValueError(f"expected positive seconds/fps and even width/height, got "
                         f"seconds={seconds} {width}x{height} fps={fps}")
    size = max(16, height // 8)
    # ':' and ',' separate filter options and filters; the font path and text are escaped for them.
    fontfile = str(font).replace("\\", "\\\\").replace(":", "\\:")
    box = f"fontfile={fontfile}:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=8"
    clock = f"drawtext={box}:fontsize={size}:x=(w-text_w)/2:y=h/10:text='%{{pts\\:hms}}'"
    counter = f"drawtext={box}:fontsize={size * 2 // 3}:x=(w-text_w)/2:y=h/10+{size * 3 // 2}:text='frame %{{n}}'"
    # A 100 ms beep at every whole second: lt(mod(t,1),0.1) gates the sine.
    tone = (f"aevalsrc=exprs='0.5*sin(2*PI*{BEEP_HZ}*t)*lt(mod(t\\,1)\\,{BEEP_SECONDS})'"
            f":sample_rate=48000:channel_layout=stereo:duration={seconds}")
    return [
        process.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", tone,
        "-vf", f"{clock},{counter},format=yuv420p",
        "-map", "0:v", "-map", "1:a",
        # Determinism: one x264 thread (thread scheduling is the only source of variation),
        # bitexact muxer/encoders (no version strings), no creation time metadata.
        "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-threads", "1",
        "-g", str(fps * 2), "-b:v", f"{max(300, width * height * fps // 10000)}k",
        "-c:a", "aac", "-b:a", "128k",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", "-t", str(seconds),
        "-f", "mp4", str(out),
    ]


def make_sample(out: Path, seconds: float, *, width: int = 1280, height: int = 720, fps: int = 25,
                timeout: float = 300) -> Path:
    """Render the sample clip to ``out`` (H.264 High + AAC in MP4); same arguments, same bytes.

    Written to a temporary name beside ``out`` and renamed, so ``out`` is never a half file.
    """
    if not FONT.is_file():
        raise MediaError(f"font {FONT} not found; install fonts-dejavu-core")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        args = sample_command(tmp, seconds, width=width, height=height, fps=fps)
        try:
            result = process.run(args, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise EncodeFailed(f"sample rendering took longer than {timeout}s") from exc
        if result.returncode != 0:
            raise EncodeFailed(f"ffmpeg exited with {result.returncode} rendering the sample",
                               result.stderr.splitlines()[-20:])
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
