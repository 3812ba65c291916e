"""``ottlab``: the lab's command line.

    ottlab up [--target local|kube] [--layer monitoring ...]
    ottlab status [--json]
    ottlab logs COMPONENT [-n 100]
    ottlab seed
    ottlab sample --seconds 30 --out clip.mp4
    ottlab transcode clip.mp4 --title lab-clock [--encrypt] [--ladder small]
    ottlab playback lab-clock --user alice
    ottlab viewers --count 20 --seconds 60 --title lab-clock [--abr bola] [--kbps 800 | --trace commute]
    ottlab k6 --vus 20 --duration 1m [--ramp 10s] [--title sample]
    ottlab restart COMPONENT
    ottlab stop COMPONENT / ottlab start COMPONENT
    ottlab scale edge 3
    ottlab env license OTT_PLAYBACK_TTL=5 [--unset OTT_PLAYBACK_TTL]
    ottlab down [--purge]
    ottlab image build / ottlab image load [--cluster kind|minikube|k3d] [--name NAME]
    ottlab addons list / ottlab addons install [NAME ...] [--dry-run]
    ottlab dashboard viewer-qoe --png qoe.png [--minutes 15] [--var pop=edge-0] / ottlab dashboard --list
    ottlab fault inject license --delay 2 [--abort 503] [--percent 50] [--header x-ottlab-user=alice] [--replace]
    ottlab fault clear [SERVICE] / ottlab fault list
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from labkit.clients.prometheus import Prometheus
from labkit.core.config import TARGETS, LabConfig
from labkit.core.errors import ConfigError, LabError
from labkit.platform.layers.monitoring import PROMETHEUS
from labkit.targets import ComponentStatus, Target, make_target
from labkit.traffic import abr
from ott.media.errors import MediaError

F = TypeVar("F", bound=Callable[..., Any])


def _target_option(func: F) -> F:
    return click.option(
        "--target",
        "target_name",
        default=None,
        metavar="|".join(TARGETS),
        help="where the platform runs (default: $OTTLAB_TARGET or local)",
    )(func)


def _handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as exc:
            click.echo(f"ottlab: error: {exc}", err=True)
            sys.exit(2 if isinstance(exc, ConfigError) else 1)
        except MediaError as exc:
            # The platform's own errors (ott must not import labkit) read the same way.
            click.echo(f"ottlab: error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"ottlab: error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("ottlab: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _target(name: str | None) -> Target:
    return make_target(LabConfig.from_env(), name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build, measure and break an OTT platform. Start with `ottlab up`."""


@main.command()
@_target_option
@click.option("--layer", "layers", multiple=True, help="start only this layer (repeatable)")
@_handle_errors
def up(target_name: str | None, layers: tuple[str, ...]) -> None:
    """Start the platform (idempotent) and wait until every component is ready.

    The APIs run behind the service mesh, STRICT mutual TLS by default (OTTLAB_MESH=permissive, or
    OTTLAB_MESH=off for none; on kube the mesh needs Istio: ottlab addons install istio-base istiod).
    """
    target = _target(target_name)
    statuses = target.up(list(layers) or None)
    _print_table(statuses)


@main.command()
@_target_option
@click.option("--purge", is_flag=True, help="also delete the lab's state (media, data, logs)")
@_handle_errors
def down(target_name: str | None, purge: bool) -> None:
    """Stop every component; nothing keeps running or listening."""
    _target(target_name).down(purge=purge)
    click.echo("platform stopped" + (" and its state removed" if purge else ""))


