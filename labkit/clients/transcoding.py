"""Submitting transcodes to the platform's transcoder and following them to the end.

The transcoder (:mod:`ott.transcoder`) runs one job at a time: a content key from license for an
encrypted title, one ffmpeg for the whole ladder into staging, verification, one atomic rename
into the origin's media root, and only then the catalog entry. This client submits a job, drives
a progress bar from the job's progress (speed, ETA), and returns the finished job or raises.

Example::

    from labkit import make_target
    from labkit.clients.transcoding import transcode

    job = transcode(make_target(), "clip.mp4", "lab-clock", encrypt=True, ladder="small")
    job.result.master_url
    # -> 'http://127.0.0.1:18060/lab-clock/master.m3u8'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from labkit.core.errors import ConfigError, LabError, TimeoutExpired
from labkit.core.wait import until
from labkit.targets import Target
from ott.media.errors import InvalidTitleId
from ott.media.publish import validate_title_id
from ott.media.transcode import progress_bar
from ott.transcoder import Job, JobSpec

POLL_S = 0.5
# No progress at all for this long means the transcoder is stuck or gone.
STALL_TIMEOUT_S = 180.0
ProgressCallback = Callable[[float, float, float], None]


class TranscodeFailed(LabError):
    """The job ended without publishing; ``code`` is the transcoder's error code."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.code = job.error_code or "failed"
        hint = {
            "rejected": "fix the input (the message says what is wrong) and submit again",
            "interrupted": "the transcoder was stopped or restarted: submit the job again",
        }.get(job.outcome or "", "see `ottlab logs transcoder` for details")
        super().__init__(f"transcode of {job.title_id!r} {job.outcome}: [{self.code}] {job.error_message}", hint=hint)


class TranscoderRefused(LabError):
    """The transcoder would not take the job (bad parameters, unknown file)."""

    def __init__(self, status: int, code: str, message: str, hint: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(f"the transcoder refused the job ({status} {code}): {message}", hint=hint)


class TranscoderClient:
    """The transcoder's job API at ``url``; every call bounded by ``timeout``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TranscoderClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(self, spec: JobSpec) -> Job:
        response = self._request("POST", "/jobs", json=spec.model_dump(exclude_none=True))
        if response.status_code != 202:
            code, message = _error(response)
            hint = ("the transcoder reads the source from its own filesystem: on kube, run the Job in "
                    "k8s/base/media/transcode-job.yaml" if code == "source_not_found" else "")
            raise TranscoderRefused(response.status_code, code, message, hint)
        return Job.model_validate(response.json())

    def job(self, job_id: str) -> Job:
        response = self._request("GET", f"/jobs/{job_id}")
        if response.status_code != 200:
            raise TranscoderRefused(response.status_code, *_error(response))
        return Job.model_validate(response.json())

    def jobs(self, limit: int = 20) -> list[Job]:
        response = self._request("GET", "/jobs", params={"limit": limit})
        if response.status_code != 200:
            raise TranscoderRefused(response.status_code, *_error(response))
        return [Job.model_validate(item) for item in response.json()["items"]]

    def wait(self, job_id: str, *, on_progress: ProgressCallback | None = None, timeout: float = 3600.0,
             stall_timeout: float = STALL_TIMEOUT_S) -> Job:
        """Poll until the job ends; raise :class:`TranscodeFailed` unless it published."""
        last_change, last_seen = time.monotonic(), None

        def published() -> Job | None:
            nonlocal last_change, last_seen
            job = self.job(job_id)
            seen = (job.state, job.progress.fraction if job.progress else None)
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            if job.progress is not None and on_progress is not None:
                eta = job.progress.eta_s if job.progress.eta_s is not None else float("inf")
                on_progress(job.progress.fraction, job.progress.speed, eta)
            if job.state == "published":
                if on_progress is not None:
                    on_progress(1.0, job.result.speed if job.result else 0.0, 0.0)
                return job
            if job.state == "failed":
                raise TranscodeFailed(job)
            if job.state == "running" and time.monotonic() - last_change > stall_timeout:
                raise TimeoutExpired(f"any progress of transcode job {job_id}", stall_timeout,
                                     hint="the encoder looks stuck: see `ottlab logs transcoder`")
            return None

        return until(published, timeout, POLL_S, f"transcode job {job_id}", hint="see `ottlab logs transcoder`")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabError(f"the transcoder at {self.url} is unreachable: {exc!r}",
                           hint="start the media layer: `ottlab up` (check it with `ottlab status`)") from None


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        message = str(error["message"])
        problems = error.get("details") or []
        if problems and isinstance(problems, list):
            message += ": " + "; ".join(f"{p.get('where')}: {p.get('problem')}"
                                        for p in problems if isinstance(p, dict))
        return str(error["code"]), message
    except (ValueError, KeyError, TypeError):
        return "error", response.text[:300]


def sample_clip(target: Target, seconds: float, *, width: int = 1280, height: int = 720) -> Path:
    """The lab's test clip of ``seconds`` (:func:`ott.media.sample.make_sample`), made once on this machine.

    It is deterministic, so it is kept in the lab's data directory and every later call (another
    notebook, a second run) reuses the file::

        clip = sample_clip(target, 20)   # <lab>/data/sources/lab-clock-20s-1280x720.mp4
    """
    from ott.media.sample import make_sample

    path = target.cfg.data_dir / "sources" / f"lab-clock-{seconds:g}s-{width}x{height}.mp4"
    if not path.is_file():
        make_sample(path, seconds, width=width, height=height)
    return path


def transcode(target: Target, source: str | Path, title_id: str, *, encrypt: bool = False, ladder: str = "default",
              preset: str | None = None, name: str | None = None, description: str | None = None,
              tier: str | None = None, progress: bool = True, timeout: float = 3600.0) -> Job:
    """Transcode ``source`` into title ``title_id`` on ``target``; the published job (or an error).

    ``progress`` shows a bar (terminal or notebook widget) with speed and ETA.
    """
    try:
        validate_title_id(title_id)
    except InvalidTitleId as exc:
        raise ConfigError(str(exc)) from None
    spec = JobSpec.model_validate({
        "source": target.transcoder_source(Path(source)), "title_id": title_id,
        "encrypt": encrypt, "ladder": ladder, "preset": preset, "name": name, "description": description,
        "tier": tier,
    })
    with TranscoderClient(target.endpoint("transcoder")) as client:
        job = client.submit(spec)
        if not progress:
            return client.wait(job.id, timeout=timeout)
        with progress_bar(title_id) as bar:
            return client.wait(job.id, on_progress=bar, timeout=timeout)


# -- looking at what a job made ---------------------------------------------------------------

# An MPEG transport stream is packets of 188 bytes, each starting with the sync byte 0x47.
TS_PACKET = 188
TS_SYNC = 0x47


def published_folder(target: Target, job: Job) -> Path:
    """The folder of the version ``job`` published, in the origin's media root (``<root>/<title>/<version>``)."""
    if job.result is None:
        raise ConfigError(f"transcode job {job.id} published nothing ({job.state})", hint="transcode the title first")
    title, version = httpx.URL(job.result.master_url).path.strip("/").split("/")[:2]
    return target.media_root() / title / version


