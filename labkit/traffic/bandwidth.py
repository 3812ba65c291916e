"""Bandwidth limits for simulated viewers: a fixed rate or a trace of rates over time.

A viewer of :mod:`labkit.traffic.audience` reads each response body in chunks through a :class:`Link`, which
paces them (a token bucket without burst: the link is busy until the bytes granted so far would have
crossed it) so that the download runs at the limit whenever the network itself is faster::

    Fixed(600)                      # 600 kbit/s, all the time
    Trace.named("commute")          # a shipped trace (labkit/traffic/traces/commute.csv), played in a loop
    Trace([(10, 3000), (5, 400)])   # 3000 kbit/s for 10 s, 400 kbit/s for 5 s, again and again

A trace file is CSV with the header ``duration_s,kbps``: each row holds ``kbps`` (≥ 0; 0 is an outage)
for ``duration_s`` seconds (> 0); lines starting with ``#`` are comments. The shipped traces are
synthetic (made up for the lab, documented in their comments): :func:`shipped` lists them.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from labkit.core.errors import ConfigError

MAX_KBPS = 100_000_000.0  # 100 Gbit/s: anything above is a typo, not a link
TRACES_DIR = "traces"  # in the labkit.traffic package


def _check_kbps(kbps: object, what: str, *, zero_ok: bool = False) -> float:
    if isinstance(kbps, bool) or not isinstance(kbps, int | float) or not math.isfinite(kbps):
        raise ConfigError(f"{what}: a bandwidth is a number of kbit/s, got {kbps!r}")
    if kbps < 0 or (kbps == 0 and not zero_ok) or kbps > MAX_KBPS:
        low = "0 or more" if zero_ok else "more than 0"
        raise ConfigError(f"{what}: {kbps!r} kbit/s is out of range", hint=f"use {low} and at most {MAX_KBPS:.0f}")
    return float(kbps)


@dataclass(frozen=True)
class Fixed:
    """A constant limit of ``kbps`` kbit/s.

    >>> Fixed(600).kbps_at(12.5), Fixed(800).finish(1.0, 800_000)
    (600.0, 2.0)
    """

    kbps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kbps", _check_kbps(self.kbps, "Fixed"))

    @property
    def name(self) -> str:
        return f"{self.kbps:g} kbit/s"

    def kbps_at(self, t: float) -> float:
        return self.kbps

    def finish(self, start: float, bits: float) -> float:
        """When ``bits`` sent from time ``start`` have crossed the link."""
        return start + bits / (self.kbps * 1000)


@dataclass(frozen=True)
class Trace:
    """Piecewise-constant kbit/s over time: ``steps`` of ``(duration_s, kbps)``, looping for ever.

    >>> t = Trace([(10, 3000), (5, 400)], name="demo")
    >>> t.period_s, t.kbps_at(3), t.kbps_at(12), t.kbps_at(16)
    (15.0, 3000.0, 400.0, 3000.0)
    >>> t.finish(9.0, 3_400_000)   # 1 s at 3000 kbit/s, then 1 s at 400 kbit/s
    11.0
    """

    steps: Sequence[tuple[float, float]]
    name: str = "trace"
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError(f"trace {self.name!r} has no steps", hint="give at least one (duration_s, kbps) row")
        checked: list[tuple[float, float]] = []
        for i, step in enumerate(self.steps, start=1):
            try:
                duration, kbps = step
            except (TypeError, ValueError):
                raise ConfigError(f"trace {self.name!r}, step {i}: expected (duration_s, kbps), got {step!r}") from None
            duration = _check_kbps(duration, f"trace {self.name!r}, step {i} duration_s")
            checked.append((duration, _check_kbps(kbps, f"trace {self.name!r}, step {i}", zero_ok=True)))
        if not any(kbps > 0 for _, kbps in checked):
            raise ConfigError(f"trace {self.name!r} is 0 kbit/s throughout: nothing would ever download")
        starts, at = [], 0.0
        for duration, _ in checked:
            starts.append(at)
            at += duration
        object.__setattr__(self, "steps", tuple(checked))
        object.__setattr__(self, "_starts", tuple(starts))

    @property
    def period_s(self) -> float:
        return self._starts[-1] + self.steps[-1][0]

    def _index(self, position: float) -> int:
        return bisect.bisect_right(self._starts, position) - 1

    def kbps_at(self, t: float) -> float:
        return self.steps[self._index(t % self.period_s)][1]

    def finish(self, start: float, bits: float) -> float:
        """When ``bits`` sent from time ``start`` have crossed the link (walking the steps, looping)."""
        t, left = start, bits
        cycles, period = math.floor(start / self.period_s), self.period_s
        i = self._index(start - cycles * period)
        while True:
            duration, kbps = self.steps[i]
            step_end = cycles * period + self._starts[i] + duration
            capacity = kbps * 1000 * (step_end - t)
            if kbps > 0 and left <= capacity:
                return t + left / (kbps * 1000)
            left -= max(capacity, 0.0)
            t = step_end
            i += 1
            if i == len(self.steps):
                i, cycles = 0, cycles + 1

    @classmethod
    def from_csv(cls, path: str | Path, name: str | None = None) -> Trace:
        """A trace from a CSV file (``duration_s,kbps``); ConfigError naming the line of a malformed one."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
        return cls.parse(text, name or path.stem)

    @classmethod
    def parse(cls, text: str, name: str = "trace") -> Trace:
        """A trace from CSV text; see :func:`from_csv`.

        >>> Trace.parse("duration_s,kbps\\n10,oops\\n", "bad")
        Traceback (most recent call last):
        ...
        labkit.core.errors.ConfigError: trace 'bad', line 2: expected two numbers duration_s,kbps, got '10,oops'
        """
        rows = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
        if not rows or [c.strip() for c in rows[0][1].split(",")] != ["duration_s", "kbps"]:
            raise ConfigError(f"trace {name!r}: the first line that is not a comment must be the header "
                              "'duration_s,kbps'")
        steps: list[tuple[float, float]] = []
        for n, line in rows[1:]:
            cells = next(csv.reader([line]))
            try:
                if len(cells) != 2:
                    raise ValueError
                steps.append((float(cells[0]), float(cells[1])))
            except ValueError:
                raise ConfigError(f"trace {name!r}, line {n}: expected two numbers duration_s,kbps, "
                                  f"got {line!r}") from None
        return cls(steps, name=name)

    @classmethod
    def named(cls, name: str) -> Trace:
        """A trace shipped with labkit (``labkit/traffic/traces/<name>.csv``); ConfigError listing them otherwise."""
        known = shipped()
        if name not in known:
            raise ConfigError(f"no shipped bandwidth trace named {name!r}",
                              hint=f"choose one of: {', '.join(known)}, or load your own with Trace.from_csv(path)")
        return cls.parse(resources.files("labkit.traffic").joinpath(TRACES_DIR, f"{name}.csv").read_text(), name)


