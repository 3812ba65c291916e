"""Istio resources the mesh's unit tests render sidecars from."""

from __future__ import annotations

from typing import Any

# The namespace-wide PeerAuthentication of the committed mesh: mutual TLS only.
STRICT: dict[str, Any] = {
    "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "ottlab"}, "spec": {"mtls": {"mode": "STRICT"}},
}
