"""Building the services image and loading it into a local cluster, with stand-in programs.

No container engine or cluster runs in this tier: docker, podman, kind, minikube and k3d are
tiny shell scripts on a PATH of their own that record their arguments and exit as told. So
these tests check which engine is chosen, which commands run (echoed as ``+ cmd``) for which kind
of cluster, and the error each bad case gives; tests/kube/test_image_on_a_cluster.py builds and
loads for real where a cluster is.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main
from labkit.core.config import repo_root
from labkit.core.errors import ConfigError, ImageError, TimeoutExpired
from labkit.targets.kube import image

IMAGE = image.services_image()


class Programs:
    """A PATH holding only the stand-ins written into it; ``calls`` is what ran, in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory / "calls.log"

    def add(self, name: str, *, exit_code: int = 0, output: str = "", sleep: float = 0) -> None:
        script = self.directory / name
        wait = f"/bin/sleep {sleep}\n" if sleep else ""
        script.write_text(
            "#!/bin/sh\n"
            f'printf "%s|%s\\n" "$PWD" "${{0##*/}} $*" >> {shlex.quote(str(self.log))}\n'
            f"{wait}printf '%s' {shlex.quote(output)}\n"
            f"exit {exit_code}\n"
        )
        script.chmod(0o755)

    @property
    def calls(self) -> list[str]:
        return [line.split("|", 1)[1] for line in self.log.read_text().splitlines()] if self.log.exists() else []

    @property
    def places(self) -> list[str]:
        return [line.split("|", 1)[0] for line in self.log.read_text().splitlines()]


@pytest.fixture
def programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Programs:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv(image.ENGINE_ENV, raising=False)
    monkeypatch.delenv("OTTLAB_KUBE_OVERLAY", raising=False)
    monkeypatch.delenv("OTTLAB_QUIET", raising=False)
    # The Dockerfile copies a file `make bootstrap` installs; these tests need not have it.
    monkeypatch.setattr(image, "BOOTSTRAPPED", ())
    return Programs(bin_dir)


# -- the engine --------------------------------------------------------------------------


def test_the_tag_is_the_version_of_pyproject() -> None:
    version = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]["version"]
    assert image.services_image() == f"ottlab/ott-services:{version}"


def test_docker_comes_before_podman(programs: Programs) -> None:
    programs.add("podman")
    assert image.engine() == "podman"
    programs.add("docker")
    assert image.engine() == "docker"


def test_the_environment_can_ask_for_podman(programs: Programs, monkeypatch: pytest.MonkeyPatch) -> None:
    programs.add("docker")
    programs.add("podman")
    monkeypatch.setenv(image.ENGINE_ENV, "podman")
    assert image.engine() == "podman"
    monkeypatch.setenv(image.ENGINE_ENV, "buildah")
    with pytest.raises(ConfigError, match="docker, podman"):
        image.engine()


def test_no_engine_names_the_debian_packages(programs: Programs) -> None:
    with pytest.raises(ImageError) as caught:
        image.engine()
    message = str(caught.value)
    assert "neither docker nor podman" in message
    assert "apt-get install docker.io" in message and "apt-get install podman" in message


def test_an_engine_asked_for_but_missing(programs: Programs, monkeypatch: pytest.MonkeyPatch) -> None:
    programs.add("docker")
    monkeypatch.setenv(image.ENGINE_ENV, "podman")
    with pytest.raises(ImageError, match="apt-get install podman"):
        image.engine()


# -- build -------------------------------------------------------------------------------


def test_build_tags_the_image_from_the_checkouts_dockerfile(
    programs: Programs, capsys: pytest.CaptureFixture[str]
) -> None:
    programs.add("docker")
    assert image.build() == IMAGE
    assert programs.calls == [f"docker build -t {IMAGE} ."]
    assert programs.places == [str(repo_root())]
    out = capsys.readouterr().out
    assert f"+ docker build -t {IMAGE} .\n" in out
    assert "ottlab image load" in out


def test_build_with_podman_when_there_is_no_docker(programs: Programs) -> None:
    programs.add("podman")
    image.build()
    assert programs.calls == [f"podman build -t {IMAGE} ."]


def test_a_failed_build_shows_the_tail_of_its_output(programs: Programs) -> None:
    output = "".join(f"step {n}\n" for n in range(1, 41)) + "E: Unable to locate package ffmpeg\n"
    programs.add("docker", exit_code=1, output=output)
    with pytest.raises(ImageError) as caught:
        image.build()
    message = str(caught.value)
    assert "exited 1" in message and "E: Unable to locate package ffmpeg" in message
    assert "step 40" in message and "step 5\n" not in message, "only the tail"
    assert "docker info" in message


