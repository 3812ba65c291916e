"""The lab's secrets: made once per lab, shared by the layers that need them, never committed.

- the service token (``service-token``), for service-to-service and admin calls: every API
  service, the transcoder and the seeding client present it;
- the URL-signing secret (``url-signing-secret``): license signs playback URLs with it and every
  PoP checks them with it.

On the local target both are files in the lab's ``conf`` directory, written by the layers'
``write_configs``; on Kubernetes they are Secrets (:mod:`labkit.targets.kube.secrets`).
"""

from __future__ import annotations

import secrets

from labkit.core.config import LabConfig

SERVICE_TOKEN_FILE = "service-token"
SIGNING_SECRET_FILE = "url-signing-secret"


def _read_or_new(cfg: LabConfig, name: str) -> str:
    path = cfg.conf_dir / name
    if path.exists():
        return path.read_text().strip()
    return secrets.token_urlsafe(32)


def service_token(cfg: LabConfig) -> str:
    """The lab's secret for service-to-service and admin calls, created once per lab directory."""
    return _read_or_new(cfg, SERVICE_TOKEN_FILE)


def signing_secret(cfg: LabConfig) -> str:
    """The lab's URL-signing secret (shared by license, which signs, and the edges, which check)."""
    return _read_or_new(cfg, SIGNING_SECRET_FILE)
