"""QoE maths: what viewers experienced, from the players' own events and from what the edge saw.

Three views of the same sessions, in the CTA-2066 vocabulary (video startup time, rebuffering
ratio, exits before video start, video start and playback failures, time-weighted bitrate):

* **the player's**: :func:`beacon_events` turns a browser's beacon events (QoE beacon version 1)
  into the events frame the viewer simulator returns, :func:`sessions` reduces such a frame to one
  row per session, and :func:`summary` reduces sessions to the audience's figures::

      per_session = qoe.sessions(audience.events)      # or audience.sessions, already reduced
      qoe.summary(audience.sessions)                   # {"startup_p50_s": 0.41, "rebuffering_ratio": 0.0, ...}

* **the edge's**, from CMCD (CTA-5004): every media request carries the player's session id
  (``sid``), the bitrate it chose (``br``), the object's duration (``d``), ``su`` while it starts
  and ``bs`` after its buffer ran dry. :func:`edge_requests` reads a PoP's access log (or a
  simulator's requests) and :func:`edge_sessions` estimates each session's QoE from it::

      edge = qoe.edge_sessions(qoe.edge_requests(cdn.access_log(target, 0)))
      table = qoe.compare(per_session, edge)           # one row per session seen by both
      assert qoe.disagreements(table, startup_s=0.5, bitrate_ratio=0.2).empty

* **the collector's**, from Prometheus: :func:`collector_totals` reads the ``ott_qoe_*`` counters
  and histograms once before and once after a run, and :func:`collector_qoe` turns the difference
  into the same figures (counter differences, not ``increase()``, so series born during the run
  count from zero). :func:`promql` gives the windowed queries a dashboard draws.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ott import cmcd

if TYPE_CHECKING:
    from labkit.clients.prometheus import Prometheus

# The columns every sessions frame has (what :func:`sessions` returns) and every events frame has (a
# beacon's millisecond fields become seconds). They are the contract, not the limit: a producer may
# extend them and every function here reads only the columns it names, so extra ones are kept or
# ignored. labkit.traffic.audience, for one, builds its own lists from these:
#     SESSION_COLUMNS = [*qoe.SESSION_COLUMNS, "pop", "user", "rule"]
#     EVENT_COLUMNS = [*qoe.EVENT_COLUMNS, "detail"]
# Extend a copy, never these lists in place (other frames are built from them).
SESSION_COLUMNS = ["viewer", "session", "started", "startup_s", "stalls", "stalled_s", "played_s",
                   "rebuffering_ratio", "bitrate_kbps", "switches", "failure", "exit"]
EVENT_COLUMNS = ["viewer", "session", "t_s", "type", "startup_s", "duration_s", "from_kbps", "to_kbps",
                 "reason", "fatal", "played_s", "stalled_s", "bitrate_kbps", "started"]
_MILLISECONDS = {"t_ms": "t_s", "startup_ms": "startup_s", "duration_ms": "duration_s", "played_ms": "played_s",
                 "stalled_ms": "stalled_s"}
# CMCD object types that are media (not manifest, init, key, captions or other).
MEDIA_OBJECT_TYPES = frozenset({"v", "a", "av"})
EDGE_REQUEST_COLUMNS = ["pop", "path", "status", "started", "ended", "sid", "cid", "ot", "br", "d", "bl", "bs",
                        "su", "mtp", "cmcd_error"]
EDGE_SESSION_COLUMNS = ["session", "pop", "content", "requests", "errors", "startup_s", "rebuffers",
                        "bitrate_kbps", "media_s"]


# -- the player's view ---------------------------------------------------------------------------


def beacon_events(events: Iterable[Mapping[str, Any]], *, session: str = "", viewer: int | str = 0) -> pd.DataFrame:
    """A browser's beacon events (``{"type": "start", "t_ms": 812, "startup_ms": 812, ...}``) as an events frame.

    Milliseconds become seconds (``t_ms`` → ``t_s``, ``startup_ms`` → ``startup_s``, ...); every row
    gets ``session`` and ``viewer``. The result has :data:`EVENT_COLUMNS` (missing fields are NaN)
    and any other field the events carry (``dropped_frames``, ``detail``).

    >>> beacon_events([{"type": "play", "t_ms": 0}, {"type": "start", "t_ms": 900, "startup_ms": 900,
    ...                 "bitrate_kbps": 700}], session="s1")[["session", "t_s", "type", "startup_s"]]
      session  t_s   type  startup_s
    0      s1  0.0   play        NaN
    1      s1  0.9  start        0.9
    """
    rows = []
    for event in events:
        row: dict[str, Any] = {"viewer": viewer, "session": session}
        for key, value in event.items():
            if key in _MILLISECONDS:
                row[_MILLISECONDS[key]] = None if value is None else float(value) / 1000
            else:
                row[key] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in EVENT_COLUMNS]
    return frame.reindex(columns=[*EVENT_COLUMNS, *extra])


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series(np.nan, index=frame.index, dtype=float)


def _session_row(key: tuple[Hashable, ...], group: pd.DataFrame) -> dict[str, Any]:
    viewer, session = key
    group = group.sort_values("t_s", kind="stable")
    kinds = group["type"]
    start = group[kinds == "start"]
    started = not start.empty
    startup_s = float(start["startup_s"].iloc[0]) if started else math.nan
    stall_events = group[kinds == "stall"]
    progress = group[kinds == "progress"]
    end = group[kinds == "end"]
    ended = end.iloc[-1] if not end.empty else None
    # The end event carries the session's totals; without one (a session still running, or lost),
    # the sums of its progress and stall events are what is known.
    played = _column(progress, "played_s").fillna(0)
    played_s = float(played.sum())
    stalled_s = float(_column(stall_events, "duration_s").fillna(0).sum())
    if ended is not None:
        played_s = _number(ended.get("played_s"), played_s)
        stalled_s = _number(ended.get("stalled_s"), stalled_s)
        flag = ended.get("started")
        started = started or (isinstance(flag, (bool, np.bool_)) and bool(flag))
    rates = _column(progress, "bitrate_kbps")
    weighted = played[rates.notna()]
    if weighted.sum() > 0:
        bitrate = float((rates[rates.notna()] * weighted).sum() / weighted.sum())
    elif started:
        bitrate = _number(_column(start, "bitrate_kbps").iloc[0] if not start.empty else None, math.nan)
    else:
        bitrate = math.nan
    fatal = group[(kinds == "error") & _column(group, "fatal").eq(True)]
    return {
        "viewer": viewer, "session": session, "started": started, "startup_s": startup_s,
        "stalls": len(stall_events), "stalled_s": stalled_s, "played_s": played_s,
        "rebuffering_ratio": rebuffering_ratio(stalled_s, played_s) if started else math.nan,
        "bitrate_kbps": bitrate, "switches": int((kinds == "switch").sum()),
        "failure": str(fatal["reason"].iloc[0]) if not fatal.empty else "",
        "exit": str(ended["reason"]) if ended is not None and isinstance(ended.get("reason"), str) else "",
    }


def _number(value: object, default: float) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return default
    return default if math.isnan(float(value)) else float(value)


def rebuffering_ratio(stalled_s: float, played_s: float) -> float:
    """Stalled time over stalled plus playing time (0 when there was neither).

    >>> rebuffering_ratio(1.0, 99.0)
    0.01
    """
    total = stalled_s + played_s
    return stalled_s / total if total > 0 else 0.0


def sessions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per session (:data:`SESSION_COLUMNS`) from an events frame (:data:`EVENT_COLUMNS`).

    * ``startup_s`` is the ``start`` event's (from the play request to the first frame with the
      playhead moving); ``started`` whether there was one (or the ``end`` event says so);
    * ``played_s`` and ``stalled_s`` are the ``end`` event's totals, or else the sums of the
      ``progress`` played time and the ``stall`` durations; ``stalls`` counts stall events (they
      are rebufferings after start: a slow start is startup time, not a stall);
    * ``bitrate_kbps`` is the time-weighted mean of the progress events' bitrates (weights: the
      time played at each), or the start's rung when no progress was reported;
    * ``failure`` is the reason of the first fatal error ("" without one); ``exit`` the end's reason.
    """
    if events.empty:
        return pd.DataFrame(columns=SESSION_COLUMNS)
    frame = events.copy()
    if "viewer" not in frame.columns:
        frame["viewer"] = 0
    rows = [_session_row(key, group) for key, group in frame.groupby(["viewer", "session"], sort=True)]
    return pd.DataFrame(rows, columns=SESSION_COLUMNS)


