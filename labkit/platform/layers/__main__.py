"""``python -m labkit.platform.layers``: write the Kubernetes copies of the lab's nginx configs.

The gateway, origin, edge and player nginx configs are rendered by their layers for both targets;
the Kubernetes copies under ``k8s/base`` are committed, and tests fail when they are stale. So is
the process exporter's list of groups (one per component), and the alert rules, Alertmanager's
configuration and their promtool tests (:mod:`labkit.platform.layers.monitoring.alerting`), and the
canary title's files the kube transcoder's pod publishes (:mod:`labkit.platform.layers.media.canary`).
"""

import functools
from pathlib import Path

from labkit import platform
from labkit.platform import nginx
from labkit.platform.layers import cdn, player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.media import canary, origin
from labkit.platform.layers.monitoring import alerting, processes

for module in (gateway, origin, cdn, player):
    nginx.write_kube_config(module.KUBE_CONFIG, module.render_kube)
nginx.write_kube_config(cdn.KUBE_START, cdn.render_kube_start)
nginx.write_kube_config(processes.KUBE_CONFIG, lambda: processes.render_kube(platform.components()))
canary.write_kube()
for path, text in alerting.files().items():
    nginx.write_kube_config(Path(path), functools.partial(str, text))
