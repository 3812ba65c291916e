"""A service's OTT_* settings on the local target (`ottlab env`): validated, kept until `down`, rendered."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit import platform
from labkit.cli import main
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, MissingCapabilityError, UnknownComponentError
from labkit.targets.kube.target import KubeTarget
from labkit.targets.local import LocalTarget


@pytest.fixture
def lab(tmp_path: Path) -> LocalTarget:
    return LocalTarget(LabConfig(home=tmp_path / "lab", base_port=28500), platform.components(), platform.layers())


def supervisor_env_line(lab: LocalTarget, program: str) -> str:
    text = lab.supervisor.render_config(lab._configured_components())
    section = text.split(f"[program:{program}]", 1)[1]
    return next(line for line in section.splitlines() if line.startswith("environment="))


def test_a_setting_is_kept_and_reaches_the_service_only(lab: LocalTarget) -> None:
    assert lab.set_env("license", {"OTT_PLAYBACK_TTL": "5"}) == {"OTT_PLAYBACK_TTL": "5"}
    assert lab.set_env("license", {"OTT_STREAM_LIMIT": "3"}) == {"OTT_PLAYBACK_TTL": "5", "OTT_STREAM_LIMIT": "3"}
    assert 'OTT_PLAYBACK_TTL="5"' in supervisor_env_line(lab, "license-0")
    assert "OTT_PLAYBACK_TTL" not in supervisor_env_line(lab, "cas-0")
    # A second LocalTarget on the same lab directory (the next `ottlab` command) sees them too.
    again = LocalTarget(lab.cfg, platform.components(), platform.layers())
    assert 'OTT_STREAM_LIMIT="3"' in supervisor_env_line(again, "license-0")
    assert lab.set_env("license", {"OTT_PLAYBACK_TTL": None}) == {"OTT_STREAM_LIMIT": "3"}
    assert "OTT_PLAYBACK_TTL" not in supervisor_env_line(lab, "license-0")


def test_down_forgets_the_settings(lab: LocalTarget) -> None:
    lab.set_env("cas", {"OTT_STREAM_LIMIT": "1"})
    lab.down()
    assert lab.set_env("cas", {}) == {}


@pytest.mark.parametrize(("changes", "said"), [
    ({"PLAYBACK_TTL": "5"}, "is not a service setting"),
    ({"ott_playback_ttl": "5"}, "is not a service setting"),
    ({"OTT_PORT": "1"}, "gets OTT_PORT from the lab"),
    ({"OTT_PLAYBACK_TTL": 'a"b'}, "may not hold a newline or a double quote"),
])
def test_bad_settings_are_refused_and_nothing_is_kept(lab: LocalTarget, changes: dict[str, str | None],
                                                      said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        lab.set_env("license", changes)
    assert lab.set_env("license", {}) == {}


def test_an_unknown_component_is_refused(lab: LocalTarget) -> None:
    with pytest.raises(UnknownComponentError):
        lab.set_env("licence", {"OTT_PLAYBACK_TTL": "5"})


def test_the_kube_target_says_where_its_settings_live(tmp_path: Path) -> None:
    kube = KubeTarget.__new__(KubeTarget)  # no cluster needed: the capability is refused before any call
    kube.cfg = LabConfig(target="kube", home=tmp_path / "lab")
    with pytest.raises(MissingCapabilityError, match="kubectl -n ottlab set env deployment/license"):
        kube.set_env("license", {"OTT_PLAYBACK_TTL": "5"})


def test_the_cli_sets_lists_and_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTLAB_HOME", str(tmp_path / "lab"))
    monkeypatch.setenv("OTTLAB_BASE_PORT", "28500")
    runner = CliRunner()
    done = runner.invoke(main, ["env", "license", "OTT_PLAYBACK_TTL=5"])
    assert done.exit_code == 0 and done.output == "license: OTT_PLAYBACK_TTL=5\n"
    assert runner.invoke(main, ["env", "license"]).output == "license: OTT_PLAYBACK_TTL=5\n"
    bad = runner.invoke(main, ["env", "license", "OTT_PLAYBACK_TTL"])
    assert bad.exit_code == 2 and "is not NAME=VALUE" in bad.output
    assert runner.invoke(main, ["env", "license", "--unset", "OTT_PLAYBACK_TTL"]).output == ""
