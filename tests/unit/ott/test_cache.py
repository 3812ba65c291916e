"""ott.cache.TtlCache: answers for at most ttl_s, holds at most max_entries, least recently used out first."""

from __future__ import annotations

import pytest

from ott.cache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_answered_until_its_ttl_then_forgotten() -> None:
    clock = Clock()
    cache = TtlCache[str, str](max_entries=4, ttl_s=5.0, clock=clock)
    assert cache.get("a") is None
    cache.put("a", "free")
    clock.now += 4.99
    assert cache.get("a") == "free"
    clock.now += 0.01
    assert cache.get("a") is None
    assert len(cache) == 0


def test_putting_again_restarts_the_ttl() -> None:
    clock = Clock()
    cache = TtlCache[str, str](max_entries=4, ttl_s=5.0, clock=clock)
    cache.put("a", "free")
    clock.now += 4
    cache.put("a", "basic")
    clock.now += 4
    assert cache.get("a") == "basic"


def test_the_least_recently_used_entry_goes_first_when_full() -> None:
    cache = TtlCache[str, int](max_entries=2, ttl_s=60.0, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(0, 5.0), (4, 0.0), (4, -1.0)])
def test_an_unbounded_cache_is_refused(max_entries: int, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="max_entries >= 1 and ttl_s > 0"):
        TtlCache[str, str](max_entries=max_entries, ttl_s=ttl_s)
