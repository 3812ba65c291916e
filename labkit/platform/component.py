"""A platform component, declared once: command, ports, environment, readiness, restarts, replicas.

Both targets derive from this declaration. The local target turns it into a supervisord
program; the kube target finds the Deployment of the same name in ``k8s/`` and a test
checks that the manifest agrees with it (ports, probe path, replicas).

Example::

    >>> web = Component(
    ...     name="web", layer="demo", binary="python3", package="python3",
    ...     args=("-m", "http.server", "--bind", "{host}", "{port_http}"),
    ...     ports=(Port("http", offset=1, container=8000),),
    ...     readiness=Readiness(path="/"),
    ... )
    >>> web.port("http").offset
    1
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from labkit.core.config import MAX_PORT_OFFSET, LabConfig

# Inside a container every Python service listens on this port ...
SERVICE_CONTAINER_PORT = 8000
# ... and every nginx of the lab on this one (the player's static files among them).
NGINX_CONTAINER_PORT = 8080

# The -X option naming a Python program's lab (Component._lab_mark).
LAB_MARK = "ottlab"

RestartPolicy = Literal["always", "on-failure", "never"]


@dataclass(frozen=True)
class Port:
    """A named port: ``base_port + offset`` locally, ``container`` inside a pod."""

    name: str
    offset: int
    container: int

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= MAX_PORT_OFFSET:
            raise ValueError(f"port offset must be 0..{MAX_PORT_OFFSET}, got {self.offset}")


@dataclass(frozen=True)
class Readiness:
    """An HTTP GET that answers ``status`` once the component is ready."""

    path: str
    port: str = "http"
    status: int = 200
    timeout: float = 2.0  # one probe; the overall wait is LabConfig.ready_timeout


@dataclass(frozen=True)
class Component:
    """One process of the platform (``replicas`` copies of it)."""

    name: str
    layer: str
    binary: str
    package: str
    args: tuple[str, ...]
    ports: tuple[Port, ...]
    readiness: Readiness
    env: Mapping[str, str] = field(default_factory=dict)
    restart: RestartPolicy = "always"
    replicas: int = 1
    max_replicas: int = 1
    # Prometheus scrapes ``metrics_path`` on the ``metrics_port`` port when set, as the job :attr:`scrape_job`.
    metrics_path: str | None = None
    metrics_port: str = "http"
    description: str = ""
    # Other names the same program has elsewhere (upstream releases, conda-forge).
    binary_aliases: tuple[str, ...] = ()
    # Where the program writes its pid (a template like args). Needed to find it after its
    # supervisor died when it hides its environment, as nginx does (its process title overwrites it).
    pidfile: str | None = None
    # A helper process paired with each replica of another component (its name): it runs as many
    # replicas (scaling that component scales this one) and, on Kubernetes, is a second container
    # in that component's pods (a sidecar), not a Deployment of its own.
    follows: str | None = None
    # The Prometheus job, when several components share one (the nginx exporters: job ``nginx``);
    # None: the component's name.
    job: str | None = None

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").isalnum() or not self.name.islower():
            raise ValueError(f"component name {self.name!r} must be lower-case letters, digits and '-'")
        if not 1 <= self.replicas <= self.max_replicas:
            raise ValueError(f"{self.name}: replicas must be 1..max_replicas ({self.max_replicas})")
        names = [p.name for p in self.ports]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate port names {names}")
        self.port(self.readiness.port)
        self.port(self.metrics_port)

    @property
    def scrape_job(self) -> str | None:
        """The Prometheus job of this component's metrics, on every target; None when it has none.

        The local target names its scrape config so; on Kubernetes the pods carrying the metrics
        say it in the annotation ``prometheus.io/job``, which Prometheus relabels into ``job``
        (even for a sidecar, whose pods are named after the component it follows).
        """
        return None if self.metrics_path is None else (self.job or self.name)

    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no port named {name!r}")

    def local_port(self, cfg: LabConfig, name: str = "http", replica: int = 0) -> int:
        """The port replica ``replica`` listens on locally."""
        return cfg.base_port + self.port(name).offset + replica

    def local_ports(self, cfg: LabConfig) -> list[int]:
        """Every local port this component may bind, over all its possible replicas."""
        return [
            cfg.base_port + p.offset + i for p in self.ports for i in range(self.max_replicas)
        ]

    def url(self, cfg: LabConfig, name: str = "http", replica: int = 0) -> str:
        return f"http://{cfg.host}:{self.local_port(cfg, name, replica)}"

    def resolve_binary(self) -> str | None:
        """The first of ``binary`` and its aliases found on PATH, as an absolute path."""
        for name in (self.binary, *self.binary_aliases):
            found = shutil.which(name)
            if found:
                return found
        return None

    def _values(self, cfg: LabConfig, replica: int, links: Mapping[str, str]) -> dict[str, str]:
        values = {
            "host": cfg.host,
            "home": str(cfg.home),
            "conf": str(cfg.conf_dir),
            "data": str(cfg.data_dir / self.name),
            "data_root": str(cfg.data_dir),
            "log": str(cfg.log_dir),
            "run": str(cfg.run_dir),
            "replica": str(replica),
        }
        values.update({f"port_{p.name}": str(self.local_port(cfg, p.name, replica)) for p in self.ports})
        values.update({f"link_{name.replace('-', '_')}": url for name, url in links.items()})
        return values

    def command(self, cfg: LabConfig, replica: int = 0, links: Mapping[str, str] | None = None) -> list[str]:
        """The argument list that starts replica ``replica`` on the local target.

        ``links`` maps other components' names to their URLs, for ``{link_<name>}`` in templates.
        """
        values = self._values(cfg, replica, links or {})
        return [self.resolve_binary() or self.binary, *self._lab_mark(cfg),
                *(a.format(**values) for a in self.args)]

    def _lab_mark(self, cfg: LabConfig) -> list[str]:
        """``-X ottlab=<lab directory>`` for a Python program: its command line then names its lab.

        A Python service's arguments (``-m ott.auth``) are the same in every lab on the machine; the
        process exporter tells the labs apart by their command lines, nginx's and the Go programs'
        by their config paths, Python's by this option (CPython keeps an unknown ``-X`` in
        ``sys._xoptions`` and otherwise ignores it).
        """
        if Path(self.binary).name.startswith("python"):
            return ["-X", f"{LAB_MARK}={cfg.home}"]
        return []

    def pidfile_path(self, cfg: LabConfig, replica: int = 0) -> str | None:
        return None if self.pidfile is None else self.pidfile.format(**self._values(cfg, replica, {}))

    def environment(self, cfg: LabConfig, replica: int = 0, links: Mapping[str, str] | None = None) -> dict[str, str]:
        """The declared environment with its templates filled in, as for :meth:`command`."""
        values = self._values(cfg, replica, links or {})
        return {key: value.format(**values) for key, value in self.env.items()}


def links(cfg: LabConfig, components: Sequence[Component]) -> dict[str, str]:
    """Every component's base URL on the local target (replica 0), by name."""
    return {c.name: c.url(cfg) for c in components}
