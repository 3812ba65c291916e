"""The QoE collector (ott.qoe): each beacon event moves its metric; a bad beacon moves only the rejected counter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ott import beacon
from ott.qoe import OTHER, REJECT_REASONS, CappedLabel, QoeMetrics, build_app
from ott.settings import Settings

LABELS = {"title": "big-buck-bunny", "pop": "edge-0", "client": "browser"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(Settings(qoe_max_titles=3, qoe_max_pops=3))) as test_client:
        yield test_client


def report(*events: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"v": 1, "session": "s-1", "title": LABELS["title"], "pop": LABELS["pop"], "client": LABELS["client"],
            "events": list(events), **fields}


def value(collector: TestClient, name: str, /, **labels: str) -> float:
    """A sample of the collector's registry (0 when the series does not exist yet)."""
    registry: CollectorRegistry = collector.app.state.service.registry  # type: ignore[attr-defined]
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def ott_qoe_samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every ott_qoe_* sample but the rejected counter and the _created timestamps."""
    registry: CollectorRegistry = client.app.state.service.registry  # type: ignore[attr-defined]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() if metric.name.startswith("ott_qoe_")
            and metric.name != "ott_qoe_beacons_rejected"
            for s in metric.samples if not s.name.endswith("_created")}


def post(client: TestClient, body: Any, content_type: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/beacons", content=data, headers={"Content-Type": content_type})


# -- every event type moves the right metric -----------------------------------------------------


def test_play_and_start_count_an_attempt_and_observe_the_startup(client: TestClient) -> None:
    answer = post(client, report({"type": "play", "t_ms": 0},
                                 {"type": "start", "t_ms": 1250, "startup_ms": 1250, "bitrate_kbps": 700}))
    assert answer.status_code == 202 and answer.json() == {"accepted": 2}
    assert value(client, "ott_qoe_plays_total", **LABELS) == 1
    assert value(client, "ott_qoe_startup_seconds_count", **LABELS) == 1
    assert value(client, "ott_qoe_startup_seconds_sum", **LABELS) == pytest.approx(1.25)
    assert value(client, "ott_qoe_startup_seconds_bucket", le="1.0", **LABELS) == 0
    assert value(client, "ott_qoe_startup_seconds_bucket", le="1.5", **LABELS) == 1
    assert value(client, "ott_qoe_beacons_total", client="browser") == 1


def test_stalls_progress_and_switches_move_their_counters(client: TestClient) -> None:
    post(client, report({"type": "stall", "t_ms": 9000, "duration_ms": 1500},
                        {"type": "stall", "t_ms": 19000, "duration_ms": 500},
                        {"type": "switch", "t_ms": 20000, "from_kbps": 400, "to_kbps": 1500},
                        {"type": "switch", "t_ms": 21000, "from_kbps": 1500, "to_kbps": 700},
                        {"type": "switch", "t_ms": 22000, "from_kbps": 700, "to_kbps": 400},
                        {"type": "progress", "t_ms": 30000, "played_ms": 10000, "bitrate_kbps": 1500,
                         "dropped_frames": 3},
                        {"type": "progress", "t_ms": 40000, "played_ms": 5000, "bitrate_kbps": 700,
                         "dropped_frames": 0}))
    assert value(client, "ott_qoe_stalls_total", **LABELS) == 2
    assert value(client, "ott_qoe_stalled_seconds_total", **LABELS) == pytest.approx(2.0)
    assert value(client, "ott_qoe_switches_total", direction="up", **LABELS) == 1
    assert value(client, "ott_qoe_switches_total", direction="down", **LABELS) == 2
    played = value(client, "ott_qoe_played_seconds_total", **LABELS)
    kbit = value(client, "ott_qoe_bitrate_kbit_total", **LABELS)
    assert played == pytest.approx(15.0)
    # The time-weighted bitrate: (1500 x 10 + 700 x 5) / 15.
    assert kbit / played == pytest.approx((1500 * 10 + 700 * 5) / 15)
    assert value(client, "ott_qoe_dropped_frames_total", **LABELS) == 3


def test_a_fatal_error_is_a_start_failure_before_the_start_and_a_playback_failure_after(client: TestClient) -> None:
    post(client, report({"type": "play", "t_ms": 0}, {"type": "error", "t_ms": 80, "reason": "not_entitled",
                                                      "fatal": True, "started": False, "detail": "plan basic"},
                        session="before"))
    post(client, report({"type": "start", "t_ms": 900, "startup_ms": 900, "bitrate_kbps": 400}, session="after"))
    post(client, report({"type": "error", "t_ms": 5000, "reason": "segment_not_found", "fatal": True,
                         "started": True}, session="after"))
    post(client, report({"type": "error", "t_ms": 6000, "reason": "network_error", "fatal": False,
                         "started": True}, session="after"))
    assert value(client, "ott_qoe_start_failures_total", reason="not_entitled", **LABELS) == 1
    assert value(client, "ott_qoe_start_failures_total", reason="segment_not_found", **LABELS) == 0
    assert value(client, "ott_qoe_playback_failures_total", reason="segment_not_found", **LABELS) == 1
    assert value(client, "ott_qoe_playback_failures_total", reason="not_entitled", **LABELS) == 0
    assert value(client, "ott_qoe_errors_total", reason="network_error", **LABELS) == 1
    assert value(client, "ott_qoe_beacons_total", client="browser") == 4


def test_the_error_itself_says_whether_its_session_had_started_whichever_replica_gets_it() -> None:
    # Two collector replicas: one sees the start, the other the fatal error of the same session.
    seen_start, seen_error = QoeMetrics(CollectorRegistry()), QoeMetrics(CollectorRegistry())
    seen_start.record(beacon.Beacon.model_validate(
        report({"type": "start", "t_ms": 900, "startup_ms": 900, "bitrate_kbps": 400})))
    for started in (True, False):
        seen_error.record(beacon.Beacon.model_validate(
            report({"type": "error", "t_ms": 5000, "reason": "timeout", "fatal": True, "started": started})))
    series = (*LABELS.values(), "timeout")
    assert seen_error.playback_failures.labels(*series)._value.get() == 1
    assert seen_error.start_failures.labels(*series)._value.get() == 1
    # An error whose session had started, in the same beacon as a start: still only what the error says.
    seen_start.record(beacon.Beacon.model_validate(
        report({"type": "error", "t_ms": 100, "reason": "timeout", "fatal": True, "started": False})))
    assert seen_start.start_failures.labels(*series)._value.get() == 1
    assert seen_start.playback_failures.labels(*series)._value.get() == 0


def test_the_end_of_a_started_session_observes_its_rebuffering_ratio(client: TestClient) -> None:
    post(client, report({"type": "end", "t_ms": 60000, "reason": "ended", "started": True, "played_ms": 57000,
                         "stalled_ms": 3000}))
    assert value(client, "ott_qoe_rebuffering_ratio_count", **LABELS) == 1
    assert value(client, "ott_qoe_rebuffering_ratio_sum", **LABELS) == pytest.approx(0.05)
    assert value(client, "ott_qoe_rebuffering_ratio_bucket", le="0.02", **LABELS) == 0
    assert value(client, "ott_qoe_rebuffering_ratio_bucket", le="0.05", **LABELS) == 1
    assert value(client, "ott_qoe_exits_before_start_total", **LABELS) == 0


def test_an_exit_before_the_start_is_an_ebvs_and_has_no_rebuffering_ratio(client: TestClient) -> None:
    post(client, report({"type": "play", "t_ms": 0}, {"type": "end", "t_ms": 3000, "reason": "exit",
                                                      "started": False, "played_ms": 0, "stalled_ms": 0}))
    assert value(client, "ott_qoe_exits_before_start_total", **LABELS) == 1
    assert value(client, "ott_qoe_rebuffering_ratio_count", **LABELS) == 0


def test_sessions_of_other_clients_are_labelled_apart(client: TestClient) -> None:
    post(client, report({"type": "play", "t_ms": 0}, client="simulator", pop="edge-1"))
    post(client, report({"type": "play", "t_ms": 0}, client="k6", pop="unknown"))
    post(client, report({"type": "play", "t_ms": 0}, client="browser", pop="edge"))
    assert value(client, "ott_qoe_plays_total", title=LABELS["title"], pop="edge-1", client="simulator") == 1
    assert value(client, "ott_qoe_plays_total", title=LABELS["title"], pop="unknown", client="k6") == 1
    assert value(client, "ott_qoe_plays_total", title=LABELS["title"], pop="edge", client="browser") == 1
    assert value(client, "ott_qoe_beacons_total", client="k6") == 1


# -- the body: sendBeacon's text/plain, size ------------------------------------------------------


def test_a_text_plain_body_is_read_as_json(client: TestClient) -> None:
    answer = post(client, report({"type": "play", "t_ms": 0}), "text/plain;charset=UTF-8")
    assert answer.status_code == 202
    assert value(client, "ott_qoe_plays_total", **LABELS) == 1


def test_a_body_over_64_kib_is_refused_counted_and_not_recorded(client: TestClient) -> None:
    padding = "x" * (beacon.MAX_BYTES + 10)
    answer = post(client, report({"type": "play", "t_ms": 0}, pad=padding))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"
    assert value(client, "ott_qoe_beacons_rejected_total", reason="too_large") == 1
    assert value(client, "ott_qoe_plays_total", **LABELS) == 0


def test_the_largest_beacon_fits_under_the_limit(client: TestClient) -> None:
    events = [{"type": "error", "t_ms": beacon.MAX_T_MS, "reason": "segment_not_found", "fatal": False,
               "started": False, "detail": "d" * 200} for _ in range(beacon.MAX_EVENTS)]
    body = json.dumps(report(*events, session="s" * 64)).encode()
    assert len(body) <= beacon.MAX_BYTES
    assert post(client, body).json() == {"accepted": beacon.MAX_EVENTS}


# -- bad beacons: 4xx naming the field, counted, nothing recorded ---------------------------------

PLAY = {"type": "play", "t_ms": 0}
BAD_BEACONS: dict[str, tuple[bytes | dict[str, Any], str, int, str]] = {
    # name: body, rejected reason, status, the field the error names
    "not json": (b'{"v": 1, "events": [', "bad_json", 400, ""),
    "nan": (b'{"v": 1, "session": "s", "title": "t", "pop": "edge-0", "client": "browser", '
            b'"events": [{"type": "play", "t_ms": NaN}]}', "bad_json", 400, ""),
    "version 2": (report(PLAY, v=2), "unsupported_version", 422, ""),
    "unknown field": (report(PLAY, extra=1), "invalid", 422, "extra"),
    "unknown event field": (report({**PLAY, "bitrate_kbps": 1}), "invalid", 422, "events.0.play.bitrate_kbps"),
    "unknown event type": (report({"type": "seek", "t_ms": 0}), "invalid", 422, "events.0"),
    "bad title": (report(PLAY, title="../etc"), "invalid", 422, "title"),
    "bad pop": (report(PLAY, pop="edge-x"), "invalid", 422, "pop"),
    "bad client": (report(PLAY, client="curl"), "invalid", 422, "client"),
    "bad session": (report(PLAY, session="a b"), "invalid", 422, "session"),
    "long session": (report(PLAY, session="s" * 65), "invalid", 422, "session"),
    "no events": (report(), "invalid", 422, "events"),
    "too many events": (report(*[PLAY] * (beacon.MAX_EVENTS + 1)), "invalid", 422, "events"),
    "negative time": (report({"type": "play", "t_ms": -1}), "invalid", 422, "events.0.play.t_ms"),
    "startup too long": (report({"type": "start", "t_ms": 0, "startup_ms": 600_001, "bitrate_kbps": 1}),
                         "invalid", 422, "events.0.start.startup_ms"),
    "number as text": (report({"type": "stall", "t_ms": 0, "duration_ms": "5"}), "invalid", 422,
                       "events.0.stall.duration_ms"),
    "late time": (report({"type": "play", "t_ms": beacon.MAX_T_MS + 1}), "invalid", 422, "events.0.play.t_ms"),
    "unknown reason": (report({"type": "error", "t_ms": 0, "reason": "cosmic_ray", "fatal": True, "started": False}),
                       "invalid", 422, "events.0.error.reason"),
    "long detail": (report({"type": "error", "t_ms": 0, "reason": "other", "fatal": False, "started": True,
                            "detail": "d" * 201}), "invalid", 422, "events.0.error.detail"),
    "error without started": (report({"type": "error", "t_ms": 0, "reason": "other", "fatal": True}), "invalid", 422,
                              "events.0.error.started"),
    "started as number": (report({"type": "error", "t_ms": 0, "reason": "other", "fatal": True, "started": 0}),
                          "invalid", 422, "events.0.error.started"),
    "not a switch": (report({"type": "switch", "t_ms": 0, "from_kbps": 700, "to_kbps": 700}), "invalid", 422,
                     "events.0.switch"),
    "fatal as number": (report({"type": "error", "t_ms": 0, "reason": "other", "fatal": 1, "started": False}),
                        "invalid", 422, "events.0.error.fatal"),
    "fractional frames": (report({"type": "progress", "t_ms": 0, "played_ms": 1, "bitrate_kbps": 1,
                                  "dropped_frames": 1.5}), "invalid", 422, "events.0.progress.dropped_frames"),
    "not an object": ([PLAY], "invalid", 422, "body"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("name", BAD_BEACONS)
def test_a_bad_beacon_is_refused_with_what_was_wrong_and_only_counted(client: TestClient, name: str) -> None:
    body, reason, status, field = BAD_BEACONS[name]
    # The valid events of a bad beacon are not recorded either: a play comes first where it can.
    if isinstance(body, dict) and body.get("events") and body["events"][0] != PLAY and len(body["events"]) < 10:
        body = {**body, "events": [PLAY, *body["events"]]}
        field = field.replace("events.0", "events.1")
    before = ott_qoe_samples(client)
    answer = post(client, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["status"] == status and error["message"]
    if field:
        wheres = [d["where"] for d in error["details"]]
        assert field in wheres, wheres
        assert field in error["message"]
    assert value(client, "ott_qoe_beacons_rejected_total", reason=reason) == 1
    assert sum(value(client, "ott_qoe_beacons_rejected_total", reason=r) for r in REJECT_REASONS) == 1
    assert ott_qoe_samples(client) == before


def test_a_switch_to_the_same_rung_refuses_the_beacon_naming_the_events_index(client: TestClient) -> None:
    events = [PLAY, {"type": "start", "t_ms": 900, "startup_ms": 900, "bitrate_kbps": 700},
              {"type": "switch", "t_ms": 5000, "from_kbps": 700, "to_kbps": 1500},
              {"type": "switch", "t_ms": 9000, "from_kbps": 1500, "to_kbps": 1500}]
    answer = post(client, report(*events))
    assert answer.status_code == 422
    error = answer.json()["error"]
    (detail,) = error["details"]
    assert detail["where"] == "events.3.switch" and "must differ" in detail["problem"]
    assert "events.3.switch" in error["message"]
    assert value(client, "ott_qoe_plays_total", **LABELS) == 0


def test_an_error_says_what_is_allowed(client: TestClient) -> None:
    error = post(client, report(PLAY, pop="paris")).json()["error"]
    (detail,) = error["details"]
    assert detail["where"] == "pop" and beacon.POP_PATTERN in detail["allowed"]
    error = post(client, report({"type": "stall", "t_ms": 0, "duration_ms": 4_000_000})).json()["error"]
    assert "3600000" in error["details"][0]["allowed"]


def test_another_content_type_is_refused_as_invalid(client: TestClient) -> None:
    answer = post(client, report(PLAY), "application/x-www-form-urlencoded")
    assert answer.status_code == 415
    assert value(client, "ott_qoe_beacons_rejected_total", reason="invalid") == 1
    assert value(client, "ott_qoe_plays_total", **LABELS) == 0


# -- bounded labels ------------------------------------------------------------------------------


def test_titles_past_the_cap_are_recorded_as_other(client: TestClient) -> None:
    titles = [f"title-{i}" for i in range(5)]
    for title in titles:
        post(client, report(PLAY, title=title))
    post(client, report(PLAY, title="title-0"))  # a known title keeps its label
    plays = {t: value(client, "ott_qoe_plays_total", title=t, pop="edge-0", client="browser")
             for t in [*titles, OTHER]}
    assert plays == {"title-0": 2, "title-1": 1, "title-2": 1, "title-3": 0, "title-4": 0, OTHER: 2}


def test_pops_past_the_cap_are_recorded_as_other(client: TestClient) -> None:
    # edge-0 .. edge-999 all match the pattern: without a cap, one anonymous client could make 1000 series.
    pops = [f"edge-{i}" for i in range(6)]
    for pop in pops:
        post(client, report(PLAY, pop=pop))
    post(client, report(PLAY, pop="edge-1"))  # a known PoP keeps its label
    plays = {p: value(client, "ott_qoe_plays_total", title=LABELS["title"], pop=p, client="browser")
             for p in [*pops, OTHER]}
    assert plays == {"edge-0": 1, "edge-1": 2, "edge-2": 1, "edge-3": 0, "edge-4": 0, "edge-5": 0, OTHER: 3}
    assert value(client, "ott_qoe_beacons_total", client="browser") == 7


def test_the_label_caps_are_ott_settings() -> None:
    defaults = Settings()
    assert (defaults.qoe_max_titles, defaults.qoe_max_pops) == (50, 20)
    settings = Settings.from_env({"OTT_QOE_MAX_TITLES": "7", "OTT_QOE_MAX_POPS": "4"})
    assert (settings.qoe_max_titles, settings.qoe_max_pops) == (7, 4)
    metrics = QoeMetrics(CollectorRegistry(), max_titles=settings.qoe_max_titles, max_pops=settings.qoe_max_pops)
    assert (metrics.title.limit, metrics.pop.limit) == (7, 4)
    with pytest.raises(ValueError, match="pop labels must be at least 1"):
        QoeMetrics(CollectorRegistry(), max_pops=0)
    with pytest.raises(ValueError, match="title labels must be at least 1"):
        build_app(Settings(qoe_max_titles=0))


def test_a_capped_label_keeps_the_first_values() -> None:
    label = CappedLabel("pop", 2)
    assert [label(v) for v in ("a", "b", "c", "a", "b", "d")] == ["a", "b", OTHER, "a", "b", OTHER]


def test_the_collector_is_ready_and_exposes_its_metrics(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    text = client.get("/metrics").text
    # The rejected reasons and the clients exist from the start: a rate over them is never "no data".
    assert 'ott_qoe_beacons_rejected_total{reason="too_large"} 0.0' in text
    assert 'ott_qoe_beacons_total{client="k6"} 0.0' in text
    post(client, report(PLAY))
    text = client.get("/metrics").text
    assert 'ott_qoe_plays_total{client="browser",pop="edge-0",title="big-buck-bunny"} 1.0' in text
    assert 'ott_http_requests_total{method="POST",route="/beacons",service="qoe",status="202"} 1.0' in text
