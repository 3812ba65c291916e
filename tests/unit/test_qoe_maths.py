"""QoE maths on synthetic frames shaped like the simulator's, the browser's beacons and the edge's log."""

from __future__ import annotations

import doctest
import math
from typing import Any

import pandas as pd
import pytest

from labkit.analysis import experience
from ott import cmcd


def test_doctests() -> None:
    result = doctest.testmod(experience)
    assert result.attempted >= 8 and result.failed == 0


def _events(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=experience.EVENT_COLUMNS)


@pytest.fixture
def events() -> pd.DataFrame:
    """Four viewers: a smooth one, one that stalls and switches, a start failure and an exit before start."""
    return _events([
        # viewer 0: starts in 0.8 s at 1500k, plays 20 s at 1500k, ends.
        {"viewer": 0, "session": "a", "t_s": 0.0, "type": "play"},
        {"viewer": 0, "session": "a", "t_s": 0.8, "type": "start", "startup_s": 0.8, "bitrate_kbps": 1500},
        {"viewer": 0, "session": "a", "t_s": 10.8, "type": "progress", "played_s": 10.0, "bitrate_kbps": 1500},
        {"viewer": 0, "session": "a", "t_s": 20.8, "type": "progress", "played_s": 10.0, "bitrate_kbps": 1500},
        {"viewer": 0, "session": "a", "t_s": 20.9, "type": "end", "reason": "ended", "started": True,
         "played_s": 20.0, "stalled_s": 0.0},
        # viewer 1: starts in 2 s at 700k, one 2 s stall, switches down then up, 10 s at 700k and 30 s at 400k.
        {"viewer": 1, "session": "b", "t_s": 0.0, "type": "play"},
        {"viewer": 1, "session": "b", "t_s": 2.0, "type": "start", "startup_s": 2.0, "bitrate_kbps": 700},
        {"viewer": 1, "session": "b", "t_s": 12.0, "type": "progress", "played_s": 10.0, "bitrate_kbps": 700},
        {"viewer": 1, "session": "b", "t_s": 12.5, "type": "switch", "from_kbps": 700, "to_kbps": 400},
        {"viewer": 1, "session": "b", "t_s": 16.0, "type": "stall", "duration_s": 2.0},
        {"viewer": 1, "session": "b", "t_s": 44.0, "type": "progress", "played_s": 30.0, "bitrate_kbps": 400},
        {"viewer": 1, "session": "b", "t_s": 44.5, "type": "switch", "from_kbps": 400, "to_kbps": 700},
        {"viewer": 1, "session": "b", "t_s": 45.0, "type": "end", "reason": "ended", "started": True,
         "played_s": 40.0, "stalled_s": 2.0},
        # viewer 2: denied (fatal before start: a video start failure).
        {"viewer": 2, "session": "c", "t_s": 0.0, "type": "play"},
        {"viewer": 2, "session": "c", "t_s": 0.1, "type": "error", "reason": "not_entitled", "fatal": True},
        {"viewer": 2, "session": "c", "t_s": 0.1, "type": "end", "reason": "error", "started": False,
         "played_s": 0.0, "stalled_s": 0.0},
        # viewer 3: gives up before the first frame (an exit before video start).
        {"viewer": 3, "session": "d", "t_s": 0.0, "type": "play"},
        {"viewer": 3, "session": "d", "t_s": 3.0, "type": "end", "reason": "exit", "started": False,
         "played_s": 0.0, "stalled_s": 0.0},
    ])


def test_sessions_reduce_events_to_one_row_each(events: pd.DataFrame) -> None:
    frame = experience.sessions(events).set_index("session")
    assert list(experience.sessions(events).columns) == experience.SESSION_COLUMNS
    assert list(frame.index) == ["a", "b", "c", "d"]
    assert list(frame["started"]) == [True, True, False, False]
    assert frame.loc["a", "startup_s"] == 0.8 and frame.loc["b", "startup_s"] == 2.0
    assert math.isnan(frame.loc["c", "startup_s"])
    assert list(frame["stalls"]) == [0, 1, 0, 0] and list(frame["switches"]) == [0, 2, 0, 0]
    assert frame.loc["b", "stalled_s"] == 2.0 and frame.loc["b", "played_s"] == 40.0
    assert frame.loc["b", "rebuffering_ratio"] == pytest.approx(2 / 42)
    assert frame.loc["a", "rebuffering_ratio"] == 0 and math.isnan(frame.loc["c", "rebuffering_ratio"])
    # Time-weighted: 10 s at 700 and 30 s at 400 -> 475, not the mean of the two rungs (550).
    assert frame.loc["b", "bitrate_kbps"] == pytest.approx(475)
    assert frame.loc["a", "bitrate_kbps"] == 1500
    assert list(frame["failure"]) == ["", "", "not_entitled", ""]
    assert list(frame["exit"]) == ["ended", "ended", "error", "exit"]


