"""Running ffmpeg/ffprobe one-shot: echoed as ``+ cmd`` (paste it into a shell), no stdin, always a timeout.

Long-running encodes use :class:`ott.media.transcode.Transcode`, which owns its process.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


def echo(args: Sequence[str]) -> None:
    """Print the command the way a shell would take it (ott must not import labkit, so plain print)."""
    print("+ " + shlex.join(args), flush=True)


def run(args: Sequence[str], *, timeout: float, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to completion and capture its output.

    Raises :class:`subprocess.TimeoutExpired` (the child is killed by ``subprocess.run``) and
    :class:`FileNotFoundError` if the binary is missing; callers turn those into media errors.

    >>> run(["true"], timeout=5, quiet=True).returncode
    0
    """
    if not quiet:
        echo(args)
    return subprocess.run(
        list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
        timeout=timeout, check=False,
    )