@main.command()
@_target_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@_handle_errors
def status(target_name: str | None, as_json: bool) -> None:
    """Each component's state, health, pids and URLs; Prometheus' scrape targets."""
    target = _target(target_name)
    statuses = target.status()
    scrape = _scrape_targets(target, statuses)
    if as_json:
        doc = {
            "target": target.name,
            "home": str(target.cfg.home),
            "components": [s.as_dict() for s in statuses],
            "scrape_targets": scrape,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    _print_table(statuses)
    if scrape is None:
        return
    if not scrape:
        click.echo("\nPrometheus has not discovered its scrape targets yet: ask again in a few seconds")
    else:
        up_count = sum(1 for t in scrape if t["health"] == "up")
        click.echo(f"\nPrometheus scrapes {up_count}/{len(scrape)} targets up")
        for t in scrape:
            if t["health"] != "up":
                click.echo(f"  {t['job']} {t['instance']}: {t['health']} {t['last_error']}")


@main.command()
@_target_option
@click.argument("component")
@click.option("-n", "--lines", default=100, show_default=True, help="how many lines")
@_handle_errors
def logs(target_name: str | None, component: str, lines: int) -> None:
    """The last log lines of COMPONENT."""
    click.echo(_target(target_name).logs(component, lines))


@main.command()
@_target_option
@click.argument("component")
@_handle_errors
def restart(target_name: str | None, component: str) -> None:
    """Restart COMPONENT and wait until it is ready."""
    _print_table([_target(target_name).restart(component)])


@main.command()
@_target_option
@click.argument("component")
@click.argument("replicas", type=int)
@_handle_errors
def scale(target_name: str | None, component: str, replicas: int) -> None:
    """Run REPLICAS copies of COMPONENT (a CDN PoP per edge replica); waits until they are ready."""
    _print_table([_target(target_name).scale(component, replicas)])


@main.command()
@_target_option
@click.argument("action", type=click.Choice(["on", "off", "status"]))
@click.option("--scale-down-window", type=click.FloatRange(min=0, max=3600), default=None,
              help="seconds: shorten every HPA's scaleDown stabilization window (default: the objects' own, 300)")
@click.option("--decisions", type=click.IntRange(min=0, max=20), default=3, show_default=True,
              help="how many of each HPA's last decisions to show")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@_handle_errors
def autoscale(target_name: str | None, action: str, scale_down_window: float | None, decisions: int,
              as_json: bool) -> None:
    """Switch the HorizontalPodAutoscalers of k8s/base/autoscaling on or off, or show what they decided.

    On kube the cluster's HPA controller acts on them; locally, labkit's controller applies the same
    algorithm to the same objects and scales the supervised replicas as `ottlab scale` does.
    """
    target = _target(target_name)
    if action == "status":
        rows = target.autoscale_status()
    else:
        rows = target.autoscale(action == "on", scale_down_window=scale_down_window)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    for r in rows:
        metrics = ", ".join(
            f"{m['metric']} {_amount(m.get('current'))}/{_amount(m.get('target'))}" for m in r.metrics)
        desired = "-" if r.desired is None else r.desired
        click.echo(f"{r.hpa:<14} {'on ' if r.active else 'off'} replicas {r.current} -> {desired}  {metrics}")
        for d in r.decisions[-decisions:] if decisions else []:
            when = "" if d.get("at") is None else time.strftime("%H:%M:%S", time.localtime(float(d["at"])))
            click.echo(f"    {when} {d.get('current')} -> {d.get('desired')} {d.get('reason')}: {d.get('message')}")


def _amount(value: object) -> str:
    """A metric value for a table: 12.5, 40M, -."""
    if value is None:
        return "-"
    number = float(str(value))
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.3g}{unit}"
    return f"{number:.3g}"