def test_sessions_without_an_end_use_the_sums_of_their_events() -> None:
    frame = experience.sessions(_events([
        {"viewer": 0, "session": "x", "t_s": 0.0, "type": "play"},
        {"viewer": 0, "session": "x", "t_s": 1.0, "type": "start", "startup_s": 1.0, "bitrate_kbps": 700},
        {"viewer": 0, "session": "x", "t_s": 5.0, "type": "stall", "duration_s": 0.5},
        {"viewer": 0, "session": "x", "t_s": 11.5, "type": "progress", "played_s": 10.0, "bitrate_kbps": 700},
        {"viewer": 0, "session": "x", "t_s": 12.0, "type": "stall", "duration_s": 1.5},
        {"viewer": 0, "session": "x", "t_s": 13.0, "type": "error", "reason": "segment_not_found", "fatal": True},
    ]))
    row = frame.iloc[0]
    assert (row["played_s"], row["stalled_s"], row["stalls"]) == (10.0, 2.0, 2)
    assert row["rebuffering_ratio"] == pytest.approx(2 / 12)
    assert (row["failure"], row["exit"]) == ("segment_not_found", "")


def test_a_session_started_without_progress_reports_the_start_rung() -> None:
    frame = experience.sessions(_events([
        {"viewer": 0, "session": "y", "t_s": 0.0, "type": "play"},
        {"viewer": 0, "session": "y", "t_s": 1.2, "type": "start", "startup_s": 1.2, "bitrate_kbps": 400},
    ]))
    assert frame.iloc[0]["bitrate_kbps"] == 400 and frame.iloc[0]["played_s"] == 0
    assert experience.sessions(pd.DataFrame(columns=experience.EVENT_COLUMNS)).empty


def test_summary_gives_the_audience_figures(events: pd.DataFrame) -> None:
    figures = experience.summary(experience.sessions(events))
    assert (figures["attempts"], figures["started"]) == (4, 2)
    assert figures["startup_p50_s"] == pytest.approx(1.4)             # between 0.8 and 2.0
    assert figures["startup_p95_s"] == pytest.approx(0.8 + 0.95 * 1.2)
    assert figures["rebuffering_ratio"] == pytest.approx(2 / 62)      # all stalled / (stalled + played)
    assert figures["bitrate_kbps"] == pytest.approx((20 * 1500 + 10 * 700 + 30 * 400) / 60)
    assert figures["switches_per_minute"] == pytest.approx(2.0)       # two switches in a minute of play
    assert figures["stalls"] == 1 and figures["stalls_per_minute"] == pytest.approx(1.0)
    assert (figures["video_start_failures"], figures["video_start_failure_rate"]) == (1, 0.25)
    assert (figures["exits_before_start"], figures["exit_before_start_rate"]) == (1, 0.25)
    assert (figures["playback_failures"], figures["playback_failure_rate"]) == (0, 0.0)


def test_a_fatal_error_after_start_is_a_playback_failure(events: pd.DataFrame) -> None:
    failing = pd.concat([events, _events([
        {"viewer": 4, "session": "e", "t_s": 0.0, "type": "play"},
        {"viewer": 4, "session": "e", "t_s": 1.0, "type": "start", "startup_s": 1.0, "bitrate_kbps": 700},
        {"viewer": 4, "session": "e", "t_s": 9.0, "type": "error", "reason": "media_error", "fatal": True},
        {"viewer": 4, "session": "e", "t_s": 9.0, "type": "error", "reason": "network_error", "fatal": False},
    ])])
    figures = experience.summary(experience.sessions(failing))
    assert (figures["playback_failures"], figures["video_start_failures"]) == (1, 1)
    assert figures["playback_failure_rate"] == pytest.approx(1 / 3)


