"""Viewers' URLs reach the lab from outside the cluster: ``kube``-marked, they need a real one.

Offline, tests/kube/test_public_entry*.py check that the manifests, the cluster configs and the kube
target agree on the URLs; only a cluster shows that a signed playback URL and a key URI, as license
writes them, answer from this machine (the node ports of k8s/overlays/<overlay>/cluster.yaml, or
the port-forwards labkit falls back to), and that ``scale edge 3`` gives three PoPs license signs for.

Skipped without a cluster, with the kube tier's one reason (tests/kube/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from labkit import platform
from labkit.clients import pops, seed, transcoding
from labkit.clients.api import OttClient
from labkit.core.config import LabConfig
from labkit.targets.kube.target import KubeTarget

TITLE = "reach-aes"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[KubeTarget]:
    """The platform on the cluster (function-scoped: the kube tier's skip comes first)."""
    cfg = LabConfig(home=tmp_path / "lab", ready_timeout=600)
    target = KubeTarget(cfg, platform.components())
    try:
        target.up(["monitoring", "apis", "media", "cdn"])
        seed.seed_target(target)
        yield target
    finally:
        target.down()
        target.close()


@pytest.mark.kube
@pytest.mark.timeout(2400)
def test_signed_playback_urls_and_a_key_uri_answer_from_outside_the_cluster(lab: KubeTarget) -> None:
    clip = transcoding.sample_clip(lab, 4, width=640, height=360)
    job = transcoding.transcode(lab, clip, TITLE, encrypt=True, ladder="small", preset="ultrafast",
                                tier="premium", progress=False)
    assert job.state == "published" and job.result is not None, job
    # The master URL the catalog lists is the origin's public one.
    assert httpx.get(job.result.master_url, timeout=10).status_code == 200
    alice = seed.demo_user("alice")
    with OttClient(lab.endpoint("gateway")) as viewer:
        viewer.login(alice.email, alice.password)
        grant = viewer.authorize(TITLE, device_id="kube-reachability")
        try:
            urls = pops.pop_urls(lab)
            assert sorted(p["pop"] for p in grant["playback"]) == sorted(urls)
            for playback in grant["playback"]:
                # As license signed it, with no rewriting: the URL itself reaches the PoP from here.
                master = httpx.get(playback["url"], timeout=10)
                assert master.status_code == 200 and master.text.startswith("#EXTM3U"), playback
                assert master.headers["x-pop"] == playback["pop"]
                variant = next(line for line in master.text.splitlines() if line and not line.startswith("#"))
                media = httpx.get(urljoin(playback["url"], variant), timeout=10)
                key_uri = next(line.split('URI="')[1].split('"')[0] for line in media.text.splitlines()
                               if line.startswith("#EXT-X-KEY"))
            key = httpx.get(key_uri, headers={"Authorization": f"Bearer {grant['authorization']}"}, timeout=10)
            assert key.status_code == 200 and len(key.content) == 16
            assert key_uri.startswith(lab.endpoint("gateway"))
        finally:
            viewer.end_session(grant["session_id"])

    # Three PoPs: license signs for each, and each answers from here under its own name.
    status = lab.scale("edge", 3)
    assert sorted(status.replica_urls) == ["edge-0", "edge-1", "edge-2"]
    with OttClient(lab.endpoint("gateway")) as viewer:
        viewer.login(alice.email, alice.password)
        grant = viewer.authorize(TITLE, device_id="kube-reachability-3")
        try:
            signed = {p["pop"]: p["url"] for p in grant["playback"]}
            assert sorted(signed) == ["edge-0", "edge-1", "edge-2"]
            for pop, url in signed.items():
                answer = httpx.get(url, timeout=10)
                assert answer.status_code == 200 and answer.headers["x-pop"] == pop
        finally:
            viewer.end_session(grant["session_id"])

