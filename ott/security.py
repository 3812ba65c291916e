"""Who is calling: the bearer-token dependency every protected route uses.

The dependencies are ``async``: a sync one would cost every request a trip through the thread
pool. Verifying a token is pure CPU once its signing key is known; only a token whose key must
first be fetched from auth's JWKS is verified in the thread pool, off the event loop.

    @router.get("/me")
    def me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"id": user.id}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
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


async def bearer_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if credentials is None or not credentials.credentials:
        raise unauthorized("send an access token: Authorization: Bearer <token>")
    return credentials.credentials


async def current_user(request: Request, token: Annotated[str, Depends(bearer_token)]) -> User:
    checker = verifier(service_of(request))
    if checker.knows_key_of(token):
        claims = checker.verify(token, ACCESS_AUDIENCE)
    else:
        claims = await run_in_threadpool(checker.verify, token, ACCESS_AUDIENCE)
    return User(id=str(claims["sub"]), email=str(claims.get("email", "")), claims=claims)


CurrentUser = Annotated[User, Depends(current_user)]
