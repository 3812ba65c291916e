"""The kube target's instruments: manifests, the API server, rollouts and port-forwards.

Modules, one noun each:

- :mod:`labkit.kube.manifest` renders ``k8s/overlays/<overlay>`` with ``kubectl kustomize``
  and picks the objects of a layer;
- :mod:`labkit.kube.cluster` talks to the API server through the official ``kubernetes``
  client: every call bounded by a timeout, every failure a :class:`~labkit.errors.LabError`;
- :mod:`labkit.kube.rollout` reads and waits for a Deployment's rollout;
- :mod:`labkit.kube.portforward` serves a pod's port on a local 127.0.0.1 port.

Only :mod:`labkit.targets.kube` imports this package, so a lab without the ``kube`` extra
never needs the ``kubernetes`` package.
"""

from __future__ import annotations

from labkit.errors import ConfigError

try:
    import kubernetes  # noqa: F401  (imported for the check; the modules import what they use)
except ImportError as exc:  # pragma: no cover - the dev environment has the extra installed
    raise ConfigError(
        "the kube target needs the Python package `kubernetes`, which is not installed",
        hint="install the kube extra: pip install -e .[kube]  (or use --target local)",
    ) from exc
