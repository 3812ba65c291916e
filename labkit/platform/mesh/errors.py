"""The mesh's errors: a resource the mesh cannot enforce, and a certificate it must refuse."""

from __future__ import annotations

from labkit.core.errors import ConfigError, LabError


class MeshConfigError(ConfigError):
    """An Istio resource is malformed or contradicts the others; the message names each problem.

    Nothing is rendered from a configuration with a problem: what runs keeps running.
    """


class CertificateError(LabError):
    """A workload certificate is expired, not yet valid, not issued by this lab's CA, or has no identity."""
