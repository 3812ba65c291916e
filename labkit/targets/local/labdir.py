"""The lab directory: where the local platform keeps its configs, logs and data.

A marker file proves a directory is ottlab's before labkit writes into it or deletes it,
and a lock file serialises commands that change the platform (two ``ottlab up`` at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from labkit.core.config import LabConfig
from labkit.core.errors import LabBusyError, LabDirError, TimeoutExpired
from labkit.core.wait import until

MARKER = ".ottlab.json"
LOCK = ".ottlab.lock"
KIND = "ottlab-lab-directory"
FORMAT = 1


class LabDir:
    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.path = cfg.home
        self.marker = self.path / MARKER

    def exists(self) -> bool:
        return self.marker.exists()

    def check(self) -> None:
        """Raise :class:`LabDirError` when the directory is foreign or its marker is corrupt."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise LabDirError(str(self.path), "is a file, not a directory")
        if not self.marker.exists():
            if any(self.path.iterdir()):
                raise LabDirError(str(self.path), "is not empty and was not made by ottlab")
            return
        try:
            data = json.loads(self.marker.read_text())
        except (OSError, ValueError) as exc:
            raise LabDirError(str(self.path), f"has a corrupt marker {MARKER} ({exc})") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise LabDirError(str(self.path), f"has a marker {MARKER} that is not ottlab's")
        if data.get("format") != FORMAT:
            raise LabDirError(
                str(self.path), f"was made by another ottlab version (format {data.get('format')}, expected {FORMAT})"
            )

    def ensure(self) -> None:
        """Create the directory and its layout (checking an existing one first)."""
        self.check()
        for sub in (self.path, self.cfg.conf_dir, self.cfg.log_dir, self.cfg.data_dir, self.cfg.run_dir):
            sub.mkdir(parents=True, exist_ok=True)
        if not self.marker.exists():
            tmp = self.marker.with_suffix(".tmp")
            marker = {"kind": KIND, "format": FORMAT, "id": uuid.uuid4().hex}
            tmp.write_text(json.dumps(marker) + "\n")
            tmp.replace(self.marker)

    def lab_id(self) -> str:
        """This directory's unique id: every process the lab starts carries it as OTTLAB_LAB_ID."""
        try:
            return str(json.loads(self.marker.read_text()).get("id", ""))
        except (OSError, ValueError):
            return ""

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the lab's lock for the block; another holder makes this raise :class:`LabBusyError`, at once or,
        with ``wait``, when it still holds the lock after that many seconds (``down`` waits for the
        autoscaler's scale in progress to end rather than leave a running lab behind)."""
        self.ensure()
        path = self.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _take(fd):
                if wait <= 0:
                    raise LabBusyError(str(self.path), _read_pid(path))
                try:
                    until(lambda: _take(fd), wait, 0.1, f"the lock of {self.path} (pid {_read_pid(path)})")
                except TimeoutExpired:
                    raise LabBusyError(str(self.path), _read_pid(path)) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    def write_file(self, relative: str, text: str) -> Path:
        """Write a generated file under ``conf/`` atomically; return its path."""
        target = self.cfg.conf_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return target

    def purge(self) -> None:
        """Delete the lab directory; refuses a directory that is not ottlab's."""
        if not self.path.exists():
            return
        self.check()
        if not self.marker.exists() and any(self.path.iterdir()):
            raise LabDirError(str(self.path), "is not ottlab's: refusing to delete it")
        shutil.rmtree(self.path)


def _take(fd: int) -> bool:
    """Take the lock on ``fd`` if no one holds it; whether it was taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
