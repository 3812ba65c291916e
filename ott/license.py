"""License: a title's content key, released only to an authenticated, entitled stream session.

A player gets a key in two steps:

1. ``POST /authorizations {title_id, device_id}`` with its access token. License asks
   subscription whether the account is entitled to the title, then asks CAS to open a stream
   session (stream, device and time-window limits), forwarding the caller's token to both.
   On success it answers a short-lived, opaque *playback authorisation* (``OTT_PLAYBACK_TTL``)
   and the key URI; only the authorisation's SHA-256 is stored.
2. ``GET /keys/{title_id}`` with ``Authorization: Bearer <playback authorisation>`` (or
   ``?authorization=`` for players that cannot set headers on key requests) answers the
   16 raw bytes of the title's AES-128 key, the ``#EXT-X-KEY`` URI of its HLS playlists.

Subscription is asked on every authorisation, never answered from a cache: a downgrade or a
cancellation that ended must refuse the very next play (notebook 01 shows it).

Keys are created by the transcoder through the internal ``/admin/keys/{title_id}`` routes.
Every grant and denial is counted in ``ott_license_decisions_total{decision, reason}`` and
logged with its reason; keys and tokens are never logged.

Run it with ``python -m ott.license``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import time
from datetime import datetime
from functools import partial
from pathlib import Path as PathLib
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Column, Connection, Engine, Float, Index, LargeBinary, String, Table, delete, insert, select

from ott import signing
from ott.calls import call
from ott.db import from_epoch, metadata
from ott.errors import CORE_ERRORS, INTERNAL, ApiError, error_responses
from ott.internal import ServiceCaller
from ott.models import TITLE_ID_PATTERN, PlaybackRequest
from ott.security import CurrentUser, bearer_token
from ott.service import Service, create_app, run
from ott.settings import Settings

KEY_BYTES = 16
GRANT_REASONS = ("authorized", "key_delivered")
# The usual denials (CAS's reasons pass through; a failing dependency adds its own code).
DENIAL_REASONS = ("not_entitled", "unknown_title", "stream_limit", "device_limit", "outside_window",
                  "missing_authorization", "unknown_authorization", "authorization_expired", "wrong_title", "no_key")
# An expired authorisation answers "expired" (not "unknown") for this long, then it is deleted
# (by the first grant of a license process and every 16th after).
_KEEP_EXPIRED_S = 86400
CLEANUP_EVERY = 16
# CAS refusals passed through to the player as they are (anything else from CAS is a 502).
_CAS_REFUSALS = (401, 403)

license_keys = Table(
    # One row per key *version*: a re-transcode registers a new version before its encode and
    # publishes playlists naming it, while the published playlists still name the old one; so
    # a re-publish never leaves a player with a key its segments were not encrypted with.
    "license_key_versions", metadata,
    Column("title_id", String(63), primary_key=True),
    Column("kid", String(32), primary_key=True),
    # The raw AES-128 key: the lab keeps it in the shared database; a production system would
    # keep it in a KMS/HSM and store only a wrapped copy here.
    Column("key", LargeBinary(KEY_BYTES), nullable=False),
    Column("created_at", Float, nullable=False),
)

license_authorizations = Table(
    "license_authorizations", metadata,
    # SHA-256 of the authorisation: a leaked database does not hand out working authorisations.
    Column("token_sha256", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("title_id", String(63), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_license_authorizations_expires", "expires_at"),
)


def now() -> float:
    """The license clock, UTC epoch seconds (one place, so tests can move time)."""
    return time.time()


# -- the API's bodies ---------------------------------------------------------------------


class AuthorizationRequest(PlaybackRequest):
    """A title to play on a device; license passes both to CAS to open the stream session."""


class SignedUrl(BaseModel):
    pop: str = Field(description="the CDN point of presence serving this URL")
    url: str = Field(description="the title's multivariant playlist, signed for this title until expires_at")
    expires_at: datetime


class PlaybackAuthorization(BaseModel):
    authorization: str = Field(description="send it as Authorization: Bearer <it> (or ?authorization=) to key_uri")
    expires_at: datetime
    session_id: str = Field(description="the CAS stream session: send heartbeats to keep it alive")
    key_uri: str
    playback: list[SignedUrl] = Field(default_factory=list, description="one signed playlist URL per CDN PoP "
                                      "(empty when the title is not published or no CDN is configured)")


class TitleKey(BaseModel):
    title_id: str
    kid: str = Field(description="the key version: a title's playlists name the version they were encrypted with")
    key_hex: str = Field(description="the 16-byte AES-128 key, hex (what ffmpeg's key file holds, as bytes)")
    key_uri: str = Field(description="the #EXT-X-KEY URI to write into the title's playlists")
    created_at: datetime


class _Entitlement(BaseModel):
    """The part of subscription's ``GET /entitlements/{title_id}`` answer license relies on."""

    entitled: bool
    reason: str | None = None


