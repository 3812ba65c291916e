"""The CDN layer: points of presence (PoPs), each its own nginx with its own cache, in front of the origin.

A PoP is one replica of the ``edge`` component: ``edge-0`` listens on base + 100, ``edge-1`` on
base + 101, and so on (two by default; ``ottlab scale edge 3`` adds one, with its exporter). Each one:

* serves only **signed** paths, ``/s/<token>/<expires>/<title>/...`` (:mod:`ott.signing`): a wrong
  token is 403, an expired one 410; the token is in a path prefix so the playlists' relative URIs
  keep it;
* caches by the path without the signed prefix and without the query string, so neither tokens
  nor CMCD or tracking arguments split the cache;
* collapses concurrent misses into one origin fetch (cache lock), serves stale content when the
  origin fails, and refreshes expired entries in the background while serving the stale copy;
* keeps each object type as long as :data:`OBJECT_TYPES` says, whatever the origin's headers;
* answers ``X-Cache-Status`` (HIT, MISS, EXPIRED, STALE, UPDATING ...) and ``X-PoP``;
* writes a JSON access log that the PoP's exporter (:mod:`ott.edgelog`) turns into metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core.config import LabConfig, repo_root
from labkit.core.errors import ConfigError
from labkit.platform import nginx
from labkit.platform.component import Component, Port, Readiness
from labkit.platform.credentials import SIGNING_SECRET_FILE, signing_secret
from labkit.platform.layer import Layer
from labkit.platform.layers.media import origin
from ott import signing

CONTAINER_PORT = 8080
EDGES_FILE = "edges.json"
DEFAULT_POPS = 2
MAX_POPS = 4
# Origin fetches: a PoP gives up on a silent origin quickly and serves stale content instead.
ORIGIN_CONNECT_TIMEOUT_S = 2
ORIGIN_READ_TIMEOUT_S = 10
CACHE_LOCK_TIMEOUT_S = 10
LOG_FLUSH_S = 1

# How a PoP hands a cached file to its client. A cache entry's body starts after nginx's header
# (600 bytes and more: the key and the origin's headers), off a page boundary. With sendfile and
# tcp_nopush that costs a loopback PoP dearly: the response goes out in segments the kernel cuts
# short, and for a small object the tail waits under Nagle for the client's delayed ACK (40 ms per
# 64 KB HIT). The local lab's players, exporters and benchmarks are on this machine, so local PoPs
# copy each file through one buffer (one pread, one writev; nginx allocates at most the file's
# size, 1 MiB at most per response in flight): bench/bench_edge_hit.py measured the PoP's worker
# at 220-270 us of CPU per 650 KB HIT with sendfile, 110-130 us with the copy. A pod serves over a
# network with a memory limit: there sendfile (no copy, no buffer per response) is the right trade,
# and the short segments do not stall a real network's ACK clock.
LOCAL_FILE_OUTPUT = ("sendfile off;", "output_buffers 1 1m;")
POD_FILE_OUTPUT = ("sendfile on;", "tcp_nopush on;")
# A request's id in the access log, and the X-Request-Id the origin gets on a miss: the time in
# ms, the connection's serial number and the request's rank on it, unique per PoP. nginx's
# $request_id draws 16 random bytes from OpenSSL for every request, about 8 us of the PoP's CPU
# per HIT, the biggest single cost of its log line. Set through a map, the id is computed once per
# request: the log line and the header carry the same value.
REQUEST_ID = "$msec-$connection-$connection_requests"

# The lab's per-PoP capacity, declared once: what a pod's resource limit is on a cluster, the rate
# at which one PoP (one nginx worker) takes media requests. Off unless the lab sets it on the edge
# (`ottlab env edge OTT_EDGE_CAPACITY_RPS=80`, `--unset`; ``target.set_pop_capacity(80)`` on either target):
# on this machine a PoP's own limits (a core, the NIC) sit far beyond what one load generator on
# the same cores can ask, so without it every knee is the generator's (notebook 07). Above the
# rate, nginx's limit_req queues a request (its answer waits: time to first byte grows) up to
# CAPACITY_QUEUE_S seconds of requests, and refuses the rest with 503, as a saturated PoP does.
# A new PoP brings its own capacity: scaling the edge out lifts the limit, which is what an
# autoscaled PoP fleet is for. Both targets set it with ``Target.set_pop_capacity``.
CAPACITY_SETTING = "OTT_EDGE_CAPACITY_RPS"
POP_CAPACITY_RPS = 80
CAPACITY_QUEUE_S = 4
MAX_CAPACITY_RPS = 100_000
# On Kubernetes every PoP mounts one nginx.conf (a ConfigMap): the capacity is the edge container's
# environment (CAPACITY_SETTING on the StatefulSet's template), which the container's command, the
# script KUBE_START, writes as nginx lines into KUBE_CAPACITY_DIR before it starts nginx; the config
# includes those two files (empty: no limit). A PoP an HPA adds starts from the same template.
KUBE_CAPACITY_DIR = "/tmp/nginx/capacity"


@dataclass(frozen=True)
class ObjectType:
    """How long a PoP keeps one kind of object, and how it recognises it (a path regex).

    ``immutable``: an object at a path never changes, so the PoP may keep its cache file open
    between requests (nginx ``open_file_cache``), sparing an open and a stat per HIT.
    """

    name: str
    location: str
    ttl_s: int
    immutable: bool = False


SEGMENT_SECONDS = 4  # the ladders' segment duration (ott/media/ladder.yml)
# The one declaration of edge TTLs, most specific first (nginx tries regex locations in order).
OBJECT_TYPES: tuple[ObjectType, ...] = (
    # A live playlist changes every segment: kept at most half a segment, so players see new
    # segments in time. nginx counts validity in whole seconds from the second an entry was
    # stored, so a TTL of n seconds lasts up to n + 1: half a segment minus one.
    ObjectType("live_playlist", r"^/live/.+\.m3u8$", max(1, SEGMENT_SECONDS // 2 - 1)),
    # A VOD playlist never changes once published (a re-publish writes new media).
    ObjectType("vod_playlist", r"\.m3u8$", 3600),
    ObjectType("segment", r"\.(ts|m4s|mp4)$", 7 * 86400, immutable=True),
)


def pop_id(replica: int) -> str:
    return f"edge-{replica}"


EDGE = nginx.component(
    "edge", "cdn", offset=100, container_port=CONTAINER_PORT, folder="edge/{replica}",
    replicas=DEFAULT_POPS, max_replicas=MAX_POPS,
    description="CDN points of presence: signed URLs, cache lock, stale-if-error, TTLs per object type",
)


# Past this size the exporter empties the access log it has read (the log's only reader).
ACCESS_LOG_MAX_BYTES = 64 * 1024 * 1024

EXPORTER = Component(
    name="edge-exporter",
    layer="cdn",
    binary=sys.executable,
    package="python3",
    args=("-m", "ott.edgelog", "--log", "{run}/edge/{replica}/access.log", "--pop", "edge-{replica}",
          "--host", "{host}", "--port", "{port_http}", "--truncate-at", str(ACCESS_LOG_MAX_BYTES)),
    ports=(Port("http", offset=110, container=9145),),
    readiness=Readiness(path="/healthz"),
    replicas=DEFAULT_POPS,
    max_replicas=MAX_POPS,
    metrics_path="/metrics",
    follows=EDGE.name,
    description="one per PoP: its JSON access log as Prometheus metrics (cache status, origin fetches, CMCD)",
)


# nginx's own counters per PoP, labelled with the PoP's id as the edge's exporter labels its series.
NGINX_EXPORTER = nginx.exporter(EDGE, offset=214, status_offset=204, const_labels="component=edge,pop=edge-{replica}")


def _signed_location() -> str:
    return (rf"^/{signing.PREFIX}/(?<signed_token>{signing.TOKEN_PATTERN})/(?<signed_expires>{signing.EXPIRES_PATTERN})"
            rf"/(?<signed_title>{signing.TITLE_PATTERN})(?<signed_rest>/[A-Za-z0-9._/-]+)$")


def secure_link_directive(secret: str) -> str:
    """The ``secure_link_md5`` line with the lab's secret (a Secret's file on Kubernetes)."""
    return f'secure_link_md5 "{signing.nginx_md5_expression(secret)}";'


def render(*, pop: str, listen: str, origin_peers: Sequence[str], cache_dir: str, temp_dir: str,
           access_log: str, secret: str | None = None, secret_include: str | None = None,
           user: str | None = None, cache_size: str = "1g", cache_lock: bool = True,
           log_flush_s: int = LOG_FLUSH_S, status_listen: str | None = None,
           file_output: Sequence[str] = LOCAL_FILE_OUTPUT, capacity_rps: int | None = None,
           capacity_include: str | None = None) -> str:
    """nginx.conf of the PoP ``pop`` (``pop`` may be an nginx variable, like ``$hostname`` in a pod).

    The signing secret is either written in (``secret``: the local lab's private conf folder) or
    included from a file holding :func:`secure_link_directive` (``secret_include``: a mounted Secret).
    ``cache_lock=False`` lets every concurrent miss go to the origin (for the thundering-herd drill);
    ``log_flush_s=0`` writes each access-log line at once (a drill that reads the log right away).
    ``status_listen``: a loopback address for nginx's own counters (:func:`labkit.platform.nginx.status_server`).
    ``file_output``: how cached files are sent, :data:`LOCAL_FILE_OUTPUT` or :data:`POD_FILE_OUTPUT`.
    ``capacity_rps``: the PoP takes media requests at most at this rate (:data:`CAPACITY_SETTING`); None: no limit.
    ``capacity_include``: instead, include the capacity's lines from the folder a pod's start script writes
    them to (:data:`KUBE_CAPACITY_DIR`, :func:`render_kube_start`).
    """
    if (secret is None) == (secret_include is None):
        raise ValueError("give exactly one of secret and secret_include")
    if capacity_rps is not None and capacity_include is not None:
        raise ValueError("give at most one of capacity_rps and capacity_include")
    check = secure_link_directive(secret) if secret is not None else f"include {secret_include};"
    capacity = capacity_directives(capacity_rps)
    if capacity_include is not None:
        capacity = ([f"include {capacity_include}/{CAPACITY_FILES[0]};"],
                    [f"include {capacity_include}/{CAPACITY_FILES[1]};"])
    zone = "edge_cache"
    types = "; ".join(f"{mime} {ext}" for ext, mime in origin.MIME_TYPES.items())
    log_fields = {
        "time": "$time_iso8601", "msec": "$msec", "pop": pop, "method": "$request_method", "path": "$uri",
        "status": "$status", "bytes": "$body_bytes_sent", "request_time": "$request_time",
        "cache": "$upstream_cache_status", "upstream_status": "$upstream_status",
        "upstream_time": "$upstream_response_time", "range": "$http_range", "cmcd": "$arg_CMCD",
        "cmcd_request": "$http_cmcd_request", "cmcd_object": "$http_cmcd_object",
        "cmcd_status": "$http_cmcd_status", "cmcd_session": "$http_cmcd_session", "request_id": "$edge_request_id",
    }
    numeric = {"msec", "status", "bytes", "request_time"}
    log_format = ",".join(f'"{k}":{v}' if k in numeric else f'"{k}":"{v}"' for k, v in log_fields.items())
    proxy = [
        "internal;",
        "limit_except GET { deny all; }",
        "proxy_pass http://origin$uri;",  # the unsigned path, without the query string
        f"proxy_cache {zone};",
        "proxy_cache_key $uri;",
        f"proxy_cache_lock {'on' if cache_lock else 'off'};",
        f"proxy_cache_lock_timeout {CACHE_LOCK_TIMEOUT_S}s;",
        f"proxy_cache_lock_age {CACHE_LOCK_TIMEOUT_S}s;",
        "proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;",
        "proxy_cache_background_update on;",
        "proxy_cache_revalidate on;",
        # Our TTLs, not the origin's: the declaration above is the one place they are set.
        "proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Request-Id $edge_request_id;",
        f"proxy_connect_timeout {ORIGIN_CONNECT_TIMEOUT_S}s;",
        f"proxy_read_timeout {ORIGIN_READ_TIMEOUT_S}s;",
        "add_header X-Cache-Status $upstream_cache_status always;",
        f"add_header X-PoP {pop} always;",
        # The PoP answers CORS itself: the origin's copies would double the header ("*, *"), which
        # browsers refuse, so a web player could fetch nothing.
        "proxy_hide_header Access-Control-Allow-Origin;",
        "proxy_hide_header Access-Control-Expose-Headers;",
        "add_header Access-Control-Allow-Origin * always;",
        'add_header Access-Control-Expose-Headers "Content-Length, Content-Range, X-Cache-Status, X-PoP" always;',
    ]
    lines = [
        *nginx.preamble(f"Generated by labkit.platform.layers.cdn for PoP {pop}: edit that module, not this file.",
                        temp_dir,
                        user=user),
        *(f"  {d}" for d in file_output),
        "  client_max_body_size 0;",
        "  client_header_buffer_size 1k;",
        "  large_client_header_buffers 4 8k;",
        f"  types {{ {types}; }}",
        "  default_type application/octet-stream;",
        f'  map $connection $edge_request_id {{ default "{REQUEST_ID}"; }}',
        f"  log_format edge escape=json '{{{log_format}}}';",
        # Buffered: one write per 64 KiB or per second, not per request (an unbuffered log costs a
        # third of the PoP's HIT throughput). The exporter's figures lag by up to LOG_FLUSH_S.
        f"  access_log {access_log} edge" + (f" buffer=64k flush={log_flush_s}s;" if log_flush_s else ";"),
        f"  proxy_cache_path {cache_dir} levels=1:2 keys_zone={zone}:16m max_size={cache_size} inactive=7d "
        "use_temp_path=off;",
        "  upstream origin {",
        *(f"    server {peer} max_fails=0;" for peer in origin_peers),
        "    keepalive 16;",
        "  }",
        *(f"  {d}" for d in capacity[0]),
        "  server {",
        f"    listen {listen};",
        f"    add_header X-PoP {pop} always;",
        # Refusals too (403 bad link, 410 expired, 404): a web player must be able to read them.
        "    add_header Access-Control-Allow-Origin * always;",
        "    location = /healthz { default_type application/json; return 200 '{\"status\":\"alive\"}'; }",
        "    location ~ /\\. { return 404; }",
        f"    location ~ \"{_signed_location()}\" {{",  # quoted: the regex has braces
        "      secure_link $signed_token,$signed_expires;",
        f"      {check}",
        '      if ($secure_link = "") { return 403; }',
        '      if ($secure_link = "0") { return 410; }',
        "      rewrite ^ /$signed_title$signed_rest last;",
        "    }",
    ]
    # Open cache files kept for the next HIT; only for immutable objects: an updated cache file
    # (a refreshed playlist) would be read from the old descriptor until it is revalidated.
    open_files = ["open_file_cache max=10000 inactive=60s;", "open_file_cache_valid 60s;"]
    for kind in OBJECT_TYPES:
        lines += [f"    location ~ {kind.location} {{",
                  f"      proxy_cache_valid 200 206 {kind.ttl_s}s;",
                  *(("      " + d for d in open_files) if kind.immutable else ()),
                  *("      " + d for d in capacity[1]),
                  *("      " + d for d in proxy), "    }"]
    lines += ["    location / { return 404; }", "  }",
              *(nginx.status_server(status_listen) if status_listen else []), "}", ""]
    return "\n".join(lines)


def capacity_directives(rps: int | None) -> tuple[list[str], list[str]]:
    """The http-level and the media locations' lines enforcing a capacity of ``rps`` media requests a second.

    One zone keyed on the PoP's port (one PoP, one key): requests past the rate wait in a queue of
    :data:`CAPACITY_QUEUE_S` seconds' worth, and beyond it are refused with 503. Not logged (a
    refusal is in the access log already). None: no lines.
    """
    if rps is None:
        return [], []
    return _capacity_lines(str(rps), str(rps * CAPACITY_QUEUE_S))


def _capacity_lines(rate: str, burst: str) -> tuple[list[str], list[str]]:
    return ([f"limit_req_zone $server_port zone=pop_capacity:1m rate={rate}r/s;", "limit_req_status 503;",
             "limit_req_log_level info;"],
            [f"limit_req zone=pop_capacity burst={burst};"])


# The files of KUBE_CAPACITY_DIR: the http-level lines and the media locations' (capacity_directives' two lists).
CAPACITY_FILES = ("http.conf", "media.conf")


def capacity_of(edge: Component) -> int | None:
    """The capacity the lab set on the edge (:data:`CAPACITY_SETTING`), requests a second per PoP; None: unset."""
    return capacity_value(edge.env.get(CAPACITY_SETTING))


def capacity_value(value: str | int | None) -> int | None:
    """``value`` as a PoP's capacity (1 to :data:`MAX_CAPACITY_RPS` requests a second); None or "": none.

    A ConfigError for anything else (0, a negative, a fraction, a word, a bool), before anything is changed.
    """
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else "" if isinstance(value, bool) else str(value)
    if not text.isdigit() or not 1 <= int(text) <= MAX_CAPACITY_RPS:
        raise ConfigError(f"{CAPACITY_SETTING}={value!r}: a PoP's capacity is a whole number of requests a second, "
                          f"1 to {MAX_CAPACITY_RPS}", hint=f"e.g. {CAPACITY_SETTING}={POP_CAPACITY_RPS}, or unset it "
                          "for none")
    return int(text)


def edge_urls(cfg: LabConfig, platform: Sequence[Component]) -> dict[str, str]:
    """Every running PoP's URL by its id (``ottlab status --json`` and license's signed URLs)."""
    edge = next((c for c in platform if c.name == EDGE.name), EDGE)
    return {pop_id(i): edge.url(cfg, "http", i) for i in range(edge.replicas)}


def write_configs(cfg: LabConfig, platform: Sequence[Component]) -> Mapping[str, str]:
    import json

    edge = next((c for c in platform if c.name == EDGE.name), EDGE)
    secret = signing_secret(cfg)
    origin_peers = [f"{cfg.host}:{c.local_port(cfg)}" for c in platform if c.name == "origin"] or [
        f"{cfg.host}:{cfg.base_port + 60}"]
    files = {SIGNING_SECRET_FILE: secret + "\n", EDGES_FILE: json.dumps(edge_urls(cfg, platform)) + "\n"}
    for replica in range(edge.max_replicas):
        run = Path(cfg.run_dir) / "edge" / str(replica)
        run.mkdir(parents=True, exist_ok=True)
        cache = cfg.data_dir / "edge" / pop_id(replica)
        cache.mkdir(parents=True, exist_ok=True)
        files[f"edge/{replica}/nginx.conf"] = render(
            pop=pop_id(replica), listen=f"{cfg.host}:{edge.local_port(cfg, 'http', replica)}",
            origin_peers=origin_peers, cache_dir=str(cache), temp_dir=str(run),
            access_log=str(run / "access.log"), secret=secret, user=nginx.lab_user(),
            status_listen=f"{cfg.host}:{NGINX_EXPORTER.local_port(cfg, 'status', replica)}",
            capacity_rps=capacity_of(edge))
    return files


KUBE_CONFIG = repo_root() / "k8s" / "base" / "cdn" / "edge" / "nginx.conf"
# The edge container's command (render_kube_start), beside its config in the ConfigMap edge-config.
KUBE_START = KUBE_CONFIG.with_name("start.sh")
KUBE_SECRET_INCLUDE = "/etc/nginx/signing/secure-link.conf"
KUBE_CACHE_DIR = "/var/cache/ott-edge"


def render_kube() -> str:
    """The PoP config shipped as a ConfigMap: every pod of the edge Deployment is a PoP named by its
    hostname (the pod name); the secret comes from the Secret ``ott-url-signing`` (key
    ``secure-link.conf``, holding :func:`secure_link_directive`), which labkit creates per lab."""
    return render(pop="$hostname", listen=f"0.0.0.0:{CONTAINER_PORT}",
                  origin_peers=[f"origin:{origin.CONTAINER_PORT}"], cache_dir=KUBE_CACHE_DIR,
                  temp_dir="/tmp/nginx", access_log="/var/log/ott-edge/access.log",
                  secret_include=KUBE_SECRET_INCLUDE, cache_size="512m", status_listen=nginx.kube_status_listen(),
                  file_output=POD_FILE_OUTPUT, capacity_include=KUBE_CAPACITY_DIR)


def render_kube_start() -> str:
    """The edge container's command (``sh start.sh <nginx's arguments>``): the PoP's capacity, then nginx.

    It reads :data:`CAPACITY_SETTING` from the container's environment and writes the lines
    :func:`capacity_directives` gives for it into :data:`KUBE_CAPACITY_DIR` (empty files when it is
    unset), which :func:`render_kube`'s config includes; a value that is no capacity stops the
    container (exit 64) before nginx starts. Then it execs nginx with its own arguments.
    """
    http, media = _capacity_lines("@RATE@", "@BURST@")

    def quoted(lines: Sequence[str]) -> str:
        escaped = [line.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
                   for line in lines]
        return " ".join(f'"{line}"' for line in escaped).replace("@RATE@", "${rps}").replace("@BURST@", "${burst}")

    folder = KUBE_CAPACITY_DIR
    refusal = (f"{CAPACITY_SETTING}=$rps: a PoP's capacity is a whole number of requests a second, "
               f"1 to {MAX_CAPACITY_RPS}")
    return "\n".join([
        "#!/bin/sh",
        "# Generated by labkit.platform.layers.cdn (render_kube_start): edit that module, not this file.",
        f"# The edge container's command: the PoP's capacity from {CAPACITY_SETTING} (media requests a second;",
        "# unset or empty: none), written where nginx.conf includes it, then nginx with this script's arguments.",
        "set -eu",
        f'rps="${{{CAPACITY_SETTING}:-}}"',
        f"mkdir -p {folder}",
        *(f": > {folder}/{name}" for name in CAPACITY_FILES),
        'if [ -n "$rps" ]; then',
        '  case "$rps" in',
        f'    *[!0-9]*|0*) echo "{refusal}" >&2; exit 64 ;;',
        "  esac",
        f'  if [ "${{#rps}}" -gt {len(str(MAX_CAPACITY_RPS))} ] || [ "$rps" -gt {MAX_CAPACITY_RPS} ]; then',
        f'    echo "{refusal}" >&2; exit 64',
        "  fi",
        f"  burst=$((rps * {CAPACITY_QUEUE_S}))",
        f"  printf '%s\\n' {quoted(http)} > {folder}/{CAPACITY_FILES[0]}",
        f"  printf '%s\\n' {quoted(media)} > {folder}/{CAPACITY_FILES[1]}",
        "fi",
        'exec nginx "$@"',
        "",
    ])


LAYER = Layer(
    name="cdn",
    components=(EDGE, EXPORTER, NGINX_EXPORTER),
    write_configs=write_configs,
    description="edge points of presence in front of the origin",
)
