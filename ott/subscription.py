"""subscription: plans, each user's subscription, and the entitlement decision.

A plan grants content tiers (free ⊂ basic ⊂ premium). A user has at most one subscription; it is
active until ``expires_at``, or cancelled (still entitled until ``expires_at``, not renewed), or
expired. ``GET /entitlements/{title_id}`` asks the catalog for the title's tier and answers whether
the caller may watch it, and why not — license and CAS build on that answer.

A title's tier changes rarely and every play asks for it, so subscription keeps the catalog's
answer for ``TIER_TTL_S`` seconds (at most ``TIER_CACHE_SIZE`` titles): a tier changed in the
catalog is seen by entitlement checks within that window. Only the tier is kept; the caller's
subscription is read from the database on every check, so a change of plan, a cancellation or an
expiry applies at once. An unknown title or a failing catalog is never kept.

Run it with ``python -m ott.subscription`` (settings from ``OTT_*`` variables, see :mod:`ott.settings`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, FastAPI, Path, Request, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, DateTime, Engine, String, Table, select, update

from ott.cache import TtlCache
from ott.calls import call
from ott.db import as_utc, metadata, upsert, utc_now
from ott.errors import INTERNAL, MALFORMED, UNAUTHORIZED, ApiError, Responses
from ott.internal import ServiceCaller
from ott.models import TITLE_ID_PATTERN, USER_ID_PATTERN
from ott.security import CurrentUser
from ott.service import Service, Svc, create_app, run
from ott.settings import Settings

Tier = Literal["free", "basic", "premium"]
PlanId = Literal["free", "basic", "premium"]
Status = Literal["active", "cancelled", "expired"]
Reason = Literal["ok", "no_subscription", "subscription_expired", "tier_not_in_plan"]
# How long a title's tier, as the catalog answered it, is reused, and for how many titles at most.
TIER_TTL_S = 5.0
TIER_CACHE_SIZE = 1024

subscriptions = Table(
    "subscription_subscriptions", metadata,
    # One subscription per user: subscribing again replaces it.
    Column("user_id", String(32), primary_key=True),
    Column("plan", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
)


class Plan(BaseModel):
    id: PlanId
    name: str
    tiers: list[Tier]
    price_cents: int
    period_days: int


PLANS: dict[str, Plan] = {
    "free": Plan(id="free", name="Free", tiers=["free"], price_cents=0, period_days=30),
    "basic": Plan(id="basic", name="Basic", tiers=["free", "basic"], price_cents=799, period_days=30),
    "premium": Plan(id="premium", name="Premium", tiers=["free", "basic", "premium"], price_cents=1499,
                    period_days=30),
}


class SubscribeRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    plan: PlanId


class Subscription(BaseModel):
    user_id: str
    plan: PlanId
    status: Status
    started_at: datetime
    expires_at: datetime
    cancelled_at: datetime | None


class Entitlement(BaseModel):
    title_id: str
    entitled: bool
    reason: Reason
    plan: PlanId | None
    required_tier: Tier


UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="an auth user id (32 hex digits)")]
TitleId = Annotated[str, Path(pattern=TITLE_ID_PATTERN, description="a catalog title id")]

router = APIRouter()

_NO_SUBSCRIPTION: Responses = {404: {"description": "no_subscription"}}


def status_at(expires_at: datetime, cancelled_at: datetime | None, now: datetime) -> Status:
    """A subscription's status at ``now``: expiry wins over cancellation (both end entitlement there)."""
    if now >= expires_at:
        return "expired"
    return "cancelled" if cancelled_at is not None else "active"


def _subscription(row: Any, now: datetime) -> Subscription:
    expires_at = as_utc(row.expires_at)
    cancelled_at = as_utc(row.cancelled_at)
    return Subscription(user_id=row.user_id, plan=row.plan, status=status_at(expires_at, cancelled_at, now),
                        started_at=as_utc(row.started_at), expires_at=expires_at, cancelled_at=cancelled_at)


def _find(engine: Engine, user_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(subscriptions).where(subscriptions.c.user_id == user_id)).first()


def _load(engine: Engine, user_id: str) -> Subscription:
    row = _find(engine, user_id)
    if row is None:
        raise ApiError(404, "no_subscription", "this account has no subscription")
    return _subscription(row, utc_now())


def _subscribe(service: Service, user_id: str, plan_id: str) -> tuple[Subscription, bool]:
    """Start ``plan_id`` for ``user_id`` now, replacing any subscription; also whether it is the first."""
    now = utc_now()
    values = {"plan": plan_id, "started_at": now, "expires_at": now + timedelta(days=PLANS[plan_id].period_days),
              "cancelled_at": None}
    created = upsert(service.engine, subscriptions, {"user_id": user_id}, values)
    service.log.info("subscribed", extra={"event": "subscribed", "user_id": user_id, "plan": plan_id,
                                          "created": created})
    return _load(service.engine, user_id), created


def _checks(request: Request) -> Counter:
    return cast(Counter, request.app.state.entitlement_checks)


@router.get("/plans")
def list_plans() -> list[Plan]:
    """The plans on offer, cheapest first."""
    return list(PLANS.values())


@router.post("/subscriptions", status_code=201, responses={**MALFORMED, **UNAUTHORIZED})
def subscribe(body: SubscribeRequest, user: CurrentUser, service: Svc) -> Subscription:
    """Subscribe the caller to a plan from now on, replacing the current subscription if any."""
    subscription, _ = _subscribe(service, user.id, body.plan)
    return subscription


@router.get("/subscriptions/me", responses={**UNAUTHORIZED, **_NO_SUBSCRIPTION})
def my_subscription(user: CurrentUser, service: Svc) -> Subscription:
    """The caller's subscription, with its status now."""
    return _load(service.engine, user.id)


