"""A port-forward: a local 127.0.0.1 port whose connections are tunnelled somewhere else.

:class:`PortForward` listens on an ephemeral port and, for each connection it accepts, asks
its ``connect`` function for a fresh stream to the far side (on the kube target: a
``kubernetes.stream.portforward`` websocket to a ready pod behind a Service, looked up anew
each time, so the forward survives a pod being killed) and copies bytes both ways until one
side closes.

Example::

    >>> import socket
    >>> echo = socket.create_server(("127.0.0.1", 0))
    >>> with PortForward(lambda: socket.create_connection(echo.getsockname()), name="demo") as fwd:
    ...     fwd.url.startswith("http://127.0.0.1:")
    True
    >>> echo.close()
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from labkit.core.config import HOST
from labkit.core.errors import ConfigError, TimeoutExpired

log = logging.getLogger(__name__)

# Opening a tunnel (a websocket handshake through the API server) takes well under a second;
# the client's own handshake has no timeout, so the forward bounds it.
CONNECT_TIMEOUT = 10.0
# How long a blocked accept or select waits before it looks whether the forward was closed.
_TICK = 0.25
_CHUNK = 64 * 1024


class Stream(Protocol):
    """The far side of one connection: a socket, or anything that behaves like one."""

    def fileno(self) -> int: ...

    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def close(self) -> None: ...


class PortForward:
    """Serves ``http://127.0.0.1:<port>``; each connection goes through a new ``connect()`` stream."""

    def __init__(self, connect: Callable[[], Stream], *, name: str, connect_timeout: float = CONNECT_TIMEOUT,
                 port: int = 0) -> None:
        """``port``: the local port to listen on (0: any free one); a :class:`ConfigError` when it is taken."""
        self.name = name
        self.connect_timeout = connect_timeout
        self.last_error = ""
        self._connect = connect
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket | Stream] = set()
        try:
            self._listener = socket.create_server((HOST, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot forward {name} from {HOST}:{port}: {exc.strerror or exc}",
                hint="another process holds that port: a local lab on the same ports (`ottlab down`), or another "
                     "notebook holding the kube lab's port-forwards (close it, or call target.close() there)",
            ) from None
        # accept() wakes up now and then to notice close().
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"port-forward {name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the forward still accepts connections."""
        return not self._closed.is_set() and self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and cut every open connection."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            streams = list(self._open)
            self._open.clear()
        for stream in streams:
            _close_quietly(stream)
        self._thread.join(timeout)

    def __enter__(self) -> PortForward:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PortForward({self.name!r}, {self.url}, {'open' if self.alive else 'closed'})"

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break  # the listener was closed
            threading.Thread(
                target=self._relay, args=(conn,), name=f"port-forward {self.name} conn", daemon=True
            ).start()

    def _relay(self, conn: socket.socket) -> None:
        far = self._open_stream()
        if far is None:
            conn.close()
            return
        with self._lock:
            if self._closed.is_set():
                _close_quietly(far)
                conn.close()
                return
            self._open.update((conn, far))
        try:
            _copy_both_ways(conn, far, self._closed)
        except OSError as exc:
            # The usual end of a connection that either side dropped; worth a debug line only.
            log.debug("port-forward %s: connection ended: %s", self.name, exc)
        finally:
            with self._lock:
                self._open.discard(conn)
                self._open.discard(far)
            _close_quietly(conn)
            _close_quietly(far)

    def _open_stream(self) -> Stream | None:
        """A stream from ``connect()``, or None (and a logged reason) if it fails or takes too long."""
        opened: list[Stream] = []
        failed: list[str] = []
        gave_up = threading.Event()
        lock = threading.Lock()

        def open_it() -> None:
            try:
                stream = self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure is reported to the waiting thread
                failed.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                if gave_up.is_set():
                    # The waiting side timed out meanwhile: nobody will use this stream.
                    _close_quietly(stream)
                else:
                    opened.append(stream)

        opener = threading.Thread(target=open_it, name=f"port-forward {self.name} open", daemon=True)
        opener.start()
        opener.join(self.connect_timeout)
        with lock:
            if not opened:
                gave_up.set()
        if opened:
            return opened[0]
        reason = failed[0] if failed else str(TimeoutExpired(f"a tunnel for {self.name}", self.connect_timeout))
        self.last_error = reason
        log.warning("port-forward %s: cannot open a tunnel: %s", self.name, reason)
        return None


def _copy_both_ways(a: socket.socket | Stream, b: socket.socket | Stream, closed: threading.Event) -> None:
    """Copy bytes between ``a`` and ``b`` until either side closes (or the forward does)."""
    other = {a: b, b: a}
    while not closed.is_set():
        readable, _, _ = select.select([a, b], [], [], _TICK)
        for source in readable:
            data = source.recv(_CHUNK)
            if not data:
                return
            other[source].sendall(data)


def _close_quietly(stream: socket.socket | Stream) -> None:
    try:
        stream.close()
    except OSError as exc:
        log.debug("closing a port-forward stream: %s", exc)
