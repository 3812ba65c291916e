"""The edge exporter as it runs: ``python -m ott.edgelog`` following a real file through rotation and truncation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labkit.core.wait import until
from ott import cmcd

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
POP = "edge-test"
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _line(path: str, *, cache: str = "HIT", status: int = 200, upstream: str = "", query: str = "",
          headers: dict[str, str] | None = None) -> bytes:
    shards = {f"cmcd_{name[5:].lower()}": value for name, value in (headers or {}).items()}
    fields: dict[str, Any] = {
        "time": "2026-11-24T22:26:12+00:00", "msec": 1795559172.123, "pop": POP, "method": "GET", "path": path,
        "status": status, "bytes": 1000, "request_time": 0.002, "cache": cache, "upstream_status": upstream,
        "upstream_time": "0.001" if upstream else "", "range": "", "cmcd": query, "cmcd_request": "",
        "cmcd_object": "", "cmcd_status": "", "cmcd_session": "", "request_id": "r", **shards,
    }
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def _free_port() -> int:
    # Bound, read and released: another process could take it before the exporter does (a small race).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(base: str) -> Scrape:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metric(scrape: Scrape, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset({"pop": POP, **labels}.items())))


def _wait_for(base: str, check: Callable[[Scrape], bool], what: str, timeout: float = 5.0) -> Scrape:
    scrape: Scrape = {}

    def checked() -> bool:
        nonlocal scrape
        scrape = _scrape(base)
        return check(scrape)

    until(checked, timeout, 0.05, lambda: f"{what}; last scrape: {sorted(scrape.items())[:40]}")
    return scrape


def _lines(scrape: Scrape) -> tuple[float | None, float | None]:
    return (_metric(scrape, "ott_edge_log_lines_total", result="parsed"),
            _metric(scrape, "ott_edge_log_lines_total", result="invalid"))


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    log = tmp_path / "access.log"
    log.write_bytes(_line("/t/720p/seg_00001.m4s", query=cmcd.to_query(cmcd.Cmcd(sid="s1", su=True, br=800)))
                    + b"garbage\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTT_")}
    with (tmp_path / "exporter.out").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ott.edgelog", "--log", str(log), "--pop", POP, "--host",
                                 "127.0.0.1", "--port", str(port), "--from-start"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "exporter.out").read_text()
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200

        until(healthy, 10, 0.05, "the exporter to answer /healthz", ignoring=(httpx.TransportError,))
        yield base, log, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_exporter_follows_appends_rotation_and_truncation(exporter: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, log, proc = exporter
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.json() == {"status": "alive"}
    assert health.headers["content-type"] == "application/json"
    # --from-start: the line that was there, and the garbage after it.
    _wait_for(base, lambda s: _lines(s) == (1, 1), "the existing lines")

    # Appends, with a last line still being written.
    pending = _line("/t/720p/index.m3u8")
    _append(log, _line("/t/master.m3u8", cache="MISS", upstream="502, 200")
            + _line("/t/720p/seg_00002.m4s", query=cmcd.to_query(cmcd.Cmcd(sid="s1", br=3200, bs=True, mtp=9000)))
            + pending[:40])
    # The read that parsed the two whole lines took the half-written one too: it stays pending. Had
    # it been counted invalid, (4, 1) below could never be reached (counters do not go down).
    _wait_for(base, lambda s: _lines(s) == (3, 1), "the appended lines")
    _append(log, pending[40:])
    _wait_for(base, lambda s: _lines(s) == (4, 1), "the completed line")

    # Rotation: rename, then a new file; the writer finishes a line in the old one before reopening.
    rotated = log.with_name("access.log.1")
    log.rename(rotated)
    log.write_bytes(_line("/t/720p/init.mp4", cache="MISS", upstream="200",
                          headers=cmcd.to_headers(cmcd.Cmcd(sid="s2", cid="lab-clock", su=True))))
    _append(rotated, _line("/t/720p/seg_00003.m4s"))
    _wait_for(base, lambda s: _lines(s) == (6, 1), "both files after the rotation")

    # Truncation (copytruncate), then a shorter content.
    shorter = _line("/t/x.m4s", cache="EXPIRED", query="br%3Dfast")
    assert len(shorter) < log.stat().st_size
    log.write_bytes(shorter)
    scrape = _wait_for(base, lambda s: _lines(s) == (7, 1), "the truncated file")

    def requests(cache: str, kind: str) -> float | None:
        return _metric(scrape, "ott_edge_requests_total", cache=cache, object_type=kind, status_class="2xx")

    assert requests("HIT", "segment") == 3
    assert requests("MISS", "playlist") == 1
    assert requests("HIT", "playlist") == 1
    assert requests("MISS", "init") == 1
    assert requests("EXPIRED", "segment") == 1
    assert _metric(scrape, "ott_edge_response_bytes_total", cache="HIT", object_type="segment") == 3000
    assert _metric(scrape, "ott_edge_request_duration_seconds_count", cache="HIT", object_type="segment") == 3
    fetches = {(labels["object_type"], labels["upstream_status"]): v for (name, key), v in scrape.items()
               if name == "ott_edge_origin_fetches_total" for labels in [dict(key)]}
    assert fetches == {("playlist", "502"): 1, ("playlist", "200"): 1, ("init", "200"): 1}
    assert [_metric(scrape, "ott_edge_cmcd_requests_total", result=r) for r in ("valid", "invalid", "absent")] == [
        3, 1, 3]
    s1 = {"session": "s1", "content": ""}
    assert _metric(scrape, "ott_edge_cmcd_session_requests_total", **s1) == 2
    assert _metric(scrape, "ott_edge_cmcd_session_bitrate_kbps", **s1) == 3200
    assert _metric(scrape, "ott_edge_cmcd_session_throughput_kbps", **s1) == 9000
    assert _metric(scrape, "ott_edge_cmcd_session_buffer_starvation_total", **s1) == 1
    assert _metric(scrape, "ott_edge_cmcd_session_startup", **s1) == 0
    assert _metric(scrape, "ott_edge_cmcd_session_startup", session="s2", content="lab-clock") == 1
    assert _metric(scrape, "ott_edge_cmcd_sessions") == 2

    proc.terminate()
    assert proc.wait(timeout=5) == 0
    events = [json.loads(raw).get("event") for raw in (log.parent / "exporter.out").read_text().splitlines()]
    assert {"started", "opened", "rotated", "truncated", "invalid_lines", "stopped"} <= set(events), events
