"""The player layer's declaration and configs, without starting anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.layers import apis, player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import ROUTES


def test_the_player_layer_comes_last_with_its_components() -> None:
    assert platform.layers()[-1] is player.LAYER
    assert [(c.name, c.port("http").offset) for c in player.LAYER.components] == [
        ("qoe", 80), ("player", 84), ("player-nginx-exporter", 212)]
    assert player.QOE.metrics_path == "/metrics" and player.QOE.readiness.path == "/readyz"
    assert (player.QOE.replicas, player.QOE.max_replicas) == (1, 3)
    # Every local port of the lab is distinct, the new ones included.
    ports = [p for c in platform.components() for p in c.local_ports(LabConfig(base_port=30000))]
    assert len(set(ports)) == len(ports)


def test_missing_hls_js_says_to_run_make_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(player, "hls_js", lambda: tmp_path / "node_modules" / "hls.js" / "dist" / "hls.min.js")
    with pytest.raises(player.PlayerFilesError, match="make bootstrap") as info:
        player.write_configs(LabConfig(home=tmp_path / "lab"), platform.components())
    assert "npm ci" in str(info.value) and "hls.min.js" in str(info.value)


def test_the_gateway_routes_to_the_player_layer_even_before_it_is_up(tmp_path: Path) -> None:
    # Only the apis layer running: the gateway still names the player's declared ports (502 until it is up),
    # so bringing the player layer up later needs no gateway reload.
    cfg = LabConfig(home=tmp_path / "lab", base_port=30000)
    conf = apis.write_configs(cfg, apis.LAYER.components)["gateway/nginx.conf"]
    for component in (player.QOE, player.PLAYER):
        upstream = re.search(rf"upstream {component.name} {{(.*?)}}", conf, flags=re.DOTALL)
        assert upstream is not None
        assert f"server 127.0.0.1:{component.local_port(cfg)} " in upstream.group(1)


def test_only_the_page_route_keeps_its_prefix_and_limits_methods() -> None:
    conf = gateway.render_kube()
    blocks = {r.service: conf.split(f"    location {r.prefix} {{\n", 1)[1].split("\n    }", 1)[0] for r in ROUTES}
    assert "limit_except GET { deny all; }" in blocks["player"]
    assert "proxy_pass http://player/player/;" in blocks["player"]
    assert "proxy_pass http://qoe/;" in blocks["qoe"]
    assert [s for s, block in blocks.items() if "limit_except" in block] == ["player"]


@pytest.mark.parametrize("name", ["index.html", "player.js", "player.css", "img/logo.svg"])
def test_the_page_files_are_matched_by_the_page_location(name: str) -> None:
    (pattern,) = re.findall(r'location ~ "(.+)" \{', player.render_kube())
    assert re.fullmatch(pattern, f"/player/{name}")


@pytest.mark.parametrize("name", [".env", "../package.json", "a/../b.js", "package.json.bak", "x.py", "img/.x.js"])
def test_other_names_are_not(name: str) -> None:
    (pattern,) = re.findall(r'location ~ "(.+)" \{', player.render_kube())
    assert not re.fullmatch(pattern, f"/player/{name}")