def test_summary_of_the_simulators_sessions_frame_and_of_nobody() -> None:
    frame = pd.DataFrame([
        {"viewer": 0, "session": "s0", "started": True, "startup_s": 0.5, "stalls": 0, "stalled_s": 0.0,
         "played_s": 30.0, "rebuffering_ratio": 0.0, "bitrate_kbps": 1500.0, "switches": 1, "failure": "",
         "exit": "ended"},
        {"viewer": 1, "session": "s1", "started": True, "startup_s": 1.5, "stalls": 2, "stalled_s": 3.0,
         "played_s": 27.0, "rebuffering_ratio": 0.1, "bitrate_kbps": 400.0, "switches": 3, "failure": "",
         "exit": "ended"},
    ], columns=experience.SESSION_COLUMNS)
    figures = experience.summary(frame)
    assert figures["rebuffering_ratio"] == pytest.approx(3 / 60)
    assert figures["bitrate_kbps"] == pytest.approx((30 * 1500 + 27 * 400) / 57)
    assert figures["switches_per_minute"] == pytest.approx(4 / (57 / 60))
    empty = experience.summary(pd.DataFrame(columns=experience.SESSION_COLUMNS))
    assert (empty["attempts"], empty["started"], empty["rebuffering_ratio"]) == (0, 0, 0.0)
    assert math.isnan(empty["startup_p50_s"]) and math.isnan(empty["bitrate_kbps"])


def test_mismatches_between_two_accounts_of_the_same_sessions(events: pd.DataFrame) -> None:
    kept = experience.sessions(events).assign(pop="edge-0")   # the simulator's frame carries more columns
    assert experience.mismatches(kept, experience.sessions(events)).empty
    drift = kept.assign(startup_s=kept["startup_s"] + 0.005, bitrate_kbps=kept["bitrate_kbps"] * 1.005)
    assert experience.mismatches(kept, drift).empty                   # within a rounding
    other = experience.sessions(events)
    other.loc[other["session"] == "b", ["stalls", "played_s"]] = [2, 39.0]
    other.loc[other["session"] == "a", "bitrate_kbps"] = 1400.0
    other.loc[other["session"] == "c", "failure"] = ""
    other.loc[other["session"] == "d", "startup_s"] = 1.0      # NaN against a number
    table = experience.mismatches(kept, other)
    assert dict(zip(table["session"], table["differs"], strict=True)) == {
        "a": "bitrate_kbps", "b": "stalls played_s", "c": "failure", "d": "startup_s"}
    differs = experience.mismatches(kept, other[other["session"] != "c"]).set_index("session")
    assert differs.loc["c", "differs"] == "session"
    assert {"stalls_expected", "stalls_actual"} <= set(table.columns)


def test_beacon_events_become_an_events_frame_in_seconds() -> None:
    beacons = [
        {"type": "play", "t_ms": 0},
        {"type": "start", "t_ms": 1250, "startup_ms": 1250, "bitrate_kbps": 700},
        {"type": "progress", "t_ms": 11250, "played_ms": 10000, "bitrate_kbps": 700, "dropped_frames": 2},
        {"type": "end", "t_ms": 11300, "reason": "exit", "started": True, "played_ms": 10000, "stalled_ms": 0},
    ]
    frame = experience.beacon_events(beacons, session="lic-1", viewer="browser")
    assert list(frame.columns[: len(experience.EVENT_COLUMNS)]) == experience.EVENT_COLUMNS
    assert list(frame["t_s"]) == [0.0, 1.25, 11.25, 11.3] and frame["dropped_frames"].iloc[2] == 2
    row = experience.sessions(frame).iloc[0]
    assert (row["viewer"], row["session"], row["startup_s"], row["played_s"]) == ("browser", "lic-1", 1.25, 10.0)
    assert (row["bitrate_kbps"], row["exit"], row["started"]) == (700, "exit", True)


def test_rung_shares_per_row_or_weighted_and_by_group() -> None:
    timeline = pd.DataFrame({"bitrate_kbps": [1500, 1500, 700, 400, 400, 400],
                             "run": ["free", "free", "free", "throttled", "throttled", "throttled"]})
    assert experience.rung_shares(timeline).to_dict() == pytest.approx({400: 0.5, 700: 1 / 6, 1500: 1 / 3})
    weighted = experience.rung_shares(timeline.assign(seconds=[4, 4, 2, 4, 4, 2]))
    assert weighted.to_dict() == pytest.approx({400: 0.5, 700: 0.1, 1500: 0.4})
    table = experience.rung_shares(timeline, by="run")
    assert list(table.index) == [400, 700, 1500] and list(table.columns) == ["free", "throttled"]
    assert table["free"].tolist() == pytest.approx([0, 1 / 3, 2 / 3]) and table["throttled"].tolist() == [1, 0, 0]


