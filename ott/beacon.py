"""The QoE beacon, version 1: what a player reports about a playback session, and its validation.

A player (the browser page, the viewer simulator, a load test) posts batches of events to the QoE
collector (:mod:`ott.qoe`)::

    {"v": 1, "session": "3f2a...", "title": "big-buck-bunny", "pop": "edge-0", "client": "browser",
     "events": [{"type": "play", "t_ms": 0},
                {"type": "start", "t_ms": 812, "startup_ms": 812, "bitrate_kbps": 1500}]}

``t_ms`` counts from the play request. Every field is checked (unknown fields are refused, numbers
bounded) so that a beacon can only move the collector's metrics by amounts that make sense, and a
label (title, pop, client, reason) can only take a bounded set of values.

>>> Beacon.model_validate({"v": 1, "session": "s-1", "title": "t", "pop": "unknown", "client": "k6",
...                        "events": [{"type": "stall", "t_ms": 4000, "duration_ms": 250}]}).events[0].duration_ms
250.0
"""

from __future__ import annotations

from typing import Annotated, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ott.models import TITLE_ID_PATTERN

VERSION = 1
MAX_BYTES = 64 * 1024
MAX_EVENTS = 200
# The largest t_ms (and played/stalled totals): a day, in milliseconds.
MAX_T_MS = 86_400_000
SESSION_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
# A PoP as license names it: edge-<n> on the local target, "edge" (one Service) on Kubernetes.
POP_PATTERN = r"^(edge(-[0-9]{1,3})?|unknown)$"

Client = Literal["browser", "simulator", "k6"]
Reason = Literal["unknown_title", "not_entitled", "stream_limit", "device_limit", "unauthorized", "token_expired",
                 "key_unavailable", "segment_not_found", "pop_unreachable", "manifest_error", "media_error",
                 "network_error", "timeout", "other"]
CLIENTS: tuple[str, ...] = get_args(Client)
REASONS: tuple[str, ...] = get_args(Reason)
Millis = Annotated[float, Field(ge=0, le=MAX_T_MS)]
Kbps = Annotated[float, Field(ge=0, le=1_000_000)]
Rung = Annotated[float, Field(ge=1, le=1_000_000)]


class _Event(BaseModel):
    # Strict: "5" is not a number and 1 is not true; an int is still a valid float.
    model_config = ConfigDict(extra="forbid", strict=True)
    t_ms: Millis


class Play(_Event):
    """The viewer pressed play: a play attempt."""

    type: Literal["play"]


class Start(_Event):
    """The first frame rendered with the playhead moving."""

    type: Literal["start"]
    startup_ms: Annotated[float, Field(ge=0, le=600_000)]
    bitrate_kbps: Kbps


class Stall(_Event):
    """A rebuffering after start, reported when it ends."""

    type: Literal["stall"]
    duration_ms: Annotated[float, Field(ge=0, le=3_600_000)]


class Switch(_Event):
    """A change of rung (a quality switch)."""

    type: Literal["switch"]
    from_kbps: Rung
    to_kbps: Rung

    @model_validator(mode="after")
    def _a_change(self) -> Self:
        if self.from_kbps == self.to_kbps:
            raise ValueError("a switch changes the rung: from_kbps and to_kbps must differ")
        return self


class Progress(_Event):
    """Playback since the previous progress (or the start): time playing, its mean rung, dropped frames."""

    type: Literal["progress"]
    played_ms: Millis
    bitrate_kbps: Kbps
    dropped_frames: Annotated[int, Field(ge=0, le=10_000_000)]


class Error(_Event):
    """A playback error. ``started``: whether the session had started (its first moving frame) when it happened.

    Fatal and not started is a video start failure, fatal and started a playback failure; the player
    says which, so that any collector replica classifies it without having seen the session's start.
    """

    type: Literal["error"]
    reason: Reason
    fatal: bool
    started: bool
    # For people reading logs; never a metric label.
    detail: Annotated[str, Field(max_length=200)] = ""


class End(_Event):
    """The session's end, with its totals. ``exit`` before start is an exit before video start."""

    type: Literal["end"]
    reason: Literal["ended", "exit", "error"]
    started: bool
    played_ms: Millis
    stalled_ms: Millis


Event = Annotated[Play | Start | Stall | Switch | Progress | Error | End, Field(discriminator="type")]


class Beacon(BaseModel):
    """One batch of a session's events (1 to :data:`MAX_EVENTS`), in the order they happened."""

    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1]
    session: Annotated[str, Field(pattern=SESSION_PATTERN)]
    title: Annotated[str, Field(pattern=TITLE_ID_PATTERN)]
    pop: Annotated[str, Field(pattern=POP_PATTERN)]
    client: Client
    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]
