"""Version folder names: the newest is the last by name, whenever it was published."""

from __future__ import annotations

from pathlib import Path

from ott.media import publish


def test_versions_published_within_one_second_keep_their_order(tmp_path: Path) -> None:
    names = [publish.new_version() for _ in range(50)]   # far more than one per second's worth of suffixes
    for name in names:
        (tmp_path / "clip" / name).mkdir(parents=True)
    assert [p.name for p in publish.versions(tmp_path, "clip")] == names


def test_a_name_of_the_older_seconds_only_form_sorts_before_newer_ones_of_its_second(tmp_path: Path) -> None:
    old, new = "v20261124T222603-ffff", "v20261124T222603000001-0000"
    for name in (new, old, "v20261124T222602999999-ffff", "not-a-version"):
        (tmp_path / "clip" / name).mkdir(parents=True)
    assert [p.name for p in publish.versions(tmp_path, "clip")] == ["v20261124T222602999999-ffff", old, new]
