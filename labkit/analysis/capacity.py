"""Capacity curves: how many viewers the lab serves, what breaks first, per core.

A ramp (:mod:`labkit.traffic.capacity`) plays an audience in steps of growing size and records,
per step, one row of :data:`STEP_COLUMNS` (what the viewers saw and what the platform delivered)
and one row of CPU cores used per component. These functions read those two frames; they are
pure, so the unit tests feed them synthetic series::

    knee = capacity.knee(steps)                     # the first step where a QoE SLO broke, or None
    who = capacity.saturated(steps, cpu, knee)     # the component that ran out first, with the evidence
    capacity.per_core(steps, cpu, knee)            # viewers per core and Gbit/s per core below the knee

**The SLOs**, declared once in :data:`SLO`: startup p95 under 2 s (viewers start leaving after
about 2 s), rebuffering ratio under 1 % (industry averages are 0.4-0.8 %), fewer than 1 % of
viewers failing, and segment time-to-first-byte p95 under half a segment's duration (the
headroom a player needs to keep its buffer; OPERATIONS §8.3). The **knee** is the first step
that breaks one of them; the capacity is the step before it.

**Per core.** ``viewers_per_core`` is the viewers of the last step within the SLOs over the cores
the platform used at that step (the sum over its components, the load generator excluded: it
runs on this machine too, but it is not what a CDN operator buys); ``gbps_per_core`` the egress
the viewers received at that step over the same cores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["GENERATOR", "OTHER", "SLO", "STEP_COLUMNS", "Knee", "Saturation", "Slo", "curve", "knee", "peak_cores",
           "per_core", "saturated", "step_row", "table"]

# One row per step: the audience size, what it experienced, and what it was delivered.
STEP_COLUMNS = ["viewers", "seconds", "started", "requests", "errors", "error_ratio", "egress_gbps",
                "segment_ttfb_p95_s", "startup_p95_s", "rebuffering_ratio", "generator_cores"]
# The CPU frame's column for the load generator (it shares the machine): never counted as the platform's.
GENERATOR = "load generator"
# ... and for everything else this machine ran meanwhile (its busy time less the lab's and the generator's).
OTHER = "rest of the machine"
NOT_PLATFORM = (GENERATOR, OTHER)
# A single-threaded process (a Python service, an nginx with one worker) is saturated near one core.
NEAR_SHARE = 0.8
# The machine is saturated when all its cores together are this busy.
NEAR_MACHINE = 0.9


@dataclass(frozen=True)
class Slo:
    """The QoE objectives a step must meet (each an upper bound)."""

    startup_p95_s: float = 2.0
    rebuffering_ratio: float = 0.01
    error_ratio: float = 0.01
    # Of a segment's duration: a 4 s segment must start arriving within 2 s.
    segment_ttfb_p95_share: float = 0.5

    def breaches(self, row: Mapping[str, Any], segment_s: float) -> list[str]:
        """What ``row`` (a step) breaks, in words; [] when it meets every objective."""
        found = []
        checks = (("startup_p95_s", self.startup_p95_s, "startup p95 {v:.2f} s > {b:g} s"),
                  ("rebuffering_ratio", self.rebuffering_ratio, "rebuffering ratio {v:.2%} > {b:.0%}"),
                  ("error_ratio", self.error_ratio, "errors {v:.2%} of viewers > {b:.0%}"),
                  ("segment_ttfb_p95_s", self.segment_ttfb_p95_share * segment_s,
                   "segment TTFB p95 {v:.3f} s > {b:g} s"))
        for key, bound, words in checks:
            value = float(row[key])
            if math.isnan(value) and key == "startup_p95_s":
                found.append("no viewer started")
            elif value > bound:
                found.append(words.format(v=value, b=bound))
        return found


SLO = Slo()


@dataclass(frozen=True)
class Knee:
    """The first step that broke an SLO: its viewers, the last good step's (0 if none), and why."""

    step: int
    viewers: int
    last_good_viewers: int
    breaches: tuple[str, ...]


@dataclass(frozen=True)
class Saturation:
    """The component that ran out first, at which step, and the evidence (``cpu`` or ``latency``)."""

    component: str
    viewers: int
    evidence: str
    detail: str
    utilisation: float


