"""Submitting transcodes to the platform's transcoder and following them to the end.

The transcoder (:mod:`ott.transcoder`) runs one job at a time: a content key from license for an
encrypted title, one ffmpeg for the whole ladder into staging, verification, one atomic rename
into the origin's media root, and only then the catalog entry. This client uploads the source
file (its bytes: the transcoder's filesystem is not this machine's, on any target), submits a job
for it, drives a progress bar from the job's progress (speed, ETA), and returns the finished job
or raises. Every call carries the lab's service token.

Example::

    from labkit import make_target
    from labkit.clients.transcoding import transcode

    job = transcode(make_target(), "clip.mp4", "lab-clock", encrypt=True, ladder="small")
    job.result.master_url
    # -> 'http://127.0.0.1:18060/lab-clock/master.m3u8'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from labkit.core.console import progress as progress_line
from labkit.core.errors import ConfigError, LabError, TimeoutExpired
from labkit.core.wait import until
from labkit.targets import Target
from ott.media.errors import InvalidTitleId
from ott.media.publish import validate_title_id
from ott.media.transcode import progress_bar
from ott.transcoder import Job, JobOptions, JobSpec, Source, SourceList

POLL_S = 0.5
# No progress at all for this long means the transcoder is stuck or gone.
STALL_TIMEOUT_S = 180.0
ProgressCallback = Callable[[float, float, float], None]
# An upload: bytes sent so far, of the file's size.
UploadProgress = Callable[[int, int], None]
UPLOAD_CHUNK = 1024 * 1024
# Each upload step is bounded: a chunk written within `write`, the answer (after the transcoder's
# ffprobe of the whole file) within `read`.
UPLOAD_TIMEOUT = httpx.Timeout(10.0, read=120.0, write=60.0)
# A progress line at most this often during an upload.
UPLOAD_REPORT_S = 2.0


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
    """The transcoder would not take the job or the upload (bad parameters, not a video, too large)."""

    def __init__(self, status: int, code: str, message: str, hint: str = "", *, what: str = "the job") -> None:
        self.status = status
        self.code = code
        super().__init__(f"the transcoder refused {what} ({status} {code}): {message}", hint=hint)


_REFUSAL_HINTS = {
    401: "send the lab's service token (target.service_token()) as X-Service-Token",
    403: "the service token is not this lab's: use target.service_token()",
    413: "send a shorter or smaller encode of the file, or raise OTT_MAX_SOURCE_BYTES on the transcoder",
    415: "send the file's bytes with Content-Type video/mp4 or application/octet-stream",
}


class TranscoderClient:
    """The transcoder's API at ``url`` with the lab's service ``token``; every call bounded by ``timeout``.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).

    Example::

        with TranscoderClient(target.endpoint("transcoder"), token=target.service_token()) as client:
            source = client.upload(Path("clip.mp4"))
            job = client.wait(client.submit(JobSpec(source_id=source.id, title_id="lab-clock")).id)
    """

    def __init__(self, url: str, *, token: str, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers={"X-Service-Token": token},
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TranscoderClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def sources(self) -> SourceList:
        """The uploads on the transcoder, and the largest it accepts."""
        response = self._request("GET", "/sources")
        if response.status_code != 200:
            raise _refused(response, "the listing of sources")
        return SourceList.model_validate(response.json())

    def upload(self, path: Path, *, on_progress: UploadProgress | None = None) -> Source:
        """Send ``path``'s bytes to the transcoder; the probed source, whose ``id`` a job names.

        A file over the transcoder's limit is refused before a byte is sent; one the transcoder's
        ffprobe cannot use is refused (422, naming the problem) and not kept.
        """
        what = f"the upload of {path.name}"
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ConfigError(f"cannot read the source {path}: {exc.strerror or exc}",
                              hint="check the path; make a test clip with "
                                   "`ottlab sample --seconds 20 --out clip.mp4`") from None
        limit = self.sources().max_bytes
        if size > limit:
            raise TranscoderRefused(413, "source_too_large", f"{path.name} is {size} bytes, over the transcoder's "
                                    f"limit of {limit} bytes (OTT_MAX_SOURCE_BYTES)", _REFUSAL_HINTS[413], what=what)

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as fh:
                while chunk := fh.read(UPLOAD_CHUNK):
                    yield chunk
                    sent += len(chunk)
                    if on_progress is not None:
                        on_progress(sent, size)

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            response = self.http.post("/sources", params={"name": path.name}, content=chunks(), headers=headers,
                                      timeout=UPLOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            raise LabError(f"{what} to the transcoder at {self.url} broke off: {exc!r}; the transcoder keeps no part "
                           "of it", hint="send it again; if it breaks again, see `ottlab logs transcoder`") from None
        if response.status_code != 201:
            raise _refused(response, what)
        return Source.model_validate(response.json())

    def delete_source(self, source_id: str) -> None:
        """Delete an upload no job uses."""
        response = self._request("DELETE", f"/sources/{source_id}")
        if response.status_code != 204:
            raise _refused(response, f"the deletion of source {source_id}")

    def submit(self, spec: JobSpec) -> Job:
        response = self._request("POST", "/jobs", json=spec.model_dump(exclude_none=True))
        if response.status_code != 202:
            raise _refused(response, "the job")
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


def _refused(response: httpx.Response, what: str) -> TranscoderRefused:
    code, message = _error(response)
    return TranscoderRefused(response.status_code, code, message, _REFUSAL_HINTS.get(response.status_code, ""),
                             what=what)


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
    """Upload ``source`` to ``target``'s transcoder and transcode it into title ``title_id``; the published job.

    The same on every target: the file's bytes travel to the transcoder (:meth:`TranscoderClient.upload`),
    which deletes them when the job ends. ``progress`` prints upload progress lines and shows a
    bar (terminal or notebook widget) with the encode's speed and ETA. Bad parameters are refused
    before anything is sent; a file the transcoder refuses raises :class:`TranscoderRefused`, a
    job that fails :class:`TranscodeFailed`.
    """
    try:
        validate_title_id(title_id)
    except InvalidTitleId as exc:
        raise ConfigError(str(exc)) from None
    options = JobOptions.model_validate({
        "title_id": title_id, "encrypt": encrypt, "ladder": ladder, "preset": preset, "name": name,
        "description": description, "tier": tier,
    })
    path = Path(source).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"source {path} does not exist or is not a file",
                          hint="check the path; make a test clip with `ottlab sample --seconds 20 --out clip.mp4`")
    with TranscoderClient(target.endpoint("transcoder"), token=target.service_token()) as client:
        started = time.monotonic()
        uploaded = client.upload(path, on_progress=upload_reporter(path.name) if progress else None)
        if progress:
            progress_line(f"uploaded {path.name}: {uploaded.bytes / 1e6:.1f} MB, {uploaded.width}x{uploaded.height}, "
                          f"{uploaded.duration_s:.1f} s, in {time.monotonic() - started:.1f} s (source {uploaded.id})")
        try:
            job = client.submit(JobSpec(source_id=uploaded.id, **options.model_dump()))
        except TranscoderRefused:
            # No job will use it: delete it now rather than leave it to the transcoder's OTT_SOURCE_TTL.
            _forget_source(client, uploaded)
            raise
        if not progress:
            return client.wait(job.id, timeout=timeout)
        with progress_bar(title_id) as bar:
            return client.wait(job.id, on_progress=bar, timeout=timeout)


def _forget_source(client: TranscoderClient, source: Source) -> None:
    try:
        client.delete_source(source.id)
    except LabError as exc:  # the refusal being raised matters more; the transcoder's TTL removes it
        progress_line(f"source {source.id} ({source.name}) stays on the transcoder until OTT_SOURCE_TTL: "
                      f"{exc.message}")


def upload_reporter(name: str, *, every_s: float | None = None) -> UploadProgress:
    """A progress callback for :meth:`TranscoderClient.upload`: a line at most every ``every_s`` seconds."""
    every_s = UPLOAD_REPORT_S if every_s is None else every_s
    last = [time.monotonic()]

    def report(sent: int, size: int) -> None:
        now = time.monotonic()
        if sent < size and now - last[0] >= every_s:
            last[0] = now
            progress_line(f"uploading {name}: {sent / 1e6:.1f} of {size / 1e6:.1f} MB ({sent / size:.0%})")

    return report


# -- looking at what a job made ---------------------------------------------------------------

# An MPEG transport stream is packets of 188 bytes, each starting with the sync byte 0x47.
TS_PACKET = 188
TS_SYNC = 0x47


def published_folder(target: Target, job: Job) -> Path:
    """The folder of the version ``job`` published, on this machine (:meth:`Target.media_folder`)."""
    if job.result is None:
        raise ConfigError(f"transcode job {job.id} published nothing ({job.state})", hint="transcode the title first")
    title, version = httpx.URL(job.result.master_url).path.strip("/").split("/")[:2]
    return target.media_folder(title, version)


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
