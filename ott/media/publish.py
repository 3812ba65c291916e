"""Publishing a title into the origin's media root atomically, and the whole pipeline.

Readers (the origin) only ever see a complete title: the encode happens in
``media_root/.staging/<title>-XXXX`` (same filesystem, so the final move is one ``rename``) and
lands as a new *version* folder, ``media_root/<title>/<version>/``. A version never changes once
published, so CDN caches may keep every object of it for as long as they like; a re-publish is a
new version, and the catalog's playback URL (updated after the publish) is what moves players to
it. The newest :data:`KEEP_VERSIONS` versions stay, so a player holding the previous playlist can
finish; older ones are removed.

Example::

    from ott.media import ladder
    result = pipeline(Path("clip.mp4"), Path("var/media"), "big-buck-bunny",
                      ladder.load("small"))
    result.master
    # -> PosixPath('var/media/big-buck-bunny/v20261124T222603041977-3f9a/master.m3u8')
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ott.media import playlists, probe, transcode, verify
from ott.media.errors import EncryptionError, InvalidTitleId, PublishError
from ott.media.ladder import Ladder

STAGING_DIR = ".staging"
KEEP_VERSIONS = 2
# Microseconds since issue 6: two publishes within one second sort by time, not by their random suffix.
# Older names (seconds only) still count, and sort before any newer one of their second.
_VERSION = re.compile(r"v\d{8}T\d{6}(?:\d{6})?-[0-9a-f]{4}")
_TITLE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHELL_META = set("$`;&|<>()*?![]{}~'\"\\ \t\n\r#%=")


def validate_title_id(title_id: str) -> str:
    """Return ``title_id`` if it is safe as a folder name, URL segment and shell word.

    >>> validate_title_id("big-buck-bunny")
    'big-buck-bunny'
    >>> validate_title_id("../etc")
    Traceback (most recent call last):
    ...
    ott.media.errors.InvalidTitleId: invalid title id '../etc': ...
    """
    if not isinstance(title_id, str) or not title_id:
        raise InvalidTitleId(str(title_id), "it is empty")
    if len(title_id) > 63:
        raise InvalidTitleId(title_id, f"it is {len(title_id)} characters long (at most 63)")
    if "/" in title_id or "\\" in title_id or ".." in title_id or title_id.startswith("."):
        raise InvalidTitleId(title_id, "it contains a path separator or '..' (path traversal)")
    if any(c in _SHELL_META for c in title_id):
        raise InvalidTitleId(title_id, "it contains shell metacharacters or whitespace")
    if not title_id.isascii():
        raise InvalidTitleId(title_id, "it contains non-ASCII characters")
    # fullmatch, not match with '$': '$' would accept a trailing newline.
    if not _TITLE_ID.fullmatch(title_id):
        raise InvalidTitleId(title_id, "it has characters outside a-z, 0-9 and '-', or starts with '-'")
    return title_id


_last_us = 0


def new_version() -> str:
    """A version folder name, in the order of publishing to the microsecond (``v20261124T222603041977-3f9a``).

    The time orders the versions (:func:`versions` keeps the newest by name); the suffix keeps two
    processes publishing in the same microsecond apart.
    """
    global _last_us
    # Strictly increasing within this process, even for calls in the same microsecond.
    _last_us = max(time.time_ns() // 1000, _last_us + 1)
    seconds, micro = divmod(_last_us, 1_000_000)
    return time.strftime("v%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micro:06d}-{secrets.token_hex(2)}"


def versions(media_root: Path, title_id: str) -> list[Path]:
    """The title's published versions, oldest first."""
    folder = media_root / validate_title_id(title_id)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name))


def publish(staging: Path, media_root: Path, title_id: str, *, keep: int = KEEP_VERSIONS) -> Path:
    """Move the finished ``staging`` folder to a new version of ``title_id`` in one rename; returns it.

    Then removes all but the newest ``keep`` versions. A reader sees a complete version or none.
    """
    validate_title_id(title_id)
    media_root.mkdir(parents=True, exist_ok=True)
    if staging.stat().st_dev != media_root.stat().st_dev:
        raise PublishError(f"staging {staging} is on another filesystem than {media_root}; a rename cannot be "
                           f"atomic there: stage under {media_root / STAGING_DIR}", path=staging)
    title = media_root / title_id
    title.mkdir(exist_ok=True)
    title.chmod(0o755)
    staging.chmod(0o755)  # mkdtemp made it 0700; the origin's user must be able to read the title
    final = title / new_version()
    while final.exists():  # two publishes in the same second drew the same suffix
        final = title / new_version()
    try:
        staging.rename(final)
    except OSError as exc:
        raise PublishError(f"cannot move {staging} to {final}: {exc}", path=final) from exc
    for old in versions(media_root, title_id)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass(frozen=True)
class PublishResult:
    """What :func:`pipeline` produced."""

    title_id: str
    path: Path
    master: Path
    source: probe.SourceInfo
    ladder: Ladder                  # fitted to the source (rungs taller than it dropped)
    report: verify.Report
    command: list[str]
    encode_seconds: float
    encrypted: bool

    @property
    def speed(self) -> float:
        """Encode speed × realtime (source duration / wall time of the ffmpeg run)."""
        return self.source.duration / self.encode_seconds if self.encode_seconds else 0.0


def pipeline(source: Path, media_root: Path, title_id: str, ladder: Ladder, *,
             encrypt_key: bytes | None = None, key_uri: str | None = None,
             on_progress: transcode.ProgressCallback | None = None,
             timeout: float | None = None, staging_prefix: str | None = None) -> PublishResult:
    """inspect → transcode (staging) → playlists → verify → publish. Nothing is published on failure.

    Clear output is fMP4; with ``encrypt_key`` (16 bytes, created per title and registered with the
    license service by the caller) and ``key_uri`` (the license service URL) it is AES-128 TS.
    ``staging_prefix`` names the staging folder (default ``<title>-``), so a supervisor that died
    mid-job can find and remove what its job left.

    >>> with transcode.progress_bar(title_id) as bar:                 # doctest: +SKIP
    ...     pipeline(src, root, "big-buck-bunny", ladder.load("small"), on_progress=bar)
    """
    validate_title_id(title_id)
    if (encrypt_key is None) != (key_uri is None):
        raise EncryptionError("pass both encrypt_key and key_uri for an encrypted title, or neither")
    encryption = transcode.Encryption(encrypt_key, key_uri) if encrypt_key and key_uri else None
    info = probe.inspect(source)
    fitted = ladder.fitting(info.height, source)
    staging_root = media_root / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix or f"{title_id}-", dir=staging_root))
    try:
        started = time.monotonic()
        command = transcode.transcode(info, fitted, staging, encryption=encryption, on_progress=on_progress,
                                      timeout=timeout)
        encode_seconds = time.monotonic() - started
        playlists.write_playlists(staging, key=encrypt_key)
        report = verify.verify(staging, key=encrypt_key)
        final = publish(staging, media_root, title_id)
    finally:
        # After a successful publish the staging path is gone (renamed) or holds nothing we need.
        shutil.rmtree(staging, ignore_errors=True)
        # Other pipelines may be staging concurrently: only an empty staging root is removed.
        with contextlib.suppress(OSError):
            staging_root.rmdir()
    return PublishResult(title_id=title_id, path=final, master=final / transcode.MASTER, source=info,
                         ladder=fitted, report=report, command=command, encode_seconds=encode_seconds,
                         encrypted=encryption is not None)
