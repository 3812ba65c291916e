"""Signed tokens: ES256 JWTs issued by auth, verified by every service through auth's JWKS.

Only auth holds the private key (generated per lab on first start, never committed); the
others fetch the public keys from ``/.well-known/jwks.json`` and cache them.

Audiences keep tokens to their purpose: an access token (``ottlab-api``) is not a refresh
token (``ottlab-refresh``), and neither opens anything else.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt import PyJWKClient
from jwt.algorithms import ECAlgorithm

from ott.errors import ApiError, unauthorized

ALGORITHM = "ES256"
ISSUER = "ottlab-auth"
ACCESS_AUDIENCE = "ottlab-api"
# Tokens a verifier remembers as verified (a player shows the same access token on every call of a play).
VERIFIED_CACHE_SIZE = 4096
REFRESH_AUDIENCE = "ottlab-refresh"
KEY_FILE = "signing-key.pem"


class SigningKey:
    """auth's private key: loaded from ``keys_dir``, or created there (mode 0600) on first start."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.private_key = private_key
        public = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
        # The key id is the RFC 7638 thumbprint: stable for a key, different for the next one.
        thumb = jwt.utils.base64url_encode(
            _sha256(json.dumps({k: public[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":")))
        ).decode()
        self.kid = thumb
        self.public_jwk = {**public, "kid": thumb, "use": "sig", "alg": ALGORITHM}

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> SigningKey:
        path = keys_dir / KEY_FILE
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} is not an EC private key")
            return cls(loaded)
        keys_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        # Two auth replicas may start together: the first rename wins, and both use its key.
        if path.exists():
            tmp.unlink()
            return cls.load_or_create(keys_dir)
        tmp.replace(path)
        return cls(key)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def issue(self, subject: str, audience: str, ttl: int, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + ttl,
            "jti": uuid.uuid4().hex, **claims,
        }
        return jwt.encode(payload, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


class TokenVerifier:
    """Verifies tokens against a fixed key (auth itself) or auth's JWKS URL (everyone else)."""

    def __init__(self, *, key: SigningKey | None = None, jwks_url: str | None = None, timeout: float = 5.0) -> None:
        if (key is None) == (jwks_url is None):
            raise ValueError("give exactly one of key or jwks_url")
        self._key = key
        self._jwks = PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=int(timeout)) if jwks_url else None
        # Key ids whose signing key is cached: verifying their tokens does no I/O.
        self._known_kids: set[str] = set()
        # (token, audience) -> claims of tokens already verified: their signature stands until they
        # expire, so a token seen again is checked for expiry only (PyJWT's parse and the ECDSA
        # verification cost about half a millisecond, on every call of a play).
        self._verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def knows_key_of(self, token: str) -> bool:
        """Whether verifying ``token`` needs no fetch of the JWKS (a fixed key, or its key id seen before)."""
        if self._jwks is None or self._remembered(token, ACCESS_AUDIENCE) is not None:
            return True
        try:
            return jwt.get_unverified_header(token).get("kid") in self._known_kids
        except jwt.PyJWTError:
            return True  # refused without looking for a key

    def verify(self, token: str, audience: str = ACCESS_AUDIENCE) -> dict[str, Any]:
        """The token's claims; :class:`ApiError` 401 naming what is wrong with it otherwise."""
        remembered = self._remembered(token, audience)
        if remembered is not None:
            return remembered
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("the token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            raise unauthorized(f"tokens must be signed with {ALGORITHM}, not {header.get('alg')!r}")
        try:
            key = self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=audience, issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired: log in again or refresh it") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(f"the token is not meant for this service (audience must be {audience!r})") from None
        except jwt.PyJWKClientConnectionError:
            raise ApiError(503, "keys_unavailable", "cannot fetch auth's signing keys; try again") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"the token is not valid: {exc}") from None
        with self._lock:
            self._verified[(token, audience)] = claims
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return dict(claims)

    def _remembered(self, token: str, audience: str) -> dict[str, Any] | None:
        """The claims of ``token`` verified before for ``audience`` if it has not expired since, else None."""
        with self._lock:
            claims = self._verified.get((token, audience))
            if claims is None:
                return None
            if claims["exp"] <= time.time():
                del self._verified[(token, audience)]
                return None  # verified again, and refused as expired
            self._verified.move_to_end((token, audience))
        return dict(claims)

    def _signing_key(self, token: str) -> Any:
        if self._key is not None:
            return self._key.private_key.public_key()
        assert self._jwks is not None
        found = self._jwks.get_signing_key_from_jwt(token)
        # PyJWKClient keeps the keys it found (cache_keys): this kid's next tokens need no fetch.
        if found.key_id:
            self._known_kids.add(found.key_id)
        return found.key


def _sha256(text: str) -> bytes:
    import hashlib

    return hashlib.sha256(text.encode()).digest()
