"""The media layer on loopback: the transcoder service, the license key flow, the catalog and the origin.

Everything is real: supervised transcoder and APIs, ffmpeg, nginx origin and gateway, Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import m3u8
import pytest
from _bad_sources import BAD_INPUTS
from _labs import running_lab
from _sessions import signed_in

from labkit.clients.api import OttClient, service_client
from labkit.clients.prometheus import Prometheus
from labkit.clients.transcoding import TranscodeFailed, TranscoderClient, TranscoderRefused, transcode
from labkit.core.errors import ConfigError, LabError
from labkit.core.wait import until
from labkit.platform.layers import media
from labkit.targets.local.target import LocalTarget
from ott.media import errors, verify
from ott.media.publish import STAGING_DIR
from ott.media.sample import make_sample
from ott.transcoder import UPLOADS_DIR, Job, JobSpec, error_code

pytestmark = pytest.mark.integration
FAST = {"ladder": "small", "preset": "ultrafast"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("media"), 28700, seeded=True) as target:
        yield target


@pytest.fixture(scope="module")
def media_root(lab: LocalTarget) -> Path:
    return media.media_root(lab.cfg)


@pytest.fixture
def viewer(lab: LocalTarget) -> Iterator[OttClient]:
    """alice (premium): entitled to every tier."""
    with signed_in(lab.endpoint("gateway")) as client:
        yield client


def internal(lab: LocalTarget) -> dict[str, str]:
    return {"X-Service-Token": lab.service_token()}


def catalog_title(lab: LocalTarget, title_id: str) -> httpx.Response:
    return httpx.get(f"{lab.endpoint('gateway')}/api/catalog/titles/{title_id}", timeout=10)


def key_versions(lab: LocalTarget, title_id: str) -> httpx.Response:
    # The key registry is the transcoder's (with the mesh on, only its identity may read it).
    with service_client(lab, "license", caller="transcoder") as license_admin:
        return license_admin.get(f"/admin/keys/{title_id}")


def no_staging_left(media_root: Path) -> bool:
    staging = media_root / STAGING_DIR
    return not staging.exists() or not any(staging.iterdir())


def no_upload_left(media_root: Path) -> bool:
    """Every uploaded source went with its job (or its refusal), whole or partial."""
    return not [p for p in (media_root / UPLOADS_DIR).rglob("*") if p.is_file()]


def transcoder(lab: LocalTarget) -> TranscoderClient:
    return TranscoderClient(lab.endpoint("transcoder"), token=lab.service_token())


def submit_file(client: TranscoderClient, path: Path, title_id: str, **options: object) -> Job:
    source = client.upload(path)
    return client.submit(JobSpec.model_validate({"source_id": source.id, "title_id": title_id, **options}))


def test_a_clear_title_is_published_then_listed_and_served_by_the_origin(
        lab: LocalTarget, media_root: Path, sample_clip: Path) -> None:
    assert catalog_title(lab, "clear-clock").status_code == 404
    job = transcode(lab, sample_clip, "clear-clock", name="The lab clock", tier="basic", progress=False, **FAST)
    assert job.state == "published" and job.outcome == "published" and job.result is not None
    origin = lab.endpoint("origin")
    version = Path(job.result.path).name
    assert Path(job.result.path) == media_root / "clear-clock" / version
    assert job.result.master_url == f"{origin}/clear-clock/{version}/master.m3u8"
    assert [r.name for r in job.result.rungs] == ["720p", "480p", "360p"]
    assert all(r.bytes > 10_000 and r.segments >= 1 for r in job.result.rungs)
    assert job.result.speed > 0 and job.result.key_uri is None

    title = catalog_title(lab, "clear-clock").json()
    assert (title["name"], title["tier"], title["published_at"] is not None) == ("The lab clock", "basic", True)
    assert title["renditions"] == [{"kind": "hls", "url": job.result.master_url, "encrypted": False, "pop": None}]

    # The origin serves what the pipeline verified, with HLS MIME types and cache headers.
    master = httpx.get(job.result.master_url, timeout=10)
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert master.headers["cache-control"] == "public, max-age=2"
    playlist = m3u8.loads(master.text)
    assert len(playlist.playlists) == 3 and len(playlist.iframe_playlists) == 3
    base = f"{origin}/clear-clock/{version}"
    media_playlist = m3u8.loads(httpx.get(f"{base}/{playlist.playlists[0].uri}", timeout=10).text)
    segment = httpx.get(f"{base}/720p/{media_playlist.segments[0].uri}", timeout=10)
    init = httpx.get(f"{base}/720p/{media_playlist.segment_map[0].uri}", timeout=10)
    assert segment.status_code == init.status_code == 200
    assert segment.headers["content-type"] == init.headers["content-type"] == "video/mp4"
    assert "immutable" in segment.headers["cache-control"]
    assert segment.content == (Path(job.result.path) / "720p" / media_playlist.segments[0].uri).read_bytes()
    assert no_staging_left(media_root) and no_upload_left(media_root)
    assert job.source_name == sample_clip.name


def test_an_encrypted_title_plays_with_the_key_license_delivers_through_the_gateway(
        lab: LocalTarget, media_root: Path, sample_clip: Path, viewer: OttClient) -> None:
    job = transcode(lab, sample_clip, "secret-clock", encrypt=True, progress=False, **FAST)
    assert job.result is not None and job.result.encrypted
    registered = key_versions(lab, "secret-clock").json()
    # The key URI is the gateway's, naming the key version these segments were encrypted with.
    assert job.result.key_uri == registered["key_uri"]
    assert registered["key_uri"] == f"{lab.endpoint('gateway')}/api/license/keys/secret-clock/{registered['kid']}"
    rung = Path(job.result.path) / "720p"
    assert f'URI="{registered["key_uri"]}"' in (rung / "index.m3u8").read_text()
    assert httpx.get(job.result.master_url.replace("master.m3u8", "720p/seg_00000.ts"), timeout=10).headers[
        "content-type"] == "video/mp2t"
    # No key file anywhere in what the origin serves.
    key = bytes.fromhex(registered["key_hex"])
    assert not any(key in f.read_bytes() for f in (media_root / "secret-clock").rglob("*") if f.is_file())

    # A viewer's authorisation opens the key URI; without one the gateway passes license's 401.
    grant = viewer.authorize("secret-clock", device_id="laptop")
    delivered = httpx.get(registered["key_uri"], headers={"Authorization": f"Bearer {grant['authorization']}"},
                          timeout=10)
    assert (delivered.status_code, delivered.content) == (200, key)
    assert httpx.get(registered["key_uri"], timeout=10).status_code == 401
    # ... and with that key the published stream decodes end to end.
    verify.verify(Path(job.result.path), key=delivered.content)


def test_republishing_swaps_the_title_and_keeps_the_old_key_version_for_old_playlists(
        lab: LocalTarget, media_root: Path, sample_clip: Path, viewer: OttClient) -> None:
    first = transcode(lab, sample_clip, "again-clock", encrypt=True, progress=False, **FAST)
    old = key_versions(lab, "again-clock").json()
    second = transcode(lab, sample_clip, "again-clock", encrypt=True, progress=False, **FAST)
    new = key_versions(lab, "again-clock").json()
    assert first.result and second.result and new["kid"] != old["kid"]
    assert new["key_uri"] in (Path(second.result.path) / "720p" / "index.m3u8").read_text()
    assert old["key_uri"] in (Path(first.result.path) / "720p" / "index.m3u8").read_text()  # kept, still valid
    grant = viewer.authorize("again-clock", device_id="laptop")
    bearer = {"Authorization": f"Bearer {grant['authorization']}"}
    for version in (old, new):
        assert httpx.get(version["key_uri"], headers=bearer, timeout=10).content == bytes.fromhex(version["key_hex"])
    assert [p.name for p in media_root.iterdir() if p.name.startswith("again-clock")] == ["again-clock"]
    assert no_staging_left(media_root)


# What ffprobe cannot see is found by the job: a full decode (a cut mdat), the ladder's smallest rung.
FOUND_BY_THE_JOB = {"truncated_data", "too_small"}


@pytest.mark.parametrize(("make", "error", "message"), BAD_INPUTS,
                         ids=[make.__name__.strip("_") for make, _, _ in BAD_INPUTS])
def test_a_bad_source_is_rejected_and_changes_nothing(
        make: Callable[[Path, Path], Path], error: type[errors.MediaError], message: str,
        lab: LocalTarget, media_root: Path, sample_clip: Path, tmp_path: Path) -> None:
    kind = make.__name__.strip("_")
    title_id = "bad-" + kind.replace("_", "-")
    source = make(tmp_path, sample_clip)
    if kind in FOUND_BY_THE_JOB:
        with pytest.raises(TranscodeFailed, match=message) as failed:
            transcode(lab, source, title_id, encrypt=True, progress=False, **FAST)
        job = failed.value.job
        assert (job.state, job.outcome) == ("failed", "rejected")
        assert job.error_code == failed.value.code == error_code(error)
        assert f"source {source.name} " in (job.error_message or "")
    else:
        # Refused at the upload (ffprobe): 422 naming the problem and the file, and no job at all.
        with pytest.raises(TranscoderRefused, match=message) as refused:
            transcode(lab, source, title_id, encrypt=True, progress=False, **FAST)
        assert (refused.value.status, refused.value.code) == (422, error_code(error))
        assert f"refused the upload of {source.name}" in str(refused.value)
        with transcoder(lab) as client:
            assert title_id not in {j.title_id for j in client.jobs(100)}
    # Nothing published, nothing listed, no key version left, no staging, no upload kept.
    assert not (media_root / title_id).exists()
    assert catalog_title(lab, title_id).status_code == 404
    assert key_versions(lab, title_id).status_code == 404
    assert no_staging_left(media_root) and no_upload_left(media_root)


@pytest.mark.parametrize("title_id", ["../etc", "a;rm -rf ~", "$(id)", ".staging", "UPPER", "x" * 64, "tab\tbed"])
def test_a_hostile_title_id_is_refused_by_the_client_and_by_the_service(
        title_id: str, lab: LocalTarget, media_root: Path, sample_clip: Path) -> None:
    with pytest.raises(ConfigError, match="invalid title id"):
        transcode(lab, sample_clip, title_id, progress=False)
    # Straight at the service, bypassing the client's check: 422 naming the field.
    response = httpx.post(f"{lab.endpoint('transcoder')}/jobs", timeout=10, headers=internal(lab),
                          json={"source_id": "0" * 32, "title_id": title_id})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["where"] == "body.title_id"
    assert not any(p.name == title_id for p in media_root.iterdir())


def test_the_service_refuses_jobs_it_cannot_run(lab: LocalTarget, media_root: Path, sample_clip: Path) -> None:
    with transcoder(lab) as client:
        with pytest.raises(TranscoderRefused, match="unknown_source"):
            client.submit(JobSpec(source_id="f" * 32, title_id="nope"))
        source = client.upload(sample_clip)
        with pytest.raises(TranscoderRefused, match="unknown_ladder"):
            client.submit(JobSpec(source_id=source.id, title_id="nope", ladder="gigantic"))
        with pytest.raises(TranscoderRefused, match="unknown_job"):
            client.job("0" * 32)
        assert "nope" not in {j.title_id for j in client.jobs(100)}
        client.delete_source(source.id)
    unknown_field = httpx.post(f"{lab.endpoint('transcoder')}/jobs", timeout=10, headers=internal(lab),
                               json={"source_id": source.id, "title_id": "nope", "bitrate": 9})
    assert unknown_field.status_code == 422
    # Without the lab's service token: neither uploads nor jobs.
    anonymous = httpx.post(f"{lab.endpoint('transcoder')}/sources", timeout=10, content=sample_clip.read_bytes(),
                           headers={"Content-Type": "video/mp4"})
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "unauthorized")
    assert httpx.get(f"{lab.endpoint('transcoder')}/jobs", timeout=10).status_code == 401
    assert no_upload_left(media_root)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(what: str, check: Callable[[], object], timeout: float = 60) -> object:
    # Errors reaching the transcoder mean "not yet": it is restarting.
    return until(check, timeout, 0.2, what, ignoring=(LabError, httpx.HTTPError, OSError))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough that a veryfast encode is still running when it is interrupted."""
    return make_sample(tmp_path_factory.mktemp("long") / "long.mp4", 20, width=1280, height=720)


