"""Edge hit ratio: a crowd of viewers watching one title through the lab's PoPs, cold and then warm.

``--viewers`` simulated viewers (one connection each, spread over the lab's PoPs, each with its
own signed URL) start together and each fetches the master playlist, the media playlist, the init
segment and then every segment in order: no ABR, no pacing. The first wave meets cold caches (the
baseline); the following ``--waves`` run on warm ones (ours: what an audience of a published title
sees). For each wave the hit ratio (``HIT`` answers over all answers) is read from the PoPs'
exporters (``ott_edge_requests_total`` by ``cache``, deltas over the wave) and cross-checked with
the ``X-Cache-Status`` headers the viewers got. Goal: at least 99 % once warm.

The lab runs without the service mesh (``mesh="off"``): no request measured here passes a sidecar (viewer,
PoP and origin are nginx talking plain HTTP), and the idle Envoys of the media layer would only be more
processes on the machine while the PoPs are measured.

    python bench/bench_edge_hitratio.py [--smoke | --quick] [--viewers 200] [--segments 10] [--waves 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import TimeoutExpired
from labkit.core.wait import until
from labkit.platform.layers import cdn, media
from labkit.targets.local.target import LocalTarget
from ott import signing

TITLE = "bench-hitratio"
GOAL = 0.99
OBJECT_TYPES = ("playlist", "segment", "init")  # what the viewers ask for (the exporter's object_type)
EXPORTER_LAG_S = 15.0


@dataclass
class Wave:
    name: str
    answers: list[tuple[int, int, str]] = field(default_factory=list)  # (pop, status, X-Cache-Status)
    exporter: dict[int, Counter[str]] = field(default_factory=dict)  # pop -> cache status -> requests
    finished: int = 0
    wall_s: float = 0.0
    bytes: int = 0

    def header_counts(self, pop: int | None = None) -> Counter[str]:
        return Counter(c for p, _, c in self.answers if pop is None or p == pop)

    def exporter_counts(self, pop: int | None = None) -> Counter[str]:
        total: Counter[str] = Counter()
        for p, counts in self.exporter.items():
            if pop is None or p == pop:
                total.update(counts)
        return total


def hit_ratio(counts: Counter[str]) -> float:
    total = sum(counts.values())
    return counts["HIT"] / total if total else float("nan")


def write_title(root: Path, segments: int, segment_bytes: int) -> None:
    folder = root / TITLE / "720p"
    folder.mkdir(parents=True)
    (root / TITLE / "master.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        '#EXT-X-STREAM-INF:BANDWIDTH=1400000,RESOLUTION=1280x720,CODECS="avc1.64001f,mp4a.40.2"\n'
        "720p/index.m3u8\n")
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{cdn.SEGMENT_SECONDS}",
             "#EXT-X-PLAYLIST-TYPE:VOD", '#EXT-X-MAP:URI="init.mp4"']
    for i in range(segments):
        lines += [f"#EXTINF:{cdn.SEGMENT_SECONDS}.000,", f"seg_{i:05d}.m4s"]
    (folder / "index.m3u8").write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))
    (folder / "init.mp4").write_bytes(os.urandom(1024))
    for i in range(segments):
        (folder / f"seg_{i:05d}.m4s").write_bytes(os.urandom(segment_bytes))


def playlist_uris(text: str) -> list[str]:
    """The URIs a media playlist names, in order: the init segment (EXT-X-MAP) first."""
    uris = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-MAP:") and 'URI="' in line:
            uris.append(line.split('URI="', 1)[1].split('"', 1)[0])
        elif line and not line.startswith("#"):
            uris.append(line)
    return uris


async def viewer(http: httpx.AsyncClient, master: str, pop: int, wave: Wave, deadline: float) -> None:
    async def get(url: httpx.URL | str) -> httpx.Response:
        response = await http.get(url)
        wave.answers.append((pop, response.status_code, response.headers.get("x-cache-status", "")))
        wave.bytes += len(response.content)
        response.raise_for_status()
        return response

    first = await get(master)
    variant = first.url.join(playlist_uris(first.text)[0])
    playlist = await get(variant)
    for uri in playlist_uris(playlist.text):
        if time.monotonic() > deadline:
            return
        await get(variant.join(uri))
    wave.finished += 1


async def run_wave(wave: Wave, masters: list[tuple[int, str]], timeout: float) -> None:
    tls = ssl.create_default_context()
    # One client per viewer: a shared pool's bookkeeping grows with its connections (see labkit.traffic.herd).
    clients = [httpx.AsyncClient(timeout=30, verify=tls) for _ in masters]
    gate = asyncio.Event()

    async def one(http: httpx.AsyncClient, pop: int, master: str) -> None:
        await gate.wait()
        await viewer(http, master, pop, wave, time.monotonic() + timeout)

    try:
        tasks = [asyncio.create_task(one(http, pop, master)) for http, (pop, master) in zip(clients, masters,
                                                                                              strict=True)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        gate.set()
        done, pending = await asyncio.wait(tasks, timeout=timeout + 10)
        wave.wall_s = time.perf_counter() - started
        for task in pending:
            task.cancel()
        failures = [t.exception() for t in done if t.exception() is not None]
        if failures:
            raise RuntimeError(f"{len(failures)} viewer(s) failed in the {wave.name} wave; first: {failures[0]!r}")
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def exporter_counts(cfg: LabConfig, pop: int) -> Counter[str]:
    """The PoP's exporter's ``ott_edge_requests_total`` for the viewers' object types, by cache status."""
    text = httpx.get(cdn.EXPORTER.url(cfg, "http", pop) + "/metrics", timeout=10).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ott_edge_requests_total" and sample.labels.get("object_type") in OBJECT_TYPES:
                counts[sample.labels["cache"]] += int(sample.value)
    return counts


