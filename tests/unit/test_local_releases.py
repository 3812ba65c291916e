"""catalog's second release on the local target (labkit.targets.local.releases), without running anything."""

from __future__ import annotations

from pathlib import Path

from labkit import platform
from labkit.core.config import LabConfig
from labkit.platform.component import links
from labkit.platform.layers.monitoring import prometheus_config
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local import releases as local_releases


def cfg(tmp_path: Path) -> LabConfig:
    return LabConfig(home=tmp_path / "lab", base_port=24000, mesh="strict")


def test_a_started_release_runs_after_its_service_on_ports_of_its_own(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    without = local_mesh.components(lab, platform.components())
    assert local_releases.running(lab) == []
    local_releases.record(lab, ["catalog-v2"])
    assert local_releases.running(lab) == ["catalog-v2"]
    comps = local_mesh.components(lab, platform.components())
    names = [c.name for c in comps]
    assert names.index("catalog-v2") == names.index("catalog-proxy") + 1
    assert names.index("catalog-v2-proxy") == names.index("catalog-v2") + 1
    assert [c for c in comps if not c.name.startswith("catalog-v2")] == without
    by_name = {c.name: c for c in comps}
    v1, v2, proxy = by_name["catalog"], by_name["catalog-v2"], by_name["catalog-v2-proxy"]
    # The same program and settings but its release, its socket and its sidecar's ports.
    assert (v2.binary, v2.args, v2.layer, v2.replicas, v2.max_replicas) == (v1.binary, v1.args, v1.layer, 1, 3)
    env = v2.environment(lab, links=links(lab, comps))
    assert env["OTT_VERSION"] == "v2" and "OTT_VERSION" not in v1.env
    assert env["OTT_UDS"] == str(lab.run_dir / "mesh" / "catalog-v2-0.sock")
    assert {k: v for k, v in v2.env.items() if k not in {"OTT_VERSION", "OTT_UDS"}} == {
        k: v for k, v in v1.env.items() if k != "OTT_UDS"}
    assert [p.name for p in v2.ports] == [p.name for p in v1.ports]
    assert proxy.follows == "catalog-v2" and any("catalog-v2-proxy-{replica}" in a for a in proxy.args)
    # No port of the lab is taken twice, whichever replica.
    ports = [p for c in comps for p in c.local_ports(lab)]
    assert len(ports) == len(set(ports))
    # Prometheus scrapes it as catalog's job (kube's pods of both Deployments are job catalog too).
    jobs = {j["job_name"]: j for j in prometheus_config(lab, comps, secret="s")["scrape_configs"]}  # type: ignore[index]
    targets = [t for static in jobs["catalog"]["static_configs"] for t in static["targets"]]
    assert f"127.0.0.1:{v2.local_port(lab, 'health')}" in targets and "catalog-v2" not in jobs
    assert local_releases.labels("catalog") == {"version": "v1"}
    assert local_releases.labels("catalog-v2") == {"version": "v2"}
    assert local_releases.labels("cas") == {}
    local_releases.record(lab, [])
    assert local_releases.running(lab) == [] and not (lab.run_dir / local_releases.FILE).exists()
