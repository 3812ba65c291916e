"""The platform's layers, one package each: its components' declarations and the config renderers.

- :mod:`~labkit.platform.layers.monitoring`: Prometheus and Alertmanager;
- :mod:`~labkit.platform.layers.apis`: the OTT services behind the nginx gateway
  (:mod:`~labkit.platform.layers.apis.routes` declares the gateway's traffic policy,
  :mod:`~labkit.platform.layers.apis.gateway` renders it);
- :mod:`~labkit.platform.layers.media`: the transcoder and the origin
  (:mod:`~labkit.platform.layers.media.origin` renders the origin's nginx);
- :mod:`~labkit.platform.layers.cdn`: the edge PoPs and their log exporters;
- :mod:`~labkit.platform.layers.player`: the web player's files and the QoE collector.
"""
