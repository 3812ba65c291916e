"""The services image, ``ottlab/ott-services:<version of pyproject.toml>``: built here, loaded into a local cluster.

Every OTT service, the transcoder and the QoE collector run on Kubernetes from this one image
(the ``Dockerfile`` at the root of the checkout). It is never pushed to a registry: a local
cluster gets it straight from this machine, so ``make image && ottlab image load`` comes before
``ottlab up --target kube``.

- :func:`engine` picks the container engine: ``$OTTLAB_IMAGE_ENGINE`` when set, else ``docker``,
  else ``podman`` (the first on PATH);
- :func:`build` runs ``<engine> build -t ottlab/ott-services:<version> .`` in the checkout;
- :func:`load` hands the built image to the cluster's own loader: ``kind load docker-image``,
  ``minikube image load``, ``k3d image import``. With podman the image goes through an archive
  (``podman save``), which each of the three loaders also reads.

Each command is echoed as ``+ cmd`` before it runs and is bounded by a timeout. Example::

    build()                # + docker build -t ottlab/ott-services:0.1.0 .
    load("kind")           # + kind load docker-image ottlab/ott-services:0.1.0
    load("k3d", "lab")     # + k3d image import ottlab/ott-services:0.1.0 --cluster lab
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.core.config import repo_root
from labkit.core.console import echo_command, progress
from labkit.core.errors import ConfigError, ImageError, TimeoutExpired

REPOSITORY = "ottlab/ott-services"
ENGINE_ENV = "OTTLAB_IMAGE_ENGINE"
# docker first: kind and k3d read the image from the docker daemon directly; podman then goes
# through an archive.
ENGINES = ("docker", "podman")
# The Debian package of each.
_PACKAGES = {"docker": "docker.io", "podman": "podman"}
# The cluster kinds whose loader labkit knows, by the overlay each one uses (k8s/overlays/<kind>).
CLUSTERS = ("kind", "minikube", "k3d")
# A first build downloads the base image and Debian's ffmpeg: minutes, not hours.
BUILD_TIMEOUT = 1800.0
# Copying a few hundred MB into a cluster's node(s).
LOAD_TIMEOUT = 600.0
# A question to the engine (does the image exist?).
QUERY_TIMEOUT = 60.0
# How many lines of a failed command's output the error shows.
TAIL_LINES = 20
# What the Dockerfile copies that `make bootstrap` makes, not git.
BOOTSTRAPPED = ("ott/player/node_modules/hls.js/dist/hls.min.js",)


def version() -> str:
    """The project's version, from pyproject.toml: the image's tag."""
    with (repo_root() / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def services_image() -> str:
    """``ottlab/ott-services:<version>``, the image the manifests under ``k8s/`` run."""
    return f"{REPOSITORY}:{version()}"


def same_image(reference: str, image: str) -> bool:
    """Whether ``reference`` (as a pod's status reports it) names ``image``, with or without ``docker.io/``."""
    def bare(ref: str) -> str:
        for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
            if ref.startswith(prefix):
                return ref[len(prefix):]
        return ref

    return bare(reference) == bare(image)


def _which(program: str) -> str | None:
    return shutil.which(program)


def engine(environ: Mapping[str, str] | None = None) -> str:
    """The container engine: ``$OTTLAB_IMAGE_ENGINE``, else docker, else podman; an :class:`ImageError` if none."""
    env = os.environ if environ is None else environ
    chosen = env.get(ENGINE_ENV, "").strip()
    if chosen:
        if chosen not in ENGINES:
            raise ConfigError(f"{ENGINE_ENV}={chosen!r} is not a container engine labkit knows",
                              hint=f"set it to one of: {', '.join(ENGINES)} (or unset it)")
        if _which(chosen) is None:
            raise ImageError(f"{ENGINE_ENV} asks for {chosen}, which is not on PATH",
                             hint=f"install it (Debian: `sudo apt-get install {_PACKAGES[chosen]}`) "
                             f"or unset {ENGINE_ENV}")
        return chosen
    for candidate in ENGINES:
        if _which(candidate) is not None:
            return candidate
    raise ImageError(
        "no container engine to build the services image with: neither docker nor podman is on PATH",
        hint="install one (Debian: `sudo apt-get install docker.io` or `sudo apt-get install podman`), "
        "then run `make image` again",
    )


def _run(cmd: Sequence[str], timeout: float, *, cwd: Path | None = None, what: str, hint: str) -> str:
    """Run ``cmd`` (echoed), bounded by ``timeout``; its output, or an :class:`ImageError` with the tail of it."""
    echo_command(cmd)
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutExpired(f"`{shlex.join(cmd)}` ({what})", timeout, hint=hint) from None
    except OSError as exc:
        raise ImageError(f"`{shlex.join(cmd)}` cannot run: {exc}", hint=hint) from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.rstrip().splitlines()[-TAIL_LINES:])
        raise ImageError(
            f"{what} failed: `{shlex.join(cmd)}` exited {proc.returncode}; its last lines:\n{_indent(tail)}",
            hint=hint,
        )
    return proc.stdout


