"""What every nginx of the lab has in common: its declaration, the top of its configuration, and
who its workers run as.

The gateway, the origin, the edges and the player each render their own ``nginx.conf``; they start
alike, and each ships a Kubernetes copy that ``python -m labkit.platform.layers`` regenerates
(:func:`write_kube_config`; a test checks every committed copy is current).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.platform.component import Component, Port, Readiness


def component(name: str, layer: str, *, offset: int, container_port: int, folder: str, description: str,
              **more: Any) -> Component:
    """An nginx of the lab: config ``{conf}/<folder>/nginx.conf``, prefix and pid under ``{run}/<folder>``,
    in the foreground with errors to stderr, ready when ``/healthz`` answers. ``folder`` may hold
    ``{replica}`` (one config per replica, as the CDN's PoPs have)."""
    return Component(
        name=name,
        layer=layer,
        binary="nginx",
        package="nginx",
        args=("-p", f"{{run}}/{folder}", "-c", f"{{conf}}/{folder}/nginx.conf", "-e", "stderr",
              "-g", "daemon off;"),
        ports=(Port("http", offset=offset, container=container_port),),
        readiness=Readiness(path="/healthz"),
        # nginx overwrites its environment with its process title: found again by its pid file.
        pidfile=f"{{run}}/{folder}/nginx.pid",
        description=description,
        **more,
    )


# nginx's own counters (connections, requests: the stub_status module), on a server of their own
# that listens on loopback only: never on a public route. In a pod, loopback is the pod's, which
# the exporter sidecar shares.
STATUS_PATH = "/stub_status"
STATUS_CONTAINER_PORT = 8081
EXPORTER_CONTAINER_PORT = 9113
# The Prometheus job of every nginx's exporter, on both targets; the series say which nginx in `component`.
EXPORTER_JOB = "nginx"
# On Kubernetes the exporter's metrics port has this name, by which Prometheus finds it
# (k8s/base/monitoring/prometheus.yml, job nginx): the pod's prometheus.io annotations may be another's.
EXPORTER_PORT_NAME = "nginx-metrics"


def exporter(nginx: Component, *, offset: int, status_offset: int, const_labels: str) -> Component:
    """Debian's ``prometheus-nginx-exporter`` for each replica of ``nginx``, as job :data:`EXPORTER_JOB`.

    It reads the stub_status that ``nginx`` serves on this component's ``status`` port (loopback
    only: see :func:`status_server`; declared here, where it is read) and labels every series with
    ``const_labels`` (``component=<nginx>``, and the PoP for the edges; ``{replica}`` allowed).
    On Kubernetes it is a sidecar in the nginx's pods.
    """
    return Component(
        name=f"{nginx.name}-nginx-exporter",
        layer=nginx.layer,
        binary="prometheus-nginx-exporter",
        package="prometheus-nginx-exporter",
        # Upstream's name for it (its release binaries and container image).
        binary_aliases=("nginx-prometheus-exporter",),
        args=(f"-nginx.scrape-uri=http://{{host}}:{{port_status}}{STATUS_PATH}",
              "-web.listen-address={host}:{port_http}",
              f"-prometheus.const-labels={const_labels}",
              # nginx may start after it: retried for 30 s, then nginx_up says 0.
              "-nginx.retries=30", "-nginx.retry-interval=1s", "-nginx.timeout=2s"),
        ports=(Port("http", offset=offset, container=EXPORTER_CONTAINER_PORT),
               Port("status", offset=status_offset, container=STATUS_CONTAINER_PORT)),
        readiness=Readiness(path="/metrics"),
        replicas=nginx.replicas,
        max_replicas=nginx.max_replicas,
        metrics_path="/metrics",
        follows=nginx.name,
        job=EXPORTER_JOB,
        description=f"{nginx.name}'s own counters (stub_status: connections, requests) as Prometheus metrics",
    )


def status_server(listen: str) -> list[str]:
    """The server block answering :data:`STATUS_PATH` on ``listen`` (a loopback address), and nothing else."""
    return [
        "  server {",
        f"    listen {listen};",
        "    access_log off;",
        f"    location = {STATUS_PATH} {{ stub_status; }}",
        "    location / { return 404; }",
        "  }",
    ]


def kube_status_listen() -> str:
    """Where a pod's nginx serves its stub_status: the pod's loopback, for its exporter sidecar."""
    return f"127.0.0.1:{STATUS_CONTAINER_PORT}"


def preamble(header: str, temp_dir: str, *, user: str | None = None) -> list[str]:
    """The configuration's first lines, up to and including the temp paths inside ``http {``.

    One worker, the pid file and every temp folder under ``temp_dir`` (nothing under /var),
    errors to stderr (the supervisor's log), no version in headers.
    """
    return [
        f"# {header}",
        *([f"user {user};"] if user else []),
        "worker_processes 1;",
        # Locations are regexes (signed paths, object types): compiled to machine code once.
        "pcre_jit on;",
        f"pid {temp_dir}/nginx.pid;",
        "error_log stderr warn;",
        "events { worker_connections 1024; }",
        "http {",
        f"  client_body_temp_path {temp_dir}/client_body;",
        f"  proxy_temp_path {temp_dir}/proxy;",
        f"  fastcgi_temp_path {temp_dir}/fastcgi;",
        f"  uwsgi_temp_path {temp_dir}/uwsgi;",
        f"  scgi_temp_path {temp_dir}/scgi;",
        "  server_tokens off;",
    ]


def lab_user() -> str | None:
    """The lab's user when it runs as root, else None.

    A root nginx master switches its workers to ``nobody``, who cannot read a private lab
    directory (media, cache): nginx that reads files is told to keep the lab's user instead.
    """
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.geteuid()).pw_name


def write_kube_config(path: Path, render_kube: Callable[[], str]) -> None:
    """Write the Kubernetes copy of a config (what ``python -m labkit.platform.layers`` does) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_kube())
    print(f"wrote {path}")
