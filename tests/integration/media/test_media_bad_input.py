"""Every kind of bad input fails with its own error, publishes nothing and leaves no temp files."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from _bad_sources import BAD_INPUTS

from ott.media import errors, ladder
from ott.media.publish import pipeline

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("make", "error", "message"), BAD_INPUTS,
                         ids=[make.__name__.strip("_") for make, _, _ in BAD_INPUTS])
def test_bad_source(make: Callable[[Path, Path], Path], error: type[errors.MediaError], message: str,
                    sample_clip: Path, media_root: Path, tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("ott-*"))
    source = make(tmp_path, sample_clip)
    with pytest.raises(error, match=message) as info:
        pipeline(source, media_root, "bad-title", ladder.load("small"))
    assert info.value.path == source  # the error names the file
    assert list(media_root.iterdir()) == []  # nothing published, no .staging left behind
    assert set(Path(tempfile.gettempdir()).glob("ott-*")) == before


def test_missing_source(media_root: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.SourceNotFound):
        pipeline(tmp_path / "nope.mp4", media_root, "t", ladder.load("small"))


@pytest.mark.parametrize("title_id", ["../escape", "a/b", "$(rm -rf ~)", "x;reboot", "ünïcode", "", "x" * 64])
def test_hostile_title_id(title_id: str, sample_clip: Path, media_root: Path) -> None:
    with pytest.raises(errors.InvalidTitleId):
        pipeline(sample_clip, media_root, title_id, ladder.load("small"))
    assert list(media_root.iterdir()) == []
    assert not (media_root.parent / "escape").exists()


def test_encode_failure_cleans_staging(sample_clip: Path, media_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ffmpeg itself failing mid-run (simulated by an encoder name it does not know).
    from ott.media import transcode

    real = transcode.build_command

    def broken(*args: object, **kwargs: object) -> list[str]:
        command = real(*args, **kwargs)  # type: ignore[arg-type]
        return [("libx999" if part == "libx264" else part) for part in command]

    monkeypatch.setattr(transcode, "build_command", broken)
    with pytest.raises(errors.EncodeFailed) as info:
        pipeline(sample_clip, media_root, "broken", ladder.load("small"))
    assert any("libx999" in line for line in info.value.stderr_tail)
    assert list(media_root.iterdir()) == []
