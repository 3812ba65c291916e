"""ffmpeg's -progress stream (recorded from a real run) → fraction, speed, ETA."""

from __future__ import annotations

import sys

import pytest

from ott.media import transcode

RECORDED = """\
frame=0
fps=0.00
stream_0_0_q=0.0
bitrate=N/A
total_size=N/A
out_time_us=N/A
out_time_ms=N/A
out_time=N/A
dup_frames=0
drop_frames=0
speed=N/A
progress=continue
frame=51
fps=0.00
stream_0_0_q=28.0
bitrate=N/A
total_size=N/A
out_time_us=2040000
out_time_ms=2040000
out_time=00:00:02.040000
dup_frames=0
drop_frames=0
speed=4.03x
progress=continue
frame=150
fps=146.24
stream_0_0_q=-1.0
bitrate=N/A
total_size=N/A
out_time_us=6000000
out_time_ms=6000000
out_time=00:00:06.000000
dup_frames=0
drop_frames=0
speed=4.34x
progress=end
"""


def test_parse_recorded_stream() -> None:
    updates = list(transcode.parse_progress(RECORDED.splitlines()))
    assert updates == [
        transcode.Progress(out_time_s=0.0, speed=0.0, done=False),
        transcode.Progress(out_time_s=2.04, speed=4.03, done=False),
        transcode.Progress(out_time_s=6.0, speed=4.34, done=True),
    ]


def test_partial_block_and_junk_are_ignored() -> None:
    assert list(transcode.parse_progress(["garbage", "out_time_us=1000000"])) == []


def test_transcode_reports_fraction_speed_eta() -> None:
    # A stand-in "ffmpeg" that prints the recorded stream: exercises the process plumbing.
    script = f"import sys; sys.stdout.write({RECORDED!r}); sys.stderr.write('warning: test\\n')"
    seen: list[tuple[float, float, float]] = []
    job = transcode.Transcode([sys.executable, "-c", script], duration=6.0,
                              on_progress=lambda f, s, e: seen.append((f, s, e)), timeout=30)
    job.run()
    assert job.poll() == 0
    assert seen[0] == (0.0, 0.0, float("inf"))
    assert seen[1][0] == pytest.approx(0.34) and seen[1][1] == 4.03
    assert seen[1][2] == pytest.approx((6.0 - 2.04) / 4.03)
    assert seen[-1] == (1.0, 4.34, 0.0)


def test_failure_carries_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('Unknown encoder libx999\\n'); sys.exit(1)"
    job = transcode.Transcode([sys.executable, "-c", script], duration=1.0, timeout=30)
    with pytest.raises(transcode.EncodeFailed) as info:
        job.run()
    assert "Unknown encoder libx999" in info.value.stderr_tail
    assert "Unknown encoder libx999" in str(info.value)


def test_timeout_stops_the_process() -> None:
    job = transcode.Transcode([sys.executable, "-c", "import time; time.sleep(30)"], duration=1.0, timeout=0.5)
    with pytest.raises(transcode.EncodeFailed, match="did not finish"):
        job.run()
    assert job.poll() is not None
