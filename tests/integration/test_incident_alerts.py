"""A real outage, alerted end to end: a PoP stopped through the lab's supervisor while viewers play.

The lab runs with the fast alert timing (every ``for:`` a tenth, Alertmanager's group wait 5 s),
Alertmanager posts to a webhook receiver this test runs on 127.0.0.1, and:

- PoPDown for that PoP reaches the receiver (firing), and its probe alert, inhibited by it, never does;
- the viewers fail over to the other PoP and all start;
- once the PoP's nginx is started again, the receiver gets PoPDown resolved.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from _labs import running_lab

from labkit.clients import alerts, transcoding
from labkit.clients.prometheus import Prometheus
from labkit.core.wait import until
from labkit.platform.layers.monitoring import alerting
from labkit.targets.local.target import LocalTarget
from labkit.traffic import audience
from ott.media.sample import make_sample

pytestmark = pytest.mark.integration
TITLE = "incident-clock"
POP = "edge-1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    home = tmp_path_factory.mktemp("incident")
    before = os.environ.get("OTTLAB_ALERT_TIMING")
    os.environ["OTTLAB_ALERT_TIMING"] = "fast"
    try:
        with running_lab(home, 31400, None, seeded=True) as target:
            clip = make_sample(home / "clip.mp4", 30, width=640, height=360)
            transcoding.transcode(target, clip, TITLE, ladder="small", preset="ultrafast", tier="free", progress=False)
            yield target
    finally:
        if before is None:
            os.environ.pop("OTTLAB_ALERT_TIMING", None)
        else:
            os.environ["OTTLAB_ALERT_TIMING"] = before


def test_a_stopped_pop_is_notified_then_resolved_and_its_probe_alert_inhibited(lab: LocalTarget) -> None:
    am = lab.endpoint("alertmanager")
    prom = Prometheus(lab.endpoint("prometheus"))
    with alerts.WebhookReceiver() as receiver:
        # The drill's receiver: the declared configuration (fast timing) with a webhook to this test.
        config = alerting.dump(alerting.alertmanager_config(alerting.FAST, webhook=receiver.url))
        (lab.cfg.conf_dir / "alertmanager.yml").write_text(config)
        alerts.reload(am)
        # Every probe of the PoP succeeds before it is stopped.
        until(lambda: not prom.query(f'probe_success{{pop="{POP}"}} == 0').shape[0]
              and prom.query(f'probe_success{{pop="{POP}"}} == 1').shape[0] == 2, 60, 1, f"{POP}'s probes to succeed")

        played: list[audience.Audience] = []
        viewers = threading.Thread(target=lambda: played.append(audience.run(
            lab.endpoint("gateway"), TITLE, 4, 35, arrivals_s=20, seed=3)), daemon=True)
        viewers.start()
        stopped_at = time.time()
        lab.supervisor.stop_program(POP)

        fired = receiver.wait_for("PoPDown", "firing", timeout=90, pop=POP)
        time_to_notify = fired.received_at - stopped_at
        print(f"PoPDown of {POP} notified {time_to_notify:.1f} s after the stop")
        # Fast timing: 5 s of `for`, 5 s of group wait, a scrape and an evaluation or two.
        assert 5 < time_to_notify < 60, time_to_notify

        # The probe alert fires too, but Alertmanager holds it back: PoPDown of the same PoP inhibits it.
        def probe_alert_inhibited() -> bool:
            return any(a["labels"]["alertname"] == "ProbeFailing" and a["labels"].get("pop") == POP
                       and a["status"]["inhibitedBy"] for a in alerts.alerts(am))

        until(probe_alert_inhibited, 60, 0.5, f"ProbeFailing of {POP} to fire and be inhibited")
        lab.supervisor.start_program(POP)
        resolved = receiver.wait_for("PoPDown", "resolved", timeout=90, pop=POP)
        assert resolved.received_at > fired.received_at
        assert receiver.received("ProbeFailing", "firing", pop=POP) == []

        viewers.join(timeout=120)
        assert played, "the audience did not finish"
        summary = played[0].summary()
        # The viewers on the stopped PoP failed over: every one started.
        assert summary["started"] == 4 and summary["video_start_failures"] == 0, summary
