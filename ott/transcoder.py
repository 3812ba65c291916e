"""The transcoder: runs transcode jobs one at a time, as a service (local target) or once (a Kubernetes Job).

A job, start to end:

1. for an encrypted title, a new content-key *version* from license (``POST /admin/keys/{title}``);
2. the media pipeline (:func:`ott.media.publish.pipeline`): inspect, one ffmpeg for the whole
   ladder into staging, playlists, verification, and one atomic rename into the origin's media root;
3. only then the catalog: the title's metadata (created if new) and its playback location.

If step 2 fails nothing is published, the new key version is deleted and the catalog is not
touched. Every job ends ``published`` or ``failed`` with an error code and a readable message.

Service (``python -m ott.transcoder``, or ``serve``); every route needs the lab's service token
(``X-Service-Token``, :mod:`ott.internal`)::

    POST   /sources?name=clip.mp4   the file's bytes (video/* or application/octet-stream) -> 201 Source
    GET    /sources                 the uploads waiting for a job, and the size limit
    DELETE /sources/{id}            an upload no job will use
    POST   /jobs      {"source_id": "<from POST /sources>", "title_id": "lab-clock", "encrypt": true}  -> 202 Job
    GET    /jobs/{id} the job: state, progress (fraction, speed, ETA), result or error
    GET    /jobs      the newest jobs

A source reaches the transcoder as an upload, on every target: the caller's files are not on the
transcoder's filesystem (a pod's certainly are not). An upload is streamed into the uploads folder
(``<media root>/.uploads``, a dot-folder the origin never serves, on the volume the transcoder
writes anyway), limited to ``OTT_MAX_SOURCE_BYTES`` (413), fsynced, probed with ffprobe (not a
usable video: 422, the file deleted) and only then renamed into place and listed. Each upload
feeds one job and is deleted when that job ends, however it ends; one no job claimed is deleted
after ``OTT_SOURCE_TTL`` seconds. A transcoder that dies mid-upload leaves only a partial file,
removed when it starts again.

Jobs live in the shared database: queued jobs survive a restart and run then; a job that was
running when the transcoder died ends ``failed`` (``interrupted``) and its staging folder is
removed (its ffmpeg died with it: see :func:`ott.media.process.die_with_parent`).

One-shot (``python -m ott.transcoder run --sample-seconds 20 --title sample``): the Kubernetes
Job. It serves ``/metrics`` while it works and ``OTT_METRICS_LINGER`` seconds after, for a last
scrape, and exits 0 when the title is published, 1 otherwise.

Metrics: ``ott_transcode_jobs_total{outcome}`` (published, rejected: bad input, failed,
interrupted), ``ott_transcode_speed_ratio`` (× realtime), ``ott_transcode_rung_bytes{title,rung}``
and ``ott_transcode_published_bytes_total{rung}``, ``ott_transcode_jobs_queued`` and
``ott_transcode_jobs_running``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Column, Float, Index, Integer, String, Table, delete, insert, select, update
from starlette.requests import ClientDisconnect

from ott.db import metadata
from ott.errors import CORE_ERRORS, ApiError, error_responses
from ott.internal import require_service_token
from ott.media import ladder as ladders
from ott.media import probe, publish
from ott.media.errors import InvalidTitleId, LadderError, MediaError, SourceError
from ott.models import TITLE_ID_PATTERN
from ott.service import Service, create_app, serve
from ott.settings import Settings

Outcome = Literal["published", "rejected", "failed", "interrupted"]
OUTCOMES: tuple[Outcome, ...] = ("published", "rejected", "failed", "interrupted")
State = Literal["queued", "running", "published", "failed"]
SPEED_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# How long a job may wait for ffmpeg, at most (the encoder's own default grows with the duration).
MAX_ENCODE_S = 6 * 3600
# Uploaded sources: <media root>/.uploads/<id><suffix>, written first under .uploads/partial/.
UPLOADS_DIR = ".uploads"
PARTIAL_DIR = "partial"
# How often the worker, idle, looks for uploads past OTT_SOURCE_TTL.
SWEEP_S = 60.0
# Upload bytes are written in pieces of about this size (fewer thread hops than one per chunk).
WRITE_BYTES = 1024 * 1024
UPLOAD_TYPES = ("video/", "application/octet-stream")
SOURCE_ID_PATTERN = r"^[0-9a-f]{32}$"

jobs_table = Table(
    "transcoder_jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("title_id", String(63), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("outcome", String(16), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", String(4000), nullable=True),
    Column("result", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_transcoder_jobs_created", "created_at"),
)

sources_table = Table(
    "transcoder_sources", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    # The job that uses it: set once, in the transaction that queues the job.
    Column("job_id", String(32), nullable=True),
)


# -- the API's bodies -----------------------------------------------------------------------


class JobOptions(BaseModel):
    """How to transcode a source and list it in the catalog (the one-shot mode's whole job)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    title_id: str = Field(pattern=TITLE_ID_PATTERN, description="the catalog title id; names the media folder")
    encrypt: bool = Field(default=False, description="AES-128 TS with a key from license, instead of clear fMP4")
    ladder: str = Field(default="default", pattern=r"^[a-z0-9_-]{1,32}$", description="a ladder of ladder.yml")
    preset: str | None = Field(default=None, pattern=r"^[a-z]{1,16}$",
                               description="an x264 preset instead of the ladder's (e.g. ultrafast)")
    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="the title's name in the catalog (a new title defaults to its id)")
    description: str | None = Field(default=None, max_length=2000)
    tier: Literal["free", "basic", "premium"] | None = Field(
        default=None, description="which plans may play it (a new title defaults to free)")


