"""auth: accounts, passwords and the signed tokens every other service trusts.

Users sign up with an email and a password (stored as an argon2id hash), log in for a pair of
ES256 tokens — a short-lived access token (``sub`` = user id, ``email``) and a longer-lived refresh
token — and trade a refresh token for a new pair. Refresh tokens rotate: each one works once, its
``jti`` is recorded as revoked, and a second use is refused.

Other services verify access tokens with the public key at ``/.well-known/jwks.json``; nginx asks
``/verify`` (``auth_request``) and forwards the ``X-User-Id`` / ``X-User-Email`` it answers with.

Run it with ``python -m ott.auth`` (settings from ``OTT_*`` variables, see :mod:`ott.settings`).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Column, DateTime, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ott.db import as_utc, from_epoch, metadata, utc_now
from ott.errors import INTERNAL, MALFORMED, UNAUTHORIZED, ApiError, not_found, unauthorized
from ott.internal import ServiceCaller
from ott.models import USER_ID_PATTERN, valid_text
from ott.security import CurrentUser
from ott.service import Service, Svc, create_app, run
from ott.settings import Settings
from ott.tokens import ACCESS_AUDIENCE, REFRESH_AUDIENCE, SigningKey, TokenVerifier

users = Table(
    "auth_users", metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),
    Column("display_name", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Used refresh tokens, by jti. A row only needs to outlive its token: once the token has expired
# the verifier refuses it anyway, so rows past ``expires_at`` are swept on the next refresh.
revoked_tokens = Table(
    "auth_revoked_tokens", metadata,
    Column("jti", String(64), primary_key=True),
    Column("user_id", String(32), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# The WHATWG "valid email address" grammar: ASCII only, so an email always fits in an HTTP header
# (X-User-Email) and compares byte for byte once lower-cased.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

Email = Annotated[str, StringConstraints(max_length=254, pattern=EMAIL_PATTERN, to_lower=True)]
# Login takes any string: a malformed email is just an unknown one, answered like a wrong password.
LoginEmail = Annotated[str, StringConstraints(min_length=1, max_length=254, to_lower=True),
                       AfterValidator(valid_text)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128), AfterValidator(valid_text)]
LoginPassword = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(valid_text)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(valid_text)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class _Request(BaseModel):
    # Strict: "123" is not a number and 1 is not a string; a client's type error is its bug to see.
    model_config = ConfigDict(strict=True)


class SignupRequest(_Request):
    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginRequest(_Request):
    email: LoginEmail
    password: LoginPassword


class RefreshRequest(_Request):
    refresh_token: Token


class UpsertUserRequest(_Request):
    email: Email
    password: Password
    display_name: DisplayName | None = None


class UserOut(BaseModel):
    id: str = Field(pattern=USER_ID_PATTERN)
    email: str
    display_name: str | None


class Me(UserOut):
    created_at: datetime


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the access token expires")


class Identity(BaseModel):
    sub: str
    email: str


class Jwk(BaseModel):
    model_config = ConfigDict(extra="allow")
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    use: str
    alg: str


class Jwks(BaseModel):
    keys: list[Jwk]


class Passwords:
    """Argon2id password hashing.

    Verifying against an unknown account still runs one argon2 verification (against a decoy
    hash), so the response time does not tell whether an email has an account.

        passwords = Passwords()
        stored = passwords.hash("correct horse")
        assert passwords.verify(stored, "correct horse")
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._decoy: str | None = None

    def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (salted, parameters included)."""
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; ``stored=None`` (no account) costs the same and fails."""
        if stored is None:
            if self._decoy is None:
                self._decoy = self.hasher.hash(uuid.uuid4().hex)
            self._check(self._decoy, password)
            return False
        return self._check(stored, password)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was hashed with weaker parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


class AuthState:
    """What auth keeps beside the shared :class:`Service`: the password hasher and the signing key."""

    def __init__(self, passwords: Passwords) -> None:
        self.passwords = passwords
        self._key: SigningKey | None = None

    def start(self, service: Service) -> None:
        """Startup hook: load (or create) the signing key and verify tokens with it directly."""
        self._key = SigningKey.load_or_create(service.settings.keys_dir)
        # auth must not fetch its own JWKS over HTTP: it verifies with the key it holds.
        service.verifier = TokenVerifier(key=self._key)

    @property
    def key(self) -> SigningKey:
        """The signing key; 503 until startup has loaded it."""
        if self._key is None:
            raise ApiError(503, "not_ready", "the signing key is not loaded yet")
        return self._key


