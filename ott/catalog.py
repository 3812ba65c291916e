"""catalog: the titles a viewer can browse, their tier, and where their streams are.

Anyone may list and read titles. The lab's tools write them over internal routes
(``X-Service-Token``): metadata with ``PUT /titles/{id}``, and — once the transcoder has published
the packaged renditions atomically — the playback locations with ``PUT /titles/{id}/playback``,
which also stamps ``published_at``.

Run it with ``python -m ott.catalog`` (settings from ``OTT_*`` variables, see :mod:`ott.settings`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Response
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
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ott.db import metadata
from ott.errors import not_found
from ott.internal import ServiceCaller
from ott.service import Service, create_app, serve, service_of
from ott.settings import Settings

TITLE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
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


def _encodable(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be stored as UTF-8, so refuse them here.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" includes 596.0; strict validation would refuse it, so whole floats become ints
    # (1.5, "596" and true are still refused).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_encodable)]
Description = Annotated[str, StringConstraints(max_length=5000), AfterValidator(_encodable)]
# Playback URLs may be absolute or origin-relative ("/vod/..."). A URL is printable ASCII (anything else
# is percent-encoded), which is also a pattern every regex engine, and so every client, reads alike.
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[!-~]+$")]
Pop = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_encodable)]
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


Svc = Annotated[Service, Depends(service_of)]
router = APIRouter()

_MALFORMED: dict[int | str, dict[str, Any]] = {400: {"description": "the body is not valid JSON"}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no title with this id"}}
_INTERNAL: dict[int | str, dict[str, Any]] = {
    401: {"description": "no X-Service-Token"}, 403: {"description": "wrong X-Service-Token"},
}


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _title(row: Any) -> Title:
    updated = _aware(row.updated_at)
    assert updated is not None  # the column is NOT NULL
    return Title(id=row.id, name=row.name, description=row.description, duration_s=row.duration_s,
                 tier=row.tier, renditions=[Rendition.model_validate(r) for r in row.renditions],
                 published_at=_aware(row.published_at), updated_at=updated)


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
            responses={201: {"model": Title, "description": "created"}, **_MALFORMED, **_INTERNAL})
def put_title(title_id: TitleId, body: TitleMeta, _: ServiceCaller, service: Svc, response: Response) -> Title:
    """Internal: create (201) or update (200) a title's metadata; its playback locations are kept."""
    values = {**body.model_dump(), "updated_at": _now()}
    created = False
    try:
        with service.engine.begin() as conn:
            changed = conn.execute(update(titles).where(titles.c.id == title_id).values(**values)).rowcount
            if not changed:
                conn.execute(insert(titles).values(id=title_id, renditions=[], published_at=None, **values))
                created = True
    except IntegrityError:
        # A concurrent PUT inserted this id between our UPDATE and INSERT: it exists now, so update it.
        with service.engine.begin() as conn:
            conn.execute(update(titles).where(titles.c.id == title_id).values(**values))
        created = False
    service.log.info("title saved", extra={"event": "title_saved", "title_id": title_id, "created": created})
    if created:
        response.status_code = 201
    return _load(service.engine, title_id)


@router.put("/titles/{title_id}/playback", responses={**_MALFORMED, **_NOT_FOUND, **_INTERNAL})
def put_playback(title_id: TitleId, body: Playback, _: ServiceCaller, service: Svc) -> Title:
    """Internal: set where a title plays from and mark it published now (after the transcoder's publish)."""
    now = _now()
    renditions = [r.model_dump() for r in body.renditions]
    with service.engine.begin() as conn:
        changed = conn.execute(update(titles).where(titles.c.id == title_id)
                               .values(renditions=renditions, published_at=now, updated_at=now)).rowcount
    if not changed:
        raise not_found("title", title_id)
    service.log.info("title published", extra={"event": "title_published", "title_id": title_id,
                                               "renditions": len(renditions)})
    return _load(service.engine, title_id)


@router.delete("/titles/{title_id}", status_code=204, responses={**_NOT_FOUND, **_INTERNAL})
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
    settings = Settings.from_env()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