def build(*, engine_name: str | None = None, timeout: float = BUILD_TIMEOUT) -> str:
    """Build the services image from the checkout's Dockerfile; its name (``ottlab/ott-services:<version>``)."""
    root = repo_root()
    for needed in BOOTSTRAPPED:
        if not (root / needed).is_file():
            raise ImageError(f"the Dockerfile copies {needed}, which is missing",
                             hint="run `make bootstrap` first (it installs the player's hls.js), then `make image`")
    program = engine_name or engine()
    image = services_image()
    _run([program, "build", "-t", image, "."], timeout, cwd=root, what=f"building {image}",
         hint=f"read the output above; is the {program} daemon running and may you use it "
         f"(`{program} info`)? the build downloads the python base image and Debian's ffmpeg")
    progress(f"built {image} with {program}; load it into your cluster with `ottlab image load`")
    return image


def loader_commands(cluster: str, image: str, *, name: str | None = None, archive: Path | None = None) -> list[str]:
    """The command that copies ``image`` (or the ``archive`` holding it) into a cluster of kind ``cluster``.

    ``name`` is the cluster (kind, k3d) or profile (minikube) when it is not the default one.
    """
    if cluster == "kind":
        cmd = ["kind", "load", "image-archive", str(archive)] if archive else ["kind", "load", "docker-image", image]
        return [*cmd, *(["--name", name] if name else [])]
    if cluster == "minikube":
        return ["minikube", "image", "load", str(archive or image), *(["--profile", name] if name else [])]
    if cluster == "k3d":
        return ["k3d", "image", "import", str(archive or image), *(["--cluster", name] if name else [])]
    raise ConfigError(f"labkit cannot load an image into a {cluster!r} cluster",
                      hint=f"choose one of: {', '.join(CLUSTERS)} (--cluster); another cluster pulls "
                      f"{REPOSITORY} from a registry you push it to")


def load(cluster: str, name: str | None = None, *, engine_name: str | None = None,
         timeout: float = LOAD_TIMEOUT) -> str:
    """Copy the built services image into the local cluster of kind ``cluster``; the image's name."""
    image = services_image()
    loader_commands(cluster, image)  # an unknown cluster kind fails before anything runs
    if _which(cluster) is None:
        raise ImageError(
            f"the program {cluster!r} is not on PATH: it loads images into a {cluster} cluster",
            hint=f"run this where the {cluster} you made the cluster with is installed, or choose the kind of "
            f"cluster you run with --cluster ({', '.join(CLUSTERS)})",
        )
    program = engine_name or engine()
    _run([program, "image", "inspect", image], QUERY_TIMEOUT, what=f"finding {image} in {program}",
         hint=f"build it first: `make image` (if {program} itself failed, `{program} info` tells why)")
    hint = f"is the {cluster} cluster running (`{_status_command(cluster, name)}`)?"
    if program == "docker":
        _run(loader_commands(cluster, image, name=name), timeout, what=f"loading {image} into {cluster}", hint=hint)
    else:
        # kind and k3d read docker's store; every loader reads an archive, whatever made it.
        with tempfile.TemporaryDirectory(prefix="ottlab-image-") as scratch:
            archive = Path(scratch) / "ott-services.tar"
            _run([program, "save", "-o", str(archive), image], timeout, what=f"saving {image} to an archive",
                 hint=f"read the output above (`{program} images` lists what {program} has)")
            _run(loader_commands(cluster, image, name=name, archive=archive), timeout,
                 what=f"loading {image} into {cluster}", hint=hint)
    progress(f"loaded {image} into the {cluster} cluster; now `ottlab up --target kube`")
    return image


def _status_command(cluster: str, name: str | None) -> str:
    return {
        "kind": "kind get clusters",
        "minikube": "minikube status" + (f" --profile {name}" if name else ""),
        "k3d": "k3d cluster list",
    }.get(cluster, "kubectl get nodes")


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines()) or prefix + "(no output)"
