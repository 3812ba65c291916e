"""Errors the services answer with: always JSON, always with a code a client can branch on.

Body: ``{"error": {"status": 403, "code": "not_entitled", "message": "...", "details": ...}}``,
described once by :class:`ErrorBody`. :func:`ott.service.create_app` puts that schema on every
4xx/5xx answer of every operation in the OpenAPI document, so a route's ``responses=`` only
needs to say which statuses it answers and why (see :func:`error_responses`)::

    @router.put("/titles/{title_id}", responses={**MALFORMED, **INTERNAL, 404: {"description": "no title"}})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

# The ``responses=`` of a FastAPI route: status -> OpenAPI response object.
Responses = dict[int | str, dict[str, Any]]

_SCHEMAS = "#/components/schemas/"
# FastAPI's own 422 body ({"detail": [...]}) and its item: never sent by these services.
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


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


class ErrorDetail(BaseModel):
    """The error itself: ``status`` repeats the HTTP status, ``code`` is what clients branch on."""

    status: int
    code: str
    message: str
    # Free-form and only when there is more to say, e.g. a 422's [{"where", "problem"}] or a limit's numbers.
    details: Any = None


class ErrorBody(BaseModel):
    """Every error of every service: ``{"error": {"status", "code", "message", "details"}}``."""

    error: ErrorDetail


def error_responses(descriptions: Mapping[int, str], *statuses: int) -> Responses:
    """``responses=`` documenting ``statuses`` (all of ``descriptions`` when none are named)."""
    return {status: {"description": descriptions[status]} for status in statuses or descriptions}


# What the shared core (ott.service) answers on any route with a body, in the same words everywhere.
CORE_ERRORS: dict[int, str] = {
    400: "the body is not valid JSON",
    413: "the body is too large",
    422: "the request does not match the API",
}
MALFORMED = error_responses(CORE_ERRORS, 400)
UNAUTHORIZED = error_responses({401: "missing, invalid or expired token"})
INTERNAL = error_responses({401: "no X-Service-Token", 403: "wrong X-Service-Token"})


def document_error_bodies(openapi: dict[str, Any]) -> dict[str, Any]:
    """Describe every 4xx/5xx answer of ``openapi`` (a FastAPI document, changed in place) with :class:`ErrorBody`.

    FastAPI adds a 422 to every operation with parameters, in its own ``{"detail": [...]}`` shape;
    the services answer 422 (like every error) in ``ErrorBody``'s, so that schema is replaced and
    FastAPI's, referenced by nothing then, dropped.
    """
    reference = {"$ref": f"{_SCHEMAS}{ErrorBody.__name__}"}
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue  # a path item's "parameters" or "summary", not an operation
            for status, response in operation.get("responses", {}).items():
                if _is_error(status):
                    response["content"] = {"application/json": {"schema": dict(reference)}}
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template=_SCHEMAS + "{model}", mode="serialization")
    schemas.update(body.pop("$defs", {}))
    schemas[ErrorBody.__name__] = body
    for name in _FASTAPI_422:
        if name in schemas and f'"{_SCHEMAS}{name}"' not in json.dumps(openapi):
            del schemas[name]
    return openapi


def _is_error(status: str) -> bool:
    # OpenAPI keys are "404", or ranges "4XX"/"5XX"; "default" and 1xx-3xx are not errors here.
    return len(status) == 3 and status[0] in "45" and (status[1:].isdigit() or status[1:].upper() == "XX")
