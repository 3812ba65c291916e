"""``python -m labkit.platform.layers``: write the Kubernetes copies of the lab's nginx configs.

The gateway, origin, edge and player nginx configs are rendered by their layers for both targets;
the Kubernetes copies under ``k8s/base`` are committed, and tests fail when they are stale.
"""

from labkit.platform import nginx
from labkit.platform.layers import cdn, player
from labkit.platform.layers.apis import gateway
from labkit.platform.layers.media import origin

for module in (gateway, origin, cdn, player):
    nginx.write_kube_config(module.KUBE_CONFIG, module.render_kube)
