"""Video startup in the web player: the system Chromium playing through the lab's edge, against a plain HTTP viewer.

Ours is the whole player: the page in headless Chromium (:mod:`labkit.traffic.browser`) measures from the
Play click to the first presented frame with the playhead moving (``requestVideoFrameCallback``):
the license authorization, hls.js loading the multivariant playlist, a media playlist, the init
segment and the first segment from a PoP, then MSE append, decode and render. Each play is a new
page signed in before Play, as a viewer is before pressing it (page load and sign-in excluded).

* cold: every (title, PoP) pair played once, on a PoP that has never served that title (each
  object a cache MISS, fetched from the origin);
* warm: one title played ``--plays`` times over the PoPs that already hold it (cache HITs).

The baseline, interleaved with the warm plays, is the network part alone: a plain HTTP client
(httpx, a new connection each time, as the page's first media request is) that authorizes the
same title and fetches, from the same warm PoP, what hls.js fetches before its first frame: the
multivariant playlist, the first variant's media playlist (hls.js starts on the first listed),
its init segment and the first segment. ``ratio: browser/http`` of the warm medians is what the
player adds on top of the network (hls.js, MSE, decode, the first frame on screen). The goal is a
warm startup p95 under 1 s on loopback.

The lab runs as a viewer meets it: with the service mesh its settings give (``--mesh``, else
``OTTLAB_MESH``, else the lab's default, STRICT), so the authorization a play starts with crosses the
gateway's and the services' sidecars on both sides; the mesh each run had is printed.

    python bench/bench_player_startup.py [--smoke | --quick] [--plays 10] [--titles 3] [--sample-s 12] [--encrypt]
                                     [--mesh off|permissive|strict]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import m3u8

from labkit import platform
from labkit.analysis.experience import startup_quantiles
from labkit.clients import seed, transcoding
from labkit.clients.api import OttClient
from labkit.core.config import LabConfig
from labkit.targets.local.target import LocalTarget
from labkit.traffic.browser import Browser, BrowserPlay
from ott.media.sample import make_sample

GOAL_P95_S = 1.0
MIN_PLAYS = 10  # the startup goal is a p95: fewer plays say little about it
USER = "alice"
DEVICE = "bench-http-viewer"


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile, interpolated between samples (never beyond them)."""
    return startup_quantiles(values, [q / 100])[q / 100]


def http_startup(client: OttClient, title: str, pop: str, timeout: float = 20.0) -> tuple[float, float]:
    """A plain HTTP viewer: seconds from the authorization request to the last byte of the first
    segment, and how many of them the authorization took."""
    begin = time.perf_counter()
    grant = client.authorize(title, DEVICE)
    authorized = time.perf_counter() - begin
    try:
        (entry,) = [p for p in grant["playback"] if p["pop"] == pop]
        with httpx.Client(timeout=timeout) as http:
            master_url = entry["url"]
            master = http.get(master_url)
            master.raise_for_status()
            variant = m3u8.loads(master.text).playlists[0]
            media_url = httpx.URL(master_url).join(str(variant.uri))
            playlist_response = http.get(media_url)
            playlist_response.raise_for_status()
            playlist = m3u8.loads(playlist_response.text)
            if playlist.keys and playlist.keys[0] is not None and playlist.keys[0].uri:
                key = client.http.get(playlist.keys[0].uri,
                                      headers={"Authorization": f"Bearer {grant['authorization']}"})
                key.raise_for_status()
            objects = [*(m.uri for m in playlist.segment_map[:1]), playlist.segments[0].uri]
            for uri in objects:
                http.get(media_url.join(str(uri))).raise_for_status()
        return time.perf_counter() - begin, authorized
    finally:
        client.end_session(grant["session_id"])


def browser_play(browser: Browser, gateway: str, title: str, pop: str, timeout: float) -> BrowserPlay:
    run = browser.play(gateway, title, USER, pop=pop, seconds=0.3, timeout=timeout)
    if run.startup_s is None:
        raise RuntimeError(f"{title} did not start on {pop}: state {run.state}, {run.failure}, {run.console[-3:]}")
    return run


def media_cache(runs: list[BrowserPlay]) -> str:
    """How the PoPs answered the plays' media requests, e.g. ``MISS 24, HIT 2``."""
    counts = Counter(r.cache or "-" for run in runs for r in run.requests if r.kind == "media")
    return ", ".join(f"{status} {n}" for status, n in counts.most_common())


