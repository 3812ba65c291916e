"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from labkit.platform.mesh import identity


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> identity.LabCA:
    """A lab CA for the tests that render sidecars (made once: a key pair takes a moment)."""
    return identity.LabCA.ensure(tmp_path_factory.mktemp("mesh") / "ca")