# -- the edge's view --------------------------------------------------------------------------------


def _log(sid: str, start: float, seconds: float, *, path: str, status: int = 200, **keys: Any) -> dict[str, Any]:
    data = cmcd.Cmcd(sid=sid, cid="lab-clock-qoe", sf="h", st="v", **keys)
    return {"msec": start + seconds, "request_time": seconds, "pop": "edge-0", "path": path, "status": status,
            "bytes": 1000, "cache": "HIT", "cmcd": cmcd.to_query(data), "cmcd_request": "", "cmcd_object": "",
            "cmcd_status": "", "cmcd_session": ""}


@pytest.fixture
def access_log() -> list[dict[str, Any]]:
    t = 1_800_000_000.0
    return [
        # s1: manifest at t, playlist, init, first segment (su) ends at t + 0.6, then 700k then 400k segments.
        _log("s1", t, 0.01, path="/t/v/master.m3u8", ot="m", su=True),
        _log("s1", t + 0.05, 0.01, path="/t/v/480p/index.m3u8", ot="m", su=True),
        _log("s1", t + 0.1, 0.02, path="/t/v/480p/init.mp4", ot="i", br=700, su=True),
        _log("s1", t + 0.2, 0.4, path="/t/v/480p/seg_00000.m4s", ot="av", br=700, d=4000, su=True),
        _log("s1", t + 0.7, 0.4, path="/t/v/480p/seg_00001.m4s", ot="av", br=700, d=4000, bl=3500, su=True),
        _log("s1", t + 4.0, 0.4, path="/t/v/360p/seg_00002.m4s", ot="av", br=400, d=4000, bl=3000),
        _log("s1", t + 9.0, 0.4, path="/t/v/360p/seg_00003.m4s", ot="av", br=400, d=2000, bl=0, bs=True, su=True),
        # s2: a denied segment (403) before a good one; its startup counts to the good one.
        _log("s2", t + 1.0, 0.01, path="/t/v/master.m3u8", ot="m", su=True),
        _log("s2", t + 1.1, 0.01, path="/t/v/720p/seg_00000.m4s", ot="av", br=1500, d=4000, su=True, status=403),
        _log("s2", t + 1.3, 0.2, path="/t/v/720p/seg_00000.m4s", ot="av", br=1500, d=4000, su=True),
        # Not CMCD at all, and a request without CMCD: kept as requests, in no session.
        {**_log("s3", t, 0.01, path="/t/v/master.m3u8"), "cmcd": "%22garbage"},
        {**_log("s4", t, 0.01, path="/t/v/master.m3u8"), "cmcd": ""},
    ]


def test_edge_requests_read_cmcd_from_the_access_log(access_log: list[dict[str, Any]]) -> None:
    requests = experience.edge_requests(access_log)
    assert list(requests.columns) == experience.EDGE_REQUEST_COLUMNS and len(requests) == len(access_log)
    first = requests.iloc[0]
    assert (first["sid"], first["cid"], first["ot"], bool(first["su"])) == ("s1", "lab-clock-qoe", "m", True)
    assert first["ended"] - first["started"] == pytest.approx(0.01)
    assert requests.iloc[6]["bs"] and requests.iloc[6]["br"] == 400 and requests.iloc[6]["d"] == 2000
    assert pd.isna(requests.iloc[10]["sid"]) and "CMCD" in requests.iloc[10]["cmcd_error"]
    assert pd.isna(requests.iloc[11]["sid"]) and requests.iloc[11]["cmcd_error"] == ""


def test_cmcd_headers_count_as_much_as_the_query_argument(access_log: list[dict[str, Any]]) -> None:
    record = {**access_log[3], "cmcd": "", "cmcd_session": 'sid="h1"', "cmcd_object": "br=700,d=4000,ot=v",
              "cmcd_request": "su"}
    row = experience.edge_requests([record]).iloc[0]
    assert (row["sid"], row["ot"], row["br"], row["d"], bool(row["su"])) == ("h1", "v", 700, 4000, True)