class _CasSession(BaseModel):
    session_id: str


# What each error status of license's routes means (every body is an ott.errors.ErrorBody).
_ERRORS = {
    **CORE_ERRORS,
    401: "no valid token (access token, or playback authorisation for keys)",
    403: "denied: see error.code",
    404: "unknown title, or no key for it",
    503: "a service license depends on is unreachable, or the service token file is not configured",
    502: "a service license depends on answered something unexpected",
    504: "a service license depends on did not answer in time",
}


# -- the service's state ----------------------------------------------------------------------


class License:
    """What the handlers share: the service and its decision counter."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.decisions = Counter(
            "ott_license_decisions", "License decisions (authorisations and key deliveries), by decision and reason",
            ["decision", "reason"], registry=service.registry,
        )
        # Grants recorded by this process: every CLEANUP_EVERY-th also deletes long-expired authorisations.
        self.grants = itertools.count()
        # Every known series exists from the start at 0, so rate() and dashboards see the first one.
        for decision, reasons in (("grant", GRANT_REASONS), ("deny", DENIAL_REASONS)):
            for reason in reasons:
                self.decisions.labels(decision, reason)

    def decide(self, decision: str, reason: str, **context: Any) -> None:
        """Count and log one grant or denial (never with a key or a token in ``context``)."""
        self.decisions.labels(decision, reason).inc()
        self.service.log.info("license decision", extra={"event": "license_decision", "decision": decision,
                                                         "reason": reason, **context})

    def key_uri(self, title_id: str, kid: str | None = None) -> str:
        """Where players fetch the key: through the gateway (``OTT_PUBLIC_URL``) when it is set."""
        public = self.service.settings.public_url.rstrip("/")
        base = f"{public}/api/license" if public else self.service.settings.license_url
        return f"{base}/keys/{title_id}" + (f"/{kid}" if kid else "")


async def _license(request: Request) -> License:
    found: License = request.app.state.license
    return found


LicenseState = Annotated[License, Depends(_license)]


def _digest(authorization: str) -> str:
    return hashlib.sha256(authorization.encode()).hexdigest()


def _error_of(response: httpx.Response) -> tuple[str | None, str | None, Any]:
    """``(code, message, details)`` of another service's JSON error body, as far as it has them."""
    try:
        error = response.json().get("error", {})
        return error.get("code"), error.get("message"), error.get("details")
    except (ValueError, AttributeError):
        return None, None, None


def _unexpected(who: str, response: httpx.Response) -> ApiError:
    return ApiError(502, "dependency_failed", f"{who} answered {response.status_code} unexpectedly",
                    {"service": who, "status": response.status_code})