def shipped() -> list[str]:
    """The names of the traces shipped in ``labkit/traffic/traces``.

    >>> "commute" in shipped() and "stairs" in shipped()
    True
    """
    return sorted(p.name.removesuffix(".csv") for p in resources.files("labkit.traffic").joinpath(TRACES_DIR).iterdir()
                  if p.name.endswith(".csv"))


Limit = Fixed | Trace


class Link:
    """One viewer's limited link: :meth:`pace` waits until the bytes received so far fit the limit.

    ``offset_s`` shifts the viewer's position in a trace (so viewers do not all see the same dip at
    the same moment); ``now`` and ``sleep`` are the simulator's clock. Idle time earns no credit: a
    download starts at the limit, never with a burst.
    """

    def __init__(self, limit: Limit, *, now: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                 offset_s: float = 0.0, min_sleep_s: float = 0.0) -> None:
        self.limit = limit
        self.min_sleep_s = min_sleep_s
        self.offset_s = offset_s
        self.now = now
        self.sleep = sleep
        self.busy_until = -math.inf  # in the limit's time (now + offset)

    def kbps(self) -> float:
        """The limit at this moment."""
        return self.limit.kbps_at(self.now() + self.offset_s)

    async def pace(self, nbytes: int) -> None:
        """``nbytes`` more bytes arrived: wait until they would have crossed the link.

        Waits shorter than ``min_sleep_s`` are carried over to the next chunk (fewer timers for many
        small chunks); :meth:`drain` at the end of a body waits what is left.
        """
        if nbytes <= 0:
            return
        now = self.now() + self.offset_s
        self.busy_until = self.limit.finish(max(now, self.busy_until), nbytes * 8)
        if self.busy_until - now > self.min_sleep_s:
            await self.sleep(self.busy_until - now)

    async def drain(self) -> None:
        """Wait until everything received so far would have crossed the link."""
        wait = self.busy_until - (self.now() + self.offset_s)
        if wait > 0:
            await self.sleep(wait)
