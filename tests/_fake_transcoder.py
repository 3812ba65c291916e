"""A stand-in for the transcoder's HTTP API, behind an ``httpx.MockTransport``: records what a client sent.

It answers like :mod:`ott.transcoder` (its models, its error shape) without ffmpeg: an upload is
kept as bytes, a job is published on its second poll.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from labkit.clients import transcoding
from ott.errors import error_body
from ott.transcoder import Job, JobResult, JobSpec, Source, SourceList


@dataclass
class FakeTranscoder:
    token: str
    max_bytes: int = 1 << 30
    refuse_upload: tuple[int, str, str] | None = None
    refuse_job: tuple[int, str, str] | None = None
    uploads: dict[str, bytes] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    polls: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.read()   # a streamed upload: every chunk the client sent
        self.requests.append(request)
        if request.headers.get("x-service-token") != self.token:
            return self._error(401, "unauthorized", "this is an internal route: send X-Service-Token")
        path, method = request.url.path, request.method
        if (method, path) == ("GET", "/sources"):
            return httpx.Response(200, json=SourceList(max_bytes=self.max_bytes, items=[]).model_dump())
        if (method, path) == ("POST", "/sources"):
            if self.refuse_upload:
                return self._error(*self.refuse_upload)
            source_id = uuid.uuid4().hex
            self.uploads[source_id] = body
            self.names[source_id] = request.url.params["name"]
            source = Source(id=source_id, name=self.names[source_id], bytes=len(body), duration_s=1.0, width=320,
                            height=240, created_at=time.time(), expires_at=time.time() + 3600, job_id=None)
            return httpx.Response(201, json=source.model_dump())
        if method == "DELETE" and path.startswith("/sources/"):
            self.uploads.pop(path.rsplit("/", 1)[1], None)
            return httpx.Response(204)
        if (method, path) == ("POST", "/jobs"):
            if self.refuse_job:
                return self._error(*self.refuse_job)
            spec = JobSpec.model_validate(json.loads(body))
            job = Job(id=uuid.uuid4().hex, title_id=spec.title_id, spec=spec, source_name=self.names[spec.source_id],
                      state="queued", outcome=None, error_code=None, error_message=None, progress=None, result=None,
                      created_at=time.time(), started_at=None, finished_at=None)
            self.jobs[job.id] = job
            return httpx.Response(202, json=job.model_dump())
        if method == "GET" and path.startswith("/jobs/"):
            self.polls += 1
            job = self.jobs[path.rsplit("/", 1)[1]]
            if self.polls >= 2:
                result = JobResult(master_url=f"http://origin.test/{job.title_id}/v1/master.m3u8",
                                   path=f"/media/{job.title_id}/v1", encrypted=job.spec.encrypt, key_uri=None,
                                   speed=2.0, encode_seconds=0.5, duration_s=1.0, rungs=[], command=["ffmpeg"])
                job = job.model_copy(update={"state": "published", "outcome": "published", "result": result})
            return httpx.Response(200, json=job.model_dump())
        return self._error(404, "not_found", f"no route {method} {path}")

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]

    @staticmethod
    def _error(status: int, code: str, message: str) -> httpx.Response:
        body: dict[str, Any] = error_body(status, code, message)
        return httpx.Response(status, json=body)


def wire(fake: FakeTranscoder, monkeypatch: pytest.MonkeyPatch) -> FakeTranscoder:
    """Every TranscoderClient :func:`labkit.clients.transcoding.transcode` makes talks to ``fake``."""
    real = transcoding.TranscoderClient

    class Wired(real):  # type: ignore[misc,valid-type]
        def __init__(self, url: str, **kwargs: Any) -> None:
            super().__init__(url, transport=fake.transport(), **kwargs)

    monkeypatch.setattr(transcoding, "TranscoderClient", Wired)
    monkeypatch.setattr(transcoding, "POLL_S", 0.01)
    return fake
