"""HLS playlists as a lesson reads them: typed, in the playlist's own order, URIs as written.

Two kinds of playlist (RFC 8216): the **multivariant** playlist lists the rungs
(``EXT-X-STREAM-INF``: ``BANDWIDTH``, ``AVERAGE-BANDWIDTH`` ...) and the I-frame playlists; a
**media** playlist lists one rung's segments, its init segment (``EXT-X-MAP``) and its keys
(``EXT-X-KEY``). :func:`multivariant` and :func:`media` read the text (the m3u8 package parses
it); a text that is not a playlist of that kind (an HTML error page, the other kind) raises
:class:`PlaylistError`::

    >>> master = multivariant('''#EXTM3U
    ... #EXT-X-STREAM-INF:BANDWIDTH=1558368,AVERAGE-BANDWIDTH=1555407,RESOLUTION=1280x720
    ... 720p/index.m3u8
    ... #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=300000,RESOLUTION=1280x720,URI="720p/iframes.m3u8"
    ... ''')
    >>> master.variants[0].folder, master.variants[0].bandwidth, master.variants[0].average_bandwidth
    ('720p', 1558368, 1555407)
    >>> master.iframe_playlists[0].uri
    '720p/iframes.m3u8'

URIs are kept as written (relative ones relative to the playlist's URL: ``urllib.parse.urljoin``).
The simulated players read playlists with their own cached parser, :class:`labkit.traffic.playback.Playlists`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import m3u8

from labkit.core.errors import LabError

__all__ = ["Key", "MediaPlaylist", "MultivariantPlaylist", "PlaylistError", "Segment", "Variant", "media",
           "multivariant"]


class PlaylistError(LabError):
    """A text that is not the HLS playlist asked for; ``kind`` is the kind that was expected."""

    def __init__(self, kind: str, problem: str, text: str) -> None:
        self.kind = kind
        self.problem = problem
        first_line = text.strip().splitlines()[0][:80] if text.strip() else "(empty)"
        super().__init__(
            f"not an HLS {kind} playlist: {problem} (it begins {first_line!r})",
            hint="print the response's status and text: an error page is not a playlist; "
            "a multivariant playlist's rungs link to the media playlists",
        )


@dataclass(frozen=True)
class Variant:
    """One ``EXT-X-STREAM-INF`` (a rung) or ``EXT-X-I-FRAME-STREAM-INF``: bit/s as declared."""

    uri: str
    bandwidth: int
    average_bandwidth: int | None
    resolution: tuple[int, int] | None
    codecs: str | None

    @property
    def folder(self) -> str:
        """The rung's folder, as the transcoder names it: ``720p/index.m3u8`` is ``720p``."""
        return self.uri.split("/")[0]


@dataclass(frozen=True)
class MultivariantPlaylist:
    """The rungs (``variants``) and the I-frame playlists, in the playlist's order."""

    variants: tuple[Variant, ...]
    iframe_playlists: tuple[Variant, ...]


@dataclass(frozen=True)
class Key:
    """One ``EXT-X-KEY``: ``method`` (``AES-128``, ``NONE`` ...), the key's URI and the IV (``0x…``)."""

    method: str
    uri: str | None
    iv: str | None


@dataclass(frozen=True)
class Segment:
    uri: str
    duration: float


@dataclass(frozen=True)
class MediaPlaylist:
    """One rung's segments in order, its init segment (fMP4) and the keys it names (none when clear)."""

    target_duration: float | None
    media_sequence: int
    init: str | None
    segments: tuple[Segment, ...]
    keys: tuple[Key, ...]
    ended: bool  # EXT-X-ENDLIST: VOD, or a live stream that ended


def _parse(kind: str, text: str) -> Any:
    if not text.lstrip("\ufeff").startswith("#EXTM3U"):
        raise PlaylistError(kind, "the first line is not #EXTM3U", text)
    try:
        return m3u8.loads(text)
    except Exception as exc:  # noqa: BLE001 - m3u8 raises whatever its attribute parsers raise
        raise PlaylistError(kind, f"{type(exc).__name__}: {exc}", text) from None


def _variant(uri: Any, info: Any) -> Variant:
    return Variant(uri=str(uri), bandwidth=int(info.bandwidth or 0),
                   average_bandwidth=int(info.average_bandwidth) if info.average_bandwidth else None,
                   resolution=(int(info.resolution[0]), int(info.resolution[1])) if info.resolution else None,
                   codecs=str(info.codecs) if info.codecs else None)


def multivariant(text: str) -> MultivariantPlaylist:
    """The multivariant playlist in ``text``; :class:`PlaylistError` unless it lists at least one rung."""
    parsed = _parse("multivariant", text)
    if not parsed.is_variant or not parsed.playlists:
        raise PlaylistError("multivariant", "it lists no EXT-X-STREAM-INF rung", text)
    return MultivariantPlaylist(
        variants=tuple(_variant(p.uri, p.stream_info) for p in parsed.playlists),
        iframe_playlists=tuple(_variant(p.uri, p.iframe_stream_info) for p in parsed.iframe_playlists),
    )


def media(text: str) -> MediaPlaylist:
    """The media playlist in ``text``; :class:`PlaylistError` if it is a multivariant playlist.

        >>> playlist = media('''#EXTM3U
        ... #EXT-X-TARGETDURATION:4
        ... #EXT-X-KEY:METHOD=AES-128,URI="https://example.test/keys/1",IV=0x0001
        ... #EXTINF:4.0,
        ... seg_00000.ts
        ... #EXT-X-ENDLIST
        ... ''')
        >>> playlist.keys[-1].method, playlist.segments[0], playlist.ended
        ('AES-128', Segment(uri='seg_00000.ts', duration=4.0), True)
    """
    parsed = _parse("media", text)
    if parsed.is_variant:
        raise PlaylistError("media", "it is a multivariant playlist: fetch one of its rungs' playlists", text)
    return MediaPlaylist(
        target_duration=float(parsed.target_duration) if parsed.target_duration is not None else None,
        media_sequence=int(parsed.media_sequence or 0),
        init=str(parsed.segment_map[0].uri) if parsed.segment_map else None,
        segments=tuple(Segment(str(s.uri), float(s.duration)) for s in parsed.segments),
        keys=tuple(Key(str(k.method), str(k.uri) if k.uri else None, str(k.iv) if k.iv else None)
                   for k in parsed.keys if k is not None),
        ended=bool(parsed.is_endlist),
    )
