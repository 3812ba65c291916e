"""qoe: the QoE collector. Players post beacons (:mod:`ott.beacon`); it turns them into Prometheus metrics.

``POST /beacons`` takes one beacon, as ``application/json`` or as ``text/plain`` (what
``navigator.sendBeacon`` sends for a string), at most 64 KiB, and answers 202 with
``{"accepted": <events>}``. A bad beacon answers 4xx with the usual JSON error, whose ``details``
say which field was wrong and what is allowed; it is counted in
``ott_qoe_beacons_rejected_total{reason}`` and nothing of it is recorded.

There is no database: the metrics are counters and histograms since the process started, and
Prometheus, which scrapes ``/metrics``, keeps the history (``increase()`` and ``rate()`` see
through a restart). Labels are ``title``, ``pop`` and ``client``; past ``OTT_QOE_MAX_TITLES``
distinct titles (default 50) and ``OTT_QOE_MAX_POPS`` distinct PoPs (default 20), further ones are
recorded as ``other``, so a misbehaving client cannot grow the metrics without bound.

What each event moves (every metric is ``ott_qoe_*``):

=========  ==========================================================================================
play       ``plays_total``
start      ``startup_seconds`` (histogram)
stall      ``stalls_total``, ``stalled_seconds_total``
switch     ``switches_total{direction="up"|"down"}``
progress   ``played_seconds_total``, ``bitrate_kbit_total`` (rung x seconds), ``dropped_frames_total``
error      fatal, ``started`` false: ``start_failures_total{reason}`` (a video start failure);
           fatal, ``started`` true: ``playback_failures_total{reason}``; not fatal: ``errors_total{reason}``
end        ``exits_before_start_total`` (reason exit, not started); ``rebuffering_ratio`` (histogram,
           stalled / (played + stalled), once per session that started)
=========  ==========================================================================================

The time-weighted bitrate is ``increase(bitrate_kbit_total) / increase(played_seconds_total)``.
The collector keeps no session state: each event says all it needs (an error says whether its
session had started), so any number of replicas behind the gateway count the same.

Run it with ``python -m ott.qoe`` (settings from ``OTT_*`` variables, see :mod:`ott.settings`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ott import beacon
from ott.errors import ApiError, Responses
from ott.service import create_app, run
from ott.settings import Settings

STARTUP_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
# A ratio of 0 (no stall) is its own bucket: most sessions should be there.
REBUFFERING_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# The label of the titles and PoPs past their caps.
OTHER = "other"
REJECT_REASONS = ("bad_json", "invalid", "too_large", "unsupported_version")
CONTENT_TYPES = ("application/json", "text/plain")


class CappedLabel:
    """The values of one label, at most ``limit`` distinct ones: the first come keep theirs, later ones are ``other``.

    >>> pops = CappedLabel("pop", 1)
    >>> pops("edge-0"), pops("edge-1"), pops("edge-0")
    ('edge-0', 'other', 'edge-0')
    """

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the cap of distinct {name} labels must be at least 1, got {limit}")
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < self.limit:
            self._known.add(value)
            return value
        return OTHER


class QoeMetrics:
    """The collector's metrics in ``registry``, and what each beacon event does to them.

    >>> from prometheus_client import CollectorRegistry
    >>> qoe = QoeMetrics(CollectorRegistry(), max_titles=1)
    >>> qoe.title("a"), qoe.title("b"), qoe.title("a")
    ('a', 'other', 'a')
    """

    def __init__(self, registry: CollectorRegistry, *, max_titles: int = Settings.qoe_max_titles,
                 max_pops: int = Settings.qoe_max_pops) -> None:
        self.title = CappedLabel("title", max_titles)
        self.pop = CappedLabel("pop", max_pops)
        labels = ["title", "pop", "client"]

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(f"ott_qoe_{name}", doc, [*labels, *extra], registry=registry)

        self.plays = counter("plays", "Play attempts (the viewer pressed play)")
        self.startup = Histogram("ott_qoe_startup_seconds", "Time from the play request to the first moving frame",
                                 labels, buckets=STARTUP_BUCKETS, registry=registry)
        self.played = counter("played_seconds", "Time spent playing")
        self.stalls = counter("stalls", "Rebufferings after the start")
        self.stalled = counter("stalled_seconds", "Time spent rebuffering after the start")
        self.rebuffering = Histogram("ott_qoe_rebuffering_ratio",
                                     "Per ended session that started: stalled / (played + stalled)",
                                     labels, buckets=REBUFFERING_BUCKETS, registry=registry)
        self.bitrate_kbit = counter("bitrate_kbit", "Rung bitrate x seconds played: over played_seconds, "
                                                    "the time-weighted bitrate")
        self.switches = counter("switches", "Rung changes, by direction", "direction")
        self.dropped_frames = counter("dropped_frames", "Frames the player dropped")
        self.exits_before_start = counter("exits_before_start", "Sessions the viewer left before the start (EBVS)")
        self.start_failures = counter("start_failures", "Fatal errors before the start (video start failures)",
                                      "reason")
        self.playback_failures = counter("playback_failures", "Fatal errors after the start (playback failures)",
                                         "reason")
        self.errors = counter("errors", "Errors the player recovered from", "reason")
        self.beacons = Counter("ott_qoe_beacons", "Beacons accepted", ["client"], registry=registry)
        self.rejected = Counter("ott_qoe_beacons_rejected", "Beacons refused, by why", ["reason"], registry=registry)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for client in beacon.CLIENTS:
            self.beacons.labels(client)

    def record(self, report: beacon.Beacon) -> int:
        """Move the metrics by the events of ``report`` (already validated); the number of events."""
        labels = (self.title(report.title), self.pop(report.pop), report.client)
        for event in report.events:
            match event:
                case beacon.Play():
                    self.plays.labels(*labels).inc()
                case beacon.Start():
                    self.startup.labels(*labels).observe(event.startup_ms / 1000)
                case beacon.Stall():
                    self.stalls.labels(*labels).inc()
                    self.stalled.labels(*labels).inc(event.duration_ms / 1000)
                case beacon.Switch():
                    direction = "up" if event.to_kbps > event.from_kbps else "down"
                    self.switches.labels(*labels, direction).inc()
                case beacon.Progress():
                    seconds = event.played_ms / 1000
                    self.played.labels(*labels).inc(seconds)
                    self.bitrate_kbit.labels(*labels).inc(event.bitrate_kbps * seconds)
                    self.dropped_frames.labels(*labels).inc(event.dropped_frames)
                case beacon.Error(fatal=False):
                    self.errors.labels(*labels, event.reason).inc()
                case beacon.Error():
                    failures = self.playback_failures if event.started else self.start_failures
                    failures.labels(*labels, event.reason).inc()
                case beacon.End():
                    if event.reason == "exit" and not event.started:
                        self.exits_before_start.labels(*labels).inc()
                    total = event.played_ms + event.stalled_ms
                    if event.started and total > 0:
                        self.rebuffering.labels(*labels).observe(event.stalled_ms / total)
        self.beacons.labels(report.client).inc()
        return len(report.events)


class Rejected(ApiError):
    """A beacon refused: ``reason`` is the label of ``ott_qoe_beacons_rejected_total``."""

    def __init__(self, status: int, reason: str, code: str, message: str, details: Any = None) -> None:
        super().__init__(status, code, message, details)
        self.reason = reason


class CountTooLarge:
    """Counts the beacons the body limit refused (413, before any handler runs) as ``too_large``."""

    def __init__(self, app: ASGIApp, metrics: QoeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/beacons":
            await self.app(scope, receive, send)
            return

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 413:
                self.metrics.rejected.labels("too_large").inc()
            await send(message)

        await self.app(scope, receive, observe)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse(body: bytes, content_type: str) -> beacon.Beacon:
    """The beacon in ``body``, or :class:`Rejected` saying what is wrong with it."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type not in CONTENT_TYPES:
        raise Rejected(415, "invalid", "unsupported_media_type",
                       f"a beacon is JSON sent as {' or '.join(CONTENT_TYPES)}, not {media_type}")
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(400, "bad_json", "malformed_json", f"the beacon is not valid UTF-8 JSON: {exc}") from None
    if isinstance(document, dict) and "v" in document and document["v"] != beacon.VERSION:
        raise Rejected(422, "unsupported_version", "unsupported_version",
                       f"beacon version {document['v']!r} is not supported: send \"v\": {beacon.VERSION}")
    try:
        return beacon.Beacon.model_validate(document)
    except ValidationError as exc:
        details = [{"where": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"],
                    **({"allowed": _allowed(e["ctx"])} if e.get("ctx") else {})}
                   for e in exc.errors(include_url=False)]
        first = details[0]
        raise Rejected(422, "invalid", "invalid_beacon",
                       f"the beacon is not a valid v{beacon.VERSION} beacon: {first['where']}: {first['problem']}",
                       details) from None


