"""The APIs layer: auth, catalog, subscription, license and cas, each a FastAPI service,
behind an nginx gateway that verifies tokens, retries idempotent requests and rate-limits login.

Every service runs as ``python -m ott.<name>`` and reads ``OTT_*`` variables; they share one
SQLite database (WAL) under the lab directory and find each other through ``OTT_<NAME>_URL``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.core.config import LabConfig
from labkit.platform import nginx
from labkit.platform.component import SERVICE_CONTAINER_PORT, Component, Port, Readiness
from labkit.platform.credentials import SERVICE_TOKEN_FILE, SIGNING_SECRET_FILE, service_token, signing_secret
from labkit.platform.layer import Layer
from labkit.platform.layers import cdn, player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.apis.routes import MAX_BODY_BYTES, ROUTES

_OFFSETS = {"auth": 10, "catalog": 20, "subscription": 30, "license": 40, "cas": 50}
_DESCRIPTIONS = {
    "auth": "users, password login, short-lived ES256 tokens, JWKS",
    "catalog": "titles, their tier and playback locations; search and pagination",
    "subscription": "plans, subscriptions, entitlement checks",
    "license": "playback authorisations and content keys (HLS AES-128 key URI)",
    "cas": "conditional access: concurrent streams, devices, time window",
}


def _service(name: str) -> Component:
    env = {
        "OTT_HOST": "{host}",
        "OTT_PORT": "{port_http}",
        "OTT_DATABASE_URL": "sqlite:///{data_root}/ott/ott.db",
        "OTT_KEYS_DIR": "{data_root}/ott/keys",
        "OTT_SERVICE_TOKEN_FILE": "{conf}/" + SERVICE_TOKEN_FILE,
        "OTT_MAX_BODY": str(MAX_BODY_BYTES),
        **{f"OTT_{other.upper()}_URL": "{link_" + other + "}" for other in _OFFSETS},
    }
    if name == "license":
        # Key URIs in playlists point at the gateway (/api/license/keys/...), never at the service.
        env["OTT_PUBLIC_URL"] = "{link_gateway}"
        # Signed playback URLs, one per CDN PoP (labkit.platform.layers.cdn writes both files).
        env["OTT_SIGNING_SECRET_FILE"] = "{conf}/" + SIGNING_SECRET_FILE
        env["OTT_EDGES_FILE"] = "{conf}/" + cdn.EDGES_FILE
    return Component(
        name=name,
        layer="apis",
        # The lab's own interpreter: the one with ott installed.
        binary=sys.executable,
        package="python3",
        args=("-m", f"ott.{name}"),
        ports=(Port("http", offset=_OFFSETS[name], container=SERVICE_CONTAINER_PORT),),
        readiness=Readiness(path="/readyz"),
        env=env,
        replicas=1,
        max_replicas=3,
        metrics_path="/metrics",
        description=_DESCRIPTIONS[name],
    )


AUTH, CATALOG, SUBSCRIPTION, LICENSE, CAS = (_service(n) for n in _OFFSETS)
SERVICES = (AUTH, CATALOG, SUBSCRIPTION, LICENSE, CAS)

GATEWAY = nginx.component(
    "gateway", "apis", offset=0, container_port=gateway.CONTAINER_PORT, folder="gateway",
    description="nginx in front of the APIs: routes, JWT check, retries, login rate limit",
)
GATEWAY_EXPORTER = nginx.exporter(GATEWAY, offset=210, status_offset=200, const_labels="component=gateway")



def write_configs(cfg: LabConfig, platform: Sequence[Component]) -> Mapping[str, str]:
    # `platform` carries the running replica counts (after `scale`), not just the declared ones. A route
    # to a layer not up (the player's) goes to its declared port: the gateway keeps one config, and the
    # route answers 502 until that layer is brought up.
    running = {c.name: c for c in platform}
    declared = {c.name: c for c in (*SERVICES, *player.LAYER.components)}
    upstreams = {}
    # With the service mesh on (labkit.targets.local.mesh) the gateway has a sidecar, with a port per
    # service it reaches: nginx goes there, and leaves retries and timeouts to it (the VirtualServices).
    sidecar = next((c for c in platform if c.follows == GATEWAY.name and c.name != GATEWAY_EXPORTER.name), None)
    sidecar_ports = {p.name for p in sidecar.ports} if sidecar is not None else set()
    meshed = []
    for route in ROUTES:
        comp = running.get(route.service, declared[route.service])
        upstreams[route.service] = [f"{cfg.host}:{comp.local_port(cfg, 'http', i)}" for i in range(comp.replicas)]
        if sidecar is not None and f"out-{route.service}" in sidecar_ports:
            upstreams[route.service] = [f"{cfg.host}:{sidecar.local_port(cfg, f'out-{route.service}')}"]
            meshed.append(route.service)
    run = Path(cfg.run_dir) / "gateway"
    run.mkdir(parents=True, exist_ok=True)
    return {
        SERVICE_TOKEN_FILE: service_token(cfg) + "\n",
        SIGNING_SECRET_FILE: signing_secret(cfg) + "\n",
        "gateway/nginx.conf": gateway.render(
            listen=f"{cfg.host}:{GATEWAY.local_port(cfg)}", upstreams=upstreams, temp_dir=str(run),
            status_listen=f"{cfg.host}:{GATEWAY_EXPORTER.local_port(cfg, 'status')}", user=nginx.lab_user(),
            meshed=meshed,
        ),
    }


LAYER = Layer(
    name="apis",
    components=(*SERVICES, GATEWAY, GATEWAY_EXPORTER),
    write_configs=write_configs,
    description="the OTT business APIs behind a gateway",
)