async def _check_entitlement(lic: License, title_id: str, token: str) -> None:
    """Raise unless subscription says the caller is entitled to ``title_id``."""
    settings = lic.service.settings
    response = await call(lic.service, "GET", f"{settings.subscription_url}/entitlements/{title_id}",
                          headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 404:
        raise ApiError(404, "unknown_title", f"there is no title {title_id!r}")
    if response.status_code == 401:
        _, message, _ = _error_of(response)
        raise ApiError(401, "unauthorized", message or "subscription refused the access token")
    if response.status_code != 200:
        raise _unexpected("subscription", response)
    try:
        entitlement = _Entitlement.model_validate(response.json())
    except (ValueError, ValidationError):
        raise _unexpected("subscription", response) from None
    if not entitlement.entitled:
        reason = entitlement.reason or "not_entitled"
        raise ApiError(403, "not_entitled", f"this account is not entitled to {title_id!r}: {reason}",
                       {"reason": reason})


def _edges(settings: Settings) -> dict[str, str]:
    """The CDN's PoPs by id: the edges file when set (it follows `ottlab scale edge`), else OTT_EDGE_URLS."""
    if settings.edges_file:
        try:
            found = json.loads(PathLib(settings.edges_file).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    pairs = (item.partition("=") for item in settings.edge_urls.split(",") if item.strip())
    return {pop.strip(): url.strip() for pop, _, url in pairs if pop.strip() and url.strip()}


def _signing_secret(settings: Settings) -> str | None:
    if not settings.signing_secret_file:
        return None
    try:
        return PathLib(settings.signing_secret_file).read_text().strip() or None
    except OSError:
        return None


async def _playback_urls(lic: License, title_id: str) -> list[SignedUrl]:
    """The title's playlist signed for every PoP; none when there is no CDN or the title is unpublished."""
    settings = lic.service.settings
    edges, secret = _edges(settings), _signing_secret(settings)
    if not edges or secret is None:
        return []
    response = await call(lic.service, "GET", f"{settings.catalog_url}/titles/{title_id}")
    if response.status_code == 404:
        raise ApiError(404, "unknown_title", f"title {title_id!r} is not in the catalog")
    if response.status_code != 200:
        raise _unexpected("catalog", response)
    try:
        renditions = [r for r in response.json()["renditions"] if r.get("kind") == "hls"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _unexpected("catalog", response) from None
    prefix = f"/{title_id}/"
    paths = [urlsplit(str(r.get("url", ""))).path for r in renditions]
    paths = [p for p in paths if p.startswith(prefix)]
    if not paths:
        return []
    expires = int(now()) + settings.signed_url_ttl
    rest = paths[0][len(prefix) - 1:]
    return [SignedUrl(pop=pop, url=url.rstrip("/") + signing.signed_path(secret, title_id, expires, rest),
                      expires_at=from_epoch(expires)) for pop, url in sorted(edges.items())]


async def _open_session(lic: License, body: AuthorizationRequest, token: str) -> str:
    """A CAS stream session for the caller, or CAS's refusal passed through with its code."""
    response = await call(lic.service, "POST", f"{lic.service.settings.cas_url}/sessions",
                          headers={"Authorization": f"Bearer {token}"},
                          json={"title_id": body.title_id, "device_id": body.device_id})
    if response.status_code in _CAS_REFUSALS:
        code, message, details = _error_of(response)
        raise ApiError(response.status_code, code or "cas_denied", message or "conditional access refused", details)
    if response.status_code != 201:
        raise _unexpected("cas", response)
    try:
        return _CasSession.model_validate(response.json()).session_id
    except (ValueError, ValidationError):
        raise _unexpected("cas", response) from None


# -- routes -----------------------------------------------------------------------------------

router = APIRouter(tags=["license"])
admin = APIRouter(prefix="/admin", tags=["license admin"])
TitleId = Annotated[str, Path(pattern=TITLE_ID_PATTERN, description="a title id", examples=["big-buck-bunny"])]
Kid = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="a key version, as POST /admin/keys answers it")]
_playback = HTTPBearer(auto_error=False, scheme_name="PlaybackAuthorization",
                       description="a playback authorisation from POST /authorizations")


@router.post("/authorizations", status_code=201, response_model=PlaybackAuthorization,
             responses=error_responses(_ERRORS, 400, 401, 403, 404, 413, 422, 502, 503, 504))
async def authorize(
    body: AuthorizationRequest, user: CurrentUser, token: Annotated[str, Depends(bearer_token)], lic: LicenseState
) -> PlaybackAuthorization:
    """Entitlement, then a CAS session, then a short-lived playback authorisation for the title's key.

    The entitlement and the title's playback URLs are asked for at once (neither needs the other);
    the CAS session is opened only once both are known, so a refused viewer never holds a stream.
    """
    context = {"user_id": user.id, "title_id": body.title_id, "device_id": body.device_id}
    try:
        entitled, playback = await asyncio.gather(_check_entitlement(lic, body.title_id, token),
                                                  _playback_urls(lic, body.title_id), return_exceptions=True)
        # The entitlement's refusal comes first, as when the two were asked one after the other.
        for outcome in (entitled, playback):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(playback, list)
        session_id = await _open_session(lic, body, token)
    except ApiError as refusal:
        details = refusal.details if refusal.code == "not_entitled" else None
        lic.decide("deny", refusal.code, status=refusal.status, details=details, **context)
        raise
    authorization = secrets.token_urlsafe(32)
    at = now()
    expires = at + lic.service.settings.playback_ttl
    await lic.service.run_db(partial(_record, lic, authorization, user.id, body, session_id, at, expires))
    lic.decide("grant", "authorized", session_id=session_id, **context)
    return PlaybackAuthorization(authorization=authorization, expires_at=from_epoch(expires), session_id=session_id,
                                 key_uri=lic.key_uri(body.title_id), playback=playback)


def _record(lic: License, authorization: str, user_id: str, body: AuthorizationRequest, session_id: str,
            at: float, expires: float, engine: Engine) -> None:
    """Store the authorisation's digest (through ``Service.run_db``: on the loop unless the database is busy).

    Authorisations live ``OTT_PLAYBACK_TTL`` (a minute): they are session state, committed without
    an fsync (``session_engine``, see :mod:`ott.db`); keys stay on the durable engine.
    """
    with engine.begin() as conn:
        conn.execute(insert(license_authorizations).values(
            token_sha256=_digest(authorization), user_id=user_id, title_id=body.title_id,
            device_id=body.device_id, session_id=session_id, created_at=at, expires_at=expires,
        ))
        if next(lic.grants) % CLEANUP_EVERY == 0:
            conn.execute(delete(license_authorizations)
                         .where(license_authorizations.c.expires_at < at - _KEEP_EXPIRED_S))


_KEY_RESPONSES: Any = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the title's 16-byte AES-128 key"},
    **error_responses(_ERRORS, 401, 403, 404, 422),
}
_AuthorizationQuery = Annotated[str | None, Query(max_length=512, description="the playback authorisation, for "
                                                  "players that cannot set headers on key requests")]