def _start_long_job(lab: LocalTarget, long_clip: Path, title_id: str) -> tuple[TranscoderClient, Job, int]:
    client = transcoder(lab)
    job = submit_file(client, long_clip, title_id, encrypt=True, ladder="default", preset="medium")
    _wait_for("the encode to make progress", lambda: (p := client.job(job.id).progress) and p.fraction > 0)
    (transcoder_pid,) = next(s for s in lab.status() if s.name == "transcoder").pids
    (ffmpeg_pid,) = [c for c in _children(transcoder_pid) if "ffmpeg" in Path(f"/proc/{c}/comm").read_text()]
    return client, job, ffmpeg_pid


def _interrupted_cleanly(lab: LocalTarget, media_root: Path, client: TranscoderClient, job: Job,
                         ffmpeg_pid: int, title_id: str, sample_clip: Path) -> None:
    ended = _wait_for("the job to end", lambda: (j := client.job(job.id)).state == "failed" and j)
    assert isinstance(ended, Job)
    assert (ended.outcome, ended.error_code) == ("interrupted", "interrupted")
    assert "submit" in (ended.error_message or "")
    _wait_for("ffmpeg to be gone", lambda: not _alive(ffmpeg_pid), timeout=15)
    assert no_staging_left(media_root)
    assert not (media_root / title_id).exists()
    assert catalog_title(lab, title_id).status_code == 404
    # The interrupted job's upload went with it.
    assert no_upload_left(media_root)
    # The service still works after it.
    after = submit_file(client, sample_clip, f"{title_id}-after", **FAST)
    assert client.wait(after.id, timeout=120).state == "published"
    client.close()


