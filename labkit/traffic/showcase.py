"""Traffic that gives every panel of the lab's dashboards something to show.

A plain audience leaves panels empty: nobody stalls, switches, fails or leaves, no URL is forged.
:func:`run` plays, on a published title:

- ``viewers`` simulated viewers (at least four): unlimited ones, one held below the lowest rung (it
  stalls), one on the stepped trace ``stairs`` (it switches rungs);
- one viewer of a title that does not exist (a video start failure, a license denial);
- a browser's beacons for a playback that fails after its start (VPF) and for one left before its
  start (EBVS): the simulator does not produce those on purpose;
- a forged signed segment URL at every PoP (the signed-URL refusals).

::

    shown = showcase.run(target, "lab-clock", viewers=4, seconds=24)
    shown.audience.summary()["stalls"], shown.refusals      # {"edge-0": 403, ...}
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from labkit.clients.pops import pop_urls
from labkit.core.errors import ConfigError
from labkit.platform.layers.player import BEACON_PATH
from labkit.traffic import audience
from labkit.traffic.audience import Audience
from labkit.traffic.bandwidth import Fixed, Trace

if TYPE_CHECKING:
    from labkit.targets.base import Target

# Below the lowest rung of every ladder (ott/media/ladder.yml): the viewer on it stalls.
STALLING_KBPS = 250
UNKNOWN_TITLE = "no-such-title"


@dataclass(frozen=True)
class Showcase:
    """What :func:`run` played: the audience, the viewer of the unknown title, each PoP's answer to a forged URL."""

    audience: Audience
    failed: Audience
    refusals: dict[str, int]


def browser_beacons(gateway: str, title: str, pop: str = "edge-0") -> None:
    """A browser session that fails after its start (VPF) and one left before its start (EBVS), as beacons."""
    started = {"v": 1, "session": uuid.uuid4().hex, "title": title, "pop": pop, "client": "browser", "events": [
        {"type": "play", "t_ms": 0}, {"type": "start", "t_ms": 900, "startup_ms": 900, "bitrate_kbps": 400},
        {"type": "progress", "t_ms": 4900, "played_ms": 4000, "bitrate_kbps": 400, "dropped_frames": 0},
        {"type": "error", "t_ms": 5000, "reason": "media_error", "fatal": True, "started": True},
        {"type": "end", "t_ms": 5000, "reason": "error", "started": True, "played_ms": 4000, "stalled_ms": 0}]}
    left = {"v": 1, "session": uuid.uuid4().hex, "title": title, "pop": pop, "client": "browser", "events": [
        {"type": "play", "t_ms": 0},
        {"type": "end", "t_ms": 700, "reason": "exit", "started": False, "played_ms": 0, "stalled_ms": 0}]}
    for body in (started, left):
        httpx.post(gateway + BEACON_PATH, json=body, timeout=10).raise_for_status()


def forged_segment(pop_url: str, title: str) -> int:
    """The status a PoP answers to a signed segment URL nobody signed (403 or 410 when it refuses it)."""
    forged = f"/s/{'A' * 22}/{int(time.time()) + 600}/{title}/360p/seg_00001.m4s"
    return httpx.get(pop_url + forged, timeout=10).status_code


def run(target: Target, title: str, *, viewers: int = 4, seconds: float = 24, arrivals_s: float = 2,
        seed: int = 7) -> Showcase:
    """Every kind of traffic the dashboards show, on ``title`` through ``target``'s gateway and PoPs."""
    if viewers < 4:
        raise ConfigError(f"a showcase needs at least 4 viewers, got {viewers}",
                          hint="two unlimited, one stalling, one on a trace: viewers=4")
    gateway = target.endpoint("gateway")
    limits = [None, None, Fixed(STALLING_KBPS), Trace.named("stairs"), *[None] * (viewers - 4)]
    watched = audience.run(gateway, title, viewers, seconds, arrivals_s=arrivals_s, seed=seed, bandwidth=limits)
    failed = audience.run(gateway, UNKNOWN_TITLE, 1, 3, arrivals_s=0)
    browser_beacons(gateway, title)
    refusals = {pop: forged_segment(url, title) for pop, url in pop_urls(target).items()}
    return Showcase(watched, failed, refusals)
