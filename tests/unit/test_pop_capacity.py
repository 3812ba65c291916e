"""The lab's per-PoP capacity (labkit.platform.layers.cdn): declared once, off unless the lab sets it on
the edge, rendered as nginx's limit_req in each PoP's media locations only; and the ramp's wait for the
HPA between steps (labkit.traffic.capacity.autoscaler_synced)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError, TimeoutExpired
from labkit.platform.layers import cdn
from labkit.targets.base import AutoscalerStatus
from labkit.traffic import capacity


def _render(tmp_path: Path, rps: int | None) -> str:
    return cdn.render(pop="edge-0", listen="127.0.0.1:18100", origin_peers=["127.0.0.1:18060"],
                      cache_dir=str(tmp_path / "cache"), temp_dir=str(tmp_path), access_log=str(tmp_path / "a.log"),
                      secret="s3cret", capacity_rps=rps)


def test_without_a_capacity_a_pop_has_no_limit(tmp_path: Path) -> None:
    assert "limit_req" not in _render(tmp_path, None)
    assert cdn.capacity_of(cdn.EDGE) is None


def test_a_capacity_limits_every_media_location_and_nothing_else(tmp_path: Path) -> None:
    conf = _render(tmp_path, cdn.POP_CAPACITY_RPS)
    rate = cdn.POP_CAPACITY_RPS
    assert f"limit_req_zone $server_port zone=pop_capacity:1m rate={rate}r/s;" in conf
    assert "limit_req_status 503;" in conf
    limited = re.findall(r"location ~ (\S+) \{[^}]*limit_req zone=pop_capacity burst=(\d+);", conf)
    assert [loc for loc, _ in limited] == [t.location for t in cdn.OBJECT_TYPES]
    assert {int(b) for _, b in limited} == {rate * cdn.CAPACITY_QUEUE_S}   # a queue of CAPACITY_QUEUE_S seconds
    health = conf[conf.index("location = /healthz"):].split("\n", 1)[0]
    assert "limit_req" not in health


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_nginx_accepts_the_rendered_capacity(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "nginx.conf").write_text(_render(tmp_path, 80))
    done = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_the_capacity_is_the_edges_setting_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    edge = replace(cdn.EDGE, env={cdn.CAPACITY_SETTING: "80"})
    assert cdn.capacity_of(edge) == 80
    files = cdn.write_configs(LabConfig(home=tmp_path), [edge])
    assert all("rate=80r/s" in files[f"edge/{i}/nginx.conf"] for i in range(cdn.MAX_POPS))
    for bad in ("0", "-5", "fast", "1.5"):
        with pytest.raises(ConfigError, match=cdn.CAPACITY_SETTING):
            cdn.capacity_of(replace(cdn.EDGE, env={cdn.CAPACITY_SETTING: bad}))


def test_a_capacity_given_as_a_number_is_checked_the_same_way() -> None:
    # What Target.set_pop_capacity takes (an int, None for none), refused before a target changes anything.
    assert cdn.capacity_value(cdn.POP_CAPACITY_RPS) == cdn.POP_CAPACITY_RPS
    assert cdn.capacity_value(cdn.MAX_CAPACITY_RPS) == cdn.MAX_CAPACITY_RPS
    assert cdn.capacity_value(None) is None and cdn.capacity_value("") is None
    for bad in (0, -1, cdn.MAX_CAPACITY_RPS + 1, True, False, 2.0):
        with pytest.raises(ConfigError, match=f"{cdn.CAPACITY_SETTING}={bad!r}"):
            cdn.capacity_value(bad)  # type: ignore[arg-type]


class _Target:
    """The autoscaler's status as a target reports it; ``syncs`` decisions appear one per look."""

    def __init__(self, walls: list[float]) -> None:
        self.walls = walls
        self.looks = 0
        self.followed_at: list[int] = []

    def autoscale_status(self) -> list[AutoscalerStatus]:
        self.looks += 1
        seen = self.walls[:self.looks]
        return [AutoscalerStatus("edge", "edge", True, decisions=[{"at": 0.0, "last": w} for w in seen])]

    def follow_autoscaler(self) -> None:
        self.followed_at.append(self.looks)


def test_settle_waits_for_a_decision_after_the_step() -> None:
    target = _Target([50.0, 90.0, 100.0, 120.0])
    settle = capacity.autoscaler_synced(target, "edge", timeout=5, clock=lambda: 100.0)  # type: ignore[arg-type]
    settle()
    assert target.looks == 4   # one to check the HPA exists, then until it holds the decision at 120 > 100
    assert target.followed_at == [4]  # then what follows the replicas it set (license's PoP list), once


def test_settle_is_bounded_and_needs_a_known_hpa() -> None:
    with pytest.raises(ConfigError, match="no HorizontalPodAutoscaler named 'cdn'"):
        capacity.autoscaler_synced(_Target([]), "cdn", timeout=1)  # type: ignore[arg-type]
    settle = capacity.autoscaler_synced(_Target([1.0]), "edge", timeout=0.2, clock=lambda: 100.0)  # type: ignore[arg-type]
    with pytest.raises(TimeoutExpired, match="the edge HPA's next sync"):
        settle()