def test_edge_sessions_estimate_startup_rebuffers_and_bitrate(access_log: list[dict[str, Any]]) -> None:
    edge = experience.edge_sessions(experience.edge_requests(access_log)).set_index("session")
    assert list(edge.index) == ["s1", "s2"]
    # First manifest request at t to the end of the first media request with su (t + 0.6).
    assert edge.loc["s1", "startup_s"] == pytest.approx(0.6)
    assert edge.loc["s2", "startup_s"] == pytest.approx(0.5)   # the 403 is not media the player got
    assert edge.loc["s1", "rebuffers"] == 1 and edge.loc["s2", "rebuffers"] == 0
    # br weighted by d: (700 * 8 s + 400 * 4 s + 400 * 2 s) / 14 s.
    assert edge.loc["s1", "bitrate_kbps"] == pytest.approx((700 * 8 + 400 * 6) / 14)
    assert edge.loc["s1", "media_s"] == 14 and edge.loc["s2", "errors"] == 1
    assert (edge.loc["s1", "pop"], edge.loc["s1", "content"], edge.loc["s1", "requests"]) == (
        "edge-0", "lab-clock-qoe", 7)


def test_the_simulators_requests_read_like_the_edge_log(access_log: list[dict[str, Any]]) -> None:
    """Audience.requests: started (epoch s), seconds and the decoded payload give the same sessions."""
    logged = experience.edge_requests(access_log[:10])
    own = pd.DataFrame({
        "viewer": 0, "session": logged["sid"], "kind": "segment", "pop": logged["pop"], "path": logged["path"],
        "status": logged["status"], "started": pd.to_datetime(logged["started"], unit="s", utc=True),
        "seconds": logged["ended"] - logged["started"],
        "cmcd": [cmcd.format(cmcd.from_request(r["cmcd"], {}) or cmcd.Cmcd()) for r in access_log[:10]],
    })
    from_own = experience.edge_sessions(experience.cmcd_requests(own))
    from_log = experience.edge_sessions(logged)
    pd.testing.assert_frame_equal(from_own, from_log, check_exact=False, atol=1e-6)


def _player(rows: list[tuple[str, float, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"session": s, "startup_s": startup, "stalls": stalls, "bitrate_kbps": bitrate}
                         for s, startup, stalls, bitrate in rows])


def test_compare_joins_the_sessions_both_know_and_flags_disagreements(access_log: list[dict[str, Any]]) -> None:
    edge = experience.edge_sessions(experience.edge_requests(access_log))
    player = _player([("s1", 0.75, 1, 600.0), ("s2", 1.4, 0, 1500.0), ("other", 1.0, 0, 700.0)])
    table = experience.compare(player, edge)
    assert list(table["session"]) == ["s1", "s2"]
    s1 = table.set_index("session").loc["s1"]
    assert s1["startup_gap_s"] == pytest.approx(0.15) and s1["stalls_player"] == s1["rebuffers_edge"] == 1
    assert s1["bitrate_ratio"] == pytest.approx((700 * 8 + 400 * 6) / 14 / 600)
    # s2's player startup is 0.9 s more than the edge saw: beyond 0.5 s.
    assert list(experience.disagreements(table, startup_s=0.5, bitrate_ratio=0.1)["session"]) == ["s2"]
    assert experience.disagreements(table, startup_s=1.0, bitrate_ratio=0.1).empty
    assert list(experience.disagreements(table, startup_s=1.0, bitrate_ratio=0.01)["session"]) == ["s1"]


# -- the collector's view ---------------------------------------------------------------------------


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {0.25: 2.0, 0.5: 6.0, 1.0: 10.0, 2.5: 10.0, math.inf: 10.0}
    assert experience.histogram_quantile(0.5, buckets) == pytest.approx(0.25 + 0.25 * (5 - 2) / 4)
    assert experience.histogram_quantile(0.1, buckets) == pytest.approx(0.125)   # the first bucket starts at 0
    assert experience.histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (9.5 - 6) / 4)
    assert experience.histogram_quantile(0.99, {1.0: 1.0, math.inf: 5.0}) == 1.0   # in +Inf: the highest bound
    assert math.isnan(experience.histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}))
    assert math.isnan(experience.histogram_quantile(0.5, {1.0: 3.0}))              # no +Inf bucket
    assert experience.histogram_quantile(-0.1, buckets) == -math.inf
    assert experience.histogram_quantile(1.1, buckets) == math.inf


