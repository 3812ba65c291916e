"""The one bounded wait of the lab: :func:`until`.

Every "poll until true or give up" in labkit (a component answering, a rollout finishing, a
scrape arriving, a log line being written) is this function, so every such wait has a bound,
paces itself, and fails the same way: :class:`~labkit.core.errors.TimeoutExpired`, naming what
never happened and, when the caller says, what was seen last::

    >>> from labkit.core.wait import until
    >>> until(lambda: 42, timeout=1, what="the answer")
    42

A wait that may run out without being an error catches :class:`TimeoutExpired` and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from labkit.core.errors import TimeoutExpired

T = TypeVar("T")

__all__ = ["until"]


def until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.1,
    what: str | Callable[[], str] = "a condition",
    *,
    hint: str = "",
    ignoring: tuple[type[Exception], ...] = (),
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true; return that.

    ``predicate`` is called at once, then after each pause, and once more when ``timeout`` seconds
    have passed; if it is still false, :class:`TimeoutExpired` says ``timed out after <timeout> s
    waiting for <what>``. ``what`` may be a function, called only then, so the message can carry the
    last thing seen (``lambda: f"3 PoPs (last seen: {values})"``). ``hint`` is the next step for
    the user. Exceptions of the types in ``ignoring`` count as "not yet" (a port not listening
    yet); the last one is the timeout's cause. Any other exception ends the wait at once, which is
    how a predicate says "this will never happen" (a process that exited).

    ``clock`` (monotonic seconds) and ``sleep`` are :func:`time.monotonic` and :func:`time.sleep`
    unless a test injects its own, looked up at each call.

        >>> state = iter([None, None, "ready"])
        >>> until(lambda: next(state), timeout=5, interval=0, what="the job")
        'ready'
        >>> until(lambda: False, timeout=0, what="a miracle")
        Traceback (most recent call last):
        ...
        labkit.core.errors.TimeoutExpired: timed out after 0 s waiting for a miracle
    """
    if timeout < 0 or interval < 0:
        raise ValueError(f"timeout and interval must be >= 0 seconds, not {timeout} and {interval}")
    now = clock or time.monotonic
    pause = sleep or time.sleep
    deadline = now() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            last_error = exc
        else:
            if value:
                return value
        remaining = deadline - now()
        if remaining <= 0:
            described = what() if callable(what) else what
            if last_error is not None:
                described = f"{described} (last error: {last_error!r})"
            raise TimeoutExpired(described, timeout, hint=hint) from last_error
        pause(min(interval, remaining))
