"""Errors the services answer with: always JSON, always with a code a client can branch on.

Body: ``{"error": {"status": 403, "code": "not_entitled", "message": "...", "details": ...}}``
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a handler raises on purpose; ``code`` is stable, ``message`` is for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.code, self.message, self.details)


def error_body(status: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with id {ident!r}")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)
