"""The thundering herd: origin fetches per object when a crowd asks a PoP for a cold segment at once.

Two scratch PoPs (:class:`labkit.traffic.herd.ScratchPop`), rendered exactly like the lab's but each with
its own empty cache: ours with the cache lock (``proxy_cache_lock on``, as the lab's PoPs run),
the baseline without it. For each of ``--objects`` cold ~650 KB segments, ``--clients`` concurrent
viewers (one connection each, released together) ask each PoP for it; we count the PoP's origin
fetches for that object in its access log (every attempt in ``upstream_status``) and the clients'
p50/p95 latency.

Twice: in front of the lab's origin as it is (loopback: a miss lasts a millisecond, so whether
misses overlap is luck) and in front of a slow origin (the same media root through nginx's
``limit_rate``, ``--slow-rate`` per response, as a distant origin: a miss lasts about a second).
Goal: exactly 1 origin fetch per object with the lock; we print
``ratio: ours/no-lock origin fetches``.

The lab runs without the service mesh (``mesh="off"``): no request measured here passes a sidecar (viewer,
PoP and origin are nginx talking plain HTTP), and the idle Envoys of the media layer would only be more
processes on the machine while the PoPs are measured.

    python bench/bench_edge_herd.py [--smoke | --quick] [--objects 5] [--clients 200] [--slow-rate 400k]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.layers import media
from labkit.targets.local.target import LocalTarget
from labkit.traffic import herd
from labkit.traffic.herd import ScratchPop, ScratchStatic

TITLE = "bench-herd"
SEGMENT_BYTES = 650 * 1024


@dataclass(frozen=True)
class Row:
    origin: str
    pop: str
    obj: str
    fetches: int
    p50_ms: float
    p95_ms: float
    wall_s: float
    misses: int


def segment(i: int) -> str:
    return f"/720p/seg_{i:05d}.m4s"


def one_herd(pop: ScratchPop, origin: str, i: int, clients: int) -> Row:
    result = herd.herd(pop.signed(TITLE, segment(i)), clients=clients, timeout=60)
    if not result.ok or result.bytes != [SEGMENT_BYTES] * clients:
        bad = sorted({f"{s} {e}".strip() for s, e in zip(result.statuses, result.errors, strict=True) if s != 200})
        raise RuntimeError(f"{pop.pop}: {len(bad)} kind(s) of failed answers for {segment(i)}: {bad[:5]}")
    return Row(origin, pop.pop, segment(i), pop.origin_fetches(f"/{TITLE}{segment(i)}"),
               result.latency_quantile(0.5) * 1000, result.latency_quantile(0.95) * 1000, result.wall_s,
               result.cache.count("MISS"))


def table(rows: list[Row], origin: str) -> None:
    lock = [r for r in rows if r.origin == origin and r.pop == "scratch-lock"]
    nolock = [r for r in rows if r.origin == origin and r.pop == "scratch-nolock"]
    print(f"\n{origin}")
    print(f"  {'object':22} {'lock: fetches':>13} {'p50 ms':>8} {'p95 ms':>8}   {'no lock: fetches':>16} "
          f"{'p50 ms':>8} {'p95 ms':>8}")
    for a, b in zip(lock, nolock, strict=True):
        print(f"  {a.obj:22} {a.fetches:13d} {a.p50_ms:8.0f} {a.p95_ms:8.0f}   {b.fetches:16d} {b.p50_ms:8.0f} "
              f"{b.p95_ms:8.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 objects")
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slow-rate", default="400k", help="the slow origin's limit_rate (nginx syntax)")
    parser.add_argument("--base-port", type=int, default=29700)
    parser.add_argument("--smoke", action="store_true", help="1 object, 10 clients: proves the benchmark runs")
    args = parser.parse_args()
    if args.quick:
        args.objects = 2
    if args.smoke:
        args.objects, args.clients = 1, 10
    if not (1 <= args.objects <= 20 and 1 <= args.clients <= 400):
        parser.error("need 1 <= objects <= 20 and 1 <= clients <= 400")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ottlab-bench-edge-herd-") as tmp:
        cfg = LabConfig(home=Path(tmp) / "lab", base_port=args.base_port, ready_timeout=60, mesh="off")
        target = LocalTarget(cfg, platform.components(), platform.layers())
        try:
            target.up(["media", "cdn"])  # cdn: the lab's signing secret, which the scratch PoPs use
            root = media.media_root(cfg)
            (root / TITLE / "720p").mkdir(parents=True)
            for i in range(args.objects):
                (root / TITLE / segment(i).lstrip("/")).write_bytes(os.urandom(SEGMENT_BYTES))
            print(f"\n{args.clients} clients per herd, {args.objects} cold {SEGMENT_BYTES // 1024} KB segments, "
                  f"{os.cpu_count()} CPUs", flush=True)
            with ScratchStatic(root, name="slow-origin", limit_rate=args.slow_rate) as slow:
                origins = [("lab origin (loopback)", None),
                           (f"slow origin (limit_rate {args.slow_rate})", [slow.peer])]
                for origin, peers in origins:
                    # Fresh PoPs per origin: every object is cold in both caches.
                    with ScratchPop(cfg, cache_lock=True, origin_peers=peers) as lock, \
                            ScratchPop(cfg, cache_lock=False, origin_peers=peers) as nolock:
                        for i in range(args.objects):
                            for pop in (lock, nolock):
                                rows.append(one_herd(pop, origin, i, args.clients))
                                r = rows[-1]
                                print(f"  {origin[:11]:11} {r.pop:15} {r.obj}: {r.fetches:3d} origin fetch(es), "
                                      f"p50 {r.p50_ms:6.0f} ms, p95 {r.p95_ms:6.0f} ms", flush=True)
        finally:
            target.down(purge=True)

    for origin in dict.fromkeys(r.origin for r in rows):
        table(rows, origin)
    lock_fetches = [r.fetches for r in rows if r.pop == "scratch-lock"]
    nolock_fetches = [r.fetches for r in rows if r.pop == "scratch-nolock"]
    met = all(n == 1 for n in lock_fetches)
    print(f"\norigin fetches per object: lock {min(lock_fetches)}..{max(lock_fetches)}, "
          f"no lock {min(nolock_fetches)}..{max(nolock_fetches)} (of {args.clients} clients)")
    print(f"ratio: ours/no-lock origin fetches = {sum(lock_fetches)}/{sum(nolock_fetches)} = "
          f"{sum(lock_fetches) / sum(nolock_fetches):.3f}   (goal: exactly 1 per object with the lock: "
          f"{'met' if met else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
