"""The local target's capabilities where the targets differ: all of them are files of this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, NotRunningError
from labkit.platform import credentials
from labkit.targets.local.target import LocalTarget


@pytest.fixture
def target(tmp_path: Path) -> LocalTarget:
    return LocalTarget(LabConfig(home=tmp_path / "lab", base_port=29000), platform.components(), platform.layers())


def test_it_describes_itself_by_its_lab_directory(target: LocalTarget) -> None:
    assert target.describe() == f"local target: lab directory {target.cfg.home}"


def test_the_signing_secret_is_the_file_the_platform_wrote(target: LocalTarget) -> None:
    with pytest.raises(NotRunningError, match="cdn layer"):
        target.signing_secret()
    target.cfg.conf_dir.mkdir(parents=True)
    (target.cfg.conf_dir / credentials.SIGNING_SECRET_FILE).write_text("s3cret\n")
    assert target.signing_secret() == "s3cret"
    assert credentials.signing_secret(target.cfg) == "s3cret"   # what license and the PoPs read


def test_the_media_root_is_the_origins_folder(target: LocalTarget) -> None:
    assert target.media_root() == target.cfg.data_dir / "media"
    # A published version's folder is in it, as is: nothing to copy on this target.
    assert target.media_folder("clip", "v1") == target.cfg.data_dir / "media" / "clip" / "v1"


def test_a_pops_access_log_is_parsed_line_by_line(target: LocalTarget) -> None:
    assert target.access_log("edge-1") == []   # no request yet
    path = target.cfg.run_dir / "edge" / "1" / "access.log"
    path.parent.mkdir(parents=True)
    lines = [json.dumps({"path": "/a", "status": 200}), "not json", "[1, 2]", json.dumps({"path": "/b"}), '{"pa']
    path.write_text("\n".join(lines))
    assert target.access_log("edge-1") == [{"path": "/a", "status": 200}, {"path": "/b"}]
    assert target.access_log("edge-0") == []


def test_a_pop_that_cannot_exist_is_named(target: LocalTarget) -> None:
    with pytest.raises(ConfigError, match="no PoP named 'edge-99'") as caught:
        target.access_log("edge-99")
    assert "edge-0 to edge-" in caught.value.hint



def test_a_replica_that_does_not_run_cannot_be_stopped(target: LocalTarget) -> None:
    # Checked before the supervisor is asked: the lab runs edge-0 and edge-1 unless scaled.
    with pytest.raises(ConfigError, match="edge runs replicas 0 to 1, not 2") as caught:
        target.stop_replica("edge", 2)
    assert "from 0 to 1" in caught.value.hint
    with pytest.raises(ConfigError, match="not -1"):
        target.stop_replica("edge", -1)
