"""A CDN point of presence's exporter: follows the PoP's JSON access log and serves Prometheus metrics.

Each PoP's nginx writes one JSON object per request (``labkit.platform.layers.cdn`` declares the format)::

    {"time":"2026-11-24T22:26:12+00:00","msec":1795559172.123,"pop":"pop-1","method":"GET",
     "path":"/lab-clock/720p/seg_00001.m4s","status":200,"bytes":651234,"request_time":0.004,
     "cache":"HIT","upstream_status":"","upstream_time":"","range":"","cmcd":"br%3D3200%2Cot%3Dv",
     "cmcd_request":"","cmcd_object":"","cmcd_status":"","cmcd_session":"","request_id":"abc"}

``python -m ott.edgelog --log access.log --pop edge-0 --port 18200`` follows the file (from its end,
or ``--from-start``; across truncation and rotation, by inode) and answers ``/metrics`` and
``/healthz``. A line that is not such an object is counted, never fatal. ``--host``/``--port``
default to ``OTT_HOST``/``OTT_PORT``.

Metrics, every one labelled ``pop``:

* ``ott_edge_requests_total{cache,object_type,status_class}``; ``cache`` is nginx's cache status
  (``NONE`` when the request never reached the cache, ``OTHER`` for a value nginx does not document)
  and ``object_type`` one of ``playlist``, ``segment``, ``init``, ``key``, ``other``;
* ``ott_edge_response_bytes_total{cache,object_type}``;
* ``ott_edge_origin_fetches_total{object_type,upstream_status}``, one per origin attempt;
* ``ott_edge_request_duration_seconds{cache,object_type}`` (histogram);
* ``ott_edge_log_lines_total{result}``: ``parsed``, ``invalid``;
* ``ott_edge_cmcd_requests_total{result}``: ``valid``, ``invalid``, ``absent`` (:mod:`ott.cmcd`);
* per CMCD session (``session`` is the sid, ``content`` the first cid the session sent, or empty):
  ``ott_edge_cmcd_session_startup``, ``ott_edge_cmcd_session_buffer_starvation_total``,
  ``ott_edge_cmcd_session_bitrate_kbps``, ``ott_edge_cmcd_session_throughput_kbps``,
  ``ott_edge_cmcd_session_buffer_ms``, ``ott_edge_cmcd_session_requests_total``; a session is dropped
  after ``--session-ttl`` seconds without a request, and the least recently seen one when more than
  ``--max-sessions`` are live, so these series stay bounded;
* ``ott_edge_cmcd_sessions`` (live sessions) and ``ott_edge_cmcd_sessions_ended_total{reason}``
  (``expired``, ``evicted``).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pythonjsonlogger.json import JsonFormatter

from ott import cmcd
from ott.settings import Settings, SettingsError

POLL_INTERVAL_S = 0.2
# A line longer than this is not one of nginx's: it is dropped (and counted) instead of buffered.
MAX_LINE_BYTES = 256 * 1024
# How much one poll reads at most before the loop checks whether it should stop.
READ_BUDGET_BYTES = 4 * 1024 * 1024
# After a rotation, how long the old file is still read: nginx writes to it until it reopens its log.
ROTATE_WAIT_S = 5.0
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CACHE_STATUSES = frozenset({"HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS"})
MAX_LABEL_LENGTH = 64
INVALID_WARNING_INTERVAL_S = 60.0
_UPSTREAM_STATUS = re.compile(r"[0-9]{3}")


# -- one log line -------------------------------------------------------------------------------


class LogLine(BaseModel):
    """The fields of an access log line the exporter uses (others are ignored)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    path: str
    status: int = Field(ge=0, le=999)
    body_bytes: int = Field(alias="bytes", ge=0, le=2**63 - 1)  # nginx's off_t
    request_time: float = Field(ge=0, allow_inf_nan=False)
    cache: str
    upstream_status: str = ""
    cmcd: str = ""
    cmcd_request: str = ""
    cmcd_object: str = ""
    cmcd_status: str = ""
    cmcd_session: str = ""

    def cmcd_headers(self) -> dict[str, str]:
        return {"CMCD-Request": self.cmcd_request, "CMCD-Object": self.cmcd_object,
                "CMCD-Status": self.cmcd_status, "CMCD-Session": self.cmcd_session}


