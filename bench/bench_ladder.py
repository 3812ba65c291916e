"""The ABR ladder encode: our single ffmpeg process against one ffmpeg process per rung.

Ours is :func:`ott.media.transcode.transcode`: one process decodes the source once, ``split``s the
frames to one scale + x264 encoder per rung and writes every rung through the hls muxer's
``-var_stream_map`` (clear fMP4). The baseline is what a naive script does: one ffmpeg per rung,
each decoding the whole source itself and encoding just that rung with the same options (scale,
bitrate/maxrate/bufsize, GOP/keyint/sc_threshold/forced IDR, profile/level, preset, AAC audio, fMP4
hls muxer into its own folder), all started at once ("parallel"), and, unless ``--no-sequential``,
also one after the other.

For each x264 preset we print wall time, × realtime (clip seconds / wall seconds) and the CPU
seconds the ffmpeg children used (``RUSAGE_CHILDREN`` deltas), then ``ratio: ours/naive wall time``
(below 1: ours is faster). The clip is made with :func:`ott.media.make_sample` in a temp dir unless
``--source`` names one; everything written goes to a temp dir that is removed at the end.

    python bench/bench_ladder.py [--smoke] [--seconds 20] [--ladder default|small] [--source clip.mp4]
                                 [--presets ultrafast,veryfast] [--no-sequential]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ffmpeg

from ott.media import inspect, load_ladder, make_sample, process
from ott.media.errors import EncodeFailed
from ott.media.ladder import PRESETS, Ladder, Rung
from ott.media.probe import SourceInfo
from ott.media.transcode import INIT_SEGMENT, MEDIA_PLAYLIST, transcode

WIDTH, HEIGHT, FPS = 1920, 1080, 25


@dataclass(frozen=True)
class Run:
    """One measured encode of the whole ladder."""

    label: str
    wall_s: float
    cpu_s: float
    out_bytes: int


def naive_command(source: SourceInfo, ladder: Ladder, rung: Rung, out_dir: Path) -> list[str]:
    """One rung on its own: decode the source, scale, encode, hls-mux into ``out_dir``.

    The per-rung options are those :func:`ott.media.transcode.build_command` gives that rung
    (``b:v`` here is its ``b:v:N`` there); only the fan-out (split, var_stream_map, master playlist)
    is missing, as in a hand-written per-rung script.
    """
    gop_frames = max(1, round(source.fps * ladder.gop_seconds))
    inp = ffmpeg.input(str(source.path))
    streams: list[Any] = [
        inp.video.filter("format", "yuv420p").filter("scale", w=-2, h=rung.height).filter("setsar", 1)
    ]
    options: dict[str, Any] = {
        "c:v": "libx264", "preset": ladder.preset, "profile:v": ladder.profile, "level:v": ladder.level,
        "b:v": f"{rung.video_kbps}k", "maxrate:v": f"{rung.maxrate_kbps}k", "bufsize:v": f"{rung.bufsize_kbps}k",
        "g": gop_frames, "keyint_min": gop_frames, "sc_threshold": 0,
        "force_key_frames": f"expr:gte(t,n_forced*{ladder.gop_seconds})", "forced-idr": 1,
        "f": "hls", "hls_time": ladder.segment_seconds, "hls_playlist_type": "vod",
        "hls_flags": "independent_segments",
        "hls_segment_type": "fmp4", "hls_fmp4_init_filename": INIT_SEGMENT,
        "hls_segment_filename": str(out_dir / "seg_%05d.m4s"),
    }
    if source.has_audio:
        streams.append(inp.audio)
        options.update({"c:a": "aac", "b:a": f"{ladder.audio_kbps}k", "ar": ladder.audio_sample_rate, "ac": 2})
    compiled: list[str] = ffmpeg.output(*streams, str(out_dir / MEDIA_PLAYLIST), **options).compile(
        cmd=process.FFMPEG, overwrite_output=True)
    return [compiled[0], "-hide_banner", "-nostdin", "-v", "error", "-nostats", *compiled[1:]]


def children_cpu() -> float:
    """User + system CPU seconds of all waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, out_dir: Path, work: Callable[[], None]) -> Run:
    out_dir.mkdir(parents=True)
    cpu0, wall0 = children_cpu(), time.perf_counter()
    work()
    wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
    out_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    if not any(out_dir.rglob(MEDIA_PLAYLIST)):
        raise EncodeFailed(f"{label}: no {MEDIA_PLAYLIST} written under {out_dir}")
    shutil.rmtree(out_dir)
    return Run(label, wall, cpu, out_bytes)


