"""Prometheus queries into pandas DataFrames, with timeouts and errors that say what to do.

Example::

    prom = Prometheus("http://127.0.0.1:18090")
    prom.query("up")                                      # one row per series
    prom.query_range("rate(prometheus_http_requests_total[1m])", minutes=5)
    prom.targets()                                        # scrape targets and their health
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException

from labkit.core.errors import PrometheusError
from labkit.core.wait import until

DEFAULT_TIMEOUT = 10.0


class Prometheus:
    """A Prometheus HTTP API client whose answers are DataFrames."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = PrometheusConnect(url=self.url, disable_ssl=True, timeout=timeout)

    def query(self, promql: str) -> pd.DataFrame:
        """An instant query: one row per series, its labels as columns, plus ``timestamp`` and ``value``."""
        result = self._call(self._client.custom_query, promql)
        rows = []
        for series in result:
            ts, value = series["value"]
            rows.append({**series["metric"], "timestamp": _ts(ts), "value": float(value)})
        return pd.DataFrame(rows, columns=_columns(rows))

    def scalar(self, promql: str) -> float:
        """The value of an instant query that answers one series (a ``sum(...)``, a ratio of sums)."""
        found = self.query(promql)
        if len(found) != 1:
            raise PrometheusError(self.url, f"{promql!r} answered {len(found)} series, not one: aggregate it "
                                  "(sum, max ...), or add `or vector(0)` for a count that may be absent",
                                  retryable=False)
        return float(found["value"].iloc[0])

    def query_range(
        self,
        promql: str,
        *,
        minutes: float = 5.0,
        step: str = "5s",
        end: datetime | None = None,
    ) -> pd.DataFrame:
        """A range query over the last ``minutes``: long format, one row per (series, timestamp)."""
        end = end or datetime.now(UTC)
        start = end - timedelta(minutes=minutes)
        result = self._call(self._client.custom_query_range, promql, start_time=start, end_time=end, step=step)
        rows = []
        for series in result:
            for ts, value in series["values"]:
                rows.append({**series["metric"], "timestamp": _ts(ts), "value": float(value)})
        return pd.DataFrame(rows, columns=_columns(rows))

    def samples(self, selector: str, seconds: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """The raw samples of ``selector``'s series over the last ``seconds``: each series' labels and (epoch s, value).

        What was scraped, at the times it was scraped, with no step or lookback filling in between.
        """
        result = self._call(self._client.custom_query, f"{selector}[{max(1, round(seconds))}s]")
        return [({str(k): str(v) for k, v in series["metric"].items()},
                 [(float(ts), float(value)) for ts, value in series["values"]]) for series in result]

    def targets(self) -> pd.DataFrame:
        """Active scrape targets: job, instance, health, last error, last scrape."""
        data = self._call(self._client.get_targets)
        rows = [
            {
                "job": t["labels"].get("job", ""),
                "instance": t["labels"].get("instance", ""),
                "health": t.get("health", "unknown"),
                "last_error": t.get("lastError", ""),
                "last_scrape": t.get("lastScrape", ""),
            }
            for t in data.get("activeTargets", [])
        ]
        return pd.DataFrame(rows, columns=["job", "instance", "health", "last_error", "last_scrape"])

    def metric_names(self) -> set[str]:
        """The metrics Prometheus knows: those with samples, and those its targets declare (# TYPE) without any yet.

        A labelled counter nobody has incremented has no sample but is declared by its target.
        """
        with_samples = self._call(self._client.all_metrics)
        declared = self._call(self._client.get_metric_metadata, None)
        return {str(n) for n in with_samples} | {str(entry["metric_name"]) for entry in declared or []}

    def wait_for_targets(self, jobs: list[str], timeout: float = 60.0) -> pd.DataFrame:
        """Wait until every job in ``jobs`` has all its targets up; return :meth:`targets`."""
        frame = pd.DataFrame()

        def all_up() -> bool:
            nonlocal frame
            frame = self.targets()
            mine = frame[frame["job"].isin(jobs)]
            return set(mine["job"]) == set(jobs) and bool((mine["health"] == "up").all())

        until(all_up, timeout, 0.5, lambda: f"Prometheus targets {jobs} to be up (last seen:\n{frame.to_string()})")
        return frame

    def wait_for_samples(self, selector: str, *, by: str, count: int, groups: Collection[str] = (),
                         minutes: float = 5.0, step: str = "5s", timeout: float = 60.0) -> pd.DataFrame:
        """Wait until every series of ``selector`` (grouped by ``by``) holds ``count`` scraped samples.

        ``groups`` names the values of ``by`` that must all be there (a series that does not exist
        yet has no samples to count). Counts real samples with ``count_over_time``, not the points
        a range query would repeat between scrapes; returns the range at ``step``.
        """
        counts = pd.DataFrame()

        def enough() -> bool:
            nonlocal counts
            counts = self.query(f"count_over_time({selector}[{int(minutes * 60)}s])")
            return bool(not counts.empty and set(groups) <= set(counts[by])
                        and counts.groupby(by)["value"].min().min() >= count)

        until(enough, timeout, 1, lambda: f"{count} samples of {selector!r} per {by} (have:\n{counts.to_string()})")
        return self.query_range(selector, minutes=minutes, step=step)

    def wait_for_scrape_after(self, selector: str, after: float, *, by: str, groups: Collection[str],
                              timeout: float = 60.0) -> pd.Series:
        """Wait until every group of ``selector`` has a sample scraped after ``after`` (epoch seconds).

        A scrape's samples carry the time the scrape began, so a sample newer than the moment the
        last request ended counts that request: queries from then on see all of it. ``groups``
        names the values of ``by`` that must all be there. Returns the newest sample time of each
        group, epoch seconds.
        """
        newest = pd.Series(dtype=float)

        def scraped() -> bool:
            nonlocal newest
            frame = self.query(f"max by ({by}) (timestamp({selector}))")
            newest = frame.set_index(by)["value"] if not frame.empty else pd.Series(dtype=float)
            return set(groups) <= set(newest.index) and bool((newest.reindex(list(groups)) > after).all())

        until(scraped, timeout, 0.5, lambda: f"a scrape of {selector!r} per {by} after {after:.3f} "
              f"(newest samples:\n{newest.to_string()})")
        return newest

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except requests.exceptions.ConnectionError:
            raise PrometheusError(self.url, "cannot connect: is it running?") from None
        except requests.exceptions.Timeout:
            raise PrometheusError(self.url, f"no answer within {self.timeout:g} s") from None
        except PrometheusApiClientException as exc:
            # Prometheus answered, and refused: a bad query is the caller's to fix, not to retry.
            raise PrometheusError(self.url, f"refused the request: {exc}", retryable=False) from None


def _ts(value: Any) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(float(value), unit="s", tz="UTC")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    labels = sorted({k for row in rows for k in row} - {"timestamp", "value"})
    return [*labels, "timestamp", "value"]