_Playback = Annotated[HTTPAuthorizationCredentials | None, Depends(_playback)]


# A key request is two reads (the authorisation, the key): async routes, whose reads run on the
# event loop through Service.run_db (in WAL mode a read never waits for a writer).


@router.get("/keys/{title_id}", response_class=Response, responses=_KEY_RESPONSES)
async def key(title_id: TitleId, lic: LicenseState, credentials: _Playback,
              authorization: _AuthorizationQuery = None) -> Response:
    """The title's newest AES-128 key, for a valid playback authorisation of that title."""
    return await _deliver(lic, title_id, None, credentials, authorization)


@router.get("/keys/{title_id}/{kid}", response_class=Response, responses=_KEY_RESPONSES)
async def key_version(title_id: TitleId, kid: Kid, lic: LicenseState, credentials: _Playback,
                      authorization: _AuthorizationQuery = None) -> Response:
    """One version of the title's key (the URI its playlists name), for a valid playback authorisation."""
    return await _deliver(lic, title_id, kid, credentials, authorization)


async def _deliver(lic: License, title_id: str, kid: str | None, credentials: HTTPAuthorizationCredentials | None,
                   authorization: str | None) -> Response:
    given = credentials.credentials if credentials is not None and credentials.credentials else authorization
    try:
        user_id, row = await lic.service.run_db(partial(_authorised_key, lic, title_id, kid, given))
        if row is None:
            version = f" version {kid!r}" if kid else ""
            raise ApiError(404, "no_key", f"title {title_id!r} has no key{version} (is it encrypted? was it "
                           "re-transcoded since this playlist was fetched?)")
    except ApiError as refusal:
        lic.decide("deny", refusal.code, status=refusal.status, title_id=title_id)
        raise
    lic.decide("grant", "key_delivered", user_id=user_id, title_id=title_id)
    # A key is never cached by anyone on the way: each player must show its own authorisation.
    return Response(content=bytes(row.key), media_type="application/octet-stream",
                    headers={"Cache-Control": "no-store"})


def _key_row(lic: License, title_id: str, kid: str | None, engine: Engine | None = None) -> Any:
    """The title's key ``kid``, or its newest one; None if there is none."""
    with (engine or lic.service.engine).connect() as conn:
        return _key_query(conn, title_id, kid)


def _key_query(conn: Connection, title_id: str, kid: str | None) -> Any:
    query = select(license_keys).where(license_keys.c.title_id == title_id)
    if kid is not None:
        query = query.where(license_keys.c.kid == kid)
    return conn.execute(query.order_by(license_keys.c.created_at.desc()).limit(1)).first()


def _authorised_key(lic: License, title_id: str, kid: str | None, given: str | None, engine: Engine) -> tuple[str, Any]:
    """The user of a valid playback authorisation for ``title_id`` and the key row (None if there is none)."""
    with engine.connect() as conn:
        user_id = _authorised_user(conn, title_id, given)
        return user_id, _key_query(conn, title_id, kid)


def _authorised_user(conn: Connection, title_id: str, given: str | None) -> str:
    """The user of a valid, unexpired playback authorisation for ``title_id``; 401/403 otherwise."""
    if not given:
        raise ApiError(401, "missing_authorization",
                       "send the playback authorisation: Authorization: Bearer <it>, or ?authorization=<it>")
    grant = conn.execute(select(license_authorizations)
                         .where(license_authorizations.c.token_sha256 == _digest(given))).first()
    if grant is None:
        raise ApiError(401, "unknown_authorization", "this playback authorisation is not known: get one from "
                       "POST /authorizations")
    if grant.expires_at <= now():
        raise ApiError(401, "authorization_expired", "this playback authorisation has expired: get a new one from "
                       "POST /authorizations")
    if grant.title_id != title_id:
        raise ApiError(403, "wrong_title", f"this playback authorisation is for another title, not {title_id!r}")
    user_id: str = grant.user_id
    return user_id


