"""ABR rules: hls.js' EWMA throughput rule and BOLA-BASIC, pure functions of their inputs."""

from __future__ import annotations

import doctest
import math

import pytest

from labkit.traffic import abr

LADDER = [400, 700, 1500]


def test_doctests() -> None:
    result = doctest.testmod(abr)
    assert result.attempted >= 8 and result.failed == 0


def test_an_ewma_halves_its_distance_to_a_new_value_in_one_half_life() -> None:
    ewma = abr.Ewma(half_life_s=3)
    ewma.sample(10, 1000)
    ewma.sample(3, 2000)   # one half-life of weight at 2000
    assert ewma.estimate() == pytest.approx(1500, rel=0.05)
    with pytest.raises(ValueError, match="half-life"):
        abr.Ewma(0)


def test_the_estimate_starts_at_500_falls_fast_and_rises_slowly() -> None:
    estimator = abr.EwmaEstimator()
    assert estimator.estimate_kbps() == 500
    for _ in range(10):
        estimator.sample(download_s=1, nbytes=250_000)   # 2000 kbit/s
    assert estimator.estimate_kbps() == pytest.approx(2000, rel=0.01)
    estimator.sample(download_s=4, nbytes=200_000)   # 400 kbit/s for 4 s
    after_drop = estimator.estimate_kbps()
    assert after_drop < 1100                          # the fast average drags the minimum down at once
    estimator.sample(download_s=1, nbytes=1_000_000)  # one fast download: 8000 kbit/s
    assert estimator.estimate_kbps() < 3000           # the slow average holds the estimate back
    assert estimator.last_kbps == pytest.approx(8000)
    # A download shorter than 50 ms counts as 50 ms, and an empty one not at all.
    quick = abr.EwmaEstimator()
    quick.sample(download_s=0.0, nbytes=12_500)
    quick.sample(download_s=1.0, nbytes=0)
    assert quick.estimate_kbps() == pytest.approx(2000)


def test_the_throughput_rule_steps_down_when_the_estimate_falls() -> None:
    rule = abr.ThroughputRule()
    assert rule.choose(LADDER, current=2, estimate_kbps=1600, buffer_s=10, segment_s=4) == 2   # 1600×0.95 ≥ 1500
    assert rule.choose(LADDER, current=2, estimate_kbps=1500, buffer_s=10, segment_s=4) == 1   # 1425 < 1500
    assert rule.choose(LADDER, current=2, estimate_kbps=500, buffer_s=10, segment_s=4) == 0
    assert rule.choose(LADDER, current=1, estimate_kbps=100, buffer_s=10, segment_s=4) == 0    # nothing fits: lowest


def test_the_throughput_rule_steps_up_only_with_room() -> None:
    rule = abr.ThroughputRule()
    # From 700 to 1500 needs estimate × 0.7 ≥ 1500, i.e. 2143 kbit/s: between the two factors it stays.
    assert rule.choose(LADDER, current=1, estimate_kbps=2100, buffer_s=10, segment_s=4) == 1
    assert rule.choose(LADDER, current=1, estimate_kbps=2150, buffer_s=10, segment_s=4) == 2
    assert rule.choose(LADDER, current=0, estimate_kbps=1000, buffer_s=10, segment_s=4) == 1   # 700 ≤ 700
    # The first choice: the default estimate of 500 kbit/s gives the lowest rung of this ladder.
    assert rule.choose(LADDER, current=None, estimate_kbps=500, buffer_s=0, segment_s=4) == 0


def test_bola_picks_by_buffer_level() -> None:
    bola = abr.BolaRule(buffer_target_s=30)
    picks = [bola.choose(LADDER, current=0, estimate_kbps=10_000, buffer_s=q, segment_s=4) for q in range(4, 40, 2)]
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 2   # never down as the buffer grows
    assert 1 in picks
    # The throughput does not matter once playing; the buffer does.
    assert bola.choose(LADDER, current=2, estimate_kbps=100, buffer_s=35, segment_s=4) == 2
    assert bola.choose(LADDER, current=2, estimate_kbps=100_000, buffer_s=5, segment_s=4) == 0


def test_bola_parameters_follow_the_buffer_target() -> None:
    v, gamma_p = abr.BolaRule(buffer_target_s=30).parameters(LADDER)
    top_utility = math.log(1500 / 400)
    # The top rung's score reaches 0 past the target: BOLA would still fetch it at the buffer target.
    assert v * (top_utility + gamma_p) > 30
    # A bigger target stretches the decisions over a bigger buffer.
    low = abr.BolaRule(buffer_target_s=20)
    high = abr.BolaRule(buffer_target_s=60)
    first_top = {rule.buffer_target_s: next(q for q in range(4, 200) if rule.choose(
        LADDER, current=0, estimate_kbps=1e6, buffer_s=q, segment_s=4) == 2) for rule in (low, high)}
    assert first_top[20] < first_top[60]


def test_bola_starts_on_throughput_like_dashjs() -> None:
    bola = abr.BolaRule()
    assert bola.choose(LADDER, current=None, estimate_kbps=2000, buffer_s=0, segment_s=4) == 2    # 1800 ≥ 1500
    assert bola.choose(LADDER, current=None, estimate_kbps=1000, buffer_s=0, segment_s=4) == 1
    assert bola.choose(LADDER, current=2, estimate_kbps=500, buffer_s=2, segment_s=4) == 0        # < one segment


def test_rules_are_pure() -> None:
    for rule in (abr.ThroughputRule(), abr.BolaRule()):
        calls = [rule.choose(LADDER, current=1, estimate_kbps=900, buffer_s=12, segment_s=4) for _ in range(3)]
        assert len(set(calls)) == 1


def test_bad_ladders_and_names_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        abr.ThroughputRule().choose([], current=None, estimate_kbps=1, buffer_s=0, segment_s=4)
    with pytest.raises(ValueError, match="lowest first"):
        abr.BolaRule().choose([1500, 400], current=None, estimate_kbps=1, buffer_s=0, segment_s=4)
    with pytest.raises(ValueError, match="ewma, bola"):
        abr.rule("dynamic")
    assert abr.rule("bola", buffer_target_s=20) == abr.BolaRule(buffer_target_s=20)