async def _state(request: Request) -> AuthState:
    return cast(AuthState, request.app.state.auth)


State = Annotated[AuthState, Depends(_state)]

router = APIRouter()


def _issue_pair(service: Service, key: SigningKey, user_id: str, email: str) -> TokenPair:
    settings = service.settings
    return TokenPair(
        access_token=key.issue(user_id, ACCESS_AUDIENCE, settings.access_ttl, email=email),
        refresh_token=key.issue(user_id, REFRESH_AUDIENCE, settings.refresh_ttl),
        expires_in=settings.access_ttl,
    )


@router.post("/signup", status_code=201, responses={**MALFORMED, 409: {"description": "email_taken"}})
def signup(body: SignupRequest, service: Svc, state: State) -> UserOut:
    """Create an account; the password is stored only as an argon2id hash."""
    user_id = uuid.uuid4().hex
    password_hash = state.passwords.hash(body.password)
    try:
        with service.engine.begin() as conn:
            conn.execute(insert(users).values(id=user_id, email=body.email, password_hash=password_hash,
                                              display_name=body.display_name, created_at=utc_now()))
    except IntegrityError:
        # The unique index decides, so two concurrent signups for one email cannot both win.
        service.log.info("signup refused", extra={"event": "signup_refused", "email": body.email,
                                                  "reason": "email_taken"})
        raise ApiError(409, "email_taken", "an account with this email already exists") from None
    service.log.info("signup", extra={"event": "signup", "user_id": user_id, "email": body.email})
    return UserOut(id=user_id, email=body.email, display_name=body.display_name)


@router.post("/login", responses={**MALFORMED, 401: {"description": "bad_credentials"}})
def login(body: LoginRequest, service: Svc, state: State) -> TokenPair:
    """Trade an email and password for an access and a refresh token."""
    key = state.key
    with service.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.email == body.email)).first()
    # Verify before looking at row: an unknown email must cost the same argon2 time as a known one.
    valid = state.passwords.verify(row.password_hash if row is not None else None, body.password)
    if row is None or not valid:
        service.log.warning("login failed", extra={
            "event": "login_failed", "email": body.email,
            "reason": "unknown_email" if row is None else "wrong_password"})
        raise ApiError(401, "bad_credentials", "the email or the password is wrong")
    if state.passwords.needs_rehash(row.password_hash):
        # Parameters were raised since this hash was made: upgrade it while the password is at hand.
        with service.engine.begin() as conn:
            conn.execute(update(users).where(users.c.id == row.id)
                         .values(password_hash=state.passwords.hash(body.password)))
    service.log.info("login", extra={"event": "login", "user_id": row.id, "email": row.email})
    return _issue_pair(service, key, row.id, row.email)


@router.post("/refresh", responses={
    **MALFORMED, 401: {"description": "invalid, expired or already used refresh token"}})
def refresh(body: RefreshRequest, service: Svc, state: State) -> TokenPair:
    """Trade a refresh token for a new pair; the refresh token used is revoked (it works once)."""
    key = state.key
    claims = service.verifier.verify(body.refresh_token, REFRESH_AUDIENCE)
    user_id, jti = str(claims["sub"]), claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise unauthorized("the refresh token has no id (jti)")
    now = utc_now()
    try:
        with service.engine.begin() as conn:
            conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < now))
            # The primary key makes "use once" atomic: of two concurrent refreshes, one insert fails.
            conn.execute(insert(revoked_tokens).values(
                jti=jti, user_id=user_id, revoked_at=now,
                expires_at=from_epoch(int(claims["exp"]))))
            row = conn.execute(select(users).where(users.c.id == user_id)).first()
            if row is None:
                raise unauthorized("the account of this token no longer exists")
    except IntegrityError:
        service.log.warning("refresh token reused", extra={"event": "refresh_reused", "user_id": user_id,
                                                           "jti": jti})
        raise ApiError(401, "token_revoked", "this refresh token was already used: log in again") from None
    service.log.info("refresh", extra={"event": "refresh", "user_id": user_id})
    return _issue_pair(service, key, row.id, row.email)


