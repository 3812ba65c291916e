"""Facts measured from an HLS tree as ffmpeg wrote it: per segment sizes, keyframes, timestamps.

Both the playlist post-processing (:mod:`ott.media.playlists`) and the verification
(:mod:`ott.media.verify`) read the tree through :func:`analyse`, so they measure the same way.

Encrypted (AES-128 TS) segments are decrypted in memory with the key the caller passes; the plain
bytes go to a private temp file only while ffprobe reads them.

Example::

    title = analyse(Path("staging"))
    [(r.name, r.peak_bps, r.average_bps) for r in title.rungs]
    # -> [('720p', 1712344, 1503320), ...]
"""

from __future__ import annotations

import math
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import m3u8
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ott.media.errors import ProbeFailed, VerificationFailed
from ott.media.probe import ffprobe_json

TS_PACKET = 188
# Encrypted TS byte ranges end on a multiple of both the TS packet and the AES block (lcm(188, 16)),
# so a client can decrypt the prefix it fetched with CBC.
TS_AES_ALIGN = 752


@dataclass(frozen=True)
class Keyframe:
    pts: float
    pos: int        # byte offset of the TS packet / sample in the (plain) segment, -1 if unknown
    end: int        # first byte after the keyframe's data (see iframe_range)


@dataclass(frozen=True)
class Segment:
    uri: str
    path: Path
    duration: float            # EXTINF
    size: int                  # bytes on disk (what a client downloads)
    first_video_pts: float | None
    starts_with_keyframe: bool
    keyframes: tuple[Keyframe, ...]
    iframe_ranges: tuple[tuple[int, int, float], ...]   # (offset, length, pts) per addressable I-frame


@dataclass(frozen=True)
class Rung:
    name: str
    playlist: Path
    uri: str                   # relative to the multivariant playlist
    target_duration: int
    segments: tuple[Segment, ...]
    width: int
    height: int
    fps: float
    video_codec: str           # e.g. avc1.64001f
    audio_codec: str | None    # mp4a.40.2
    init_uri: str | None
    key_line: str | None       # the EXT-X-KEY line of the media playlist, as written
    fmp4: bool

    @property
    def peak_bps(self) -> int:
        """Peak segment bitrate: max of size × 8 / duration (what BANDWIDTH must cover)."""
        return max(math.ceil(s.size * 8 / s.duration) for s in self.segments if s.duration > 0)

    @property
    def average_bps(self) -> int:
        total = sum(s.duration for s in self.segments)
        return math.ceil(sum(s.size for s in self.segments) * 8 / total)

    @property
    def codecs(self) -> str:
        return ",".join(c for c in (self.video_codec, self.audio_codec) if c)


@dataclass(frozen=True)
class Title:
    root: Path
    master: Path
    rungs: tuple[Rung, ...]
    encrypted: bool


def analyse(root: Path, *, master_name: str = "master.m3u8", key: bytes | None = None) -> Title:
    """Measure every rung listed in ``root/master_name`` (decrypting with ``key`` if encrypted)."""
    master_path = root / master_name
    master = load_playlist(master_path)
    if not master.is_variant:
        raise VerificationFailed([f"{master_path} is not a multivariant playlist"], path=root)
    rungs = []
    for playlist in master.playlists:
        rungs.append(_rung(root, str(playlist.uri), key))
    return Title(root=root, master=master_path, rungs=tuple(rungs), encrypted=any(r.key_line for r in rungs))


def load_playlist(path: Path) -> Any:
    """Parse a playlist file with the m3u8 library; :class:`VerificationFailed` if it cannot."""
    try:
        return m3u8.loads(path.read_text(encoding="utf-8"), uri=str(path))
    except OSError as exc:
        raise VerificationFailed([f"cannot read {path}: {exc}"], path=path) from exc
    except Exception as exc:  # m3u8 raises assorted errors for malformed text; all mean "does not parse"
        raise VerificationFailed([f"{path} does not parse as a playlist: {exc}"], path=path) from exc


