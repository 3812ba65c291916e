"""A service's settings, from ``OTT_*`` environment variables (what a container would be given).

| variable | default | meaning |
|---|---|---|
| ``OTT_HOST`` / ``OTT_PORT`` | ``127.0.0.1`` / ``8000`` | where the service listens |
| ``OTT_UDS`` | none | a unix socket to listen on instead (behind a mesh sidecar: only it reaches the service) |
| ``OTT_DATABASE_URL`` | ``sqlite:///ott.db`` | the data layer's database (SQLAlchemy URL) |
| ``OTT_AUTH_URL`` etc. | ``http://127.0.0.1:8010`` ... | the other services, for service-to-service calls |
| ``OTT_KEYS_DIR`` | ``keys`` | where auth keeps its signing key (generated on first start) |
| ``OTT_SERVICE_TOKEN_FILE`` | none | the lab's service-to-service secret (``ott.internal``) |
| ``OTT_ACCESS_TTL`` | ``900`` | access token lifetime, seconds |
| ``OTT_REFRESH_TTL`` | ``86400`` | refresh token lifetime, seconds |
| ``OTT_PLAYBACK_TTL`` | ``60`` | playback authorisation lifetime, seconds |
| ``OTT_STREAM_LIMIT`` | ``2`` | concurrent streams per account (CAS) |
| ``OTT_DEVICE_LIMIT`` | ``4`` | distinct devices per account (CAS) |
| ``OTT_QOE_MAX_TITLES`` | ``50`` | distinct titles the QoE collector labels; later ones count as ``other`` |
| ``OTT_QOE_MAX_POPS`` | ``20`` | distinct PoPs the QoE collector labels; later ones count as ``other`` |
| ``OTT_HEARTBEAT_TIMEOUT`` | ``30`` | seconds without heartbeat before a stream session expires |
| ``OTT_CAS_WINDOW`` | none | daily viewing window ``HH:MM-HH:MM`` in UTC, may wrap midnight (CAS; bad: no start) |
| ``OTT_MAX_BODY`` | ``65536`` | the largest request body accepted, bytes |
| ``OTT_PUBLIC_URL`` | none | the gateway as players reach it; key URIs go through it when set |
| ``OTT_MEDIA_ROOT`` | ``media`` | the origin's media root (transcoder) |
| ``OTT_MAX_SOURCE_BYTES`` | ``2147483648`` | the largest source file the transcoder accepts as an upload (2 GiB) |
| ``OTT_SOURCE_TTL`` | ``3600`` | seconds an uploaded source waits for its job before the transcoder deletes it |
| ``OTT_ORIGIN_URL`` | ``http://127.0.0.1:8060`` | the origin as players reach it: catalog playback URLs |
| ``OTT_SIGNING_SECRET_FILE`` | none | the CDN's URL-signing secret (license signs playback URLs with it) |
| ``OTT_EDGES_FILE`` | none | JSON ``{"<pop>": "<url>"}`` of the CDN's PoPs, re-read per request (license) |
| ``OTT_EDGE_URLS`` | none | ``pop=url,pop=url``: the PoPs when there is no edges file (license) |
| ``OTT_SIGNED_URL_TTL`` | ``14400`` | seconds a signed playback URL stays valid |
| ``OTT_METRICS_LINGER`` | ``0`` | seconds a one-shot transcode serves ``/metrics`` after its job |
| ``OTT_VERSION`` | ``v1`` | the release this process runs (a pod's ``version`` label), answered as ``X-OTT-Version`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path


class SettingsError(ValueError):
    """An ``OTT_*`` variable has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str = ""
    database_url: str = "sqlite:///ott.db"
    auth_url: str = "http://127.0.0.1:8010"
    catalog_url: str = "http://127.0.0.1:8020"
    subscription_url: str = "http://127.0.0.1:8030"
    license_url: str = "http://127.0.0.1:8040"
    cas_url: str = "http://127.0.0.1:8050"
    keys_dir: Path = Path("keys")
    service_token_file: str = ""
    access_ttl: int = 900
    refresh_ttl: int = 86400
    playback_ttl: int = 60
    stream_limit: int = 2
    device_limit: int = 4
    heartbeat_timeout: int = 30
    # Kept as text here: ott.cas parses it at startup, so a bad window fails CAS, not every service.
    cas_window: str = ""
    max_body: int = 65536
    public_url: str = ""
    media_root: Path = Path("media")
    # Uploaded sources (the transcoder): the largest accepted, and how long one may wait for its job.
    max_source_bytes: int = 2 * 1024**3
    source_ttl: int = 3600
    origin_url: str = "http://127.0.0.1:8060"
    metrics_linger: float = 0.0
    signing_secret_file: str = ""
    edges_file: str = ""
    edge_urls: str = ""
    signed_url_ttl: int = 14400
    # The QoE collector's label caps: distinct titles and PoPs before "other".
    qoe_max_titles: int = 50
    qoe_max_pops: int = 20
    # Timeout of every call a service makes to another one, seconds.
    call_timeout: float = 5.0
    log_level: str = "INFO"
    # The release this process runs, as its pod's `version` label says (a canary's v2): every answer carries it.
    version: str = "v1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(f"OTT_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls, field.name))
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise SettingsError(
                    f"OTT_{field.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]
