"""The edge exporter in-process: log lines to metrics, CMCD sessions, following the file, the HTTP side."""

from __future__ import annotations

import doctest
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from ott import cmcd, edgelog
from ott.edgelog import EdgeMetrics, Sessions, Tailer

POP = "pop-1"
SID = "6e2fb550-c457-11e9-bb97-0800200c9a66"
SAMPLE: dict[str, Any] = {
    "time": "2026-11-24T22:26:12+00:00", "msec": 1795559172.123, "pop": POP, "method": "GET",
    "path": "/lab-clock/720p/seg_00001.m4s", "status": 200, "bytes": 651234, "request_time": 0.004, "cache": "HIT",
    "upstream_status": "", "upstream_time": "", "range": "",
    "cmcd": f"br%3D3200%2Cbl%3D21300%2Cot%3Dv%2Csid%3D%22{SID}%22",
    "cmcd_request": "", "cmcd_object": "", "cmcd_status": "", "cmcd_session": "", "request_id": "abc",
}


def line(**fields: Any) -> str:
    return json.dumps({**SAMPLE, **fields}, separators=(",", ":"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: Clock) -> EdgeMetrics:
    return EdgeMetrics(registry, POP, session_ttl=300, max_sessions=3, clock=clock)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"pop": POP, **labels})


