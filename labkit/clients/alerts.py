"""Alertmanager's side of an incident: a webhook receiver that records notifications, and the alerts' state.

:class:`WebhookReceiver` is what Alertmanager's ``webhook_configs`` posts to (payload version 4,
OPERATIONS.md 3.1): a small HTTP server on 127.0.0.1 that keeps every notification with the
time it arrived. :func:`alerts` reads Alertmanager's own view (``/api/v2/alerts``): which alerts
are active, and which are inhibited (and so never notified); :func:`timeline` puts them in the
order they fired (``startsAt``, Prometheus' firing evaluation), with what inhibits each and when
the receiver got it.

Example::

    with WebhookReceiver() as receiver:        # listening on receiver.url
        ...                                     # point Alertmanager at it, break something
        receiver.wait_for("PoPDown", status="firing", timeout=90)
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from labkit.core.wait import until

if TYPE_CHECKING:
    from labkit.platform.layers.monitoring.alerting import Timing


@dataclass(frozen=True)
class Notification:
    """One webhook POST: when it arrived (``time.time()``) and its payload."""

    received_at: float
    payload: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.payload.get("status", ""))

    def alerts(self, alertname: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """The notification's alerts, of ``alertname`` and ``status`` (firing or resolved) when given."""
        return [a for a in self.payload.get("alerts", [])
                if (alertname is None or a["labels"].get("alertname") == alertname)
                and (status is None or a["status"] == status)]


# Where a WebhookReceiver listens by default: 127.0.0.1, or this address of this machine. An
# Alertmanager in a cluster cannot post to this machine's loopback: there, give an address the
# cluster's pods reach (kind on Linux: the gateway of the docker network "kind", e.g. 172.18.0.1).
WEBHOOK_HOST_ENV = "OTTLAB_WEBHOOK_HOST"


def _default_host() -> str:
    return os.environ.get(WEBHOOK_HOST_ENV) or "127.0.0.1"


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port; ``$OTTLAB_WEBHOOK_HOST`` if set) recording what Alertmanager
    posts to it."""

    host: str = field(default_factory=_default_host)
    notifications: list[Notification] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return f"http://{self.host}:{self._server.server_address[1]}/alerts"

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.notifications.append(Notification(time.time(), payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the notifications are the record

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver").start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def received(self, alertname: str, status: str = "firing", **labels: str) -> list[Notification]:
        """The notifications that carried ``alertname`` in ``status`` with ``labels``, in arrival order."""
        with self._lock:
            return [n for n in self.notifications
                    if any(all(a["labels"].get(k) == v for k, v in labels.items())
                           for a in n.alerts(alertname, status))]

    def wait_for(self, alertname: str, status: str = "firing", timeout: float = 120.0,
                 **labels: str) -> Notification:
        """The first notification of ``alertname`` in ``status`` (with ``labels``), waited for up to ``timeout`` s."""
        def arrived() -> bool:
            return bool(self.received(alertname, status, **labels))

        until(arrived, timeout, 0.2, f"a {status} notification of {alertname} {labels or ''}".strip())
        return self.received(alertname, status, **labels)[0]


def _instant(text: str) -> float:
    # Go writes nanoseconds; Python reads at most microseconds.
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))).timestamp()


def started_at(alert: Mapping[str, Any]) -> float:
    """When an alert fired (``time.time()`` seconds): its ``startsAt``, which Prometheus sets to the
    evaluation that found it firing (Alertmanager's API and webhook payloads both carry it)."""
    return _instant(str(alert["startsAt"]))


def ended_at(alert: Mapping[str, Any]) -> float:
    """When a resolved alert ended (``time.time()`` seconds): its ``endsAt``, the evaluation that found it resolved."""
    return _instant(str(alert["endsAt"]))


def timeline(alertmanager_url: str, since: float, receiver: WebhookReceiver | None = None,
             **labels: str) -> list[dict[str, Any]]:
    """Alertmanager's alerts with ``labels`` in the order they fired, each as a row.

    ``alert``, ``severity``, ``labels`` (the others, as ``k=v``), ``fired_s`` (seconds after
    ``since``), ``inhibited_by`` (the names of the alerts holding it back, empty when none) and,
    with ``receiver``, ``notified_s``: when its first firing notification arrived there (None: never).
    """
    every = alerts(alertmanager_url)
    active = [a for a in every if all(a["labels"].get(k) == v for k, v in labels.items())]
    names = {a["fingerprint"]: a["labels"]["alertname"] for a in every}
    rows = []
    for found in sorted(active, key=started_at):
        notified = None
        if receiver is not None:
            arrivals = [n.received_at for n in receiver.received(found["labels"]["alertname"], "firing")
                        if any(a.get("fingerprint") == found["fingerprint"] for a in n.alerts())]
            notified = round(min(arrivals) - since, 1) if arrivals else None
        rows.append({
            "alert": found["labels"]["alertname"],
            "severity": found["labels"].get("severity", ""),
            "labels": ", ".join(f"{k}={v}" for k, v in sorted(found["labels"].items())
                                if k not in ("alertname", "severity")),
            "fired_s": round(started_at(found) - since, 1),
            "inhibited_by": ", ".join(sorted({names.get(f, f) for f in found["status"]["inhibitedBy"]})),
            "notified_s": notified,
        })
    return rows


def running_timing(prometheus_url: str, timeout: float = 5.0) -> Timing:
    """The alert timing the lab's Prometheus runs (real or fast), from its rule groups' interval (``/api/v1/rules``)."""
    from labkit.core.errors import ConfigError
    from labkit.platform.layers.monitoring import alerting

    response = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/rules", params={"type": "alert"}, timeout=timeout)
    response.raise_for_status()
    intervals = {float(g["interval"]) for g in response.json()["data"]["groups"] if g["name"].startswith("ottlab-")}
    if len(intervals) != 1:
        raise ConfigError(f"Prometheus at {prometheus_url} evaluates the lab's alert groups every "
                          f"{sorted(intervals)} s", hint="one interval is expected: the rules alerting.rules() writes")
    return alerting.timing_evaluated_every(intervals.pop())


def alerts(alertmanager_url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Alertmanager's active alerts, each with ``labels`` and ``status`` (``state``, ``inhibitedBy``)."""
    response = httpx.get(f"{alertmanager_url}/api/v2/alerts", timeout=timeout)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def reload(alertmanager_url: str, timeout: float = 5.0) -> None:
    """Ask Alertmanager to read its configuration file again."""
    httpx.post(f"{alertmanager_url}/-/reload", timeout=timeout).raise_for_status()
