"""Locust viewers: the baseline of bench_viewers.py, one Locust user = one viewer playing the title once.

Each user plays through one signed multivariant URL (``OTT_BENCH_MASTER_URLS``, a JSON list, one URL
per PoP; user ``i`` takes URL ``i mod n``): the multivariant playlist, the top rung's media playlist,
its init segment and every segment in order. It is the simulated player's core of
:mod:`labkit.traffic.playback`, which the simulator's viewers are built on, on Locust's client: the
same playlists, the same CMCD in the query argument (:func:`~labkit.traffic.playback.request_cmcd`)
and the same buffer model (:class:`~labkit.traffic.playback.Playback`: playback starts with the first
segment and plays in real time; before a segment the user waits while it holds more than
``OTT_BENCH_MAX_BUFFER_S`` seconds of media). A *stall* is a segment arriving after the buffer ran
dry: the user's pacing fell behind.

Stalls, starts and finished plays are fired as requests of type ``VIEWER`` (names ``stall``,
``start``, ``ended``), so they show in Locust's statistics; when ``OTT_BENCH_REPORT`` is set, a JSON
report is written there when Locust quits: the counts, the failures, the bytes and the CPU seconds Locust's
process used from the test's start to its end (imports and start-up excluded). When
``OTT_BENCH_VIEWERS`` users have finished, Locust quits without waiting for ``-t``.

    OTT_BENCH_MASTER_URLS='["http://127.0.0.1:31100/s/..."]' locust -f bench/locustfile_viewers.py \\
        --headless -u 50 -r 10 -t 90s --host http://127.0.0.1:31100
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import time
import uuid
from typing import Any
from urllib.parse import urljoin

import gevent
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

from labkit.traffic.playback import DEFAULT_MAX_BUFFER_S, ManifestError, Playback, Playlists, request_cmcd, with_cmcd
from ott import cmcd

MASTER_URLS: list[str] = json.loads(os.environ.get("OTT_BENCH_MASTER_URLS", "[]"))
CONTENT_ID = os.environ.get("OTT_BENCH_TITLE") or None
MAX_BUFFER_S = float(os.environ.get("OTT_BENCH_MAX_BUFFER_S", str(DEFAULT_MAX_BUFFER_S)))
PLAYLISTS = Playlists()  # parsed once for every user of this process, as the simulator parses them
VIEWERS = int(os.environ.get("OTT_BENCH_VIEWERS", "0"))
REPORT = os.environ.get("OTT_BENCH_REPORT", "")

_numbers = itertools.count()
_tally: dict[str, Any] = {"started": 0, "ended": 0, "failed": 0, "stalls": 0, "startup_s": [], "cpu_start": None}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _tally["cpu_start"] = _cpu_seconds()
    _tally["wall_start"] = time.monotonic()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if not REPORT:
        return
    total = environment.stats.total
    report = {key: _tally[key] for key in ("started", "ended", "failed", "stalls", "startup_s")}
    report.update(
        cpu_s=_cpu_seconds() - (_tally["cpu_start"] or 0.0),
        wall_s=time.monotonic() - _tally.get("wall_start", time.monotonic()),
        requests=total.num_requests - sum(e.num_requests for e in environment.stats.entries.values()
                                          if e.method == "VIEWER"),
        bytes=total.total_content_length,  # the VIEWER pseudo-requests weigh 0
        errors=total.num_failures,
        failures=[{"name": f.name, "error": str(f.error), "occurrences": f.occurrences}
                  for f in environment.stats.errors.values()],
    )
    with open(REPORT, "w") as out:
        json.dump(report, out)


def _viewer_event(environment: Environment, name: str, value_ms: float = 0.0) -> None:
    environment.events.request.fire(request_type="VIEWER", name=name, response_time=value_ms, response_length=0,
                                    exception=None, context={})


def _finished(environment: Environment) -> None:
    if VIEWERS and _tally["ended"] + _tally["failed"] >= VIEWERS and environment.runner is not None:
        gevent.spawn_later(0.1, environment.runner.quit)


class Viewer(FastHttpUser):
    # Loopback: a request taking 10 s is a failure (labkit.traffic.wave' timeout).
    network_timeout = 10.0
    connection_timeout = 10.0
    # One play per user: it then idles until every viewer has finished (or -t ends the test).
    wait_time = between(3600, 3600)

    def on_start(self) -> None:
        self.number = next(_numbers)
        self.master_url = MASTER_URLS[self.number % len(MASTER_URLS)]
        self.played = False

    @task
    def play(self) -> None:
        if self.played:
            return
        self.played = True
        ok = self._play()
        _tally["ended" if ok else "failed"] += 1
        if ok:
            _viewer_event(self.environment, "ended")
        _finished(self.environment)

    def _play(self) -> bool:
        sid, t0 = str(uuid.uuid4()), time.monotonic()
        buffer = Playback(t0)
        mtp: float | None = None  # the last segment's measured throughput, kbit/s

        def get(kind: str, url: str, *, ot: cmcd.ObjectType = "m", kbps: int | None = None, top: int | None = None,
                duration_s: float | None = None) -> Any:
            nonlocal mtp
            payload = request_cmcd(buffer, time.monotonic(), ot=ot, session=sid, content_id=CONTENT_ID,
                                   bitrate_kbps=kbps, top_kbps=top, duration_s=duration_s, throughput_kbps=mtp)
            clock = time.perf_counter()
            response = self.client.get(with_cmcd(url, payload), name=kind)
            seconds = time.perf_counter() - clock
            if kind == "segment" and response.status_code == 200 and seconds > 0:
                mtp = len(response.content or b"") * 8 / seconds / 1000
            return response if response.status_code == 200 else None

        master_response = get("master", self.master_url)
        if master_response is None:
            return False
        try:
            variants = PLAYLISTS.master(master_response.text)
        except ManifestError:
            return False
        variant = variants[-1]  # the top rung, as a player on loopback settles on
        br, tb = variant.kbps, variants[-1].kbps
        ot: cmcd.ObjectType = "av" if variant.audio else "v"
        media_url = urljoin(self.master_url, variant.uri)
        media_response = get("playlist", media_url)
        if media_response is None:
            return False
        try:
            media = PLAYLISTS.media_playlist(media_response.text)
        except ManifestError:
            return False
        if media.init and get("init", urljoin(media_url, media.init), ot="i", kbps=br, top=tb) is None:
            return False
        for segment in media.segments:
            ahead = buffer.level(time.monotonic())
            if ahead > MAX_BUFFER_S:
                gevent.sleep(ahead - MAX_BUFFER_S)
            if get("segment", urljoin(media_url, segment.uri), ot=ot, kbps=br, top=tb,
                   duration_s=segment.duration) is None:
                return False
            change = buffer.add(segment.duration, br, time.monotonic())
            if change is not None and change[0] == "start":
                _tally["started"] += 1
                _tally["startup_s"].append(time.monotonic() - t0)
                _viewer_event(self.environment, "start", (time.monotonic() - t0) * 1000)
            elif change is not None:  # playback had started and stopped: the buffer ran dry before this segment
                _tally["stalls"] += 1
                _viewer_event(self.environment, "stall")
        return True