def sessions_of(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Every session series by session id: {sid: {metric name: value}}."""
    out: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if "session" in sample.labels:
                out.setdefault(sample.labels["session"], {})[sample.name] = sample.value
    return out


def test_doctests() -> None:
    result = doctest.testmod(edgelog)
    assert result.attempted > 0
    assert result.failed == 0


# -- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), [
    ("/lab-clock/master.m3u8", "playlist"), ("/lab-clock/720p/index.M3U8", "playlist"),
    ("/lab-clock/720p/seg_00001.m4s", "segment"), ("/lab-clock/720p/seg_00001.ts", "segment"),
    ("/lab-clock/720p/init.mp4", "init"), ("/lab-clock/720p/init_0.mp4", "init"), ("/clip.mp4", "init"),
    ("/keys/lab-clock.key", "key"), ("/healthz", "other"), ("/", "other"), ("", "other"),
    ("/lab-clock/m3u8", "other"), ("/lab-clock/seg.m4s/", "other"), ("/a.ts.bak", "other"),
])
def test_object_type(path: str, kind: str) -> None:
    assert edgelog.object_type(path) == kind


@pytest.mark.parametrize(("status", "label"), [
    (200, "2xx"), (206, "2xx"), (304, "3xx"), (403, "4xx"), (499, "4xx"), (502, "5xx"), (101, "1xx"),
    (0, "other"), (99, "other"), (600, "other"),
])
def test_status_class(status: int, label: str) -> None:
    assert edgelog.status_class(status) == label


@pytest.mark.parametrize(("cache", "label"), [
    ("", "NONE"), ("HIT", "HIT"), ("MISS", "MISS"), ("REVALIDATED", "REVALIDATED"), ("hit", "OTHER"),
    ("weird", "OTHER"),
])
def test_cache_label(cache: str, label: str) -> None:
    assert edgelog.cache_label(cache) == label


@pytest.mark.parametrize(("raw", "attempts"), [
    ("", []), ("200", ["200"]), ("502, 200", ["502", "200"]), ("502, 504 : 200", ["502", "504", "200"]),
    ("-", ["other"]), ("2000", ["other"]),
])
def test_upstream_statuses(raw: str, attempts: list[str]) -> None:
    assert edgelog.upstream_statuses(raw) == attempts


# -- lines to metrics ---------------------------------------------------------------------------


def test_a_sample_line(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    assert metrics.handle_line(line().encode())
    seg_hit = {"cache": "HIT", "object_type": "segment"}
    assert value(registry, "ott_edge_requests_total", **seg_hit, status_class="2xx") == 1
    assert value(registry, "ott_edge_response_bytes_total", **seg_hit) == 651234
    assert value(registry, "ott_edge_request_duration_seconds_count", **seg_hit) == 1
    assert value(registry, "ott_edge_request_duration_seconds_sum", **seg_hit) == pytest.approx(0.004)
    assert value(registry, "ott_edge_request_duration_seconds_bucket", **seg_hit, le="0.0025") == 0
    assert value(registry, "ott_edge_request_duration_seconds_bucket", **seg_hit, le="0.005") == 1
    assert value(registry, "ott_edge_log_lines_total", result="parsed") == 1
    assert value(registry, "ott_edge_log_lines_total", result="invalid") == 0
    assert value(registry, "ott_edge_cmcd_requests_total", result="valid") == 1
    assert value(registry, "ott_edge_cmcd_requests_total", result="absent") == 0
    assert value(registry, "ott_edge_origin_fetches_total", object_type="segment", upstream_status="200") is None
    session = {"session": SID, "content": ""}
    assert value(registry, "ott_edge_cmcd_session_bitrate_kbps", **session) == 3200
    assert value(registry, "ott_edge_cmcd_session_buffer_ms", **session) == 21300
    assert value(registry, "ott_edge_cmcd_session_requests_total", **session) == 1
    assert value(registry, "ott_edge_cmcd_session_startup", **session) == 0
    assert value(registry, "ott_edge_cmcd_session_buffer_starvation_total", **session) == 0
    assert value(registry, "ott_edge_cmcd_session_throughput_kbps", **session) is None  # no mtp sent yet
    assert value(registry, "ott_edge_cmcd_sessions") == 1


def test_counters_start_at_zero(registry: CollectorRegistry, metrics: EdgeMetrics) -> None:
    for result in ("parsed", "invalid"):
        assert value(registry, "ott_edge_log_lines_total", result=result) == 0
    for result in ("valid", "invalid", "absent"):
        assert value(registry, "ott_edge_cmcd_requests_total", result=result) == 0
    assert value(registry, "ott_edge_cmcd_sessions") == 0
    assert value(registry, "ott_edge_cmcd_sessions_ended_total", reason="expired") == 0


def test_labels_of_misses_errors_and_origin_attempts(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    metrics.handle_line(line(path="/t/master.m3u8", cache="MISS", upstream_status="502, 200", bytes=900, cmcd=""))
    metrics.handle_line(line(path="/t/720p/init.mp4", cache="EXPIRED", upstream_status="200", bytes=800, cmcd=""))
    metrics.handle_line(line(path="/s/bad/1/t/x.m4s", status=403, cache="", bytes=0, request_time=0, cmcd=""))
    metrics.handle_line(line(path="/t/x.m4s", status=504, cache="STALE", upstream_status="504", cmcd=""))
    assert value(registry, "ott_edge_requests_total", cache="MISS", object_type="playlist", status_class="2xx") == 1
    assert value(registry, "ott_edge_requests_total", cache="EXPIRED", object_type="init", status_class="2xx") == 1
    assert value(registry, "ott_edge_requests_total", cache="NONE", object_type="segment", status_class="4xx") == 1
    assert value(registry, "ott_edge_requests_total", cache="STALE", object_type="segment", status_class="5xx") == 1
    assert value(registry, "ott_edge_response_bytes_total", cache="MISS", object_type="playlist") == 900
    assert value(registry, "ott_edge_origin_fetches_total", object_type="playlist", upstream_status="502") == 1
    assert value(registry, "ott_edge_origin_fetches_total", object_type="playlist", upstream_status="200") == 1
    assert value(registry, "ott_edge_origin_fetches_total", object_type="init", upstream_status="200") == 1
    assert value(registry, "ott_edge_origin_fetches_total", object_type="segment", upstream_status="504") == 1
    assert value(registry, "ott_edge_cmcd_requests_total", result="absent") == 4


def test_unused_fields_may_be_missing_or_extra(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    minimal = {"path": "/a.ts", "status": 200, "bytes": 1, "request_time": 0, "cache": "HIT", "new_field": [1]}
    assert metrics.handle_line(json.dumps(minimal))
    assert value(registry, "ott_edge_cmcd_requests_total", result="absent") == 1


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"not json", b"[]", b"null", b"{}", b'{"path":"/a.ts"', b"\xff\xfe\x00",
    line(status="200").encode(), line(status=200.0).encode(), line(status=True).encode(), line(status=-1).encode(),
    line(bytes=-5).encode(), line(bytes=10**400).encode(), line(request_time=-0.1).encode(),
    line(request_time="0.1").encode(), line(cache=None).encode(), line(path=7).encode(), line(cmcd=1).encode(),
    line(upstream_status=502).encode(), line().replace('"request_time":0.004', '"request_time":NaN').encode(),
    line().replace('"request_time":0.004', '"request_time":Infinity').encode(),
    json.dumps({k: v for k, v in SAMPLE.items() if k != "status"}).encode(),
])
def test_invalid_lines_are_counted(metrics: EdgeMetrics, registry: CollectorRegistry, raw: bytes) -> None:
    assert metrics.handle_line(raw) is False
    assert value(registry, "ott_edge_log_lines_total", result="invalid") == 1
    assert value(registry, "ott_edge_log_lines_total", result="parsed") == 0
    assert all(s.value == 0 for f in registry.collect() if f.name == "ott_edge_requests" for s in f.samples)
    assert value(registry, "ott_edge_cmcd_requests_total", result="absent") == 0


def test_invalid_lines_are_reported_at_most_once_a_minute(
        registry: CollectorRegistry, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    metrics = EdgeMetrics(registry, POP, clock=clock)
    for _ in range(5):
        metrics.handle_line(b"junk")
    clock.advance(61)
    metrics.handle_line(b"junk")
    warnings = [r for r in caplog.records if r.getMessage() == "invalid log lines"]
    assert [getattr(r, "count", None) for r in warnings] == [1, 5]
    assert value(registry, "ott_edge_log_lines_total", result="invalid") == 6


# -- CMCD -----------------------------------------------------------------------------------------


def test_cmcd_absent_invalid_valid(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    metrics.handle_line(line(cmcd=""))
    metrics.handle_line(line(cmcd="br%3Dfast"))
    metrics.handle_line(line(cmcd="", cmcd_object="br=800,ot=v", cmcd_session='sid="h1"'))
    metrics.handle_line(line(cmcd="", cmcd_session="sid=unquoted"))
    assert value(registry, "ott_edge_cmcd_requests_total", result="absent") == 1
    assert value(registry, "ott_edge_cmcd_requests_total", result="invalid") == 2
    assert value(registry, "ott_edge_cmcd_requests_total", result="valid") == 1
    # An invalid CMCD payload does not make the request itself invalid.
    assert value(registry, "ott_edge_log_lines_total", result="parsed") == 4
    assert set(sessions_of(registry)) == {"h1"}


def test_a_session_over_several_requests(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    def send(payload: str) -> None:
        metrics.handle_line(line(cmcd=cmcd.to_query(cmcd.parse(f'sid="s1",{payload}'))))

    send('cid="lab-clock",su,br=800,bl=0,mtp=5000,ot=v')
    labels = {"session": "s1", "content": "lab-clock"}
    assert value(registry, "ott_edge_cmcd_session_startup", **labels) == 1
    send("su,ot=m")  # a playlist request: no br, mtp or bl; the last known values stay
    send("bs,br=3200,bl=4000,ot=v")
    send('cid="other",bs,mtp=25400,ot=v')  # the content label stays the first cid
    assert value(registry, "ott_edge_cmcd_session_startup", **labels) == 0
    assert value(registry, "ott_edge_cmcd_session_requests_total", **labels) == 4
    assert value(registry, "ott_edge_cmcd_session_buffer_starvation_total", **labels) == 2
    assert value(registry, "ott_edge_cmcd_session_bitrate_kbps", **labels) == 3200
    assert value(registry, "ott_edge_cmcd_session_buffer_ms", **labels) == 4000
    assert value(registry, "ott_edge_cmcd_session_throughput_kbps", **labels) == 25400
    assert list(sessions_of(registry)) == ["s1"]


def test_cmcd_without_a_session_id_makes_no_session(metrics: EdgeMetrics, registry: CollectorRegistry) -> None:
    metrics.handle_line(line(cmcd="br%3D800"))
    metrics.handle_line(line(cmcd="sid%3D%22%22"))
    assert value(registry, "ott_edge_cmcd_requests_total", result="valid") == 2
    assert sessions_of(registry) == {}
    assert value(registry, "ott_edge_cmcd_sessions") == 0


def test_sessions_expire_after_the_ttl(metrics: EdgeMetrics, registry: CollectorRegistry, clock: Clock) -> None:
    metrics.sessions.record(cmcd.Cmcd(sid="a"))
    clock.advance(200)
    metrics.sessions.record(cmcd.Cmcd(sid="b"))
    clock.advance(99.9)
    assert set(sessions_of(registry)) == {"a", "b"}
    clock.advance(0.1)  # a: 300 s without a request
    assert set(sessions_of(registry)) == {"b"}
    assert value(registry, "ott_edge_cmcd_sessions") == 1
    assert value(registry, "ott_edge_cmcd_sessions_ended_total", reason="expired") == 1
    metrics.sessions.record(cmcd.Cmcd(sid="b"))  # a request keeps a session alive
    clock.advance(299)
    assert set(sessions_of(registry)) == {"b"}
    clock.advance(1)
    assert sessions_of(registry) == {}
    assert len(metrics.sessions) == 0
    assert value(registry, "ott_edge_cmcd_sessions_ended_total", reason="expired") == 2
    # A session seen again after expiring starts over.
    metrics.sessions.record(cmcd.Cmcd(sid="a", bs=True))
    assert sessions_of(registry)["a"]["ott_edge_cmcd_session_requests_total"] == 1


def test_the_least_recently_seen_session_is_evicted(
        metrics: EdgeMetrics, registry: CollectorRegistry, clock: Clock) -> None:
    for sid in ("a", "b", "c"):
        metrics.sessions.record(cmcd.Cmcd(sid=sid))
        clock.advance(1)
    metrics.sessions.record(cmcd.Cmcd(sid="a"))  # a is now the most recent
    metrics.sessions.record(cmcd.Cmcd(sid="d"))
    assert set(sessions_of(registry)) == {"a", "c", "d"}
    metrics.sessions.record(cmcd.Cmcd(sid="e"))
    assert set(sessions_of(registry)) == {"a", "d", "e"}
    assert value(registry, "ott_edge_cmcd_sessions") == 3
    assert value(registry, "ott_edge_cmcd_sessions_ended_total", reason="evicted") == 2


def test_many_sessions_stay_bounded(registry: CollectorRegistry, clock: Clock) -> None:
    metrics = EdgeMetrics(registry, POP, max_sessions=50, clock=clock)
    for i in range(2000):
        metrics.handle_line(line(cmcd=cmcd.to_query(cmcd.Cmcd(sid=f"session-{i}", br=i))))
    live = sessions_of(registry)
    assert len(live) == 50
    assert set(live) == {f"session-{i}" for i in range(1950, 2000)}


def test_long_ids_are_truncated(registry: CollectorRegistry, clock: Clock) -> None:
    sessions = Sessions(POP, ttl=60, max_sessions=10, clock=clock)
    registry.register(sessions)
    sessions.record(cmcd.Cmcd(sid="s" * 100, cid="c" * 100))
    assert value(registry, "ott_edge_cmcd_session_requests_total", session="s" * 64, content="c" * 64) == 1


def test_session_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="TTL"):
        Sessions(POP, ttl=0, max_sessions=1)
    with pytest.raises(ValueError, match="max_sessions"):
        Sessions(POP, ttl=1, max_sessions=0)


# -- fuzzing the line handler -----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_cmcd_text = st.text(alphabet='br=,bl"sidu0123456789%2CDot.v ?-', max_size=40)
_valid_cmcd = st.builds(
    cmcd.Cmcd, sid=st.none() | st.sampled_from(["s1", "s2", "s3"]), cid=st.none() | st.just("lab-clock"),
    br=st.none() | st.integers(0, 10**6), bl=st.none() | st.integers(0, 10**6), mtp=st.none() | st.integers(0, 10**6),
    su=st.none() | st.booleans(), bs=st.none() | st.booleans(), ot=st.none() | st.sampled_from(["m", "v", "i"]))
_valid_fields = st.fixed_dictionaries({
    "path": st.sampled_from(["/t/master.m3u8", "/t/720p/seg_00001.m4s", "/t/init.mp4", "/x.key", "/", ""]),
    "status": st.integers(min_value=100, max_value=599),
    "bytes": st.integers(min_value=0, max_value=10**9),
    "request_time": st.floats(min_value=0, max_value=100),
    "cache": st.sampled_from(["", *sorted(edgelog.CACHE_STATUSES)]),
    "upstream_status": st.sampled_from(["", "200", "502, 200", "504 : 200"]),
    "cmcd": st.just("") | _valid_cmcd.map(cmcd.to_query),
}).flatmap(lambda d: _valid_cmcd.map(cmcd.to_headers).map(lambda h: {
    **d, **({} if d["cmcd"] else {f"cmcd_{k[5:].lower()}": v for k, v in h.items()})}))
# What may replace a field: anything JSON, or a near miss of the right type.
_weird = {
    "path": st.text(), "status": st.integers(), "bytes": st.integers(min_value=-5, max_value=5) | st.integers(
        min_value=2**62, max_value=2**70),
    "request_time": st.floats(min_value=-1, max_value=1e308) | st.integers(min_value=-1, max_value=10**20),
    "cache": st.text(max_size=10), "upstream_status": st.text(alphabet="0123456789,: -", max_size=20),
    "cmcd": _cmcd_text | st.sampled_from(["br%3D", "%ZZ", "%FF", "sid%3D%22" + "x" * 70 + "%22"]),
    "cmcd_request": _cmcd_text, "cmcd_object": _cmcd_text, "cmcd_status": _cmcd_text, "cmcd_session": _cmcd_text,
}
_overrides: st.SearchStrategy[dict[str, Any]] = st.just({}) | st.sampled_from(sorted(_weird)).flatmap(
    lambda k: (_weird[k] | _json).map(lambda v: {k: v}))
log_objects = st.builds(lambda base, override, drop: {k: v for k, v in {**base, **override}.items() if k != drop},
                        _valid_fields, _overrides, st.none() | st.sampled_from(sorted(_weird)))
raw_lines = log_objects.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=300) | _json.map(
    lambda d: json.dumps(d).encode())


def _counters(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect() if f.type in ("counter", "histogram")
            for s in f.samples if not s.name.endswith("_created")}


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(st.lists(raw_lines, min_size=1, max_size=4))
def test_no_log_content_breaks_the_handler(raws: list[bytes]) -> None:
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry, POP, max_sessions=2, clock=Clock())
    for raw in raws:
        before = _counters(registry)
        metrics.handle_line(raw)
        after = _counters(registry)
        assert all(after.get(key, -1) >= was for key, was in before.items()), "a counter went down or vanished"
        lines = [after[("ott_edge_log_lines_total", (("pop", POP), ("result", r)))] -
                 before[("ott_edge_log_lines_total", (("pop", POP), ("result", r)))] for r in ("parsed", "invalid")]
        assert sorted(lines) == [0, 1]
        assert all(math.isfinite(v) for v in after.values())
    assert b"ott_edge_log_lines_total" in generate_latest(registry)  # /metrics still renders


def _reference_accounting(metrics: EdgeMetrics, raw: bytes) -> None:
    """The exporter's accounting of one line as it was before its per-line fast path (shape lookup,
    no CMCD parse without CMCD, no origin loop without an origin attempt): one plain metric update
    at a time. The oracle of the test below."""
    try:
        line = edgelog.LogLine.model_validate_json(raw.decode("utf-8", "replace"))
    except ValidationError as exc:
        metrics.invalid(f"{exc.error_count()} problem(s)")
        return
    pop = metrics.pop
    metrics.lines.labels(pop, "parsed").inc()
    cache, kind = edgelog.cache_label(line.cache), edgelog.object_type(line.path)
    metrics.requests.labels(pop, cache, kind, edgelog.status_class(line.status)).inc()
    metrics.bytes.labels(pop, cache, kind).inc(line.body_bytes)
    metrics.duration.labels(pop, cache, kind).observe(line.request_time)
    for upstream in edgelog.upstream_statuses(line.upstream_status):
        metrics.origin_fetches.labels(pop, kind, upstream).inc()
    try:
        data = cmcd.from_request(line.cmcd, line.cmcd_headers())
    except cmcd.CmcdError:
        metrics.cmcd_requests.labels(pop, "invalid").inc()
        return
    if data is None:
        metrics.cmcd_requests.labels(pop, "absent").inc()
        return
    metrics.cmcd_requests.labels(pop, "valid").inc()
    metrics.sessions.record(data)


def _exposed(registry: CollectorRegistry) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics shows, by family type, name and labels (``_created`` times aside)."""
    return {(f.type, s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect() for s in f.samples if not s.name.endswith("_created")}


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(raw_lines | log_objects.map(lambda d: json.dumps({**SAMPLE, **d}).encode()), min_size=1, max_size=12))
def test_the_fast_path_exposes_exactly_what_line_by_line_accounting_did(raws: list[bytes]) -> None:
    fast_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    fast = EdgeMetrics(fast_registry, POP, max_sessions=2, clock=Clock())
    reference = EdgeMetrics(reference_registry, POP, max_sessions=2, clock=Clock())
    for raw in raws:
        fast.handle_line(raw)
        _reference_accounting(reference, raw)
    assert _exposed(fast_registry) == _exposed(reference_registry)


