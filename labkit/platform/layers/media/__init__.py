"""The media layer: the transcoder (jobs: source → HLS ladder → atomic publish → catalog) and the origin.

The transcoder writes titles into the media root (``<lab>/data/media``) and the origin serves
that folder. Transcodes are submitted with :func:`labkit.transcode.transcode` or
``ottlab transcode FILE --title ID``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.core.config import LabConfig
from labkit.platform import nginx
from labkit.platform.component import SERVICE_CONTAINER_PORT, Component, Port, Readiness
from labkit.platform.credentials import SERVICE_TOKEN_FILE, service_token
from labkit.platform.layer import Layer
from labkit.platform.layers.media import canary, origin

MEDIA_DIR = "media"

ORIGIN = nginx.component(
    "origin", "media", offset=60, container_port=origin.CONTAINER_PORT, folder="origin",
    description="nginx serving the published titles (HLS MIME types, cache headers, no dot-folders)",
)
ORIGIN_EXPORTER = nginx.exporter(ORIGIN, offset=211, status_offset=201, const_labels="component=origin")

TRANSCODER = Component(
    name="transcoder",
    layer="media",
    binary=sys.executable,
    package="python3",
    args=("-m", "ott.transcoder", "serve"),
    ports=(Port("http", offset=70, container=SERVICE_CONTAINER_PORT),),
    readiness=Readiness(path="/readyz"),
    env={
        "OTT_HOST": "{host}",
        "OTT_PORT": "{port_http}",
        "OTT_DATABASE_URL": "sqlite:///{data_root}/ott/ott.db",
        "OTT_SERVICE_TOKEN_FILE": "{conf}/" + SERVICE_TOKEN_FILE,
        "OTT_MEDIA_ROOT": "{data_root}/" + MEDIA_DIR,
        "OTT_ORIGIN_URL": "{link_origin}",
        "OTT_LICENSE_URL": "{link_license}",
        "OTT_CATALOG_URL": "{link_catalog}",
    },
    metrics_path="/metrics",
    description="runs transcode jobs one at a time: key, one-ffmpeg ladder, verify, atomic publish, catalog",
)


def media_root(cfg: LabConfig) -> Path:
    """Where the transcoder publishes and the origin serves from."""
    return cfg.data_dir / MEDIA_DIR


def write_configs(cfg: LabConfig, platform: Sequence[Component]) -> Mapping[str, str]:
    run = Path(cfg.run_dir) / "origin"
    run.mkdir(parents=True, exist_ok=True)
    media_root(cfg).mkdir(parents=True, exist_ok=True)
    # What the synthetic probes fetch through every PoP, whatever the lessons published.
    canary.publish(media_root(cfg))
    (cfg.data_dir / "ott").mkdir(parents=True, exist_ok=True)
    return {
        # The transcoder calls license and catalog with the lab's service token (the APIs layer's file).
        SERVICE_TOKEN_FILE: service_token(cfg) + "\n",
        "origin/nginx.conf": origin.render(listen=f"{cfg.host}:{ORIGIN.local_port(cfg)}",
                                           media_root=str(media_root(cfg)), temp_dir=str(run),
                                           user=nginx.lab_user(),
                                           status_listen=f"{cfg.host}:{ORIGIN_EXPORTER.local_port(cfg, 'status')}"),
    }


LAYER = Layer(
    name="media",
    components=(ORIGIN, ORIGIN_EXPORTER, TRANSCODER),
    write_configs=write_configs,
    description="the transcoder and the origin",
)
