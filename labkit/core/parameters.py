"""A lesson's papermill parameters, checked in one place before the notebook touches the platform.

Each notebook's ``parameters`` cell holds literals only; its next cell hands them to :func:`check`,
which refuses a bad one with a :class:`~labkit.core.errors.ConfigError` saying which parameter,
what it was, what it must be, and a value that works. What the parameters imply (the ladder with
its preset, the encrypted title's id) comes back in a :class:`Parameters`::

    >>> lesson = check("02-transcode", SAMPLE_SECONDS=20, LADDER="small", PRESET=None, TITLE="lab-clock-hls")
    >>> lesson.ladder.name, lesson.encrypted_title
    ('small', 'lab-clock-hls-aes')
    >>> check("03-cdn-edge", VIEWERS=1)
    Traceback (most recent call last):
    ...
    labkit.core.errors.ConfigError: VIEWERS=1 must be a whole number from 2 to 500
      -> the notebook test uses VIEWERS=24
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labkit.core.errors import ConfigError

if TYPE_CHECKING:
    from ott.media.ladder import Ladder

__all__ = ["LESSONS", "Parameters", "Range", "check"]

# The encrypted variant's title id is the clear one's plus this (02-transcode and 04-player-qoe).
ENCRYPTED_SUFFIX = "-aes"


@dataclass(frozen=True)
class Range:
    """A number parameter: ``low`` to ``high`` inclusive; ``whole`` refuses fractions; ``unit`` names it."""

    low: float
    high: float
    whole: bool = False
    unit: str = ""
    hint: str = ""

    def check(self, name: str, value: object) -> None:
        number = isinstance(value, int) or (isinstance(value, float) and not self.whole)
        if isinstance(value, bool) or not number or not self.low <= float(value) <= self.high:  # type: ignore[arg-type]
            kind = "a whole number" if self.whole else "a number"
            unit = f" of {self.unit}" if self.unit else ""
            raise ConfigError(f"{name}={value!r} must be {kind}{unit} from {self.low:g} to {self.high:g}",
                              hint=self.hint)


@dataclass(frozen=True)
class Lesson:
    """What a notebook's parameters must be: a range per number, and whether it publishes an encrypted title."""

    ranges: Mapping[str, Range]
    title_hint: str = ""
    encrypted: bool = False
    # Title ids the lesson cannot use, with the reason.
    reserved: Mapping[str, str] = field(default_factory=dict)


_WAIT = Range(10, 3600, unit="seconds", hint="every wait of the notebook ends after WAIT_SECONDS; 120 is plenty")
_TITLE_HINT = "lower-case letters, digits and '-'"