def test_within_buckets_allows_the_histograms_resolution() -> None:
    bounds = [0.1, 0.25, 0.5, 1.0, math.inf]
    assert experience.within_buckets(0.3, 0.45, bounds, neighbours=0)        # both in (0.25, 0.5]
    assert not experience.within_buckets(0.3, 0.55, bounds, neighbours=0)
    assert experience.within_buckets(0.3, 0.55, bounds)                       # the next bucket
    assert not experience.within_buckets(0.05, 0.55, bounds)                  # two buckets apart
    assert experience.within_buckets(1.0, 7.0, bounds)                        # 7 s is in +Inf, next to (0.5, 1]
    assert not experience.within_buckets(math.nan, 0.3, bounds)
    # histogram_quantile's answer at the top of a bucket, as floating point computes it, is in that bucket.
    top = experience.histogram_quantile(0.5, {0.1: 12, 0.25: 12, 1.0: 24, math.inf: 24})
    assert top != 0.1 and top == pytest.approx(0.1) and experience.within_buckets(top, 0.02, bounds, neighbours=0)


class _FakePrometheus:
    """Answers the instant queries collector_totals makes from a table of totals."""

    def __init__(self, counters: dict[str, float], buckets: dict[str, float]) -> None:
        self.counters, self.buckets, self.queries = counters, buckets, []

    def query(self, promql: str) -> pd.DataFrame:
        self.queries.append(promql)
        if promql.startswith("sum by (le)"):
            return pd.DataFrame({"le": list(self.buckets), "value": list(self.buckets.values())})
        metric = promql.removeprefix("sum(").split("{")[0]
        if metric not in self.counters:
            return pd.DataFrame(columns=["timestamp", "value"])
        return pd.DataFrame({"value": [self.counters[metric]]})


def test_collector_totals_before_and_after_give_the_runs_qoe() -> None:
    before = _FakePrometheus({"ott_qoe_plays_total": 5, "ott_qoe_played_seconds_total": 100,
                              "ott_qoe_bitrate_kbit_total": 100 * 1500},
                             {"0.5": 1, "1": 5, "2": 5, "+Inf": 5})
    after = _FakePrometheus({"ott_qoe_plays_total": 15, "ott_qoe_played_seconds_total": 400,
                             "ott_qoe_stalled_seconds_total": 3, "ott_qoe_stalls_total": 2,
                             "ott_qoe_bitrate_kbit_total": 100 * 1500 + 300 * 700, "ott_qoe_switches_total": 5,
                             "ott_qoe_startup_seconds_count": 10},
                            {"0.5": 3, "1": 13, "2": 15, "+Inf": 15})
    first = experience.collector_totals(before, title="t", client="simulator")   # type: ignore[arg-type]
    second = experience.collector_totals(after, title="t", client="simulator")   # type: ignore[arg-type]
    assert all('{title="t",client="simulator"}' in q for q in after.queries)
    figures = experience.collector_qoe(second - first)
    assert (figures["plays"], figures["started"], figures["stalls"]) == (10, 10, 2)
    assert figures["bitrate_kbps"] == pytest.approx(700)          # only the run's 300 s at 700 kbit/s
    assert figures["rebuffering_ratio"] == pytest.approx(3 / 303)
    assert figures["switches_per_minute"] == pytest.approx(1.0)
    # The run's buckets: 2 up to 0.5 s, 6 more up to 1 s, 2 more up to 2 s.
    assert figures["startup_p50_s"] == pytest.approx(0.5 + 0.5 * (5 - 2) / 6)
    assert figures["startup_p95_s"] == pytest.approx(1 + (9.5 - 8) / 2)
    nothing = experience.collector_qoe(second - second)
    assert math.isnan(nothing["bitrate_kbps"]) and math.isnan(nothing["startup_p50_s"])


def test_promql_names_the_collectors_series() -> None:
    queries = experience.promql(experience.selector(title="t"), "2m")
    assert queries["startup_p95_s"] == (
        'histogram_quantile(0.95, sum by (le)(increase(ott_qoe_startup_seconds_bucket{title="t"}[2m])))')
    assert "ott_qoe_stalled_seconds_total" in queries["rebuffering_ratio"]
    assert "ott_qoe_played_seconds_total" in queries["rebuffering_ratio"]
