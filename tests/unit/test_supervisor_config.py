from __future__ import annotations

import configparser
from pathlib import Path

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.component import Component, Port, Readiness
from labkit.targets.local.supervisor import Supervisor, program_names


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_every_component_becomes_a_program(tmp_path: Path) -> None:
    cfg = LabConfig(home=tmp_path)
    parsed = _parse(Supervisor(cfg).render_config(platform.components()))
    for comp in platform.components():
        for name in program_names(comp):
            section = parsed[f"program:{name}"]
            assert section["autostart"] == "false"  # labkit starts them in order, with probes
            assert section["stopasgroup"] == "true"
            assert section["stdout_logfile"] == str(cfg.log_dir / f"{name}.log")
    prom = parsed["program:prometheus"]["command"]
    assert "--web.listen-address=127.0.0.1:18090" in prom


def test_replicas_get_one_program_each_and_percent_is_escaped(tmp_path: Path) -> None:
    comp = Component(
        name="api", layer="demo", binary="python3", package="python3",
        args=("-c", "print('100%')", "{port_http}"), ports=(Port("http", 10, 8000),),
        readiness=Readiness("/"), max_replicas=3, env={"FMT": "%d"},
    )
    text = Supervisor(LabConfig(home=tmp_path, base_port=20000)).render_config([comp])
    parsed = _parse(text)
    assert [s for s in parsed.sections() if s.startswith("program:")] == [
        "program:api-0", "program:api-1", "program:api-2"]
    assert parsed["program:api-2"]["command"].endswith("'print('\"'\"'100%%'\"'\"')' 20012")
    assert 'FMT="%%d"' in parsed["program:api-0"]["environment"]
