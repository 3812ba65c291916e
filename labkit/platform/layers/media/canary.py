"""The canary title: a tiny HLS title the origin always serves, for the synthetic probes.

Synthetic monitoring fetches a known object through every PoP as a viewer would (a signed
playlist, a signed segment) and alerts when that fails (:mod:`labkit.platform.layers.monitoring.probes`).
It needs an object that exists whatever the lessons published: this one, written into the media
root next to the titles when the media layer's configs are written. It is not in the catalog, so
no viewer is offered it.
"""

from __future__ import annotations

from pathlib import Path

TITLE = "ottlab-probe"
PLAYLIST = "index.m3u8"
SEGMENT = "seg_00000.ts"
# One MPEG-TS null packet (PID 0x1FFF) repeated: a valid transport stream carrying nothing.
_NULL_PACKET = bytes([0x47, 0x1F, 0xFF, 0x10]) + bytes(184)
SEGMENT_BYTES = _NULL_PACKET * 8
PLAYLIST_TEXT = (
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    f"#EXTINF:1.0,\n{SEGMENT}\n#EXT-X-ENDLIST\n"
)


def publish(media_root: Path) -> Path:
    """Write the canary title under ``media_root`` (only what differs), and return its folder."""
    folder = media_root / TITLE
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in ((PLAYLIST, PLAYLIST_TEXT.encode()), (SEGMENT, SEGMENT_BYTES)):
        path = folder / name
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
    return folder