class JobSpec(JobOptions):
    """A job of the service: an uploaded source (``POST /sources``) and what to make of it."""

    source_id: str = Field(pattern=SOURCE_ID_PATTERN, description="the id POST /sources answered")


class Source(BaseModel):
    """An uploaded source file, probed and waiting for (or used by) its one job."""

    id: str
    name: str = Field(description="the file's name as the uploader gave it; error messages use it")
    bytes: int
    duration_s: float
    width: int
    height: int
    created_at: float
    expires_at: float | None = Field(description="when it is deleted unless a job uses it first")
    job_id: str | None = Field(description="the job using it; it is deleted when that job ends")


class SourceList(BaseModel):
    max_bytes: int = Field(description="the largest upload accepted (OTT_MAX_SOURCE_BYTES)")
    items: list[Source]


class Progress(BaseModel):
    fraction: float = Field(description="0..1 of the source encoded")
    speed: float = Field(description="encode speed, × realtime")
    eta_s: float | None = Field(description="seconds left, when known")


class RungResult(BaseModel):
    name: str
    resolution: str
    bytes: int
    segments: int
    peak_bps: int
    average_bps: int


class JobResult(BaseModel):
    master_url: str
    path: str
    encrypted: bool
    key_uri: str | None
    speed: float = Field(description="encode speed, × realtime, over the whole ffmpeg run")
    encode_seconds: float
    duration_s: float
    rungs: list[RungResult]
    command: list[str]


class Job(BaseModel):
    id: str
    title_id: str
    spec: JobSpec
    source_name: str = Field(description="the uploaded file's name")
    state: State
    outcome: Outcome | None
    error_code: str | None
    error_message: str | None
    progress: Progress | None
    result: JobResult | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    items: list[Job]


_ERRORS = {**CORE_ERRORS, 401: "no X-Service-Token", 403: "wrong X-Service-Token", 404: "no job with this id",
           409: "the source is already used by a job", 422: "the job is not one the transcoder can run"}
_SOURCE_ERRORS = {**_ERRORS, 404: "no source with this id", 409: "a job uses this source",
                  413: "the file is larger than OTT_MAX_SOURCE_BYTES",
                  415: "not sent as video/* or application/octet-stream",
                  422: "not a video the transcoder can take (the problem is named)",
                  507: "the transcoder's volume is full"}
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="a job id from POST /jobs")]
SourceId = Annotated[str, PathParam(pattern=SOURCE_ID_PATTERN, description="a source id from POST /sources")]


# -- running a job --------------------------------------------------------------------------


class JobFailed(Exception):
    """A job ended without a publish: ``outcome``, an error ``code`` and a readable message."""

    def __init__(self, outcome: Outcome, code: str, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.code = code
        self.message = message


class Cancelled(Exception):
    """Raised from the progress callback to stop ffmpeg when the transcoder shuts down."""


def error_code(kind: type[Exception]) -> str:
    """``TruncatedMedia`` → ``truncated_media``: an error class, as an API code."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


class Metrics:
    """The transcoder's Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter("ott_transcode_jobs_total", "transcode jobs ended, by outcome", ["outcome"],
                            registry=registry)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)
        self.speed = Histogram("ott_transcode_speed_ratio", "encode speed of published jobs, × realtime",
                               buckets=SPEED_BUCKETS, registry=registry)
        self.rung_bytes = Gauge("ott_transcode_rung_bytes", "bytes of each rung of a title's latest publish",
                                ["title", "rung"], registry=registry)
        self.published_bytes = Counter("ott_transcode_published_bytes_total", "bytes published, by rung",
                                       ["rung"], registry=registry)
        self.queued = Gauge("ott_transcode_jobs_queued", "jobs waiting to run", registry=registry)
        self.running = Gauge("ott_transcode_jobs_running", "jobs running (0 or 1)", registry=registry)