def test_a_transcoder_killed_mid_job_leaves_no_ffmpeg_no_staging_and_marks_the_job_interrupted(
        lab: LocalTarget, media_root: Path, long_clip: Path, sample_clip: Path) -> None:
    client, job, ffmpeg_pid = _start_long_job(lab, long_clip, "killed-clock")
    (transcoder_pid,) = next(s for s in lab.status() if s.name == "transcoder").pids
    os.kill(transcoder_pid, signal.SIGKILL)
    # supervisord restarts it; on start it finds its interrupted job and cleans up after it.
    _interrupted_cleanly(lab, media_root, client, job, ffmpeg_pid, "killed-clock", sample_clip)


def test_a_transcoder_stopped_mid_job_stops_ffmpeg_and_cleans_up(
        lab: LocalTarget, media_root: Path, long_clip: Path, sample_clip: Path) -> None:
    client, job, ffmpeg_pid = _start_long_job(lab, long_clip, "stopped-clock")
    lab.restart("transcoder")  # SIGTERM: the worker cancels the encode through its progress callback
    _interrupted_cleanly(lab, media_root, client, job, ffmpeg_pid, "stopped-clock", sample_clip)


def test_jobs_reach_prometheus(lab: LocalTarget, sample_clip: Path) -> None:
    transcode(lab, sample_clip, "metered-clock", progress=False, **FAST)
    prom = Prometheus(lab.endpoint("prometheus"), timeout=10)
    prom.wait_for_samples('ott_transcode_rung_bytes{title="metered-clock"}', by="rung", count=1,
                          groups={"720p", "480p", "360p"}, timeout=60)
    bytes_by_rung = prom.query('ott_transcode_rung_bytes{title="metered-clock"}')
    assert prom.query('ott_transcode_jobs_total{outcome="published"}')["value"].iloc[0] >= 1
    assert set(bytes_by_rung["rung"]) == {"720p", "480p", "360p"}
    assert (bytes_by_rung["value"] > 0).all()
    assert prom.query("ott_transcode_speed_ratio_count")["value"].iloc[0] >= 1