# Figures two accounts of one session must share exactly, and those they may differ in by a rounding.
_EXACT = ("started", "stalls", "switches", "failure", "exit")
_SECONDS = ("startup_s", "stalled_s", "played_s")


def mismatches(expected: pd.DataFrame, actual: pd.DataFrame, *, seconds: float = 0.01,
               bitrate_ratio: float = 0.01) -> pd.DataFrame:
    """The sessions two sessions frames tell differently (empty when they agree), side by side.

    For instance the simulator's own figures against :func:`sessions` of the events it sent:
    ``mismatches(audience.sessions, qoe.sessions(audience.events))``. Sessions are matched by
    ``session``; one missing from either frame is a mismatch. ``started``, ``stalls``,
    ``switches``, ``failure`` and ``exit`` must be equal, the times within ``seconds`` and the
    bitrates within ``bitrate_ratio`` (relative); NaN matches only NaN. The answer has both
    frames' :data:`SESSION_COLUMNS` (suffixes ``_expected`` and ``_actual``) and ``differs``: the
    columns that disagree.

    >>> a = pd.DataFrame({"session": ["s1", "s2"], "started": [True, True], "startup_s": [0.5, 0.7],
    ...                   "bitrate_kbps": [700.0, 1500.0]})
    >>> mismatches(a, a.assign(startup_s=[0.5, 0.9]))[["session", "differs"]]
      session    differs
    0      s2  startup_s
    """
    columns = [c for c in SESSION_COLUMNS if c != "session" and c in expected.columns and c in actual.columns]
    table = expected.set_index("session")[columns].add_suffix("_expected").join(
        actual.set_index("session")[columns].add_suffix("_actual"), how="outer")
    differs = pd.Series("", index=table.index, dtype=object)
    missing = table.index.difference(pd.Index(expected["session"])).union(
        table.index.difference(pd.Index(actual["session"])))
    differs[missing] = "session"
    for column in columns:
        left, right = table[f"{column}_expected"], table[f"{column}_actual"]
        both_nan = left.isna() & right.isna()
        if column in _SECONDS:
            same = both_nan | ((left.astype(float) - right.astype(float)).abs() <= seconds)
        elif column == "bitrate_kbps":
            same = both_nan | ((left.astype(float) - right.astype(float)).abs() <= bitrate_ratio * left.astype(float))
        elif column in _EXACT:
            same = both_nan | (left == right)
        else:
            continue
        wrong = ~same & ~table.index.isin(missing)
        differs[wrong] = (differs[wrong] + " " + column).str.strip()
    return table.assign(differs=differs)[differs != ""].rename_axis("session").reset_index()


