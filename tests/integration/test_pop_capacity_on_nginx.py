"""A PoP's declared capacity on real nginx (labkit.platform.layers.cdn.POP_CAPACITY_RPS's mechanism):
set on the edge (Target.set_pop_capacity), each PoP queues media requests past its rate (their answers
wait) and refuses those beyond its queue with 503; a PoP the edge scales to renders it too, and `up`
again keeps both the capacity and the replicas scaling gave; unset, nothing waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from _labs import running_lab

from labkit.platform.layers import cdn
from labkit.targets.local.target import LocalTarget
from ott import signing

pytestmark = pytest.mark.integration
RPS = 5
BURST = 30  # requests at once: RPS * CAPACITY_QUEUE_S (20) may wait, the rest are refused


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    with running_lab(tmp_path_factory.mktemp("pop-capacity"), 20000, ["media", "cdn"]) as target:
        yield target


async def _burst(urls: list[str]) -> list[tuple[int, float]]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=len(urls))) as client:
        async def one(url: str) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.get(url)
            return response.status_code, time.monotonic() - started

        return list(await asyncio.gather(*(one(url) for url in urls)))


def _segment_urls(lab: LocalTarget, pop: int) -> list[str]:
    # Signed segments of no title: past the link check they are media requests, which the origin answers
    # 404. Each a different one: concurrent misses of one object would wait for each other (the cache lock).
    secret, expires = lab.signing_secret(), int(time.time()) + 600
    return [lab.component("edge").url(lab.cfg, "http", pop)
            + signing.signed_path(secret, "no-such-title", expires, f"/720p/seg_{i:05d}.m4s") for i in range(BURST)]


def test_a_pop_queues_past_its_capacity_and_refuses_beyond_its_queue(lab: LocalTarget) -> None:
    assert lab.set_pop_capacity(RPS) == RPS
    answers = asyncio.run(_burst(_segment_urls(lab, 0)))
    refused = [s for s, _ in answers if s == 503]
    served = [(s, t) for s, t in answers if s != 503]
    queue = RPS * cdn.CAPACITY_QUEUE_S
    assert BURST - queue - 2 <= len(refused) <= BURST - queue + 2, answers       # beyond the queue: 503 at once
    assert {s for s, _ in served} == {404}, answers                               # the others reached the origin ...
    assert max(t for _, t in served) >= 0.7 * cdn.CAPACITY_QUEUE_S, answers       # ... the last after the queue's wait
    assert max(t for s, t in answers if s == 503) < 1.0, answers

    lab.scale("edge", 3)   # a PoP the edge adds brings the same capacity
    assert f"rate={RPS}r/s" in (lab.cfg.conf_dir / "edge" / "2" / "nginx.conf").read_text()
    refused_new = [s for s, _ in asyncio.run(_burst(_segment_urls(lab, 2))) if s == 503]
    assert len(refused_new) >= BURST - queue - 2

    # `up` again (what `ottlab up` does after an autoscaler scaled the edge) keeps 3 PoPs and their capacity ...
    lab.up(["media", "cdn"])
    edge = next(s for s in lab.status() if s.name == "edge")
    assert edge.replicas == 3 and len(edge.replica_urls) == 3, edge
    assert all(f"rate={RPS}r/s" in (lab.cfg.conf_dir / "edge" / str(i) / "nginx.conf").read_text() for i in range(3))
    # ... and one PoP stays one: `up` does not start the declared second again behind the edges' list.
    lab.scale("edge", 1)
    lab.up(["media", "cdn"])
    edge = next(s for s in lab.status() if s.name == "edge")
    assert edge.replicas == 1 and len(edge.pids) == 1 and len(edge.replica_urls) == 1, edge
    lab.scale("edge", cdn.EDGE.replicas)


def test_without_a_capacity_nothing_waits(lab: LocalTarget) -> None:
    assert lab.set_pop_capacity(None) is None
    assert cdn.CAPACITY_SETTING not in lab.set_env("edge", {})
    assert "limit_req" not in (lab.cfg.conf_dir / "edge" / "0" / "nginx.conf").read_text()
    answers = asyncio.run(_burst(_segment_urls(lab, 0)))
    assert {s for s, _ in answers} == {404}, answers
    assert max(t for _, t in answers) < 1.5, answers
