"""Calls from one service to another: bounded by a timeout, failures turned into 503/504.

    response = call(service, "GET", f"{settings.catalog_url}/titles/{title_id}")
"""

from __future__ import annotations

from typing import Any

import httpx

from ott.errors import ApiError
from ott.service import Service


def call(
    service: Service,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
) -> httpx.Response:
    """One HTTP call to another service; a dead or slow dependency becomes a clear 503/504."""
    try:
        return httpx.request(method, url, headers=headers, json=json, timeout=service.settings.call_timeout)
    except httpx.TimeoutException:
        raise ApiError(504, "dependency_timeout", f"{_who(url)} did not answer within "
                       f"{service.settings.call_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise ApiError(503, "dependency_unavailable", f"{_who(url)} is unreachable: {exc}") from None


def _who(url: str) -> str:
    return httpx.URL(url).netloc.decode() or url
