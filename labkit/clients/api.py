"""A viewer's client of the OTT APIs through the gateway, as the notebooks and tools use it.

Every call is bounded by a timeout. A refusal (4xx) raises :class:`ApiRefused` carrying the
service's stable ``code`` and its reason, so a notebook can show *why* playback was denied.

Example::

    client = OttClient(target.endpoint("gateway"))
    client.signup("dana@example.com", "correct horse battery")
    client.login("dana@example.com", "correct horse battery")
    client.subscribe("basic")
    client.authorize("big-buck-bunny", device_id="laptop")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httpx

from labkit.core.errors import LabError

if TYPE_CHECKING:
    from labkit.targets.base import Target

DEFAULT_TIMEOUT = 15.0


class ApiRefused(LabError):
    """The platform answered with an error status; ``code`` is the service's stable error code."""

    def __init__(self, method: str, path: str, status: int, code: str, message: str, details: Any = None) -> None:
        self.status = status
        self.code = code
        self.reason = message
        self.details = details
        super().__init__(f"{method} {path} -> {status} {code}: {message}")


class OttClient:
    """One viewer's session against the gateway (``/api/<service>/...``)."""

    def __init__(self, gateway_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base = gateway_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=timeout)
        self.access_token: str | None = None
        self.refresh_token: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OttClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- auth --------------------------------------------------------------------------

    def signup(self, email: str, password: str, display_name: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"email": email, "password": password}
        if display_name:
            body["display_name"] = display_name
        return self._call("POST", "/api/auth/signup", json=body, auth=False)

    def login(self, email: str, password: str) -> dict[str, Any]:
        tokens = self._call("POST", "/api/auth/login", json={"email": email, "password": password}, auth=False)
        self.access_token, self.refresh_token = tokens["access_token"], tokens["refresh_token"]
        return tokens

    def refresh(self) -> dict[str, Any]:
        tokens = self._call("POST", "/api/auth/refresh", json={"refresh_token": self.refresh_token}, auth=False)
        self.access_token, self.refresh_token = tokens["access_token"], tokens["refresh_token"]
        return tokens

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/auth/me")

    # -- catalog -----------------------------------------------------------------------

    def titles(self, q: str | None = None, *, page: int = 1, per_page: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"page": page, "per_page": per_page}
        if q:
            params["q"] = q
        return self._call("GET", "/api/catalog/titles", params=params, auth=False)

    def title(self, title_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/catalog/titles/{title_id}", auth=False)

    # -- subscription ------------------------------------------------------------------

    def plans(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._call("GET", "/api/subscription/plans"))

    def subscribe(self, plan: str) -> dict[str, Any]:
        return self._call("POST", "/api/subscription/subscriptions", json={"plan": plan})

    def subscription(self) -> dict[str, Any]:
        return self._call("GET", "/api/subscription/subscriptions/me")

    def cancel(self) -> dict[str, Any]:
        return self._call("DELETE", "/api/subscription/subscriptions/me")

    def entitlement(self, title_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/subscription/entitlements/{title_id}")

    # -- license and conditional access ------------------------------------------------

    def authorize(self, title_id: str, device_id: str) -> dict[str, Any]:
        """A playback authorisation: entitlement, then a CAS stream session, then a key grant."""
        return self._call("POST", "/api/license/authorizations", json={"title_id": title_id, "device_id": device_id})

    def key(self, title_id: str, authorization: str) -> bytes:
        response = self.http.get(f"/api/license/keys/{title_id}", headers={"Authorization": f"Bearer {authorization}"})
        self._raise_for(response, "GET", f"/api/license/keys/{title_id}")
        return response.content

    def sessions(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._call("GET", "/api/cas/sessions"))

    def end_session(self, session_id: str) -> None:
        self._call("DELETE", f"/api/cas/sessions/{session_id}")

    # -- plumbing ----------------------------------------------------------------------

    def _call(
        self, method: str, path: str, *, json: Any = None, params: Any = None, auth: bool = True
    ) -> dict[str, Any]:
        headers = {}
        if auth:
            if self.access_token is None:
                raise LabError(f"{method} {path} needs a logged-in client", hint="call client.login(...) first")
            headers["Authorization"] = f"Bearer {self.access_token}"
        try:
            response = self.http.request(method, path, json=json, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise LabError(
                f"{method} {self.base}{path} failed: {exc}", hint="is the platform up? `ottlab status`"
            ) from None
        self._raise_for(response, method, path)
        return cast(dict[str, Any], response.json()) if response.content else {}

    @staticmethod
    def _raise_for(response: httpx.Response, method: str, path: str) -> None:
        if response.status_code < 400:
            return
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": response.text[:200]}
        raise ApiRefused(method, path, response.status_code, str(error.get("code", "")),
                         str(error.get("message", "")), error.get("details"))


def read_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, read without checking the signature: what anyone holding it can see.

    >>> header, claims = read_token(forge_token({"sub": "42"}, kid="k1"))
    >>> header["alg"], header["kid"], claims["sub"]
    ('ES256', 'k1', '42')
    """
    import jwt

    header = jwt.get_unverified_header(token)
    return dict(header), dict(jwt.decode(token, options={"verify_signature": False}))


def forge_token(claims: dict[str, Any], *, kid: str) -> str:
    """``claims`` signed ES256 by a new key that auth never issued, under auth's key id ``kid``: a forgery."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": kid})


def service_client(target: Target, component: str, *, caller: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
    """An HTTP client of ``component``'s internal routes (``/admin/...``) with the lab's service token.

    With the mesh on, the lab's tools call as their own identity (``ottlab-tools``); ``caller`` makes
    the calls as that workload's (:meth:`Target.endpoint_as`): only the transcoder may create keys.
    The caller closes the client::

        with service_client(target, "license", caller="transcoder") as admin:
            admin.post("/admin/keys/ocean-documentary").json()["key_hex"]
    """
    url, tls = (target.endpoint(component), None) if caller is None else target.endpoint_as(component, caller)
    return httpx.Client(base_url=url, headers={"X-Service-Token": target.service_token()}, timeout=timeout,
                        verify=tls if tls is not None else True)


@dataclass(frozen=True)
class PlayStart:
    """One play's start (its authorisation through the gateway): its seconds, or the refusal's status and reason."""

    seconds: float
    status: int | None = None
    reason: str = ""


def play_starts(client: OttClient, title_id: str, plays: int, *, device_id: str = "lab") -> list[PlayStart]:
    """Start ``plays`` plays of ``title_id`` one after another, each ended at once (the stream limit stays free)."""
    out = []
    for _ in range(plays):
        started = time.perf_counter()
        try:
            grant = client.authorize(title_id, device_id=device_id)
        except ApiRefused as exc:
            out.append(PlayStart(time.perf_counter() - started, exc.status, f"{exc.code}: {exc.reason}"))
            continue
        out.append(PlayStart(time.perf_counter() - started))
        client.end_session(grant["session_id"])
    return out
