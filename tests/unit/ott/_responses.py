"""Assertions on the JSON error body every OTT service answers with, shared by the service tests."""

from __future__ import annotations

from typing import Any


def expect_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert ``response`` is the error ``status`` (and ``code``, when given); return its body."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code
    return error
