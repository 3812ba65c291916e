"""The web player in a real browser: the system Chromium, driven by Playwright, plays a title.

The player page (``ott/player/www``, served at ``{gateway}/player/``) is signed in through its
form, Play is pressed, and the page's own measurements are read back from ``window.ottPlayer``:
startup (Play click to the first presented frame with the playhead moving), state, failure and
the QoE events it sent. The browser is the machine's Chromium (Debian package ``chromium``), never
one Playwright downloads::

    with Browser() as browser:
        run = browser.play(target.endpoint("gateway"), "lab-clock", seconds=3,
                           screenshot=Path("reports/browser/lab-clock.png"))
    run.startup_s, run.state, run.failure, run.frame()   # events as a DataFrame

A slower network is Chromium's own throttling (DevTools' network emulation), from the Play click
or from the first frame on; a short forward buffer (``buffer_s``) makes every segment come just in
time, so the player's rung switches and stalls follow the network at once::

    run = browser.play(gateway, "lab-clock", buffer_s=2, network_at_start=Network(download_kbps=800),
                       until="p.events.some(e => e.type === 'stall')")

Every :class:`Browser` starts from a fresh profile but presents the same device id
(``DEFAULT_DEVICE_ID``), so repeated runs do not use up an account's CAS device limit.
Playwright's synchronous API refuses a thread that runs an asyncio loop (a notebook kernel's), so
the browser lives on a thread of its own and every call is handed to it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

from labkit.clients import seed
from labkit.core.errors import LabError, TimeoutExpired
from labkit.platform.layers.player import BEACON_PATH, URL_PREFIX
from labkit.traffic.playback import unsigned_path

if TYPE_CHECKING:
    import pandas as pd
    from playwright.sync_api import BrowserContext, CDPSession, Page, Playwright, Request, Response

T = TypeVar("T")
Leave = Literal["stop", "close"]

CHROMIUM_ENV = "OTTLAB_CHROMIUM"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
# The page keeps its device id in localStorage; every lab browser presents this one, so that fresh
# profiles do not use up an account's CAS device limit (4 devices in 30 days).
DEFAULT_DEVICE_ID = "ottlab-chromium"
DEFAULT_SECONDS = 3.0
DEFAULT_TIMEOUT = 30.0
# Where a play may rest: the page's states after which nothing happens without the viewer.
SETTLED = ("playing", "ended", "failed")
# The page's console messages kept in BrowserPlay.console (the player logs hls.js errors as info).
CONSOLE_TYPES = ("error", "warning", "info")
# How long the page's Stop may take (its end beacon and the stream session's DELETE): a page that
# does not finish by then is left anyway, and BrowserPlay.stop_timed_out says so.
STOP_TIMEOUT = 10.0
# The page's stop(), raced against a timer: true when it finished, false when the timer won.
_STOP = ("ms => Promise.race([Promise.resolve(window.ottPlayer.stop()).then(() => true),"
         " new Promise(resolve => setTimeout(() => resolve(false), ms))])")


class BrowserNotFoundError(LabError):
    """No Chromium on this machine (or ``OTTLAB_CHROMIUM`` names no executable)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"no Chromium browser to play with: {detail}",
                         hint="run `make bootstrap` (or `sudo apt-get install chromium`), or point "
                              f"{CHROMIUM_ENV} at a Chromium executable")


def find_chromium() -> Path:
    """The system Chromium: ``$OTTLAB_CHROMIUM``, else ``/usr/bin/chromium``, ``chromium`` or ``chromium-browser``."""
    wanted = os.environ.get(CHROMIUM_ENV, "").strip()
    if wanted:
        path = Path(wanted).expanduser()
        found = shutil.which(str(path))
        if found is None:
            raise BrowserNotFoundError(f"{CHROMIUM_ENV}={wanted} is not an executable file")
        return Path(found)
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return Path(found)
    raise BrowserNotFoundError(f"none of {', '.join(CHROMIUM_CANDIDATES)} is installed")


def launch_args(*, as_root: bool | None = None) -> list[str]:
    """Chromium's flags for a headless lab machine with no outside network.

    Nothing phones home (component updates, sync, background networking), no GPU is assumed, and
    media may start without a user gesture. Chromium's sandbox cannot run as root: off only then.
    """
    root = os.geteuid() == 0 if as_root is None else as_root
    return [
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        *(["--no-sandbox"] if root else []),
    ]


