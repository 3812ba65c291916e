"""The web player in the system Chromium against the whole platform on loopback.

One lab for the module: every layer up, seeded, a clear and an encrypted title published with the
"small" ladder. Each test signs a demo user in through the page, presses Play and reads what the
page measured (``window.ottPlayer``) and what the QoE collector counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labkit import apis, edge, media, platform, seed, transcoder
from labkit.browser import Browser, BrowserPlay
from labkit.client import OttClient
from labkit.config import LabConfig
from labkit.prometheus import Prometheus
from labkit.targets.local import LocalTarget
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "reports" / "browser"
CI = bool(os.environ.get("CI"))
SAMPLE_S = 6 if CI else 8
WATCH_S = 1.5 if CI else 2.0
CLEAR, ENCRYPTED = "browser-clear", "browser-secret"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("player-browser")
    cfg = LabConfig(home=home / "lab", base_port=30700, ready_timeout=60)
    target = LocalTarget(cfg, platform.components(), platform.layers())
    try:
        target.up()
        seed.seed({s.name: target.endpoint(s.name) for s in apis.SERVICES}, target.service_token())
        publish(target, CLEAR, encrypt=False)
        publish(target, ENCRYPTED, encrypt=True)
        yield target
    finally:
        target.down(purge=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as chromium:
        yield chromium


def publish(lab: LocalTarget, title: str, *, encrypt: bool) -> None:
    sample = lab.cfg.home.parent / "sample.mp4"
    if not sample.exists():
        make_sample(sample, SAMPLE_S, width=1280, height=720)
    transcoder.transcode(lab, sample, title, encrypt=encrypt, ladder="small", preset="ultrafast", tier="free",
                         progress=False, timeout=120)


def play(lab: LocalTarget, browser: Browser, title: str, user: str = "alice", *, pop: str | None = None,
         seconds: float = WATCH_S, screenshot: Path | None = None) -> BrowserPlay:
    run = browser.play(lab.endpoint("gateway"), title, user, pop=pop, seconds=seconds, screenshot=screenshot,
                       timeout=20)
    # However it went, the page ended its stream session: the account has none left open.
    with OttClient(lab.endpoint("gateway")) as client:
        account = seed.demo_user(user)
        client.login(account.email, account.password)
        assert client.sessions() == []
    return run


def collector_counter(lab: LocalTarget, name: str, **labels: str) -> float:
    """A counter of the QoE collector's /metrics, summed over the series matching ``labels``."""
    text = httpx.get(lab.endpoint("qoe") + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def event_types(run: BrowserPlay) -> list[str]:
    return [str(e["type"]) for e in run.events]


@pytest.mark.parametrize("title", [CLEAR, ENCRYPTED])
def test_a_title_starts_and_the_playhead_advances(lab: LocalTarget, browser: Browser, title: str) -> None:
    shot = SCREENSHOTS / f"{title}.png"
    shot.unlink(missing_ok=True)
    run = play(lab, browser, title, seconds=WATCH_S, screenshot=shot)
    assert (run.state, run.failure, run.message) == ("playing", None, ""), run.console
    assert run.startup_s is not None and 0 < run.startup_s < 10
    assert run.played_s >= WATCH_S * 0.9
    types = event_types(run)
    assert types[:2] == ["play", "start"] and types[-1] == "end" and "error" not in types
    start = run.events[1]
    assert start["startup_ms"] == round(run.startup_s * 1000) and start["bitrate_kbps"] > 0
    assert run.events[-1]["reason"] == "exit" and run.events[-1]["started"] is True
    keys = [r for r in run.requests if r.kind == "key"]
    if title == ENCRYPTED:
        assert keys and all(r.status == 200 and r.authorization for r in keys)
    else:
        assert keys == []
    media_requests = [r for r in run.requests if r.kind == "media"]
    assert media_requests and all(r.status == 200 for r in media_requests)
    assert all(r.status == 202 for r in run.requests if r.kind == "beacon")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_startup_reaches_prometheus(lab: LocalTarget, browser: Browser) -> None:
    run = play(lab, browser, CLEAR, seconds=0.5)
    assert run.state == "playing"
    prometheus = Prometheus(lab.endpoint("prometheus"))
    query = f'sum(ott_qoe_startup_seconds_count{{client="browser", title="{CLEAR}"}})'
    deadline = time.monotonic() + 30
    while True:
        frame = prometheus.query(query)
        if not frame.empty and frame["value"].iloc[0] >= 1:
            break
        assert time.monotonic() < deadline, f"no browser startup in Prometheus after 30 s: {frame}"
        time.sleep(1)
    assert collector_counter(lab, "ott_qoe_plays_total", client="browser", title=CLEAR) >= 1


def test_a_user_without_a_plan_sees_why_and_a_start_failure_is_counted(lab: LocalTarget, browser: Browser) -> None:
    before = collector_counter(lab, "ott_qoe_start_failures_total", reason="not_entitled")
    run = play(lab, browser, CLEAR, "dave")
    assert run.state == "failed" and run.startup_s is None
    assert run.failure is not None and run.failure["reason"] == "not_entitled"
    assert "Your plan does not include this title" in run.message
    assert event_types(run) == ["play", "error", "end"] and run.events[1]["fatal"] is True
    assert collector_counter(lab, "ott_qoe_start_failures_total", reason="not_entitled") == before + 1


def test_an_unknown_title_is_named(lab: LocalTarget, browser: Browser) -> None:
    run = play(lab, browser, "no-such-title")
    assert run.state == "failed" and run.failure is not None and run.failure["reason"] == "unknown_title"
    assert "no such title" in run.message and "no-such-title" in run.message


def test_the_stream_limit_is_explained(lab: LocalTarget, browser: Browser) -> None:
    bob = seed.demo_user("bob")
    with OttClient(lab.endpoint("gateway")) as client:
        client.login(bob.email, bob.password)
        sessions = [client.authorize(CLEAR, f"tv-{i}")["session_id"] for i in range(2)]
        try:
            run = browser.play(lab.endpoint("gateway"), CLEAR, "bob", timeout=20)
        finally:
            for session in sessions:
                client.end_session(session)
    assert run.failure is not None and run.failure["reason"] == "stream_limit"
    assert "You are already watching on 2 screens" in run.message


def test_a_missing_segment_stops_playback_cleanly(lab: LocalTarget, browser: Browser) -> None:
    # A title of its own: no PoP has cached its segments, so deleting them on disk is seen.
    publish(lab, "browser-hole", encrypt=False)
    deleted = list(media.media_root(lab.cfg).glob("browser-hole/*/*/seg_00001.m4s"))
    assert len(deleted) == 3
    for segment in deleted:
        segment.unlink()
    run = play(lab, browser, "browser-hole", seconds=SAMPLE_S)
    assert run.started and run.state == "failed"
    assert run.failure is not None and run.failure["reason"] == "segment_not_found"
    assert "missing" in run.message
    fatal = [e for e in run.events if e["type"] == "error" and e["fatal"]]
    assert [e["reason"] for e in fatal] == ["segment_not_found"] and "seg_00001" in fatal[0]["detail"]
    assert run.events[-1]["type"] == "end" and run.events[-1]["reason"] == "error"


def test_a_dead_pop_is_left_for_the_next_one(lab: LocalTarget, browser: Browser) -> None:
    lab.supervisor.stop_program("edge-1")
    try:
        run = play(lab, browser, ENCRYPTED, pop="edge-1", seconds=WATCH_S)
    finally:
        lab.start("edge")
    assert run.state == "playing" and run.started, run.console
    errors = [e for e in run.events if e["type"] == "error"]
    assert [(e["reason"], e["fatal"]) for e in errors] == [("pop_unreachable", False)]
    assert "edge-1" in errors[0]["detail"] and "edge-0" in errors[0]["detail"]
    served = {r.host for r in run.requests if r.kind == "media" and r.status == 200}
    assert served == {httpx.URL(edge.EDGE.url(lab.cfg, "http", 0)).netloc.decode()}
