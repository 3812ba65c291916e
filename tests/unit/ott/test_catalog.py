"""catalog: browsing and reading titles, and the internal routes that write them, in-process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from _responses import expect_error
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ott import catalog
from ott.settings import Settings

HLS = {"kind": "hls", "url": "https://edge.example/vod/big-buck/master.m3u8", "encrypted": True, "pop": "edge-1"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(catalog.build_app(settings)) as client:
        yield client


def _meta(name: str = "Big Buck Bunny", tier: str = "free", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": "A big rabbit and three rodents.", "duration_s": 596, "tier": tier,
            **extra}


def _put(client: TestClient, internal: dict[str, str], title_id: str, **meta: Any) -> dict[str, Any]:
    response = client.put(f"/titles/{title_id}", json=_meta(**meta), headers=internal)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body




def _count(client: TestClient) -> int:
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        count: int = conn.execute(select(func.count()).select_from(catalog.titles)).scalar_one()
    return count


@pytest.fixture
def seeded(client: TestClient, internal: dict[str, str]) -> TestClient:
    """Five titles across the tiers, two with wildcard characters in their names."""
    _put(client, internal, "big-buck", name="Big Buck Bunny", tier="free")
    _put(client, internal, "sintel", name="Sintel", tier="basic", description="A girl and her DRAGON.")
    _put(client, internal, "tears", name="Tears of Steel", tier="premium", description="Robots in Amsterdam.")
    _put(client, internal, "percent", name="100% Pure", tier="basic")
    _put(client, internal, "under", name="snake_case", tier="free")
    return client


# --- write: metadata ----------------------------------------------------------------------------


def test_put_creates_then_updates_a_title(client: TestClient, internal: dict[str, str]) -> None:
    created = client.put("/titles/big-buck", json=_meta(), headers=internal)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "big-buck"
    assert body["tier"] == "free"
    assert body["renditions"] == []
    assert body["published_at"] is None
    assert body["updated_at"].endswith(("+00:00", "Z"))
    updated = client.put("/titles/big-buck", json=_meta(name="Big Buck Bunny (4K)", tier="premium"),
                         headers=internal)
    assert updated.status_code == 200
    assert updated.json()["name"] == "Big Buck Bunny (4K)"
    assert updated.json()["tier"] == "premium"
    assert client.get("/titles/big-buck").json() == updated.json()
    assert _count(client) == 1


def test_metadata_update_keeps_the_playback_locations(client: TestClient, internal: dict[str, str]) -> None:
    _put(client, internal, "big-buck")
    published = client.put("/titles/big-buck/playback", json={"renditions": [HLS]}, headers=internal).json()
    updated = _put(client, internal, "big-buck", name="Renamed")
    assert updated["renditions"] == [HLS]
    assert updated["published_at"] == published["published_at"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x", "duration_s": 1},
        {"name": "x", "duration_s": 1, "tier": "gold"},
        {"name": "x", "duration_s": -1, "tier": "free"},
        {"name": "x", "duration_s": 10**30, "tier": "free"},
        {"name": "x", "duration_s": "596", "tier": "free"},
        {"name": "x", "duration_s": 1.5, "tier": "free"},
        {"name": "x", "duration_s": True, "tier": "free"},
        {"name": "x", "duration_s": 1e300, "tier": "free"},
        {"name": "", "duration_s": 1, "tier": "free"},
        {"name": 7, "duration_s": 1, "tier": "free"},
        {"name": "x" * 201, "duration_s": 1, "tier": "free"},
        {"name": "x", "description": None, "duration_s": 1, "tier": "free"},
        [1, 2, 3],
    ],
)
def test_put_refuses_bad_metadata_with_422(client: TestClient, internal: dict[str, str], body: Any) -> None:
    expect_error(client.put("/titles/big-buck", json=body, headers=internal), 422, "invalid_request")
    assert _count(client) == 0


def test_put_accepts_a_whole_number_written_as_a_float(client: TestClient, internal: dict[str, str]) -> None:
    # JSON Schema's "integer" includes 596.0, so a schema-following client may send it.
    response = client.put("/titles/big-buck", json=_meta(duration_s=596.0), headers=internal)
    assert response.status_code == 201, response.text
    assert response.json()["duration_s"] == 596


def test_put_refuses_lone_surrogates(client: TestClient, internal: dict[str, str]) -> None:
    raw = b'{"name": "bad \\udc00 name", "duration_s": 1, "tier": "free"}'
    expect_error(client.put("/titles/big-buck", content=raw, headers={"content-type": "application/json", **internal}),
           422)


@pytest.mark.parametrize("path", ["/titles/big-buck", "/titles/big-buck/playback"])
def test_malformed_json_is_400(client: TestClient, internal: dict[str, str], path: str) -> None:
    response = client.put(path, content=b'{"name": ', headers={"content-type": "application/json", **internal})
    expect_error(response, 400, "malformed_json")


def test_oversized_body_is_413(client: TestClient, internal: dict[str, str]) -> None:
    response = client.put("/titles/big-buck", json=_meta(description="x" * 70_000), headers=internal)
    expect_error(response, 413, "body_too_large")


# --- write: playback and delete -----------------------------------------------------------------


def test_playback_sets_renditions_and_publishes(client: TestClient, internal: dict[str, str]) -> None:
    before = _put(client, internal, "big-buck")
    plain = {"kind": "hls", "url": "/vod/big-buck/clear/master.m3u8", "encrypted": False}
    response = client.put("/titles/big-buck/playback", json={"renditions": [HLS, plain]}, headers=internal)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["renditions"] == [HLS, {**plain, "pop": None}]
    assert body["published_at"] is not None
    assert body["updated_at"] >= before["updated_at"]
    assert client.get("/titles/big-buck").json()["renditions"] == body["renditions"]


def test_playback_of_an_unknown_title_is_404(client: TestClient, internal: dict[str, str]) -> None:
    expect_error(client.put("/titles/nope/playback", json={"renditions": [HLS]}, headers=internal), 404, "not_found")
    assert _count(client) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"renditions": []},
        {"renditions": [{**HLS, "kind": "dash"}]},
        {"renditions": [{**HLS, "encrypted": "yes"}]},
        {"renditions": [{"kind": "hls", "encrypted": True}]},
        {"renditions": [{**HLS, "url": "has space.m3u8"}]},
        {"renditions": [{**HLS, "url": ""}]},
        {"renditions": [{**HLS, "url": "https://edge.example/vod/caf\u00e9.m3u8"}]},
        {"renditions": [{**HLS, "url": "https://edge.example/\u0085x.m3u8"}]},
        {"renditions": [HLS] * 33},
        {"renditions": HLS},
    ],
)
def test_playback_refuses_bad_renditions_with_422(client: TestClient, internal: dict[str, str], body: Any) -> None:
    _put(client, internal, "big-buck")
    expect_error(client.put("/titles/big-buck/playback", json=body, headers=internal), 422, "invalid_request")
    assert client.get("/titles/big-buck").json()["published_at"] is None


def test_delete_removes_a_title(client: TestClient, internal: dict[str, str]) -> None:
    _put(client, internal, "big-buck")
    response = client.delete("/titles/big-buck", headers=internal)
    assert response.status_code == 204
    assert response.content == b""
    expect_error(client.get("/titles/big-buck"), 404, "not_found")
    expect_error(client.delete("/titles/big-buck", headers=internal), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/titles/big-buck", _meta()),
        ("PUT", "/titles/big-buck/playback", {"renditions": [HLS]}),
        ("DELETE", "/titles/big-buck", None),
    ],
)
def test_internal_routes_need_the_service_token(client: TestClient, internal: dict[str, str], method: str,
                                                path: str, body: Any) -> None:
    _put(client, internal, "big-buck", name="Original")
    expect_error(client.request(method, path, json=body), 401, "unauthorized")
    expect_error(client.request(method, path, json=body, headers={"X-Service-Token": "wrong"}), 403, "forbidden")
    unchanged = client.get("/titles/big-buck").json()
    assert unchanged["name"] == "Original"
    assert unchanged["published_at"] is None


def test_internal_routes_without_a_configured_token_are_503(settings: Settings) -> None:
    with TestClient(catalog.build_app(replace(settings, service_token_file=""))) as client:
        response = client.put("/titles/x", json=_meta(), headers={"X-Service-Token": "anything"})
        expect_error(response, 503, "not_configured")


# --- read ---------------------------------------------------------------------------------------


def test_get_title(seeded: TestClient) -> None:
    response = seeded.get("/titles/sintel")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["name"], body["tier"], body["duration_s"]) == ("sintel", "Sintel", "basic", 596)


@pytest.mark.parametrize("title_id", ["nope", "sintel-2", "0"])
def test_unknown_title_is_404(seeded: TestClient, title_id: str) -> None:
    expect_error(seeded.get(f"/titles/{title_id}"), 404, "not_found")


@pytest.mark.parametrize(
    "title_id",
    ["Sintel", "sintel'--", "' OR '1'='1", "sintel; DROP TABLE catalog_titles", "-leading-dash", "a" * 64,
     "sintel%00", "%27%20OR%201%3D1"],
)
def test_ids_not_matching_the_pattern_are_422(seeded: TestClient, title_id: str, internal: dict[str, str]) -> None:
    expect_error(seeded.get(f"/titles/{title_id}"), 422, "invalid_request")
    expect_error(seeded.put(f"/titles/{title_id}", json=_meta(), headers=internal), 422, "invalid_request")
    expect_error(seeded.delete(f"/titles/{title_id}", headers=internal), 422, "invalid_request")
    assert _count(seeded) == 5


def test_list_pages_by_name(seeded: TestClient) -> None:
    first = seeded.get("/titles", params={"per_page": 2}).json()
    assert (first["page"], first["per_page"], first["total"]) == (1, 2, 5)
    assert [t["id"] for t in first["items"]] == ["percent", "big-buck"]
    third = seeded.get("/titles", params={"per_page": 2, "page": 3}).json()
    assert [t["id"] for t in third["items"]] == ["tears"]
    beyond = seeded.get("/titles", params={"per_page": 2, "page": 4}).json()
    assert beyond["items"] == [] and beyond["total"] == 5
    default = seeded.get("/titles").json()
    assert (default["page"], default["per_page"], len(default["items"])) == (1, 20, 5)


def test_list_filters_by_tier(seeded: TestClient) -> None:
    body = seeded.get("/titles", params={"tier": "basic"}).json()
    assert sorted(t["id"] for t in body["items"]) == ["percent", "sintel"]
    assert body["total"] == 2


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("bunny", ["big-buck"]),
        ("DRAGON", ["sintel"]),  # in the description, other case
        ("amsterdam", ["tears"]),
        ("%", ["percent"]),  # a literal percent sign, not a wildcard
        ("_", ["under"]),  # a literal underscore, not a wildcard
        ("e", ["percent", "big-buck", "sintel", "under", "tears"]),
        ("zzz", []),
        ("", ["percent", "big-buck", "sintel", "under", "tears"]),
    ],
)
def test_list_searches_names_and_descriptions(seeded: TestClient, q: str, expected: list[str]) -> None:
    body = seeded.get("/titles", params={"q": q}).json()
    assert [t["id"] for t in body["items"]] == expected
    assert body["total"] == len(expected)


def test_search_and_tier_combine(seeded: TestClient) -> None:
    body = seeded.get("/titles", params={"q": "e", "tier": "free"}).json()
    assert [t["id"] for t in body["items"]] == ["big-buck", "under"]


@pytest.mark.parametrize(
    "q",
    ["' OR '1'='1", "%' OR 1=1 --", "\"; DROP TABLE catalog_titles; --", "') UNION SELECT * FROM auth_users --",
     "\\", "nul\x00byte"],
)
def test_sql_injection_in_q_is_just_a_search_string(seeded: TestClient, q: str) -> None:
    response = seeded.get("/titles", params={"q": q})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []
    assert response.json()["total"] == 0
    assert _count(seeded) == 5


@pytest.mark.parametrize(
    "params",
    [{"per_page": 0}, {"per_page": 101}, {"page": 0}, {"page": -1}, {"page": 10**7}, {"page": "two"},
     {"tier": "gold"}, {"q": "x" * 201}, {"per_page": "1; DROP TABLE catalog_titles"}],
)
def test_list_refuses_bad_parameters_with_422(seeded: TestClient, params: dict[str, Any]) -> None:
    expect_error(seeded.get("/titles", params=params), 422, "invalid_request")


def test_titles_survive_a_restart(settings: Settings, internal: dict[str, str]) -> None:
    with TestClient(catalog.build_app(settings)) as client:
        _put(client, internal, "big-buck")
        client.put("/titles/big-buck/playback", json={"renditions": [HLS]}, headers=internal)
        before = client.get("/titles/big-buck").json()
    with TestClient(catalog.build_app(settings)) as client:
        assert client.get("/titles/big-buck").json() == before
        assert client.get("/titles").json()["total"] == 1


def test_every_answer_names_the_release_that_gave_it(settings: Settings, internal: dict[str, str]) -> None:
    # OTT_VERSION (a pod's version label): v1 unless said otherwise; errors carry it too.
    with TestClient(catalog.build_app(settings)) as v1, \
            TestClient(catalog.build_app(replace(settings, version="v2"))) as v2:
        assert v1.get("/titles").headers["x-ott-version"] == "v1"
        assert v2.get("/titles").headers["x-ott-version"] == "v2"
        assert v2.get("/titles/no-such-title").headers["x-ott-version"] == "v2"
    assert Settings.from_env({"OTT_VERSION": "v2"}).version == "v2"