def object_type(path: str) -> str:
    """What a request asked for, from its path's extension.

    >>> [object_type(p) for p in ("/t/master.m3u8", "/t/720p/seg_00001.m4s", "/t/720p/init.mp4", "/k/a.key", "/")]
    ['playlist', 'segment', 'init', 'key', 'other']
    """
    name = path.rpartition("/")[2].lower()
    if name.endswith(".m3u8"):
        return "playlist"
    if name.endswith((".ts", ".m4s")):
        return "segment"
    if name.endswith(".mp4"):  # init.mp4: the fMP4 init segment (media segments are .m4s)
        return "init"
    if name.endswith(".key"):
        return "key"
    return "other"


def status_class(status: int) -> str:
    """``2xx`` for 200 ... ``5xx``; ``other`` outside 100-599."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def cache_label(cache: str) -> str:
    if cache == "":
        return "NONE"
    return cache if cache in CACHE_STATUSES else "OTHER"


def upstream_statuses(value: str) -> list[str]:
    """One label per origin attempt: ``"502, 200"`` is two; nginx separates redirect groups by ``:``."""
    attempts = [part.strip() for part in re.split(r"[,:]", value)]
    return [a if _UPSTREAM_STATUS.fullmatch(a) else "other" for a in attempts if a]


# -- CMCD sessions ------------------------------------------------------------------------------


@dataclass
class _Session:
    content: str
    last_seen: float
    requests: int = 0
    starvations: int = 0
    startup: bool = False
    bitrate_kbps: int | None = None
    throughput_kbps: int | None = None
    buffer_ms: int | None = None


_SESSION_LABELS = ("pop", "session", "content")


class Sessions:
    """The CMCD sessions seen lately, as a Prometheus collector: its series are exactly the live sessions.

    A session is its sid. It expires ``ttl`` seconds after its last request; beyond ``max_sessions``
    the least recently seen one is evicted. ``content`` is the first cid the session sent.
    """

    def __init__(self, pop: str, *, ttl: float, max_sessions: int, clock: Callable[[], float] = time.monotonic):
        if ttl <= 0 or max_sessions < 1:
            raise ValueError("the session TTL must be positive and max_sessions at least 1")
        self.pop = pop
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently seen first: expiry and eviction both take from the front.
        self._live: OrderedDict[str, _Session] = OrderedDict()
        self._ended = {"expired": 0, "evicted": 0}

    def record(self, data: cmcd.Cmcd) -> None:
        """Account one request of ``data.sid``'s session (nothing without a sid)."""
        if not data.sid:
            return
        sid = data.sid[:MAX_LABEL_LENGTH]
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._live.get(sid)
            if session is None:
                session = self._live[sid] = _Session(content="", last_seen=now)
            self._live.move_to_end(sid)
            session.last_seen = now
            if not session.content and data.cid:
                session.content = data.cid[:MAX_LABEL_LENGTH]
            session.requests += 1
            session.starvations += 1 if data.starved else 0
            session.startup = data.startup
            session.bitrate_kbps = session.bitrate_kbps if data.br is None else data.br
            session.throughput_kbps = session.throughput_kbps if data.mtp is None else data.mtp
            session.buffer_ms = session.buffer_ms if data.bl is None else data.bl
            while len(self._live) > self.max_sessions:
                self._live.popitem(last=False)
                self._ended["evicted"] += 1

    def _expire(self, now: float) -> None:
        while self._live:
            oldest = next(iter(self._live.values()))
            if now - oldest.last_seen < self.ttl:
                return
            self._live.popitem(last=False)
            self._ended["expired"] += 1

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._live)

    def _families(self) -> dict[str, Metric]:
        return {
            "startup": GaugeMetricFamily("ott_edge_cmcd_session_startup",
                                         "1 while the session's last request had CMCD su (startup)",
                                         labels=_SESSION_LABELS),
            "starvations": CounterMetricFamily("ott_edge_cmcd_session_buffer_starvation_total",
                                               "Requests of the session with CMCD bs (buffer starvation)",
                                               labels=_SESSION_LABELS),
            "bitrate": GaugeMetricFamily("ott_edge_cmcd_session_bitrate_kbps",
                                         "The session's last CMCD br (encoded bitrate), kbps", labels=_SESSION_LABELS),
            "throughput": GaugeMetricFamily("ott_edge_cmcd_session_throughput_kbps",
                                            "The session's last CMCD mtp (measured throughput), kbps",
                                            labels=_SESSION_LABELS),
            "buffer": GaugeMetricFamily("ott_edge_cmcd_session_buffer_ms",
                                        "The session's last CMCD bl (buffer length), ms", labels=_SESSION_LABELS),
            "requests": CounterMetricFamily("ott_edge_cmcd_session_requests_total",
                                            "Requests of the session carrying CMCD", labels=_SESSION_LABELS),
            "sessions": GaugeMetricFamily("ott_edge_cmcd_sessions", "Live CMCD sessions", labels=("pop",)),
            "ended": CounterMetricFamily("ott_edge_cmcd_sessions_ended_total",
                                         "CMCD sessions dropped: expired (no request for the TTL) or evicted "
                                         "(more live sessions than the limit)", labels=("pop", "reason")),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        with self._lock:
            self._expire(self._clock())
            for sid, s in self._live.items():
                labels = [self.pop, sid, s.content]
                cast(GaugeMetricFamily, families["startup"]).add_metric(labels, 1 if s.startup else 0)
                cast(CounterMetricFamily, families["starvations"]).add_metric(labels, s.starvations)
                cast(CounterMetricFamily, families["requests"]).add_metric(labels, s.requests)
                for name, value in (("bitrate", s.bitrate_kbps), ("throughput", s.throughput_kbps),
                                    ("buffer", s.buffer_ms)):
                    if value is not None:
                        cast(GaugeMetricFamily, families[name]).add_metric(labels, value)
            cast(GaugeMetricFamily, families["sessions"]).add_metric([self.pop], len(self._live))
            for reason, count in self._ended.items():
                cast(CounterMetricFamily, families["ended"]).add_metric([self.pop, reason], count)
        return list(families.values())


# -- the metrics of one PoP ---------------------------------------------------------------------


class EdgeMetrics:
    """Turns access log lines into the PoP's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, pop: str, *, session_ttl: float = 300.0,
                 max_sessions: int = 1000, clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None):
        self.pop = pop
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._clock = clock
        self._log = log or logging.getLogger("ott.edgelog")
        self.requests = Counter("ott_edge_requests_total", "Requests the PoP answered",
                                ["pop", "cache", "object_type", "status_class"], registry=registry)
        self.bytes = Counter("ott_edge_response_bytes_total", "Response body bytes the PoP sent",
                             ["pop", "cache", "object_type"], registry=registry)
        self.origin_fetches = Counter("ott_edge_origin_fetches_total",
                                      "Requests the PoP made to the origin, one per attempt",
                                      ["pop", "object_type", "upstream_status"], registry=registry)
        self.duration = Histogram("ott_edge_request_duration_seconds", "Time the PoP took to answer",
                                  ["pop", "cache", "object_type"], buckets=DURATION_BUCKETS, registry=registry)
        self.lines = Counter("ott_edge_log_lines_total", "Access log lines read", ["pop", "result"],
                             registry=registry)
        self.cmcd_requests = Counter("ott_edge_cmcd_requests_total", "Requests by what CMCD they carried",
                                     ["pop", "result"], registry=registry)
        for result in ("parsed", "invalid"):
            self.lines.labels(pop, result)
        for result in ("valid", "invalid", "absent"):
            self.cmcd_requests.labels(pop, result)
        self._parsed = self._child(self.lines, pop, "parsed")
        self._cmcd_absent = self._child(self.cmcd_requests, pop, "absent")
        self._shapes: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self.sessions = Sessions(pop, ttl=session_ttl, max_sessions=max_sessions, clock=clock)
        registry.register(self.sessions)
        self._invalid_unreported = 0
        self._last_warning = -math.inf

    def handle_line(self, raw: bytes | str) -> bool:
        """Account one log line (without its newline); False when it is not a valid access log object."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            line = LogLine.model_validate_json(text)
        except ValidationError as exc:
            self.invalid(f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}")
            return False
        self._parsed.inc()
        kind = object_type(line.path)
        requests, body_bytes, duration = self._shape(cache_label(line.cache), kind, line.status)
        requests.inc()
        body_bytes.inc(line.body_bytes)
        duration.observe(line.request_time)
        if line.upstream_status:  # a HIT never reached the origin: most lines of a busy PoP
            for upstream in upstream_statuses(line.upstream_status):
                self._child(self.origin_fetches, self.pop, kind, upstream).inc()
        if not (line.cmcd or line.cmcd_request or line.cmcd_object or line.cmcd_status or line.cmcd_session):
            self._cmcd_absent.inc()  # what cmcd.from_request says of a request without any CMCD
            return True
        try:
            data = cmcd.from_request(line.cmcd, line.cmcd_headers())
        except cmcd.CmcdError:
            self._child(self.cmcd_requests, self.pop, "invalid").inc()
            return True
        if data is None:
            self._cmcd_absent.inc()
            return True
        self._child(self.cmcd_requests, self.pop, "valid").inc()
        self.sessions.record(data)
        return True

    def _shape(self, cache: str, kind: str, status: int) -> tuple[Any, Any, Any]:
        """The request, byte and duration series of one (cache, object type, status): one lookup a line.

        Bounded: ``cache`` is one of nine labels, ``kind`` of five and ``status`` of 1,000 values.
        """
        key = (cache, kind, status)
        children = self._shapes.get(key)
        if children is None:
            children = self._shapes[key] = (
                self._child(self.requests, self.pop, cache, kind, status_class(status)),
                self._child(self.bytes, self.pop, cache, kind),
                self._child(self.duration, self.pop, cache, kind))
        return children

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: at thousands of lines a second the lookup is the cost."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def invalid(self, reason: str) -> None:
        """Count one line that is not an access log object; warn about such lines at most once a minute."""
        self.lines.labels(self.pop, "invalid").inc()
        self._invalid_unreported += 1
        now = self._clock()
        if now - self._last_warning >= INVALID_WARNING_INTERVAL_S:
            self._log.warning("invalid log lines", extra={"event": "invalid_lines", "count": self._invalid_unreported,
                                                          "reason": reason[:200]})
            self._invalid_unreported = 0
            self._last_warning = now


# -- following the log file ---------------------------------------------------------------------


@dataclass
class _Followed:
    """One open log file: where it was read up to and its incomplete last line."""

    file: io.FileIO
    identity: tuple[int, int]
    position: int = 0
    partial: bytearray = field(default_factory=bytearray)
    skipping: bool = False  # dropping bytes up to the next newline
    retire_at: float = math.inf


EventLog = Callable[[str, Mapping[str, object]], None]


class Tailer:
    """Follows ``path`` like ``tail -F``: complete lines go to ``on_line``, dropped ones to ``on_invalid``.

    * Starts at the end (skipping the rest of a line it starts in the middle of) or, with
      ``from_start``, at the beginning; a file that appears later is read from its beginning.
    * A line is handed over once its newline arrives; a longer one than ``max_line`` is dropped.
    * Truncation (the file got shorter than what was read): reads again from the beginning.
    * Rotation (the path now names another inode): reads the new file from its beginning and keeps
      reading the old one for ``rotate_wait`` seconds, for what its writer wrote before reopening.
    * ``truncate_at``: once it has read everything of a file this long, it empties it (the log's
      only reader keeps it bounded; nginx appends with O_APPEND, so it goes on writing at the new
      end). A line written between the last read and the truncation is lost: a small window.
    """

    def __init__(self, path: Path, on_line: Callable[[bytes], object], on_invalid: Callable[[str], None], *,
                 from_start: bool = False, poll_interval: float = POLL_INTERVAL_S, max_line: int = MAX_LINE_BYTES,
                 budget: int = READ_BUDGET_BYTES, rotate_wait: float = ROTATE_WAIT_S,
                 clock: Callable[[], float] = time.monotonic, event: EventLog | None = None,
                 truncate_at: int = 0):
        self.path = path
        self._truncate_at = truncate_at
        self._on_line = on_line
        self._on_invalid = on_invalid
        self._from_start = from_start
        self.poll_interval = poll_interval
        self._max_line = max_line
        self._budget = budget
        self._rotate_wait = rotate_wait
        self._clock = clock
        self._event = event or (lambda _name, _fields: None)
        self._current: _Followed | None = None
        self._retired: list[_Followed] = []
        self._first_attempt = True  # only a file there at start is read from its end

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; waits ``poll_interval`` whenever it has caught up."""
        try:
            while not stop.is_set():
                try:
                    read = self.poll()
                except OSError as exc:
                    self._event("read_error", {"error": str(exc)})
                    read = 0
                if read < self._budget:
                    stop.wait(self.poll_interval)
        finally:
            self.close()

    def poll(self) -> int:
        """Read what is new in the log (and in a recently rotated one); the number of bytes read."""
        read = 0
        now = self._clock()
        for old in list(self._retired):
            read += self._read(old, self._budget)
            if now >= old.retire_at:
                self._retired.remove(old)
                self._finish(old)
        if self._current is None:
            self._current = self._open()
            if self._current is None:
                return read
        current = self._current
        got = self._read(current, self._budget)
        read += got
        if got < self._budget:  # caught up with this file: has it been truncated or replaced?
            if os.fstat(current.file.fileno()).st_size < current.position:
                self._event("truncated", {"path": str(self.path), "was_read_up_to": current.position})
                self._flush(current)
                current.file.seek(0)
                current.position = 0
                current.skipping = False
                read += self._read(current, self._budget)
            elif self._replaced(current):
                self._event("rotated", {"path": str(self.path)})
                current.retire_at = now + self._rotate_wait
                self._retired.append(current)
                self._current = self._open()
                if self._current is not None:
                    read += self._read(self._current, self._budget)
            elif self._truncate_at and current.position >= self._truncate_at and not current.partial:
                os.truncate(self.path, 0)
                self._event("emptied", {"path": str(self.path), "bytes": current.position})
                current.file.seek(0)
                current.position = 0
        return read

    def close(self) -> None:
        for followed in [*self._retired, *([self._current] if self._current else [])]:
            self._finish(followed)
        self._retired.clear()
        self._current = None

    def _replaced(self, current: _Followed) -> bool:
        try:
            st = self.path.stat()
        except OSError:  # moved away and not recreated yet: keep reading the old file
            return False
        return (st.st_dev, st.st_ino) != current.identity

    def _open(self) -> _Followed | None:
        initial, self._first_attempt = self._first_attempt, False
        try:
            fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across polls, closed by _finish
        except OSError as exc:
            if initial:
                self._event("waiting", {"path": str(self.path), "error": str(exc)})
            return None
        st = os.fstat(fh.fileno())
        followed = _Followed(fh, (st.st_dev, st.st_ino))
        if initial and not self._from_start and st.st_size > 0:
            fh.seek(st.st_size - 1)
            followed.skipping = fh.read(1) != b"\n"
            followed.position = st.st_size
        self._event("opened", {"path": str(self.path), "position": followed.position})
        return followed

    def _read(self, followed: _Followed, budget: int) -> int:
        total = 0
        while total < budget:
            chunk = followed.file.read(min(64 * 1024, budget - total))
            if not chunk:
                break
            total += len(chunk)
            followed.position += len(chunk)
            self._feed(followed, chunk)
        return total

    def _feed(self, followed: _Followed, chunk: bytes) -> None:
        if followed.skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            followed.skipping = False
            chunk = chunk[newline + 1 :]
        parts = chunk.split(b"\n")
        if len(parts) > 1:
            self._emit(bytes(followed.partial) + parts[0])
            followed.partial.clear()
            for line in parts[1:-1]:
                self._emit(line)
        followed.partial += parts[-1]
        if len(followed.partial) > self._max_line:
            self._on_invalid(f"a line longer than {self._max_line} bytes")
            followed.partial.clear()
            followed.skipping = True

    def _emit(self, line: bytes) -> None:
        try:
            self._on_line(line)
        except Exception as exc:  # noqa: BLE001 - one line must never stop the exporter
            self._on_invalid(f"the line handler failed: {exc!r}")

    def _flush(self, followed: _Followed) -> None:
        """Hand over an incomplete last line whose newline will never come (truncation, rotation, stop)."""
        if followed.partial and not followed.skipping:
            self._emit(bytes(followed.partial))
        followed.partial.clear()

    def _finish(self, followed: _Followed) -> None:
        self._read(followed, self._budget)
        self._flush(followed)
        followed.file.close()


# -- HTTP: /metrics and /healthz ----------------------------------------------------------------


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` (the registry, Prometheus text format) and ``/healthz``, one thread per request."""

    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ott-edgelog"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._answer(200, CONTENT_TYPE_LATEST, generate_latest(cast(MetricsServer, self.server).registry))
        elif path == "/healthz":
            self._answer(200, "application/json", b'{"status":"alive"}')
        else:
            self._answer(404, "application/json", b'{"error":"not_found","message":"see /metrics or /healthz"}')

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


# -- the command ----------------------------------------------------------------------------------


def configure_logging(level: str) -> logging.Logger:
    """JSON lines on stdout, as every OTT service logs (without importing the web stack for it)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "time", "levelname": "level"},
                                       static_fields={"service": "edgelog"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger("ott.edgelog")


def echoed(handle: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """``handle``, which also writes each line it accepts to stdout, whole, between the log's own lines.

    The pod's log then holds the PoP's requests, each one JSON object per line as nginx wrote it:
    ``kubectl logs edge-0 -c edge-exporter`` shows them, and the kube target's ``access_log`` reads them.
    """
    handler = logging.getLogger().handlers[0] if logging.getLogger().handlers else None

    def handle_and_echo(raw: bytes) -> bool:
        accepted = handle(raw)
        if accepted:
            text = raw.decode("utf-8", "replace").strip() + "\n"
            if handler is not None:
                handler.acquire()  # one line at a time, never inside one of the log's own
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            finally:
                if handler is not None:
                    handler.release()
        return accepted

    return handle_and_echo


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ott.edgelog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, type=Path, help="the PoP's JSON access log")
    parser.add_argument("--pop", required=True, help="the PoP's id, the pop label of every metric")
    parser.add_argument("--host", help="listen address (default: OTT_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: OTT_PORT, else 8000)")
    parser.add_argument("--from-start", action="store_true", help="read the log from its beginning, not its end")
    parser.add_argument("--session-ttl", type=float, default=300.0,
                        help="seconds without a request before a CMCD session is dropped (default: 300)")
    parser.add_argument("--max-sessions", type=int, default=1000,
                        help="CMCD sessions kept at most; the least recently seen go first (default: 1000)")
    parser.add_argument("--truncate-at", type=int, default=0, metavar="BYTES",
                        help="empty the log once this much of it has been read (default: 0, never)")
    parser.add_argument("--echo", action="store_true",
                        help="also write each valid access log line to stdout, as read (on Kubernetes: the pod's "
                             "log, where labkit reads a PoP's requests)")
    return parser


@dataclass(frozen=True)
class Options:
    log: Path
    pop: str
    host: str
    port: int
    from_start: bool
    session_ttl: float
    max_sessions: int
    truncate_at: int = 0
    echo: bool = False


def options(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Options:
    """The command line, with ``OTT_HOST``/``OTT_PORT`` where ``--host``/``--port`` are not given."""
    cli = parser()
    args = cli.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env({k: env[k] for k in ("OTT_HOST", "OTT_PORT") if k in env})
    except SettingsError as exc:
        cli.error(str(exc))
    if not args.pop:
        cli.error("--pop must not be empty")
    if not args.session_ttl > 0 or args.max_sessions < 1:
        cli.error("--session-ttl must be positive and --max-sessions at least 1")
    if args.truncate_at < 0:
        cli.error("--truncate-at must be 0 (never) or a size in bytes")
    port = settings.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        cli.error(f"port {port} is out of range")
    return Options(log=args.log, pop=args.pop, host=args.host or settings.host, port=port,
                   from_start=args.from_start, session_ttl=args.session_ttl, max_sessions=args.max_sessions,
                   truncate_at=args.truncate_at, echo=args.echo)


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    log = configure_logging(os.environ.get("OTT_LOG_LEVEL") or "INFO")
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry, opts.pop, session_ttl=opts.session_ttl, max_sessions=opts.max_sessions, log=log)

    def event(name: str, fields: Mapping[str, object]) -> None:
        log.info(name.replace("_", " "), extra={"event": name, **fields})

    tailer = Tailer(opts.log, echoed(metrics.handle_line) if opts.echo else metrics.handle_line,
                    metrics.invalid, from_start=opts.from_start, event=event, truncate_at=opts.truncate_at)
    try:
        server = MetricsServer(opts.host, opts.port, registry)
    except OSError as exc:
        log.error("cannot listen", extra={"event": "listen_failed", "host": opts.host, "port": opts.port,
                                          "error": str(exc)})
        return 1
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics",
                               daemon=True)
    serving.start()
    stop = threading.Event()

    def stop_on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    log.info("started", extra={"event": "started", "pop": opts.pop, "log": str(opts.log), "host": opts.host,
                               "port": server.server_address[1], "from_start": opts.from_start})
    try:
        tailer.run(stop)
    finally:
        server.shutdown()
        server.server_close()
        log.info("stopped", extra={"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
