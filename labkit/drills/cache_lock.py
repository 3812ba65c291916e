"""The thundering-herd drill of 03-cdn-edge: one segment asked by many clients at once, cache lock on and off.

On loopback the lab's origin answers a segment in about a millisecond, faster than any real origin.
So the drill puts a **distant origin** in front of the same media root: plain nginx capped to half
the smallest herd segment per second and per response (:class:`labkit.traffic.herd.ScratchStatic`),
so a fetch takes a second or more. Then, for the cache lock on and off, it starts a scratch PoP
(:class:`labkit.traffic.herd.ScratchPop`, the lab's PoP template with its own empty cache) in
front of it and releases ``clients`` requests for each segment together::

    segments = full_segments(playlist_text)                        # up to three of about the same size
    drill = herds(target, "lab-clock-cdn", version, "360p", segments, clients=200)
    drill.herds                                                    # one row per (lock, segment)

The scratch nginx processes are of this machine, and so are the files they serve: the version's
folder (:meth:`labkit.targets.base.Target.media_folder`: on kube, a copy from the origin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.targets.base import Target

if TYPE_CHECKING:
    import pandas as pd

HERD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class HerdDrill:
    """The distant origin's rate (bytes per second per response) and one row per herd."""

    distant_origin_rate: int
    herds: pd.DataFrame


def full_segments(playlist_text: str, most: int = 3) -> list[str]:
    """The URIs of up to ``most`` full-length segments of a media playlist (a title's last is often short).

    >>> full_segments("#EXTM3U\\n#EXTINF:4.0,\\na.m4s\\n#EXTINF:4.0,\\nb.m4s\\n#EXTINF:1.2,\\nc.m4s\\n")
    ['a.m4s', 'b.m4s']
    """
    import m3u8

    segments = m3u8.loads(playlist_text).segments
    longest = max(s.duration for s in segments)
    return [str(s.uri) for s in segments if s.duration >= 0.75 * longest][:most]


def herds(target: Target, title: str, version: str, rung: str, segments: Sequence[str], *,
          clients: int) -> HerdDrill:
    """Herds of ``clients`` on each of ``segments`` (of ``title``'s ``version``, rung ``rung``), lock on then off."""
    import pandas as pd

    from labkit.traffic.herd import ScratchPop, ScratchStatic, herd

    # The version's files on this machine (on kube, a copy from the origin); the distant origin serves them.
    folder = target.media_folder(title, version) / rung
    root = folder.parent.parent.parent
    # nginx's limit_rate sends the first second's worth at once, then that many bytes per second: at
    # half the smallest segment per second, each fetch of a segment takes a second or more.
    rate = min((folder / segment).stat().st_size for segment in segments) // 2
    rows = []
    with ScratchStatic(root, name="distant-origin", limit_rate=str(rate)) as distant:
        for lock in (True, False):
            with ScratchPop(target.cfg, cache_lock=lock, origin_peers=[distant.peer]) as scratch:
                for segment in segments:
                    rest = f"/{version}/{rung}/{segment}"
                    result = herd(scratch.signed(title, rest), clients=clients, timeout=HERD_TIMEOUT_S)
                    caches = pd.Series(result.cache).value_counts()
                    rows.append({
                        "cache lock": "on" if lock else "off", "segment": f"{rung}/{segment}",
                        "kB": round(result.bytes[0] / 1000), "clients": result.clients,
                        "200 OK": result.statuses.count(200),
                        "origin fetches": scratch.origin_fetches(f"/{title}{rest}"),
                        "MISS": int(caches.get("MISS", 0)), "HIT": int(caches.get("HIT", 0)),
                        "p50 ms": round(result.latency_quantile(0.5) * 1000, 1),
                        "p95 ms": round(result.latency_quantile(0.95) * 1000, 1),
                    })
    return HerdDrill(rate, pd.DataFrame(rows))
