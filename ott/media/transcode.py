"""One ffmpeg process that decodes the source once and encodes the whole ladder into HLS.

The command is built with ffmpeg-python: ``split`` fans the decoded video out to one ``scale`` per
rung, audio is split once per variant (each variant playlist carries its own muxed AAC), and the hls
muxer writes every rung through ``-var_stream_map``. :class:`Transcode` owns the process.

Example::

    from ott.media import ladder, probe
    info = probe.inspect(Path("clip.mp4"))
    args = build_command(info, ladder.load("small"), Path("staging"))
    with progress_bar() as on_progress:
        Transcode(args, duration=info.duration, on_progress=on_progress).run()
"""

from __future__ import annotations

import collections
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ffmpeg

from ott.media import process
from ott.media.errors import EncodeFailed, EncryptionError
from ott.media.ladder import Ladder
from ott.media.probe import SourceInfo

ProgressCallback = Callable[[float, float, float], None]
"""``on_progress(fraction, speed, eta_s)``: fraction 0..1 of the source encoded, speed × realtime."""

MASTER = "master.m3u8"
MEDIA_PLAYLIST = "index.m3u8"
INIT_SEGMENT = "init.mp4"


@dataclass(frozen=True)
class Encryption:
    """HLS AES-128 (whole-segment AES-128-CBC, TS only): the content key and where players fetch it.

    ``key_uri`` is the license service URL; it is written into the playlists as is. The key itself
    only ever lives in a private temp file while ffmpeg runs.
    """

    key: bytes
    key_uri: str
    iv: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def __post_init__(self) -> None:
        if len(self.key) != 16:
            raise EncryptionError(f"AES-128 needs a 16-byte key, got {len(self.key)} bytes; "
                                  "create one with secrets.token_bytes(16)")
        if len(self.iv) != 16:
            raise EncryptionError(f"the IV must be 16 bytes, got {len(self.iv)}")
        if not self.key_uri or any(c in self.key_uri for c in '"\r\n'):
            raise EncryptionError(f"key URI {self.key_uri!r} is empty or contains quotes/newlines, "
                                  "which would break the EXT-X-KEY tag")
        if self.key_uri.startswith(("file:", "/")):
            raise EncryptionError(f"key URI {self.key_uri!r} points at a file; it must be the license "
                                  "service URL so the key is only released to entitled sessions")


def build_command(source: SourceInfo, ladder: Ladder, out_dir: Path, *,
                  key_info_file: Path | None = None) -> list[str]:
    """The complete ffmpeg argument list for ``ladder`` (already fitted to the source).

    Clear output is fMP4 (CMAF); with ``key_info_file`` it is AES-128 TS, because ffmpeg's hls
    muxer cannot encrypt fMP4 segments.

    >>> # one -map per rung plus one audio -map per variant:
    >>> # [..., '-filter_complex', '[0:v]format=yuv420p,split=3[s0][s1][s2];...', '-map', '[s3]', ...]
    """
    n = len(ladder.rungs)
    gop_frames = max(1, round(source.fps * ladder.gop_seconds))
    fmp4 = key_info_file is None
    inp = ffmpeg.input(str(source.path))
    # Convert the pixel format once, before the fan-out: every rung gets 8-bit 4:2:0.
    video = inp.video.filter("format", "yuv420p").filter_multi_output("split", n)
    audio = inp.audio.filter_multi_output("asplit", n) if source.has_audio else None
    streams: list[Any] = []
    options: dict[str, Any] = {}
    variants: list[str] = []
    for i, rung in enumerate(ladder.rungs):
        # w=-2 keeps the aspect ratio with an even width; setsar=1 keeps pixels square after rounding.
        streams.append(video[i].filter("scale", w=-2, h=rung.height).filter("setsar", 1))
        options[f"b:v:{i}"] = f"{rung.video_kbps}k"
        options[f"maxrate:v:{i}"] = f"{rung.maxrate_kbps}k"
        options[f"bufsize:v:{i}"] = f"{rung.bufsize_kbps}k"
        if audio is not None:
            streams.append(audio[i])
            variants.append(f"v:{i},a:{i},name:{rung.name}")
        else:
            variants.append(f"v:{i},name:{rung.name}")
    options.update({
        "c:v": "libx264", "preset": ladder.preset, "profile:v": ladder.profile, "level:v": ladder.level,
        # Fixed, aligned GOP: the same frame count everywhere, no scene-cut keyframes, and keyframes
        # forced on the GOP grid (IDR, so every segment is independently decodable).
        "g": gop_frames, "keyint_min": gop_frames, "sc_threshold": 0,
        "force_key_frames": f"expr:gte(t,n_forced*{ladder.gop_seconds})", "forced-idr": 1,
        "f": "hls", "hls_time": ladder.segment_seconds, "hls_playlist_type": "vod",
        "hls_flags": "independent_segments", "master_pl_name": MASTER,
        "var_stream_map": " ".join(variants),
    })
    if source.has_audio:
        options.update({"c:a": "aac", "b:a": f"{ladder.audio_kbps}k", "ar": ladder.audio_sample_rate, "ac": 2})
    if fmp4:
        options.update({"hls_segment_type": "fmp4", "hls_fmp4_init_filename": INIT_SEGMENT,
                        "hls_segment_filename": str(out_dir / "%v" / "seg_%05d.m4s")})
    else:
        options.update({"hls_segment_type": "mpegts", "hls_key_info_file": str(key_info_file),
                        "hls_segment_filename": str(out_dir / "%v" / "seg_%05d.ts")})
    out = ffmpeg.output(*streams, str(out_dir / "%v" / MEDIA_PLAYLIST), **options)
    compiled: list[str] = out.compile(cmd=process.FFMPEG, overwrite_output=True)
    # Global options up front (ffmpeg-python appends them last), so the echoed command reads naturally.
    # -progress pipe:1 gives machine-readable key=value blocks on stdout; -nostats silences stderr.
    return [compiled[0], "-hide_banner", "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats",
            *compiled[1:]]


