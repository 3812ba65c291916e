"""Fixtures shared by every tier: an isolated lab directory and port range per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.targets.local.target import LocalTarget

REPO = Path(__file__).resolve().parent.parent
# Tests use their own port range, away from a developer's running lab (base 18000).
TEST_BASE_PORT = int(os.environ.get("OTTLAB_TEST_BASE_PORT", "28000"))


# Kept for the tests: their port range, and the service mesh their labs run with (OTTLAB_MESH=off runs
# the suite without it; a lab's LabConfig.from_env reads it, the CLI run by a test too).
KEPT = ("OTTLAB_TEST_BASE_PORT", "OTTLAB_MESH")


@pytest.fixture(autouse=True)
def _quiet_isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own other OTTLAB_* settings must not leak into tests.
    for name in list(os.environ):
        if name.startswith("OTTLAB_") and name not in KEPT:
            monkeypatch.delenv(name)


@pytest.fixture
def lab_cfg(tmp_path: Path) -> LabConfig:
    return LabConfig.from_env(home=tmp_path / "lab", base_port=TEST_BASE_PORT, ready_timeout=30)


@pytest.fixture
def local_lab(lab_cfg: LabConfig) -> Iterator[LocalTarget]:
    """A local target in a temporary lab directory; always brought down and purged."""
    target = LocalTarget(lab_cfg, platform.components(), platform.layers())
    try:
        yield target
    finally:
        target.down(purge=True)
