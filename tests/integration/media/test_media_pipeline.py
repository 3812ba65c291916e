"""The pipeline end to end with real ffmpeg: clear fMP4, AES-128 TS, re-publish, injected failure."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import m3u8
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ott.media import ladder, publish, verify
from ott.media.errors import VerificationFailed
from ott.media.publish import pipeline

pytestmark = pytest.mark.integration

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY_URI = "https://license.ott.test/v1/keys/demo-title?kid=1"


def _temp_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("ott-*")}


@pytest.fixture(autouse=True)
def _no_temp_leftovers() -> Iterator[None]:
    before = _temp_leftovers()
    yield
    assert _temp_leftovers() - before == set(), "private temp folders (key, probe, verify) must be removed"


def _keyframes_in(data: bytes, suffix: str, tmp: Path) -> list[str]:
    """ffprobe's packet flags for the video in ``data`` (an I-frame byte range, made self-contained)."""
    path = tmp / f"iframe{suffix}"
    path.write_bytes(data)
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=flags",
                             "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, check=True)
    return [line.strip(",") for line in result.stdout.split()]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_clear_fmp4_pipeline(sample_clip: Path, media_root: Path, small_ladder: ladder.Ladder,
                             tmp_path: Path) -> None:
    progress: list[tuple[float, float, float]] = []
    result = pipeline(sample_clip, media_root, "demo", small_ladder,
                      on_progress=lambda f, s, e: progress.append((f, s, e)))
    assert result.path.parent == media_root / "demo" and result.master == result.path / "master.m3u8"
    assert re.fullmatch(r"v\d{8}T\d{12}-[0-9a-f]{4}", result.path.name) and result.master.is_file()
    assert sorted(p.name for p in media_root.iterdir()) == ["demo"]  # no .staging leftovers
    assert progress[-1][0] == 1.0 and any(s > 0 for _, s, _ in progress)

    master = m3u8.load(str(result.master))
    text = result.master.read_text()
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in text
    assert len(master.playlists) == 3 and len(master.iframe_playlists) == 3
    for line in (x for x in text.splitlines() if x.startswith("#EXT-X-STREAM-INF:")):
        for attribute in ("BANDWIDTH=", "AVERAGE-BANDWIDTH=", 'CODECS="avc1.64', "mp4a.40.2",
                          "RESOLUTION=", "FRAME-RATE=25.000"):
            assert attribute in line
    resolutions = {p.stream_info.resolution for p in master.playlists}
    assert resolutions == {(1280, 720), (854, 480), (640, 360)}
    for rung in ("720p", "480p", "360p"):
        media = m3u8.load(str(result.path / rung / "index.m3u8"))
        assert media.playlist_type == "vod" and media.is_endlist and media.segment_map
        iframes = m3u8.load(str(result.path / rung / "iframes.m3u8"))
        assert iframes.is_i_frames_only and all(s.byterange for s in iframes.segments)
        # Each range (moof → end of the keyframe sample) plus the init segment is exactly one keyframe.
        init = (result.path / rung / iframes.segment_map[0].uri).read_bytes()
        for entry in iframes.segments:
            length, offset = (int(x) for x in entry.byterange.split("@"))
            data = (result.path / rung / entry.uri).read_bytes()[offset:offset + length]
            assert _keyframes_in(init + data, ".mp4", tmp_path)[0].startswith("K")
    # The published tree passes verification on its own (the pipeline ran it on staging).
    report = verify.verify(result.path)
    assert [r.name for r in report.rungs] == ["720p", "480p", "360p"]
    assert all(r.declared_bandwidth >= r.peak_bps for r in report.rungs)

    # And verification is not a rubber stamp: a tampered copy fails with every problem listed.
    tampered = tmp_path / "tampered"
    shutil.copytree(result.path, tampered)
    lines = (tampered / "master.m3u8").read_text().replace(",FRAME-RATE=25.000", "", 1).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF:"))
    lines[first] = re.sub(r"(?<!-)BANDWIDTH=\d+", "BANDWIDTH=1000", lines[first])
    lines[first] = re.sub(r"AVERAGE-BANDWIDTH=\d+", "AVERAGE-BANDWIDTH=1000", lines[first])
    (tampered / "master.m3u8").write_text("\n".join(lines) + "\n")
    with pytest.raises(VerificationFailed) as info:
        verify.verify(tampered, decode=False)
    problems = "\n".join(info.value.problems)
    assert "lacks FRAME-RATE" in problems
    assert "BANDWIDTH 1000 is below the measured peak" in problems
    assert "AVERAGE-BANDWIDTH 1000 is not within 10 %" in problems


