"""labkit.core.parameters: a lesson's papermill parameters, each mistake refused with what to do."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from labkit.core import parameters
from labkit.core.errors import ConfigError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def test_doctests() -> None:
    result = doctest.testmod(parameters)
    assert result.attempted >= 3 and result.failed == 0


def test_good_parameters_come_back_with_what_they_imply() -> None:
    lesson = parameters.check("04-player-qoe", TARGET="local", INTERACTIVE=False, SAMPLE_SECONDS=12, LADDER="small",
                              PRESET="ultrafast", TITLE="lab-clock-qoe", VIEWERS=12, THROTTLE_KBPS=1500, SEED=7)
    assert lesson.ladder is not None and (lesson.ladder.name, lesson.ladder.preset) == ("small", "ultrafast")
    assert (lesson.title, lesson.encrypted_title) == ("lab-clock-qoe", "lab-clock-qoe-aes")
    assert lesson.values["VIEWERS"] == 12 and "THROTTLE_KBPS=1500" in lesson.describe()
    # 03 publishes no encrypted title.
    assert parameters.check("03-cdn-edge", TITLE="lab-clock-cdn").encrypted_title is None


@pytest.mark.parametrize(("lesson", "given", "says", "hint"), [
    ("02-transcode", {"SAMPLE_SECONDS": 1}, "SAMPLE_SECONDS=1 must be a number of seconds from 2 to 600", "uses 6"),
    ("04-player-qoe", {"SAMPLE_SECONDS": 6}, "SAMPLE_SECONDS=6 must be a number of seconds from 8 to 600", "12"),
    ("02-transcode", {"SAMPLE_SECONDS": "20"}, "SAMPLE_SECONDS='20' must be a number", ""),
    ("03-cdn-edge", {"VIEWERS": True}, "VIEWERS=True must be a whole number from 2 to 500", "VIEWERS=24"),
    ("03-cdn-edge", {"HERD_CLIENTS": 100.5}, "HERD_CLIENTS=100.5 must be a whole number from 10 to 1000", ""),
    ("03-cdn-edge", {"WAIT_SECONDS": 5}, "WAIT_SECONDS=5 must be a number of seconds from 10 to 3600", ""),
    ("04-player-qoe", {"SEED": 1.5}, "SEED=1.5 must be a whole number", "e.g. 7"),
    ("00-setup", {"INTERACTIVE": "no"}, "INTERACTIVE='no' must be True or False", "papermill"),
    ("02-transcode", {"LADDER": "huge", "PRESET": None}, "LADDER='huge', PRESET=None: ", "ladder.yml"),
    ("02-transcode", {"LADDER": "small", "PRESET": "warp"}, "unknown x264 preset 'warp'", "PRESET=None"),
    ("02-transcode", {"TITLE": "Lab Clock"}, "TITLE='Lab Clock': ", "lower-case letters"),
    ("02-transcode", {"TITLE": "a" * 60}, f"TITLE='{'a' * 60}' gives the title id '{'a' * 60}-aes'", "at most 59"),
    ("03-cdn-edge", {"TITLE": "live"}, "TITLE='live': the id is taken: the PoPs treat /live/", "lab-clock-cdn"),
    ("04-player-qoe", {"LADDER": "small", "PRESET": None, "THROTTLE_KBPS": 100},
     "THROTTLE_KBPS=100 must lie between", "its rungs (video + audio)"),
    ("04-player-qoe", {"THROTTLE_KBPS": 1500}, "THROTTLE_KBPS needs LADDER", "pass LADDER"),
    ("03-cdn-edge", {"VIEWER_SECONDS": 40}, "03-cdn-edge has no parameter VIEWER_SECONDS", "HERD_CLIENTS"),
    ("05-nowhere", {}, "no lesson named '05-nowhere'", "04-player-qoe"),
])
def test_a_bad_parameter_says_what_was_wrong_and_what_to_do(lesson: str, given: dict[str, object], says: str,
                                                             hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parameters.check(lesson, **given)
    assert says in caught.value.message, caught.value.message
    assert hint in caught.value.hint and caught.value.hint, caught.value.hint


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb")), ids=lambda p: p.stem)
def test_every_notebooks_defaults_pass_its_check(notebook: Path) -> None:
    """The literals of each parameters cell are a valid lesson (a default that fails would fail every run)."""
    cells = json.loads(notebook.read_text())["cells"]
    source = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
    defaults: dict[str, object] = {}
    exec(compile(source, str(notebook), "exec"), {}, defaults)   # the cell holds literals only
    assert notebook.stem in parameters.LESSONS
    parameters.check(notebook.stem, **defaults)