LESSONS: dict[str, Lesson] = {
    "00-setup": Lesson({
        "MIN_SAMPLES": Range(1, 100, whole=True, hint="4 samples per scrape job make a line worth plotting"),
        "WAIT_SECONDS": _WAIT,
    }),
    "01-ott-apis": Lesson({
        "TRAFFIC_SECONDS": Range(1, 600, unit="seconds", hint="20 s of traffic gives the plots a shape"),
        "WAIT_SECONDS": _WAIT,
    }),
    "02-transcode": Lesson({
        "SAMPLE_SECONDS": Range(2, 600, unit="seconds", hint="20 s shows a ladder well; the notebook test uses 6"),
    }, title_hint=f"{_TITLE_HINT}, at most 59 characters (the encrypted title adds '-aes'), e.g. 'lab-clock-hls'",
        encrypted=True),
    "03-cdn-edge": Lesson({
        "SAMPLE_SECONDS": Range(2, 600, unit="seconds", hint="20 s gives five 4 s segments per rung; the test uses 8"),
        "VIEWERS": Range(2, 500, whole=True, hint="the notebook test uses VIEWERS=24"),
        "HERD_CLIENTS": Range(10, 1000, whole=True, hint="the notebook test uses HERD_CLIENTS=100"),
        "WAVE_SECONDS": Range(5, 600, unit="seconds", hint="the viewers' wave lasts about WAVE_SECONDS"),
        "WAIT_SECONDS": _WAIT,
    }, title_hint=f"{_TITLE_HINT}, e.g. 'lab-clock-cdn'",
        reserved={"live": "the PoPs treat /live/ as live playlists"}),
    "04-player-qoe": Lesson({
        "SAMPLE_SECONDS": Range(8, 600, unit="seconds", hint="30 s gives viewers room to adapt; the test uses 12"),
        "BROWSER_SECONDS": Range(1, 120, unit="seconds", hint="6 s shows the player start and settle"),
        "VIEWERS": Range(2, 500, whole=True, hint="the notebook test uses 12"),
        "VIEWER_SECONDS": Range(5, 600, unit="seconds", hint="40 s lets the ABR climb and settle"),
        "SEED": Range(-(2**63), 2**63 - 1, whole=True, hint="any integer, e.g. 7"),
        "WAIT_SECONDS": _WAIT,
    }, title_hint=f"{_TITLE_HINT}, at most 58 characters, e.g. 'lab-clock-qoe'", encrypted=True),
    "05-service-mesh": Lesson({
        "PLAYS": Range(2, 50, whole=True, hint="starts measured per viewer and phase: 5 is plenty; the test uses 3"),
        "CANARY_REQUESTS": Range(50, 20_000, whole=True,
                                 hint="catalog requests per canary split: 400 measure 90/10 within a few percent"),
        "DELAY_S": Range(0.5, 10, unit="seconds", hint="Istio's task uses 2 s; the lesson asserts about that much"),
        "ABORT_STATUS": Range(500, 599, whole=True, hint="a server error the player must report, e.g. 503"),
        "TIMEOUT_S": Range(0.2, 9, unit="seconds", hint="a timeout below DELAY_S, e.g. 1"),
        "BURST": Range(10, 200, whole=True,
                       hint="requests released together at a pool of one connection: 40 overflows most of them"),
        "OUTLIER_REQUESTS": Range(20, 500, whole=True,
                                  hint="requests per phase at three replicas: 30 bring the bad one its 5 errors"),
        "EJECTION_S": Range(1, 30, unit="seconds", hint="the shortened baseEjectionTime, e.g. 3 (committed: 30 s)"),
        "BUDGET_S": Range(0.5, 10, unit="seconds",
                          hint="the gateway's timeout to license in the budget lesson, e.g. 1"),
        "SLOW_S": Range(0.2, 9, unit="seconds", hint="cas's delay, above BUDGET_S and under 2 s, e.g. 1.5"),
        "FLAKY_PERCENT": Range(10, 100, unit="percent", hint="the flaky cas replica's share of 503s, e.g. 50"),
        "RETRY_PLAYS": Range(10, 500, whole=True, hint="play starts per phase at three cas replicas, e.g. 30"),
        "STORM_PLAYS": Range(1, 50, whole=True, hint="play starts per phase with cas down, e.g. 5"),
    }, title_hint=f"{_TITLE_HINT}: a seeded title both viewers may play, e.g. 'city-timelapse'"),
    "06-observability": Lesson({
        "SAMPLE_SECONDS": Range(8, 600, unit="seconds", hint="20 s: five segments per viewer; the test uses 12"),
        "VIEWERS": Range(2, 100, whole=True, hint="the notebook test uses 4"),
        "VIEWER_SECONDS": Range(10, 600, unit="seconds", hint="30 s gives the panels a shape; the test uses 20"),
        "POP_REPLICA": Range(0, 7, whole=True, hint="the PoP the incident stops: 1 is edge-1"),
        "DASHBOARD_MINUTES": Range(1, 1440, unit="minutes", hint="the dashboards' window; 10 covers the lesson"),
        "LIVE_REFRESHES": Range(1, 600, whole=True, hint="how often the live panel redraws (every 2 s), e.g. 15"),
        "SEED": Range(-(2**63), 2**63 - 1, whole=True, hint="any integer, e.g. 7"),
        "WAIT_SECONDS": _WAIT,
    }, title_hint=f"{_TITLE_HINT}, e.g. 'lab-clock-obs'"),
    "07-load-autoscaling": Lesson({
        "SAMPLE_SECONDS": Range(8, 600, unit="seconds", hint="20 s: five segments per viewer; the test uses 12"),
        "K6_VUS": Range(1, 200, whole=True, hint="k6's viewers: 10 shows the journey; the test uses 4"),
        "K6_SECONDS": Range(2, 600, unit="seconds", hint="how long k6 keeps its viewers playing; 20 s is plenty"),
        "VIEWERS_FROM": Range(1, 10_000, whole=True, hint="the ramp's first step, e.g. 100"),
        "VIEWERS_TO": Range(1, 10_000, whole=True, hint="the largest step, e.g. 3200 (doubling from VIEWERS_FROM)"),
        "STEP_SECONDS": Range(4, 600, unit="seconds", hint="how long each step plays; 12 s is enough"),
        "POP_VIEWERS_FROM": Range(1, 10_000, whole=True,
                                  hint="the ramp against the PoPs' capacity starts here, e.g. 25"),
        "POP_VIEWERS_TO": Range(1, 10_000, whole=True,
                                hint="... doubling up to this, e.g. 400 (two PoPs at capacity break near 100)"),
        "SEED": Range(-(2**63), 2**63 - 1, whole=True, hint="any integer, e.g. 7"),
        "SCALE_DOWN_WINDOW": Range(0, 3600, unit="seconds",
                                   hint="the HPAs' scale-down stabilization window: 300 is Kubernetes' default"),
        "WAIT_SECONDS": _WAIT,
    }, title_hint=f"{_TITLE_HINT}, e.g. 'lab-clock-load'"),
}