def run_parallel(commands: list[list[str]], logs: Path, timeout: float) -> None:
    """Start every command at once and wait for all; kill all if one fails or ``timeout`` passes."""
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes], Path]] = []
    try:
        for i, cmd in enumerate(commands):
            process.echo(cmd)
            log = logs / f"stderr-{i}.txt"
            # stderr to a file, not a pipe: nobody reads pipes while all of them run.
            fh = log.open("wb")
            procs.append((subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh),
                          fh, log))
        deadline = time.monotonic() + timeout
        for proc, _, log in procs:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise EncodeFailed(f"naive rung encodes did not finish within {timeout:.0f}s") from exc
            if code != 0:
                tail = log.read_text(errors="replace").splitlines()[-20:]
                raise EncodeFailed(f"ffmpeg exited with status {code}", tail)
    finally:
        for proc, fh, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)  # waited, so its CPU time lands in RUSAGE_CHILDREN
            fh.close()


def run_sequential(commands: list[list[str]], timeout: float) -> None:
    for cmd in commands:
        try:
            result = process.run(cmd, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise EncodeFailed(f"a naive rung encode did not finish within {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise EncodeFailed(f"ffmpeg exited with status {result.returncode}", result.stderr.splitlines()[-20:])


def line(run: Run, clip_s: float, width: int) -> str:
    cores = run.cpu_s / run.wall_s if run.wall_s else 0.0
    return (f"  {run.label:<{width}}  wall {run.wall_s:7.1f} s  {clip_s / run.wall_s:6.2f}x realtime  "
            f"cpu {run.cpu_s:7.1f} s ({cores:4.2f} cores)  out {run.out_bytes / 1e6:6.1f} MB")


def bench_preset(source: SourceInfo, ladder: Ladder, work: Path, sequential: bool) -> list[Run]:
    n = len(ladder.rungs)
    # Bounds: Transcode's default (60 s + 10 × clip, i.e. 0.1× realtime) for ours; the naive
    # side gets the same per process, and the sum for the parallel batch.
    per_encode = 60 + source.duration * 10
    runs = [measure("ours (1 process)", work / "ours", lambda: transcode(source, ladder, work / "ours"))]

    def naive(root: Path) -> list[list[str]]:
        commands = []
        for rung in ladder.rungs:
            (root / rung.name).mkdir()
            commands.append(naive_command(source, ladder, rung, root / rung.name))
        return commands

    runs.append(measure(f"naive parallel ({n} processes)", work / "parallel",
                        lambda: run_parallel(naive(work / "parallel"), work, per_encode * n)))
    if sequential:
        runs.append(measure(f"naive sequential ({n} processes)", work / "sequential",
                            lambda: run_sequential(naive(work / "sequential"), per_encode)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the sample clip")
    parser.add_argument("--ladder", choices=("default", "small"), default="default")
    parser.add_argument("--source", type=Path, help="encode this clip instead of making a sample")
    parser.add_argument("--presets", default="ultrafast,veryfast", help="comma-separated x264 presets")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false",
                        help="skip the one-after-the-other naive run")
    parser.add_argument("--smoke", action="store_true",
                        help="a 2 s clip, ladder small, ultrafast only: proves the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.ladder, args.presets, args.sequential = 2.0, "small", "ultrafast", False
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        parser.error(f"unknown x264 preset(s) {unknown}; one of {', '.join(PRESETS)}")
    if args.source is None and not 0 < args.seconds <= 300:
        parser.error("--seconds must be in (0, 300]")

    with tempfile.TemporaryDirectory(prefix="ottlab-bench-ladder-") as tmp:
        work = Path(tmp)
        if args.source is None:
            clip = make_sample(work / "sample.mp4", args.seconds, width=WIDTH, height=HEIGHT, fps=FPS,
                               timeout=60 + args.seconds * 20)
        else:
            clip = args.source
        source = inspect(clip, decode_check=False)
        base = load_ladder(args.ladder).fitting(source.height, source.path)
        rungs = ", ".join(r.name for r in base.rungs)
        print(f"\nclip {source.duration:.1f} s {source.width}x{source.height} @ {source.fps:g} fps, "
              f"ladder {base.name} ({rungs}), {os.cpu_count()} CPUs", flush=True)

        results: dict[str, list[Run]] = {}
        for preset in presets:
            print(f"\n== preset {preset}", flush=True)
            results[preset] = bench_preset(source, base.with_preset(preset), work, args.sequential)

        width = max(len(r.label) for runs in results.values() for r in runs)
        print(f"\nclip {source.duration:.1f} s {source.width}x{source.height}, ladder {base.name} ({rungs}), "
              f"{os.cpu_count()} CPUs")
        for preset, runs in results.items():
            print(f"preset {preset}")
            for run in runs:
                print(line(run, source.duration, width))
        for preset, runs in results.items():
            ours = runs[0]
            for run in runs[1:]:
                kind = run.label.split(" (")[0].replace("naive ", "naive-")
                # ours/baseline, like every benchmark here: below 1, ours takes less time.
                print(f"ratio: ours/{kind} wall time ({preset}) = {ours.wall_s / run.wall_s:.2f}"
                      f"   (cpu {ours.cpu_s / run.cpu_s:.2f})")


if __name__ == "__main__":
    main()
