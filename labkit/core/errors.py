"""The lab's errors: one root, :class:`LabError`, and a subclass per kind of mistake.

Every error carries a message that says what happened and what to do next, and the
fields a caller needs to report it precisely. ``retryable`` tells a caller whether the
same call may succeed later (a component still starting) or will not (a missing binary).
"""

from __future__ import annotations


class LabError(Exception):
    """Root of every error labkit raises on purpose.

    ``hint`` is the next step for the user; it is appended to the message.
    """

    retryable: bool = False

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  -> {hint}" if hint else message)


class ConfigError(LabError):
    """A setting (environment variable, CLI option, notebook parameter) is not valid."""


class UnknownTargetError(ConfigError):
    def __init__(self, target: str, known: list[str]) -> None:
        self.target = target
        super().__init__(
            f"unknown target {target!r}",
            hint=f"choose one of: {', '.join(known)} (set TARGET or pass --target)",
        )


class UnknownComponentError(ConfigError):
    def __init__(self, component: str, known: list[str]) -> None:
        self.component = component
        super().__init__(
            f"no component named {component!r}",
            hint=f"known components: {', '.join(sorted(known))}",
        )


class MissingBinaryError(LabError):
    """A program the platform needs is not installed.

    Most come from a Debian ``package``; a program that ``make bootstrap`` installs some other
    way (kubectl and helm, unpacked into the virtualenv) says so in ``source``.
    """

    def __init__(self, binary: str, package: str, *, source: str = "") -> None:
        self.binary = binary
        self.package = package
        if source:
            super().__init__(f"the program {binary!r} is not installed ({source})", hint="run `make bootstrap`")
            return
        super().__init__(
            f"the program {binary!r} is not installed (it comes with the Debian package {package!r})",
            hint="run `make bootstrap` (or `sudo apt-get install "
            f"{package}`; conda users: `conda env update -f environment.yml`)",
        )


class PortInUseError(LabError):
    def __init__(self, port: int, holder: str | None) -> None:
        self.port = port
        self.holder = holder
        who = f" by {holder}" if holder else ""
        super().__init__(
            f"port {port} on 127.0.0.1 is in use{who}",
            hint="stop that process, or move the lab's ports with OTTLAB_BASE_PORT=<port>",
        )


class LabDirError(LabError):
    """The lab directory is foreign (not made by ottlab) or its marker is corrupt."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(
            f"the lab directory {path} {problem}",
            hint="point OTTLAB_HOME at an empty or ottlab-made directory, "
            "or remove this one if it is yours to lose",
        )


class LabBusyError(LabError):
    """Another ottlab command holds the lab directory's lock."""

    retryable = True

    def __init__(self, path: str, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        who = f" (pid {holder_pid})" if holder_pid else ""
        super().__init__(
            f"another ottlab command{who} is changing the lab in {path}",
            hint="wait for it to finish, then run your command again",
        )


class ComponentFailedError(LabError):
    """A component did not become ready; ``log_tail`` holds its last log lines."""

    def __init__(self, component: str, reason: str, log_tail: str = "") -> None:
        self.component = component
        self.reason = reason
        self.log_tail = log_tail
        tail = f"\n  last log lines:\n{_indent(log_tail)}" if log_tail.strip() else ""
        super().__init__(
            f"component {component!r} is not ready: {reason}{tail}",
            hint=f"read the whole log with `ottlab logs {component}`",
        )


class NotRunningError(LabError):
    """The platform, or one component of it, is not running."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not running", hint="start the platform with `ottlab up`")


class ClusterUnreachableError(LabError):
    """The kube target cannot reach a Kubernetes API server."""

    retryable = True

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"no reachable Kubernetes cluster: {detail}",
            hint="point KUBECONFIG at a running cluster (kind, minikube, k3d ...), "
            "or use the local target: --target local",
        )


class KubeError(LabError):
    """The Kubernetes API refused or failed an operation."""


class ImageError(LabError):
    """The services image could not be built, found or loaded into a cluster."""


class AddonError(LabError):
    """A cluster add-on (an official Helm chart of k8s/addons/addons.yaml) could not be installed."""


class ChartsUnreachableError(AddonError):
    """The add-ons' Helm repositories do not answer from here; ``repos`` maps each to why."""

    def __init__(self, repos: dict[str, str], *, hint: str) -> None:
        self.repos = repos
        lines = "\n".join(f"    {url}: {why}" for url, why in repos.items())
        super().__init__(f"cannot reach the Helm chart repositories of the add-ons:\n{lines}", hint=hint)


class ImageMissingError(LabError):
    """The cluster cannot start the lab's pods: it does not hold the services image, and no registry has it."""

    def __init__(self, image: str, pods: list[str]) -> None:
        self.image = image
        self.pods = pods
        super().__init__(
            f"the cluster does not have the image {image}: {', '.join(pods)}",
            hint="build it and load it into the cluster: `make image && ottlab image load` "
            "(add --cluster minikube or --cluster k3d for those), then run `ottlab up --target kube` again",
        )


class MissingCapabilityError(LabError):
    """The target cannot do what was asked (a file of this machine, on a cluster): why, and what instead."""

    def __init__(self, target: str, capability: str, why: str, *, hint: str) -> None:
        self.target = target
        self.capability = capability
        super().__init__(f"the {target} target cannot {capability}: {why}", hint=hint)


class TimeoutExpired(LabError):
    """A bounded wait ran out."""

    retryable = True

    def __init__(self, what: str, seconds: float, *, hint: str = "") -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g} s waiting for {what}", hint=hint)


class PrometheusError(LabError):
    """Prometheus could not be queried, or refused the query."""

    def __init__(self, url: str, detail: str, *, retryable: bool = True) -> None:
        self.url = url
        self.retryable = retryable
        super().__init__(
            f"Prometheus at {url}: {detail}",
            hint="check it with `ottlab status`; start the platform with `ottlab up`",
        )


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())
