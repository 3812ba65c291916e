"""Local ports: is one free, and if not, who holds it."""

from __future__ import annotations

import contextlib
import errno
import socket

import psutil

from labkit.core.errors import PortInUseError


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT looks taken; servers we start set it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def holder(port: int) -> str | None:
    """'name (pid N)' of the process listening on ``port``, when the OS tells us."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "a process"
                return f"{name} (pid {conn.pid})"
    return None


def ensure_free(ports: list[int], host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUseError` for the first taken port, naming its holder."""
    for port in ports:
        if not is_free(port, host):
            raise PortInUseError(port, holder(port))


def listening(ports: list[int], host: str = "127.0.0.1") -> list[int]:
    """The ports of ``ports`` that something accepts connections on."""
    found = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                found.append(port)
    return found