# -- following the file -------------------------------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.invalid: list[str] = []

    def line(self, raw: bytes) -> None:
        self.lines.append(raw)

    def bad(self, reason: str) -> None:
        self.invalid.append(reason)


@pytest.fixture
def got() -> Collected:
    return Collected()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def _tailer(path: Path, got: Collected, **kwargs: Any) -> Iterator[Tailer]:
    tailer = Tailer(path, got.line, got.bad, **kwargs)
    try:
        yield tailer
    finally:
        tailer.close()


@pytest.fixture
def from_start(log_file: Path, got: Collected, clock: Clock) -> Iterator[Tailer]:
    yield from _tailer(log_file, got, from_start=True, clock=clock)


def test_from_start_reads_everything_and_holds_a_partial_line(
        log_file: Path, got: Collected, from_start: Tailer) -> None:
    log_file.write_bytes(b"one\ntwo\nthr")
    from_start.poll()
    assert got.lines == [b"one", b"two"]
    _append(log_file, b"ee")
    assert from_start.poll() == 2
    assert got.lines == [b"one", b"two"]
    _append(log_file, b"\n\nfour\n")
    from_start.poll()
    assert got.lines == [b"one", b"two", b"three", b"", b"four"]
    assert from_start.poll() == 0


def test_from_the_end_skips_what_is_there(log_file: Path, got: Collected) -> None:
    log_file.write_bytes(b"old\nhalf of a li")
    for tailer in _tailer(log_file, got):
        tailer.poll()
        _append(log_file, b"ne\nnew\n")
        tailer.poll()
    assert got.lines == [b"new"]
    assert got.invalid == []


