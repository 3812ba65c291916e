"""Errors of the media pipeline: one root, one class per kind of mistake.

Every message says what is wrong *and* what to do next, so a notebook or CLI can show it as is::

    try:
        pipeline(source, media_root, "big-buck-bunny", ladder)
    except MediaError as exc:
        print(exc)          # readable sentence
        print(exc.path)     # structured field for callers that branch
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MediaError(Exception):
    """Root of every error raised by :mod:`ott.media`.

    ``path`` names the file or folder concerned when there is one.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class InvalidTitleId(MediaError):
    """A title id that could escape the media root or confuse a shell or URL."""

    def __init__(self, title_id: str, reason: str) -> None:
        super().__init__(
            f"invalid title id {title_id!r}: {reason}; use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit (e.g. 'big-buck-bunny')"
        )
        self.title_id = title_id
        self.reason = reason


class SourceError(MediaError):
    """The source file cannot be used; the subclass says why."""


class SourceNotFound(SourceError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"source {path} does not exist or is not a file; check the path", path=path)


class EmptySource(SourceError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"source {path} is empty (0 bytes); the upload or copy probably failed, send it again",
                         path=path)


class NotMedia(SourceError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"source {path} is not a media file ffprobe can read ({detail}); "
                         "check that you picked the right file", path=path)
        self.detail = detail


class TruncatedMedia(SourceError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"source {path} is truncated or damaged ({detail}); "
                         "copy or upload it again in full", path=path)
        self.detail = detail


class NoVideoStream(SourceError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"source {path} has no video stream (audio-only or data file); "
                         "the ladder needs a video source", path=path)


class UnsupportedSource(SourceError):
    """Resolution, pixel format or frame rate the ladder cannot take."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"source {path} cannot be encoded with this ladder: {detail}", path=path)
        self.detail = detail


class LadderError(MediaError):
    """A ladder declaration is wrong; ``field`` names the offending field (e.g. ``small.rungs[1].height``)."""

    def __init__(self, field: str, problem: str, *, path: Path | None = None) -> None:
        where = f" in {path}" if path is not None else ""
        super().__init__(f"ladder field {field!r}{where}: {problem}", path=path)
        self.field = field
        self.problem = problem


class EncryptionError(MediaError):
    """Key or key URI unusable for AES-128 HLS."""


class ProbeFailed(MediaError):
    """ffprobe itself failed or timed out on a file we produced (not a source problem)."""


class EncodeFailed(MediaError):
    """ffmpeg exited with an error or timed out; ``stderr_tail`` holds its last lines."""

    def __init__(self, reason: str, stderr_tail: Sequence[str] = ()) -> None:
        tail = "\n".join(stderr_tail)
        detail = f"\n--- ffmpeg stderr (last lines) ---\n{tail}" if tail else ""
        super().__init__(f"transcode failed: {reason}; read ffmpeg's own message below{detail}")
        self.reason = reason
        self.stderr_tail = list(stderr_tail)


class VerificationFailed(MediaError):
    """The produced stream breaks at least one HLS rule; ``problems`` lists every one found."""

    def __init__(self, problems: Sequence[str], *, path: Path | None = None) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} verification problem(s) in {path}; nothing was published:\n{lines}",
                         path=path)
        self.problems = list(problems)


class PublishError(MediaError):
    """Moving the staged title into the media root failed."""
