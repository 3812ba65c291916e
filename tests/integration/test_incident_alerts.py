"""A real outage, alerted end to end: a PoP stopped through the lab's supervisor while viewers play.

The lab runs with the fast alert timing (every ``for:`` a tenth but at least 30 s or as declared,
Alertmanager's group wait 5 s), Alertmanager posts to a webhook receiver this test runs on
127.0.0.1, and:

- the alerts whose condition a stopped PoP makes true (PoPDown, a ProbeFailing per probe of the PoP)
  fire, each within the window its declaration gives (:func:`alerting.firing_window`), in the order
  the declarations imply (:func:`alerting.firing_order`: PoPDown first), and nothing else fires about
  the PoP; no page fires: the viewers fail over and the PoPs answer no 5xx;
- the alerts Alertmanager holds back are those the inhibitions name (ProbeFailing, by PoPDown), and
  only the others reach the receiver, the first one a group wait after it fired;
- the viewers fail over to the other PoP and all start;
- once the PoP's nginx is started again, the receiver gets PoPDown resolved.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _labs import running_lab

from labkit.clients import alerts, transcoding
from labkit.clients.prometheus import Prometheus
from labkit.core.wait import until
from labkit.platform.layers.monitoring import SCRAPE_INTERVAL, alerting, probes
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

        # What the declarations say about this incident: the alerts a stopped PoP makes true, when
        # each fires, which must come first, which Alertmanager holds back.
        expected = ("PoPDown", "ProbeFailing")
        timing, scrape_s = alerting.FAST, alerting.seconds(SCRAPE_INTERVAL)
        assert alerts.running_timing(prom.url) is timing   # what the lab's Prometheus evaluates with
        windows = {name: alerting.firing_window(name, timing, scrape_s) for name in expected}
        order = alerting.firing_order(expected, timing, scrape_s)
        held = alerting.inhibited(expected)
        assert order == [("PoPDown", "ProbeFailing")] and held == {"ProbeFailing": "PoPDown"}, (order, held)
        assert alerting.inhibition_in_time("PoPDown", "ProbeFailing", timing, scrape_s)

        fired = receiver.wait_for("PoPDown", "firing", timeout=90, pop=POP)
        count = 1 + len(probes.PER_POP)   # PoPDown, and ProbeFailing per probe of the PoP
        rows: list[dict[str, Any]] = []

        def all_fired() -> bool:
            nonlocal rows
            rows = alerts.timeline(am, stopped_at, receiver, pop=POP)
            return len(rows) >= count and all(r["alert"] != "ProbeFailing" or r["inhibited_by"] for r in rows)

        until(all_fired, 60, 0.5, lambda: f"{count} alerts of {POP} to fire, the probes' inhibited: {rows}")
        print(*rows, sep="\n")
        assert sorted({r["alert"] for r in rows}) == sorted(expected), rows
        for row in rows:
            assert windows[row["alert"]].holds(row["fired_s"]), (row, windows)
        for first, then in order:
            assert max(r["fired_s"] for r in rows if r["alert"] == first) \
                < min(r["fired_s"] for r in rows if r["alert"] == then), rows
        assert {(r["alert"], r["inhibited_by"]) for r in rows if r["inhibited_by"]} == set(held.items()), rows
        assert all((r["notified_s"] is None) == bool(r["inhibited_by"]) for r in rows), rows
        # No page: the viewers fail over, the PoP that is down answers nothing and the others no 5xx.
        assert not [a for a in alerts.alerts(am) if a["labels"].get("severity") == "page"]

        time_to_notify = fired.received_at - stopped_at
        print(f"PoPDown of {POP} notified {time_to_notify:.1f} s after the stop")
        # The first notification: PoPDown's window, then Alertmanager's group wait (and a second of delivery).
        wait = alerting.seconds(timing.group_wait)
        assert windows["PoPDown"].earliest + wait - 1 <= time_to_notify <= windows["PoPDown"].latest + wait + 2, \
            (time_to_notify, windows["PoPDown"])

        # While PoPDown fires, its probe alerts never reach the receiver.
        assert receiver.received("ProbeFailing", "firing", pop=POP) == []
        lab.supervisor.start_program(POP)
        resolved = receiver.wait_for("PoPDown", "resolved", timeout=90, pop=POP)
        assert resolved.received_at > fired.received_at
        until(lambda: not [a for a in alerts.alerts(am) if a["labels"].get("pop") == POP], 60, 0.5,
              f"every alert of {POP} to resolve")
        # At the recovery PoPDown may resolve a scrape before its probes do: in between nothing inhibits
        # their alerts, and a group interval that ends there notifies them (the rules allow that race;
        # PoPDown's `keep_firing_for` would close it). Never while PoPDown fires, though.
        ended = alerts.ended_at(resolved.alerts("PoPDown", "resolved")[0])
        late = [n.received_at for n in receiver.received("ProbeFailing", "firing", pop=POP)]
        print(f"ProbeFailing notified after PoPDown resolved: {[round(t - ended, 1) for t in late]} s")
        assert all(t >= ended for t in late), (late, ended)

        viewers.join(timeout=120)
        assert played, "the audience did not finish"
        summary = played[0].summary()
        # The viewers on the stopped PoP failed over: every one started.
        assert summary["started"] == 4 and summary["video_start_failures"] == 0, summary