@contextmanager
def key_info(encryption: Encryption) -> Iterator[Path]:
    """A private key info file for ``-hls_key_info_file`` (URI, key path, IV), deleted on exit.

    It lives in its own 0700 temp dir, never under the staging or media root, so the key cannot
    end up in the published tree.
    """
    private = Path(tempfile.mkdtemp(prefix="ott-key-"))
    try:
        key_file = private / "content.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(encryption.key)
        info = private / "key.info"
        info.write_text(f"{encryption.key_uri}\n{key_file}\n{encryption.iv.hex()}\n", encoding="utf-8")
        yield info
    finally:
        shutil.rmtree(private, ignore_errors=True)


@dataclass(frozen=True)
class Progress:
    """One block of ffmpeg's ``-progress`` stream."""

    out_time_s: float
    speed: float
    done: bool


def parse_progress(lines: Iterable[str]) -> Iterator[Progress]:
    """Turn ffmpeg's ``key=value`` progress stream into one :class:`Progress` per block.

    >>> list(parse_progress(["out_time_us=2000000", "speed=1.5x", "progress=continue"]))
    [Progress(out_time_s=2.0, speed=1.5, done=False)]
    """
    block: dict[str, str] = {}
    for raw in lines:
        key, sep, value = raw.strip().partition("=")
        if not sep:
            continue
        block[key] = value.strip()
        if key == "progress":
            yield Progress(out_time_s=_out_time(block), speed=_speed(block.get("speed", "")), done=value == "end")
            block = {}


def _out_time(block: dict[str, str]) -> float:
    # out_time_us is the precise field; "N/A" appears before the first frame.
    for key in ("out_time_us", "out_time_ms"):  # out_time_ms is in µs as well (a historical misnomer)
        try:
            return max(0.0, int(block[key]) / 1_000_000)
        except (KeyError, ValueError):
            continue
    return 0.0


def _speed(text: str) -> float:
    try:
        return float(text.rstrip("x").strip())
    except ValueError:
        return 0.0