def startup_quantiles(startup_s: Iterable[float], quantiles: Sequence[float] = (0.5, 0.95), *,
                      method: str = "linear") -> dict[float, float]:
    """Quantiles of the startup times (NaN ignored; NaN for an empty set).

    ``method`` is numpy's: ``"linear"`` interpolates between two observations (pandas' default);
    ``"inverted_cdf"`` answers the observation itself, the smallest with at least ``q`` of them at or
    below it: the one whose bucket a Prometheus histogram interpolates in (see :func:`within_buckets`).

    >>> startup_quantiles([1.0, 2.0, 3.0, 4.0, 5.0])
    {0.5: 3.0, 0.95: 4.8}
    >>> startup_quantiles([0.1, 0.2, 2.0, 2.1], [0.5], method="inverted_cdf")
    {0.5: 0.2}
    """
    values = np.asarray([v for v in startup_s if v is not None and not math.isnan(float(v))], dtype=float)
    if values.size == 0:
        return {q: math.nan for q in quantiles}
    return {q: round(float(np.quantile(values, q, method=method)), 9) for q in quantiles}  # type: ignore[call-overload]


def summary(sessions: pd.DataFrame) -> dict[str, float | int]:
    """The audience's QoE from a sessions frame: one plain Python number per key.

    A figure that does not exist (the startup quantiles or the bitrate of an audience that never
    started) is NaN, which strict JSON has not: map it to ``None`` before ``json.dumps`` (as
    :meth:`labkit.traffic.audience.Audience.summary` does). The keys and that convention are stable.

    * ``attempts`` (sessions), ``started``; ``startup_p50_s`` / ``startup_p95_s`` over started sessions;
    * ``rebuffering_ratio``: all stalled time / (stalled + played time) of the started sessions;
    * ``bitrate_kbps``: the mean rung weighted by time played (CTA-2066's time-weighted bitrate);
    * ``switches_per_minute`` of play; ``stalls``, ``stalls_per_minute``;
    * ``video_start_failures`` (fatal before start), ``exits_before_start`` (left before start, no
      failure) and their rates over attempts; ``playback_failures`` (fatal after start) and its
      rate over the started sessions.
    """
    attempts = len(sessions)
    started = sessions[sessions["started"].astype(bool)] if attempts else sessions
    played = float(started["played_s"].fillna(0).sum()) if len(started) else 0.0
    stalled = float(started["stalled_s"].fillna(0).sum()) if len(started) else 0.0
    failed = sessions["failure"].fillna("").astype(str) != "" if attempts else pd.Series(dtype=bool)
    is_started = sessions["started"].astype(bool) if attempts else pd.Series(dtype=bool)
    vsf = int((failed & ~is_started).sum())
    vpf = int((failed & is_started).sum())
    ebvs = int(((sessions["exit"] == "exit") & ~is_started & ~failed).sum()) if attempts else 0
    rates = started["bitrate_kbps"] if len(started) else pd.Series(dtype=float)
    weights = started["played_s"].fillna(0) if len(started) else pd.Series(dtype=float)
    known = rates.notna() & (weights > 0)
    bitrate = float((rates[known] * weights[known]).sum() / weights[known].sum()) if known.any() else math.nan
    quantiles = startup_quantiles(started["startup_s"] if len(started) else [])
    stalls = int(started["stalls"].sum()) if len(started) else 0
    minutes = played / 60
    return {
        "attempts": attempts,
        "started": len(started),
        "startup_p50_s": quantiles[0.5],
        "startup_p95_s": quantiles[0.95],
        "rebuffering_ratio": rebuffering_ratio(stalled, played),
        "stalls": stalls,
        "stalls_per_minute": stalls / minutes if minutes > 0 else 0.0,
        "played_s": played,
        "stalled_s": stalled,
        "bitrate_kbps": bitrate,
        "switches": int(started["switches"].sum()) if len(started) else 0,
        "switches_per_minute": float(started["switches"].sum()) / minutes if minutes > 0 else 0.0,
        "video_start_failures": vsf,
        "video_start_failure_rate": vsf / attempts if attempts else 0.0,
        "exits_before_start": ebvs,
        "exit_before_start_rate": ebvs / attempts if attempts else 0.0,
        "playback_failures": vpf,
        "playback_failure_rate": vpf / len(started) if len(started) else 0.0,
    }


