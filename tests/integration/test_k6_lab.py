"""The real k6 plays the viewer's journey (k8s/loadtest/viewer-journey.js) against a running local lab.

A few VUs for a few seconds: ``ottlab k6`` echoes the command, k6's thresholds hold, its summary JSON
lands in the lab's reports directory, and its metrics arrive in the lab's Prometheus through remote
write (the same output and settings as the kube Job). A short capacity ramp measures the same lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _labs import running_lab

from labkit.analysis.capacity import GENERATOR, NOT_PLATFORM, STEP_COLUMNS
from labkit.clients import transcoding
from labkit.clients.prometheus import Prometheus
from labkit.targets.local.target import LocalTarget
from labkit.traffic import capacity, loadtest
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration
TITLE = "k6-clock"
CLIP_S = 8
BASE_PORT = 31900


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("k6")
    with running_lab(home, BASE_PORT, seeded=True) as target:
        clip = make_sample(home / "clip.mp4", CLIP_S, width=640, height=360)
        transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
        yield target


def test_ottlab_k6_plays_the_journey_and_its_metrics_reach_prometheus(lab: LocalTarget) -> None:
    env = {**os.environ, "OTTLAB_HOME": str(lab.cfg.home), "OTTLAB_BASE_PORT": str(BASE_PORT)}
    ottlab = Path(sys.executable).parent / "ottlab"
    done = subprocess.run([str(ottlab), "k6", "--vus", "2", "--duration", "3s", "--ramp", "1s", "--title", TITLE],
                          env=env, capture_output=True, text=True, timeout=loadtest.GRACEFUL_STOP_S + 60)
    assert done.returncode == 0, done.stdout + done.stderr
    echoed = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert echoed and " run " in echoed[0] and str(loadtest.SCRIPT) in echoed[0], done.stdout
    doc = json.loads(done.stdout[done.stdout.index("{"):])
    assert doc["thresholds_passed"] and all(doc["thresholds"].values()) and len(doc["thresholds"]) == 5, doc
    assert doc["plays"] >= 2 and doc["started"] == doc["plays"] and doc["rebuffered_sessions"] == 0, doc
    summary = Path(doc["summary"])
    assert summary.parent == loadtest.reports_dir(lab) and summary.is_file()
    exported = json.loads(summary.read_text())
    assert exported["metrics"]["http_reqs"]["count"] == doc["requests"]

    prom = Prometheus(lab.endpoint("prometheus"))
    result = loadtest.Result(loadtest.Plan(vus=2, duration_s=3, ramp_s=1, gateway="", prometheus="",
                                           testid=doc["testid"]), exported, 0, summary, "", 0.0)
    by_kind = loadtest.requests_in_prometheus(prom, result, timeout=30)
    assert sum(by_kind.values()) == doc["requests"], by_kind
    segments_per_play = by_kind["segment"] / doc["plays"]
    assert by_kind["master"] == doc["plays"] and segments_per_play == CLIP_S // 4, by_kind   # the whole title
    # A Trend arrives as the Job's K6_PROMETHEUS_RW_TREND_STATS say: p(95) among them.
    startup = prom.query(f'last_over_time(k6_viewer_startup_p95{{testid="{doc["testid"]}"}}[1h])')
    assert len(startup) and 0 < startup["value"].max() < 4000, startup


def test_k6_refuses_a_load_the_machine_has_no_sockets_for_before_starting(lab: LocalTarget) -> None:
    tight = loadtest.SocketBudget(open_files=512, ephemeral_ports=28232)
    with pytest.raises(loadtest.LoadTooLargeError):
        loadtest.plan(lab, vus=100, duration="5s", budget=tight)


def test_a_short_capacity_ramp_measures_the_lab(lab: LocalTarget) -> None:
    ramp = capacity.ramp(lab, TITLE, [2, 4], 4, arrivals_s=1)
    assert list(ramp.steps.columns) == STEP_COLUMNS and list(ramp.steps["viewers"]) == [2, 4]
    assert (ramp.steps["started"] == ramp.steps["viewers"]).all() and (ramp.steps["errors"] == 0).all()
    assert ramp.steps["egress_gbps"].iloc[1] > ramp.steps["egress_gbps"].iloc[0] > 0
    assert ramp.knee() is None                                  # a handful of viewers breaks nothing
    platform = ramp.cpu.drop(columns=list(NOT_PLATFORM))
    assert (platform.sum(axis=1) > 0).all(), ramp.cpu     # the platform's processes worked for the viewers
    assert (ramp.cpu[GENERATOR] > 0).all() and (ramp.peak >= 0).all().all()
    assert ramp.table()["capacity_viewers"] == 4