def test_the_cli_prints_the_playlist_url_and_fails_clearly(lab: LocalTarget, sample_clip: Path,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, "OTTLAB_HOME": str(lab.cfg.home), "OTTLAB_BASE_PORT": str(lab.cfg.base_port)}
    cli = [sys.executable, "-m", "labkit.cli", "transcode"]
    done = subprocess.run([*cli, str(sample_clip), "--title", "cli-clock", "--ladder", "small", "--preset",
                           "ultrafast"], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"{lab.endpoint('origin')}/cli-clock/v[0-9T]+-[0-9a-f]{{4}}/master\.m3u8",
                        done.stdout.strip().splitlines()[-1])
    assert "published cli-clock" in done.stderr

    empty = tmp_path / "empty.mp4"
    empty.touch()
    failed = subprocess.run([*cli, str(empty), "--title", "cli-empty", "--ladder", "small"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 1
    assert "refused the upload of empty.mp4 (422 empty_source)" in failed.stderr and "is empty" in failed.stderr
    hostile = subprocess.run([*cli, str(sample_clip), "--title", "../../etc"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert hostile.returncode != 0 and "path traversal" in hostile.stderr


def test_a_published_title_plays_end_to_end_through_every_pop_with_signed_urls(
        lab: LocalTarget, sample_clip: Path, viewer: OttClient) -> None:
    # `viewer` is alice too: its teardown ends the stream session `ottlab playback` opens.
    transcode(lab, sample_clip, "edge-clock", encrypt=True, progress=False, **FAST)
    env = {**os.environ, "OTTLAB_HOME": str(lab.cfg.home), "OTTLAB_BASE_PORT": str(lab.cfg.base_port)}
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "playback", "edge-clock", "--user", "alice"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    grant = json.loads(done.stdout)
    assert [u["pop"] for u in grant["playback"]] == ["edge-0", "edge-1"]
    for entry in grant["playback"]:
        # ffmpeg plays the signed URL through the PoP, fetching the key with the playback authorisation.
        decoded = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-headers",
                                  f"Authorization: Bearer {grant['authorization']}\r\n", "-i", entry["url"],
                                  "-f", "null", "-"], capture_output=True, text=True, timeout=120, check=False)
        assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
        assert httpx.get(entry["url"], timeout=10).headers["x-cache-status"] == "HIT"
    forged = grant["playback"][0]["url"].replace("/edge-clock/", "/clear-clock/")
    assert httpx.get(forged, timeout=10).status_code == 403
    unknown = subprocess.run([sys.executable, "-m", "labkit.cli", "playback", "edge-clock", "--user", "mallory"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode == 2 and "no demo user 'mallory'" in unknown.stderr
