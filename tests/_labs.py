"""Module-scoped labs for the integration suites: each its own lab directory and ports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from labkit import platform
from labkit.clients import seed
from labkit.core.config import LabConfig
from labkit.targets.local.target import LocalTarget


@contextmanager
def running_lab(home: Path, base_port: int, layers: Sequence[str] | None = None, *,
                seeded: bool = False, mesh: str | None = None) -> Iterator[LocalTarget]:
    """A local lab in ``home / "lab"`` on ``base_port`` with ``layers`` up (every layer by default) and the
    demo data when ``seeded``, the service mesh as ``mesh`` says, else as OTTLAB_MESH or its default does;
    always brought down and purged afterwards, also when a test failed."""
    cfg = LabConfig.from_env(home=home / "lab", base_port=base_port, ready_timeout=60, mesh=mesh)
    target = LocalTarget(cfg, platform.components(), platform.layers())
    try:
        target.up(list(layers) if layers is not None else None)
        if seeded:
            seed.seed_target(target)
        yield target
    finally:
        target.down(purge=True)
