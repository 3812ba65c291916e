"""Conditional access (CAS): may this account start one more stream, here and now?

Entitlement (the subscription service) says *what* an account may watch; CAS decides whether
a playback may *start*, by policies beyond the plan, each with its own reason on denial:

| reason | policy |
|---|---|
| ``outside_window`` | optional viewing window, ``OTT_CAS_WINDOW="HH:MM-HH:MM"`` in UTC (may wrap midnight) |
| ``device_limit`` | distinct devices seen for the account in the last 30 days ≤ ``OTT_DEVICE_LIMIT`` |
| ``stream_limit`` | active stream sessions of the account < ``OTT_STREAM_LIMIT`` |

A stream session lives as long as its player sends heartbeats: ``expires_at`` is the last
heartbeat plus ``OTT_HEARTBEAT_TIMEOUT``; an expired or ended session no longer counts.
Sessions, devices and the accounts' guard rows are written through the service's
``session_engine`` (commits without an fsync, see :mod:`ott.db`): a process crash loses none of
them, a power loss may forget the last moments of them, when every stream stops anyway.
Every decision is counted in ``ott_cas_decisions_total{decision, reason}`` and logged.

Example (a player's life)::

    POST   /sessions {"title_id": "big-buck-bunny", "device_id": "laptop"}   -> 201 {"session_id": ...}
    POST   /sessions/{session_id}/heartbeat                                  -> 200 {"expires_at": ...}
    DELETE /sessions/{session_id}                                            -> 204

Run it with ``python -m ott.cas``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request, Response
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy import Column, Connection, Engine, Float, Index, Integer, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ott.db import from_epoch, metadata, update_or_insert
from ott.errors import CORE_ERRORS, ApiError, error_responses
from ott.models import SESSION_ID_PATTERN, PlaybackRequest
from ott.security import CurrentUser, User
from ott.service import Service, Svc, create_app, run
from ott.settings import Settings, SettingsError

# A device counts towards the limit for this long after it was last used.
DEVICE_WINDOW_S = 30 * 86400
# Where settings.cas_window comes from: a bad window's error names it, so the operator knows what to fix.
WINDOW_ENV = "OTT_CAS_WINDOW"
DENIAL_REASONS = ("outside_window", "device_limit", "stream_limit")
# Writers that lose a race to create an account's guard row (not SQLite: it serialises writers) retry.
# An account's long-dead sessions and devices are dropped at its first session start and every 16th after.
CLEANUP_EVERY = 16
_ATTEMPTS = 3

cas_sessions = Table(
    "cas_sessions", metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("title_id", String(63), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    # Last heartbeat + heartbeat timeout; ``ended_at`` is set when the player stops on purpose.
    Column("expires_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Index("ix_cas_sessions_user_expires", "user_id", "expires_at"),
)

cas_devices = Table(
    "cas_devices", metadata,
    Column("user_id", String(255), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

# One row per account, written first in every session start: the write takes the database's
# (SQLite) or the row's (other databases) lock, so two concurrent starts of one account run one
# after the other and the second one counts the first one's session.
cas_accounts = Table(
    "cas_accounts", metadata,
    Column("user_id", String(255), primary_key=True),
    Column("decisions", Integer, nullable=False),
)


def now() -> float:
    """The CAS clock, UTC epoch seconds (one place, so tests can move time)."""
    return time.time()


# -- the API's bodies ---------------------------------------------------------------------


class SessionRequest(PlaybackRequest):
    """A title about to play on a device: CAS checks the account's limits for it."""


class StreamSession(BaseModel):
    session_id: str
    title_id: str
    device_id: str
    started_at: datetime
    expires_at: datetime
    heartbeat_interval_s: float = Field(description="send a heartbeat this often to keep the session alive")


class HeartbeatResponse(BaseModel):
    session_id: str
    expires_at: datetime


# What each error status of CAS's routes means (every body is an ott.errors.ErrorBody).
_ERRORS = {
    **CORE_ERRORS,
    401: "no valid access token",
    403: "denied: see error.code (stream_limit, device_limit, outside_window) or another account's session",
    404: "unknown or expired session",
}


