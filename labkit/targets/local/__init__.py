"""The local target: every component a real process on 127.0.0.1, owned by supervisord.

- :mod:`~labkit.targets.local.target`: the :class:`~labkit.targets.base.Target` itself;
- :mod:`~labkit.targets.local.supervisor`: the supervisord daemon and its programs;
- :mod:`~labkit.targets.local.labdir`: the lab directory.
"""

from labkit.targets.local.target import LocalTarget

__all__ = ["LocalTarget"]
