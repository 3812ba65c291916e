"""The kube target: the platform on a Kubernetes cluster, and the instruments it uses.

Modules, one noun each:

- :mod:`labkit.targets.kube.target` is the :class:`~labkit.targets.base.Target` itself;
- :mod:`labkit.targets.kube.manifest` renders ``k8s/overlays/<overlay>`` with ``kubectl kustomize``
  and picks the objects of a layer;
- :mod:`labkit.targets.kube.cluster` talks to the API server through the official ``kubernetes``
  client: every call bounded by a timeout, every failure a :class:`~labkit.core.errors.LabError`;
- :mod:`labkit.targets.kube.rollout` reads and waits for a Deployment's rollout;
- :mod:`labkit.targets.kube.portforward` serves a pod's port on a local 127.0.0.1 port;
- :mod:`labkit.targets.kube.secrets` makes the lab's Secrets.

Only :func:`labkit.targets.make_target` imports this package for a lab, so a lab without the
``kube`` extra never needs the ``kubernetes`` package.
"""
