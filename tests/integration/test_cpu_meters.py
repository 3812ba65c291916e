"""CPU per component two ways on the same steps of load: the local target's psutil meter and the process exporter.

A running lab plays two steps of viewers; during each, the capacity ramp's sampler reads
``target.cpu_meter()`` (psutil, twice a second) and another reads the process exporter's counters
from the lab's Prometheus (job ``process``, scraped every 5 s) through
:func:`labkit.clients.counters.process_meter`: the same reader (interpolated samples, read
``lag_s`` behind) the kube target uses on cAdvisor's counters. The two agree on the cores the
platform used per step; the exporter's peaks are over a scrape interval, not 1 s, which is why the
ramp keeps psutil on this target. The figures are printed (``-s``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from _labs import running_lab

from labkit.analysis import capacity as analysis
from labkit.clients import counters, transcoding
from labkit.clients.prometheus import Prometheus
from labkit.platform.layers.monitoring.processes import JOB
from labkit.targets.local.target import LocalTarget
from labkit.traffic import audience
from labkit.traffic import capacity as ramps
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration
TITLE = "meter-clock"
CLIP_S = 24
BASE_PORT = 26600
STEPS = (50, 200)
STEP_SECONDS = 12.0
# Agreement on the platform's cores in a step: a quarter, or 0.05 core for a quiet step.
RELATIVE, ABSOLUTE = 0.25, 0.05


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("meters")
    with running_lab(home, BASE_PORT, seeded=True) as target:
        clip = make_sample(Path(home) / "clip.mp4", CLIP_S, width=640, height=360)
        transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
        yield target


def test_psutil_and_the_process_exporter_agree_on_the_platforms_cores(lab: LocalTarget) -> None:
    prom = Prometheus(lab.endpoint("prometheus"))
    prom.wait_for_targets([JOB], timeout=60)
    names = [c.name for c in lab.components]
    exporter = counters.process_meter(prom, names)
    psutil_meter = lab.cpu_meter()
    # The exporter's groups are the components that run (a group with no process yet has no series).
    assert set(exporter()) >= {s.name for s in lab.status() if s.pids} - {"process-exporter"}, exporter()
    rows = []
    for i, viewers in enumerate(STEPS):
        with ramps._Sampler(psutil_meter) as fast, ramps._Sampler(exporter) as scraped:
            run = audience.run(lab.endpoint("gateway"), TITLE, viewers, STEP_SECONDS, arrivals_s=2.0,
                               max_buffer_s=8.0, seed=i, beacons=False)
        assert run.summary()["started"] == viewers
        means = {"psutil": fast.mean(), "process job": scraped.mean()}
        peaks = {"psutil": analysis.peak_cores(fast.samples), "process job": analysis.peak_cores(scraped.samples)}
        platform = {how: sum(v for k, v in m.items() if k not in analysis.NOT_PLATFORM) for how, m in means.items()}
        rows.append({"viewers": viewers, **{f"platform {how}": v for how, v in platform.items()},
                     **{f"edge {how}": m.get("edge", 0.0) for how, m in means.items()},
                     **{f"auth peak {how}": p.get("auth", 0.0) for how, p in peaks.items()}})
        print(f"{viewers} viewers, {STEP_SECONDS:g} s; readings {len(fast.samples)} / {len(scraped.samples)}")
        print(pd.DataFrame({**{f"{how} mean": m for how, m in means.items()},
                            **{f"{how} peak": p for how, p in peaks.items()}}).round(3).to_string())
        for name in (k for k, v in means["psutil"].items() if k not in analysis.NOT_PLATFORM and v >= 0.05):
            assert means["process job"].get(name, 0.0) > 0, (name, means)
        assert abs(platform["psutil"] - platform["process job"]) <= max(ABSOLUTE, RELATIVE * platform["psutil"]), rows
    print(pd.DataFrame(rows).round(3).to_string())
    # More viewers, more CPU at the PoP that serves them, seen both ways.
    assert rows[1]["edge psutil"] > rows[0]["edge psutil"] and rows[1]["edge process job"] > rows[0]["edge process job"]
