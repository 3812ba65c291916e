"""Who is calling: the bearer-token dependency every protected route uses.

    @router.get("/me")
    def me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"id": user.id}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ott.errors import unauthorized
from ott.service import Service, service_of
from ott.tokens import ACCESS_AUDIENCE, TokenVerifier

_bearer = HTTPBearer(auto_error=False, description="an access token from POST /login of the auth service")


@dataclass(frozen=True)
class User:
    id: str
    email: str
    claims: dict[str, Any]


def verifier(service: Service) -> TokenVerifier:
    """The service's verifier: auth's JWKS, fetched once and cached (auth replaces it with its own key)."""
    if service.verifier is None:
        service.verifier = TokenVerifier(jwks_url=f"{service.settings.auth_url}/.well-known/jwks.json",
                                         timeout=service.settings.call_timeout)
    existing: TokenVerifier = service.verifier
    return existing


def bearer_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if credentials is None or not credentials.credentials:
        raise unauthorized("send an access token: Authorization: Bearer <token>")
    return credentials.credentials


def current_user(request: Request, token: Annotated[str, Depends(bearer_token)]) -> User:
    claims = verifier(service_of(request)).verify(token, ACCESS_AUDIENCE)
    return User(id=str(claims["sub"]), email=str(claims.get("email", "")), claims=claims)


CurrentUser = Annotated[User, Depends(current_user)]
