"""The baseline's upstream: the smallest ASGI app that answers every route of the play and of sign-in.

It does no work at all (no database, no hashing, no token checks), so the gateway in front of
it measures what the gateway, uvicorn and the loopback cost on their own.
"""

from __future__ import annotations

import json
from typing import Any

_BODIES = {
    "/login": {"access_token": "t", "refresh_token": "r", "token_type": "bearer", "expires_in": 900},
    "/verify": {"sub": "u", "email": "e"},
    "/titles": {"items": [], "page": 1, "per_page": 20, "total": 0},
    "/authorizations": {"authorization": "a", "session_id": "0" * 32, "expires_at": "", "key_uri": "",
                        "playback": []},
}
_KEY = b"\0" * 16


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path: str = scope["path"]
    if path.startswith("/keys/"):
        body, kind = _KEY, b"application/octet-stream"
    elif path.endswith("/heartbeat"):
        body, kind = json.dumps({"session_id": "0" * 32, "expires_at": ""}).encode(), b"application/json"
    else:
        body, kind = json.dumps(_BODIES.get(path, {})).encode(), b"application/json"
    status = 204 if scope["method"] == "DELETE" else 200
    headers = [(b"content-type", kind), (b"x-user-id", b"u")]
    if path == "/verify":
        headers.append((b"cache-control", b"max-age=5"))  # as auth's /verify allows the gateway for a fresh token
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if status == 204 else body})