def test_from_the_end_at_a_line_boundary(log_file: Path, got: Collected) -> None:
    log_file.write_bytes(b"old\n")
    for tailer in _tailer(log_file, got):
        tailer.poll()
        _append(log_file, b"new\n")
        tailer.poll()
    assert got.lines == [b"new"]


def test_a_file_that_appears_later_is_read_from_its_start(log_file: Path, got: Collected) -> None:
    for tailer in _tailer(log_file, got):
        assert tailer.poll() == 0
        log_file.write_bytes(b"first\n")
        tailer.poll()
    assert got.lines == [b"first"]


def test_truncation_reads_again_from_the_start(log_file: Path, got: Collected, from_start: Tailer) -> None:
    log_file.write_bytes(b"a long first line\nsecond line\npartial")
    from_start.poll()
    log_file.write_bytes(b"x\n")  # copytruncate: shorter than what was read
    from_start.poll()
    assert got.lines == [b"a long first line", b"second line", b"partial", b"x"]
    _append(log_file, b"y\n")
    from_start.poll()
    assert got.lines[-1] == b"y"


def test_rotation_follows_the_new_file_and_drains_the_old(
        log_file: Path, got: Collected, from_start: Tailer, clock: Clock) -> None:
    log_file.write_bytes(b"1\n")
    from_start.poll()
    rotated = log_file.with_name("access.log.1")
    log_file.rename(rotated)
    _append(rotated, b"2\n")  # the writer still has the old file open
    from_start.poll()
    assert got.lines == [b"1", b"2"]
    log_file.write_bytes(b"3\n")  # the new file
    _append(rotated, b"4\n")  # written before the writer reopened
    from_start.poll()
    _append(log_file, b"5\n")
    _append(rotated, b"6\nunfinished")
    clock.advance(edgelog.ROTATE_WAIT_S)
    from_start.poll()  # the old file is read one last time and closed
    _append(rotated, b"7\n")
    _append(log_file, b"8\n")
    from_start.poll()
    assert sorted(got.lines) == [b"1", b"2", b"3", b"4", b"5", b"6", b"8", b"unfinished"]


