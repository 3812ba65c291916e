"""Faults of single replicas on the local target: kept in the lab directory, rendered into their sidecars.

:meth:`LocalTarget.inject_replica_fault` records a :class:`~labkit.platform.mesh.faults.ReplicaFault`
here (``run/mesh/replica-faults.json``) and has the sidecars rendered again
(:func:`labkit.targets.local.mesh.apply`): the replica's own Envoy gets a fault filter on its inbound
side, the other replicas nothing. ``down`` forgets them, as it forgets the applied resources.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from labkit.core.config import LabConfig
from labkit.platform.mesh.faults import ReplicaFault


def _file(cfg: LabConfig) -> Path:
    return cfg.run_dir / "mesh" / "replica-faults.json"


def load(cfg: LabConfig) -> list[ReplicaFault]:
    """The faults of single replicas in force, by service and replica."""
    path = _file(cfg)
    if not path.is_file():
        return []
    return [ReplicaFault.of(each) for each in json.loads(path.read_text())]


def save(cfg: LabConfig, chosen: Sequence[ReplicaFault]) -> None:
    """Keep ``chosen`` (none: the file goes), by a rename."""
    path = _file(cfg)
    if not chosen:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ordered = sorted(chosen, key=lambda f: (f.fault.service, f.replica))
    tmp.write_text(json.dumps([f.as_dict() for f in ordered], indent=1) + "\n")
    tmp.replace(path)


def of(chosen: Sequence[ReplicaFault], service: str, replica: int) -> ReplicaFault | None:
    """The fault of replica ``replica`` of ``service`` among ``chosen``, if any."""
    return next((f for f in chosen if (f.fault.service, f.replica) == (service, replica)), None)
