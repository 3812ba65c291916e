"""What every OTT service shares: the app factory, metrics, JSON logs, JSON errors, limits.

A service module builds its routes and calls :func:`create_app`; ``python -m ott.<name>``
runs it with :func:`run`. Every app has ``/healthz`` (alive), ``/readyz`` (its database
answers), ``/metrics`` (Prometheus) and ``/openapi.json``, whose 4xx/5xx answers are all
described by :class:`ott.errors.ErrorBody`. Handlers reach the :class:`Service` as ``Svc``.

Example::

    router = APIRouter()

    @router.get("/hello")
    def hello(service: Svc) -> dict[str, str]:
        return {"hello": service.name}

    app = create_app("demo", [router], Settings.from_env())
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ott import db
from ott.calls import Peers
from ott.errors import ApiError, document_error_bodies, error_body
from ott.settings import Settings

# Every answer names the release that gave it (OTT_VERSION): a canary's split is measured by it.
VERSION_HEADER = b"x-ott-version"
T = TypeVar("T")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
               422: "invalid_request", 429: "too_many_requests"}
# The methods a 405's Allow may name (RFC 9110 and PATCH), in the order it names them.
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


# Attributes every LogRecord has: an `extra` key among them makes logging raise KeyError.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class EventLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose ``extra`` fields never collide with LogRecord's own (``created``, ``name`` ...).

    A colliding key is kept with a trailing underscore, so a log call can never fail a request.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        if extra:
            kwargs["extra"] = {(f"{k}_" if k in _RESERVED else k): v for k, v in extra.items()}
        return msg, kwargs


class _RequestLines:
    """The log lines of one request, held until it is answered and then written in one piece."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._open = True
        self._lock = threading.Lock()

    def add(self, line: str) -> bool:
        """Hold ``line``; False once the request was answered (the caller writes it at once)."""
        with self._lock:
            if self._open:
                self._lines.append(line)
            return self._open

    def close(self) -> str:
        """Every line held so far, as one text; later lines are no longer held."""
        with self._lock:
            self._open = False
            text, self._lines = "".join(self._lines), []
        return text


# The lines of the request being handled (threads of the pool run with a copy of its context).
_request_lines: ContextVar[_RequestLines | None] = ContextVar("ott_request_lines", default=None)


class RequestLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines a request logs in one write once it is answered; any other line at once.

    One write per request instead of one per line: whoever reads the service's output (supervisord
    on the local target) wakes once per request. The lines are written before the answer's last
    byte is sent, so a client that has its answer can read them; a task a request left running
    logs at once after that.
    """

    def emit(self, record: logging.LogRecord) -> None:
        held = _request_lines.get()
        if held is None:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - what logging's own emit does: report it, never fail the caller
            self.handleError(record)
            return
        if not held.add(line):
            self.write(line)

    def write(self, text: str) -> None:
        if text:
            with self.lock or contextlib.nullcontext():
                self.stream.write(text)
                self.flush()


def configure_logging(service: str, level: str = "INFO") -> EventLogger:
    """JSON lines on stdout, one object per event, with the service's name in each."""
    handler = RequestLogHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "time", "levelname": "level"},
                                       static_fields={"service": service}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return EventLogger(logging.getLogger(f"ott.{service}"), {})


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before the app sees them.

    A declared Content-Length is checked first; a streamed body is read up to the limit and
    replayed to the app (the limit is small, so buffering costs little), because an error raised
    from ``receive`` would be swallowed by the framework's body parsing as a 400.

    The ``streamed`` paths are passed through untouched: their handlers read the body as a stream
    (a file upload, far larger than this limit) and enforce a limit of their own as they read.
    """

    def __init__(self, app: ASGIApp, limit: int, streamed: Collection[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.streamed = frozenset(streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            error_body(413, "body_too_large", f"request bodies are limited to {self.limit} bytes"), status_code=413
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class Observe:
    """Counts, times and logs every request (not the health and metrics probes) by route and status.

    A plain ASGI middleware: ``@app.middleware("http")`` would run each request through an extra
    task and stream pair, a cost every request of every service paid.
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        self.version = service.settings.version.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        held = _RequestLines()
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self._record(scope, status, time.perf_counter() - started)
                self.service.log_handler.write(held.close())

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Which release answered: a client measures a canary's split by it.
                message = {**message, "headers": [*message.get("headers", ()), (VERSION_HEADER, self.version)]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte: a client with its answer finds the request's lines
            await send(message)

        token = _request_lines.set(held)
        try:
            await self.app(scope, receive, observed)
        finally:
            record()
            _request_lines.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        # The router leaves the matched route in the scope.
        route = getattr(scope.get("route"), "path", "<unmatched>")
        if route in ("/metrics", "/healthz", "/readyz"):
            return
        service, method = self.service, scope["method"]
        service.requests.labels(service.name, route, method, str(status)).inc()
        service.latency.labels(service.name, route, method).observe(elapsed)
        service.log.info("request", extra={"method": method, "path": scope["path"], "route": route, "status": status,
                                           "duration_ms": round(elapsed * 1000, 2)})


class Service:
    """A running service's shared parts, reachable from handlers as ``request.app.state.service``."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.log = configure_logging(name, settings.log_level)
        self.log_handler = cast(RequestLogHandler, logging.getLogger().handlers[0])
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ott_http_requests_total", "HTTP requests by route and status",
            ["service", "route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "ott_http_request_duration_seconds", "HTTP request latency by route",
            ["service", "route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.engine: Engine = db.connect(settings.database_url)
        # The same database for short-lived session state that expires on its own within minutes (CAS's
        # stream sessions, license's playback authorisations): its commits skip the fsync (see ott.db), so
        # the play path's writes stop holding the shared write lock through a disk flush. A power loss may
        # forget their last moments; a process crash never does. No connection until first used.
        self.session_engine: Engine = db.connect(settings.database_url, synchronous="NORMAL")
        # Its twin that never waits for another process's write lock (SQLite only), for run_db's first try.
        self.quick_engine: Engine | None = None
        if db.is_sqlite(self.session_engine):
            self.quick_engine = db.connect(settings.database_url, synchronous="NORMAL", wait=False)
        self.lock_waits = Counter(
            "ott_db_lock_waits", "Database work (run_db) that found the write lock taken and waited in the thread pool",
            registry=self.registry,
        )
        # Clients of the other services, pooled for the service's life (closed on shutdown).
        self.peers = Peers(settings.call_timeout)
        # Set by ott.security on first use (auth sets its own, key-based, at startup).
        self.verifier: Any = None

    async def run_db(self, work: Callable[[Engine], T]) -> T:
        """``work(engine)``, a short read or a write of session state, without a thread-pool hop when it can.

        A play makes a handful of sub-millisecond SQLite statements; handing each batch to a worker
        thread and back costs more than the statements. So with SQLite ``work`` first runs right on
        the event loop on ``quick_engine``, whose statements never wait: when the database is free
        (a write lock held by no other process, always for a read in WAL mode) it is done there.
        When another process holds the write lock, that attempt fails at once and is rolled back,
        and ``work`` runs again in the thread pool on ``session_engine``, which waits for the lock
        there (``db.BUSY_TIMEOUT_S``) without blocking the loop; ``ott_db_lock_waits_total`` counts
        those. ``work`` must therefore be one transaction of its own that may run twice. With another
        database every ``work`` runs in the thread pool (its statements are network round trips).
        """
        if self.quick_engine is not None:
            try:
                return work(self.quick_engine)
            except OperationalError as exc:
                if not db.is_busy(exc):
                    raise
            self.lock_waits.inc()
        return await run_in_threadpool(work, self.session_engine)

    def dispose(self) -> None:
        """Close the engines' connections (the app's shutdown)."""
        self.engine.dispose()
        self.session_engine.dispose()
        if self.quick_engine is not None:
            self.quick_engine.dispose()


class _App(FastAPI):
    """FastAPI whose OpenAPI document describes every error answer with :class:`ott.errors.ErrorBody`."""

    def openapi(self) -> dict[str, Any]:
        cached = self.openapi_schema
        schema = super().openapi()
        # FastAPI rebuilds the document when routes change; only a new one needs the error bodies.
        if schema is not cached:
            document_error_bodies(schema)
        return schema


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method ``app`` serves on the path of ``scope``, across all the routes that match it.

    Each standard method is tried against the app's routes as the router itself would match it:
    FastAPI keeps included routers' routes behind its own route objects, so asking routes for their
    ``methods`` would miss them.
    """
    allowed = []
    for method in _METHODS:
        probe: Scope = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""),
                        "method": method, "headers": scope.get("headers", [])}
        if any(route.matches(probe)[0] is Match.FULL for route in app.routes):
            allowed.append(method)
    return allowed