def _rung(root: Path, uri: str, key: bytes | None) -> Rung:
    playlist_path = (root / uri).resolve()
    if root.resolve() not in playlist_path.parents:
        raise VerificationFailed([f"variant URI {uri!r} points outside the title"], path=root)
    media = load_playlist(playlist_path)
    folder = playlist_path.parent
    init_uri = media.segment_map[0].uri if media.segment_map else None
    key_obj = media.keys[-1] if media.keys and media.keys[-1] is not None else None
    key_line: str | None = None
    iv: bytes | None = None
    if key_obj is not None and key_obj.method not in (None, "NONE"):
        key_line = str(key_obj.dumps()) if hasattr(key_obj, "dumps") else str(key_obj)
        if key is None:
            raise VerificationFailed([f"{playlist_path} is encrypted ({key_obj.method}); pass the content key "
                                      "to measure it"], path=root)
        if not key_obj.iv:
            raise VerificationFailed([f"{playlist_path}: EXT-X-KEY without IV is not supported here"], path=root)
        iv = bytes.fromhex(str(key_obj.iv)[2:])
    init_bytes = (folder / init_uri).read_bytes() if init_uri else b""
    video_track = _video_track_id(init_bytes) if init_bytes else None
    segments: list[Segment] = []
    stream_facts: dict[str, Any] = {}
    for seg in media.segments:
        path = folder / str(seg.uri)
        data = path.read_bytes()
        plain = _decrypt(data, key, iv, path) if iv is not None and key is not None else data
        facts = _probe_segment(init_bytes + plain, ".mp4" if init_uri else ".ts")
        stream_facts = stream_facts or facts["stream"]
        keyframes = facts["keyframes"]
        if init_uri:
            first_key = keyframes[0].pts if keyframes else math.nan
            ranges = tuple((offset, length, first_key) for offset, length, _ in
                           _fmp4_iframe_ranges(plain, video_track))
        else:
            align = TS_AES_ALIGN if iv is not None else TS_PACKET
            ranges = tuple((0, min(len(data), _round_up(k.end, align)), k.pts) for k in keyframes)
        segments.append(Segment(
            uri=str(seg.uri), path=path, duration=float(seg.duration), size=len(data),
            first_video_pts=facts["first_pts"], starts_with_keyframe=facts["first_is_key"],
            keyframes=keyframes, iframe_ranges=ranges,
        ))
    if not segments:
        raise VerificationFailed([f"{playlist_path} lists no segments"], path=root)
    return Rung(
        name=folder.name, playlist=playlist_path, uri=uri, target_duration=int(media.target_duration or 0),
        segments=tuple(segments), width=int(stream_facts.get("width", 0)),
        height=int(stream_facts.get("height", 0)), fps=stream_facts.get("fps", 0.0),
        video_codec=stream_facts.get("video_codec", ""), audio_codec=stream_facts.get("audio_codec"),
        init_uri=str(init_uri) if init_uri else None, key_line=key_line, fmp4=bool(init_uri),
    )


def _decrypt(data: bytes, key: bytes, iv: bytes, path: Path) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:  # bad padding: wrong key or IV
        raise VerificationFailed([f"{path} does not decrypt with the given key (bad padding): wrong key?"],
                                 path=path) from exc