# -- the viewing window ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A daily UTC time window, ``[start, end)`` in minutes after midnight; it may wrap midnight.

    >>> Window.parse("22:00-06:00").contains(datetime(2030, 1, 1, 23, 30, tzinfo=UTC))
    True
    """

    start: int
    end: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"HH:MM-HH:MM"`` (UTC; the end may be ``24:00``); :class:`SettingsError` otherwise."""
        match = re.fullmatch(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})", text.strip())
        if match is None:
            raise SettingsError(f"{WINDOW_ENV}={text!r}: expected HH:MM-HH:MM in UTC, e.g. 06:00-23:30")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise SettingsError(f"{WINDOW_ENV}={text!r}: hours go from 00 to 23 (24:00 only as an end), minutes to 59")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise SettingsError(f"{WINDOW_ENV}={text!r}: start and end are equal; use 00:00-24:00 for all day")
        return cls(start, end, text.strip())

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (aware) falls inside the window."""
        utc = moment.astimezone(UTC)
        minute = utc.hour * 60 + utc.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def window_of(settings: Settings) -> Window | None:
    """The window of ``settings.cas_window`` (``OTT_CAS_WINDOW``), or None (no window) when it is empty."""
    return Window.parse(settings.cas_window) if settings.cas_window.strip() else None


# -- the service's state ----------------------------------------------------------------------


class Cas:
    """What the handlers share: the service, its decision counter and the viewing window."""

    def __init__(self, service: Service, window: Window | None) -> None:
        self.service = service
        self.window = window
        self.decisions = Counter(
            "ott_cas_decisions", "CAS decisions on starting a stream, by decision and reason",
            ["decision", "reason"], registry=service.registry,
        )
        # Every known series exists from the start at 0, so rate() and dashboards see the first denial.
        for decision, reason in (("grant", "ok"), *(("deny", r) for r in DENIAL_REASONS)):
            self.decisions.labels(decision, reason)

    def decide(self, user: User, body: SessionRequest, reason: str, session_id: str | None = None) -> None:
        """Count and log one decision; ``reason`` ``ok`` is a grant, anything else a denial."""
        decision = "grant" if reason == "ok" else "deny"
        self.decisions.labels(decision, reason).inc()
        self.service.log.info("cas decision", extra={
            "event": "cas_decision", "decision": decision, "reason": reason, "user_id": user.id,
            "title_id": body.title_id, "device_id": body.device_id, "session_id": session_id,
        })


def _cas(request: Request) -> Cas:
    cas: Cas = request.app.state.cas
    return cas


def _heartbeat_interval(settings: Settings) -> float:
    return round(settings.heartbeat_timeout / 3, 3)


def _session_out(row: Any, settings: Settings) -> StreamSession:
    return StreamSession(
        session_id=row.id, title_id=row.title_id, device_id=row.device_id, started_at=from_epoch(row.started_at),
        expires_at=from_epoch(row.expires_at), heartbeat_interval_s=_heartbeat_interval(settings),
    )


def _active(conn: Connection, user_id: str, at: float) -> list[Any]:
    """The account's sessions that still count: not ended, heartbeat not overdue."""
    query = (select(cas_sessions)
             .where(cas_sessions.c.user_id == user_id, cas_sessions.c.ended_at.is_(None),
                    cas_sessions.c.expires_at > at)
             .order_by(cas_sessions.c.started_at))
    return list(conn.execute(query))


def _lock_account(conn: Connection, user_id: str) -> int:
    """Write the account's guard row as the transaction's first statement (see ``cas_accounts``): its decisions."""
    counted = conn.execute(update(cas_accounts).where(cas_accounts.c.user_id == user_id)
                           .values(decisions=cas_accounts.c.decisions + 1)
                           .returning(cas_accounts.c.decisions)).scalar()
    if counted is None:
        # A concurrent first start of the account makes this INSERT raise IntegrityError: start_session retries.
        conn.execute(insert(cas_accounts).values(user_id=user_id, decisions=1))
        return 1
    return int(counted)


