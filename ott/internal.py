"""Service-to-service and admin calls: authenticated by the lab's shared service token.

The token is a per-lab secret in the file ``OTT_SERVICE_TOKEN_FILE`` (labkit creates it);
callers send it as ``X-Service-Token``. End users never have it.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request

from ott.errors import ApiError
from ott.service import service_of


def service_token(path: str | None) -> str:
    if not path:
        raise ApiError(503, "not_configured", "OTT_SERVICE_TOKEN_FILE is not set on this service")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ApiError(503, "not_configured", f"cannot read the service token: {exc}") from None


def require_service_token(
    request: Request, x_service_token: Annotated[str | None, Header(description="the lab's service token")] = None
) -> None:
    """Dependency of internal routes: 401 without the token, 403 with a wrong one."""
    if not x_service_token:
        raise ApiError(401, "unauthorized", "this is an internal route: send X-Service-Token")
    expected = service_token(service_of(request).settings.service_token_file)
    if not hmac.compare_digest(x_service_token.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "the service token is wrong")


ServiceCaller = Annotated[None, Depends(require_service_token)]