def test_rotation_by_delete_and_recreate(log_file: Path, got: Collected, from_start: Tailer) -> None:
    log_file.write_bytes(b"1\n")
    from_start.poll()
    log_file.unlink()
    from_start.poll()
    log_file.write_bytes(b"2\n")
    from_start.poll()
    assert got.lines == [b"1", b"2"]


def test_an_overlong_line_is_dropped_once(log_file: Path, got: Collected) -> None:
    for tailer in _tailer(log_file, got, from_start=True, max_line=10):
        log_file.write_bytes(b"ok\n" + b"x" * 25)
        tailer.poll()
        _append(log_file, b"y" * 30)
        tailer.poll()
        _append(log_file, b"zz\nfine\n")
        tailer.poll()
    assert got.lines == [b"ok", b"fine"]
    assert len(got.invalid) == 1 and "longer than 10 bytes" in got.invalid[0]


def test_a_failing_handler_is_counted_not_fatal(log_file: Path) -> None:
    invalid: list[str] = []

    def handler(raw: bytes) -> None:
        if raw == b"boom":
            raise RuntimeError("boom")

    tailer = Tailer(log_file, handler, invalid.append, from_start=True)
    log_file.write_bytes(b"boom\nfine\n")
    tailer.poll()
    tailer.close()
    assert len(invalid) == 1 and "RuntimeError" in invalid[0]