@contextmanager
def _temp_file(data: bytes, suffix: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ott-probe-"))
    try:
        path = folder / f"segment{suffix}"
        path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _probe_segment(data: bytes, suffix: str) -> dict[str, Any]:
    with _temp_file(data, suffix) as path:
        try:
            doc = ffprobe_json(path, "-show_streams", "-show_packets",
                               "-show_entries", "packet=stream_index,pts_time,dts_time,flags,pos,size")
        except ProbeFailed as exc:
            raise VerificationFailed([f"a segment does not probe: {exc}"]) from exc
    streams = doc.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        raise VerificationFailed(["a segment has no video stream"])
    vindex = video.get("index")
    packets = [p for p in doc.get("packets", []) if p.get("stream_index") == vindex]
    # Decode order (dts) is what a player reads; the first packet must be the keyframe.
    keyframes: list[Keyframe] = []
    for i, packet in enumerate(packets):
        if "K" in str(packet.get("flags", "")):
            pos = int(packet.get("pos", -1) or -1)
            following = next((int(p.get("pos", -1) or -1) for p in packets[i + 1:]), -1)
            end = following if following > pos else pos + int(packet.get("size", 0))
            keyframes.append(Keyframe(pts=float(packet.get("pts_time", "nan")), pos=pos, end=end))
    stream = {
        "width": video.get("width", 0), "height": video.get("height", 0),
        "fps": float(Fraction(str(video.get("avg_frame_rate", "0/1")))) if video.get("avg_frame_rate") != "0/0"
        else 0.0,
        "video_codec": avc1_codec(str(video.get("profile", "")), int(video.get("level", 0) or 0)),
        "audio_codec": _audio_codec(audio),
    }
    first = packets[0] if packets else {}
    return {
        "stream": stream,
        "keyframes": tuple(keyframes),
        "first_pts": float(first["pts_time"]) if "pts_time" in first else None,
        "first_is_key": "K" in str(first.get("flags", "")),
    }


# profile_idc and constraint flags for the names ffprobe prints.
_AVC_PROFILES = {
    "Constrained Baseline": (66, 0xC0), "Baseline": (66, 0x00), "Main": (77, 0x40), "Extended": (88, 0x00),
    "High": (100, 0x00), "High 10": (110, 0x00), "High 4:2:2": (122, 0x00), "High 4:4:4 Predictive": (244, 0x00),
}


def avc1_codec(profile: str, level: int) -> str:
    """RFC 6381 ``avc1.PPCCLL`` from ffprobe's profile name and level_idc.

    >>> avc1_codec("High", 31)
    'avc1.64001f'
    """
    profile_idc, constraints = _AVC_PROFILES.get(profile, (100, 0))
    return f"avc1.{profile_idc:02x}{constraints:02x}{level:02x}"


def _audio_codec(audio: dict[str, Any] | None) -> str | None:
    if audio is None:
        return None
    if audio.get("codec_name") == "aac":
        # Object type 2 = AAC-LC, 5 = HE-AAC (SBR), 29 = HE-AACv2.
        return {"LC": "mp4a.40.2", "HE-AAC": "mp4a.40.5", "HE-AACv2": "mp4a.40.29"}.get(
            str(audio.get("profile")), "mp4a.40.2")
    return str(audio.get("codec_name"))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --- ISO BMFF boxes (just enough for I-frame byte ranges) -------------------------------------------

def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """Yield (type, box start, payload start, box end) for the boxes in data[start:end]."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise VerificationFailed([f"malformed MP4 box {kind!r} at byte {offset}"])
        yield kind, offset, offset + header, offset + size
        offset += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for box, _, payload, box_end in _boxes(data, start, end):
        if box == kind:
            return payload, box_end
    return None


def _video_track_id(init: bytes) -> int | None:
    moov = _child(init, 0, len(init), b"moov")
    if moov is None:
        return None
    for box, _, payload, box_end in _boxes(init, *moov):
        if box != b"trak":
            continue
        tkhd = _child(init, payload, box_end, b"tkhd")
        mdia = _child(init, payload, box_end, b"mdia")
        hdlr = _child(init, *mdia, b"hdlr") if mdia else None
        if tkhd is None or hdlr is None:
            continue
        version = init[tkhd[0]]
        track_id = struct.unpack_from(">I", init, tkhd[0] + (20 if version == 1 else 12))[0]
        if init[hdlr[0] + 8: hdlr[0] + 12] == b"vide":
            return int(track_id)
    return None


def _fmp4_iframe_ranges(segment: bytes, video_track: int | None) -> tuple[tuple[int, int, float], ...]:
    """One range per ``moof`` whose first video sample is a sync sample: moof start → end of that sample.

    A keyframe in the middle of a fragment has no ``moof`` of its own, so it cannot be fetched on its
    own: ffmpeg's hls muxer writes one fragment per segment, so this yields one I-frame per segment.
    """
    ranges: list[tuple[int, int, float]] = []
    for kind, start, payload, end in _boxes(segment):
        if kind != b"moof":
            continue
        for traf_kind, _, traf_payload, traf_end in _boxes(segment, payload, end):
            if traf_kind != b"traf":
                continue
            tfhd = _child(segment, traf_payload, traf_end, b"tfhd")
            trun = _child(segment, traf_payload, traf_end, b"trun")
            if tfhd is None or trun is None:
                continue
            tf_flags = int.from_bytes(segment[tfhd[0] + 1: tfhd[0] + 4], "big")
            track_id = struct.unpack_from(">I", segment, tfhd[0] + 4)[0]
            if video_track is not None and track_id != video_track:
                continue
            cursor = tfhd[0] + 8
            base = start  # default-base-is-moof (ffmpeg's CMAF/dash mode) or the moof itself
            if tf_flags & 0x01:
                base = struct.unpack_from(">Q", segment, cursor)[0]
                cursor += 8
            for flag in (0x02, 0x08):
                cursor += 4 if tf_flags & flag else 0
            default_size = struct.unpack_from(">I", segment, cursor)[0] if tf_flags & 0x10 else 0
            tr_flags = int.from_bytes(segment[trun[0] + 1: trun[0] + 4], "big")
            cursor = trun[0] + 8  # version/flags + sample_count
            data_offset = 0
            if tr_flags & 0x01:
                data_offset = struct.unpack_from(">i", segment, cursor)[0]
                cursor += 4
            if tr_flags & 0x04:
                cursor += 4  # first_sample_flags
            cursor += 4 if tr_flags & 0x100 else 0  # first sample's duration
            size = struct.unpack_from(">I", segment, cursor)[0] if tr_flags & 0x200 else default_size
            sample_end = base + data_offset + size
            ranges.append((start, sample_end - start, float("nan")))
            break
    return tuple(ranges)
