from __future__ import annotations

import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.component import Component, Port, Readiness


def _comp(**overrides: object) -> Component:
    values: dict[str, object] = dict(
        name="web", layer="demo", binary="python3", package="python3",
        args=("--bind", "{host}:{port_http}", "--data={data}", "--r={replica}"),
        ports=(Port("http", offset=5, container=8000),), readiness=Readiness(path="/"),
    )
    values.update(overrides)
    return Component(**values)  # type: ignore[arg-type]


def test_command_is_formatted_per_replica(tmp_path: object) -> None:
    cfg = LabConfig(base_port=20000)
    cmd = _comp(max_replicas=3).command(cfg, replica=2)
    assert cmd[0].endswith("python3")
    # A Python program's command line names its lab (what the process exporter matches).
    assert cmd[1:3] == ["-X", f"ottlab={cfg.home}"]
    assert cmd[3:] == ["--bind", "127.0.0.1:20007", f"--data={cfg.data_dir / 'web'}", "--r=2"]
    assert _comp(binary="nginx").command(cfg)[1:3] == ["--bind", "127.0.0.1:20005"]


def test_declaration_errors() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        _comp(name="Web_1")
    with pytest.raises(ValueError, match="replicas"):
        _comp(replicas=2, max_replicas=1)
    with pytest.raises(KeyError, match="no port named 'admin'"):
        _comp(readiness=Readiness(path="/", port="admin"))
    with pytest.raises(ValueError, match="offset"):
        Port("http", offset=5000, container=80)


def test_declared_ports_never_overlap() -> None:
    """Every port of every replica of every component is distinct, so the platform can start."""
    cfg = LabConfig()
    seen: dict[int, str] = {}
    for comp in platform.components():
        for port in comp.local_ports(cfg):
            assert port not in seen, f"{comp.name} and {seen[port]} both use {port}"
            seen[port] = comp.name


def test_component_names_are_unique() -> None:
    names = [c.name for c in platform.components()]
    assert len(names) == len(set(names))