def step_row(viewers: int, seconds: float, sessions: pd.DataFrame, requests: pd.DataFrame,
             generator_cores: float = math.nan) -> dict[str, Any]:
    """One step's row of :data:`STEP_COLUMNS` from a simulator run's ``sessions`` and ``requests`` frames.

    Errors are viewers that failed (a fatal error) plus media requests that failed or answered
    4xx/5xx; egress is the bytes the viewers received over the step's ``seconds``.
    """
    from labkit.analysis import experience

    figures = experience.summary(sessions)
    failed_requests = int(((requests["status"] == 0) | (requests["status"] >= 400)).sum())
    failed_viewers = int(figures["video_start_failures"]) + int(figures["playback_failures"])
    segments = requests[(requests["kind"] == "segment") & (requests["status"] == 200)]
    ttfb = segments["ttfb_s"].dropna()
    return {
        "viewers": viewers, "seconds": seconds, "started": int(figures["started"]),
        "requests": len(requests), "errors": failed_viewers + failed_requests,
        "error_ratio": failed_viewers / viewers if viewers else 0.0,
        "egress_gbps": float(requests["bytes"].sum()) * 8 / seconds / 1e9,
        "segment_ttfb_p95_s": float(ttfb.quantile(0.95)) if len(ttfb) else math.nan,
        "startup_p95_s": float(figures["startup_p95_s"]),
        "rebuffering_ratio": float(figures["rebuffering_ratio"]) if figures["started"] else math.nan,
        "generator_cores": generator_cores,
    }


def knee(steps: pd.DataFrame, slo: Slo = SLO, *, segment_s: float = 4.0) -> Knee | None:
    """The first step (in order) that breaks an objective of ``slo``; None when every step met them all."""
    for i, (_, row) in enumerate(steps.iterrows()):
        broken = slo.breaches({str(k): v for k, v in row.items()}, segment_s)
        if broken:
            last_good = int(steps.iloc[i - 1]["viewers"]) if i else 0
            return Knee(i, int(row["viewers"]), last_good, tuple(broken))
    return None


def _platform(cpu: pd.DataFrame) -> pd.DataFrame:
    return cpu.drop(columns=list(NOT_PLATFORM), errors="ignore")


def peak_cores(samples: Sequence[tuple[float, Mapping[str, float]]], window_s: float = 1.0) -> dict[str, float]:
    """The most cores each name used over any ``window_s`` of ``samples`` (time, cumulative CPU seconds by name).

    Consecutive samples are paired with the first one at least ``window_s`` later; a step that
    lasted less than ``window_s`` is measured over its whole length.

    >>> peak_cores([(0.0, {"edge": 0.0}), (0.5, {"edge": 0.1}), (1.0, {"edge": 0.9}), (1.5, {"edge": 1.0})])
    {'edge': 0.9}
    """
    names = {name for _, used in samples for name in used}
    peaks = dict.fromkeys(sorted(names), 0.0)
    if len(samples) < 2:
        return peaks
    window_s = min(window_s, samples[-1][0] - samples[0][0])
    j = 0
    for i, (t0, used0) in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - t0 < window_s:
            j += 1
        if j == len(samples) or samples[j][0] <= t0:
            break
        t1, used1 = samples[j]
        for name in names:
            rate = (used1.get(name, 0.0) - used0.get(name, 0.0)) / (t1 - t0)
            peaks[name] = max(peaks[name], round(rate, 6))
    return peaks


def saturated(steps: pd.DataFrame, cpu: pd.DataFrame, found: Knee | None, *, cores: int,
              shares: Mapping[str, float] | None = None) -> Saturation | None:
    """Which component ran out first: the first step where one used ``NEAR_SHARE`` of its share of CPU.

    ``cpu`` has one row per step (same order as ``steps``) and a column of cores used per component
    (best its peak: :func:`peak_cores`), the load generator's (:data:`GENERATOR`: one event loop,
    a share of one core; when it saturates first the ramp measured the generator, not the
    platform) and the rest of the machine's (:data:`OTHER`). A component's share is
    ``shares[name]`` cores (default 1: the lab's processes are single-threaded, one per replica),
    never more than the machine's ``cores``. When none reaches its share by the knee but at the knee
    all the machine's cores are busy (``NEAR_MACHINE``), the machine saturated and the busiest platform
    component is named with ``machine`` evidence; failing both, the latency evidence: the edge,
    whose segment answers slowed down at the knee. None when there is no knee and nothing saturated.
    """
    last = found.step if found is not None else len(steps) - 1
    shares = shares or {}
    for i in range(last + 1):
        row = cpu.iloc[i].astype(float)
        viewers = int(steps.iloc[i]["viewers"])
        candidates = row.drop(labels=[OTHER], errors="ignore")
        for name, used in candidates.items():
            share = min(float(shares.get(str(name), 1.0)), cores)
            if used >= NEAR_SHARE * share:
                return Saturation(str(name), viewers, "cpu", f"{used:.2f} of its {share:g} core(s)", used / share)
        if i == last and found is not None and float(row.sum()) >= NEAR_MACHINE * cores:
            platform = _platform(cpu).iloc[i].astype(float)
            name = str(platform.idxmax())
            return Saturation(name, viewers, "machine",
                              f"all {cores} cores busy ({row.sum():.2f}: the load generator "
                              f"{row.get(GENERATOR, 0.0):.2f}, the rest of the machine {row.get(OTHER, 0.0):.2f}); "
                              f"{name} the busiest of the platform at {platform.max():.2f}", float(row.sum()) / cores)
    if found is None:
        return None
    ttfb = float(steps.iloc[found.step]["segment_ttfb_p95_s"])
    base = float(steps.iloc[0]["segment_ttfb_p95_s"])
    return Saturation("edge", found.viewers, "latency",
                      f"segment TTFB p95 {ttfb * 1000:.1f} ms against {base * 1000:.1f} ms at the first step",
                      ttfb / base if base > 0 else math.inf)


