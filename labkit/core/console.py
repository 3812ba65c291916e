"""What labkit prints while it works: commands echoed as ``+ cmd``, and progress lines.

Both go to stdout so a notebook cell shows them; ``OTTLAB_QUIET=1`` silences them.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence


def _quiet() -> bool:
    return os.environ.get("OTTLAB_QUIET", "") not in ("", "0")


def echo_command(cmd: Sequence[str]) -> None:
    """Print a command as a user could paste it into a shell."""
    if not _quiet():
        print("+ " + shlex.join(str(a) for a in cmd), file=sys.stdout, flush=True)


def progress(message: str) -> None:
    """One line of progress for a long step."""
    if not _quiet():
        print(message, file=sys.stdout, flush=True)