def _start(cas: Cas, user: User, body: SessionRequest, engine: Engine) -> StreamSession:
    """Check the device and stream limits and record the session, in one serialised transaction.

    Writers that lose a race to create the account's guard row try again (not with SQLite: it
    serialises writers).
    """
    for attempt in range(_ATTEMPTS):
        try:
            return _start_once(cas, user, body, engine)
        except IntegrityError:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _start_once(cas: Cas, user: User, body: SessionRequest, engine: Engine) -> StreamSession:
    settings = cas.service.settings
    at = now()
    with engine.begin() as conn:
        decisions = _lock_account(conn, user.id)
        devices = [r.device_id for r in conn.execute(
            select(cas_devices.c.device_id)
            .where(cas_devices.c.user_id == user.id, cas_devices.c.last_seen > at - DEVICE_WINDOW_S)
            .order_by(cas_devices.c.last_seen))]
        if body.device_id not in devices and len(devices) >= settings.device_limit:
            raise ApiError(403, "device_limit",
                           f"this account has used {len(devices)} devices in the last 30 days, the limit is "
                           f"{settings.device_limit}: play on one of them",
                           {"limit": settings.device_limit, "window_days": DEVICE_WINDOW_S // 86400,
                            "devices": devices})
        active = _active(conn, user.id, at)
        if len(active) >= settings.stream_limit:
            raise ApiError(403, "stream_limit",
                           f"this account already plays {len(active)} streams, the limit is "
                           f"{settings.stream_limit}: stop one first",
                           {"limit": settings.stream_limit,
                            "active": [_session_out(r, settings).model_dump(mode="json") for r in active]})
        _touch_device(conn, user.id, body.device_id, at)
        if decisions % CLEANUP_EVERY == 1:
            # Old history is of no use to any policy: drop the account's long-dead sessions and devices.
            conn.execute(delete(cas_sessions).where(cas_sessions.c.user_id == user.id,
                                                    cas_sessions.c.expires_at < at - DEVICE_WINDOW_S))
            conn.execute(delete(cas_devices).where(cas_devices.c.user_id == user.id,
                                                   cas_devices.c.last_seen < at - DEVICE_WINDOW_S))
        session = StreamSession(session_id=uuid.uuid4().hex, title_id=body.title_id, device_id=body.device_id,
                                started_at=from_epoch(at), expires_at=from_epoch(at + settings.heartbeat_timeout),
                                heartbeat_interval_s=_heartbeat_interval(settings))
        conn.execute(insert(cas_sessions).values(
            id=session.session_id, user_id=user.id, title_id=body.title_id, device_id=body.device_id,
            started_at=at, expires_at=at + settings.heartbeat_timeout, ended_at=None,
        ))
        return session


def _touch_device(conn: Connection, user_id: str, device_id: str, at: float) -> None:
    update_or_insert(conn, cas_devices, {"user_id": user_id, "device_id": device_id},
                     updates={"last_seen": at}, inserts={"first_seen": at, "last_seen": at})


def _owner_check(conn: Connection, session_id: str, user: User) -> None:
    """Raise 404 if there is no session ``session_id``, 403 if it is another account's; return if it is ``user``'s."""
    owner = conn.execute(select(cas_sessions.c.user_id).where(cas_sessions.c.id == session_id)).scalar()
    if owner is None:
        raise ApiError(404, "unknown_session", f"no stream session {session_id!r}")
    if owner != user.id:
        raise ApiError(403, "not_your_session", "this stream session belongs to another account")


# -- routes -----------------------------------------------------------------------------------

router = APIRouter(tags=["cas"])
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="a session id from POST /sessions")]


# The routes of a play are async and reach the database through Service.run_db: on the event loop
# when the database is free, in the thread pool when another process holds its write lock.


@router.post("/sessions", status_code=201, response_model=StreamSession,
             responses=error_responses(_ERRORS, 400, 401, 403, 413, 422))
