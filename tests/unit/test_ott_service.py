"""The service core every OTT API shares: errors as JSON, limits, metrics, safe logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from ott.errors import ApiError
from ott.service import EventLogger, create_app
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


def test_settings_from_environment() -> None:
    settings = Settings.from_env({"OTT_PORT": "9000", "OTT_STREAM_LIMIT": "3", "OTT_HOST": ""})
    assert (settings.port, settings.stream_limit, settings.host) == (9000, 3, "127.0.0.1")
    with pytest.raises(SettingsError, match="OTT_PORT='http' is not a valid int"):
        Settings.from_env({"OTT_PORT": "http"})