@dataclass(frozen=True)
class Parameters:
    """The checked parameters (``values``) and what they imply for the lesson."""

    values: Mapping[str, object]
    ladder: Ladder | None = None
    title: str | None = None
    encrypted_title: str | None = None

    def describe(self) -> str:
        """One line for the notebook to print: every parameter and its value."""
        return ", ".join(f"{name}={value!r}" for name, value in self.values.items())


def check(lesson: str, **values: object) -> Parameters:
    """Check the parameters of ``lesson`` (a notebook's stem, ``03-cdn-edge``); what they imply, or a ConfigError.

    Numbers are checked against the lesson's :data:`LESSONS` ranges; ``LADDER`` and ``PRESET``
    must name a ladder of ``ott/media/ladder.yml`` and an x264 preset; ``TITLE`` must be a title id
    (and so must its encrypted variant, in a lesson that publishes one); ``THROTTLE_KBPS`` must lie
    between the ladder's lowest rung (with 20 % to spare) and its top rung. ``TARGET`` and
    ``INTERACTIVE`` are checked where they are used (:func:`labkit.make_target`) and here.
    """
    if lesson not in LESSONS:
        raise ConfigError(f"no lesson named {lesson!r}", hint=f"the lessons: {', '.join(LESSONS)}")
    rules = LESSONS[lesson]
    checked: dict[str, object] = {}
    for name, value in values.items():
        if name in rules.ranges:
            rules.ranges[name].check(name, value)
        elif name == "INTERACTIVE" and not isinstance(value, bool):
            raise ConfigError(f"INTERACTIVE={value!r} must be True or False", hint="False under papermill")
        elif name not in ("TARGET", "INTERACTIVE", "LADDER", "PRESET", "TITLE", "THROTTLE_KBPS"):
            raise ConfigError(f"{lesson} has no parameter {name}",
                              hint=f"its parameters: {', '.join(sorted(rules.ranges))} and TARGET, INTERACTIVE")
        checked[name] = value
    ladder = _ladder(values) if "LADDER" in values else None
    title = _title(rules, str(values["TITLE"])) if "TITLE" in values else None
    encrypted = _title(rules, f"{title}{ENCRYPTED_SUFFIX}", given=title) if title and rules.encrypted else None
    if "THROTTLE_KBPS" in values:
        if ladder is None:
            raise ConfigError("THROTTLE_KBPS needs LADDER: the limit is checked against the ladder's rungs",
                              hint="pass LADDER too")
        _throttle(values["THROTTLE_KBPS"], ladder)
    return Parameters(checked, ladder, title, encrypted)


def _ladder(values: Mapping[str, object]) -> Ladder:
    from ott.media import ladder as ladders
    from ott.media.errors import LadderError

    name, preset = values["LADDER"], values.get("PRESET")
    try:
        if not isinstance(name, str) or not (preset is None or isinstance(preset, str)):
            raise LadderError("LADDER", "LADDER is a ladder's name and PRESET a preset's name or None")
        loaded = ladders.load(name)
        return loaded if preset is None else loaded.with_preset(preset)
    except LadderError as exc:
        raise ConfigError(f"LADDER={name!r}, PRESET={preset!r}: {exc}", hint="the ladders are declared in "
                          "ott/media/ladder.yml; PRESET=None keeps the ladder's") from None


def _title(rules: Lesson, title_id: str, *, given: str | None = None) -> str:
    from ott.media.errors import InvalidTitleId
    from ott.media.publish import validate_title_id

    shown = f"TITLE={given or title_id!r}" + (f" gives the title id {title_id!r}" if given else "")
    if title_id in rules.reserved:
        raise ConfigError(f"{shown}: the id is taken: {rules.reserved[title_id]}", hint=rules.title_hint)
    try:
        return validate_title_id(title_id)
    except InvalidTitleId as exc:
        raise ConfigError(f"{shown}: {exc}", hint=rules.title_hint) from None


def _throttle(value: object, ladder: Ladder) -> None:
    # A rung's variant carries its video and its audio: the limit must leave the lowest rung room and
    # refuse the top one, or there is nothing to adapt between.
    rung_kbps = sorted(r.video_kbps + ladder.audio_kbps for r in ladder.rungs)
    low, high = rung_kbps[0] * 1.2, rung_kbps[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"THROTTLE_KBPS={value!r} must lie between {low:g} kbit/s (the lowest rung of ladder "
                          f"{ladder.name!r} with 20 % to spare) and {high:g} (its top rung)",
                          hint=f"its rungs (video + audio): {rung_kbps} kbit/s")
