"""What every other part of labkit stands on.

- :mod:`~labkit.core.config`: the lab's settings, read once from the environment;
- :mod:`~labkit.core.errors`: one root error, :class:`~labkit.core.errors.LabError`, and its kinds;
- :mod:`~labkit.core.console`: commands echoed as ``+ cmd``, and progress lines;
- :mod:`~labkit.core.wait`: the one bounded wait, :func:`~labkit.core.wait.until`;
- :mod:`~labkit.core.eventloop`: a coroutine run to completion from plain code or a notebook;
- :mod:`~labkit.core.environment`: the programs this machine has;
- :mod:`~labkit.core.programs`: where a program is found (the virtualenv's pinned kubectl and helm first);
- :mod:`~labkit.core.ports`: is a local port free, and who holds it.
"""
