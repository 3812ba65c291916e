"""Ladder declaration: the shipped file loads, and each kind of mistake names its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ott.media import ladder
from ott.media.errors import LadderError, UnsupportedSource


def test_shipped_ladders_load() -> None:
    default = ladder.load("default")
    assert [r.name for r in default.rungs] == ["1080p", "720p", "480p", "360p"]
    assert [r.video_kbps for r in default.rungs] == [5000, 3000, 1200, 800]
    for rung in default.rungs:
        assert rung.maxrate_kbps == pytest.approx(rung.video_kbps * 1.07, rel=0.01)
        assert rung.bufsize_kbps == pytest.approx(rung.video_kbps * 1.5, rel=0.01)
    assert (default.gop_seconds, default.segment_seconds, default.profile) == (2, 4, "high")
    small = ladder.load("small")
    assert [r.height for r in small.rungs] == [720, 480, 360]
    assert all(s.video_kbps < d.video_kbps for s, d in zip(small.rungs, default.rungs[1:], strict=True))


def _base() -> dict[str, Any]:
    with ladder.LADDER_FILE.open() as fh:
        return copy.deepcopy(yaml.safe_load(fh)["small"])


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    data = _base()
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "field"), [
    (["gop_seconds"], 0, "t.gop_seconds"),
    (["gop_seconds"], True, "t.gop_seconds"),
    (["segment_seconds"], 3, "t.segment_seconds"),
    (["profile"], "extreme", "t.profile"),
    (["level"], "9.9", "t.level"),
    (["preset"], "warp", "t.preset"),
    (["rungs"], [], "t.rungs"),
    (["audio_kbps"], KeyError, "t.audio_kbps"),
    (["colour"], "red", "t.colour"),
    (["rungs", 0, "height"], 721, "t.rungs[0].height"),
    (["rungs", 0, "video_kbps"], "fast", "t.rungs[0].video_kbps"),
    (["rungs", 1, "maxrate_kbps"], 10, "t.rungs[1].maxrate_kbps"),
    (["rungs", 1, "bufsize_kbps"], 700, "t.rungs[1].bufsize_kbps"),
    (["rungs", 2, "name"], "Not OK!", "t.rungs[2].name"),
    (["rungs", 2, "name"], "720p", "t.rungs"),
    (["rungs", 2, "height"], 1080, "t.rungs"),
    (["rungs", 0, "bitrate"], 5, "t.rungs[0].bitrate"),
])
def test_mistakes_name_their_field(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(LadderError) as info:
        ladder.parse("t", _mutate(path, value))
    assert info.value.field == field
    assert field in str(info.value)


def test_unknown_ladder_lists_known_ones() -> None:
    with pytest.raises(LadderError, match="known ladders: default, small"):
        ladder.load("huge")


def test_bad_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "ladder.yml"
    bad.write_text("default: [unclosed\n")
    with pytest.raises(LadderError, match="not valid YAML"):
        ladder.load("default", bad)


def test_rungs_taller_than_the_source_are_dropped() -> None:
    small = ladder.load("small")
    assert [r.name for r in small.fitting(480).rungs] == ["480p", "360p"]
    assert small.fitting(2160) == small
    with pytest.raises(UnsupportedSource, match="below the smallest rung"):
        small.fitting(240)


def test_width_keeps_aspect_and_is_even() -> None:
    rung = ladder.load("small").rungs[1]  # 480p
    assert rung.width_for(1920, 1080) == 854
    assert rung.width_for(640, 480) == 640
    assert rung.width_for(1000, 1000) % 2 == 0


def test_with_preset_validates() -> None:
    assert ladder.load("small").with_preset("ultrafast").preset == "ultrafast"
    with pytest.raises(LadderError):
        ladder.load("small").with_preset("ludicrous")
