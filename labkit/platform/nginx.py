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