def line(label: str, values: list[float]) -> str:
    p50, p95, low, high = (round(v * 1000) for v in (percentile(values, 50), percentile(values, 95), min(values),
                                                     max(values)))
    return f"{label:26} n={len(values):<3} p50 {p50:7} ms   p95 {p95:7} ms   min..max {low}..{high}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 titles, 10 warm plays, an 8 s sample")
    parser.add_argument("--plays", type=int, default=MIN_PLAYS,
                        help=f"warm plays, and as many baseline runs: at least {MIN_PLAYS} (default: {MIN_PLAYS})")
    parser.add_argument("--titles", type=int, default=3, help="titles published for the cold plays (default: 3)")
    parser.add_argument("--sample-s", type=float, default=12.0, help="length of the published sample (default: 12)")
    parser.add_argument("--encrypt", action="store_true", help="publish AES-128 titles (one key request more)")
    parser.add_argument("--timeout", type=float, default=20.0, help="bound on one play's start (default: 20 s)")
    parser.add_argument("--base-port", type=int, default=31500)
    parser.add_argument("--mesh", choices=("off", "permissive", "strict"), default=None,
                        help="the lab's service mesh (default: OTTLAB_MESH, else the lab's default)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 title, 2 warm plays, a 4 s sample: proves the benchmark runs (its p95 means nothing)")
    args = parser.parse_args()
    if args.quick:
        args.titles, args.plays, args.sample_s = 2, 10, 8.0
    if not (1 <= args.titles <= 10 and MIN_PLAYS <= args.plays <= 200 and 4 <= args.sample_s <= 120):
        parser.error(f"need 1 <= titles <= 10, {MIN_PLAYS} <= plays <= 200, 4 <= sample-s <= 120")
    if args.smoke:
        args.titles, args.plays, args.sample_s = 1, 2, 4.0

    cold: list[BrowserPlay] = []
    warm: list[BrowserPlay] = []
    baseline: list[float] = []
    authorizations: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ottlab-bench-player-") as tmp:
        cfg = LabConfig.from_env(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=90,
                                 mesh=args.mesh)
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up()
            seed.seed_target(target)
            gateway = target.endpoint("gateway")
            sample = make_sample(Path(tmp) / "sample.mp4", args.sample_s)
            titles = [f"bench-startup-{i}" for i in range(args.titles)]
            for title in titles:
                transcoding.transcode(target, sample, title, encrypt=args.encrypt, ladder="small", preset="ultrafast",
                                     tier="free", progress=False, timeout=300)
            account = seed.demo_user(USER)
            with Browser() as browser, OttClient(gateway) as client:
                client.login(account.email, account.password)
                grant = client.authorize(titles[0], DEVICE)
                client.end_session(grant["session_id"])
                pops = [p["pop"] for p in grant["playback"]]
                # One play first, on a title of its own: Chromium's first page warms its caches
                # (scripts, media pipeline) as any viewer's browser already has.
                browser_play(browser, gateway, titles[-1], pops[-1], args.timeout)
                print(f"\n{len(titles)} title(s) of {args.sample_s:g} s, {len(pops)} PoPs "
                      f"({'AES-128' if args.encrypt else 'clear'}), user {USER}, mesh {cfg.mesh}", flush=True)
                for title in titles:
                    for pop in pops:
                        if (title, pop) == (titles[-1], pops[-1]):
                            continue  # warmed by the first play
                        cold.append(browser_play(browser, gateway, title, pop, args.timeout))
                        print(f"  cold  {title} {pop}: {cold[-1].startup_s * 1000:6.0f} ms", flush=True)
                for i in range(args.plays):
                    pop = pops[i % len(pops)]
                    warm.append(browser_play(browser, gateway, titles[0], pop, args.timeout))
                    total, authorized = http_startup(client, titles[0], pop)
                    baseline.append(total)
                    authorizations.append(authorized)
                    print(f"  warm  {titles[0]} {pop}: browser {warm[-1].startup_s * 1000:6.0f} ms   "
                          f"http {baseline[-1] * 1000:6.0f} ms", flush=True)
        finally:
            target.down(purge=True)

    cold_s = [run.startup_s for run in cold if run.startup_s is not None]
    warm_s = [run.startup_s for run in warm if run.startup_s is not None]
    print()
    if cold_s:
        print(line("browser, cold edge", cold_s) + f"   (media: {media_cache(cold)})")
    print(line("browser, warm edge", warm_s) + f"   (media: {media_cache(warm)})")
    print(line("http viewer, warm edge", baseline))
    print(line("  of which authorization", authorizations))
    p95 = percentile(warm_s, 95)
    print(f"goal: warm startup p95 < {GOAL_P95_S:g} s on loopback: {p95:.3f} s, "
          f"{'met' if p95 < GOAL_P95_S else 'NOT met'}")
    ratio = statistics.median(warm_s) / statistics.median(baseline)
    print(f"ratio: browser/http = {ratio:.2f}   (warm medians: what the player adds to the network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
