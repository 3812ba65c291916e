"""Publishing a title into the origin's media root atomically, and the whole pipeline.

Readers (the origin) only ever see a complete title: the encode happens in
``media_root/.staging/<title>-XXXX`` (same filesystem, so the final move is one ``rename``), and a
re-publish swaps the new folder with the old one in one ``renameat2(RENAME_EXCHANGE)`` call.

Example::

    from ott.media import ladder
    result = pipeline(Path("clip.mp4"), Path("var/media"), "big-buck-bunny",
                      ladder.load("small"))
    result.master
    # -> PosixPath('var/media/big-buck-bunny/master.m3u8')
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ott.media import playlists, probe, transcode, verify
from ott.media.errors import EncryptionError, InvalidTitleId, PublishError
from ott.media.ladder import Ladder

STAGING_DIR = ".staging"
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


def publish(staging: Path, media_root: Path, title_id: str) -> Path:
    """Move the finished ``staging`` folder to ``media_root/title_id`` in one rename; returns that path.

    If the title exists, the two folders are exchanged atomically (Linux ``renameat2``), then the
    old content (now at the staging path) is deleted: a reader sees the old or the new title, never
    a missing or half one. Without ``renameat2`` (other OS or filesystem) we fall back to two
    renames, which leaves a window of microseconds without the title.
    """
    validate_title_id(title_id)
    media_root.mkdir(parents=True, exist_ok=True)
    final = media_root / title_id
    if staging.stat().st_dev != media_root.stat().st_dev:
        raise PublishError(f"staging {staging} is on another filesystem than {media_root}; a rename cannot be "
                           f"atomic there: stage under {media_root / STAGING_DIR}", path=staging)
    staging.chmod(0o755)  # mkdtemp made it 0700; the origin's user must be able to read the title
    try:
        staging.rename(final)  # fails if final already exists as a non-empty folder
        return final
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise PublishError(f"cannot move {staging} to {final}: {exc}", path=final) from exc
    if _exchange(staging, final):
        shutil.rmtree(staging)  # now holds the previous version
        return final
    old = staging.with_name(staging.name + ".old")
    final.rename(old)
    staging.rename(final)
    shutil.rmtree(old)
    return final


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise PublishError(f"cannot swap {a} and {b}: {os.strerror(err)}", path=b)


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