@router.delete("/subscriptions/me", responses={**UNAUTHORIZED, **_NO_SUBSCRIPTION})
def cancel(user: CurrentUser, service: Svc) -> Subscription:
    """Cancel the caller's subscription: it stays entitled until ``expires_at`` and is not renewed."""
    with service.engine.begin() as conn:
        # Cancelling twice keeps the first cancellation time (the statement is idempotent).
        changed = conn.execute(update(subscriptions)
                               .where(subscriptions.c.user_id == user.id, subscriptions.c.cancelled_at.is_(None))
                               .values(cancelled_at=utc_now())).rowcount
    subscription = _load(service.engine, user.id)
    if changed:
        service.log.info("subscription cancelled", extra={"event": "cancelled", "user_id": user.id,
                                                          "plan": subscription.plan})
    return subscription


@router.get("/entitlements/{title_id}", responses={
    **UNAUTHORIZED, 404: {"description": "unknown_title"},
    502: {"description": "the catalog answered unexpectedly"},
    503: {"description": "the catalog is unreachable"}, 504: {"description": "the catalog is too slow"},
})
async def entitlement(title_id: TitleId, user: CurrentUser, service: Svc, request: Request) -> Entitlement:
    """Whether the caller may watch ``title_id`` now, and the reason."""
    required_tier = await _title_tier(service, title_id, _tiers(request))
    row = await service.run_db(partial(_find, user_id=user.id))
    plan_id: PlanId | None = None
    reason: Reason
    if row is None:
        reason = "no_subscription"
    else:
        plan_id = cast(PlanId, row.plan)
        if _subscription(row, utc_now()).status == "expired":
            reason = "subscription_expired"
        elif required_tier not in PLANS[row.plan].tiers:
            reason = "tier_not_in_plan"
        else:
            reason = "ok"
    entitled = reason == "ok"
    _checks(request).labels("allowed" if entitled else "denied", reason).inc()
    return Entitlement(title_id=title_id, entitled=entitled, reason=reason, plan=plan_id,
                       required_tier=required_tier)


def _tiers(request: Request) -> TtlCache[str, Tier]:
    return cast(TtlCache[str, Tier], request.app.state.title_tiers)


async def _title_tier(service: Service, title_id: str, tiers: TtlCache[str, Tier]) -> Tier:
    """The tier of ``title_id``: the catalog's answer of the last ``TIER_TTL_S`` seconds, else asked of it."""
    tier = tiers.get(title_id)
    if tier is None:
        tier = await _catalog_tier(service, title_id)
        tiers.put(title_id, tier)
    return tier


async def _catalog_tier(service: Service, title_id: str) -> Tier:
    """The tier of ``title_id``, asked of the catalog; 404 ``unknown_title`` if it has no such title."""
    response = await call(service, "GET", f"{service.settings.catalog_url}/titles/{title_id}")
    if response.status_code == 404:
        raise ApiError(404, "unknown_title", f"the catalog has no title {title_id!r}")
    if response.status_code != 200:
        raise ApiError(502, "dependency_failed", f"the catalog answered {response.status_code}")
    try:
        tier = response.json().get("tier")
    except (ValueError, AttributeError):
        # ValueError: not JSON; AttributeError: JSON but not an object.
        tier = None
    if tier not in PLANS["premium"].tiers:
        raise ApiError(502, "dependency_failed", "the catalog answered without a known tier")
    return cast(Tier, tier)


@router.post("/admin/subscriptions/{user_id}/expire", responses={**INTERNAL, **_NO_SUBSCRIPTION})
def expire(user_id: UserId, _: ServiceCaller, service: Svc) -> Subscription:
    """Internal: end ``user_id``'s subscription now (the lab's way to show what expiry does)."""
    with service.engine.begin() as conn:
        changed = conn.execute(update(subscriptions).where(subscriptions.c.user_id == user_id)
                               .values(expires_at=utc_now())).rowcount
    if not changed:
        raise ApiError(404, "no_subscription", f"user {user_id!r} has no subscription")
    service.log.info("subscription expired by admin", extra={"event": "admin_expired", "user_id": user_id})
    return _load(service.engine, user_id)


@router.put("/admin/subscriptions/{user_id}",
            responses={201: {"model": Subscription, "description": "created"}, **MALFORMED, **INTERNAL})
def put_subscription(user_id: UserId, body: SubscribeRequest, _: ServiceCaller, service: Svc,
                     response: Response) -> Subscription:
    """Internal: give ``user_id`` a fresh subscription to a plan (201 if it had none); for seeding."""
    subscription, created = _subscribe(service, user_id, body.plan)
    if created:
        response.status_code = 201
    return subscription


def build_app(settings: Settings | None = None) -> FastAPI:
    """The subscription app, with its ``ott_entitlement_checks_total`` metric."""
    settings = settings or Settings.from_env()
    app = create_app("subscription", [router], settings,
                     description="Plans, subscriptions and entitlement decisions.")
    service: Service = app.state.service
    checks = Counter("ott_entitlement_checks_total", "Entitlement decisions by result and reason",
                     ["result", "reason"], registry=service.registry)
    # Every series exists from the start, so rate() and dashboards see zeros instead of gaps.
    for result, reason in (("allowed", "ok"), ("denied", "no_subscription"),
                           ("denied", "subscription_expired"), ("denied", "tier_not_in_plan")):
        checks.labels(result, reason)
    app.state.entitlement_checks = checks
    app.state.title_tiers = TtlCache[str, Tier](max_entries=TIER_CACHE_SIZE, ttl_s=TIER_TTL_S)
    return app


def main() -> None:
    """``python -m ott.subscription``: serve subscriptions with settings from the environment."""
    run(build_app)


if __name__ == "__main__":
    main()