def rung_shares(timeline: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame | pd.Series:
    """Share of play time per rung (``bitrate_kbps``), from a timeline of segment decisions.

    Each row of the simulator's ``timeline`` is one segment chosen, and segments have one length,
    so the share of rows per rung is the share of media time. With ``seconds`` in the frame, rows
    are weighted by it instead. ``by`` (a column, e.g. an experiment name) gives one column of
    shares per value. Rungs are sorted from the lowest.

    >>> rung_shares(pd.DataFrame({"bitrate_kbps": [400, 700, 700, 1500]})).to_dict()
    {400: 0.25, 700: 0.5, 1500: 0.25}
    """
    weights = timeline["seconds"] if "seconds" in timeline.columns else pd.Series(1.0, index=timeline.index)
    frame = pd.DataFrame({"rung": timeline["bitrate_kbps"], "weight": weights})
    if by is None:
        totals = frame.groupby("rung")["weight"].sum().sort_index()
        shares = totals / totals.sum() if totals.sum() > 0 else totals
        return shares.rename_axis("bitrate_kbps").rename("share")
    frame[by] = timeline[by]
    table = frame.pivot_table(index="rung", columns=by, values="weight", aggfunc="sum", fill_value=0).sort_index()
    return (table / table.sum()).rename_axis("bitrate_kbps")


# -- the edge's view, from CMCD -------------------------------------------------------------------


def _cmcd_row(data: cmcd.Cmcd | None, error: str) -> dict[str, Any]:
    if data is None:
        return {"sid": None, "cid": None, "ot": None, "br": math.nan, "d": math.nan, "bl": math.nan,
                "bs": False, "su": False, "mtp": math.nan, "cmcd_error": error}
    return {"sid": data.sid, "cid": data.cid, "ot": data.ot, "br": _or_nan(data.br), "d": _or_nan(data.d),
            "bl": _or_nan(data.bl), "bs": data.starved, "su": data.startup, "mtp": _or_nan(data.mtp),
            "cmcd_error": error}


def _or_nan(value: int | None) -> float:
    return math.nan if value is None else float(value)


def edge_requests(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A PoP's access-log records (:func:`labkit.clients.pops.access_log`) as one row per request with its CMCD.

    ``started`` and ``ended`` are epoch seconds: nginx logs ``msec`` when the response ends and
    ``request_time`` since the request's first byte. The CMCD payload comes from the ``CMCD``
    query argument and the four CMCD headers (:func:`ott.cmcd.from_request`); a payload that is
    not CMCD leaves the CMCD columns empty and says why in ``cmcd_error``.
    """
    rows = []
    for record in records:
        headers = {"CMCD-Request": str(record.get("cmcd_request") or ""),
                   "CMCD-Object": str(record.get("cmcd_object") or ""),
                   "CMCD-Status": str(record.get("cmcd_status") or ""),
                   "CMCD-Session": str(record.get("cmcd_session") or "")}
        try:
            data, error = cmcd.from_request(str(record.get("cmcd") or ""), headers), ""
        except cmcd.CmcdError as exc:
            data, error = None, str(exc)
        ended = float(record.get("msec") or 0)
        rows.append({"pop": record.get("pop", ""), "path": record.get("path", ""),
                     "status": int(record.get("status") or 0),
                     "started": ended - float(record.get("request_time") or 0), "ended": ended,
                     **_cmcd_row(data, error)})
    return pd.DataFrame(rows, columns=EDGE_REQUEST_COLUMNS)


def cmcd_requests(requests: pd.DataFrame) -> pd.DataFrame:
    """A viewer's own requests (the simulator's ``requests``: ``started``, ``seconds``, decoded ``cmcd``)
    in the shape of :func:`edge_requests`, so :func:`edge_sessions` can read what the viewers sent."""
    rows = []
    for record in requests.to_dict("records"):
        payload = str(record.get("cmcd") or "")
        try:
            data, error = (cmcd.parse(payload) if payload else None), ""
        except cmcd.CmcdError as exc:
            data, error = None, str(exc)
        started = record["started"]
        started_s = started.timestamp() if isinstance(started, pd.Timestamp) else float(started)
        rows.append({"pop": record.get("pop", ""), "path": record.get("path", ""),
                     "status": int(record.get("status") or 0), "started": started_s,
                     "ended": started_s + float(record.get("seconds") or 0), **_cmcd_row(data, error)})
    return pd.DataFrame(rows, columns=EDGE_REQUEST_COLUMNS)


def _edge_session(sid: str, group: pd.DataFrame) -> dict[str, Any]:
    group = group.sort_values("started", kind="stable")
    manifests = group[group["ot"] == "m"]
    media = group[group["ot"].isin(MEDIA_OBJECT_TYPES) & (group["status"] < 400)]
    first = float((manifests if not manifests.empty else group)["started"].iloc[0])
    starting = media[media["su"].astype(bool)]
    first_media = starting if not starting.empty else media
    startup = float(first_media["ended"].iloc[0]) - first if not first_media.empty else math.nan
    weighted = media[media["br"].notna() & media["d"].notna()]
    duration = float(weighted["d"].sum())
    bitrate = float((weighted["br"] * weighted["d"]).sum() / duration) if duration > 0 else math.nan
    contents = group["cid"].dropna()
    return {"session": sid, "pop": str(group["pop"].iloc[0]), "content": str(contents.iloc[0]) if len(contents) else "",
            "requests": len(group), "errors": int((group["status"] >= 400).sum()), "startup_s": startup,
            "rebuffers": int(group["bs"].astype(bool).sum()), "bitrate_kbps": bitrate, "media_s": duration / 1000}


def edge_sessions(requests: pd.DataFrame) -> pd.DataFrame:
    """Each CMCD session's QoE as the edge can estimate it (:data:`EDGE_SESSION_COLUMNS`).

    Grouped by ``sid``; requests without one are left out.

    * ``startup_s``: from the start of the session's first manifest request to the end of its
      first media request (``ot`` v, a or av) sent with ``su`` (startup); the player can show a
      frame once that segment is in. It misses what happens before the first request (the
      authorisation) and after the last byte (decoding), so it is a little less than the player's;
    * ``rebuffers``: requests with ``bs`` (buffer starvation since the previous request);
    * ``bitrate_kbps``: the media requests' ``br`` weighted by their duration ``d``: the mean
      bitrate of what was downloaded (including what was buffered and not yet played);
    * ``media_s``: seconds of media downloaded; ``errors``: responses with status 400 and above.
    """
    known = requests[requests["sid"].notna() & (requests["sid"] != "")]
    rows = [_edge_session(str(sid), group) for sid, group in known.groupby("sid", sort=True)]
    return pd.DataFrame(rows, columns=EDGE_SESSION_COLUMNS)


def compare(player: pd.DataFrame, edge: pd.DataFrame) -> pd.DataFrame:
    """Player-reported QoE (a sessions frame) beside the edge's estimate (:func:`edge_sessions`), per session.

    Only sessions both know. ``startup_gap_s`` is the player's startup minus the edge's (the time
    the edge cannot see: authorisation, decoding), ``bitrate_ratio`` the edge's bitrate over the
    player's.
    """
    left = player.set_index("session")[["startup_s", "stalls", "bitrate_kbps"]]
    right = edge.set_index("session")[["pop", "startup_s", "rebuffers", "bitrate_kbps"]]
    table = left.join(right.add_suffix("_edge"), how="inner").rename(columns={
        "startup_s": "startup_s_player", "bitrate_kbps": "bitrate_kbps_player", "stalls": "stalls_player",
        "pop_edge": "pop"})
    table["startup_gap_s"] = table["startup_s_player"] - table["startup_s_edge"]
    table["bitrate_ratio"] = table["bitrate_kbps_edge"] / table["bitrate_kbps_player"]
    columns = ["pop", "startup_s_player", "startup_s_edge", "startup_gap_s", "stalls_player", "rebuffers_edge",
               "bitrate_kbps_player", "bitrate_kbps_edge", "bitrate_ratio"]
    return table[columns].rename_axis("session").reset_index()


def disagreements(comparison: pd.DataFrame, *, startup_s: float, bitrate_ratio: float,
                  stalls: int = 0) -> pd.DataFrame:
    """The rows of :func:`compare` where the two views differ by more than the tolerances.

    ``startup_s``: the most the startup times may differ, either way; ``bitrate_ratio``: the most
    the edge's bitrate may differ from the player's, relative (0.2 = 20 %); ``stalls``: the most
    the stall counts may differ. An empty frame means they agree.
    """
    startup = (comparison["startup_gap_s"].abs() > startup_s) | comparison["startup_gap_s"].isna()
    bitrate = ((comparison["bitrate_ratio"] - 1).abs() > bitrate_ratio) | comparison["bitrate_ratio"].isna()
    stall = (comparison["stalls_player"] - comparison["rebuffers_edge"]).abs() > stalls
    return comparison[startup | bitrate | stall]


# -- the collector's view, from Prometheus --------------------------------------------------------

# Counter totals of the QoE collector, by the name :class:`CollectorTotals` keeps them under.
COUNTERS = {
    "plays": "ott_qoe_plays_total",
    "played_s": "ott_qoe_played_seconds_total",
    "stalls": "ott_qoe_stalls_total",
    "stalled_s": "ott_qoe_stalled_seconds_total",
    "bitrate_kbit": "ott_qoe_bitrate_kbit_total",
    "switches": "ott_qoe_switches_total",
    "dropped_frames": "ott_qoe_dropped_frames_total",
    "exits_before_start": "ott_qoe_exits_before_start_total",
    "video_start_failures": "ott_qoe_start_failures_total",
    "playback_failures": "ott_qoe_playback_failures_total",
    "errors": "ott_qoe_errors_total",
    "ended": "ott_qoe_rebuffering_ratio_count",
    "starts": "ott_qoe_startup_seconds_count",
}
STARTUP_HISTOGRAM = "ott_qoe_startup_seconds"


@dataclass(frozen=True)
class CollectorTotals:
    """The collector's counters (summed over the matching series) and startup buckets at one moment."""

    counters: dict[str, float]
    startup_buckets: dict[float, float] = field(default_factory=dict)  # upper bound (le) -> cumulative count

    def __sub__(self, other: CollectorTotals) -> CollectorTotals:
        return CollectorTotals(
            {k: v - other.counters.get(k, 0.0) for k, v in self.counters.items()},
            {le: n - other.startup_buckets.get(le, 0.0) for le, n in self.startup_buckets.items()})


def selector(**labels: str | None) -> str:
    """A PromQL label selector from the labels given (``None`` leaves one out).

    >>> selector(title="lab-clock-qoe", client="simulator", pop=None)
    '{title="lab-clock-qoe",client="simulator"}'
    """
    shown = [f'{name}="{value}"' for name, value in labels.items() if value is not None]
    return "{" + ",".join(shown) + "}"


def collector_totals(prom: Prometheus, *, title: str | None = None, client: str | None = None,
                     pop: str | None = None) -> CollectorTotals:
    """The collector's totals for the series matching ``title``, ``client`` and ``pop`` (any when ``None``).

    Series that do not exist yet count 0. Take one before and one after a run:
    ``collector_qoe(collector_totals(...) - before)``.
    """
    labels = selector(title=title, client=client, pop=pop)
    counters = {}
    for name, metric in COUNTERS.items():
        frame = prom.query(f"sum({metric}{labels})")
        counters[name] = float(frame["value"].iloc[0]) if not frame.empty else 0.0
    buckets = prom.query(f"sum by (le)({STARTUP_HISTOGRAM}_bucket{labels})")
    startup = {float(le): float(v) for le, v in zip(buckets.get("le", []), buckets.get("value", []), strict=True)}
    return CollectorTotals(counters, startup)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts (upper bound ``le`` → count).

    Linear interpolation within the bucket holding the rank; the first bucket starts at 0; a rank
    in the ``+Inf`` bucket answers the highest finite bound. NaN without observations.

    >>> histogram_quantile(0.5, {0.5: 0, 1.0: 10, 2.0: 20, math.inf: 20})
    1.0
    >>> histogram_quantile(0.75, {0.5: 0, 1.0: 10, 2.0: 20, math.inf: 20})
    1.5
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets.items())
    if len(bounds) < 2 or not math.isinf(bounds[-1][0]) or bounds[-1][1] <= 0:
        return math.nan
    rank = q * bounds[-1][1]
    index = next(i for i, (_, count) in enumerate(bounds) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2][0]
    upper, count = bounds[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = bounds[index - 1]
    inside = count - below
    return upper if inside <= 0 else lower + (upper - lower) * (rank - below) / inside


def within_buckets(estimate: float, exact: float, bounds: Iterable[float], *, neighbours: int = 1) -> bool:
    """Whether a histogram's ``estimate`` of a quantile is as close to the ``exact`` one as its buckets allow.

    ``bounds`` are the histogram's upper bounds (``le``). The two values must fall in the same
    bucket, or ``neighbours`` buckets apart at most. ``histogram_quantile`` interpolates inside the
    bucket holding the observation of rank ``q × count``: compared with that observation
    (:func:`startup_quantiles` with ``method="inverted_cdf"``) they share a bucket, ``neighbours=0``;
    an interpolated exact quantile may lie across a bound from it.

    >>> within_buckets(0.31, 0.27, [0.1, 0.25, 0.5, 1.0]), within_buckets(0.9, 0.2, [0.1, 0.25, 0.5, 1.0])
    (True, False)
    """
    edges = sorted(b for b in bounds if not math.isinf(b))
    if math.isnan(estimate) or math.isnan(exact):
        return False

    def bucket(value: float) -> int:
        # A quantile in the bucket's top is its upper bound, give or take a rounding error.
        return next((i for i, edge in enumerate(edges) if value <= edge + 1e-9 * max(1.0, abs(edge))), len(edges))

    return abs(bucket(estimate) - bucket(exact)) <= neighbours


def collector_qoe(totals: CollectorTotals) -> dict[str, float]:
    """The audience's QoE from the collector's totals (usually the difference of two :func:`collector_totals`).

    Startup quantiles come from the histogram's buckets (so they are only as fine as the buckets),
    the time-weighted bitrate is ``bitrate_kbit / played_s`` and the rebuffering ratio
    ``stalled_s / (stalled_s + played_s)``.
    """
    c = totals.counters
    played, stalled = c.get("played_s", 0.0), c.get("stalled_s", 0.0)
    minutes = played / 60
    return {
        "plays": c.get("plays", 0.0),
        "started": c.get("starts", 0.0),
        "ended": c.get("ended", 0.0),
        "startup_p50_s": histogram_quantile(0.5, totals.startup_buckets),
        "startup_p95_s": histogram_quantile(0.95, totals.startup_buckets),
        "rebuffering_ratio": rebuffering_ratio(stalled, played),
        "stalls": c.get("stalls", 0.0),
        "played_s": played,
        "stalled_s": stalled,
        "bitrate_kbps": c.get("bitrate_kbit", 0.0) / played if played > 0 else math.nan,
        "switches_per_minute": c.get("switches", 0.0) / minutes if minutes > 0 else 0.0,
        "video_start_failures": c.get("video_start_failures", 0.0),
        "exits_before_start": c.get("exits_before_start", 0.0),
        "playback_failures": c.get("playback_failures", 0.0),
    }


def promql(labels: str = "", window: str = "5m") -> dict[str, str]:
    """The collector's QoE as windowed PromQL (for dashboards and range queries), by figure.

    ``labels`` is a selector such as :func:`selector` returns. A series born inside the window
    counts from its first scrape (``increase`` has no earlier sample): for a run's totals, prefer
    :func:`collector_totals` before and after.

    >>> promql(selector(client="simulator"), "1m")["bitrate_kbps"]
    'sum(increase(ott_qoe_bitrate_kbit_total{client="simulator"}[1m])) / sum(increase(ott_qoe_played_seconds_total{client="simulator"}[1m]))'
    """  # noqa: E501
    def increase(metric: str) -> str:
        return f"sum(increase({metric}{labels}[{window}]))"

    startup = f"sum by (le)(increase({STARTUP_HISTOGRAM}_bucket{labels}[{window}]))"
    stalled, played = increase(COUNTERS["stalled_s"]), increase(COUNTERS["played_s"])
    return {
        "startup_p50_s": f"histogram_quantile(0.5, {startup})",
        "startup_p95_s": f"histogram_quantile(0.95, {startup})",
        "rebuffering_ratio": f"{stalled} / ({stalled} + {played})",
        "bitrate_kbps": f"{increase(COUNTERS['bitrate_kbit'])} / {played}",
        "plays_per_second": f"sum(rate({COUNTERS['plays']}{labels}[{window}]))",
    }
