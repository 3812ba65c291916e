"""Media pipeline: sample content, one-process HLS ladder encoding, playlists, verification, publishing.

The public API, assembled once here; the modules hold the details::

    from ott import media
    clip = media.make_sample(Path("var/clip.mp4"), 30)
    with media.progress_bar("demo") as bar:
        result = media.pipeline(clip, Path("var/media"), "demo", media.load_ladder("small"), on_progress=bar)
    print(result.report.rungs)

``verify`` and ``publish`` are deliberately not re-exported as functions: the names belong to their
modules (``media.verify.verify(path)``, ``media.publish.publish(...)``), so patching and imports stay
unambiguous.
"""

from ott.media import publish, verify
from ott.media.errors import (
    EmptySource,
    EncodeFailed,
    EncryptionError,
    InvalidTitleId,
    LadderError,
    MediaError,
    NotMedia,
    NoVideoStream,
    ProbeFailed,
    PublishError,
    SourceError,
    SourceNotFound,
    TruncatedMedia,
    UnsupportedSource,
    VerificationFailed,
)
from ott.media.ladder import Ladder, Rung
from ott.media.ladder import load as load_ladder
from ott.media.probe import SourceInfo, inspect
from ott.media.publish import PublishResult, pipeline, validate_title_id
from ott.media.sample import make_sample
from ott.media.transcode import Encryption, Transcode, build_command, progress_bar
from ott.media.verify import Report

__all__ = [
    "EmptySource", "EncodeFailed", "Encryption", "EncryptionError", "InvalidTitleId", "Ladder", "LadderError",
    "MediaError", "NoVideoStream", "NotMedia", "ProbeFailed", "PublishError", "PublishResult", "Report", "Rung",
    "SourceError", "SourceInfo", "SourceNotFound", "Transcode", "TruncatedMedia", "UnsupportedSource",
    "VerificationFailed", "build_command", "inspect", "load_ladder", "make_sample", "pipeline", "progress_bar",
    "publish", "validate_title_id", "verify",
]
