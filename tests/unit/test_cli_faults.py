"""``ottlab fault``: inject, list and clear through a target's mesh; bad input refused before the target is asked."""

from __future__ import annotations

from typing import Any, cast

import pytest
from click.testing import CliRunner

from labkit import cli
from labkit.core.errors import MissingCapabilityError
from labkit.platform.mesh import faults, resources
from labkit.platform.mesh.faults import Fault
from labkit.targets.base import Target


class MeshHolder:
    """A target's mesh seam only: what it holds, and every mesh it was given."""

    name = "fake"

    def __init__(self, mesh: resources.Mesh) -> None:
        self.current = mesh
        self.applied: list[resources.Mesh] = []

    def mesh(self) -> resources.Mesh:
        return self.current

    def apply_mesh(self, mesh: resources.Mesh) -> None:
        self.applied.append(mesh)
        self.current = mesh


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch) -> MeshHolder:
    held = MeshHolder(resources.load())
    monkeypatch.setattr(cli, "_target", lambda name: held)
    return held


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.main, ["fault", *args])


def test_inject_list_and_clear(holder: MeshHolder) -> None:
    committed = holder.current
    result = run("inject", "license", "--delay", "2", "--percent", "50", "--header", "X-Ottlab-User=alice")
    assert result.exit_code == 0, result.output
    assert "injecting: delay 2s of 50% of the requests to license with x-ottlab-user: alice" in result.output
    assert faults.listing(holder.current) == [Fault("license", delay_s=2, percent=50,
                                                    header=("x-ottlab-user", "alice"))]
    assert run("inject", "cas", "--abort", "503").exit_code == 0

    listed = run("list")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "SERVICE  MATCH                 DELAY  ABORT  PERCENT",
        "license  x-ottlab-user: alice  2s     -      50",
        "cas      every request         -      503    100",
    ]

    cleared = run("clear", "cas")
    assert cleared.exit_code == 0, cleared.output
    assert "cleared: abort 503 of 100% of the requests to cas (every request)" in cleared.output
    assert [f.service for f in faults.listing(holder.current)] == ["license"]
    assert run("clear").exit_code == 0
    assert holder.current == committed
    assert len(holder.applied) == 4
    nothing = run("clear")
    assert nothing.exit_code == 0 and "no fault to clear" in nothing.output and len(holder.applied) == 4
    assert run("list").output.strip() == "no fault injected"


def test_a_second_fault_is_refused_then_replaced(holder: MeshHolder) -> None:
    assert run("inject", "license", "--delay", "2").exit_code == 0
    again = run("inject", "license", "--abort", "500")
    assert again.exit_code == 2 and "license already has a fault on every request" in again.output
    assert len(holder.applied) == 1
    assert run("inject", "license", "--abort", "500", "--replace").exit_code == 0
    assert faults.listing(holder.current) == [Fault("license", abort_status=500)]


@pytest.mark.parametrize(("args", "message"), [
    (["licence", "--delay", "2"], "no service named 'licence' has a VirtualService"),
    (["license"], "needs a delay, an abort or both"),
    (["license", "--delay", "2", "--percent", "-5"], "percent -5.0 is not a percentage"),
    (["license", "--delay", "2", "--percent", "101"], "percent 101.0 is not a percentage"),
    (["license", "--abort", "200"], "abort status 200 is not an HTTP error"),
    (["license", "--abort", "700"], "abort status 700 is not an HTTP status"),
    (["license", "--delay", "0"], "delay 0.0 s is not a delay"),
    (["license", "--delay", "1", "--header", "x-ottlab-user"], "'x-ottlab-user' is not NAME=VALUE"),
])
def test_bad_input_is_refused_and_nothing_is_applied(holder: MeshHolder, args: list[str], message: str) -> None:
    result = run("inject", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "->" in result.output
    assert holder.applied == []


def test_a_target_without_a_mesh_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMesh:
        """A target that keeps Target's own answer: it has no mesh."""

        name = "local"
        mesh = Target.mesh
        apply_mesh = Target.apply_mesh

    with pytest.raises(MissingCapabilityError, match="the local target cannot change the service mesh's resources"):
        Target.apply_mesh(cast(Target, NoMesh()), resources.load())
    monkeypatch.setattr(cli, "_target", lambda name: NoMesh())
    for args in (["inject", "license", "--delay", "2"], ["list"], ["clear"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert "ottlab: error: the local target cannot read the service mesh's resources" in result.output
        assert "-> use the kube target with Istio installed" in result.output