@dataclass(frozen=True)
class Network:
    """A network Chromium emulates for the page (DevTools' throttling): ``Network(download_kbps=800)``.

    ``None`` rates are not limited. Chromium applies a change to the requests that start after it,
    not reliably to one already on its way.
    """

    download_kbps: float | None = None
    upload_kbps: float | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("download_kbps", "upload_kbps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 kbit/s (or None: not limited), got {value}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")

    def conditions(self) -> dict[str, Any]:
        """The parameters of CDP's ``Network.emulateNetworkConditions`` (rates in bytes/s, -1: none)."""
        def rate(kbps: float | None) -> float:
            return -1 if kbps is None else kbps * 1000 / 8

        return {"offline": False, "latency": self.latency_ms, "downloadThroughput": rate(self.download_kbps),
                "uploadThroughput": rate(self.upload_kbps)}


@dataclass(frozen=True)
class PageRequest:
    """One request the page made: its URL without a signed prefix or query, its status (0: none)."""

    kind: str  # api, key, media, beacon, page
    method: str
    host: str  # host:port, e.g. the PoP's for media
    path: str
    status: int
    authorization: bool  # an Authorization header was sent
    cache: str = ""  # the PoP's X-Cache-Status (HIT, MISS ...), "" when none


@dataclass(frozen=True)
class BrowserPlay:
    """What one play in the browser did, as the page measured it."""

    title: str
    user: str
    url: str  # the player page's URL
    state: str  # where the play was when we stopped watching: playing, stalled, ended, failed, loading ...
    startup_s: float | None  # Play click to the first presented frame with the playhead moving
    played_s: float  # time spent playing (the end event's played_ms), stalls excluded
    failure: dict[str, str] | None  # {"reason", "message"} of a fatal failure
    message: str  # the page's #message text ("" when none)
    events: list[dict[str, Any]]  # the QoE events the page sent, in order (end included)
    requests: list[PageRequest] = field(default_factory=list)
    # The events in the beacons that left the page (what the collector was sent), in order.
    beacons: list[dict[str, Any]] = field(default_factory=list)
    overlay: dict[str, str] = field(default_factory=dict)  # the stats overlay when we left: rung, buffer ...
    console: list[str] = field(default_factory=list)  # the page's errors and warnings
    screenshot: Path | None = None
    # leave="stop" and the page's stop() did not finish within STOP_TIMEOUT (its stream session may be open).
    stop_timed_out: bool = False

    @property
    def started(self) -> bool:
        return self.startup_s is not None

    @property
    def reasons(self) -> list[str]:
        """The reasons of the error events, in order (fatal or not)."""
        return [str(e["reason"]) for e in self.events if e.get("type") == "error"]

    def frame(self) -> pd.DataFrame:
        """The QoE events as a DataFrame: one row per event, its fields as columns."""
        import pandas as pd

        return pd.DataFrame(self.events)