def per_core(steps: pd.DataFrame, cpu: pd.DataFrame, found: Knee | None) -> dict[str, float]:
    """Viewers per core and Gbit/s per core of the platform at the last step within the SLOs.

    NaN when even the first step broke an objective.
    """
    good = (found.step - 1) if found is not None else len(steps) - 1
    if good < 0:
        return {"viewers": math.nan, "platform_cores": math.nan, "egress_gbps": math.nan,
                "viewers_per_core": math.nan, "gbps_per_core": math.nan}
    cores = float(_platform(cpu).iloc[good].sum())
    viewers = float(steps.iloc[good]["viewers"])
    gbps = float(steps.iloc[good]["egress_gbps"])
    return {"viewers": viewers, "platform_cores": cores, "egress_gbps": gbps,
            "viewers_per_core": viewers / cores if cores > 0 else math.nan,
            "gbps_per_core": gbps / cores if cores > 0 else math.nan}


def table(steps: pd.DataFrame, cpu: pd.DataFrame, peak: pd.DataFrame, *, cores: int, slo: Slo = SLO,
          segment_s: float = 4.0, shares: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The capacity table: knee, capacity (last good step), viewers and Gbit/s per core, what saturated.

    ``cpu`` is the cores used on average over each step (per core figures), ``peak`` the most over
    any second of it (what saturated).
    """
    found = knee(steps, slo, segment_s=segment_s)
    who = saturated(steps, peak, found, cores=cores, shares=shares)
    return {
        "knee_viewers": found.viewers if found else None,
        "knee_breaches": list(found.breaches) if found else [],
        "capacity_viewers": found.last_good_viewers if found else int(steps.iloc[-1]["viewers"]),
        **{k: v for k, v in per_core(steps, cpu, found).items() if k in ("viewers_per_core", "gbps_per_core",
                                                                         "platform_cores")},
        "saturated": who.component if who else None,
        "saturated_at_viewers": who.viewers if who else None,
        "evidence": who.evidence if who else None,
        "detail": who.detail if who else None,
    }


def curve(steps: pd.DataFrame, cpu: pd.DataFrame, found: Knee | None = None, slo: Slo = SLO, *,
          heading: str = "Capacity curve") -> Figure:
    """Four panels against viewers: startup p95 and segment TTFB p95, rebuffering ratio, egress, CPU per component."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    x = steps["viewers"]
    (qoe, rebuf), (egress, cores) = axes
    qoe.plot(x, steps["startup_p95_s"], "o-", label="startup p95")
    qoe.plot(x, steps["segment_ttfb_p95_s"], "s--", label="segment TTFB p95")
    qoe.axhline(slo.startup_p95_s, color="red", lw=0.8, ls=":", label=f"startup SLO {slo.startup_p95_s:g} s")
    qoe.set_ylabel("seconds")
    qoe.legend(fontsize=8)
    rebuf.plot(x, steps["rebuffering_ratio"] * 100, "o-", label="rebuffering ratio")
    rebuf.plot(x, steps["error_ratio"] * 100, "x--", label="viewers failed")
    rebuf.axhline(slo.rebuffering_ratio * 100, color="red", lw=0.8, ls=":", label="SLO")
    rebuf.set_ylabel("%")
    rebuf.legend(fontsize=8)
    egress.plot(x, steps["egress_gbps"], "o-")
    egress.set_ylabel("egress, Gbit/s")
    egress.set_xlabel("viewers")
    bottom = [0.0] * len(cpu)
    for name in cpu.columns:
        values = list(cpu[name].astype(float))
        cores.fill_between(list(x), bottom, [b + v for b, v in zip(bottom, values, strict=True)], label=str(name),
                           alpha=0.7)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cores.set_ylabel("CPU, cores")
    cores.set_xlabel("viewers")
    cores.legend(fontsize=7, ncol=2)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if found is not None:
            ax.axvline(found.viewers, color="black", lw=1, ls="--")
    fig.suptitle(heading + (f" (knee at {found.viewers} viewers)" if found else " (no knee reached)"))
    return fig