def test_encrypted_ts_pipeline(sample_clip: Path, media_root: Path, small_ladder: ladder.Ladder,
                               tmp_path: Path) -> None:
    result = pipeline(sample_clip, media_root, "secret", small_ladder, encrypt_key=KEY, key_uri=KEY_URI)
    title = result.path
    segments = sorted(title.rglob("*.ts"))
    assert segments and not list(title.rglob("*.m4s"))
    # The key never lands in the published tree: no key file, no file containing the key bytes.
    for path in title.rglob("*"):
        assert path.suffix in {".ts", ".m3u8"} or path.is_dir(), path
        if path.is_file():
            assert KEY not in path.read_bytes()
            assert KEY.hex() not in path.read_bytes().decode("latin-1")
    # Every media and I-frame playlist points at the license service, never at a file.
    for playlist in title.rglob("*/*.m3u8"):
        keys = [k for k in m3u8.load(str(playlist)).keys if k]
        assert [(k.method, k.uri) for k in keys] == [("AES-128", KEY_URI)], playlist
    # Without the key a segment is noise to ffmpeg.
    probe = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(segments[0]), "-f", "null", "-"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert probe.returncode != 0 or probe.stderr.strip()
    with pytest.raises(VerificationFailed, match="pass the content key"):
        verify.verify(title)
    with pytest.raises(VerificationFailed, match="wrong key"):
        verify.verify(title, key=bytes(16))
    report = verify.verify(title, key=KEY)
    assert report.encrypted and len(report.rungs) == 3
    # I-frame ranges start at the segment start (CBC needs the IV of offset 0) and decrypt to a keyframe.
    iframes = m3u8.load(str(title / "360p" / "iframes.m3u8"))
    iv = bytes.fromhex(iframes.keys[0].iv[2:])
    seen: dict[str, int] = {}
    for entry in iframes.segments:
        seen[entry.uri] = seen.get(entry.uri, 0) + 1  # the n-th keyframe of its segment
        length, offset = (int(x) for x in entry.byterange.split("@"))
        assert offset == 0 and length % 188 == 0 and length % 16 == 0
        cipher = (title / "360p" / entry.uri).read_bytes()[:length]
        decryptor = Cipher(algorithms.AES(KEY), modes.CBC(iv)).decryptor()
        plain = decryptor.update(cipher) + decryptor.finalize()
        # The range holds every keyframe of the segment up to and including this one (plus, through the
        # 752-byte alignment, at most the head of the next frame).
        assert sum("K" in flags for flags in _keyframes_in(plain, ".ts", tmp_path)) == seen[entry.uri]


def test_republish_adds_a_version_and_keeps_only_the_newest_two(sample_clip: Path, media_root: Path,
                                                                small_ladder: ladder.Ladder) -> None:
    first = pipeline(sample_clip, media_root, "again", small_ladder.fitting(360))
    marker = first.path / "old-only.txt"
    marker.write_text("from the first version")
    second = pipeline(sample_clip, media_root, "again", small_ladder.fitting(480))
    # A new folder: what a CDN cached of the first version stays true, and a player holding the
    # first playlist can finish.
    assert second.path != first.path and second.path.parent == first.path.parent
    assert marker.exists() and not (first.path / "480p").exists()
    assert (second.path / "480p" / "index.m3u8").is_file()
    assert publish.versions(media_root, "again") == [first.path, second.path]
    third = pipeline(sample_clip, media_root, "again", small_ladder.fitting(360))
    assert publish.versions(media_root, "again") == [second.path, third.path] and not first.path.exists()
    assert sorted(p.name for p in media_root.iterdir()) == ["again"]
    verify.verify(third.path)


def test_failure_midway_publishes_nothing(sample_clip: Path, media_root: Path, small_ladder: ladder.Ladder,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    staged: list[Path] = []

    def failing_verify(root: Path, **_: object) -> verify.Report:
        staged.append(root)
        assert (root / "master.m3u8").is_file()  # we really got as far as a finished encode
        raise VerificationFailed(["injected failure"], path=root)

    monkeypatch.setattr(verify, "verify", failing_verify)
    with pytest.raises(VerificationFailed, match="injected failure"):
        pipeline(sample_clip, media_root, "never", small_ladder.fitting(360))
    assert staged and not staged[0].exists()
    assert list(media_root.iterdir()) == []


def test_failed_republish_keeps_the_old_title(sample_clip: Path, media_root: Path, small_ladder: ladder.Ladder,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline(sample_clip, media_root, "keep", small_ladder.fitting(360))
    before = _tree(media_root / "keep")

    def failing_verify(root: Path, **_: object) -> verify.Report:
        raise VerificationFailed(["injected failure"], path=root)

    monkeypatch.setattr(verify, "verify", failing_verify)
    with pytest.raises(VerificationFailed):
        pipeline(sample_clip, media_root, "keep", small_ladder.fitting(480))
    assert _tree(media_root / "keep") == before
    assert sorted(p.name for p in media_root.iterdir()) == ["keep"]
