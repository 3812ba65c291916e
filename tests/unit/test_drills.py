"""labkit.drills: the pieces of 03-cdn-edge's live-playlist and herd drills that need no platform."""

from __future__ import annotations

import doctest
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from labkit.core.config import LabConfig
from labkit.core.errors import MissingCapabilityError
from labkit.drills import cache_lock, live_playlist
from labkit.platform.layers import cdn
from labkit.targets.base import Target
from ott import signing


@dataclass
class FilesTarget:  # a stand-in for labkit.targets.base.Target (duck-typed): what the drills use of one
    cfg: LabConfig
    root: Path | None

    def media_root(self) -> Path:
        if self.root is None:
            raise MissingCapabilityError("kube", "reach the origin's media root from this machine", "a volume",
                                         hint="run this on the local target")
        return self.root

    # What the drills use of the media root, as every target with one does it.
    media_folder = Target.media_folder
    write_media = Target.write_media
    remove_media = Target.remove_media

    def signing_secret(self) -> str:
        return "s3cret"


@pytest.fixture
def target(tmp_path: Path) -> FilesTarget:
    return FilesTarget(LabConfig(home=tmp_path / "lab", base_port=29000), tmp_path / "media")


@pytest.mark.parametrize("module", [live_playlist, cache_lock])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted >= 1 and result.failed == 0


def test_the_drill_outlasts_the_pops_live_ttl() -> None:
    ttl = next(t.ttl_s for t in cdn.OBJECT_TYPES if t.name == "live_playlist")
    assert ttl == live_playlist.TTL_S and ttl + 1 < live_playlist.EXPIRY_S < ttl + 2
    assert live_playlist.REWRITE_GAP_S > 1   # Last-Modified has one-second resolution


def test_a_channel_is_published_by_renaming_and_signed_like_license_signs(target: FilesTarget) -> None:
    channel = live_playlist.LiveChannel.new(target, "lab-clock-cdn")  # type: ignore[arg-type]
    other = live_playlist.LiveChannel.new(target, "lab-clock-cdn")  # type: ignore[arg-type]
    assert channel.name.startswith("lab-clock-cdn-") and channel.name != other.name
    channel.publish(1)
    channel.publish(2)
    index = target.media_root() / "live" / channel.name / "index.m3u8"
    assert live_playlist.sequence_of(index.read_text()) == 2
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.m3u8"]   # nothing left aside

    url = channel.url("http://127.0.0.1:18100", ttl_s=600)
    match = signing.SIGNED_PATH.match(httpx.URL(url).path)
    assert match is not None and match["title"] == "live" and match["rest"] == f"/{channel.name}/index.m3u8"
    assert match["token"] == signing.token("s3cret", "live", int(match["expires"]))

    channel.remove()
    assert not index.parent.exists()
    channel.remove()   # twice is fine: the notebook's clean end may run after an interrupted drill


def test_without_a_media_root_the_drills_say_why(target: FilesTarget) -> None:
    target.root = None
    with pytest.raises(MissingCapabilityError, match="media root"):
        live_playlist.LiveChannel.new(target, "x").publish(1)  # type: ignore[arg-type]
    with pytest.raises(MissingCapabilityError, match="media root"):
        cache_lock.herds(target, "t", "v1", "360p", ["seg_00001.m4s"], clients=10)  # type: ignore[arg-type]