@dataclass
class Runner:
    """Runs one job against license, the media root and catalog; knows nothing of queues or HTTP."""

    settings: Settings
    metrics: Metrics
    log: Any
    cancel: threading.Event = field(default_factory=threading.Event)

    def run(self, job_id: str, spec: JobOptions, source: Path, on_progress: Callable[[Progress], None], *,
            source_name: str | None = None) -> JobResult:
        """Publish ``source`` as ``spec``'s title; raise :class:`JobFailed` (after cleaning up) otherwise.

        ``source_name`` replaces the source's path in error messages (an upload's stored path means
        nothing to whoever sent it).
        """
        key_uri: str | None = None
        key: bytes | None = None
        kid: str | None = None
        try:
            ladder = ladders.load(spec.ladder)
            if spec.preset:
                ladder = ladder.with_preset(spec.preset)
            publish.validate_title_id(spec.title_id)
            if spec.encrypt:
                kid, key, key_uri = self._new_key(spec.title_id)

            def progress(fraction: float, speed: float, eta_s: float) -> None:
                if self.cancel.is_set():
                    raise Cancelled
                on_progress(Progress(fraction=fraction, speed=speed, eta_s=None if eta_s == float("inf") else eta_s))

            result = publish.pipeline(source, self.settings.media_root, spec.title_id, ladder,
                                      encrypt_key=key, key_uri=key_uri, on_progress=progress,
                                      timeout=None, staging_prefix=staging_prefix(spec.title_id, job_id))
        except Cancelled:
            self._forget_key(spec.title_id, kid)
            raise JobFailed("interrupted", "interrupted", "the transcoder was stopped during this job; nothing was "
                            "published: submit the job again") from None
        except (SourceError, InvalidTitleId, LadderError) as exc:
            self._forget_key(spec.title_id, kid)
            message = str(exc).replace(str(source.absolute()), source_name) if source_name else str(exc)
            raise JobFailed("rejected", error_code(type(exc)), message) from None
        except MediaError as exc:
            self._forget_key(spec.title_id, kid)
            raise JobFailed("failed", error_code(type(exc)), str(exc)) from None
        except ApiError as exc:  # license refused or unreachable: nothing was encoded
            raise JobFailed("failed", exc.code, f"license: {exc.message}") from None
        except Exception as exc:
            self._forget_key(spec.title_id, kid)
            self.log.exception("job crashed", extra={"event": "job_crashed", "job_id": job_id})
            raise JobFailed("failed", "internal_error", f"unexpected error: {exc!r}; see the transcoder's log") from exc

        rungs = [self._rung(result, r.name) for r in result.report.rungs]
        # The version folder is in the URL: everything under it is immutable, so CDNs cache it for long.
        relative = result.master.relative_to(self.settings.media_root).as_posix()
        master_url = f"{self.settings.origin_url.rstrip('/')}/{relative}"
        try:
            self._list_in_catalog(spec, result.source.duration, master_url, result.encrypted)
        except ApiError as exc:
            # The media is published (it replaced any old version); only the listing is missing.
            raise JobFailed("failed", "catalog_update_failed", f"the title's media is published at {master_url}, "
                            f"but the catalog was not updated ({exc.message}); submit the job again") from None
        for rung in rungs:
            self.metrics.rung_bytes.labels(spec.title_id, rung.name).set(rung.bytes)
            self.metrics.published_bytes.labels(rung.name).inc(rung.bytes)
        self.metrics.speed.observe(result.speed)
        return JobResult(master_url=master_url, path=str(result.path), encrypted=result.encrypted,
                         key_uri=key_uri, speed=round(result.speed, 3), encode_seconds=round(result.encode_seconds, 3),
                         duration_s=result.source.duration, rungs=rungs, command=result.command)

    # -- the services the job talks to ----------------------------------------------------

    def _call(self, method: str, url: str, body: Any = None) -> httpx.Response:
        headers = {"X-Service-Token": _service_token(self.settings)}
        try:
            return httpx.request(method, url, headers=headers, json=body, timeout=self.settings.call_timeout)
        except httpx.HTTPError as exc:
            raise ApiError(503, "dependency_unavailable", f"{httpx.URL(url).netloc.decode()} is unreachable: "
                           f"{exc!r}") from None

    def _expect(self, response: httpx.Response, *ok: int) -> Any:
        if response.status_code not in ok:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ApiError(502, "dependency_refused", f"{response.request.method} {response.request.url} answered "
                           f"{response.status_code}: {message}")
        return response.json() if response.content else None

    def _new_key(self, title_id: str) -> tuple[str, bytes, str]:
        body = self._expect(self._call("POST", f"{self.settings.license_url}/admin/keys/{title_id}"), 201)
        return str(body["kid"]), bytes.fromhex(body["key_hex"]), str(body["key_uri"])

    def _forget_key(self, title_id: str, kid: str | None) -> None:
        """Delete the key version made for a job that published nothing (best effort, logged)."""
        if kid is None:
            return
        try:
            self._expect(self._call("DELETE", f"{self.settings.license_url}/admin/keys/{title_id}/{kid}"), 204, 404)
        except ApiError as exc:
            self.log.warning("unused key version left", extra={"event": "key_left", "title_id": title_id,
                                                               "kid": kid, "problem": exc.message})

    def _list_in_catalog(self, spec: JobOptions, duration: float, master_url: str, encrypted: bool) -> None:
        url = f"{self.settings.catalog_url}/titles/{spec.title_id}"
        existing = self._call("GET", url)
        current = self._expect(existing, 200, 404) if existing.status_code == 200 else None
        meta = {
            "name": spec.name or (current["name"] if current else spec.title_id),
            "description": spec.description if spec.description is not None else (current or {}).get("description", ""),
            "duration_s": round(duration),
            "tier": spec.tier or (current["tier"] if current else "free"),
        }
        self._expect(self._call("PUT", url, meta), 200, 201)
        playback = {"renditions": [{"kind": "hls", "url": master_url, "encrypted": encrypted}]}
        self._expect(self._call("PUT", f"{url}/playback", playback), 200)

    def _rung(self, result: publish.PublishResult, name: str) -> RungResult:
        report = next(r for r in result.report.rungs if r.name == name)
        folder = result.path / name
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
        return RungResult(name=name, resolution=report.resolution, bytes=size, segments=report.segments,
                          peak_bps=report.peak_bps, average_bps=report.average_bps)