def _allowed(context: dict[str, Any]) -> str:
    # What pydantic says the value had to be: a pattern, a bound, the expected values.
    return "; ".join(f"{k} {v}" for k, v in context.items() if k != "error" and _printable(v))


def _printable(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


_ANSWERS: Responses = {
    400: {"description": "the body is not JSON (counted as bad_json)"},
    413: {"description": "the body is over 64 KiB (too_large)"},
    415: {"description": "not application/json or text/plain (invalid)"},
    422: {"description": "not a valid beacon, or an unsupported version (invalid, unsupported_version)"},
}


router = APIRouter()


@router.post("/beacons", status_code=202, responses=_ANSWERS)
async def post_beacon(request: Request) -> dict[str, int]:
    """Record one beacon (JSON, or text/plain as sendBeacon sends it); 202 with the number of events."""
    metrics: QoeMetrics = request.app.state.qoe
    try:
        report = parse(await request.body(), request.headers.get("content-type", ""))
    except Rejected as exc:
        # Counted here; the app's ApiError handler answers it.
        metrics.rejected.labels(exc.reason).inc()
        raise
    return {"accepted": metrics.record(report)}


def build_app(settings: Settings) -> FastAPI:
    """The collector's app; ``OTT_QOE_MAX_TITLES`` and ``OTT_QOE_MAX_POPS`` cap its labels."""
    # Counters only, nothing stored: an in-memory database (readiness then says the process serves),
    # and the body limit of a beacon.
    settings = dataclasses.replace(settings, database_url="sqlite://", max_body=beacon.MAX_BYTES)
    app = create_app("qoe", [router], settings,
                     description="QoE collector: player beacons in, Prometheus metrics out (GET /metrics)")
    app.state.qoe = QoeMetrics(app.state.service.registry, max_titles=settings.qoe_max_titles,
                               max_pops=settings.qoe_max_pops)
    app.add_middleware(CountTooLarge, metrics=app.state.qoe)
    return app


if __name__ == "__main__":
    run(build_app)
