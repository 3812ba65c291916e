"""The kube target's media folder: a published version copied from the origin over HTTP (labkit.targets.kube.mirror).

The origin is a stand-in transport (httpx.MockTransport) serving a version as the transcoder
publishes one: a multivariant playlist, and per rung a media playlist, an init segment and segments.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from labkit.core.errors import ConfigError
from labkit.targets.kube.mirror import COMPLETE, MirrorError, mirror_version

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=800000,RESOLUTION=640x360,CODECS="avc1.64001e,mp4a.40.2"
360p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=400000,AVERAGE-BANDWIDTH=350000,RESOLUTION=426x240,CODECS="avc1.64001e,mp4a.40.2"
240p/index.m3u8
"""
MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:1
#EXT-X-MAP:URI="init.mp4"
#EXTINF:4.000,
seg_00001.m4s
#EXTINF:2.500,
seg_00002.m4s
#EXT-X-ENDLIST
"""


def origin(files: dict[str, bytes], asked: list[str]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        body = files.get(request.url.path)
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(answer))


def published(title: str = "clip", version: str = "v1") -> dict[str, bytes]:
    files = {f"/{title}/{version}/master.m3u8": MASTER.encode()}
    for rung in ("360p", "240p"):
        files[f"/{title}/{version}/{rung}/index.m3u8"] = MEDIA.encode()
        files[f"/{title}/{version}/{rung}/init.mp4"] = f"init {rung}".encode()
        for n in (1, 2):
            files[f"/{title}/{version}/{rung}/seg_0000{n}.m4s"] = f"segment {n} of {rung}".encode()
    return files


def test_every_file_the_playlists_name_is_copied_once(tmp_path: Path) -> None:
    files, asked = published(), list[str]()
    with origin(files, asked) as client:
        folder = mirror_version("http://origin.test", "clip", "v1", into=tmp_path, client=client)
        assert folder == tmp_path / "clip" / "v1"
        copied = {"/clip/v1/" + p.relative_to(folder).as_posix(): p.read_bytes()
                  for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE}
        assert copied == files
        assert sorted(asked) == sorted(files)
        # A published version never changes: a complete copy is reused without asking the origin.
        asked.clear()
        assert mirror_version("http://origin.test", "clip", "v1", into=tmp_path, client=client) == folder
        assert asked == []


def test_a_copy_cut_short_is_finished_and_a_missing_file_says_so(tmp_path: Path) -> None:
    files, asked = published(), list[str]()
    missing = files.pop("/clip/v1/240p/seg_00002.m4s")
    with origin(files, asked) as client:
        with pytest.raises(MirrorError, match=r"answered http://origin.test/clip/v1/240p/seg_00002.m4s with HTTP 404"):
            mirror_version("http://origin.test", "clip", "v1", into=tmp_path, client=client)
        assert not (tmp_path / "clip" / "v1" / COMPLETE).exists()
        files["/clip/v1/240p/seg_00002.m4s"] = missing
        asked.clear()
        mirror_version("http://origin.test", "clip", "v1", into=tmp_path, client=client)
    # Segments already copied are kept; the playlists are read again.
    assert "/clip/v1/360p/seg_00001.m4s" not in asked and "/clip/v1/240p/seg_00002.m4s" in asked
    assert (tmp_path / "clip" / "v1" / "240p" / "seg_00002.m4s").read_bytes() == missing


def test_names_outside_the_version_are_refused(tmp_path: Path) -> None:
    files, asked = published(), list[str]()
    files["/clip/v1/master.m3u8"] = MASTER.replace("240p/index.m3u8", "../../etc/index.m3u8").encode()
    with origin(files, asked) as client:
        with pytest.raises(MirrorError, match="is not a file of the version"):
            mirror_version("http://origin.test", "clip", "v1", into=tmp_path, client=client)
        with pytest.raises(ConfigError, match="is not a title or version name"):
            mirror_version("http://origin.test", "..", "v1", into=tmp_path, client=client)
    assert not (tmp_path.parent / "etc").exists()
