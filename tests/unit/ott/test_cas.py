"""CAS: stream and device limits, viewing window, heartbeats, and the reason on every denial."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from _fixtures_playback import Tokens, error_code, make_settings, metric, running
from fastapi.testclient import TestClient
from sqlalchemy import select

from ott import cas
from ott.settings import Settings, SettingsError
from ott.tokens import REFRESH_AUDIENCE, SigningKey

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens.create(tmp_path)


class Clock:
    """Replaces ``ott.cas.now`` so a test can move time instead of sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: float = T0) -> None:
        self.at = at
        monkeypatch.setattr(cas, "now", lambda: self.at)


@contextmanager
def cas_client(tmp_path: Path, tokens: Tokens, **overrides: Any) -> Iterator[TestClient]:
    with running(cas.build_app(make_settings(tmp_path, **overrides)), tokens) as client:
        yield client


def start(client: TestClient, tokens: Tokens, user: str = "ana", title: str = "big-buck-bunny",
          device: str = "laptop") -> Any:
    return client.post("/sessions", json={"title_id": title, "device_id": device}, headers=tokens.headers(user))


def iso(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def test_a_session_starts_and_is_listed_for_its_account_only(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens, heartbeat_timeout=30) as client:
        response = start(client, tokens)
        assert response.status_code == 201, response.text
        session = response.json()
        assert set(session) == {"session_id", "title_id", "device_id", "started_at", "expires_at",
                                "heartbeat_interval_s"}
        assert (session["title_id"], session["device_id"]) == ("big-buck-bunny", "laptop")
        started, expires = (datetime.fromisoformat(session[k]) for k in ("started_at", "expires_at"))
        assert (expires - started).total_seconds() == pytest.approx(30)
        assert session["heartbeat_interval_s"] == 10

        listed = client.get("/sessions", headers=tokens.headers("ana"))
        assert listed.status_code == 200
        assert [s["session_id"] for s in listed.json()] == [session["session_id"]]
        assert client.get("/sessions", headers=tokens.headers("bob")).json() == []


def test_stream_limit_denies_with_the_active_sessions_until_one_is_ended(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens, stream_limit=2) as client:
        first = start(client, tokens, device="tv").json()["session_id"]
        second = start(client, tokens, device="phone").json()["session_id"]

        denied = start(client, tokens, device="tv")
        assert denied.status_code == 403
        assert error_code(denied) == "stream_limit"
        details = denied.json()["error"]["details"]
        assert details["limit"] == 2
        assert {s["session_id"] for s in details["active"]} == {first, second}
        # The limit is per account.
        assert start(client, tokens, user="bob").status_code == 201

        assert client.delete(f"/sessions/{first}", headers=tokens.headers("ana")).status_code == 204
        # Ending twice (a retried DELETE) is still a success for the owner.
        assert client.delete(f"/sessions/{first}", headers=tokens.headers("ana")).status_code == 204
        assert start(client, tokens, device="tv").status_code == 201
        assert start(client, tokens, device="tv").status_code == 403


def test_a_session_without_heartbeat_expires_and_frees_its_stream(tmp_path: Path, tokens: Tokens,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    with cas_client(tmp_path, tokens, stream_limit=1, heartbeat_timeout=1) as client:
        session_id = start(client, tokens).json()["session_id"]
        assert error_code(start(client, tokens)) == "stream_limit"

        clock.at = T0 + 1.1
        late = client.post(f"/sessions/{session_id}/heartbeat", headers=tokens.headers("ana"))
        assert late.status_code == 404
        assert error_code(late) == "unknown_session"
        assert client.get("/sessions", headers=tokens.headers("ana")).json() == []
        assert start(client, tokens).status_code == 201


def test_heartbeats_keep_a_session_alive(tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    with cas_client(tmp_path, tokens, stream_limit=1, heartbeat_timeout=30) as client:
        session_id = start(client, tokens).json()["session_id"]

        clock.at = T0 + 20
        beat = client.post(f"/sessions/{session_id}/heartbeat", headers=tokens.headers("ana"))
        assert beat.status_code == 200, beat.text
        assert datetime.fromisoformat(beat.json()["expires_at"]) == iso(T0 + 50)

        # Past the first expiry, alive thanks to the heartbeat: it still counts.
        clock.at = T0 + 40
        assert [s["session_id"] for s in client.get("/sessions", headers=tokens.headers("ana")).json()] == [session_id]
        assert error_code(start(client, tokens)) == "stream_limit"

        clock.at = T0 + 51
        assert client.get("/sessions", headers=tokens.headers("ana")).json() == []
        assert client.post(f"/sessions/{session_id}/heartbeat", headers=tokens.headers("ana")).status_code == 404


def test_another_accounts_session_is_refused_and_unknown_ones_are_404(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens) as client:
        session_id = start(client, tokens, user="ana").json()["session_id"]
        bob = tokens.headers("bob")

        beat = client.post(f"/sessions/{session_id}/heartbeat", headers=bob)
        assert (beat.status_code, error_code(beat)) == (403, "not_your_session")
        ended = client.delete(f"/sessions/{session_id}", headers=bob)
        assert (ended.status_code, error_code(ended)) == (403, "not_your_session")
        assert len(client.get("/sessions", headers=tokens.headers("ana")).json()) == 1

        unknown = "0" * 32
        assert error_code(client.post(f"/sessions/{unknown}/heartbeat", headers=bob)) == "unknown_session"
        assert client.delete(f"/sessions/{unknown}", headers=bob).status_code == 404
        assert client.delete("/sessions/not-a-session-id", headers=bob).status_code == 422


def test_device_limit_counts_devices_of_the_last_30_days(
    tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    with cas_client(tmp_path, tokens, device_limit=2, stream_limit=10) as client:
        assert start(client, tokens, device="tv").status_code == 201
        clock.at += 60
        assert start(client, tokens, device="phone").status_code == 201

        denied = start(client, tokens, device="tablet")
        assert denied.status_code == 403
        assert error_code(denied) == "device_limit"
        assert denied.json()["error"]["details"] == {"limit": 2, "window_days": 30, "devices": ["tv", "phone"]}
        # A known device is always fine, and other accounts have their own devices.
        assert start(client, tokens, device="tv").status_code == 201
        assert start(client, tokens, user="bob", device="tablet").status_code == 201

        clock.at += 31 * DAY
        assert start(client, tokens, device="tablet").status_code == 201


def test_an_accounts_long_dead_history_is_dropped_at_its_first_start_and_every_16th(
    tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    with cas_client(tmp_path, tokens, stream_limit=100, device_limit=100) as client:
        app: Any = client.app
        engine = app.state.service.session_engine

        def history() -> tuple[int, int]:
            with engine.connect() as conn:
                return (len(conn.execute(select(cas.cas_sessions)).all()),
                        len(conn.execute(select(cas.cas_devices)).all()))

        for _ in range(2):
            assert start(client, tokens, device="old").status_code == 201
        clock.at += 61 * DAY  # both sessions and the device "old" are long dead now
        assert start(client, tokens, device="new").status_code == 201  # the account's 3rd start: kept
        assert history() == (3, 2)
        for _ in range(cas.CLEANUP_EVERY - 3):
            assert start(client, tokens, device="new").status_code == 201
        assert history() == (cas.CLEANUP_EVERY, 2)
        assert start(client, tokens, device="new").status_code == 201  # the 17th: dropped
        assert history() == (cas.CLEANUP_EVERY - 1, 1)


@pytest.mark.parametrize(("window", "hour", "granted"), [
    ("08:00-10:00", 9.5, True),
    ("08:00-10:00", 12.0, False),
    ("08:00-10:00", 10.0, False),
    ("22:00-06:00", 23.5, True),
    ("22:00-06:00", 3.0, True),
    ("22:00-06:00", 12.0, False),
    ("00:00-24:00", 23.99, True),
])
def test_the_viewing_window_is_enforced_in_utc(
    tmp_path: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, window: str, hour: float, granted: bool
) -> None:
    Clock(monkeypatch, datetime(2030, 1, 1, tzinfo=UTC).timestamp() + hour * 3600)
    with cas_client(tmp_path, tokens, cas_window=window) as client:
        response = start(client, tokens)
        if granted:
            assert response.status_code == 201, response.text
        else:
            assert response.status_code == 403
            assert error_code(response) == "outside_window"
            assert response.json()["error"]["details"] == {"window": window, "timezone": "UTC"}


@pytest.mark.parametrize("window", ["8-10", "25:00-26:00", "10:00-10:00", "10:60-11:00", "24:30-01:00", "x"])
def test_a_bad_window_fails_at_startup(tmp_path: Path, window: str) -> None:
    with pytest.raises(SettingsError, match=cas.WINDOW_ENV):
        cas.build_app(make_settings(tmp_path, cas_window=window))


def test_the_window_comes_from_the_environment_like_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.from_env({"OTT_CAS_WINDOW": "22:00-06:00"}).cas_window == "22:00-06:00"
    assert Settings.from_env({}).cas_window == ""
    # What `python -m ott.cas` does: a bad OTT_CAS_WINDOW stops CAS before it serves anything.
    monkeypatch.setenv("OTT_DATABASE_URL", f"sqlite:///{tmp_path}/ott.db")
    monkeypatch.setenv("OTT_CAS_WINDOW", "25:00-26:00")
    with pytest.raises(SettingsError, match="OTT_CAS_WINDOW='25:00-26:00'"):
        cas.build_app()


def test_concurrent_starts_never_exceed_the_stream_limit(tmp_path: Path, tokens: Tokens) -> None:
    attempts = 12
    with cas_client(tmp_path, tokens, stream_limit=2) as client:
        headers = tokens.headers("ana")
        barrier = threading.Barrier(attempts)

        def attempt(_: int) -> int:
            barrier.wait()
            body = {"title_id": "big-buck-bunny", "device_id": "tv"}
            status: int = client.post("/sessions", json=body, headers=headers).status_code
            return status

        with ThreadPoolExecutor(attempts) as pool:
            statuses = sorted(pool.map(attempt, range(attempts)))
        assert statuses == [201] * 2 + [403] * (attempts - 2)
        assert len(client.get("/sessions", headers=headers).json()) == 2


def test_every_decision_is_counted_with_its_reason(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens, stream_limit=1, device_limit=1) as client:
        start(client, tokens, device="tv")
        start(client, tokens, device="tv")  # stream_limit
        start(client, tokens, device="phone")  # device_limit
        start(client, tokens, user="bob", device="tv")

        name = "ott_cas_decisions_total"
        assert metric(client, name, decision="grant", reason="ok") == 2
        assert metric(client, name, decision="deny", reason="stream_limit") == 1
        assert metric(client, name, decision="deny", reason="device_limit") == 1
        assert metric(client, name, decision="deny", reason="outside_window") == 0


def test_every_decision_is_logged_with_user_title_device_and_reason(
    tmp_path: Path, tokens: Tokens, capsys: pytest.CaptureFixture[str]
) -> None:
    with cas_client(tmp_path, tokens, stream_limit=1) as client:
        start(client, tokens, device="tv")
        start(client, tokens, device="tv", title="sintel")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    decisions = [(d["decision"], d["reason"], d["user_id"], d["title_id"], d["device_id"])
                 for d in lines if d.get("message") == "cas decision"]
    assert decisions == [("grant", "ok", "ana", "big-buck-bunny", "tv"),
                         ("deny", "stream_limit", "ana", "sintel", "tv")]


def test_sessions_survive_a_new_app_on_the_same_database(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens, stream_limit=1) as client:
        session_id = start(client, tokens).json()["session_id"]
    with cas_client(tmp_path, tokens, stream_limit=1) as client:
        assert [s["session_id"] for s in client.get("/sessions", headers=tokens.headers("ana")).json()] == [session_id]
        assert error_code(start(client, tokens)) == "stream_limit"
        assert client.delete(f"/sessions/{session_id}", headers=tokens.headers("ana")).status_code == 204


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"title_id": "big-buck-bunny", ', 400, "malformed_json"),
    (b'{"title_id": 5, "device_id": "tv"}', 422, "invalid_request"),
    (b'{"title_id": "big-buck-bunny"}', 422, "invalid_request"),
    (b'["big-buck-bunny", "tv"]', 422, "invalid_request"),
    (b'{"title_id": "x\' OR \'1\'=\'1", "device_id": "tv"}', 422, "invalid_request"),
    (b'{"title_id": "sintel", "device_id": "tv; DROP TABLE cas_sessions;--"}', 422, "invalid_request"),
    (b'{"title_id": "Big Buck Bunny", "device_id": "tv"}', 422, "invalid_request"),
])
def test_bad_bodies_are_client_errors(tmp_path: Path, tokens: Tokens, body: bytes, status: int, code: str) -> None:
    with cas_client(tmp_path, tokens) as client:
        headers = {**tokens.headers("ana"), "Content-Type": "application/json"}
        response = client.post("/sessions", content=body, headers=headers)
        assert (response.status_code, error_code(response)) == (status, code)
        # Nothing was recorded, and the table is intact.
        assert client.get("/sessions", headers=tokens.headers("ana")).json() == []
        assert start(client, tokens).status_code == 201


def test_an_oversized_body_is_413(tmp_path: Path, tokens: Tokens) -> None:
    with cas_client(tmp_path, tokens, max_body=1024) as client:
        body = {"title_id": "big-buck-bunny", "device_id": "tv", "padding": "x" * 2048}
        response = client.post("/sessions", json=body, headers=tokens.headers("ana"))
        assert (response.status_code, error_code(response)) == (413, "body_too_large")


def _alg_none(user: str) -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(json.dumps({"sub": user, "aud": "ottlab-api", "iss": "ottlab-auth",
                                                     "exp": int(time.time()) + 300}).encode()).decode()
    return f"{header}.{payload}."


def test_bad_tokens_are_401(tmp_path: Path, tokens: Tokens) -> None:
    stranger = SigningKey.load_or_create(tmp_path / "other-keys")
    bad = {
        "forged": stranger.issue("ana", "ottlab-api", 300),
        "refresh": tokens.key.issue("ana", REFRESH_AUDIENCE, 300),
        "expired": tokens.key.issue("ana", "ottlab-api", -60),
        "alg none": _alg_none("ana"),
        "garbage": "not.a.token",
    }
    with cas_client(tmp_path, tokens) as client:
        assert client.get("/sessions").status_code == 401
        for what, token in bad.items():
            response = client.post("/sessions", json={"title_id": "sintel", "device_id": "tv"},
                                   headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, what
            assert error_code(response) == "unauthorized"
        assert metric(client, "ott_cas_decisions_total", decision="grant", reason="ok") == 0


def test_window_contains_is_half_open() -> None:
    window = cas.Window.parse("08:00-10:00")
    assert window.contains(datetime(2030, 1, 1, 8, 0, tzinfo=UTC))
    assert not window.contains(datetime(2030, 1, 1, 10, 0, tzinfo=UTC))
    assert cas.window_of(Settings()) is None
    assert cas.window_of(Settings(cas_window=" ")) is None
    assert cas.window_of(Settings(cas_window="06:00-23:30")) == cas.Window(360, 1410, "06:00-23:30")
