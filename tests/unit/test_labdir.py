from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from labkit.core.config import LabConfig
from labkit.core.errors import LabBusyError, LabDirError
from labkit.targets.local.labdir import MARKER, LabDir


def _labdir(path: Path) -> LabDir:
    return LabDir(LabConfig(home=path))


def test_ensure_creates_layout_and_marker(tmp_path: Path) -> None:
    lab = _labdir(tmp_path / "lab")
    lab.ensure()
    assert {p.name for p in (tmp_path / "lab").iterdir()} >= {"conf", "log", "data", "run", MARKER}
    lab.ensure()  # idempotent
    lab.check()


def test_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(LabDirError, match="not made by ottlab"):
        _labdir(tmp_path).ensure()
    with pytest.raises(LabDirError):
        _labdir(tmp_path).purge()
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lab").write_text("")
    with pytest.raises(LabDirError, match="is a file"):
        _labdir(tmp_path / "lab").ensure()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "corrupt marker"), (json.dumps({"kind": "other"}), "not ottlab's"),
     (json.dumps({"kind": "ottlab-lab-directory", "format": 99}), "another ottlab version")],
)
def test_corrupt_or_foreign_marker(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / MARKER).write_text(content)
    with pytest.raises(LabDirError, match=problem):
        _labdir(tmp_path).ensure()


def test_second_holder_of_the_lock_is_told_who_holds_it(tmp_path: Path) -> None:
    lab = _labdir(tmp_path / "lab")
    with lab.lock(), pytest.raises(LabBusyError, match=r"pid \d+") as info, _labdir(tmp_path / "lab").lock():
        pass
    assert info.value.retryable
    with lab.lock():  # released after the block
        pass


def test_a_waiting_holder_takes_the_lock_once_it_is_let_go_and_gives_up_after_its_bound(tmp_path: Path) -> None:
    lab = _labdir(tmp_path / "lab")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with _labdir(tmp_path / "lab").lock():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    with pytest.raises(LabBusyError, match=r"pid \d+"), lab.lock(wait=0.3):
        pass
    # Let go while the second command waits: it takes the lock instead of failing.
    threading.Timer(0.2, release.set).start()
    with lab.lock(wait=10):
        assert release.is_set()  # taken only once the holder let go
    holder.join(10)


def test_purge_removes_an_ottlab_directory(tmp_path: Path) -> None:
    lab = _labdir(tmp_path / "lab")
    lab.ensure()
    lab.write_file("x/y.yml", "a: 1\n")
    lab.purge()
    assert not (tmp_path / "lab").exists()