# -- internal routes (the transcoder) ---------------------------------------------------------
# They take the lab's service token, not a player's: their 401 and 403 are the shared INTERNAL ones.


def _key_out(lic: License, row: Any) -> TitleKey:
    return TitleKey(title_id=row.title_id, kid=row.kid, key_hex=bytes(row.key).hex(),
                    key_uri=lic.key_uri(row.title_id, row.kid), created_at=from_epoch(row.created_at))


@admin.post("/keys/{title_id}", status_code=201, response_model=TitleKey,
            responses={**INTERNAL, **error_responses(_ERRORS, 422, 503)})
def create_key(title_id: TitleId, _: ServiceCaller, lic: LicenseState) -> TitleKey:
    """A new random key version for the title; older versions stay valid for the playlists naming them."""
    content_key = secrets.token_bytes(KEY_BYTES)
    kid = secrets.token_hex(8)
    at = now()
    with lic.service.engine.begin() as conn:
        conn.execute(insert(license_keys).values(title_id=title_id, kid=kid, key=content_key, created_at=at))
    lic.service.log.info("key created", extra={"event": "key_created", "title_id": title_id, "kid": kid})
    return _key_out(lic, _key_row(lic, title_id, kid))


@admin.get("/keys/{title_id}", response_model=TitleKey,
           responses={**INTERNAL, **error_responses(_ERRORS, 404, 422, 503)})
def read_key(title_id: TitleId, _: ServiceCaller, lic: LicenseState) -> TitleKey:
    """The title's newest key version."""
    return _key_out(lic, _existing(lic, title_id, None))


@admin.get("/keys/{title_id}/{kid}", response_model=TitleKey,
           responses={**INTERNAL, **error_responses(_ERRORS, 404, 422, 503)})
def read_key_version(title_id: TitleId, kid: Kid, _: ServiceCaller, lic: LicenseState) -> TitleKey:
    """One version of the title's key."""
    return _key_out(lic, _existing(lic, title_id, kid))


@admin.delete("/keys/{title_id}", status_code=204, response_class=Response,
              responses={**INTERNAL, **error_responses(_ERRORS, 404, 422, 503)})
def delete_key(title_id: TitleId, _: ServiceCaller, lic: LicenseState) -> Response:
    """Forget every version of the title's key: its encrypted segments can no longer be played."""
    return _delete(lic, title_id, None)


@admin.delete("/keys/{title_id}/{kid}", status_code=204, response_class=Response,
              responses={**INTERNAL, **error_responses(_ERRORS, 404, 422, 503)})
def delete_key_version(title_id: TitleId, kid: Kid, _: ServiceCaller, lic: LicenseState) -> Response:
    """Forget one key version (the transcoder does, when the encode it was made for fails)."""
    return _delete(lic, title_id, kid)


def _existing(lic: License, title_id: str, kid: str | None) -> Any:
    row = _key_row(lic, title_id, kid)
    if row is None:
        version = f" version {kid!r}" if kid else ""
        raise ApiError(404, "no_key", f"title {title_id!r} has no key{version}")
    return row


def _delete(lic: License, title_id: str, kid: str | None) -> Response:
    query = delete(license_keys).where(license_keys.c.title_id == title_id)
    if kid is not None:
        query = query.where(license_keys.c.kid == kid)
    with lic.service.engine.begin() as conn:
        removed = conn.execute(query)
    if removed.rowcount == 0:
        version = f" version {kid!r}" if kid else ""
        raise ApiError(404, "no_key", f"title {title_id!r} has no key{version}")
    lic.service.log.info("key deleted", extra={"event": "key_deleted", "title_id": title_id, "kid": kid or "all"})
    return Response(status_code=204)


def build_app(settings: Settings | None = None) -> FastAPI:
    """The license app."""
    settings = settings or Settings.from_env()
    app = create_app("license", [router, admin], settings,
                     description="Playback authorisations and AES-128 content keys (the HLS key URI).")
    app.state.license = License(app.state.service)
    return app


def main() -> None:
    """``python -m ott.license``: serve license with the ``OTT_*`` settings."""
    run(build_app)


if __name__ == "__main__":
    main()
