"""The service core every OTT API shares: errors as JSON, limits, metrics, safe logging."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from ott import db
from ott.errors import ApiError, ErrorBody, not_found
from ott.service import EventLogger, Svc, create_app
from ott.settings import Settings, SettingsError


class Item(BaseModel):
    name: str
    count: int


router = APIRouter()


@router.post("/items")
def create_item(item: Item) -> dict[str, object]:
    if item.name == "taken":
        raise ApiError(409, "conflict", "that name is taken", {"name": item.name})
    return {"name": item.name, "count": item.count}


@router.get("/boom")
def boom() -> None:
    raise RuntimeError("a bug")


# One path, three routes (as the services declare them): a 405 must name all three methods.
@router.get("/things/{thing_id}", responses={404: {"description": "no such thing"}})
def get_thing(thing_id: str, service: Svc) -> dict[str, str]:
    if thing_id == "missing":
        raise not_found("thing", thing_id)
    return {"id": thing_id, "service": service.name}


@router.put("/things/{thing_id}")
def put_thing(thing_id: str, item: Item) -> dict[str, str]:
    return {"id": thing_id}


@router.delete("/things/{thing_id}", status_code=204)
def delete_thing(thing_id: str) -> None:
    return None


@router.post("/events")
def log_events(service: Svc) -> dict[str, str]:
    # A sync handler: it runs in the thread pool, with a copy of the request's context.
    service.log.info("first event", extra={"event": "first"})
    service.log.info("second event", extra={"event": "second"})
    return {"logged": "2"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app("demo", [router], Settings(database_url=f"sqlite:///{tmp_path}/t.db", max_body=1024))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_success_and_api_error_bodies(client: TestClient) -> None:
    assert client.post("/items", json={"name": "a", "count": 1}).json() == {"name": "a", "count": 1}
    refused = client.post("/items", json={"name": "taken", "count": 1})
    assert refused.status_code == 409
    assert refused.json() == {"error": {"status": 409, "code": "conflict", "message": "that name is taken",
                                        "details": {"name": "taken"}}}


def test_malformed_json_is_400_and_wrong_types_422(client: TestClient) -> None:
    bad = client.post("/items", content=b'{"name": "a", ', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
    wrong = client.post("/items", json={"name": "a", "count": "many"})
    assert wrong.status_code == 422 and wrong.json()["error"]["details"][0]["where"] == "body.count"
    missing = client.post("/items", json={"name": "a"})
    assert missing.status_code == 422


def test_bodies_over_the_limit_are_413_declared_or_streamed(client: TestClient) -> None:
    big = json.dumps({"name": "x" * 2000, "count": 1})
    assert client.post("/items", content=big, headers={"Content-Type": "application/json"}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware must count
        for _ in range(4):
            yield b" " * 600

    streamed = client.post("/items", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"


def test_unknown_routes_and_crashes_answer_json(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    crash = client.get("/boom")
    assert crash.status_code == 500 and crash.json()["error"]["code"] == "internal"


def test_metrics_count_routes_by_template_and_status(client: TestClient) -> None:
    client.post("/items", json={"name": "a", "count": 1})
    client.post("/items", json={"name": "taken", "count": 1})
    client.get("/nope")
    text = client.get("/metrics").text
    assert 'ott_http_requests_total{method="POST",route="/items",service="demo",status="200"} 1.0' in text
    assert 'ott_http_requests_total{method="POST",route="/items",service="demo",status="409"} 1.0' in text
    assert 'route="<unmatched>"' in text
    assert 'ott_http_request_duration_seconds_count{method="POST",route="/items",service="demo"} 2.0' in text


def test_readiness_reports_the_database(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/healthz").status_code == 200


def test_log_extras_that_collide_with_logrecord_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLogger(logging.getLogger("ott.test"), {})
    with caplog.at_level(logging.INFO):
        log.info("subscribed", extra={"created": True, "name": "n", "plan": "basic"})
    record = caplog.records[-1]
    assert record.created_ is True and record.name_ == "n" and record.plan == "basic"  # type: ignore[attr-defined]


class Writes:
    """A stdout that remembers each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if '"name": "httpx"' not in text:  # the test client's own lines
            self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_requests_log_lines_are_written_in_one_write_before_its_answer(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = Writes()
    monkeypatch.setattr("sys.stdout", out)
    app = create_app("demo", [router], Settings(database_url=f"sqlite:///{tmp_path}/t.db"))
    service = app.state.service
    with TestClient(app, raise_server_exceptions=False) as client:
        out.writes.clear()  # the startup's lines
        service.log.info("outside any request")
        assert len(out.writes) == 1
        assert client.post("/events").status_code == 200
        assert len(out.writes) == 2  # written by the time the answer arrived
        lines = [json.loads(line) for line in out.writes[1].splitlines()]
        assert [line["message"] for line in lines] == ["first event", "second event", "request"]
        assert (lines[2]["route"], lines[2]["status"]) == ("/events", 200)
        # A crash: its request line at once, then the crash handler's (outside the request) at once too.
        assert client.get("/boom").status_code == 500
        assert [json.loads(line)["message"] for line in "".join(out.writes[2:]).splitlines()] == [
            "request", "unhandled error"]


def test_settings_from_environment() -> None:
    settings = Settings.from_env({"OTT_PORT": "9000", "OTT_STREAM_LIMIT": "3", "OTT_HOST": ""})
    assert (settings.port, settings.stream_limit, settings.host) == (9000, 3, "127.0.0.1")
    with pytest.raises(SettingsError, match="OTT_PORT='http' is not a valid int"):
        Settings.from_env({"OTT_PORT": "http"})


def test_405_allows_every_method_served_on_the_path(client: TestClient) -> None:
    for method in ("PATCH", "POST"):
        refused = client.request(method, "/things/t1")
        assert refused.status_code == 405
        # Starlette alone would answer "Allow: GET", the first route's methods only.
        assert refused.headers["allow"] == "DELETE, GET, PUT"
        assert refused.json()["error"]["code"] == "method_not_allowed"
    assert client.get("/items").headers["allow"] == "POST"
    assert client.get("/things/t1").json() == {"id": "t1", "service": "demo"}
    assert client.delete("/things/t1").status_code == 204
    assert "allow" not in client.get("/things/missing").headers


def test_openapi_describes_every_error_with_error_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    # FastAPI's own 422 shape is never sent, so it is not documented either.
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert set(schemas["ErrorDetail"]["required"]) == {"status", "code", "message"}
    errors = {(path, method, status): response
              for path, operations in document["paths"].items() for method, operation in operations.items()
              for status, response in operation["responses"].items() if status[0] in "45"}
    assert {("/items", "post", "422"), ("/things/{thing_id}", "get", "404"),
            ("/things/{thing_id}", "put", "422")} <= set(errors)
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for where, response in errors.items():
        assert response["content"] == error_body, where
    assert errors[("/things/{thing_id}", "get", "404")]["description"] == "no such thing"


def test_every_error_the_core_sends_is_an_error_body(client: TestClient) -> None:
    answers = [
        client.post("/items", json={"name": "taken", "count": 1}),
        client.post("/items", json={"name": "a", "count": "many"}),
        client.post("/items", content=b"{", headers={"Content-Type": "application/json"}),
        client.post("/items", content=b"x" * 2000, headers={"Content-Type": "application/json"}),
        client.get("/things/missing"),
        client.get("/nope"),
        client.patch("/things/t1"),
        client.get("/boom"),
    ]
    assert [a.status_code for a in answers] == [409, 422, 400, 413, 404, 404, 405, 500]
    for answer in answers:
        assert ErrorBody.model_validate(answer.json()).error.status == answer.status_code


def test_utc_helpers_give_aware_utc_times() -> None:
    naive = datetime(2030, 1, 1, 12, 0)  # what SQLite hands back
    assert db.as_utc(naive) == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    elsewhere = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert db.as_utc(elsewhere) is elsewhere
    assert db.as_utc(None) is None
    assert db.from_epoch(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert db.utc_now().tzinfo is UTC


def test_session_state_commits_without_fsync_everything_else_durably(tmp_path: Path) -> None:
    """A service's engine syncs every commit (FULL); its session engine, same file, only at checkpoints."""
    service = create_app("demo", [], Settings(database_url=f"sqlite:///{tmp_path}/ott.db")).state.service
    try:
        for engine, level in ((service.engine, 2), (service.session_engine, 1)):  # SQLite: FULL=2, NORMAL=1
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert service.engine.url == service.session_engine.url
    finally:
        service.dispose()
    with pytest.raises(ValueError, match="synchronous='OFF': use one of FULL, NORMAL"):
        db.connect(f"sqlite:///{tmp_path}/ott.db", synchronous="OFF")


def test_run_db_works_on_the_loop_and_waits_in_the_thread_pool_only_while_another_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A free database: ``work`` runs once, on the event loop's thread, with the engine that never waits.
    Another process's write lock: that try fails at once, and ``work`` runs again in a worker thread on
    the session engine, which waits for the lock; the wait is counted."""
    path = tmp_path / "ott.db"
    service = create_app("demo", [], Settings(database_url=f"sqlite:///{path}")).state.service
    table = Table("plays", MetaData(), Column("id", String(8), primary_key=True))
    table.metadata.create_all(service.engine)
    runs: list[tuple[Any, int]] = []

    def work(row: str, engine: Any) -> str:
        runs.append((engine, threading.get_ident()))
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=row))
        return row

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        assert await service.run_db(partial(work, "free")) == "free"
        assert runs == [(service.quick_engine, loop_thread)]
        runs.clear()
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer
        other.execute("BEGIN IMMEDIATE")
        try:
            waiting = asyncio.create_task(service.run_db(partial(work, "busy")))
            await asyncio.sleep(0)  # the task tries on the loop, fails, and goes to the thread pool
            assert runs == [(service.quick_engine, loop_thread)]
            assert service.lock_waits._value.get() == 1
        finally:
            other.execute("COMMIT")
            other.close()
        assert await waiting == "busy"
        assert runs[1][0] is service.session_engine and runs[1][1] != loop_thread

    try:
        asyncio.run(scenario())
        with service.engine.connect() as conn:
            assert sorted(conn.execute(select(table.c.id)).scalars()) == ["busy", "free"]
    finally:
        service.dispose()
    with pytest.raises(OperationalError, match="no such table"):  # any other error is the caller's
        asyncio.run(service.run_db(partial(_select_from, "missing_table")))


def _select_from(name: str, engine: Any) -> None:
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT * FROM {name}")


@pytest.fixture
def things(tmp_path: Path) -> Iterator[tuple[Any, Table]]:
    table = Table("things", MetaData(), Column("id", String(8), primary_key=True),
                  Column("n", Integer, nullable=False), Column("born", Integer, nullable=False))
    engine = db.connect(f"sqlite:///{tmp_path}/things.db")
    table.metadata.create_all(engine)
    yield engine, table
    engine.dispose()


def _rows(engine: Any, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]


def test_upsert_creates_then_updates_keeping_insert_only_values(things: tuple[Any, Table]) -> None:
    engine, table = things
    assert db.upsert(engine, table, {"id": "a"}, {"n": 1}, insert_only={"born": 1}) is True
    assert db.upsert(engine, table, {"id": "a"}, {"n": 2}, insert_only={"born": 2}) is False
    assert _rows(engine, table) == [("a", 2, 1)]


def test_upsert_that_loses_a_race_to_create_updates_the_winners_row(
    things: tuple[Any, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, table = things

    def lose_the_race(conn: Connection, *args: Any, **kwargs: Any) -> bool:
        # Another writer commits the row between our UPDATE (no row yet) and our INSERT.
        with engine.begin() as other:
            other.execute(insert(table).values(id="a", n=0, born=0))
        raise IntegrityError("INSERT INTO things", {}, Exception("UNIQUE constraint failed: things.id"))

    monkeypatch.setattr(db, "update_or_insert", lose_the_race)
    assert db.upsert(engine, table, {"id": "a"}, {"n": 5}, insert_only={"born": 5}) is False
    assert _rows(engine, table) == [("a", 5, 0)]
