"""Traffic policy of the API gateway, declared once.

The local gateway (nginx) and the Kubernetes gateway config are rendered from these values,
and the Istio resources of the service-mesh notebook will be too: retries, per-try timeouts,
overall timeouts, which routes need a verified token, and the login rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """``/api/<service>/...`` on the gateway goes to component ``service``."""

    service: str
    # The gateway verifies the bearer token before proxying (auth_request to auth's /verify).
    protected: bool
    # Extra attempts for idempotent requests (GET, HEAD, PUT, DELETE) on error or timeout.
    retries: int = 2
    per_try_timeout_s: float = 2.0
    timeout_s: float = 10.0

    @property
    def prefix(self) -> str:
        return f"/api/{self.service}/"


@dataclass(frozen=True)
class RateLimit:
    path: str
    requests_per_second: int
    burst: int


ROUTES: tuple[Route, ...] = (
    # Password hashing (argon2) is slow on purpose: a login under load needs more time per try.
    Route("auth", protected=False, per_try_timeout_s=5.0, timeout_s=15.0),
    Route("catalog", protected=False),
    Route("subscription", protected=True),
    # A license request fans out to subscription and cas: give it more time per try.
    Route("license", protected=True, per_try_timeout_s=4.0, timeout_s=15.0),
    Route("cas", protected=True),
)

# Password guessing is throttled per client address at the gateway.
LOGIN_LIMIT = RateLimit(path="/api/auth/login", requests_per_second=10, burst=20)

# The largest request body the gateway forwards (the services enforce the same limit).
MAX_BODY_BYTES = 65536

# Inside a container every API service listens on this port.
SERVICE_CONTAINER_PORT = 8000
