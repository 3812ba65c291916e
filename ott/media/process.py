"""Running ffmpeg/ffprobe one-shot: echoed as ``+ cmd`` (paste it into a shell), no stdin, always a timeout.

Long-running encodes use :class:`ott.media.transcode.Transcode`, which owns its process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    # Resolved once at import: find_library may run helper programs, which must not happen
    # between fork and exec.
    name = ctypes.util.find_library("c")
    return None if name is None else getattr(ctypes.CDLL(name, use_errno=True), "prctl", None)


_PRCTL = _prctl()


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL if the thread that started it dies (Linux; elsewhere a no-op).

    A transcoder killed with ``kill -9`` then leaves no ffmpeg behind, still writing into staging.
    Start children from a thread that outlives them (the thread, not the process, is the parent here).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