def test_the_read_budget_splits_a_backlog(log_file: Path, got: Collected) -> None:
    log_file.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    for tailer in _tailer(log_file, got, from_start=True, budget=1000):
        assert tailer.poll() == 1000
        while tailer.poll():
            pass
    assert len(got.lines) == 1000


def test_run_waits_between_polls_and_stops_promptly(log_file: Path, got: Collected) -> None:
    polls = 0

    class Counting(Tailer):
        def poll(self) -> int:
            nonlocal polls
            polls += 1
            return super().poll()

    class Stop(threading.Event):  # the wait between polls, without waiting: the line arrives during the 2nd
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float | None] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            if len(self.waits) == 2:
                log_file.write_bytes(b"hello\n")
            if len(self.waits) == 4:
                self.set()
            return self.is_set()

    tailer = Counting(log_file, got.line, got.bad, poll_interval=0.05)
    stop = Stop()
    tailer.run(stop)
    assert got.lines == [b"hello"]
    assert stop.waits == [0.05] * 4  # one wait of the interval after every poll that caught up: no busy loop
    assert polls == 4  # and none once stopped


# -- command line and HTTP ----------------------------------------------------------------------------


def test_options_take_host_and_port_from_the_environment() -> None:
    opts = edgelog.options(["--log", "a.log", "--pop", "edge-0"], {"OTT_HOST": "0.0.0.0", "OTT_PORT": "9100"})
    assert (opts.host, opts.port, opts.from_start, opts.session_ttl, opts.max_sessions) == (
        "0.0.0.0", 9100, False, 300.0, 1000)
    opts = edgelog.options(["--log", "a.log", "--pop", "edge-0", "--host", "127.0.0.2", "--port", "9200",
                            "--from-start", "--session-ttl", "30", "--max-sessions", "5"], {"OTT_PORT": "9100"})
    assert (opts.host, opts.port, opts.from_start, opts.session_ttl, opts.max_sessions) == (
        "127.0.0.2", 9200, True, 30.0, 5)
    assert edgelog.options(["--log", "a.log", "--pop", "p"], {}).host == "127.0.0.1"


