"""The API gateway's nginx configuration, rendered from :mod:`labkit.platform.layers.apis.routes`.

One renderer serves both targets: the local gateway gets 127.0.0.1 upstreams, and
``k8s/base/apis/gateway/nginx.conf`` is the same template with Kubernetes Service names
(a test checks that file is current: regenerate it with ``python -m labkit.platform.layers``).

What it does, route by route (``/api/<service>/...``, and ``/player/``, the web player's page):

* protected routes are checked by ``auth_request`` against auth's ``/verify``; the user id it
  returns travels on as ``X-User-Id``. Its 200s are cached for the seconds auth allows
  (``Cache-Control: max-age``, a few at most and never past the token's expiry), keyed on the
  whole ``Authorization`` header: a play's requests on one token ask auth once, a token that
  differs by one character is a miss and asked, and a 401 (no max-age) is never kept;
* idempotent requests are retried on error, timeout, 502/503/504 (nginx never retries a POST
  that reached the upstream), each try bounded by the route's per-try timeout;
* ``/api/auth/login`` is rate limited per client address;
* ``/player/`` allows GET and HEAD only (403 otherwise) and passes its path on unchanged;
* errors the gateway itself produces (401, 404, 413, 429, 502, 503, 504) are JSON like the
  services' own.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence

from labkit.core.config import repo_root
from labkit.platform import nginx
from labkit.platform.layers.apis.routes import LOGIN_LIMIT, MAX_BODY_BYTES, ROUTES, RateLimit, Route

CONTAINER_PORT = 8080
KUBE_CONFIG = repo_root() / "k8s" / "base" / "apis" / "gateway" / "nginx.conf"

# Routes below a protected prefix that carry their own credential, not an access token.
# License keys are fetched with a playback authorisation, which the license service checks.
UNPROTECTED_SUBPATHS: Mapping[str, tuple[str, ...]] = {"license": ("keys/",)}

_ERRORS = {
    401: ("unauthorized", "a valid access token is required: Authorization: Bearer <token> (POST /api/auth/login)"),
    403: ("forbidden", "the gateway refused this request"),
    404: ("not_found", "no such route: the APIs are under /api/<"
          + "|".join(r.service for r in ROUTES if not r.path) + ">/, the web player is at "
          + ", ".join(r.path for r in ROUTES if r.path)),
    413: ("body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes"),
    429: ("too_many_requests", "too many requests from this address: slow down and retry"),
    502: ("bad_gateway", "the service behind this route failed; try again"),
    503: ("unavailable", "the service behind this route is unavailable; try again"),
    504: ("gateway_timeout", "the service behind this route did not answer in time"),
}


def _error_json(status: int) -> str:
    code, message = _ERRORS[status]
    return json.dumps({"error": {"status": status, "code": code, "message": message}})


def _peers(addresses: Sequence[str], route: Route) -> list[str]:
    # nginx retries only on the *next* peer: repeat the replicas so there are retries + 1 peers.
    wanted = max(len(addresses), route.retries + 1)
    return [addresses[i % len(addresses)] for i in range(wanted)]


def _proxy(route: Route, upstream_path: str, meshed: Collection[str] = ()) -> list[str]:
    per_try = f"{route.per_try_timeout_s:g}s"
    allowed = [f"limit_except {' '.join(route.methods)} {{ deny all; }}"] if route.methods else []
    if route.service in meshed:
        # Its sidecar retries and bounds each try (the VirtualService): nginx waits for the whole.
        timeout = f"{route.timeout_s:g}s"
        return [
            *allowed,
            f"proxy_pass http://{route.service}{upstream_path};",
            f"proxy_connect_timeout {per_try};",
            f"proxy_send_timeout {timeout};",
            f"proxy_read_timeout {timeout};",
            "proxy_next_upstream off;",
        ]
    return [
        *allowed,
        f"proxy_pass http://{route.service}{upstream_path};",
        f"proxy_connect_timeout {per_try};",
        f"proxy_send_timeout {per_try};",
        f"proxy_read_timeout {per_try};",
        "proxy_next_upstream error timeout http_502 http_503 http_504;",
        f"proxy_next_upstream_tries {route.retries + 1};",
        f"proxy_next_upstream_timeout {route.timeout_s:g}s;",
    ]


def _auth() -> list[str]:
    return [
        "auth_request /_verify;",
        "auth_request_set $ott_user_id $upstream_http_x_user_id;",
        "proxy_set_header X-User-Id $ott_user_id;",
    ]


def render(
    *, listen: str, upstreams: Mapping[str, Sequence[str]], temp_dir: str, login_limit: RateLimit = LOGIN_LIMIT,
    status_listen: str | None = None, user: str | None = None, meshed: Collection[str] = (),
) -> str:
    """nginx.conf for the gateway listening on ``listen``, proxying to ``upstreams[service]``.

    ``login_limit`` is the lab's :data:`labkit.platform.layers.apis.routes.LOGIN_LIMIT`; a benchmark raises it, since
    all of its clients share one address. ``status_listen``: a loopback address for nginx's own
    counters (:func:`labkit.platform.nginx.status_server`), read by its exporter. ``user``: the
    workers' user (:func:`labkit.platform.nginx.lab_user`), who writes the verify cache under ``temp_dir``.
    ``meshed``: services reached through the gateway's mesh sidecar, which retries (nginx does not).
    """
    lines = [
        *nginx.preamble("Generated by labkit.platform.layers.apis.gateway from its routes: edit those, not this file.",
                        temp_dir, user=user),
        f"  client_max_body_size {MAX_BODY_BYTES};",
        "  large_client_header_buffers 4 8k;",
        "  log_format json escape=json '{\"time\":\"$time_iso8601\",\"service\":\"gateway\","
        "\"method\":\"$request_method\","
        "\"uri\":\"$uri\",\"status\":$status,\"bytes\":$body_bytes_sent,\"request_time\":$request_time,"
        "\"upstream\":\"$upstream_addr\",\"upstream_status\":\"$upstream_status\",\"request_id\":\"$request_id\"}';",
        "  access_log /dev/stdout json;",
        f"  limit_req_zone $binary_remote_addr zone=login:1m rate={login_limit.requests_per_second}r/s;",
        "  limit_req_status 429;",
        f"  proxy_cache_path {temp_dir}/verify_cache levels=1:2 keys_zone=verify:1m max_size=16m inactive=10s "
        "use_temp_path=off;",
    ]
    for route in ROUTES:
        lines.append(f"  upstream {route.service} {{")
        lines += [f"    server {peer} max_fails=0;" for peer in _peers(upstreams[route.service], route)]
        # Connections kept to the gateway's sidecar too: its routes come by RDS, so a mesh change reaches
        # the connections its listeners already hold (their next request takes the new route).
        lines += ["    keepalive 16;", "  }"]
    lines += [
        "  server {",
        f"    listen {listen};",
        "    default_type application/json;",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Request-Id $request_id;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    add_header X-Request-Id $request_id always;",
    ]
    lines += [f"    error_page {status} @error{status};" for status in _ERRORS]
    lines += [
        "    location = /healthz { return 200 '{\"status\":\"alive\"}'; }",
        "    location = /_verify {",
        "      internal;",
        "      proxy_pass http://auth/verify;",
        # Only what auth marks cacheable (its 200s, max-age <= 5 s and the token's life; no
        # proxy_cache_valid, so nothing else is kept); the key is the full header value.
        "      proxy_cache verify;",
        "      proxy_cache_key $http_authorization;",
        "      proxy_pass_request_body off;",
        '      proxy_set_header Content-Length "";',
        "      proxy_set_header X-Original-URI $request_uri;",
        "      proxy_read_timeout 2s;",
        "    }",
        # Internal routes (service-token protected) are for the lab's tools, never the public edge.
        "    location ~ ^/api/[a-z]+/admin(/|$) { return 404; }",
        f"    location = {login_limit.path} {{",
        f"      limit_req zone=login burst={login_limit.burst} nodelay;",
        *("      " + d for d in _proxy(_route("auth"), "/login", meshed)),
        "    }",
    ]
    for route in ROUTES:
        lines.append(f"    location {route.prefix} {{")
        if route.protected:
            lines += ["      " + d for d in _auth()]
        lines += ["      " + d for d in _proxy(route, route.upstream_path, meshed)]
        lines.append("    }")
        if route.path:
            # "/player" without its slash: to the page (a relative Location, right behind any port-forward).
            lines.append(f"    location = {route.path.rstrip('/')} {{ absolute_redirect off; "
                         f"return 301 {route.path}; }}")
        for sub in UNPROTECTED_SUBPATHS.get(route.service, ()):
            lines.append(f"    location {route.prefix}{sub} {{")
            lines += ["      " + d for d in _proxy(route, f"/{sub}", meshed)]
            lines.append("    }")
    lines.append("    location / { return 404; }")
    for status in _ERRORS:
        lines.append(f"    location @error{status} {{ return {status} '{_error_json(status)}'; }}")
    lines += ["  }", *(nginx.status_server(status_listen) if status_listen else []), "}", ""]
    return "\n".join(lines)


def _route(service: str) -> Route:
    return next(r for r in ROUTES if r.service == service)


def render_kube() -> str:
    """The gateway config shipped as a ConfigMap: Kubernetes Service names, one peer each."""
    return render(
        listen=f"0.0.0.0:{CONTAINER_PORT}",
        upstreams={r.service: [f"{r.service}:{r.container_port}"] for r in ROUTES},
        temp_dir="/tmp/nginx",
        status_listen=nginx.kube_status_listen(),
    )
