"""Adaptive bitrate (ABR) rules: which rung of a ladder a player asks for next.

Two rules, both pure and deterministic (the same inputs give the same rung), for the viewer simulator
(:mod:`labkit.traffic.audience`):

- :class:`ThroughputRule` (``"ewma"``), the rule of hls.js: a bandwidth estimate from two exponentially
  weighted moving averages of the measured throughput (:class:`EwmaEstimator`); the player keeps or
  lowers its rung while ``estimate × 0.95`` covers the rung's bitrate and moves up only when
  ``estimate × 0.7`` covers the higher one (hls.js' ``abrBandWidthFactor`` and ``abrBandWidthUpFactor``).
- :class:`BolaRule` (``"bola"``), BOLA-BASIC (Spiteri, Urgaonkar and Sitaraman, INFOCOM 2016) as dash.js
  parameterises it: the rung maximising ``(V·(u_m + γp) − Q) / S_m`` with the utility
  ``u_m = ln(S_m / S_min)`` and ``Q`` the buffer level; at startup (less than one segment buffered)
  dash.js decides by throughput instead, and so does this rule.

Ladders are lists of bitrates in kbit/s, **lowest first**; a rung is an index into that list::

    estimator = EwmaEstimator()
    estimator.sample(download_s=2.0, nbytes=250_000)          # 1000 kbit/s measured
    rule = ThroughputRule()
    rule.choose([400, 700, 1500], current=0, estimate_kbps=estimator.estimate_kbps(), buffer_s=8, segment_s=4)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# hls.js defaults (src/config.ts): half-lives in seconds for VOD, the first estimate, the safety factors.
FAST_HALF_LIFE_S = 3.0
SLOW_HALF_LIFE_S = 9.0
DEFAULT_ESTIMATE_KBPS = 500.0
DOWN_FACTOR = 0.95
UP_FACTOR = 0.7
MIN_SAMPLE_S = 0.05  # hls.js' minDelayMs: a download never counts as faster than 50 ms
# dash.js BolaRule: the buffer below which BOLA stays on the lowest rung, and its extra per rung.
BOLA_MIN_BUFFER_S = 10.0
BOLA_BUFFER_PER_RUNG_S = 2.0
BOLA_STARTUP_FACTOR = 0.9  # dash.js' throughput rule keeps 10 % of the estimate in reserve

RULES = ("ewma", "bola")


class Ewma:
    """One exponentially weighted moving average whose weight is in seconds (hls.js' ``EWMA``).

    A sample of weight ``w`` keeps ``alpha ** w`` of the old value, with ``alpha = 0.5 ** (1 / half_life)``;
    the estimate is corrected for the zero it started from (the first samples are not pulled towards 0).
    """

    def __init__(self, half_life_s: float) -> None:
        if not half_life_s > 0:
            raise ValueError(f"an EWMA half-life must be positive seconds, got {half_life_s!r}")
        self.alpha = math.exp(math.log(0.5) / half_life_s)
        self.value = 0.0
        self.total_weight = 0.0

    def sample(self, weight: float, value: float) -> None:
        kept = self.alpha ** weight
        self.value = value * (1 - kept) + kept * self.value
        self.total_weight += weight

    def estimate(self) -> float:
        zero_factor = 1 - self.alpha ** self.total_weight
        return self.value / zero_factor if zero_factor > 0 else self.value


class EwmaEstimator:
    """hls.js' bandwidth estimate: the minimum of a fast and a slow :class:`Ewma` of the throughput.

    Each sample is one download, weighted by its duration in seconds (as hls.js' ``EwmaBandWidthEstimator``
    does: a long download says more about the link than a short one). Until the first sample the estimate
    is ``default_kbps``. The minimum of the two makes the estimate quick to fall and slow to rise.

    >>> e = EwmaEstimator()
    >>> e.estimate_kbps()
    500.0
    >>> e.sample(download_s=1.0, nbytes=125_000)   # 1000 kbit/s
    >>> round(e.estimate_kbps())
    1000
    >>> e.sample(download_s=4.0, nbytes=100_000)   # 200 kbit/s: the fast average follows at once
    >>> 200 < e.estimate_kbps() < 500
    True
    """

    def __init__(self, *, fast_half_life_s: float = FAST_HALF_LIFE_S, slow_half_life_s: float = SLOW_HALF_LIFE_S,
                 default_kbps: float = DEFAULT_ESTIMATE_KBPS) -> None:
        if not default_kbps > 0:
            raise ValueError(f"the default estimate must be positive kbit/s, got {default_kbps!r}")
        self.fast = Ewma(fast_half_life_s)
        self.slow = Ewma(slow_half_life_s)
        self.default_kbps = default_kbps
        self.last_kbps: float | None = None  # the last download's own throughput (CMCD mtp)

    def sample(self, *, download_s: float, nbytes: int) -> None:
        """One finished download of ``nbytes`` bytes that took ``download_s`` seconds."""
        if nbytes <= 0:
            return
        seconds = max(download_s, MIN_SAMPLE_S)
        kbps = nbytes * 8 / seconds / 1000
        self.last_kbps = kbps
        self.fast.sample(seconds, kbps)
        self.slow.sample(seconds, kbps)

    def estimate_kbps(self) -> float:
        if self.fast.total_weight < 0.001:
            return self.default_kbps
        return min(self.fast.estimate(), self.slow.estimate())


class Rule(Protocol):
    """An ABR rule: the next rung from the ladder (kbit/s, lowest first), the current rung and the state."""

    name: str

    def choose(self, ladder: Sequence[float], *, current: int | None, estimate_kbps: float, buffer_s: float,
               segment_s: float) -> int: ...


def _check_ladder(ladder: Sequence[float]) -> None:
    if not ladder:
        raise ValueError("an ABR rule needs a ladder of at least one bitrate")
    if any(not b > 0 for b in ladder) or any(a > b for a, b in itertools.pairwise(ladder)):
        raise ValueError(f"a ladder is positive bitrates, lowest first; got {list(ladder)}")


def highest_within(ladder: Sequence[float], kbps: float) -> int:
    """The highest rung whose bitrate is at most ``kbps``; the lowest rung when none is.

    >>> highest_within([400, 700, 1500], 800), highest_within([400, 700, 1500], 100)
    (1, 0)
    """
    _check_ladder(ladder)
    fitting = [i for i, bitrate in enumerate(ladder) if bitrate <= kbps]
    return fitting[-1] if fitting else 0


@dataclass(frozen=True)
class ThroughputRule:
    """hls.js' choice (``findBestLevel``, without its fetch-time refinements) from a bandwidth estimate.

    Going from the top rung down, the first rung whose bitrate the adjusted estimate covers: the
    estimate × ``down_factor`` for the current rung and those below it, × ``up_factor`` for the rungs
    above it. So a player drops as soon as ``estimate × 0.95`` is below its rung and climbs only when
    ``estimate × 0.7`` reaches the next one: a band between the two keeps it from oscillating.

    >>> ThroughputRule().choose([400, 700, 1500], current=1, estimate_kbps=1000, buffer_s=10, segment_s=4)
    1
    >>> ThroughputRule().choose([400, 700, 1500], current=0, estimate_kbps=1000, buffer_s=10, segment_s=4)
    1
    >>> ThroughputRule().choose([400, 700, 1500], current=2, estimate_kbps=1000, buffer_s=10, segment_s=4)
    1
    """

    down_factor: float = DOWN_FACTOR
    up_factor: float = UP_FACTOR
    name: str = "ewma"

    def choose(self, ladder: Sequence[float], *, current: int | None, estimate_kbps: float, buffer_s: float = 0.0,
               segment_s: float = 0.0) -> int:
        _check_ladder(ladder)
        # Before the first choice hls.js picks by the estimate alone: no rung is "above the current" yet.
        base = len(ladder) - 1 if current is None else current
        for rung in range(len(ladder) - 1, -1, -1):
            factor = self.up_factor if rung > base else self.down_factor
            if estimate_kbps * factor >= ladder[rung]:
                return rung
        return 0


@dataclass(frozen=True)
class BolaRule:
    """BOLA-BASIC: choose by buffer level, with a utility of log bitrate (Spiteri et al., 2016).

    For the ladder ``S_1 < … < S_M`` the utility is ``u_m = ln(S_m / S_1)``. The control parameters
    come from the buffer as in dash.js' ``BolaRule``: below ``min_buffer_s`` BOLA keeps the lowest
    rung and it reaches the top near ``buffer_target_s`` (at least ``min_buffer_s + 2 s`` per rung):
    ``γp = 1 + u_M / (target / min_buffer − 1)`` and ``V = min_buffer / (γp − 1)`` (dash.js adds 1 to
    every utility; here that 1 is in ``γp``). The rung maximises ``(V·(u_m + γp) − Q) / S_m`` where
    ``Q`` is the buffer level in seconds.

    Until one segment is buffered (``buffer_s < segment_s``), dash.js' startup state, the rule picks by
    throughput instead: the highest rung within ``estimate × 0.9``.

    >>> bola = BolaRule(buffer_target_s=30)
    >>> [bola.choose([400, 700, 1500], current=0, estimate_kbps=5000, buffer_s=q, segment_s=4) for q in (5, 16, 30)]
    [0, 1, 2]
    >>> bola.choose([400, 700, 1500], current=None, estimate_kbps=800, buffer_s=0, segment_s=4)
    1
    """

    buffer_target_s: float = 30.0
    min_buffer_s: float = BOLA_MIN_BUFFER_S
    startup_factor: float = BOLA_STARTUP_FACTOR
    name: str = "bola"

    def parameters(self, ladder: Sequence[float]) -> tuple[float, float]:
        """``(V, γp)`` for ``ladder``."""
        _check_ladder(ladder)
        target = max(self.buffer_target_s, self.min_buffer_s + BOLA_BUFFER_PER_RUNG_S * len(ladder))
        top_utility = math.log(ladder[-1] / ladder[0])
        gamma_p = 1 + top_utility / (target / self.min_buffer_s - 1)
        return self.min_buffer_s / (gamma_p - 1), gamma_p

    def choose(self, ladder: Sequence[float], *, current: int | None, estimate_kbps: float, buffer_s: float,
               segment_s: float) -> int:
        _check_ladder(ladder)
        if current is None or buffer_s < segment_s:
            return highest_within(ladder, estimate_kbps * self.startup_factor)
        v, gamma_p = self.parameters(ladder)
        scores = [(v * (math.log(bitrate / ladder[0]) + gamma_p) - buffer_s) / bitrate for bitrate in ladder]
        return max(range(len(ladder)), key=lambda m: (scores[m], -m))


def rule(name: str, *, buffer_target_s: float = 30.0) -> ThroughputRule | BolaRule:
    """The rule called ``name`` (``"ewma"`` or ``"bola"``); ValueError naming the known ones otherwise."""
    if name == "ewma":
        return ThroughputRule()
    if name == "bola":
        return BolaRule(buffer_target_s=buffer_target_s)
    raise ValueError(f"unknown ABR rule {name!r}: choose one of {', '.join(RULES)}")
