"""Readiness probes: one HTTP GET with a timeout, and a bounded wait over many."""

from __future__ import annotations

import httpx

from labkit.platform.component import Readiness


def probe(base_url: str, readiness: Readiness) -> tuple[bool, str]:
    """(ready, why not) for one GET of ``base_url + readiness.path``."""
    url = base_url + readiness.path
    try:
        response = httpx.get(url, timeout=readiness.timeout)
    except httpx.HTTPError as exc:
        return False, f"GET {url}: {type(exc).__name__} {exc}".strip()
    if response.status_code != readiness.status:
        return False, f"GET {url} answered {response.status_code}, expected {readiness.status}"
    return True, ""
