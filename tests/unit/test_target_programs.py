"""Each target names the programs it needs on this machine; notebook 00 asks the target, not its name."""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.targets.base import Target
from labkit.targets.kube.target import KubeTarget
from labkit.targets.local import LocalTarget

TOOLS = pd.DataFrame([
    {"program": "python", "needed_by": "all", "found": True},
    {"program": "nginx", "needed_by": "local", "found": False},
    {"program": "kubectl", "needed_by": "kube", "found": False},
    {"program": "chromium", "needed_by": "tests", "found": False},
])


@pytest.mark.parametrize(("target", "missing"), [(LocalTarget, ["nginx"]), (KubeTarget, ["kubectl"])])
def test_a_target_misses_only_the_programs_it_runs(target: type[Target], missing: list[str]) -> None:
    assert list(target.missing_programs(TOOLS)["program"]) == missing
    assert target.missing_programs(TOOLS.assign(found=True)).empty
