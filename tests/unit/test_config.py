from __future__ import annotations

from pathlib import Path

import pytest

from labkit.core.config import DEFAULT_BASE_PORT, LabConfig, repo_root
from labkit.core.errors import ConfigError, UnknownTargetError


def test_defaults_point_into_the_checkout() -> None:
    cfg = LabConfig.from_env({})
    assert cfg.target == "local"
    assert cfg.home == repo_root() / "var"
    assert cfg.base_port == DEFAULT_BASE_PORT
    assert cfg.host == "127.0.0.1"


def test_environment_overrides(tmp_path: Path) -> None:
    cfg = LabConfig.from_env(
        {"OTTLAB_TARGET": " KUBE ", "OTTLAB_HOME": str(tmp_path), "OTTLAB_BASE_PORT": "19000",
         "OTTLAB_NAMESPACE": "lab2", "OTTLAB_READY_TIMEOUT": "5"}
    )
    assert (cfg.target, cfg.home, cfg.base_port, cfg.namespace, cfg.ready_timeout) == (
        "kube", tmp_path, 19000, "lab2", 5.0)
    assert cfg.log_dir == tmp_path / "log"


def test_keyword_overrides_win() -> None:
    assert LabConfig.from_env({"OTTLAB_TARGET": "kube"}, target="local").target == "local"


def test_unknown_target_names_the_choices() -> None:
    with pytest.raises(UnknownTargetError, match="unknown target 'mars'") as info:
        LabConfig.from_env({"OTTLAB_TARGET": "mars"})
    assert "local, kube" in str(info.value)


@pytest.mark.parametrize("value", ["abc", "80", "70000", "1.5"])
def test_bad_base_port(value: str) -> None:
    with pytest.raises(ConfigError, match="OTTLAB_BASE_PORT"):
        LabConfig.from_env({"OTTLAB_BASE_PORT": value})


def test_bad_timeout() -> None:
    with pytest.raises(ConfigError, match="OTTLAB_READY_TIMEOUT"):
        LabConfig.from_env({"OTTLAB_READY_TIMEOUT": "-1"})