def staging_prefix(title_id: str, job_id: str) -> str:
    """The job's staging folder name prefix: findable (and removable) by job after a crash."""
    return f"{title_id}-{job_id[:12]}-"


def _service_token(settings: Settings) -> str:
    try:
        return Path(settings.service_token_file).read_text().strip()
    except OSError as exc:
        raise ApiError(503, "not_configured",
                       f"cannot read the service token (OTT_SERVICE_TOKEN_FILE): {exc}") from None


# -- the service: uploaded sources ------------------------------------------------------------


def _suffix(name: str) -> str:
    """The upload's file extension, kept when plain (some formats are recognised by it), else none."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _too_large(limit: int, declared: int | None) -> ApiError:
    size = f"{declared} bytes" if declared is not None else "larger than that"
    return ApiError(413, "source_too_large",
                    f"the transcoder takes sources of at most {limit} bytes (OTT_MAX_SOURCE_BYTES) and this one "
                    f"is {size}: send a shorter or smaller encode of it, or raise OTT_MAX_SOURCE_BYTES on the "
                    "transcoder", {"limit_bytes": limit, "declared_bytes": declared})


def _write_all(fh: Any, pieces: list[bytes]) -> None:
    fh.write(b"".join(pieces))


def _sync_file(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename into ``folder`` durable (its directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Sources:
    """The uploads folder and its table: receive (stream, limit, fsync, probe, rename), claim, remove, sweep.

    A source *counts* once it is renamed out of ``partial/`` and has its row; anything else found
    at start (a partial file, a file without a row, a row without a file, the source of a job that
    ended) is removed by :meth:`recover`.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.folder = (service.settings.media_root / UPLOADS_DIR).absolute()
        self.partial = self.folder / PARTIAL_DIR

    def path(self, source_id: str, name: str) -> Path:
        return self.folder / f"{source_id}{_suffix(name)}"

    async def receive(self, request: Request, name: str) -> Source:
        """Stream the request body into a new source; refuse it (leaving nothing) when it is not one."""
        limit = self.service.settings.max_source_bytes
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith(UPLOAD_TYPES):
            raise ApiError(415, "unsupported_media_type", f"the body is {kind or 'untyped'}: send the file's bytes "
                           "as the body with Content-Type video/mp4 (any video/*) or application/octet-stream")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, int(declared))
        source_id = uuid.uuid4().hex
        self.partial.mkdir(parents=True, exist_ok=True)
        partial = self.partial / f"{source_id}{_suffix(name)}"
        received = 0
        try:
            with partial.open("xb") as fh:
                pieces: list[bytes] = []
                buffered = 0
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise _too_large(limit, None)
                    pieces.append(chunk)
                    buffered += len(chunk)
                    if buffered >= WRITE_BYTES:
                        await asyncio.to_thread(_write_all, fh, pieces)
                        pieces, buffered = [], 0
                await asyncio.to_thread(_write_all, fh, pieces)
                await asyncio.to_thread(_sync_file, fh)
            info = await asyncio.to_thread(self._probe, partial, name)
            await asyncio.to_thread(self._keep, partial, source_id, name, received, info)
        except ClientDisconnect:
            self.service.log.warning("upload cut short", extra={"event": "upload_incomplete", "source_name": name,
                                                                "received_bytes": received})
            raise ApiError(400, "upload_incomplete", f"the connection closed after {received} bytes of {name}: "
                           "nothing was kept; send the file again") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ApiError(507, "insufficient_storage", f"the transcoder's volume filled up after {received} "
                               f"bytes of {name}: nothing was kept; delete unused uploads (GET /sources) or old "
                               "titles, or give the media volume more space") from None
            raise
        finally:
            partial.unlink(missing_ok=True)
        self.service.log.info("source received", extra={"event": "source_received", "source_id": source_id,
                                                         "source_name": name, "bytes": received})
        return self.get(source_id)

    def _keep(self, partial: Path, source_id: str, name: str, size: int, info: probe.SourceInfo) -> None:
        """Rename the probed file into place (durably), then list it: from here on it counts."""
        final = self.path(source_id, name)
        partial.replace(final)
        _sync_folder(self.folder)
        try:
            with self.service.engine.begin() as conn:
                conn.execute(insert(sources_table).values(
                    id=source_id, name=name, bytes=size, duration_s=info.duration, width=info.width,
                    height=info.height, created_at=time.time()))
        except Exception:
            final.unlink(missing_ok=True)
            raise

    def _probe(self, path: Path, name: str) -> probe.SourceInfo:
        # ffprobe only: the full decode (a cut mdat) is the job's, which reports it as the job's error.
        try:
            return probe.inspect(path, decode_check=False)
        except SourceError as exc:
            raise ApiError(422, error_code(type(exc)), str(exc).replace(str(path), name),
                           {"source_name": name}) from None

    def get(self, source_id: str) -> Source:
        with self.service.engine.connect() as conn:
            row = conn.execute(select(sources_table).where(sources_table.c.id == source_id)).first()
        if row is None:
            raise ApiError(404, "unknown_source", f"no uploaded source {source_id!r}: list them with GET /sources")
        return self._source(row)

    def listing(self) -> SourceList:
        with self.service.engine.connect() as conn:
            rows = conn.execute(select(sources_table).order_by(sources_table.c.created_at.desc())).all()
        return SourceList(max_bytes=self.service.settings.max_source_bytes, items=[self._source(r) for r in rows])

    def claim(self, conn: Any, source_id: str, job_id: str) -> str:
        """Give the source to ``job_id`` (in the caller's transaction); its name. Each source feeds one job."""
        row = conn.execute(select(sources_table).where(sources_table.c.id == source_id)).first()
        if row is None:
            raise ApiError(422, "unknown_source", f"no uploaded source {source_id!r}: upload the file with "
                           f"POST /sources first (an upload no job uses is deleted after "
                           f"{self.service.settings.source_ttl} s, OTT_SOURCE_TTL)")
        taken = conn.execute(update(sources_table).where(sources_table.c.id == source_id,
                                                         sources_table.c.job_id.is_(None)).values(job_id=job_id))
        if taken.rowcount != 1:
            raise ApiError(409, "source_in_use", f"source {source_id} ({row.name}) is used by job {row.job_id}: "
                           "each upload feeds one job; upload the file again for another job")
        return str(row.name)

    def delete_unused(self, source_id: str) -> None:
        with self.service.engine.begin() as conn:
            row = conn.execute(select(sources_table).where(sources_table.c.id == source_id)).first()
            if row is None:
                raise ApiError(404, "unknown_source", f"no uploaded source {source_id!r}: list them with GET /sources")
            if row.job_id is not None:
                raise ApiError(409, "source_in_use", f"job {row.job_id} uses source {source_id}: it is deleted "
                               "when that job ends")
            conn.execute(delete(sources_table).where(sources_table.c.id == source_id))
        self.path(row.id, row.name).unlink(missing_ok=True)

    def release(self, job_id: str) -> None:
        """Delete the source of a job that ended."""
        with self.service.engine.begin() as conn:
            rows = conn.execute(select(sources_table).where(sources_table.c.job_id == job_id)).all()
            conn.execute(delete(sources_table).where(sources_table.c.job_id == job_id))
        for row in rows:
            self.path(row.id, row.name).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete the sources no job claimed within ``OTT_SOURCE_TTL``; how many."""
        cutoff = time.time() - self.service.settings.source_ttl
        with self.service.engine.connect() as conn:
            expired = conn.execute(select(sources_table).where(sources_table.c.job_id.is_(None),
                                                               sources_table.c.created_at < cutoff)).all()
        removed = 0
        for row in expired:
            with self.service.engine.begin() as conn:
                # A job may have claimed it since: only an unclaimed one goes.
                gone = conn.execute(delete(sources_table).where(sources_table.c.id == row.id,
                                                                sources_table.c.job_id.is_(None))).rowcount
            if gone:
                self.path(row.id, row.name).unlink(missing_ok=True)
                removed += 1
                self.service.log.info("source expired", extra={"event": "source_expired", "source_id": row.id,
                                                               "source_name": row.name})
        return removed

    def recover(self) -> None:
        """At start, before any upload: keep exactly the sources that count and that a job may still use."""
        self.partial.mkdir(parents=True, exist_ok=True)
        for leftover in self.partial.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        ended = select(jobs_table.c.id).where(jobs_table.c.state.in_(("published", "failed")))
        with self.service.engine.begin() as conn:
            rows = conn.execute(select(sources_table)).all()
            for row in rows:
                job_ended = row.job_id is not None and conn.execute(ended.where(jobs_table.c.id == row.job_id)).first()
                if job_ended or not self.path(row.id, row.name).is_file():
                    conn.execute(delete(sources_table).where(sources_table.c.id == row.id))
            kept = {str(r.id) for r in conn.execute(select(sources_table.c.id)).all()}
        for entry in self.folder.iterdir():
            if entry.is_file() and entry.name[:32] not in kept:
                entry.unlink(missing_ok=True)
        self.sweep()

    def _source(self, row: Any) -> Source:
        expires = None if row.job_id else row.created_at + self.service.settings.source_ttl
        return Source(id=row.id, name=row.name, bytes=row.bytes, duration_s=row.duration_s, width=row.width,
                      height=row.height, created_at=row.created_at, expires_at=expires, job_id=row.job_id)


# -- the service: a queue and one worker thread ----------------------------------------------


class Transcoder:
    """Jobs in the database, a queue, and the one thread that runs them."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = Metrics(service.registry)
        self.runner = Runner(service.settings, self.metrics, service.log)
        self.sources = Sources(service)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.progress: dict[str, Progress] = {}
        self.thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> None:
        """Recover from a previous life, then start the worker."""
        with self.service.engine.begin() as conn:
            running = conn.execute(select(jobs_table).where(jobs_table.c.state == "running")).all()
            queued = conn.execute(select(jobs_table.c.id).where(jobs_table.c.state == "queued")
                                  .order_by(jobs_table.c.created_at)).scalars().all()
        for row in running:
            self._clean_staging(row.title_id, row.id)
            self._finish(row.id, "failed", "interrupted", error=("interrupted", "the transcoder stopped while this job "
                                                                  "ran; nothing was published: submit it again"))
        for job_id in queued:
            self.queue.put(job_id)
        self.metrics.queued.set(len(queued))
        self.sources.recover()
        self.thread = threading.Thread(target=self._work, name="transcoder-worker", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the running job (its ffmpeg is stopped, its staging removed) and the worker."""
        self.runner.cancel.set()
        self.queue.put(None)
        if self.thread is not None:
            self.thread.join(timeout)

    # API

    def submit(self, spec: JobSpec) -> Job:
        try:
            ladders.load(spec.ladder).with_preset(spec.preset) if spec.preset else ladders.load(spec.ladder)
        except LadderError as exc:
            raise ApiError(422, "unknown_ladder", str(exc)) from None
        job_id = uuid.uuid4().hex
        # One transaction: a job exists exactly when its source is claimed for it.
        with self.service.engine.begin() as conn:
            name = self.sources.claim(conn, spec.source_id, job_id)
            conn.execute(insert(jobs_table).values(id=job_id, title_id=spec.title_id,
                                                   spec={**spec.model_dump(), "source_name": name},
                                                   state="queued", created_at=time.time()))
        self.service.log.info("job queued", extra={"event": "job_queued", "job_id": job_id,
                                                   "title_id": spec.title_id})
        self.queue.put(job_id)
        self.metrics.queued.inc()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self.service.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).first()
        if row is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r}: list them with GET /jobs")
        return self._job(row)

    def recent(self, limit: int) -> list[Job]:
        with self.service.engine.connect() as conn:
            rows = conn.execute(select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)).all()
        return [self._job(r) for r in rows]

    # the worker

    def _work(self) -> None:
        while True:
            try:
                job_id = self.queue.get(timeout=SWEEP_S)
            except queue.Empty:
                self._sweep()
                continue
            if job_id is None or self.runner.cancel.is_set():
                return
            self.metrics.queued.dec()
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        with self.service.engine.begin() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).first()
            if row is None or row.state != "queued":
                return
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id)
                         .values(state="running", started_at=time.time()))
        spec, source_name = stored_spec(row.spec)
        source = self.sources.path(spec.source_id, source_name)
        if not source.is_file():
            self._finish(job_id, "failed", "rejected", error=(
                "source_gone", f"the uploaded source {source_name} is no longer on the transcoder (its volume was "
                "replaced, or the job predates uploads): upload the file again and submit a new job"))
            return
        self.metrics.running.set(1)
        self.service.log.info("job started", extra={"event": "job_started", "job_id": job_id,
                                                    "title_id": spec.title_id})
        try:
            result = self.runner.run(job_id, spec, source, lambda p: self.progress.__setitem__(job_id, p),
                                     source_name=source_name)
        except JobFailed as exc:
            self._finish(job_id, "failed", exc.outcome, error=(exc.code, exc.message))
        else:
            self._finish(job_id, "published", "published", result=result)
        finally:
            self.metrics.running.set(0)
            self.progress.pop(job_id, None)

    def _finish(self, job_id: str, state: State, outcome: Outcome, *, result: JobResult | None = None,
                error: tuple[str, str] | None = None) -> None:
        code, message = error if error else (None, None)
        # The source goes first: whoever sees the job ended also sees its upload gone. A crash in
        # between leaves the job running, which the next start marks interrupted.
        self.sources.release(job_id)
        with self.service.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(
                state=state, outcome=outcome, error_code=code, error_message=message,
                result=result.model_dump() if result else None, finished_at=time.time()))
        self.metrics.jobs.labels(outcome).inc()
        self.service.log.info("job ended", extra={"event": "job_ended", "job_id": job_id, "outcome": outcome,
                                                  "error_code": code, "problem": message})

    def _sweep(self) -> None:
        try:
            self.sources.sweep()
        except Exception:  # a failed sweep is retried next minute; the worker must live on
            self.service.log.exception("sweeping expired uploads failed", extra={"event": "sweep_failed"})

    def _clean_staging(self, title_id: str, job_id: str) -> None:
        staging = self.service.settings.media_root / publish.STAGING_DIR
        for leftover in staging.glob(staging_prefix(title_id, job_id) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _job(self, row: Any) -> Job:
        result = JobResult.model_validate(row.result) if row.result else None
        spec, source_name = stored_spec(row.spec)
        return Job(id=row.id, title_id=row.title_id, spec=spec, source_name=source_name, state=row.state,
                   outcome=row.outcome, error_code=row.error_code, error_message=row.error_message,
                   progress=self.progress.get(row.id), result=result,
                   created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


# A job row from before uploads named a path on the transcoder; read as a source that is gone.
_PATH_SOURCE_ID = "0" * 32


def stored_spec(raw: dict[str, Any]) -> tuple[JobSpec, str]:
    """A job row's spec and its source's name (kept next to the spec, as the upload is deleted with the job)."""
    fields = dict(raw)
    name = str(fields.pop("source_name", "") or "")
    path = fields.pop("source", None)
    if path is not None:
        fields.setdefault("source_id", _PATH_SOURCE_ID)
        name = name or Path(str(path)).name
    return JobSpec.model_validate(fields), name


# Uploads and jobs are internal calls: bytes written to the transcoder's volume, work for its encoder.
router = APIRouter(dependencies=[Depends(require_service_token)])


def _transcoder(request: Request) -> Transcoder:
    found: Transcoder = request.app.state.transcoder
    return found


_UPLOAD_BODY = {"requestBody": {"required": True, "description": "the file's bytes", "content": {
    "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
SourceName = Annotated[str, Query(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$",
                                  description="the file's name (no folders), for messages")]


@router.post("/sources", status_code=201, response_model=Source, openapi_extra=_UPLOAD_BODY,
             responses=error_responses(_SOURCE_ERRORS, 401, 403, 413, 415, 422, 507))
async def upload_source(request: Request, name: SourceName = "upload") -> Source:
    """Upload a source file (streamed, limited, probed); give its id to ``POST /jobs``."""
    return await _transcoder(request).sources.receive(request, name)


@router.get("/sources", response_model=SourceList, responses=error_responses(_SOURCE_ERRORS, 401, 403))
def list_sources(request: Request) -> SourceList:
    """The uploads on the transcoder (waiting for a job, or used by one) and the size limit."""
    return _transcoder(request).sources.listing()


@router.delete("/sources/{source_id}", status_code=204, response_class=Response,
               responses=error_responses(_SOURCE_ERRORS, 401, 403, 404, 409, 422))
def delete_source(source_id: SourceId, request: Request) -> Response:
    """Delete an upload no job uses (one a job uses goes when the job ends)."""
    _transcoder(request).sources.delete_unused(source_id)
    return Response(status_code=204)


@router.post("/jobs", status_code=202, response_model=Job, responses=error_responses(_ERRORS, 401, 403, 409, 422))
def submit(spec: JobSpec, request: Request) -> Job:
    """Queue a transcode; poll ``GET /jobs/{id}`` for its progress and result."""
    return _transcoder(request).submit(spec)


@router.get("/jobs/{job_id}", response_model=Job, responses=error_responses(_ERRORS, 401, 403, 404, 422))
def get_job(job_id: JobId, request: Request) -> Job:
    """One job: its state, progress while it runs, and its result or error."""
    return _transcoder(request).get(job_id)


@router.get("/jobs", response_model=JobList, responses=error_responses(_ERRORS, 401, 403))
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
    """The newest jobs first."""
    return JobList(items=_transcoder(request).recent(limit))


def build_app(settings: Settings | None = None) -> FastAPI:
    """The transcoder service's app (the worker starts with it)."""
    settings = settings or Settings.from_env()
    holder: dict[str, Transcoder] = {}

    def started(service: Service) -> None:
        holder["t"].start()

    def stopping(service: Service) -> None:
        holder["t"].stop()

    app = create_app("transcoder", [router], settings, on_startup=started, on_shutdown=stopping,
                     streamed_bodies=("/sources",),
                     description="Transcode jobs: uploaded source → HLS ladder → verified, atomic publish → catalog.")
    holder["t"] = app.state.transcoder = Transcoder(app.state.service)
    return app


# -- one-shot: the Kubernetes Job ------------------------------------------------------------


def run_once(spec: JobOptions, settings: Settings, *, source: Path | None = None,
             sample_seconds: float | None = None) -> int:
    """Run one job on ``source`` (a file here) or a fresh sample, serving ``/metrics`` meanwhile; 0 when published."""
    from ott.service import configure_logging

    log = configure_logging("transcoder", settings.log_level)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    server, thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    job_id = uuid.uuid4().hex
    try:
        with tempfile.TemporaryDirectory(prefix="ott-sample-") as scratch:
            if sample_seconds is not None:
                from ott.media.sample import make_sample

                source = make_sample(Path(scratch) / "sample.mp4", sample_seconds)
            if source is None:
                raise ValueError("run_once needs a source file or sample_seconds")
            metrics.running.set(1)
            last = [0.0]

            def report(p: Progress) -> None:
                if time.monotonic() - last[0] >= 5 or p.fraction >= 1:
                    last[0] = time.monotonic()
                    log.info("progress", extra={"event": "progress", "fraction": round(p.fraction, 3),
                                                "speed": p.speed, "eta_s": p.eta_s})

            try:
                result = Runner(settings, metrics, log).run(job_id, spec, source, report)
            except JobFailed as exc:
                metrics.jobs.labels(exc.outcome).inc()
                print(json.dumps({"state": "failed", "outcome": exc.outcome, "error_code": exc.code,
                                  "message": exc.message}), flush=True)
                return 1
            finally:
                metrics.running.set(0)
            metrics.jobs.labels("published").inc()
            print(json.dumps({"state": "published", **result.model_dump(exclude={"command"})}), flush=True)
            return 0
    finally:
        if settings.metrics_linger > 0:
            time.sleep(settings.metrics_linger)
        server.shutdown()
        thread.join(timeout=5)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ott.transcoder`` (``serve``, the default, or ``run``)."""
    parser = argparse.ArgumentParser(prog="python -m ott.transcoder", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    sub.add_parser("serve", help="the job service (the default)")
    once = sub.add_parser("run", help="run one job and exit (the Kubernetes Job)")
    source = once.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="the source file")
    source.add_argument("--sample-seconds", type=float, help="transcode a fresh sample clip of this length")
    once.add_argument("--title", required=True, help="the catalog title id")
    once.add_argument("--encrypt", action="store_true")
    once.add_argument("--ladder", default="default")
    once.add_argument("--preset")
    once.add_argument("--name")
    once.add_argument("--tier", choices=("free", "basic", "premium"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    if args.mode != "run":
        serve(build_app(settings), settings)
        return 0
    try:
        spec = JobOptions(title_id=args.title, encrypt=args.encrypt, ladder=args.ladder, preset=args.preset,
                          name=args.name, tier=args.tier)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = Path(args.source).absolute() if args.source else None
    return run_once(spec, settings, source=source, sample_seconds=args.sample_seconds)


if __name__ == "__main__":
    sys.exit(main())
