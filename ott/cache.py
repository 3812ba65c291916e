"""A small in-process cache bounded in size and in time, for answers a service may reuse briefly.

    tiers = TtlCache[str, str](max_entries=1024, ttl_s=5.0)
    tier = tiers.get(title_id)
    if tier is None:
        tier = await ask_the_catalog(title_id)
        tiers.put(title_id, tier)

An entry is answered for at most ``ttl_s`` seconds after it was put, then asked for again; past
``max_entries`` the least recently used entry is dropped. Only successful answers belong in it:
a refusal or a failure is never kept, so it is asked for again on the next call. The clock is
injectable, so tests move time instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most ``max_entries`` values, each answered for ``ttl_s`` seconds after it was put."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError(f"a cache needs max_entries >= 1 and ttl_s > 0, not {max_entries} and {ttl_s}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value put for ``key`` less than ``ttl_s`` ago, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key`` for ``ttl_s`` seconds from now (the oldest entry goes when full)."""
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
