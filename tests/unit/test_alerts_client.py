"""labkit.clients.alerts read offline: Go's timestamps, an incident's timeline from Alertmanager's alerts and
the webhook's notifications (Alertmanager's API replaced by a list), and the showcase's lower bound."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from labkit.clients import alerts
from labkit.core.errors import ConfigError
from labkit.traffic import showcase

T0 = datetime(2026, 12, 5, 0, 4, 0, tzinfo=UTC).timestamp()


def test_go_timestamps_with_nanoseconds_are_read() -> None:
    assert alerts.started_at({"startsAt": "2026-12-05T00:04:03.002123456Z"}) == pytest.approx(T0 + 3.002123)
    assert alerts.started_at({"startsAt": "2026-12-05T00:04:03Z"}) == T0 + 3
    assert alerts.ended_at({"endsAt": "2026-12-05T01:04:03.5+01:00"}) == T0 + 3.5


def _alert(name: str, fingerprint: str, starts: str, inhibited_by: list[str], **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": "warning", **labels}, "fingerprint": fingerprint,
            "startsAt": f"2026-12-05T00:04:{starts}Z", "status": {"state": "active", "inhibitedBy": inhibited_by}}


def test_a_timeline_orders_the_alerts_names_their_inhibitors_and_when_they_were_notified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    held = [_alert("ProbeFailing", "b", "33.1", ["a"], pop="edge-1", probe="playlist"),
            _alert("PoPDown", "a", "21.1", [], pop="edge-1"),
            _alert("PoPDown", "c", "10.0", [], pop="edge-0")]
    monkeypatch.setattr(alerts, "alerts", lambda url, timeout=5.0: held)
    receiver = alerts.WebhookReceiver()
    receiver.notifications.append(alerts.Notification(T0 + 26.1, {"status": "firing", "alerts": [
        {**held[1], "status": "firing"}]}))
    rows = alerts.timeline("http://am", T0, receiver, pop="edge-1")
    assert [(r["alert"], r["fired_s"], r["inhibited_by"], r["notified_s"]) for r in rows] == [
        ("PoPDown", 21.1, "", 26.1), ("ProbeFailing", 33.1, "PoPDown", None)]
    assert rows[1]["labels"] == "pop=edge-1, probe=playlist"
    assert [r["notified_s"] for r in alerts.timeline("http://am", T0, pop="edge-1")] == [None, None]


def test_a_showcase_needs_four_viewers() -> None:
    with pytest.raises(ConfigError, match="at least 4 viewers"):
        showcase.run(None, "lab-clock", viewers=3)  # type: ignore[arg-type]
