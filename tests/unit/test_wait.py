"""labkit.core.wait.until: the one bounded wait, on an injected clock (no test here sleeps)."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import pytest

from labkit.core import wait
from labkit.core.errors import LabError, TimeoutExpired


class FakeClock:
    """Monotonic seconds that move only when the wait sleeps."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def answers(*values: object) -> Callable[[], object]:
    """A predicate returning ``values`` one per call, then the last one forever."""
    seen = list(values)
    return lambda: seen.pop(0) if len(seen) > 1 else seen[0]


def test_it_returns_the_first_true_value_and_paces_itself() -> None:
    clock = FakeClock()
    value = wait.until(answers(None, 0, "", {"up": 1}), timeout=10, interval=0.5, what="x",
                       clock=clock.now, sleep=clock.sleep)
    assert value == {"up": 1}
    assert clock.sleeps == [0.5, 0.5, 0.5]  # one pause between looks, none after the answer


def test_an_answer_at_once_costs_no_pause() -> None:
    clock = FakeClock()
    assert wait.until(lambda: 7, timeout=0, what="x", clock=clock.now, sleep=clock.sleep) == 7
    assert clock.sleeps == []


def test_it_raises_naming_what_never_happened_after_a_last_look_at_the_deadline() -> None:
    clock = FakeClock()
    looks: list[float] = []

    def never() -> bool:
        looks.append(clock.t)
        return False

    expected = r"timed out after 1 s waiting for the origin to answer\n  -> run it"
    with pytest.raises(TimeoutExpired, match=expected) as caught:
        wait.until(never, timeout=1, interval=0.4, what="the origin to answer", hint="run it",
                   clock=clock.now, sleep=clock.sleep)
    assert clock.sleeps == pytest.approx([0.4, 0.4, 0.2])  # the last pause ends on the deadline
    assert looks == pytest.approx([100.0, 100.4, 100.8, 101.0])
    assert caught.value.what == "the origin to answer" and caught.value.seconds == 1
    assert caught.value.retryable and isinstance(caught.value, LabError)


def test_what_may_be_computed_at_the_timeout_from_the_last_thing_seen() -> None:
    clock = FakeClock()
    seen: list[int] = []

    def grows() -> bool:
        seen.append(len(seen))
        return False

    with pytest.raises(TimeoutExpired, match=r"3 samples \(last seen: 2\)"):
        wait.until(grows, 1, 0.5, lambda: f"3 samples (last seen: {seen[-1]})", clock=clock.now, sleep=clock.sleep)


def test_ignored_errors_mean_not_yet_and_the_last_one_is_the_cause() -> None:
    clock = FakeClock()
    calls: list[Exception | str] = [ConnectionRefusedError("refused"), ConnectionResetError("reset"), "up"]

    def probe() -> str:
        item = calls.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert wait.until(probe, 5, 0.1, "x", ignoring=(ConnectionError,), clock=clock.now, sleep=clock.sleep) == "up"

    def refused() -> bool:
        raise ConnectionRefusedError("refused")

    with pytest.raises(TimeoutExpired, match=r"waiting for the port \(last error: ConnectionRefusedError") as caught:
        wait.until(refused, 0.2, 0.1, "the port", ignoring=(OSError,), clock=clock.now, sleep=clock.sleep)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_any_other_error_ends_the_wait_at_once() -> None:
    clock = FakeClock()

    def exited() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait.until(exited, 60, 1, "x", ignoring=(OSError,), clock=clock.now, sleep=clock.sleep)
    assert clock.sleeps == []


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout and interval"):
        wait.until(lambda: True, -1)
    with pytest.raises(ValueError, match="timeout and interval"):
        wait.until(lambda: True, 1, -0.1)


def test_the_examples_in_its_docstrings_run() -> None:
    result = doctest.testmod(wait, raise_on_error=False)
    assert result.attempted >= 3 and result.failed == 0