class Browser:
    """A headless system Chromium with one fresh profile, for any number of :meth:`play` calls.

    A context manager: the browser, its profile directory and its thread end on exit::

        with Browser() as browser:
            first = browser.play(gateway, "lab-clock")
            second = browser.play(gateway, "lab-clock", pop="edge-1")
    """

    def __init__(self, *, executable: Path | None = None, headless: bool = True,
                 launch_timeout: float = DEFAULT_TIMEOUT, device_id: str = DEFAULT_DEVICE_ID) -> None:
        self.executable = executable or find_chromium()
        self.device_id = device_id
        self.headless = headless
        self.launch_timeout = launch_timeout
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ottlab-browser")
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._playwright: Playwright | None = None
        self._context: BrowserContext | None = None
        self._closed = False

    def __enter__(self) -> Browser:
        self._call(self._launch, self.launch_timeout + 10)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser and remove its profile; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown, 30)
        finally:
            self._thread.shutdown(wait=True)

    def play(self, gateway_url: str, title: str, user: str = "alice", *, pop: str | None = None,
             seconds: float = DEFAULT_SECONDS, screenshot: Path | str | None = None,
             timeout: float = DEFAULT_TIMEOUT, beacon_s: float | None = None, buffer_s: float | None = None,
             network: Network | None = None, network_at_start: Network | None = None, until: str | None = None,
             leave: Leave = "stop") -> BrowserPlay:
        """Sign ``user`` (a demo user) in, press Play for ``title``, watch ``seconds`` of playhead advance.

        ``pop`` asks the page for that PoP (``edge-1``); ``beacon_s`` sets its progress beacon period,
        ``buffer_s`` the forward buffer its hls.js fills. ``network`` is emulated from the Play click,
        ``network_at_start`` once playback starts (a network that degrades mid-session). ``until`` is
        a JavaScript condition over ``p`` (the page's ``window.ottPlayer``) to watch for instead of
        the ``seconds``, e.g. ``"p.events.some(e => e.type === 'stall')"``.
        Waits at most ``timeout`` for playback to start (or fail), then up to ``seconds`` plus
        ``timeout`` for the playhead (or ``until``); a play that neither starts nor fails in time is
        left as a viewer would leave it (an exit before start) and returned in the state it reached.
        Leaving ends the stream session: ``leave="stop"`` as the page's Stop does (its end beacon
        awaited), ``"close"`` by closing the page as a viewer closes the tab (the page sends its end
        beacon while it is hidden; ``events`` then ends before it, ``beacons`` may hold it).
        """
        if seconds < 0 or timeout <= 0:
            raise ValueError("seconds must be >= 0 and timeout > 0")
        if buffer_s is not None and buffer_s <= 0:
            raise ValueError(f"buffer_s must be > 0 seconds, got {buffer_s}")
        if leave not in ("stop", "close"):
            raise ValueError(f'leave must be "stop" or "close", not {leave!r}')
        account = seed.demo_user(user)
        query = {"title": title, **({"pop": pop} if pop else {}), **({"beacon_s": f"{beacon_s:g}"} if beacon_s else {}),
                 **({"buffer_s": f"{buffer_s:g}"} if buffer_s else {})}
        url = f"{gateway_url.rstrip('/')}{URL_PREFIX}?{urlencode(query)}"
        shot = Path(screenshot) if screenshot is not None else None
        watch = _Watch(seconds, timeout, network, network_at_start, until, leave)
        return self._call(lambda: self._play(url, title, account, watch, shot), seconds + 2 * timeout + 30)

    # -- on the browser's thread ------------------------------------------------------------------

    def _call(self, job: Callable[[], T], timeout: float) -> T:
        future = self._thread.submit(job)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutExpired("the browser", timeout, hint="is Chromium hung? see `ps` for it") from None

    def _launch(self) -> None:
        from playwright.sync_api import Error, sync_playwright

        self._profile = tempfile.TemporaryDirectory(prefix="ottlab-chromium-")
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                self._profile.name, executable_path=str(self.executable), headless=self.headless,
                args=launch_args(), timeout=self.launch_timeout * 1000, viewport={"width": 1280, "height": 800})
            self._context.add_init_script(
                f"try {{ localStorage.setItem('ottlab.device_id', {json.dumps(self.device_id)}); }} catch {{}}")
        except Error as exc:
            self._shutdown()
            raise LabError(f"Chromium ({self.executable}) did not start: {exc.message.splitlines()[0]}",
                           hint=f"try it by hand: {self.executable} --headless --no-sandbox --dump-dom about:blank") \
                from None

    def _shutdown(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def _play(self, url: str, title: str, account: seed.DemoUser, watch: _Watch,
              screenshot: Path | None) -> BrowserPlay:
        from playwright.sync_api import Error

        if self._context is None:
            raise LabError("the browser is not running", hint="use it inside `with Browser() as browser:`")
        timeout = watch.timeout
        page = self._context.new_page()
        page.set_default_timeout(timeout * 1000)
        requests: list[PageRequest] = []
        beacons: list[dict[str, Any]] = []
        console: list[str] = []
        page.on("request", lambda r: beacons.extend(_beacon_events(r)))
        page.on("requestfinished", lambda r: requests.append(_request(r, _response(r))))
        page.on("requestfailed", lambda r: requests.append(_request(r, None)))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in CONSOLE_TYPES else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            response = page.goto(url, wait_until="load")
            if response is None or not response.ok:
                raise LabError(f"the player page {url} answered {response.status if response else 'nothing'}",
                               hint="is the player layer up? `ottlab up` then `ottlab status`")
            if not page.evaluate("typeof window.ottPlayer === 'object' && typeof window.Hls === 'function'"):
                raise LabError(f"the player page {url} did not load its scripts: {console}",
                               hint="check /player/player.js and /player/vendor/hls.min.js on the gateway")
            _sign_in(page, account, timeout)
            cdp = page.context.new_cdp_session(page)
            _emulate(cdp, watch.network)
            page.click("#play")
            if _wait_settled(page, timeout) == "playing":
                _emulate(cdp, watch.network_at_start)
                _watch(page, watch)
            reached = str(page.evaluate("window.ottPlayer.state"))
            overlay = _overlay(page)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
            stopped = True
            if watch.leave == "stop":
                # Leave as a viewer does: the end beacon sent and the stream session ended, both awaited
                # (for STOP_TIMEOUT at most: a hung request must not hold the browser's thread forever).
                stopped = bool(page.evaluate(_STOP, STOP_TIMEOUT * 1000))
            hook = page.evaluate("({...window.ottPlayer, stop: undefined})")
            message = page.text_content("#message") or ""
        except Error as exc:
            raise LabError(f"the browser failed while playing {title}: {exc.message.splitlines()[0]}",
                           hint=f"open {url} in a browser to see it; page console: {console[-5:]}") from None
        finally:
            # Closing fires the page's pagehide: after a "stop" it has nothing left to do.
            page.close()
        startup = hook.get("startupMs")
        events = list(hook.get("events") or [])
        ends = [e for e in events if e.get("type") == "end"]
        return BrowserPlay(
            title=title, user=account.email, url=url, state=reached,
            startup_s=startup / 1000 if startup is not None else None,
            played_s=ends[-1]["played_ms"] / 1000 if ends else 0.0,
            failure=hook.get("failure"), message=message.strip(), events=events,
            requests=requests, beacons=beacons, overlay=overlay, console=console, screenshot=screenshot,
            stop_timed_out=not stopped)


@dataclass(frozen=True)
class _Watch:
    """How one play is watched: for how long, on which network, until what, and how it is left."""

    seconds: float
    timeout: float
    network: Network | None
    network_at_start: Network | None
    until: str | None
    leave: Leave


def _sign_in(page: Page, account: seed.DemoUser, timeout: float) -> None:
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    page.click("#signin")
    page.wait_for_function(
        "document.querySelector('#who').textContent !== '' || !document.querySelector('#message').hidden",
        timeout=timeout * 1000)
    if not (page.text_content("#who") or ""):
        raise LabError(f"{account.email} could not sign in: {page.text_content('#message')}",
                       hint="seed the lab's demo users: `ottlab seed`")


def _wait_settled(page: Page, timeout: float) -> str:
    """The page's state once it plays, fails or ends; the state reached when ``timeout`` runs out."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # Out of time, a viewer gives up: the caller reads the state the page reached.
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"{list(SETTLED)}.includes(window.ottPlayer.state)", timeout=timeout * 1000)
    return str(page.evaluate("window.ottPlayer.state"))


def _watch(page: Page, watch: _Watch) -> None:
    """Wait until the playhead advanced ``seconds`` (or ``until`` holds), playback ended or failed, or
    ``timeout`` ran out."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    begin = float(page.evaluate("document.querySelector('#video').currentTime"))
    deadline = time.monotonic() + watch.seconds + watch.timeout
    reached = ("document.querySelector('#video').currentTime >= from + seconds" if watch.until is None
               else f"(p => Boolean({watch.until}))(window.ottPlayer)")
    # Stalled for longer than the timeout: the events tell how far it got.
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(
            f"([from, seconds]) => {reached} || ['ended', 'failed'].includes(window.ottPlayer.state)",
            arg=[begin, watch.seconds], timeout=max(1.0, deadline - time.monotonic()) * 1000, polling=100)


def _emulate(cdp: CDPSession, network: Network | None) -> None:
    if network is not None:
        cdp.send("Network.emulateNetworkConditions", network.conditions())


def _overlay(page: Page) -> dict[str, str]:
    """The stats overlay's values by name (``rung``, ``buffer`` ...: the ``#stat-<name>`` elements)."""
    stats: dict[str, str] = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#stats dd')]"
        ".map(d => [d.id.replace(/^stat-/, ''), d.textContent]))")
    return stats


