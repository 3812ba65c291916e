"""The two targets behind one interface; :func:`make_target` picks one from the config."""

from __future__ import annotations

from labkit import platform
from labkit.core.config import LabConfig
from labkit.core.errors import UnknownTargetError
from labkit.targets.base import ComponentStatus, Target

__all__ = ["ComponentStatus", "Target", "make_target"]


def make_target(cfg: LabConfig | None = None, target: str | None = None) -> Target:
    """The target named by ``target``, else by ``cfg.target`` (``OTTLAB_TARGET``, default local)."""
    cfg = LabConfig.from_env() if cfg is None else cfg
    if target is not None:
        cfg = cfg.with_(target=target.strip().lower())
    if cfg.target == "local":
        from labkit.targets.local import LocalTarget

        return LocalTarget(cfg, platform.components(), platform.layers())
    if cfg.target == "kube":
        from labkit.targets.kube.target import KubeTarget

        return KubeTarget(cfg, platform.components())
    raise UnknownTargetError(cfg.target, ["local", "kube"])
