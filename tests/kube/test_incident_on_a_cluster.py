"""Notebook 06's incident on a real cluster: ``kube``-marked, skipped without one.

Offline, tests/kube/test_probes_on_kube.py and test_incident_on_a_fake_cluster.py check what the
kube target writes and asks of the API server; only a cluster shows that Prometheus probes every
PoP through its Service (the canary title on the volume, the signed URLs the PoPs accept), that
``stop_replica`` stops one PoP (probes fail, ``nginx_up`` 0, the other PoP unharmed) until
``start``, and that Alertmanager runs a routed configuration after ``route_alerts`` and reaches a
receiver at ``$OTTLAB_WEBHOOK_HOST`` (set to an address of this machine the pods reach; without it
that last part is skipped, saying so).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit import platform
from labkit.clients import alerts
from labkit.clients.prometheus import Prometheus
from labkit.core.config import LabConfig
from labkit.core.wait import until
from labkit.platform.layers.monitoring import alerting
from labkit.targets.kube.target import KubeTarget

WAIT = 300.0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[KubeTarget]:
    cfg = LabConfig(home=tmp_path / "lab", ready_timeout=600)
    target = KubeTarget(cfg, platform.components())
    try:
        target.up()
        yield target
    finally:
        target.down()
        target.close()


def probes_of(prom: Prometheus, pop: str, value: int) -> bool:
    return bool(prom.query(f'probe_success{{job="blackbox",pop="{pop}"}} == {value}').shape[0] == 2)


@pytest.mark.kube
@pytest.mark.timeout(2400)
def test_a_stopped_pop_fails_its_probes_and_comes_back(lab: KubeTarget) -> None:
    prom = Prometheus(lab.endpoint("prometheus"))
    for pop in ("edge-0", "edge-1"):
        until(lambda pop=pop: probes_of(prom, pop, 1), WAIT, 5, f"{pop}'s playlist and segment probes to succeed")
    until(lambda: prom.query('probe_success{job="blackbox",pop="gateway",probe="key"} == 1').shape[0] == 1,
          WAIT, 5, "the key path's probe to succeed")

    lab.stop_replica("edge", 1)

    until(lambda: probes_of(prom, "edge-1", 0), WAIT, 5, "edge-1's probes to fail")
    until(lambda: prom.query('max by (pop) (nginx_up{component="edge",pop="edge-1"}) == 0').shape[0] == 1,
          WAIT, 5, "edge-1's nginx exporter to report it down")
    assert probes_of(prom, "edge-0", 1)

    lab.start("edge")

    until(lambda: probes_of(prom, "edge-1", 1), WAIT, 5, "edge-1's probes to succeed again")


@pytest.mark.kube
@pytest.mark.timeout(2400)
def test_alertmanager_posts_to_a_webhook_after_route_alerts(lab: KubeTarget) -> None:
    if not os.environ.get(alerts.WEBHOOK_HOST_ENV):
        pytest.skip(f"set {alerts.WEBHOOK_HOST_ENV} to an address of this machine the cluster's pods reach")
    with alerts.WebhookReceiver() as receiver:
        lab.route_alerts(receiver.url)
        try:
            lab.stop_replica("edge", 1)
            popdown = {a.name: a for a in alerting.CAUSES}["PoPDown"]
            wait = alerting.seconds(popdown.for_) + alerting.seconds(alerting.timing_from().group_wait) + WAIT
            fired = receiver.wait_for("PoPDown", "firing", timeout=wait, pop="edge-1")
            assert fired.payload["version"] == "4"
            assert receiver.received("ProbeFailing", "firing", pop="edge-1") == []   # inhibited
            lab.start("edge")
            receiver.wait_for("PoPDown", "resolved", timeout=WAIT + 300, pop="edge-1")
        finally:
            lab.route_alerts(None)
