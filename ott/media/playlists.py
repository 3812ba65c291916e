"""Post-processing of ffmpeg's playlists: a complete multivariant playlist and I-frame playlists.

ffmpeg's master playlist estimates BANDWIDTH from the target bitrate and lacks AVERAGE-BANDWIDTH,
FRAME-RATE, EXT-X-INDEPENDENT-SEGMENTS and I-frame playlists. We measure what was actually written
(:func:`ott.media.analysis.analyse`) and rewrite it; every file is replaced atomically.

Example::

    title = write_playlists(Path("staging"))
    print((Path("staging") / "master.m3u8").read_text())
    # master.m3u8 now reads:
    #EXTM3U
    #EXT-X-VERSION:7
    #EXT-X-INDEPENDENT-SEGMENTS
    #EXT-X-STREAM-INF:BANDWIDTH=1558368,AVERAGE-BANDWIDTH=1555407,CODECS="avc1.64001f,mp4a.40.2",...
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ott.media.analysis import Rung, Title, analyse

IFRAME_PLAYLIST = "iframes.m3u8"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and one rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.chmod(0o644)  # mkstemp creates 0600; the origin must be able to read playlists
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def iframe_playlist(rung: Rung) -> str:
    """The ``EXT-X-I-FRAMES-ONLY`` playlist for ``rung``: one byte range per addressable keyframe.

    Each entry lasts until the next I-frame (or the end of the stream).
    """
    entries: list[tuple[str, int, int, float]] = []  # (uri, offset, length, pts)
    for segment in rung.segments:
        entries.extend((segment.uri, offset, length, pts) for offset, length, pts in segment.iframe_ranges)
    stream_end = rung.segments[-1].first_video_pts or 0.0
    stream_end += rung.segments[-1].duration
    durations = [
        (entries[i + 1][3] if i + 1 < len(entries) else stream_end) - entry[3] for i, entry in enumerate(entries)
    ]
    target = max(1, math.ceil(max(durations, default=1.0) - 1e-6))
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{7 if rung.fmp4 else 4}", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-I-FRAMES-ONLY",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    if rung.init_uri:
        lines.append(f'#EXT-X-MAP:URI="{rung.init_uri}"')
    if rung.key_line:
        lines.append(rung.key_line)
    for (uri, offset, length, _), duration in zip(entries, durations, strict=True):
        lines += [f"#EXTINF:{duration:.6f},", f"#EXT-X-BYTERANGE:{length}@{offset}", uri]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def iframe_bandwidth(rung: Rung) -> int:
    """Peak bitrate of the I-frame playlist: the largest range over the time it stands for."""
    text = iframe_playlist(rung)
    peak = 0
    duration = 0.0
    for line in text.splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].rstrip(","))
        elif line.startswith("#EXT-X-BYTERANGE:") and duration > 0:
            length = int(line[17:].split("@")[0])
            peak = max(peak, math.ceil(length * 8 / duration))
    return peak


def master_playlist(title: Title) -> str:
    """The multivariant playlist with measured BANDWIDTH/AVERAGE-BANDWIDTH and every attribute."""
    version = 7 if any(r.fmp4 for r in title.rungs) else 4
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    # Highest BANDWIDTH first: some players start with the first listed variant.
    rungs = sorted(title.rungs, key=lambda r: r.peak_bps, reverse=True)
    for rung in rungs:
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={rung.peak_bps},AVERAGE-BANDWIDTH={rung.average_bps},"
            f'CODECS="{rung.codecs}",RESOLUTION={rung.width}x{rung.height},FRAME-RATE={rung.fps:.3f}'
        )
        lines.append(rung.uri)
    for rung in rungs:
        uri = str(Path(rung.uri).parent / IFRAME_PLAYLIST)
        lines.append(
            f"#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={iframe_bandwidth(rung)},CODECS=\"{rung.video_codec}\","
            f'RESOLUTION={rung.width}x{rung.height},URI="{uri}"'
        )
    return "\n".join(lines) + "\n"


def write_playlists(root: Path, *, key: bytes | None = None, master_name: str = "master.m3u8") -> Title:
    """Measure ``root`` and rewrite its multivariant playlist; write one ``iframes.m3u8`` per rung.

    ``key`` is needed for AES-128 output (segments are decrypted in memory to find keyframes).
    """
    title = analyse(root, master_name=master_name, key=key)
    for rung in title.rungs:
        write_atomic(rung.playlist.parent / IFRAME_PLAYLIST, iframe_playlist(rung))
    write_atomic(title.master, master_playlist(title))
    return title