def create_app(
    name: str,
    routers: Sequence[APIRouter],
    settings: Settings,
    *,
    description: str = "",
    on_startup: Callable[[Service], None] | None = None,
    on_shutdown: Callable[[Service], None] | None = None,
    streamed_bodies: Collection[str] = (),
) -> FastAPI:
    """A FastAPI app with the shared middleware, error handlers and endpoints.

    ``streamed_bodies`` are paths whose handlers stream the request body and limit it themselves
    (see :class:`BodyLimit`); every other body is limited to ``OTT_MAX_BODY``.
    """
    service = Service(name, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        db.create_tables(service.engine)
        if on_startup is not None:
            on_startup(service)
        service.log.info("started", extra={"port": settings.port})
        yield
        if on_shutdown is not None:
            on_shutdown(service)
        await service.peers.aclose()
        service.dispose()

    app = _App(title=f"ott {name}", description=description, version="0.1.0", lifespan=lifespan)
    app.state.service = service
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            db.ping(service.engine)
        except Exception as exc:  # noqa: BLE001 - any failure of the database means not ready
            return JSONResponse(error_body(503, "not_ready", f"database: {exc}"), status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Observe, service=service)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                  for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse(error_body(400, "malformed_json", "the request body is not valid JSON", errors),
                                status_code=400)
        return JSONResponse(error_body(422, "invalid_request", "the request does not match the API", errors),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only; with GET, PUT and
            # DELETE as separate routes a client would never learn PUT and DELETE exist (RFC 9110 §15.5.6).
            methods = allowed_methods(app, request.scope)
            if methods:
                headers["Allow"] = ", ".join(methods)
        return JSONResponse(error_body(exc.status_code, code, str(exc.detail)), status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        service.log.exception("unhandled error")
        return JSONResponse(error_body(500, "internal", "the service failed; see its log"), status_code=500)

    app.add_middleware(BodyLimit, limit=settings.max_body, streamed=streamed_bodies)
    return app


def service_of(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def _service(request: Request) -> Service:
    # async: a sync dependency would cost each request a trip through the thread pool.
    return service_of(request)


# A handler's parameter ``service: Svc`` is the app's Service.
Svc = Annotated[Service, Depends(_service)]


def serve(app: FastAPI, settings: Settings) -> None:
    """Run ``app`` on uvicorn at the settings' host and port (or unix socket) until it is stopped."""
    if settings.uds:
        # A socket file left by a killed replica would make the bind fail.
        Path(settings.uds).unlink(missing_ok=True)
        uvicorn.run(app, uds=settings.uds, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        return
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)


def run(build_app: Callable[[Settings], FastAPI]) -> None:
    """What ``python -m ott.<name>`` does: build the app from the ``OTT_*`` settings and serve it."""
    settings = Settings.from_env()
    serve(build_app(settings), settings)
