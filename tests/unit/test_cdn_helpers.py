"""labkit.clients.pops: PoP URLs, reachable signed URLs, Prometheus waits."""

from __future__ import annotations

import doctest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from labkit.clients import pops
from labkit.core.config import LabConfig
from labkit.core.errors import TimeoutExpired
from labkit.targets.base import ComponentStatus


@dataclass
class StubTarget:  # a stand-in for labkit.targets.base.Target (duck-typed)
    """What the helpers use of a target: its name, config, status and endpoints."""

    cfg: LabConfig
    name: str = "local"
    statuses: list[ComponentStatus] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)

    def status(self) -> list[ComponentStatus]:
        return self.statuses

    def endpoint(self, component: str, port: str = "http") -> str:
        return self.endpoints[component]


@pytest.fixture
def cfg(tmp_path: Path) -> LabConfig:
    return LabConfig(home=tmp_path / "lab", base_port=29000)


def test_doctests() -> None:
    result = doctest.testmod(pops)
    assert result.attempted >= 2 and result.failed == 0


def test_pop_urls_are_the_running_replicas_of_the_edge(cfg: LabConfig) -> None:
    urls = {"edge-0": "http://127.0.0.1:29100", "edge-1": "http://127.0.0.1:29101"}
    target = StubTarget(cfg, statuses=[ComponentStatus("origin", "media", "running", True),
                                       ComponentStatus("edge", "cdn", "running", True, replica_urls=urls)])
    assert pops.pop_urls(target) == urls


def test_without_replica_urls_the_pops_are_one_service(cfg: LabConfig) -> None:
    target = StubTarget(cfg, name="kube", statuses=[ComponentStatus("edge", "cdn", "running", True)],
                        endpoints={"edge": "http://127.0.0.1:40001"})
    assert pops.pop_urls(target) == {"edge": "http://127.0.0.1:40001"}


POPS = {"edge-0": "http://127.0.0.1:18100", "edge-1": "http://127.0.0.1:18101"}


def test_a_url_of_a_known_pop_is_kept() -> None:
    url = "http://127.0.0.1:18101/s/t/1/a/master.m3u8?x=1"
    assert pops.reachable(url, POPS) == url


def test_a_url_is_moved_to_the_named_or_the_only_pop() -> None:
    url = "http://edge-0.cdn.svc:8080/s/t/1/a/master.m3u8?CMCD=br%3D1"
    assert pops.reachable(url, POPS, "edge-1") == "http://127.0.0.1:18101/s/t/1/a/master.m3u8?CMCD=br%3D1"
    assert pops.reachable(url, {"edge": "https://localhost:9443"}) == "https://localhost:9443/s/t/1/a/master.m3u8?CMCD=br%3D1"


def test_a_url_at_no_known_pop_needs_a_name_when_there_are_several() -> None:
    with pytest.raises(ValueError, match="none of the PoPs"):
        pops.reachable("http://elsewhere:8080/s/t/1/a/m.m3u8", POPS)


class StubPrometheus:
    """Answers instant queries from a list of frames, one per call (the last one repeated)."""

    def __init__(self, frames: list[pd.DataFrame]) -> None:
        self.frames = frames
        self.queries: list[str] = []

    def query(self, promql: str) -> pd.DataFrame:
        self.queries.append(promql)
        return self.frames[min(len(self.queries), len(self.frames)) - 1]


def _frame(**values: float) -> pd.DataFrame:
    return pd.DataFrame([{"pop": k, "timestamp": None, "value": v} for k, v in values.items()],
                        columns=["pop", "timestamp", "value"])


def test_values_by_label() -> None:
    prom: Any = StubPrometheus([_frame(**{"edge-0": 3, "edge-1": 5})])
    assert pops.values_by(prom, "sum by (pop)(x)", "pop") == {"edge-0": 3.0, "edge-1": 5.0}
    assert pops.values_by(StubPrometheus([pd.DataFrame(columns=["timestamp", "value"])]), "x", "pop") == {}


def test_wait_for_values_polls_until_every_group_has_caught_up() -> None:
    prom: Any = StubPrometheus([_frame(**{"edge-0": 3}), _frame(**{"edge-0": 10, "edge-1": 1}),
                                _frame(**{"edge-0": 12, "edge-1": 4})])
    values = pops.wait_for_values(prom, "q", by="pop", at_least={"edge-0": 10, "edge-1": 4}, interval=0.001)
    assert values == {"edge-0": 12.0, "edge-1": 4.0} and len(prom.queries) == 3


def test_wait_for_values_is_bounded() -> None:
    prom: Any = StubPrometheus([_frame(**{"edge-0": 3})])
    with pytest.raises(TimeoutExpired, match=r"edge-0 >= 4, edge-1 >= 1 \(last seen: \{'edge-0': 3.0\}\)"):
        pops.wait_for_values(prom, "q", by="pop", at_least={"edge-0": 4, "edge-1": 1}, timeout=0.05, interval=0.01)
