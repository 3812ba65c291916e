"""The single ffmpeg command: split, one -map per rung, var_stream_map, encryption only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ott.media import ladder, transcode
from ott.media.errors import EncryptionError
from ott.media.probe import SourceInfo

SOURCE = SourceInfo(path=Path("/in/clip.mp4"), duration=6.0, width=1280, height=720, fps=25.0,
                    pix_fmt="yuv420p", has_audio=True, video_codec="h264")


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_clear_command_is_one_fmp4_ladder() -> None:
    small = ladder.load("small")
    args = transcode.build_command(SOURCE, small, Path("/stage"))
    graph = _value(args, "-filter_complex")
    assert args[0].endswith("ffmpeg") and args.count("-i") == 1
    assert "split=3" in graph and "asplit=3" in graph and graph.count("scale=") == 3
    assert args.count("-map") == 6  # one video map per rung + audio mapped once per variant
    assert _value(args, "-var_stream_map") == "v:0,a:0,name:720p v:1,a:1,name:480p v:2,a:2,name:360p"
    for i, rung in enumerate(small.rungs):
        assert _value(args, f"-b:v:{i}") == f"{rung.video_kbps}k"
        assert _value(args, f"-maxrate:v:{i}") == f"{rung.maxrate_kbps}k"
        assert _value(args, f"-bufsize:v:{i}") == f"{rung.bufsize_kbps}k"
    assert _value(args, "-g") == _value(args, "-keyint_min") == "50"  # 25 fps × 2 s
    assert _value(args, "-sc_threshold") == "0"
    assert _value(args, "-force_key_frames") == "expr:gte(t,n_forced*2)"
    assert _value(args, "-profile:v") == "high"
    assert _value(args, "-hls_segment_type") == "fmp4"
    assert _value(args, "-hls_playlist_type") == "vod"
    assert _value(args, "-hls_time") == "4"
    assert _value(args, "-master_pl_name") == "master.m3u8"
    assert _value(args, "-hls_segment_filename") == "/stage/%v/seg_%05d.m4s"
    assert _value(args, "-progress") == "pipe:1" and "-nostats" in args
    assert "-hls_key_info_file" not in args


def test_encrypted_command_uses_ts_and_key_info() -> None:
    args = transcode.build_command(SOURCE, ladder.load("small"), Path("/stage"), key_info_file=Path("/k/info"))
    assert _value(args, "-hls_segment_type") == "mpegts"
    assert _value(args, "-hls_key_info_file") == "/k/info"
    assert _value(args, "-hls_segment_filename").endswith(".ts")


def test_video_only_source_maps_no_audio() -> None:
    silent = SourceInfo(**{**SOURCE.__dict__, "has_audio": False})
    args = transcode.build_command(silent, ladder.load("small").fitting(480), Path("/s"))
    assert args.count("-map") == 2 and "asplit" not in _value(args, "-filter_complex")
    assert _value(args, "-var_stream_map") == "v:0,name:480p v:1,name:360p"


def test_gop_follows_frame_rate() -> None:
    fast = SourceInfo(**{**SOURCE.__dict__, "fps": 30000 / 1001})
    assert _value(transcode.build_command(fast, ladder.load("small"), Path("/s")), "-g") == "60"


def test_key_info_file_is_private_and_removed() -> None:
    encryption = transcode.Encryption(b"0123456789abcdef", "https://license.example/keys/t1", iv=b"\x01" * 16)
    with transcode.key_info(encryption) as info:
        uri, key_path, iv = info.read_text().splitlines()
        assert uri == "https://license.example/keys/t1" and iv == "01" * 16
        assert Path(key_path).read_bytes() == b"0123456789abcdef"
        assert Path(key_path).stat().st_mode & 0o077 == 0
        assert info.parent.stat().st_mode & 0o077 == 0
    assert not info.parent.exists()


@pytest.mark.parametrize(("key", "uri"), [
    (b"short", "https://license.example/k"),
    (b"0123456789abcdef", ""),
    (b"0123456789abcdef", 'https://x/"k"'),
    (b"0123456789abcdef", "file:///etc/key"),
    (b"0123456789abcdef", "/srv/media/key.bin"),
])
def test_bad_encryption_settings(key: bytes, uri: str) -> None:
    with pytest.raises(EncryptionError):
        transcode.Encryption(key, uri)
