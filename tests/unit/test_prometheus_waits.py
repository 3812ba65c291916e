"""Prometheus.wait_for_scrape_after: notebook 01 waits for the scrape after its traffic, not a fixed sleep."""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.clients.prometheus import Prometheus
from labkit.core.errors import TimeoutExpired


def _scrapes(monkeypatch: pytest.MonkeyPatch, answers: list[dict[str, float]]) -> Prometheus:
    prom = Prometheus("http://127.0.0.1:1")
    frames = iter(answers)
    last: list[dict[str, float]] = [answers[-1]]

    def query(promql: str) -> pd.DataFrame:
        assert promql == "max by (service) (timestamp(ott_http_requests_total))"
        newest = next(frames, last[0])
        return pd.DataFrame([{"service": s, "timestamp": None, "value": t} for s, t in newest.items()])

    monkeypatch.setattr(prom, "query", query)
    return prom


def test_the_wait_for_a_scrape_ends_when_every_group_has_a_newer_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    prom = _scrapes(monkeypatch, [{"auth": 90.0}, {"auth": 101.0, "cas": 99.0}, {"auth": 101.0, "cas": 102.0}])
    newest = prom.wait_for_scrape_after("ott_http_requests_total", 100.0, by="service", groups=["auth", "cas"],
                                        timeout=10)
    assert newest.to_dict() == {"auth": 101.0, "cas": 102.0}


def test_the_wait_for_a_scrape_is_bounded_and_says_what_it_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    prom = _scrapes(monkeypatch, [{"auth": 101.0, "cas": 99.0}])
    with pytest.raises(TimeoutExpired) as caught:
        prom.wait_for_scrape_after("ott_http_requests_total", 100.0, by="service", groups=["auth", "cas"],
                                   timeout=0.2)
    assert "after 100.000" in str(caught.value) and "cas" in str(caught.value)