class Transcode:
    """Owns one ffmpeg process: :meth:`start`, :meth:`poll`, :meth:`wait`, :meth:`stop`.

    ``wait`` drives ``on_progress(fraction, speed, eta_s)`` from the progress stream and raises
    :class:`EncodeFailed` (with ffmpeg's stderr tail) on a non-zero exit or when ``timeout`` passes.

    >>> with Transcode(args, duration=6.0) as job:      # doctest: +SKIP
    ...     job.run()
    """

    def __init__(self, args: list[str], *, duration: float, on_progress: ProgressCallback | None = None,
                 timeout: float | None = None) -> None:
        self.args = args
        self.duration = max(duration, 0.001)
        self.on_progress = on_progress
        # Default: generous for a 2-core machine (0.4× realtime worst case measured) plus start-up.
        self.timeout = timeout if timeout is not None else 60 + duration * 10
        self.last: Progress | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._updates: queue.Queue[Progress | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=30)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("this Transcode was already started")
        process.echo(self.args)
        self._proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, errors="replace",
                                      preexec_fn=process.die_with_parent)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        # Both pipes are drained in threads: a full stderr pipe would otherwise stall ffmpeg.
        self._threads = [
            threading.Thread(target=self._read_progress, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def poll(self) -> int | None:
        """ffmpeg's exit status, or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def wait(self) -> None:
        if self._proc is None:
            raise RuntimeError("call start() first")
        deadline = time.monotonic() + self.timeout
        finished = False
        while not finished:
            if time.monotonic() > deadline:
                self.stop()
                raise EncodeFailed(f"ffmpeg did not finish within {self.timeout:.0f}s", list(self._stderr))
            try:
                update = self._updates.get(timeout=0.2)
            except queue.Empty:
                continue
            if update is None:  # stdout closed: ffmpeg is exiting
                finished = True
            else:
                self._report(update)
        try:
            code = self._proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise EncodeFailed(f"ffmpeg did not exit within {self.timeout:.0f}s", list(self._stderr)) from exc
        for thread in self._threads:
            thread.join(timeout=5)
        if code != 0:
            raise EncodeFailed(f"ffmpeg exited with status {code}", list(self._stderr))

    def run(self) -> None:
        """start + wait, stopping ffmpeg if anything goes wrong on our side."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()

    def stop(self, grace: float = 5.0) -> None:
        """Stop politely (SIGTERM lets ffmpeg close files), then forcefully."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)

    def __enter__(self) -> Transcode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _report(self, update: Progress) -> None:
        self.last = update
        if self.on_progress is None:
            return
        fraction = 1.0 if update.done else min(1.0, update.out_time_s / self.duration)
        remaining = max(0.0, self.duration - update.out_time_s)
        eta = 0.0 if update.done else (remaining / update.speed if update.speed > 0 else float("inf"))
        self.on_progress(fraction, update.speed, eta)

    def _read_progress(self, stream: IO[str]) -> None:
        try:
            for update in parse_progress(stream):
                self._updates.put(update)
        finally:
            self._updates.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line.rstrip())


def transcode(source: SourceInfo, ladder: Ladder, out_dir: Path, *, encryption: Encryption | None = None,
              on_progress: ProgressCallback | None = None, timeout: float | None = None) -> list[str]:
    """Encode ``source`` with ``ladder`` into ``out_dir`` (a staging folder); returns the command run.

    With ``encryption`` the segments are AES-128 TS; the key info file exists only during the run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if encryption is None:
        args = build_command(source, ladder, out_dir)
        Transcode(args, duration=source.duration, on_progress=on_progress, timeout=timeout).run()
        return args
    with key_info(encryption) as info:
        args = build_command(source, ladder, out_dir, key_info_file=info)
        Transcode(args, duration=source.duration, on_progress=on_progress, timeout=timeout).run()
    return args


@contextmanager
def progress_bar(description: str = "transcode") -> Iterator[ProgressCallback]:
    """A tqdm bar (terminal or notebook widget via ``tqdm.auto``) fed by the progress callback.

    >>> with progress_bar("big-buck-bunny") as on_progress:   # doctest: +SKIP
    ...     pipeline(source, media_root, "big-buck-bunny", ladder, on_progress=on_progress)
    """
    from tqdm.auto import tqdm

    with tqdm(total=100.0, desc=description, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        def update(fraction: float, speed: float, eta_s: float) -> None:
            bar.n = round(fraction * 100, 1)
            eta = "?" if eta_s == float("inf") else f"{eta_s:.0f}s"
            bar.set_postfix_str(f"speed {speed:.2f}x, ETA {eta}")

        yield update