@router.get("/.well-known/jwks.json")
def jwks(state: State, response: Response) -> Jwks:
    """The public keys that verify auth's tokens (RFC 7517)."""
    # Verifiers cache keys for 300 s (ott.tokens); let HTTP caches in between do the same.
    response.headers["Cache-Control"] = "public, max-age=300"
    return Jwks.model_validate(state.key.jwks())


# How long the gateway may keep a 200 of /verify for the same Authorization header (its proxy_cache):
# a few seconds, and never past the token's expiry. A 401 says nothing about caching, so it is never kept.
VERIFY_CACHE_S = 5


@router.get("/verify", responses=UNAUTHORIZED)
def verify(user: CurrentUser, response: Response) -> Identity:
    """Check an access token for nginx ``auth_request``: 200 with the caller's identity, else 401.

    The 200 says how long it may be cached (``Cache-Control: max-age``), at most ``VERIFY_CACHE_S``
    and never beyond the token's ``exp``: the gateway answers a play's next requests on the same
    token from its cache instead of asking again (access tokens are stateless: nothing revokes one
    before it expires, so a cached 200 is as true as a fresh one until then).
    """
    remaining = int(float(user.claims["exp"]) - time.time())
    ttl = max(0, min(VERIFY_CACHE_S, remaining))
    response.headers["Cache-Control"] = f"max-age={ttl}" if ttl else "no-store"
    response.headers["X-User-Id"] = user.id
    response.headers["X-User-Email"] = user.email
    return Identity(sub=user.id, email=user.email)


@router.get("/me", responses={**UNAUTHORIZED, 404: {"description": "the account no longer exists"}})
def me(user: CurrentUser, service: Svc) -> Me:
    """The caller's account."""
    with service.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == user.id)).first()
    if row is None:
        raise not_found("user", user.id)
    return Me(id=row.id, email=row.email, display_name=row.display_name, created_at=as_utc(row.created_at))


@router.post("/admin/users", responses={
    201: {"model": UserOut, "description": "created"}, **MALFORMED, **INTERNAL})
def upsert_user(body: UpsertUserRequest, _: ServiceCaller, service: Svc, state: State,
                response: Response) -> UserOut:
    """Internal: create the user (201) or bring it to the given password and name (200); for seeding."""
    with service.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.email == body.email)).first()
    if row is None:
        user_id = uuid.uuid4().hex
        try:
            with service.engine.begin() as conn:
                conn.execute(insert(users).values(id=user_id, email=body.email,
                                                  password_hash=state.passwords.hash(body.password),
                                                  display_name=body.display_name, created_at=utc_now()))
        except IntegrityError:
            # A concurrent seed created it first: fall through to the update below.
            with service.engine.connect() as conn:
                row = conn.execute(select(users).where(users.c.email == body.email)).one()
        else:
            service.log.info("user seeded", extra={"event": "admin_user_created", "user_id": user_id,
                                                   "email": body.email})
            response.status_code = 201
            return UserOut(id=user_id, email=body.email, display_name=body.display_name)
    values: dict[str, Any] = {"display_name": body.display_name}
    # Re-hash only when the password changed, so re-seeding is cheap and leaves the row as it was.
    if not state.passwords.verify(row.password_hash, body.password):
        values["password_hash"] = state.passwords.hash(body.password)
    with service.engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == row.id).values(**values))
    service.log.info("user seeded", extra={"event": "admin_user_updated", "user_id": row.id, "email": row.email,
                                           "password_changed": "password_hash" in values})
    return UserOut(id=row.id, email=row.email, display_name=body.display_name)


def build_app(settings: Settings | None = None, *, passwords: Passwords | None = None) -> FastAPI:
    """The auth app; ``passwords`` lets tests use cheaper argon2 parameters."""
    settings = settings or Settings.from_env()
    state = AuthState(passwords or Passwords())
    app = create_app("auth", [router], settings, on_startup=state.start,
                     description="Accounts, password login and the ES256 tokens the other services verify.")
    app.state.auth = state
    return app


def main() -> None:
    """``python -m ott.auth``: serve auth with settings from the environment."""
    run(build_app)


if __name__ == "__main__":
    main()
