"""Check a produced or published HLS title against the rules the issue lists; report every problem.

Checks: every playlist parses (m3u8); the multivariant playlist carries EXT-X-INDEPENDENT-SEGMENTS,
I-frame variants and, per variant, BANDWIDTH, AVERAGE-BANDWIDTH, CODECS, RESOLUTION and FRAME-RATE;
media playlists are VOD with EXT-X-ENDLIST; every segment of every rung starts with a keyframe, at
the same timestamp in every rung; no segment is longer than the target duration; BANDWIDTH ≥ the
measured peak segment bitrate; AVERAGE-BANDWIDTH within 10 % of the measured average; and ffmpeg
decodes the whole multivariant stream without a single error.

Encrypted titles: pass ``key``. Segments are decrypted in memory for ffprobe, and for the decode
check a private temp *view* of the title is built whose playlists point their EXT-X-KEY at a local
key file (segments are symlinked, still encrypted), so ffmpeg itself performs the AES-128 decryption
exactly as a player would. The published tree is never touched.

Example::

    report = verify(media_root / "big-buck-bunny")
    report.rungs[0].peak_bps <= report.rungs[0].declared_bandwidth
    # -> True
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import m3u8

from ott.media import process
from ott.media.analysis import Title, analyse, load_playlist
from ott.media.errors import VerificationFailed

AVERAGE_TOLERANCE = 0.10
REQUIRED_ATTRIBUTES = ("BANDWIDTH", "AVERAGE-BANDWIDTH", "CODECS", "RESOLUTION", "FRAME-RATE")


@dataclass(frozen=True)
class RungReport:
    name: str
    segments: int
    peak_bps: int
    average_bps: int
    declared_bandwidth: int
    declared_average: int
    resolution: str
    codecs: str


@dataclass(frozen=True)
class Report:
    root: Path
    encrypted: bool
    rungs: tuple[RungReport, ...]
    segment_starts: tuple[float, ...]
    decode_seconds: float


def verify(root: Path, *, key: bytes | None = None, master_name: str = "master.m3u8",
           decode: bool = True, decode_timeout: float = 300) -> Report:
    """Verify the title in ``root``; raise :class:`VerificationFailed` listing every problem found."""
    problems: list[str] = []
    title = analyse(root, master_name=master_name, key=key)  # raises for unparsable or unreadable trees
    master_text = title.master.read_text(encoding="utf-8")
    master = m3u8.loads(master_text, uri=str(title.master))
    declared = _declared(master_text, problems)
    if "#EXT-X-INDEPENDENT-SEGMENTS" not in master_text:
        problems.append("multivariant playlist lacks EXT-X-INDEPENDENT-SEGMENTS")
    if not master.iframe_playlists:
        problems.append("multivariant playlist has no EXT-X-I-FRAME-STREAM-INF")
    for iframe in master.iframe_playlists:
        path = root / str(iframe.uri)
        try:
            parsed = load_playlist(path)
        except VerificationFailed as exc:
            problems.extend(exc.problems)
            continue
        if not parsed.is_i_frames_only or not parsed.segments:
            problems.append(f"I-frame playlist {iframe.uri} is not I-frames-only or is empty")
        for seg in parsed.segments:
            if not seg.byterange:
                problems.append(f"I-frame playlist {iframe.uri}: entry {seg.uri} has no EXT-X-BYTERANGE")
    rung_reports = []
    for rung in title.rungs:
        media_text = rung.playlist.read_text(encoding="utf-8")
        if "#EXT-X-PLAYLIST-TYPE:VOD" not in media_text or "#EXT-X-ENDLIST" not in media_text:
            problems.append(f"{rung.name}: media playlist is not a finished VOD playlist")
        attributes = declared.get(rung.uri, {})
        missing = [a for a in REQUIRED_ATTRIBUTES if a not in attributes]
        if missing:
            problems.append(f"{rung.name}: EXT-X-STREAM-INF lacks {', '.join(missing)}")
        bandwidth = int(attributes.get("BANDWIDTH", 0))
        average = int(attributes.get("AVERAGE-BANDWIDTH", 0))
        if bandwidth < rung.peak_bps:
            problems.append(f"{rung.name}: BANDWIDTH {bandwidth} is below the measured peak {rung.peak_bps} b/s")
        if abs(average - rung.average_bps) > AVERAGE_TOLERANCE * rung.average_bps:
            problems.append(f"{rung.name}: AVERAGE-BANDWIDTH {average} is not within 10 % of the measured "
                            f"average {rung.average_bps} b/s")
        frame = 1 / rung.fps if rung.fps else 0.04
        starts = [s.first_video_pts for s in rung.segments]
        for i, segment in enumerate(rung.segments):
            if not segment.starts_with_keyframe:
                problems.append(f"{rung.name}/{segment.uri}: does not start with a keyframe")
            if round(segment.duration) > rung.target_duration:
                problems.append(f"{rung.name}/{segment.uri}: EXTINF {segment.duration:.3f}s exceeds "
                                f"EXT-X-TARGETDURATION {rung.target_duration}")
            start, following = starts[i], starts[i + 1] if i + 1 < len(starts) else None
            if start is not None and following is not None and following - start > rung.target_duration + frame / 2:
                problems.append(f"{rung.name}/{segment.uri}: lasts {following - start:.3f}s by its timestamps, "
                                f"more than the target duration {rung.target_duration}s")
        rung_reports.append(RungReport(
            name=rung.name, segments=len(rung.segments), peak_bps=rung.peak_bps, average_bps=rung.average_bps,
            declared_bandwidth=bandwidth, declared_average=average,
            resolution=f"{rung.width}x{rung.height}", codecs=rung.codecs,
        ))
    reference = title.rungs[0]
    for rung in title.rungs[1:]:
        if len(rung.segments) != len(reference.segments):
            problems.append(f"{rung.name} has {len(rung.segments)} segments, {reference.name} has "
                            f"{len(reference.segments)}")
            continue
        frame = 1 / reference.fps if reference.fps else 0.04
        for ours, theirs in zip(rung.segments, reference.segments, strict=True):
            a, b = ours.first_video_pts, theirs.first_video_pts
            if a is None or b is None or abs(a - b) > frame / 2:
                problems.append(f"{rung.name}/{ours.uri} starts at {a}, {reference.name}/{theirs.uri} at {b}: "
                                "segment boundaries are not aligned across rungs")
    decode_seconds = 0.0
    if decode and not problems:
        decode_seconds = _decode(title, key, decode_timeout, problems)
    if problems:
        raise VerificationFailed(problems, path=root)
    return Report(root=root, encrypted=title.encrypted, rungs=tuple(rung_reports),
                  segment_starts=tuple(s.first_video_pts or 0.0 for s in reference.segments),
                  decode_seconds=decode_seconds)


_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def _declared(master_text: str, problems: list[str]) -> dict[str, dict[str, str]]:
    """EXT-X-STREAM-INF attributes by variant URI, read from the text (m3u8 drops unknown ones)."""
    declared: dict[str, dict[str, str]] = {}
    lines = [line.strip() for line in master_text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            if i + 1 >= len(lines) or lines[i + 1].startswith("#"):
                problems.append(f"EXT-X-STREAM-INF without a URI: {line}")
                continue
            declared[lines[i + 1]] = {k: v.strip('"') for k, v in _ATTRIBUTE.findall(line[18:])}
    return declared


def _decode(title: Title, key: bytes | None, timeout: float, problems: list[str]) -> float:
    with _decodable_view(title, key) as master:
        args = [process.FFMPEG, "-nostdin", "-hide_banner", "-v", "error", "-allowed_extensions", "ALL",
                "-i", str(master), "-map", "0:v", "-map", "0:a?", "-f", "null", "-"]
        started = time.monotonic()
        try:
            result = process.run(args, timeout=timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"decoding the stream took longer than {timeout:.0f}s")
            return time.monotonic() - started
        elapsed = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0 or errors:
        problems.append("ffmpeg cannot decode the stream cleanly: " + ("; ".join(errors[:5]) or
                                                                         f"exit status {result.returncode}"))
    return elapsed


@contextmanager
def _decodable_view(title: Title, key: bytes | None) -> Iterator[Path]:
    """The master to decode: the title itself, or for AES-128 a temp view with a local key URI."""
    if not title.encrypted:
        yield title.master
        return
    assert key is not None  # analyse() refused an encrypted title without a key
    view = Path(tempfile.mkdtemp(prefix="ott-verify-"))
    try:
        key_file = view / "content.key"
        key_file.write_bytes(key)
        shutil.copy2(title.master, view / title.master.name)
        for rung in title.rungs:
            target = view / Path(rung.uri).parent
            target.mkdir(parents=True, exist_ok=True)
            for segment in rung.segments:
                (target / segment.uri).symlink_to(segment.path.resolve())
            text = rung.playlist.read_text(encoding="utf-8")
            text = re.sub(r'(#EXT-X-KEY:[^\n]*URI=)"[^"]*"', lambda m: f'{m.group(1)}"{key_file}"', text)
            (target / rung.playlist.name).write_text(text, encoding="utf-8")
        yield view / title.master.name
    finally:
        shutil.rmtree(view, ignore_errors=True)


