"""What notebooks 01 and 02 used to write inline, now in labkit: tokens, TS facts, AES-128, the published folder."""

from __future__ import annotations

import doctest
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from labkit.clients import api, transcoding
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from ott.transcoder import Job


@pytest.mark.parametrize("module", [api, transcoding])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0


def test_a_forged_token_reads_like_the_real_one_but_is_signed_by_another_key() -> None:
    claims = {"sub": "42", "aud": "ottlab-api"}
    first, second = api.forge_token(claims, kid="auth-1"), api.forge_token(claims, kid="auth-1")
    assert api.read_token(first) == api.read_token(second) == ({"alg": "ES256", "kid": "auth-1", "typ": "JWT"}, claims)
    assert first.rsplit(".", 1)[-1] != second.rsplit(".", 1)[-1]   # a new key each time


def test_a_segment_decrypts_with_its_key_and_iv() -> None:
    key, iv, plain = os.urandom(16), os.urandom(16), b"\x47" + os.urandom(187) * 3
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    cipher = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    assert transcoding.decrypt_segment(cipher, key, "0x" + iv.hex()) == plain
    assert transcoding.decrypt_segment(cipher, key, "0x" + iv.hex().upper()) == plain


def test_ts_facts_count_the_sync_bytes() -> None:
    facts = transcoding.ts_facts(bytes([0x47]) + bytes(187) + bytes([0x11]) + bytes(187))
    assert facts["bytes"] == 376 and facts["packets starting 0x47"] == "1 of 2"
    assert facts["first bytes"] == "47 00 00 00 00 00 00 00"


@dataclass
class RootTarget:
    cfg: LabConfig

    def media_root(self) -> Path:
        return self.cfg.data_dir / "media"

    def media_folder(self, title: str, version: str) -> Path:
        return self.media_root() / title / version


def _job(master_url: str | None) -> Job:
    result = None if master_url is None else {
        "master_url": master_url, "path": "/elsewhere", "encrypted": False, "key_uri": None, "speed": 1.0,
        "encode_seconds": 1.0, "duration_s": 1.0, "rungs": [], "command": ["ffmpeg"]}
    return Job.model_validate({
        "id": "j1", "title_id": "clip", "spec": {"source_id": "0" * 32, "title_id": "clip"}, "source_name": "s.mp4",
        "state": "published",
        "outcome": None, "error_code": None, "error_message": None, "progress": None, "result": result,
        "created_at": 0.0, "started_at": None, "finished_at": None})


def test_the_published_folder_is_in_the_targets_media_root(tmp_path: Path) -> None:
    target = RootTarget(LabConfig(home=tmp_path / "lab", base_port=29000))
    folder = transcoding.published_folder(target, _job("http://127.0.0.1:18060/clip/20261204T1/master.m3u8"))  # type: ignore[arg-type]
    assert folder == target.media_root() / "clip" / "20261204T1"
    with pytest.raises(ConfigError, match="published nothing"):
        transcoding.published_folder(target, _job(None))  # type: ignore[arg-type]
