"""The web player in the system Chromium against the whole platform on loopback.

One lab for the module: every layer up, seeded, a clear and an encrypted title published with the
"small" ladder. Each test signs a demo user in through the page, presses Play and reads what the
page measured (``window.ottPlayer``) and what the QoE collector counted.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _labs import running_lab
from prometheus_client.parser import text_string_to_metric_families

from labkit.clients import seed, transcoding
from labkit.clients.api import OttClient, service_client
from labkit.clients.prometheus import Prometheus
from labkit.core.wait import until
from labkit.platform.layers import cdn, media
from labkit.targets.local.target import LocalTarget
from labkit.traffic.browser import Browser, BrowserPlay, Network
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "reports" / "browser"
CI = bool(os.environ.get("CI"))
SAMPLE_S = 6 if CI else 8
WATCH_S = 1.5 if CI else 2.0
CLEAR, ENCRYPTED = "browser-clear", "browser-secret"
# The playhead past the middle of the second (last) segment: it was fetched and is playing.
INTO_SECOND_SEGMENT = "document.querySelector('#video').currentTime > 5"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("player-browser"), 30700, seeded=True) as target:
        publish(target, CLEAR, encrypt=False)
        publish(target, ENCRYPTED, encrypt=True)
        yield target


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as chromium:
        yield chromium


def publish(lab: LocalTarget, title: str, *, encrypt: bool) -> None:
    sample = lab.cfg.home.parent / "sample.mp4"
    if not sample.exists():
        make_sample(sample, SAMPLE_S, width=1280, height=720)
    transcoding.transcode(lab, sample, title, encrypt=encrypt, ladder="small", preset="ultrafast", tier="free",
                         progress=False, timeout=120)


def play(lab: LocalTarget, browser: Browser, title: str, user: str = "alice", *, pop: str | None = None,
         seconds: float = WATCH_S, screenshot: Path | None = None, timeout: float = 20, **watch: Any) -> BrowserPlay:
    run = browser.play(lab.endpoint("gateway"), title, user, pop=pop, seconds=seconds, screenshot=screenshot,
                       timeout=timeout, **watch)
    # However it went, the page ended its stream session: the account has none left open (a closed
    # page's keepalive request may land a moment after the page is gone).
    with OttClient(lab.endpoint("gateway")) as client:
        account = seed.demo_user(user)
        client.login(account.email, account.password)
        until(lambda: client.sessions() == [], 5, 0.2, lambda: f"{user}'s stream sessions to end: {client.sessions()}")
    return run


def collector_counter(lab: LocalTarget, name: str, **labels: str) -> float:
    """A counter of the QoE collector's /metrics, summed over the series matching ``labels``."""
    text = httpx.get(lab.endpoint("qoe", lab.component("qoe").metrics_port) + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def wait_for_counter(lab: LocalTarget, name: str, at_least: float, **labels: str) -> float:
    """The collector's counter once it reached ``at_least`` (a beacon sent as a page closes lands later)."""
    value = 0.0

    def reached() -> bool:
        nonlocal value
        value = collector_counter(lab, name, **labels)
        return value >= at_least

    until(reached, 10, 0.2, lambda: f"{name}{labels} to reach {at_least} (still {value})")
    return value


def event_types(run: BrowserPlay) -> list[str]:
    return [str(e["type"]) for e in run.events]


@contextlib.contextmanager
def service_env(lab: LocalTarget, service: str, **env: str) -> Iterator[None]:
    """``service`` restarted with ``env`` added (``OTT_SIGNED_URL_TTL="2"``), then restored as declared:
    the supported way, ``ottlab env``."""
    assert lab.set_env(service, env) == env
    try:
        yield
    finally:
        assert lab.set_env(service, dict.fromkeys(env)) == {}


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
    until(lambda: not (frame := prometheus.query(query)).empty and frame["value"].iloc[0] >= 1, 30, 1,
          "a browser startup in Prometheus")
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
    assert served == {httpx.URL(cdn.EDGE.url(lab.cfg, "http", 0)).netloc.decode()}


def test_an_expired_link_is_renewed_once_and_playback_resumes(lab: LocalTarget, browser: Browser) -> None:
    """A real expiry: license signs URLs for 2 s (valid 2-3 s, nginx's secure_link counts whole seconds).

    The first segment is fetched at once, the second (buffer_s=0.5) when the playhead reaches 3.5 s:
    after the link expired. The page re-authorizes once and resumes where it was.
    """
    before = collector_counter(lab, "ott_qoe_errors_total", reason="token_expired")
    with service_env(lab, "license", OTT_SIGNED_URL_TTL="2"):
        run = play(lab, browser, CLEAR, seconds=SAMPLE_S, buffer_s=0.5,
                   until=f"p.events.some(e => e.type === 'stall') && {INTO_SECOND_SEGMENT}")
    assert run.state in ("playing", "ended") and run.failure is None and run.message == "", run.console
    errors = [e for e in run.events if e["type"] == "error"]
    assert [(e["reason"], e["fatal"]) for e in errors] == [("token_expired", False)]
    assert [e for e in run.beacons if e["type"] == "error"] == errors
    # The edge refused the expired link (410; a browser that cannot read the refusal sees no status) ...
    media_requests = [r for r in run.requests if r.kind == "media"]
    refused = next(i for i, r in enumerate(media_requests) if r.status != 200)
    # Whichever object came next: the second segment, or another rung's playlist when ABR switched first.
    first_refused = media_requests[refused]
    assert first_refused.status in (0, 410) and first_refused.path.startswith(f"/{CLEAR}/"), first_refused
    # ... the page authorized again, and the new link served the rest, the second segment included.
    authorizations = [r.status for r in run.requests if r.path == "/api/license/authorizations"]
    assert authorizations == [201, 201]
    renewed = [r for r in media_requests[refused:] if r.status == 200]
    assert renewed and any(r.path.endswith("seg_00001.m4s") for r in renewed)
    stalls = [e for e in run.events if e["type"] == "stall"]
    assert len(stalls) == 1 and stalls[0]["duration_ms"] > 0
    assert run.events[-1]["type"] == "end" and run.events[-1]["reason"] in ("exit", "ended")
    assert collector_counter(lab, "ott_qoe_errors_total", reason="token_expired") == before + 1


def test_a_failover_after_the_authorization_expired_authorizes_again(lab: LocalTarget, browser: Browser) -> None:
    """Playback authorizations live 2 s (OTT_PLAYBACK_TTL). The PoP in use dies 3 s after the page opens,
    when the grant has expired and the first segment plays; the page fails over when it needs the second
    segment (buffer_s=0.5). The new PoP's hls.js fetches the key again: with a new grant, not the expired
    one (the license would answer 401 and the page would stop with key_unavailable)."""
    with service_env(lab, "license", OTT_PLAYBACK_TTL="2"):
        killer = threading.Timer(3.0, lab.supervisor.stop_program, ["edge-1"])
        killer.start()
        try:
            run = play(lab, browser, ENCRYPTED, pop="edge-1", seconds=SAMPLE_S, buffer_s=0.5, timeout=25,
                       until=f"p.events.some(e => e.reason === 'pop_unreachable') && {INTO_SECOND_SEGMENT}")
        finally:
            killer.cancel()
            killer.join()
            lab.start("edge")
    assert run.failure is None and run.state in ("playing", "ended") and run.message == "", run.console
    errors = [e for e in run.events if e["type"] == "error"]
    assert [(e["reason"], e["fatal"], e["started"]) for e in errors] == [("pop_unreachable", False, True)]
    # The grant had expired at the failover: one new authorization, and every key fetch was served.
    authorizations = [r.status for r in run.requests if r.path == "/api/license/authorizations"]
    assert authorizations == [201, 201], run.console
    keys = [r.status for r in run.requests if r.kind == "key"]
    assert len(keys) >= 2 and set(keys) == {200}
    served = [r for r in run.requests if r.kind == "media" and r.status == 200]
    assert served[-1].host == httpx.URL(cdn.EDGE.url(lab.cfg, "http", 0)).netloc.decode()
    # The second segment (MPEG-TS: AES-128 titles are packaged as TS) came from the new PoP.
    assert any(r.path.endswith("/seg_00001.ts") for r in served), [(r.host, r.path, r.status) for r in served]
    assert run.events[-1]["type"] == "end" and run.events[-1]["started"] is True
    assert not run.stop_timed_out


def test_an_expired_access_token_is_refreshed(lab: LocalTarget, browser: Browser) -> None:
    """Access tokens live 2 s (OTT_ACCESS_TTL): the Stop's DELETE of the stream session, 3 s after the
    sign-in, is refused once, the page trades its refresh token for a new pair and ends the session
    (play() checks that the account has no stream session left)."""
    with service_env(lab, "auth", OTT_ACCESS_TTL="2"):
        run = play(lab, browser, CLEAR, seconds=3)
    assert run.state == "playing" and run.failure is None and not run.stop_timed_out, run.console
    ends = [r.status for r in run.requests if r.method == "DELETE" and r.path.startswith("/api/cas/sessions/")]
    assert ends == [401, 204]
    assert [r.status for r in run.requests if r.path == "/api/auth/refresh"] == [200]


def test_a_missing_key_stops_playback_before_start(lab: LocalTarget, browser: Browser) -> None:
    title = "browser-keyless"
    publish(lab, title, encrypt=True)
    with service_client(lab, "license", caller="transcoder") as license_admin:
        forgot = license_admin.delete(f"/admin/keys/{title}")
    assert forgot.status_code == 204, forgot.text
    before = collector_counter(lab, "ott_qoe_start_failures_total", reason="key_unavailable")
    run = play(lab, browser, title)
    assert run.state == "failed" and not run.started
    assert run.failure is not None and run.failure["reason"] == "key_unavailable"
    assert "decryption key could not be fetched" in run.message and "404" in run.message
    keys = [r for r in run.requests if r.kind == "key"]
    assert keys and all(r.status == 404 and r.authorization for r in keys)
    assert event_types(run) == ["play", "error", "end"] and run.events[1]["fatal"] is True
    assert run.events[-1]["reason"] == "error" and run.events[-1]["started"] is False
    assert run.beacons == run.events
    assert collector_counter(lab, "ott_qoe_start_failures_total", reason="key_unavailable") == before + 1


def test_closing_the_page_before_the_first_frame_is_an_exit_before_start(lab: LocalTarget, browser: Browser) -> None:
    # 50 kbit/s: the first 720p segment (about 800 kB) would take two minutes.
    before = collector_counter(lab, "ott_qoe_exits_before_start_total", client="browser", title=CLEAR)
    run = play(lab, browser, CLEAR, timeout=2, network=Network(download_kbps=50), leave="close")
    assert run.state == "loading" and not run.started and run.failure is None
    assert event_types(run) == ["play"] and run.beacons == run.events
    assert not any(r.path.endswith(".m4s") and r.status == 200 for r in run.requests)
    # The end beacon ("exit", started=false) left with the closing page: the collector counts it.
    exits = wait_for_counter(lab, "ott_qoe_exits_before_start_total", before + 1, client="browser", title=CLEAR)
    assert exits == before + 1


def test_a_slower_network_switches_down_and_stalls(lab: LocalTarget, browser: Browser) -> None:
    """The first segment comes at loopback speed, the second (buffer_s=2) over 800 kbit/s: hls.js abandons
    it at the top rung when the buffer runs dry, fetches a lower rung, and playback stalls meanwhile."""
    labels = {"client": "browser", "title": CLEAR}
    stalls_before = collector_counter(lab, "ott_qoe_stalls_total", **labels)
    downs_before = collector_counter(lab, "ott_qoe_switches_total", direction="down", **labels)
    run = play(lab, browser, CLEAR, seconds=SAMPLE_S, buffer_s=2, network_at_start=Network(download_kbps=800),
               until="['stall', 'switch'].every(type => p.events.some(e => e.type === type))")
    assert run.failure is None and run.state in ("playing", "ended"), run.console
    start = next(e for e in run.events if e["type"] == "start")
    switches = [e for e in run.events if e["type"] == "switch"]
    assert switches and switches[0]["from_kbps"] == start["bitrate_kbps"] > switches[0]["to_kbps"]
    stalls = [e for e in run.events if e["type"] == "stall"]
    assert stalls and all(e["duration_ms"] > 0 for e in stalls)
    assert run.events[-1]["stalled_ms"] >= sum(e["duration_ms"] for e in stalls)
    # The overlay shows the rung played now, not the one playback started at.
    assert run.overlay["rung"].endswith(f" {switches[-1]['to_kbps']} kbps"), run.overlay
    assert [e for e in run.beacons if e["type"] in ("switch", "stall")] == \
        [e for e in run.events if e["type"] in ("switch", "stall")]
    assert collector_counter(lab, "ott_qoe_stalls_total", **labels) == stalls_before + len(stalls)
    assert collector_counter(lab, "ott_qoe_switches_total", direction="down", **labels) >= downs_before + 1
