"""The transcoder's uploads: a source reaches it as bytes, is limited, probed, claimed by one job and deleted.

The service runs in-process (TestClient, its lifespan and worker thread included); ffprobe is the
real one. The encode itself is replaced by a stub runner: these tests are about the source's
life, not the ladder (tests/integration/media covers the real pipeline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from labkit.core.wait import until
from ott.settings import Settings
from ott.transcoder import (
    PARTIAL_DIR,
    UPLOADS_DIR,
    JobFailed,
    JobOptions,
    JobResult,
    Progress,
    build_app,
    jobs_table,
)

VIDEO = {"Content-Type": "video/mp4"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second of 320x240 H.264: a video ffprobe accepts."""
    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(out)],
                   check=True, stdin=subprocess.DEVNULL, timeout=60)
    return out


@pytest.fixture
def transcoder_settings(settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(settings, media_root=tmp_path / "media")


class StubRunner:
    """Stands in for :class:`ott.transcoder.Runner`: ends each job as told, after ``release`` is set."""

    def __init__(self, outcome: Callable[[], JobResult]) -> None:
        self.outcome = outcome
        self.release = threading.Event()
        self.release.set()
        self.cancel = threading.Event()
        self.sources: list[Path] = []

    def run(self, job_id: str, spec: JobOptions, source: Path, on_progress: Callable[[Progress], None], *,
            source_name: str | None = None) -> JobResult:
        self.sources.append(source)
        assert source.is_file(), "the job's source must exist while it runs"
        assert self.release.wait(30), "the test never released the job"
        return self.outcome()


def published() -> JobResult:
    return JobResult(master_url="http://origin.test/t/v1/master.m3u8", path="/media/t/v1", encrypted=False,
                     key_uri=None, speed=1.0, encode_seconds=1.0, duration_s=1.0, rungs=[], command=["ffmpeg"])


def failing() -> JobResult:
    raise JobFailed("failed", "encode_failed", "transcode failed: the stub says so")


def uploads(settings: Settings) -> list[str]:
    folder = settings.media_root / UPLOADS_DIR
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def service(transcoder_settings: Settings, internal: dict[str, str]) -> Iterator[TestClient]:
    """The transcoder, started (its worker too), with the service token on every call."""
    with TestClient(build_app(transcoder_settings), headers=internal) as client:
        yield client


def runner(client: TestClient, outcome: Callable[[], JobResult] = published) -> StubRunner:
    stub = StubRunner(outcome)
    client.app.state.transcoder.runner = stub  # type: ignore[attr-defined]
    return stub


def upload(client: TestClient, path: Path, **headers: str) -> Any:
    return client.post("/sources", params={"name": path.name}, content=path.read_bytes(),
                       headers={**VIDEO, **headers})


def ended(client: TestClient, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] in ("published", "failed") else None

    return until(done, 30, 0.05, f"job {job_id} to end")


def test_an_upload_is_probed_kept_under_its_id_and_listed(service: TestClient, clip: Path,
                                                          transcoder_settings: Settings) -> None:
    response = upload(service, clip)
    assert response.status_code == 201, response.text
    source = response.json()
    assert (source["name"], source["bytes"], source["width"], source["height"]) == \
        ("clip.mp4", clip.stat().st_size, 320, 240)
    assert abs(source["duration_s"] - 1.0) < 0.1 and source["job_id"] is None
    assert source["expires_at"] == pytest.approx(source["created_at"] + transcoder_settings.source_ttl)
    # The bytes, whole, under the source's id; nothing left in partial/.
    assert uploads(transcoder_settings) == [f"{source['id']}.mp4"]
    stored = transcoder_settings.media_root / UPLOADS_DIR / f"{source['id']}.mp4"
    assert stored.read_bytes() == clip.read_bytes()
    listing = service.get("/sources").json()
    assert listing["max_bytes"] == transcoder_settings.max_source_bytes
    assert [s["id"] for s in listing["items"]] == [source["id"]]


@pytest.mark.parametrize(("route", "method"), [("/sources", "POST"), ("/sources", "GET"), ("/jobs", "POST"),
                                               ("/jobs", "GET"), ("/jobs/" + "a" * 32, "GET")])
def test_every_route_needs_the_service_token(transcoder_settings: Settings, route: str, method: str,
                                             clip: Path) -> None:
    with TestClient(build_app(transcoder_settings)) as client:
        body = clip.read_bytes() if route == "/sources" and method == "POST" else None
        missing = client.request(method, route, content=body, headers=VIDEO)
        wrong = client.request(method, route, content=body, headers={**VIDEO, "X-Service-Token": "guess"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "unauthorized")
    assert "X-Service-Token" in missing.json()["error"]["message"]
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
    assert uploads(transcoder_settings) == []


def test_a_declared_size_over_the_limit_is_refused_before_reading_and_names_the_limit(
        transcoder_settings: Settings, internal: dict[str, str], clip: Path) -> None:
    small = dataclasses.replace(transcoder_settings, max_source_bytes=1000)
    with TestClient(build_app(small), headers=internal) as client:
        response = upload(client, clip)
        listing = client.get("/sources").json()
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (413, "source_too_large")
    assert "at most 1000 bytes (OTT_MAX_SOURCE_BYTES)" in error["message"]
    assert "raise OTT_MAX_SOURCE_BYTES" in error["message"]
    assert error["details"] == {"limit_bytes": 1000, "declared_bytes": clip.stat().st_size}
    assert listing["items"] == [] and uploads(small) == []


def test_a_streamed_body_over_the_limit_is_cut_off_and_nothing_kept(
        transcoder_settings: Settings, internal: dict[str, str], clip: Path) -> None:
    small = dataclasses.replace(transcoder_settings, max_source_bytes=4096)
    data = clip.read_bytes()
    assert len(data) > 4096

    def chunks() -> Iterator[bytes]:   # no Content-Length: chunked, so only counting can tell
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]

    with TestClient(build_app(small), headers=internal) as client:
        response = client.post("/sources", params={"name": "clip.mp4"}, content=chunks(), headers=VIDEO)
        listing = client.get("/sources").json()
    assert (response.status_code, response.json()["error"]["code"]) == (413, "source_too_large")
    assert response.json()["error"]["details"]["declared_bytes"] is None
    assert listing["items"] == [] and uploads(small) == []


def test_the_json_routes_keep_the_small_body_limit(service: TestClient) -> None:
    response = service.post("/jobs", content=b"{" + b" " * 70_000 + b"}",
                            headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")


@pytest.mark.parametrize(("content", "code", "says"), [
    (b"these are meeting notes, not a video\n" * 50, "not_media", "source notes.mp4 is not a media file"),
    (b"", "empty_source", "source notes.mp4 is empty"),
])
def test_what_is_not_a_video_is_refused_naming_the_problem_and_deleted(
        service: TestClient, transcoder_settings: Settings, content: bytes, code: str, says: str) -> None:
    response = service.post("/sources", params={"name": "notes.mp4"}, content=content, headers=VIDEO)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (422, code)
    assert says in error["message"]
    assert str(transcoder_settings.media_root) not in error["message"]   # the uploader's name, not our path
    assert service.get("/sources").json()["items"] == [] and uploads(transcoder_settings) == []


def test_a_body_that_is_not_a_file_type_is_refused(service: TestClient, clip: Path,
                                                   transcoder_settings: Settings) -> None:
    response = service.post("/sources", params={"name": "clip.mp4"}, content=clip.read_bytes(),
                            headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert "video/mp4" in response.json()["error"]["message"]
    bad_name = service.post("/sources", params={"name": "../etc/passwd"}, content=clip.read_bytes(), headers=VIDEO)
    assert bad_name.status_code == 422 and bad_name.json()["error"]["details"][0]["where"] == "query.name"
    assert uploads(transcoder_settings) == []


def test_a_job_naming_an_unknown_source_is_refused_and_leaves_no_job(service: TestClient) -> None:
    response = service.post("/jobs", json={"source_id": "f" * 32, "title_id": "nope"})
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (422, "unknown_source")
    assert "POST /sources" in error["message"]
    assert service.get("/jobs").json()["items"] == []
    # The old form, a path on the transcoder, is gone: the field is unknown.
    old = service.post("/jobs", json={"source": "/tmp/clip.mp4", "title_id": "nope"})
    assert old.status_code == 422 and {d["where"] for d in old.json()["error"]["details"]} >= {"body.source_id"}


@pytest.mark.parametrize(("outcome", "state"), [(published, "published"), (failing, "failed")])
def test_the_source_is_deleted_when_its_job_ends(service: TestClient, clip: Path, transcoder_settings: Settings,
                                                 outcome: Callable[[], JobResult], state: str) -> None:
    stub = runner(service, outcome)
    source = upload(service, clip).json()
    submitted = service.post("/jobs", json={"source_id": source["id"], "title_id": "lab-clock"})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["source_name"] == "clip.mp4"
    job = ended(service, submitted.json()["id"])
    assert job["state"] == state and job["source_name"] == "clip.mp4"
    assert stub.sources == [transcoder_settings.media_root / UPLOADS_DIR / f"{source['id']}.mp4"]
    assert service.get("/sources").json()["items"] == [] and uploads(transcoder_settings) == []


def test_a_source_feeds_one_job_and_cannot_be_deleted_under_it(service: TestClient, clip: Path,
                                                               transcoder_settings: Settings) -> None:
    stub = runner(service)
    stub.release.clear()
    source = upload(service, clip).json()
    first = service.post("/jobs", json={"source_id": source["id"], "title_id": "lab-clock"}).json()
    again = service.post("/jobs", json={"source_id": source["id"], "title_id": "lab-clock-2"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "source_in_use")
    assert "upload the file again" in again.json()["error"]["message"]
    deleting = service.delete(f"/sources/{source['id']}")
    assert (deleting.status_code, deleting.json()["error"]["code"]) == (409, "source_in_use")
    assert [j["id"] for j in service.get("/jobs").json()["items"]] == [first["id"]]   # no second job
    stub.release.set()
    assert ended(service, first["id"])["state"] == "published"
    assert uploads(transcoder_settings) == []


def test_an_unused_source_can_be_deleted(service: TestClient, clip: Path, transcoder_settings: Settings) -> None:
    source = upload(service, clip).json()
    assert service.delete(f"/sources/{source['id']}").status_code == 204
    assert uploads(transcoder_settings) == []
    gone = service.delete(f"/sources/{source['id']}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "unknown_source")


def test_concurrent_uploads_each_keep_their_own_bytes(service: TestClient, clip: Path,
                                                      transcoder_settings: Settings) -> None:
    data = clip.read_bytes()
    # Eight variants: the same video, each with different trailing bytes (ffprobe ignores them).
    bodies = [data + bytes([i]) * (1000 * (i + 1)) for i in range(8)]

    def send(body: bytes) -> dict[str, Any]:
        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 4096):
                yield body[start:start + 4096]

        response = service.post("/sources", params={"name": "clip.mp4"}, content=chunks(), headers=VIDEO)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    with ThreadPoolExecutor(max_workers=8) as pool:
        sources = list(pool.map(send, bodies))
    assert len({s["id"] for s in sources}) == 8
    folder = transcoder_settings.media_root / UPLOADS_DIR
    for body, source in zip(bodies, sources, strict=True):
        assert source["bytes"] == len(body)
        assert hashlib.sha256((folder / f"{source['id']}.mp4").read_bytes()).digest() == hashlib.sha256(body).digest()
    assert len(service.get("/sources").json()["items"]) == 8


def test_an_unused_source_expires_after_the_ttl(transcoder_settings: Settings, internal: dict[str, str],
                                                clip: Path) -> None:
    brief = dataclasses.replace(transcoder_settings, source_ttl=0)
    with TestClient(build_app(brief), headers=internal) as client:
        source = upload(client, clip).json()
        assert source["expires_at"] == pytest.approx(source["created_at"])
        assert client.app.state.transcoder.sources.sweep() == 1  # type: ignore[attr-defined]
        assert client.get("/sources").json()["items"] == []
    assert uploads(brief) == []


def test_a_restart_keeps_whole_sources_and_removes_what_does_not_count(
        transcoder_settings: Settings, internal: dict[str, str], clip: Path) -> None:
    with TestClient(build_app(transcoder_settings), headers=internal) as client:
        kept = upload(client, clip).json()
        doomed = upload(client, clip).json()
    folder = transcoder_settings.media_root / UPLOADS_DIR
    # What a transcoder killed at the wrong moment leaves: half an upload, a renamed file whose row
    # was never written, and a row whose file went missing.
    (folder / PARTIAL_DIR / ("1" * 32 + ".mp4")).write_bytes(clip.read_bytes()[:1000])
    (folder / ("2" * 32 + ".mp4")).write_bytes(clip.read_bytes())
    (folder / f"{doomed['id']}.mp4").unlink()

    with TestClient(build_app(transcoder_settings), headers=internal) as client:
        listed = [s["id"] for s in client.get("/sources").json()["items"]]
    assert listed == [kept["id"]]
    assert uploads(transcoder_settings) == [f"{kept['id']}.mp4"]


def test_a_job_from_before_uploads_still_reads_and_fails_clearly_if_queued(
        transcoder_settings: Settings, internal: dict[str, str]) -> None:
    app = build_app(transcoder_settings)
    with TestClient(app, headers=internal):
        pass   # creates the tables
    with app.state.service.engine.begin() as conn:
        conn.execute(insert(jobs_table).values(id="c" * 32, title_id="old-clock", state="queued", created_at=1.0,
                                               spec={"source": "/srv/clips/old.mp4", "title_id": "old-clock",
                                                     "encrypt": False, "ladder": "default"}))
    with TestClient(build_app(transcoder_settings), headers=internal) as client:
        job = ended(client, "c" * 32)
    assert (job["state"], job["error_code"], job["source_name"]) == ("failed", "source_gone", "old.mp4")
    assert "upload the file again" in job["error_message"]