@main.command()
@_target_option
@click.argument("component")
@click.argument("settings", nargs=-1, metavar="[OTT_NAME=VALUE]...")
@click.option("--unset", "unset", multiple=True, metavar="OTT_NAME", help="remove a setting set before (repeatable)")
@_handle_errors
def env(target_name: str | None, component: str, settings: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Set a service's OTT_* settings on the local target, restart it with them, print its settings.

    They last until `ottlab down`: `ottlab env license OTT_PLAYBACK_TTL=5`, then `--unset OTT_PLAYBACK_TTL`.
    """
    changes: dict[str, str | None] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError(f"{setting!r} is not NAME=VALUE", hint="e.g. ottlab env license OTT_PLAYBACK_TTL=5")
        changes[name] = value
    changes.update({name: None for name in unset})
    for name, value in sorted(_target(target_name).set_env(component, changes).items()):
        click.echo(f"{component}: {name}={value}")


@main.command()
@_target_option
@click.argument("component")
@_handle_errors
def stop(target_name: str | None, component: str) -> None:
    """Stop COMPONENT (every replica) until `ottlab start`: an outage for a drill."""
    _print_table([_target(target_name).stop(component)])


@main.command()
@_target_option
@click.argument("component")
@_handle_errors
def start(target_name: str | None, component: str) -> None:
    """Start a stopped COMPONENT again and wait until it is ready."""
    _print_table([_target(target_name).start(component)])


@main.command()
@click.option("--seconds", type=click.FloatRange(min=0.5, max=3600), default=30, show_default=True,
              help="length of the clip")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="the MP4 to write")
@click.option("--width", type=click.IntRange(min=160, max=3840), default=1920, show_default=True)
@click.option("--height", type=click.IntRange(min=90, max=2160), default=1080, show_default=True)
@click.option("--fps", type=click.IntRange(min=10, max=60), default=25, show_default=True)
@_handle_errors
def sample(seconds: float, out: Path, width: int, height: int, fps: int) -> None:
    """Make a deterministic test clip: burned-in clock and frame counter, a beep every second."""
    from ott.media.sample import make_sample

    if width % 2 or height % 2:
        raise ConfigError(f"{width}x{height} has an odd side", hint="H.264 needs even width and height")
    click.echo(str(make_sample(out, seconds, width=width, height=height, fps=fps)))


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--title", "title_id", required=True, help="the catalog title id (a-z, 0-9, '-'), e.g. lab-clock")
@click.option("--encrypt", is_flag=True, help="AES-128 TS with a content key from license (default: clear fMP4)")
@click.option("--ladder", default="default", show_default=True, help="a ladder of ott/media/ladder.yml")
@click.option("--preset", default=None, help="an x264 preset instead of the ladder's, e.g. ultrafast")
@click.option("--name", default=None, help="the title's name in the catalog (a new title: its id)")
@click.option("--tier", type=click.Choice(["free", "basic", "premium"]), default=None,
              help="which plans may play it (a new title: free)")
@click.option("--json", "as_json", is_flag=True, help="print the whole finished job as JSON")
@_target_option
@_handle_errors
def transcode(source: Path, title_id: str, encrypt: bool, ladder: str, preset: str | None, name: str | None,
              tier: str | None, as_json: bool, target_name: str | None) -> None:
    """Transcode SOURCE into an HLS ladder, publish it and list it in the catalog; prints the playlist URL."""
    from labkit.clients.transcoding import transcode as run

    job = run(_target(target_name), source, title_id, encrypt=encrypt, ladder=ladder, preset=preset, name=name,
              tier=tier)
    assert job.result is not None
    if as_json:
        click.echo(job.model_dump_json(indent=2))
        return
    rungs = ", ".join(f"{r.name} {r.average_bps / 1000:.0f} kbit/s" for r in job.result.rungs)
    click.echo(f"published {title_id} ({'AES-128' if job.result.encrypted else 'clear'}, "
               f"{job.result.speed:.2f}x realtime): {rungs}", err=True)
    click.echo(job.result.master_url)


@main.command()
@click.argument("title_id")
@click.option("--user", "user_name", default="alice", show_default=True, help="a demo user (see `ottlab seed`)")
@click.option("--device", default="cli", show_default=True, help="the device id CAS counts")
@_target_option
@_handle_errors
def playback(title_id: str, user_name: str, device: str, target_name: str | None) -> None:
    """Log in as USER and print TITLE's signed playback URLs (one per CDN PoP) and key URI as JSON.

    This opens a CAS stream session for the user (it expires without heartbeats).
    """
    from labkit.clients.api import OttClient
    from labkit.clients.seed import demo_user

    user = demo_user(user_name)
    with OttClient(_target(target_name).endpoint("gateway")) as client:
        client.login(user.email, user.password)
        grant = client.authorize(title_id, device_id=device)
    if not grant.get("playback"):
        raise ConfigError(f"{title_id!r} has no signed playback URL",
                          hint=f"publish it first (`ottlab transcode FILE --title {title_id}`) and start the CDN "
                          "layer (`ottlab up`)")
    click.echo(json.dumps({"title_id": title_id, "user": user.email, **grant}, indent=2))


@main.command()
@click.option("--count", type=click.IntRange(min=1, max=10_000), required=True, help="how many viewers")
@click.option("--seconds", type=click.FloatRange(min=1, max=86_400), required=True,
              help="how long the run lasts; viewers leave then (or when the title ends)")
@click.option("--title", "title_id", required=True, help="the catalog title id, e.g. lab-clock")
@click.option("--user", "user_name", default="alice", show_default=True, help="the demo user whose grant they share")
@click.option("--abr", "rule", type=click.Choice(abr.RULES), default="ewma", show_default=True,
              help="ABR rule: hls.js' EWMA throughput rule or BOLA")
@click.option("--kbps", type=float, default=None, help="limit each viewer's bandwidth to this many kbit/s")
@click.option("--trace", "trace_name", default=None,
              help="limit each viewer's bandwidth by a trace: a shipped name (commute, stairs) or a CSV file")
@click.option("--seed", "seed_value", type=int, default=0, show_default=True, help="seed of arrivals, PoPs, ids")
@click.option("--pop", "pops", multiple=True, help="start viewers on this PoP, e.g. edge-0 (repeatable)")
@click.option("--arrivals", "arrivals_s", type=click.FloatRange(min=0), default=None,
              help="spread arrivals over this many seconds (default: a quarter of --seconds, at most 10)")
@click.option("--no-beacons", is_flag=True, help="send no QoE beacons")
@_target_option
@_handle_errors
def viewers(count: int, seconds: float, title_id: str, user_name: str, rule: str, kbps: float | None,
            trace_name: str | None, seed_value: int, pops: tuple[str, ...], arrivals_s: float | None,
            no_beacons: bool, target_name: str | None) -> None:
    """Simulate COUNT viewers of a title (headless players with ABR and CMCD); prints the QoE summary as JSON."""
    from labkit.traffic import audience
    from labkit.traffic.bandwidth import Fixed, Limit, Trace

    if kbps is not None and trace_name is not None:
        raise ConfigError("--kbps and --trace both limit the bandwidth", hint="give one of them")
    limit: Limit | None = None
    if kbps is not None:
        limit = Fixed(kbps)
    elif trace_name is not None:
        limit = Trace.from_csv(trace_name) if trace_name.endswith(".csv") else Trace.named(trace_name)
    result = audience.run(_target(target_name).endpoint("gateway"), title_id, count, seconds, user=user_name,
                          abr=rule, bandwidth=limit, pops=list(pops) or None, arrivals_s=arrivals_s, seed=seed_value,
                          beacons=not no_beacons)
    summary = result.summary()
    click.echo(json.dumps(summary, indent=2))
    if not summary["started"]:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in summary["failures"].items()) or "the run ended first"
        raise LabError(f"no viewer started: {reasons}",
                       hint="is the platform up (`ottlab status`) and the title published? try `ottlab playback "
                            f"{title_id}`")


@main.command()
@click.argument("name", required=False)
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the dashboard to this PNG file")
@click.option("--minutes", type=click.FloatRange(min=0.5, max=1440), default=15.0, show_default=True,
              help="the window: the last N minutes")
@click.option("--var", "assignments", multiple=True, metavar="NAME=VALUE",
              help="a template variable's value instead of All (repeatable), e.g. --var pop=edge-0")
@click.option("--list", "listing", is_flag=True, help="name the dashboards and stop")
@_target_option
@_handle_errors
def dashboard(name: str | None, png: Path | None, minutes: float, assignments: tuple[str, ...], listing: bool,
              target_name: str | None) -> None:
    """Draw dashboard NAME (the committed Grafana JSON) from the lab's Prometheus into a PNG file."""
    from labkit.analysis import dashboards

    if listing:
        for known in dashboards.names():
            model = dashboards.load(known)
            count = sum(1 for p in model["panels"] if p["type"] != "row")
            click.echo(f"{known:12} {model['title']} ({count} panels)")
        return
    if name is None or png is None:
        raise ConfigError("give a dashboard NAME and --png FILE, or --list",
                          hint=f"e.g. ottlab dashboard {dashboards.names()[0]} --png qoe.png")
    variables: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--var {assignment!r} is not NAME=VALUE", hint="e.g. --var pop=edge-0")
        variables[key] = value
    model = dashboards.load(name)
    prometheus = Prometheus(_target(target_name).endpoint(PROMETHEUS.name))
    fig = dashboards.render(model, prometheus, minutes=minutes, variables=variables)
    fig.savefig(png, dpi=90)
    click.echo(f"wrote {png} ({model['title']}, last {minutes:g} min)")


@main.command("k6")
@click.option("--vus", type=int, required=True, help="virtual users: each one viewer playing the title to its end")
@click.option("--duration", required=True, help="how long the VUs keep playing after the ramp, e.g. 30s, 2m")
@click.option("--ramp", default="0s", show_default=True, help="ramp from 0 to --vus over this long, e.g. 10s")
@click.option("--title", "title_id", default="sample", show_default=True, help="the catalog title they play")
@_target_option
@_handle_errors
def k6_run(vus: int, duration: str, ramp: str, title_id: str, target_name: str | None) -> None:
    """Run the real k6 with k8s/loadtest/viewer-journey.js against the lab; prints its figures as JSON.

    Its metrics go to the lab's Prometheus (remote write, label testid), its summary to the lab's
    reports/k6/. Exit status 1 when a threshold of the script failed.
    """
    from labkit.traffic import loadtest

    result = loadtest.run(_target(target_name), vus=vus, duration=duration, ramp=ramp, title=title_id)
    click.echo(json.dumps({**result.figures(), "summary": str(result.summary_path),
                           "thresholds": result.thresholds}, indent=2))
    if not result.passed:
        failed = ", ".join(name for name, held in result.thresholds.items() if not held) or f"exit {result.exit_code}"
        raise LabError(f"k6's thresholds failed: {failed}", hint=f"see {result.summary_path}")


@main.command()
@_target_option
@_handle_errors
def seed(target_name: str | None) -> None:
    """Create demo users, their plans and catalog titles (idempotent)."""
    from labkit.clients import seed as seeding

    counts = seeding.seed_target(_target(target_name))
    click.echo(f"seeded {counts['users']} users and {counts['titles']} titles")
    for user in seeding.USERS:
        click.echo(f"  {user.email:22} password {user.password:26} plan {user.plan or '-'}")


@main.group()
def image() -> None:
    """The services image (ottlab/ott-services) for the kube target: build it, load it into a local cluster."""


@image.command("build")
@_handle_errors
def image_build() -> None:
    """Build the services image with docker or podman (the first on PATH; $OTTLAB_IMAGE_ENGINE chooses)."""
    from labkit.targets.kube import image as services_image

    click.echo(services_image.build())


@image.command("load")
@click.option("--cluster", "cluster_kind", default=None, metavar="kind|minikube|k3d",
              help="the kind of local cluster (default: $OTTLAB_KUBE_OVERLAY when it is one of these, else kind)")
@click.option("--name", "cluster_name", default=None, help="the cluster (kind, k3d) or profile (minikube), if not "
              "the default one")
@_handle_errors
def image_load(cluster_kind: str | None, cluster_name: str | None) -> None:
    """Copy the built services image into a kind, minikube or k3d cluster (no registry involved)."""
    from labkit.targets.kube import image as services_image
    from labkit.targets.kube import manifest

    if cluster_kind is None:
        overlay = manifest.default_overlay()
        cluster_kind = overlay if overlay in services_image.CLUSTERS else "kind"
    click.echo(services_image.load(cluster_kind, cluster_name))


@main.group()
def addons() -> None:
    """The cluster add-ons (metrics-server, Istio, Grafana, prometheus-adapter, Argo CD) from their official charts."""


@addons.command("list")
@_handle_errors
def addons_list() -> None:
    """The add-ons, pinned in k8s/addons/addons.yaml, in install order: release, chart, version, namespace, repo."""
    from labkit.targets.kube import addons as cluster_addons

    _echo_table(("NAME", "CHART", "VERSION", "NAMESPACE", "REPOSITORY"),
                [(a.name, a.chart, a.version, a.namespace, a.repo) for a in cluster_addons.declared()])


@addons.command("install")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--dry-run", is_flag=True, help="print the helm commands, run none")
@_handle_errors
def addons_install(names: tuple[str, ...], dry_run: bool) -> None:
    """Install or upgrade the add-ons (all, or those NAMEd) with helm into the cluster KUBECONFIG points at."""
    from labkit.targets.kube import addons as cluster_addons

    cluster_addons.install(names, lab_namespace=LabConfig.from_env().namespace, dry_run=dry_run)


@main.group()
def fault() -> None:
    """Delays and aborts injected by the service mesh into a service's traffic (its VirtualService)."""


@fault.command("inject")
@click.argument("service")
@click.option("--delay", "delay_s", type=float, default=None, help="seconds to delay each request, e.g. 2")
@click.option("--abort", "abort_status", type=int, default=None, help="answer this HTTP error instead, e.g. 503")
@click.option("--percent", type=float, default=100.0, show_default=True, help="of the requests (0 to 100)")
@click.option("--header", "header_text", default=None, metavar="NAME=VALUE",
              help="only requests with this header, e.g. x-ottlab-user=alice (default: every request)")
@click.option("--replace", is_flag=True, help="replace a fault already on SERVICE with the same header")
@_target_option
@_handle_errors
def fault_inject(service: str, delay_s: float | None, abort_status: int | None, percent: float,
                 header_text: str | None, replace: bool, target_name: str | None) -> None:
    """Delay and/or abort requests to SERVICE (a route with Istio's fault before its own routes)."""
    from labkit.platform.mesh import faults

    injected = faults.Fault(service, delay_s=delay_s, abort_status=abort_status, percent=percent,
                            header=faults.header(header_text) if header_text is not None else None)
    click.echo(f"injecting: {injected.describe()}")
    faults.inject_on(_target(target_name), injected, replace=replace)
    click.echo(f"injected into the VirtualService of {service}")


@fault.command("clear")
@click.argument("service", required=False)
@_target_option
@_handle_errors
def fault_clear(service: str | None, target_name: str | None) -> None:
    """Remove the injected faults (of SERVICE only, when given); the committed routes stay."""
    from labkit.platform.mesh import faults

    click.echo(f"clearing the faults of {service or 'every service'}")
    removed = faults.clear_on(_target(target_name), service)
    for gone in removed:
        click.echo(f"cleared: {gone.describe()}")
    if not removed:
        click.echo("no fault to clear")


@fault.command("list")
@_target_option
@_handle_errors
def fault_list(target_name: str | None) -> None:
    """The faults in force: service, match, delay, abort, percent."""
    from labkit.platform.mesh import faults

    header = ("SERVICE", "MATCH", "DELAY", "ABORT", "PERCENT")
    rows = [(f.service, f.match, "-" if f.delay_s is None else f"{f.delay_s:g}s",
             "-" if f.abort_status is None else str(f.abort_status), f"{f.percent:g}")
            for f in faults.list_on(_target(target_name))]
    if not rows:
        click.echo("no fault injected")
        return
    _echo_table(header, rows)


def _echo_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Columns as wide as their widest cell, two spaces apart, the header first."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _scrape_targets(target: Target, statuses: list[ComponentStatus]) -> list[dict[str, str]] | None:
    """Prometheus' scrape targets; None when Prometheus itself is not healthy."""
    prom = next((s for s in statuses if s.name == PROMETHEUS.name), None)
    if prom is None or not prom.healthy:
        return None
    frame = Prometheus(target.endpoint(PROMETHEUS.name), timeout=5).targets()
    return [{str(k): str(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _print_table(statuses: list[ComponentStatus]) -> None:
    header = ("COMPONENT", "LAYER", "STATE", "HEALTHY", "PIDS", "URL")
    rows = [
        (s.name, s.layer, s.state, "yes" if s.healthy else "no", ",".join(map(str, s.pids)) or "-",
         s.urls.get("http", next(iter(s.urls.values()), "")))
        for s in statuses
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in statuses:
        if len(s.replica_urls) > 1:
            click.echo(f"  {s.name} replicas: " + ", ".join(f"{name} {url}" for name, url in s.replica_urls.items()))
    for s in statuses:
        if s.detail and not s.healthy:
            click.echo(f"  {s.name}: {s.detail}")
    by_name = {s.name: s for s in statuses}
    gateway, player = by_name.get("gateway"), by_name.get("player")
    if gateway and player and gateway.healthy and player.healthy and "http" in gateway.urls:
        # The page needs the gateway as its origin (its API calls are relative): never the player's own port.
        click.echo(f"\nweb player: {gateway.urls['http']}/player/ (sign in as a demo user: `ottlab seed` lists them)")


if __name__ == "__main__":
    main()
