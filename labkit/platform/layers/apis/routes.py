"""Traffic policy of the API gateway, declared once.

The local gateway (nginx) and the Kubernetes gateway config are rendered from these values,
and the Istio resources of the service-mesh notebook will be too: retries, per-try timeouts,
overall timeouts, which routes need a verified token, and the login rate limit.

The gateway is the viewer's single origin: besides the APIs (``/api/<service>/``) it serves the
web player's page (``/player/``, from the ``player`` component) and takes the player's QoE
beacons (``/api/qoe/``), so page, APIs and beacons are same-origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.platform.component import NGINX_CONTAINER_PORT, SERVICE_CONTAINER_PORT


@dataclass(frozen=True)
class Route:
    """``/api/<service>/...`` (or ``path``) on the gateway goes to component ``service``."""

    service: str
    # The gateway verifies the bearer token before proxying (auth_request to auth's /verify).
    protected: bool
    # Extra attempts for idempotent requests (GET, HEAD, PUT, DELETE) on error or timeout.
    retries: int = 2
    per_try_timeout_s: float = 2.0
    timeout_s: float = 10.0
    # Where the route is on the gateway when not /api/<service>/, and whether the upstream sees the
    # path with that prefix (a static site served under it) or without (an API service's own paths).
    path: str = ""
    keep_prefix: bool = False
    # The only methods allowed (GET allows HEAD too); empty: any.
    methods: tuple[str, ...] = ()
    # The port of the component's pods on Kubernetes (its Service's port).
    container_port: int = SERVICE_CONTAINER_PORT

    @property
    def prefix(self) -> str:
        return self.path or f"/api/{self.service}/"

    @property
    def upstream_path(self) -> str:
        return self.prefix if self.keep_prefix else "/"


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
    # QoE beacons from the players: anonymous (a beacon carries no credential), small and quick.
    Route("qoe", protected=False),
    # The web player's page and its hls.js: static files, read-only.
    Route("player", protected=False, path="/player/", keep_prefix=True, methods=("GET",),
          container_port=NGINX_CONTAINER_PORT),
)

# Password guessing is throttled per client address at the gateway.
LOGIN_LIMIT = RateLimit(path="/api/auth/login", requests_per_second=10, burst=20)

# The largest request body the gateway forwards (the services enforce the same limit).
MAX_BODY_BYTES = 65536