def still_frame(source: Path, *, at_s: float = 1.5, width: int = 640, timeout: float = 60.0) -> bytes:
    """One JPEG frame of ``source`` at ``at_s`` seconds, ``width`` pixels wide (ffmpeg, echoed as ``+ cmd``)."""
    import subprocess

    from labkit.core.console import echo_command
    from ott.media import process

    command = [process.FFMPEG, "-v", "error", "-ss", f"{at_s:g}", "-i", str(source), "-frames:v", "1",
               "-vf", f"scale={width}:-2", "-q:v", "4", "-f", "image2pipe", "-c:v", "mjpeg", "-"]
    echo_command(command)
    return subprocess.run(command, capture_output=True, check=True, timeout=timeout,
                          stdin=subprocess.DEVNULL).stdout


def command_lines(args: list[str]) -> str:
    """A command one option per line, ready to paste into a shell.

    >>> print(command_lines(["ffmpeg", "-i", "in.mp4", "-c:v", "libx264", "out dir/x.m3u8"]))
    ffmpeg \\
        -i in.mp4 \\
        -c:v libx264 'out dir/x.m3u8'
    """
    import shlex

    lines: list[list[str]] = [[args[0]]]
    for arg in args[1:]:
        if arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            lines.append([arg])
        else:
            lines[-1].append(arg)
    return " \\\n    ".join(shlex.join(line) for line in lines)


def ts_facts(data: bytes) -> dict[str, object]:
    """What a demuxer sees in a segment: its first bytes, the 188-byte packets starting 0x47, ffprobe's streams."""
    import tempfile

    from ott.media.errors import ProbeFailed
    from ott.media.probe import ffprobe_json

    starts = range(0, len(data) - TS_PACKET + 1, TS_PACKET)
    with tempfile.NamedTemporaryFile(suffix=".ts") as fh:
        fh.write(data)
        fh.flush()
        try:
            streams = ", ".join(f"{s['codec_type']} {s['codec_name']}"
                                for s in ffprobe_json(fh.name, "-show_streams").get("streams", []))
        except ProbeFailed as exc:
            streams = "ffprobe failed: " + str(exc).rsplit(": ", 1)[-1]   # after the temp file's name
    return {"bytes": len(data), "first bytes": data[:8].hex(" "),
            "packets starting 0x47": f"{sum(data[i] == TS_SYNC for i in starts)} of {len(starts)}",
            "ffprobe finds": streams or "nothing"}


def decrypt_segment(ciphertext: bytes, key: bytes, iv: str) -> bytes:
    """An HLS AES-128 segment decrypted: AES-128-CBC with the playlist's IV (``0x…``), PKCS#7 padding removed."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes.fromhex(iv.removeprefix("0x")))).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(ciphertext) + decryptor.finalize()) + unpadder.finalize()