def measure(cfg: LabConfig, wave: Wave, masters: list[tuple[int, str]], pops: int, timeout: float) -> None:
    before = {p: exporter_counts(cfg, p) for p in range(pops)}
    asyncio.run(run_wave(wave, masters, timeout))
    # The exporters follow the access logs: wait (bounded) until they have counted every answer.
    behind: list[int] = []

    def counted() -> bool:
        nonlocal behind
        wave.exporter = {p: exporter_counts(cfg, p) - before[p] for p in range(pops)}
        behind = [p for p in range(pops) if sum(wave.exporter[p].values()) < len(
            [a for a in wave.answers if a[0] == p])]
        return not behind

    try:
        until(counted, EXPORTER_LAG_S, 0.3, "the exporters to count every answer")
    except TimeoutExpired:
        print(f"  warning: exporter(s) of PoP(s) {behind} had not counted every answer after {EXPORTER_LAG_S:g} s")


def report(wave: Wave, pops: int) -> None:
    print(f"\n{wave.name} wave: {wave.finished} viewer(s) finished, {len(wave.answers)} answers, "
          f"{wave.bytes / 1e6:.0f} MB in {wave.wall_s:.1f} s")
    print(f"  {'PoP':7} {'answers':>8} {'HIT':>6} {'MISS':>6} {'other':>6} {'hit ratio (exporter)':>21} "
          f"{'hit ratio (headers)':>20}")
    for pop in [*range(pops), None]:
        exp, hdr = wave.exporter_counts(pop), wave.header_counts(pop)
        other = sum(exp.values()) - exp["HIT"] - exp["MISS"]
        name = cdn.pop_id(pop) if pop is not None else "all"
        print(f"  {name:7} {sum(exp.values()):8d} {exp['HIT']:6d} {exp['MISS']:6d} {other:6d} "
              f"{hit_ratio(exp) * 100:20.2f}% {hit_ratio(hdr) * 100:19.2f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 segments, 100 viewers")
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--segment-kb", type=int, default=650)
    parser.add_argument("--waves", type=int, default=1, help="warm waves after the cold one (default: 1)")
    parser.add_argument("--wave-timeout", type=float, default=30.0, help="seconds a wave may take at most")
    parser.add_argument("--base-port", type=int, default=30100)
    parser.add_argument("--smoke", action="store_true", help="2 segments, 6 viewers: proves the benchmark runs")
    args = parser.parse_args()
    if args.quick:
        args.segments, args.viewers = 4, 100
    if args.smoke:
        args.segments, args.viewers, args.segment_kb = 2, 6, 64
    if not (1 <= args.viewers <= 400 and 1 <= args.segments <= 100 and 1 <= args.waves <= 5
            and 0 < args.wave_timeout <= 120):
        parser.error("need 1 <= viewers <= 400, 1 <= segments <= 100, 1 <= waves <= 5, 0 < wave-timeout <= 120")

    waves = [Wave("cold"), *(Wave(f"warm {i + 1}" if args.waves > 1 else "warm") for i in range(args.waves))]
    with tempfile.TemporaryDirectory(prefix="ottlab-bench-edge-hitratio-") as tmp:
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60, mesh="off")
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up(["media", "cdn"])
            write_title(media.media_root(cfg), args.segments, args.segment_kb * 1024)
            secret = (cfg.conf_dir / cdn.SIGNING_SECRET_FILE).read_text().strip()
            pops = cdn.DEFAULT_POPS
            now = int(time.time())
            # Each viewer its own token (its own expiry): tokens must not split the cache.
            masters = [(i % pops, cdn.EDGE.url(cfg, "http", i % pops) + signing.signed_path(
                secret, TITLE, now + 3600 + i, "/master.m3u8")) for i in range(args.viewers)]
            print(f"\n{args.viewers} viewers over {pops} PoPs, {args.segments} segments of {args.segment_kb} KB "
                  f"(+ 2 playlists and the init segment each), {os.cpu_count()} CPUs", flush=True)
            for wave in waves:
                measure(cfg, wave, masters, pops, args.wave_timeout)
                report(wave, pops)
        finally:
            target.down(purge=True)

    cold = hit_ratio(waves[0].exporter_counts())
    warm_counts: Counter[str] = Counter()
    for wave in waves[1:]:
        warm_counts.update(wave.exporter_counts())
    warm = hit_ratio(warm_counts)
    agree = all(w.exporter_counts() == w.header_counts() for w in waves)
    print(f"\nhit ratio: warm {warm * 100:.2f}%, cold (baseline) {cold * 100:.2f}%; exporters and headers "
          f"{'agree' if agree else 'DISAGREE'}")
    print(f"ratio: warm/cold hit ratio = {warm / cold:.3f}   (goal: warm >= {GOAL * 100:.0f}%: "
          f"{'met' if warm >= GOAL else 'NOT met'})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
