"""labkit's transcoding client against a fake transcoder: the upload, the job, refusals, cleanup."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from _fake_transcoder import FakeTranscoder, wire

from labkit.clients import transcoding
from labkit.clients.transcoding import TranscoderClient, TranscoderRefused, transcode
from labkit.core.errors import ConfigError

TOKEN = "the-lab-service-token"
URL = "http://transcoder.test"


class FakeTarget:
    """Just what :func:`transcode` asks of a target: the transcoder's URL and the service token."""

    def endpoint(self, component: str, port: str = "http") -> str:
        assert component == "transcoder"
        return URL

    def service_token(self) -> str:
        return TOKEN


@pytest.fixture
def fake() -> FakeTranscoder:
    return FakeTranscoder(token=TOKEN)


@pytest.fixture
def wired(fake: FakeTranscoder, monkeypatch: pytest.MonkeyPatch) -> FakeTranscoder:
    return wire(fake, monkeypatch)



@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(bytes(range(256)) * 9000)   # 2.3 MB: three chunks of the upload
    return path


def test_an_upload_streams_the_files_bytes_with_the_token_and_reports_progress(
        fake: FakeTranscoder, clip: Path) -> None:
    seen: list[tuple[int, int]] = []
    with TranscoderClient(URL, token=TOKEN, transport=fake.transport()) as client:
        source = client.upload(clip, on_progress=lambda sent, size: seen.append((sent, size)))
    assert fake.uploads[source.id] == clip.read_bytes()
    (post,) = fake.sent("POST", "/sources")
    assert post.headers["content-type"] == "application/octet-stream"
    assert post.headers["content-length"] == str(clip.stat().st_size)
    assert post.url.params["name"] == "clip.mp4"
    assert [sent for sent, _ in seen] == [1 << 20, 2 << 20, clip.stat().st_size]
    assert all(r.headers["x-service-token"] == TOKEN for r in fake.requests)


def test_a_file_over_the_limit_is_refused_before_a_byte_is_sent(clip: Path) -> None:
    fake = FakeTranscoder(token=TOKEN, max_bytes=1000)
    with TranscoderClient(URL, token=TOKEN, transport=fake.transport()) as client, \
            pytest.raises(TranscoderRefused, match=r"upload of clip\.mp4 \(413 source_too_large\)") as caught:
        client.upload(clip)
    assert "1000 bytes (OTT_MAX_SOURCE_BYTES)" in str(caught.value) and "OTT_MAX_SOURCE_BYTES" in caught.value.hint
    assert fake.sent("POST", "/sources") == []


def test_a_refused_upload_names_the_file_and_the_transcoders_reason(clip: Path) -> None:
    fake = FakeTranscoder(token=TOKEN, refuse_upload=(422, "not_media", "source clip.mp4 is not a media file"))
    with TranscoderClient(URL, token=TOKEN, transport=fake.transport()) as client, \
            pytest.raises(TranscoderRefused) as caught:
        client.upload(clip)
    assert (caught.value.status, caught.value.code) == (422, "not_media")
    assert "refused the upload of clip.mp4 (422 not_media): source clip.mp4 is not a media file" in str(caught.value)


def test_a_wrong_token_is_refused_with_what_to_send(fake: FakeTranscoder, clip: Path) -> None:
    with TranscoderClient(URL, token="guess", transport=fake.transport()) as client, \
            pytest.raises(TranscoderRefused, match="401 unauthorized") as caught:
        client.sources()
    assert "service_token()" in caught.value.hint


def test_an_upload_that_breaks_off_says_nothing_was_kept(clip: Path) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"max_bytes": 1 << 30, "items": []})
        raise httpx.WriteError("connection reset by peer", request=request)

    with TranscoderClient(URL, token=TOKEN, transport=httpx.MockTransport(broken)) as client, \
            pytest.raises(Exception, match="broke off") as caught:
        client.upload(clip)
    assert "keeps no part of it" in str(caught.value)


def test_transcode_uploads_then_submits_the_source_id_and_waits(wired: FakeTranscoder, clip: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    job = transcode(FakeTarget(), clip, "lab-clock", encrypt=True, ladder="small", progress=False)  # type: ignore[arg-type]
    assert job.state == "published" and job.result is not None
    assert len(wired.sent("POST", "/jobs")) == 1
    (source_id,) = wired.uploads
    assert job.spec.source_id == source_id and job.source_name == "clip.mp4"
    assert (job.spec.title_id, job.spec.encrypt, job.spec.ladder) == ("lab-clock", True, "small")
    assert capsys.readouterr().out == ""   # progress=False: no lines


def test_transcode_prints_the_uploads_progress(wired: FakeTranscoder, clip: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(transcoding, "UPLOAD_REPORT_S", 0.0)
    monkeypatch.setattr(transcoding, "progress_bar", _NoBar)
    transcode(FakeTarget(), clip, "lab-clock", progress=True)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["uploading clip.mp4: 1.0 of 2.3 MB (46%)", "uploading clip.mp4: 2.1 of 2.3 MB (91%)"]
    assert lines[-1].startswith("uploaded clip.mp4: 2.3 MB, 320x240, 1.0 s, in ")


class _NoBar:
    def __init__(self, title: str) -> None:
        self.title = title

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def __call__(self, fraction: float, speed: float, eta: float) -> None:
        return None


def test_a_refused_job_deletes_its_upload(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTranscoder(token=TOKEN, refuse_job=(422, "unknown_ladder", "no ladder 'gigantic'"))
    wire(fake, monkeypatch)
    with pytest.raises(TranscoderRefused, match=r"refused the job \(422 unknown_ladder\)"):
        transcode(FakeTarget(), clip, "lab-clock", progress=False)  # type: ignore[arg-type]
    (deleted,) = [r.url.path for r in fake.requests if r.method == "DELETE"]
    assert deleted.startswith("/sources/") and fake.uploads == {}


def test_bad_parameters_and_missing_files_are_refused_before_anything_is_sent(
        wired: FakeTranscoder, clip: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.mp4 does not exist") as caught:
        transcode(FakeTarget(), tmp_path / "missing.mp4", "lab-clock")  # type: ignore[arg-type]
    assert "ottlab sample" in caught.value.hint
    with pytest.raises(ConfigError, match="invalid title id"):
        transcode(FakeTarget(), clip, "../etc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ladder"):
        transcode(FakeTarget(), clip, "lab-clock", ladder="no spaces allowed")  # type: ignore[arg-type]
    assert wired.requests == []
