"""The live-playlist drill of 03-cdn-edge: a PoP keeps a live playlist only for its short TTL.

labkit plays the packager: it writes a small live media playlist into the origin's media root
under ``live/<channel>/`` (write aside, then rename over the old one, so nobody reads half a file),
signs it for a PoP, and fetches it while it changes. Once the TTL has passed, the next viewer gets
the stale copy at once (``STALE`` or ``UPDATING``) while the PoP refreshes it, and the viewer after
that gets the new one; a VOD playlist fetched meanwhile is still the cached copy::

    channel = LiveChannel.new(target, "lab-clock-cdn")
    live_url = channel.url(pops["edge-0"])
    timeline = expire(channel, live_url, vod_url)    # one row per request: step, cache, MEDIA-SEQUENCE
    channel.remove()

The playlist is written through the target (:meth:`labkit.targets.base.Target.write_media`): a
file of the media root on the local target, a file written in a pod that mounts the media volume on kube.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from labkit.core.wait import until
from labkit.platform.layers import cdn
from labkit.targets.base import Target
from ott import signing

if TYPE_CHECKING:
    import pandas as pd

# The live playlist's TTL at the PoPs (labkit.platform.layers.cdn.OBJECT_TYPES).
TTL_S = next(t.ttl_s for t in cdn.OBJECT_TYPES if t.name == "live_playlist")
# nginx counts a TTL in whole seconds from the second the copy was stored: n seconds end n to n + 1
# seconds later. This is past the latest end.
EXPIRY_S = TTL_S + 1.2
# The origin's Last-Modified has one-second resolution and its ETag is the mtime and size: a playlist
# rewritten within the same second to the same size would look unchanged (304). A packager writes
# once per segment, seconds apart; the drill waits this long between two versions too.
REWRITE_GAP_S = 1.1
# How long the drill asks again for the refreshed copy after the stale one.
REFRESH_TIMEOUT_S = 5.0
COLUMNS = ["t (s)", "step", "object", "status", "cache", "MEDIA-SEQUENCE"]


def playlist(sequence: int, segments: int = 3) -> str:
    """A live media playlist whose first segment is number ``sequence`` (4 s segments)."""
    lines = "".join(f"#EXTINF:4.000,\nseg_{n:05d}.m4s\n" for n in range(sequence, sequence + segments))
    return f"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n{lines}"


def sequence_of(text: str) -> int | None:
    """A media playlist's ``EXT-X-MEDIA-SEQUENCE``, or None when it has none.

    >>> sequence_of(playlist(7))
    7
    >>> sequence_of("<html>502 Bad Gateway</html>") is None
    True
    """
    _, found, rest = text.partition("#EXT-X-MEDIA-SEQUENCE:")
    return int(rest.split()[0]) if found and rest.split() else None


@dataclass
class LiveChannel:
    """A live channel in the origin's media root, ``live/<name>/index.m3u8``."""

    target: Target
    name: str

    @classmethod
    def new(cls, target: Target, prefix: str) -> LiveChannel:
        """A channel of a new name per run: its first fetch at any PoP is a MISS."""
        return cls(target, f"{prefix}-{uuid.uuid4().hex[:8]}")

    @property
    def folder(self) -> str:
        """The channel's folder in the origin's media root: ``live/<name>``."""
        return f"live/{self.name}"

    def publish(self, sequence: int) -> None:
        """Write the playlist starting at ``sequence``, as a packager does: aside, then renamed over the old one."""
        self.target.write_media(f"{self.folder}/index.m3u8", playlist(sequence).encode())

    def url(self, pop_url: str, ttl_s: int = 3600) -> str:
        """The channel's playlist at the PoP ``pop_url``, signed with the lab's secret for ``ttl_s`` seconds."""
        expires = int(time.time()) + ttl_s
        return pop_url + signing.signed_path(self.target.signing_secret(), "live", expires, f"/{self.name}/index.m3u8")

    def remove(self) -> None:
        """Delete the channel's folder (the PoPs forget it after their TTL)."""
        self.target.remove_media(self.folder)


@dataclass
class _Timeline:
    live_url: str
    started: float = field(default_factory=time.monotonic)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, step: str, url: str) -> dict[str, Any]:
        response = httpx.get(url, timeout=10)
        live = url == self.live_url
        row = {"t (s)": round(time.monotonic() - self.started, 2), "step": step,
               "object": "live playlist" if live else "VOD master playlist", "status": response.status_code,
               "cache": response.headers.get("x-cache-status"),
               "MEDIA-SEQUENCE": sequence_of(response.text) if live else None}
        self.rows.append(row)
        return row


def expire(channel: LiveChannel, live_url: str, vod_url: str) -> pd.DataFrame:
    """Play the drill through one PoP; one row per request (``COLUMNS``).

    Sequence 1 is published and fetched twice (a MISS, then a HIT); sequence 2 replaces it; once
    the PoP's TTL has passed the playlist is fetched again (the stale copy, sequence 1) and again
    until the PoP serves sequence 2 (at most :data:`REFRESH_TIMEOUT_S`); last, ``vod_url``, whose
    long TTL keeps it cached throughout.
    """
    import pandas as pd

    timeline = _Timeline(live_url)
    channel.publish(1)
    timeline.observe("first viewer", live_url)
    timeline.observe("second viewer", live_url)
    time.sleep(REWRITE_GAP_S)
    channel.publish(2)   # the packager adds a segment: the live edge moves on, the PoP still holds sequence 1
    time.sleep(EXPIRY_S - REWRITE_GAP_S)
    timeline.observe("after the TTL", live_url)

    def refreshed() -> bool:
        row = timeline.observe("and again", live_url)
        return bool(row["status"] != 200 or row["MEDIA-SEQUENCE"] == 2)

    until(refreshed, REFRESH_TIMEOUT_S, 0.05, "the PoP to serve the live playlist's sequence 2")
    timeline.observe("meanwhile, VOD", vod_url)
    return pd.DataFrame(timeline.rows, columns=COLUMNS).astype({"MEDIA-SEQUENCE": "Int64"})