async def start_session(body: SessionRequest, user: CurrentUser, request: Request) -> StreamSession:
    """Start a stream session if the account's policies allow it; 403 with the reason otherwise."""
    cas = _cas(request)
    try:
        if cas.window is not None and not cas.window.contains(from_epoch(now())):
            raise ApiError(403, "outside_window", f"playback is allowed between {cas.window.text} UTC only",
                           {"window": cas.window.text, "timezone": "UTC"})
        session = await cas.service.run_db(partial(_start, cas, user, body))
    except ApiError as refusal:
        cas.decide(user, body, refusal.code)
        raise
    cas.decide(user, body, "ok", session.session_id)
    return session


@router.post("/sessions/{session_id}/heartbeat", response_model=HeartbeatResponse,
             responses=error_responses(_ERRORS, 401, 403, 404, 422))
async def heartbeat(session_id: SessionId, user: CurrentUser, service: Svc) -> HeartbeatResponse:
    """Keep a session alive for another heartbeat timeout."""
    return await service.run_db(partial(_heartbeat, service.settings, session_id, user))


def _heartbeat(settings: Settings, session_id: str, user: User, engine: Engine) -> HeartbeatResponse:
    at = now()
    expires = at + settings.heartbeat_timeout
    with engine.begin() as conn:
        # One conditional update, so a heartbeat cannot revive a session that expired meanwhile.
        device = conn.execute(update(cas_sessions)
                              .where(cas_sessions.c.id == session_id, cas_sessions.c.user_id == user.id,
                                     cas_sessions.c.ended_at.is_(None), cas_sessions.c.expires_at > at)
                              .values(expires_at=expires).returning(cas_sessions.c.device_id)).scalar()
        if device is None:
            _owner_check(conn, session_id, user)
            raise ApiError(404, "unknown_session",
                           f"stream session {session_id!r} has ended or expired: start a new one")
        _touch_device(conn, user.id, device, at)
    return HeartbeatResponse(session_id=session_id, expires_at=from_epoch(expires))


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
               responses=error_responses(_ERRORS, 401, 403, 404, 422))
async def end_session(session_id: SessionId, user: CurrentUser, service: Svc) -> Response:
    """End a session now (idempotent for its owner: ending an ended session is a 204 too)."""
    await service.run_db(partial(_end, session_id, user))
    service.log.info("session ended", extra={"event": "session_ended", "user_id": user.id,
                                                 "session_id": session_id})
    return Response(status_code=204)


def _end(session_id: str, user: User, engine: Engine) -> None:
    at = now()
    with engine.begin() as conn:
        ended = conn.execute(update(cas_sessions)
                             .where(cas_sessions.c.id == session_id, cas_sessions.c.user_id == user.id,
                                    cas_sessions.c.ended_at.is_(None))
                             .values(ended_at=at))
        if ended.rowcount == 0:
            # Not ended now: unknown, someone else's, or ended before (a retried DELETE, still a 204).
            _owner_check(conn, session_id, user)


@router.get("/sessions", response_model=list[StreamSession], responses=error_responses(_ERRORS, 401))
def list_sessions(user: CurrentUser, service: Svc) -> list[StreamSession]:
    """The caller's active stream sessions, oldest first."""
    with service.session_engine.connect() as conn:
        rows = _active(conn, user.id, now())
    return [_session_out(r, service.settings) for r in rows]


def build_app(settings: Settings | None = None) -> FastAPI:
    """The CAS app; the viewing window is ``settings.cas_window`` (a bad one fails here, naming ``OTT_CAS_WINDOW``)."""
    settings = settings or Settings.from_env()
    window = window_of(settings)
    app = create_app("cas", [router], settings,
                     description="Conditional access: concurrent streams, devices and viewing window per account.")
    app.state.cas = Cas(app.state.service, window)
    return app


def main() -> None:
    """``python -m ott.cas``: serve CAS with the ``OTT_*`` settings."""
    run(build_app)


if __name__ == "__main__":
    main()