def test_a_build_that_hangs_is_stopped(programs: Programs) -> None:
    programs.add("docker", sleep=5)
    with pytest.raises(TimeoutExpired, match="docker build"):
        image.build(timeout=0.5)


def test_build_without_the_bootstrapped_player_files_says_to_bootstrap(
    programs: Programs, monkeypatch: pytest.MonkeyPatch
) -> None:
    programs.add("docker")
    monkeypatch.setattr(image, "BOOTSTRAPPED", ("ott/player/node_modules/nothing-here.js",))
    with pytest.raises(ImageError, match="make bootstrap"):
        image.build()
    assert programs.calls == []


# -- load --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "name", "loader"),
    [
        ("kind", None, f"kind load docker-image {IMAGE}"),
        ("kind", "lab", f"kind load docker-image {IMAGE} --name lab"),
        ("minikube", None, f"minikube image load {IMAGE}"),
        ("minikube", "lab", f"minikube image load {IMAGE} --profile lab"),
        ("k3d", None, f"k3d image import {IMAGE}"),
        ("k3d", "lab", f"k3d image import {IMAGE} --cluster lab"),
    ],
)
def test_load_with_docker_runs_the_clusters_own_loader(
    programs: Programs, capsys: pytest.CaptureFixture[str], cluster: str, name: str | None, loader: str
) -> None:
    programs.add("docker")
    programs.add(cluster)
    assert image.load(cluster, name) == IMAGE
    assert programs.calls == [f"docker image inspect {IMAGE}", loader]
    assert f"+ {loader}\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cluster", "loader"),
    [("kind", "kind load image-archive {}"), ("minikube", "minikube image load {}"), ("k3d", "k3d image import {}")],
)
def test_load_with_podman_goes_through_an_archive(programs: Programs, cluster: str, loader: str) -> None:
    programs.add("podman")
    programs.add(cluster)
    image.load(cluster)
    inspect, save, load = programs.calls
    assert inspect == f"podman image inspect {IMAGE}"
    assert save.startswith("podman save -o ") and save.endswith(f"/ott-services.tar {IMAGE}")
    archive = save.split()[3]
    assert load == loader.format(archive)
    assert not Path(archive).exists(), "the archive is removed afterwards"


def test_load_without_the_clusters_program(programs: Programs) -> None:
    programs.add("docker")
    with pytest.raises(ImageError) as caught:
        image.load("minikube")
    assert "'minikube' is not on PATH" in str(caught.value) and "--cluster" in str(caught.value)
    assert programs.calls == []


def test_load_before_build_says_to_build(programs: Programs) -> None:
    programs.add("docker", exit_code=1, output=f"Error: No such image: {IMAGE}\n")
    programs.add("kind")
    with pytest.raises(ImageError) as caught:
        image.load("kind")
    assert "No such image" in str(caught.value) and "make image" in str(caught.value)
    assert programs.calls == [f"docker image inspect {IMAGE}"], "nothing loaded"


def test_a_failed_load_says_to_check_the_cluster(programs: Programs) -> None:
    programs.add("docker")
    programs.add("kind", exit_code=1, output="ERROR: no nodes found for cluster \"kind\"\n")
    with pytest.raises(ImageError) as caught:
        image.load("kind")
    assert "no nodes found" in str(caught.value) and "kind get clusters" in str(caught.value)


def test_an_unknown_kind_of_cluster(programs: Programs) -> None:
    with pytest.raises(ConfigError, match="kind, minikube, k3d"):
        image.load("eks")
    assert programs.calls == []


# -- the command line ----------------------------------------------------------------------


def test_ottlab_image_build_without_an_engine_exits_1(programs: Programs) -> None:
    result = CliRunner().invoke(main, ["image", "build"])
    assert result.exit_code == 1
    assert "docker.io" in result.output and "podman" in result.output


def test_ottlab_image_load_follows_the_overlay(programs: Programs, monkeypatch: pytest.MonkeyPatch) -> None:
    programs.add("docker")
    programs.add("minikube")
    monkeypatch.setenv("OTTLAB_KUBE_OVERLAY", "minikube")
    result = CliRunner().invoke(main, ["image", "load"])
    assert result.exit_code == 0, result.output
    assert programs.calls[-1] == f"minikube image load {IMAGE}"


def test_ottlab_image_load_defaults_to_kind(programs: Programs) -> None:
    programs.add("docker")
    programs.add("kind")
    result = CliRunner().invoke(main, ["image", "load", "--name", "lab"])
    assert result.exit_code == 0, result.output
    assert programs.calls[-1] == f"kind load docker-image {IMAGE} --name lab"


def test_ottlab_image_load_into_an_unknown_cluster_exits_2(programs: Programs) -> None:
    result = CliRunner().invoke(main, ["image", "load", "--cluster", "eks"])
    assert result.exit_code == 2
    assert "kind, minikube, k3d" in result.output