def _beacon_events(request: Request) -> list[dict[str, Any]]:
    """The QoE events of a beacon the page sends (none for any other request)."""
    if request.method != "POST" or urlsplit(request.url).path != BEACON_PATH:
        return []
    try:
        body = json.loads(request.post_data or "")
    except ValueError:
        return []
    events = body.get("events") if isinstance(body, dict) else None
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def _response(request: Request) -> Response | None:
    """A finished request's response; None when the page closed before Playwright could read it."""
    from playwright.sync_api import Error

    try:
        return request.response()
    except Error:
        return None  # recorded with status 0: the page was closing, nothing waits for this answer


def _request(request: Request, response: Response | None) -> PageRequest:
    url = request.url
    path = unsigned_path(url)
    if path.startswith("/api/license/keys/"):
        kind = "key"
    elif path.startswith("/api/qoe/"):
        kind = "beacon"
    elif path.startswith("/api/"):
        kind = "api"
    elif urlsplit(url).path.startswith("/s/"):
        kind = "media"
    else:
        kind = "page"
    return PageRequest(kind, request.method, urlsplit(url).netloc, path, response.status if response else 0,
                       "authorization" in request.all_headers(),
                       response.headers.get("x-cache-status", "") if response else "")


def play(gateway_url: str, title: str, user: str = "alice", *, pop: str | None = None,
         seconds: float = DEFAULT_SECONDS, screenshot: Path | str | None = None,
         timeout: float = DEFAULT_TIMEOUT, beacon_s: float | None = None, buffer_s: float | None = None,
         network: Network | None = None, network_at_start: Network | None = None, until: str | None = None,
         leave: Leave = "stop") -> BrowserPlay:
    """One play in a browser of its own (see :meth:`Browser.play`)."""
    with Browser() as browser:
        return browser.play(gateway_url, title, user, pop=pop, seconds=seconds, screenshot=screenshot,
                            timeout=timeout, beacon_s=beacon_s, buffer_s=buffer_s, network=network,
                            network_at_start=network_at_start, until=until, leave=leave)
