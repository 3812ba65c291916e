"""The local target's mesh wiring (labkit.targets.local.mesh), without running anything."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import cast

import pytest

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from labkit.platform.component import links
from labkit.platform.layers import apis
from labkit.platform.mesh import STATS_JOB
from labkit.platform.mesh.errors import MeshConfigError
from labkit.targets.local import mesh as local_mesh
from labkit.targets.local.supervisor import Supervisor
from labkit.targets.local.target import MESH_MODE_FILE, LocalTarget


def cfg(tmp_path: Path, mesh: str = "strict") -> LabConfig:
    return LabConfig(home=tmp_path / "lab", base_port=24000, mesh=mesh)


def test_the_mesh_is_strict_by_default_and_off_changes_nothing(tmp_path: Path) -> None:
    assert LabConfig().mesh == "strict"
    assert LabConfig.from_env({}).mesh == "strict"
    assert LabConfig.from_env({"OTTLAB_MESH": "off"}).mesh == "off"
    assert LabConfig.from_env({"OTTLAB_MESH": "Strict"}).mesh == "strict"
    with pytest.raises(ConfigError, match="OTTLAB_MESH='on' is not a mesh mode"):
        LabConfig(mesh="on")
    declared = platform.components()
    assert local_mesh.components(cfg(tmp_path, "off"), declared) == declared
    # The gateway's config is the same as without the mesh module at all.
    off = cfg(tmp_path, "off")
    assert apis.write_configs(off, declared)["gateway/nginx.conf"] == apis.gateway.render(
        listen=f"127.0.0.1:{apis.GATEWAY.local_port(off)}",
        upstreams={r.service: [f"127.0.0.1:{(next(c for c in declared if c.name == r.service)).local_port(off)}"]
                   for r in apis.ROUTES},
        temp_dir=str(off.run_dir / "gateway"),
        status_listen=f"127.0.0.1:{apis.GATEWAY_EXPORTER.local_port(off, 'status')}",
        user=apis.nginx.lab_user(),
    )


def test_with_the_mesh_every_service_has_a_socket_a_sidecar_and_no_port_is_taken_twice(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    comps = {c.name: c for c in local_mesh.components(lab, platform.components())}
    taken: dict[int, str] = {}
    for comp in comps.values():
        for port in comp.local_ports(lab):
            assert port not in taken, f"{comp.name} and {taken[port]} both use {port}"
            taken[port] = comp.name
    for service in local_mesh.MESHED:
        env = comps[service].environment(lab, 1, links(lab, list(comps.values())))
        assert env["OTT_UDS"] == str(lab.run_dir / "mesh" / f"{service}-1.sock")
        for peer in local_mesh.calls(service):
            outbound = comps[service].local_port(lab, f"out-{peer}", 1)
            assert env[f"OTT_{peer.upper()}_URL"] == f"http://127.0.0.1:{outbound}"
        assert comps[service].readiness.port == "health" and comps[service].metrics_port == "health"
        proxy = comps[local_mesh.proxy_name(service)]
        assert proxy.follows == service and proxy.max_replicas == comps[service].max_replicas
        assert proxy.scrape_job == local_mesh.STATS_JOB and proxy.metrics_path == "/stats/prometheus"
        assert f"{lab.conf_dir}/mesh/{proxy.name}-1/bootstrap.json" in proxy.command(lab, 1)


def test_the_gateway_leaves_retries_to_its_sidecar(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    running = [c for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    conf = apis.write_configs(lab, running)["gateway/nginx.conf"]
    proxy = next(c for c in running if c.name == local_mesh.GATEWAY_PROXY)
    assert f"server 127.0.0.1:{proxy.local_port(lab, 'out-license')} max_fails=0;" in conf
    license_block = conf.split("location /api/license/ {")[1].split("}")[0]
    assert "proxy_next_upstream off;" in license_block and "proxy_read_timeout 15s;" in license_block
    # The QoE collector too (only the gateway's identity may post beacons); the player's nginx is not
    # behind a sidecar: nginx still retries it itself.
    qoe_block = conf.split("location /api/qoe/ {")[1].split("}")[0]
    assert "proxy_next_upstream off;" in qoe_block
    player_block = conf.split("location /player/ {")[1].split("location")[0]
    assert "proxy_next_upstream_tries 3;" in player_block


def test_the_qoe_collector_and_the_transcoder_have_sidecars_in_their_own_layers(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    comps = {c.name: c for c in local_mesh.components(lab, platform.components())}
    assert comps["qoe-proxy"].layer == "player" and comps["transcoder-proxy"].layer == "media"
    # The collector calls no one; the transcoder calls license (keys) and catalog (titles), through its sidecar.
    assert local_mesh.calls("qoe") == [] and local_mesh.calls("transcoder") == ["license", "catalog"]
    env = comps["transcoder"].environment(lab, 0, links(lab, list(comps.values())))
    assert env["OTT_LICENSE_URL"] == f"http://127.0.0.1:{comps['transcoder'].local_port(lab, 'out-license')}"
    # Only the layers up have sidecars running: the APIs alone render no qoe or transcoder sidecar.
    running = [c for c in comps.values() if c.layer == "apis"]
    programs = {r.program for r in local_mesh.render_all(lab, local_mesh.current(lab), running)}
    assert "qoe-proxy-0" not in programs and "transcoder-proxy-0" not in programs
    everything = {r.program for r in local_mesh.render_all(lab, local_mesh.current(lab), list(comps.values()))}
    assert {"qoe-proxy-0", "transcoder-proxy-0"} <= everything


def test_sidecar_files_are_rendered_for_dynamic_configuration(tmp_path: Path) -> None:
    lab = cfg(tmp_path, "permissive")
    running = [c for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    changes = local_mesh.write(lab, local_mesh.current(lab), running)
    assert {c.program for c in changes} == {*(f"{local_mesh.proxy_name(s)}-0" for s in local_mesh.APIS),
                                           f"{local_mesh.GATEWAY_PROXY}-0", f"{local_mesh.TOOLS_PROXY}-0"}
    directory = lab.conf_dir / "mesh" / "cas-proxy-0"
    bootstrap = json.loads((directory / "bootstrap.json").read_text())
    assert "static_resources" not in bootstrap
    assert bootstrap["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == str(directory / "lds.json")
    lds = json.loads((directory / "lds.json").read_text())
    names = [r["name"] for r in lds["resources"]]
    assert names[0] == "inbound_8000" and "health" in names and "outbound_auth" in names
    # OTTLAB_MESH=permissive: plaintext is accepted beside mTLS.
    assert lds["resources"][0]["filter_chains"][1]["filter_chain_match"] == {"transport_protocol": "raw_buffer"}
    # Nothing changed: nothing is rewritten.
    assert local_mesh.write(lab, local_mesh.current(lab), running) == []
    # A mesh with a problem is refused before any file changes.
    before = (directory / "lds.json").read_text()
    mesh = local_mesh.current(lab)
    (vs,) = [o for o in mesh.of_kind("VirtualService") if o["metadata"]["name"] == "cas"]
    bad = {**vs, "spec": {**vs["spec"], "hosts": ["nowhere"]}}
    with pytest.raises(MeshConfigError, match="'nowhere' is no Service"):
        local_mesh.apply(lab, mesh.replaced(bad), running)
    assert (directory / "lds.json").read_text() == before
    assert local_mesh.current(lab) == mesh


def test_down_forgets_the_applied_resources(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    running = [c for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    mesh = local_mesh.current(lab)
    (vs,) = [o for o in mesh.of_kind("VirtualService") if o["metadata"]["name"] == "cas"]
    faulty = {**vs, "spec": {**vs["spec"], "http": [{**vs["spec"]["http"][0], "fault": {
        "abort": {"percentage": {"value": 100}, "httpStatus": 503}}}]}}
    local_mesh.write(lab, mesh.replaced(faulty), running)
    assert local_mesh.current(lab) != local_mesh.committed(lab)
    local_mesh.forget(lab)
    assert local_mesh.current(lab) == local_mesh.committed(lab)


def test_the_lab_calls_as_a_workload_with_its_certificate_only_when_a_mesh_is_on_the_way(tmp_path: Path) -> None:
    from labkit.targets.local.target import LocalTarget

    meshed = LocalTarget(cfg(tmp_path), platform.components(), platform.layers())
    url, tls = meshed.endpoint_as("license", "transcoder")
    assert url == f"https://127.0.0.1:{meshed.component('license').local_port(meshed.cfg)}" and tls is not None
    chain = meshed.cfg.conf_dir / "mesh" / "ca" / "workloads" / "transcoder" / "cert-chain.pem"
    assert b"spiffe://cluster.local/ns/ottlab/sa/transcoder" in identity_uri(chain)
    # Not a meshed component (the origin), or no mesh: the tools' own endpoint, no TLS.
    assert meshed.endpoint_as("origin", "transcoder") == (meshed.endpoint("origin"), None)
    plain = LocalTarget(cfg(tmp_path / "off", "off"), platform.components(), platform.layers())
    assert plain.endpoint_as("license", "transcoder") == (plain.endpoint("license"), None)


def identity_uri(chain: Path) -> bytes:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(chain.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return b" ".join(str(uri).encode() for uri in names.get_values_for_type(x509.UniformResourceIdentifier))


def test_the_scrape_jobs_a_meshed_lab_reports_are_the_jobs_its_prometheus_is_given(tmp_path: Path) -> None:
    from labkit.platform.layers import monitoring
    from labkit.targets.local.target import LocalTarget

    for mode in ("strict", "off"):
        lab = LocalTarget(cfg(tmp_path / mode, mode), platform.components(), platform.layers())
        given = cast("list[dict[str, object]]", monitoring.prometheus_config(lab.cfg, lab.components, secret="s")[
            "scrape_configs"])
        jobs = {str(job["job_name"]) for job in given} - {platform.PROBE_JOB}
        assert set(lab.scrape_jobs()) == jobs
        assert (STATS_JOB in jobs) == (mode != "off"), jobs
        # A subset of layers: the sidecars of those layers' workloads only.
        player = lab.scrape_jobs(["player"])
        assert (STATS_JOB in player) == (mode != "off") and "prometheus" not in player, player
    assert set(lab.scrape_jobs()) == set(platform.scrape_jobs())


def test_a_running_lab_keeps_its_mesh_mode_for_every_later_command(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A lab brought up with OTTLAB_MESH=off: a later command that does not say OTTLAB_MESH (the default,
    # strict) sees it without the mesh, and its tools call the services' own ports, not a sidecar.
    monkeypatch.setattr(Supervisor, "pid", lambda self: os.getpid())
    monkeypatch.setattr(Supervisor, "is_running", lambda self: True)
    running = cfg(tmp_path, "off")
    running.run_dir.mkdir(parents=True)
    (running.run_dir / MESH_MODE_FILE).write_text("off\n")
    later = LocalTarget(cfg(tmp_path), platform.components(), platform.layers())
    assert later.cfg.mesh == "off" and local_mesh.GATEWAY_PROXY not in later.component_names()
    assert later.endpoint("auth") == later.component("auth").url(later.cfg)
    later._record_mesh()  # its `up` joins the lab as it runs
    # A mode asked on purpose that is not the lab's is refused: switching needs a down.
    with pytest.raises(ConfigError, match="runs with OTTLAB_MESH=off, not permissive"):
        LocalTarget(cfg(tmp_path, "permissive"), platform.components(), platform.layers())._record_mesh()
    # Down (no supervisor), a command runs with what it asked.
    monkeypatch.setattr(Supervisor, "pid", lambda self: None)
    assert LocalTarget(cfg(tmp_path), platform.components(), platform.layers()).cfg.mesh == "strict"


def test_routes_come_by_rds_so_a_route_change_leaves_the_listeners_alone(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    running = [c for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    local_mesh.write(lab, local_mesh.current(lab), running)
    directory = lab.conf_dir / "mesh" / "license-proxy-0"
    lds = (directory / "lds.json").read_text()
    # Every HTTP connection manager names its route configuration and the file it comes from, which holds it alone;
    # but the health port's, whose routes never change (each RDS subscription is an inotify instance of the Envoy).
    (health,) = [r for r in json.loads(lds)["resources"] if r["name"] == "health"]
    assert health["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["name"] == "health"
    assert not (directory / "rds-health.json").exists()
    for listener in json.loads(lds)["resources"]:
        if listener is health or listener["name"] == "health":
            continue
        assert '"route_config":' not in json.dumps(listener)
        for chain in listener["filter_chains"]:
            rds = chain["filters"][0]["typed_config"]["rds"]
            source = rds["config_source"]["path_config_source"]
            assert source["watched_directory"] == {"path": str(directory)}
            (route,) = json.loads(Path(source["path"]).read_text())["resources"]
            assert route["name"] == rds["route_config_name"]
            assert route["@type"] == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert (directory / "rds-inbound_8000.json").is_file() and (directory / "rds-cas.json").is_file()
    # A fault on cas: the callers' route to cas changes, no listener, no cluster.
    mesh = local_mesh.current(lab)
    (vs,) = [o for o in mesh.of_kind("VirtualService") if o["metadata"]["name"] == "cas"]
    faulty = {**vs, "spec": {**vs["spec"], "http": [{**vs["spec"]["http"][0], "fault": {
        "abort": {"percentage": {"value": 100}, "httpStatus": 503}}}]}}
    before = {p.name: p.read_text() for p in directory.iterdir()}
    changes = local_mesh.write(lab, mesh.replaced(faulty), running)
    after = {p.name: p.read_text() for p in directory.iterdir()}
    assert [name for name in after if after[name] != before.get(name)] == ["rds-cas.json"]
    (change,) = [c for c in changes if c.program == "license-proxy-0"]
    assert change.versions["rds cas"] != change.versions["rds auth"] and set(change.versions) >= {"cds", "lds"}
    assert "gateway-proxy-0" in {c.program for c in changes} and "cas-proxy-0" not in {c.program for c in changes}


def test_apply_keeps_the_clusters_running_routes_name_until_the_new_routes_are_in_force(tmp_path: Path) -> None:
    lab = cfg(tmp_path)
    running = [c for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    (gateway,) = [r for r in local_mesh.render_all(lab, local_mesh.current(lab), running)
                  if r.program == "gateway-proxy-0"]
    old = {"name": "outbound|8000|v2|catalog.ottlab.svc.cluster.local", "type": "STATIC"}
    local_mesh.write(lab, local_mesh.current(lab), running,
                     [dataclasses.replace(gateway, clusters=[*gateway.clusters, old])])
    steps = local_mesh._stages(lab, [gateway])
    names = [[[c["name"] for c in json.loads(files[0].text)["resources"]] for _, files in step] for step in steps]
    new = [c["name"] for c in gateway.clusters]
    # First the clusters of both, then routes and listeners beside them, last the new clusters alone.
    assert names == [[[*new, old["name"]]], [[*new, old["name"]]], [new]]
    assert [f.path.name for f in steps[1][0][1]][-2:] == ["lds.json", "bootstrap.json"]
    assert len(steps[0][0][1]) == len(steps[2][0][1]) == 1


def test_a_replica_scale_is_starting_has_its_sidecar_files_but_no_peer_routes_to_it_yet(tmp_path: Path) -> None:
    """`scale` renders with ``serving``: a Service lists a pod once it is ready. Routed to while still
    starting, Envoy's connection failures to it had outlier detection eject it (five in a row) for 30 s:
    catalog's new replicas served nothing while the autoscaler's load ran."""
    lab = cfg(tmp_path)
    running = [dataclasses.replace(c, replicas=2) if c.name in ("catalog", "catalog-proxy") else c
               for c in local_mesh.components(lab, platform.components()) if c.layer == "apis"]
    catalog = next(c for c in running if c.name == "catalog")
    ports = [catalog.local_port(lab, "http", r) for r in range(2)]

    def endpoints(rendered: list[local_mesh.Rendered]) -> list[int]:
        (gateway,) = [r for r in rendered if r.program == "gateway-proxy-0"]
        (cluster,) = [c for c in gateway.clusters if c["name"] == "outbound|8000|v1|catalog.ottlab.svc.cluster.local"]
        return [e["endpoint"]["address"]["socket_address"]["port_value"]
                for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]

    starting = local_mesh.render_all(lab, local_mesh.current(lab), running, serving={"catalog": 1})
    assert endpoints(starting) == ports[:1]
    assert "catalog-proxy-1" in {r.program for r in starting}   # its own files, to start with
    assert endpoints(local_mesh.render_all(lab, local_mesh.current(lab), running)) == ports
