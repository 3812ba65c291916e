"""catalog: the titles a viewer can browse, their tier, and where their streams are.

Anyone may list and read titles. The lab's tools write them over internal routes
(``X-Service-Token``): metadata with ``PUT /titles/{id}``, and — once the transcoder has published
the packaged renditions atomically — the playback locations with ``PUT /titles/{id}/playback``,
which also stamps ``published_at``.

Run it with ``python -m ott.catalog`` (settings from ``OTT_*`` variables, see :mod:`ott.settings`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    or_,
    select,
    update,
)

from ott.db import as_utc, metadata, upsert, utc_now
from ott.errors import INTERNAL, MALFORMED, Responses, not_found
from ott.internal import ServiceCaller
from ott.models import TITLE_ID_PATTERN, valid_text
from ott.service import Svc, create_app, run
from ott.settings import Settings

MAX_DURATION_S = 10_000_000  # ~115 days: far above any real title, far below a database integer's limit
MAX_PAGE = 1_000_000

titles = Table(
    "catalog_titles", metadata,
    Column("id", String(63), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("duration_s", Integer, nullable=False),
    Column("tier", String(16), nullable=False, index=True),
    Column("renditions", JSON, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

Tier = Literal["free", "basic", "premium"]


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" includes 596.0; strict validation would refuse it, so whole floats become ints
    # (1.5, "596" and true are still refused).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(valid_text)]
Description = Annotated[str, StringConstraints(max_length=5000), AfterValidator(valid_text)]
# Playback URLs may be absolute or origin-relative ("/vod/..."). A URL is printable ASCII (anything else
# is percent-encoded), which is also a pattern every regex engine, and so every client, reads alike.
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[!-~]+$")]
Pop = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(valid_text)]
TitleId = Annotated[str, Path(pattern=TITLE_ID_PATTERN, description="lower-case letters, digits and dashes")]


class Rendition(BaseModel):
    """Where one packaging of a title is played from."""

    model_config = ConfigDict(strict=True)
    kind: Literal["hls"]
    url: Url
    encrypted: bool
    pop: Pop | None = Field(default=None, description="the point of presence serving it, if pinned")


class TitleMeta(BaseModel):
    """A title's descriptive metadata, as the lab's seeding writes it."""

    model_config = ConfigDict(strict=True)
    name: Name
    description: Description = ""
    duration_s: Annotated[int, BeforeValidator(_whole_number)] = Field(ge=0, le=MAX_DURATION_S)
    tier: Tier


class Playback(BaseModel):
    """The playback locations of a published title."""

    model_config = ConfigDict(strict=True)
    renditions: list[Rendition] = Field(min_length=1, max_length=32)


class Title(BaseModel):
    id: str = Field(pattern=TITLE_ID_PATTERN)
    name: str
    description: str
    duration_s: int
    tier: Tier
    renditions: list[Rendition]
    published_at: datetime | None
    updated_at: datetime


class TitlePage(BaseModel):
    items: list[Title]
    page: int
    per_page: int
    total: int


router = APIRouter()

_NOT_FOUND: Responses = {404: {"description": "no title with this id"}}


def _title(row: Any) -> Title:
    return Title(id=row.id, name=row.name, description=row.description, duration_s=row.duration_s,
                 tier=row.tier, renditions=[Rendition.model_validate(r) for r in row.renditions],
                 published_at=as_utc(row.published_at), updated_at=as_utc(row.updated_at))


def _load(engine: Engine, title_id: str) -> Title:
    with engine.connect() as conn:
        row = conn.execute(select(titles).where(titles.c.id == title_id)).first()
    if row is None:
        raise not_found("title", title_id)
    return _title(row)


@router.get("/titles")
def list_titles(
    service: Svc,
    q: Annotated[str | None, Query(max_length=200, description="words in the name or description")] = None,
    tier: Tier | None = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> TitlePage:
    """Browse titles, by name (ignoring case) then id, optionally searched (case-insensitive) and filtered by tier."""
    conditions = []
    if q:
        # Bound parameters keep q data, never SQL; autoescape makes % and _ in q literal, not wildcards.
        conditions.append(or_(titles.c.name.icontains(q, autoescape=True),
                              titles.c.description.icontains(q, autoescape=True)))
    if tier is not None:
        conditions.append(titles.c.tier == tier)
    with service.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(titles).where(*conditions)).scalar_one()
        rows = conn.execute(select(titles).where(*conditions).order_by(func.lower(titles.c.name), titles.c.id)
                            .limit(per_page).offset((page - 1) * per_page)).all()
    return TitlePage(items=[_title(r) for r in rows], page=page, per_page=per_page, total=total)


@router.get("/titles/{title_id}", responses=_NOT_FOUND)
def get_title(title_id: TitleId, service: Svc) -> Title:
    """One title, with its playback locations once published."""
    return _load(service.engine, title_id)


@router.put("/titles/{title_id}",
            responses={201: {"model": Title, "description": "created"}, **MALFORMED, **INTERNAL})
def put_title(title_id: TitleId, body: TitleMeta, _: ServiceCaller, service: Svc, response: Response) -> Title:
    """Internal: create (201) or update (200) a title's metadata; its playback locations are kept."""
    values = {**body.model_dump(), "updated_at": utc_now()}
    # A new title has no playback locations until the transcoder publishes it.
    created = upsert(service.engine, titles, {"id": title_id}, values,
                     insert_only={"renditions": [], "published_at": None})
    service.log.info("title saved", extra={"event": "title_saved", "title_id": title_id, "created": created})
    if created:
        response.status_code = 201
    return _load(service.engine, title_id)


@router.put("/titles/{title_id}/playback", responses={**MALFORMED, **_NOT_FOUND, **INTERNAL})
def put_playback(title_id: TitleId, body: Playback, _: ServiceCaller, service: Svc) -> Title:
    """Internal: set where a title plays from and mark it published now (after the transcoder's publish)."""
    now = utc_now()
    renditions = [r.model_dump() for r in body.renditions]
    with service.engine.begin() as conn:
        changed = conn.execute(update(titles).where(titles.c.id == title_id)
                               .values(renditions=renditions, published_at=now, updated_at=now)).rowcount
    if not changed:
        raise not_found("title", title_id)
    service.log.info("title published", extra={"event": "title_published", "title_id": title_id,
                                               "renditions": len(renditions)})
    return _load(service.engine, title_id)


@router.delete("/titles/{title_id}", status_code=204, responses={**_NOT_FOUND, **INTERNAL})
def delete_title(title_id: TitleId, _: ServiceCaller, service: Svc) -> None:
    """Internal: remove a title from the catalog."""
    with service.engine.begin() as conn:
        deleted = conn.execute(delete(titles).where(titles.c.id == title_id)).rowcount
    if not deleted:
        raise not_found("title", title_id)
    service.log.info("title deleted", extra={"event": "title_deleted", "title_id": title_id})


def build_app(settings: Settings | None = None) -> FastAPI:
    """The catalog app."""
    settings = settings or Settings.from_env()
    return create_app("catalog", [router], settings,
                      description="Titles: metadata, tier and playback locations.")


def main() -> None:
    """``python -m ott.catalog``: serve the catalog with settings from the environment."""
    run(build_app)


if __name__ == "__main__":
    main()