@pytest.mark.parametrize(("argv", "env"), [
    (["--log", "a.log", "--pop", "p"], {"OTT_PORT": "http"}),
    (["--log", "a.log", "--pop", ""], {}),
    (["--log", "a.log", "--pop", "p", "--session-ttl", "0"], {}),
    (["--log", "a.log", "--pop", "p", "--max-sessions", "0"], {}),
    (["--log", "a.log", "--pop", "p", "--port", "70000"], {}),
    (["--pop", "p"], {}),
])
def test_bad_options_are_usage_errors(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        edgelog.options(argv, env)
    assert exit_.value.code == 2


def test_metrics_server(registry: CollectorRegistry, metrics: EdgeMetrics) -> None:
    metrics.handle_line(line())
    server = edgelog.MetricsServer("127.0.0.1", 0, registry)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "alive"})
        scrape = httpx.get(f"{base}/metrics", timeout=5)
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        assert 'ott_edge_requests_total{cache="HIT",object_type="segment",pop="pop-1",status_class="2xx"} 1.0' in (
            scrape.text)
        assert f'ott_edge_cmcd_session_bitrate_kbps{{content="",pop="pop-1",session="{SID}"}} 3200.0' in scrape.text
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_log_read_past_truncate_at_is_emptied_but_never_mid_line(log_file: Path, got: Collected) -> None:
    for tailer in _tailer(log_file, got, from_start=True, truncate_at=10):
        log_file.write_bytes(b"short\n")
        tailer.poll()
        assert log_file.stat().st_size == 6  # under the limit: kept
        _append(log_file, b"a longer line\nhalf")
        tailer.poll()
        assert log_file.stat().st_size > 10  # a line is half written: not now
        _append(log_file, b" done\n")
        tailer.poll()
        assert log_file.stat().st_size == 0
        _append(log_file, b"after\n")  # the writer appends at the new end
        tailer.poll()
    assert got.lines == [b"short", b"a longer line", b"half done", b"after"]


def test_echo_writes_each_accepted_line_to_stdout_whole_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    """On Kubernetes the exporter's stdout is the pod's log, where the kube target reads a PoP's requests."""
    seen: list[bytes] = []

    def handle(raw: bytes) -> bool:
        seen.append(raw)
        return raw.startswith(b"{")

    echo = edgelog.echoed(handle)
    good = line(path="/t/v/360p/seg_00001.m4s").encode()

    assert echo(good) is True
    assert echo(b"not json") is False
    assert seen == [good, b"not json"]
    assert capsys.readouterr().out == good.decode() + "\n"
    assert edgelog.options(["--log", "a.log", "--pop", "edge-0", "--echo"], environ={}).echo is True
    assert edgelog.options(["--log", "a.log", "--pop", "edge-0"], environ={}).echo is False
