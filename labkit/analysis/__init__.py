"""Making sense of what was measured.

- :mod:`~labkit.analysis.experience`: QoE maths, from the players', the collector's and the edge's accounts;
- :mod:`~labkit.analysis.plots`: plots that take data and return a matplotlib Figure;
- :mod:`~labkit.analysis.panels`: thin ipywidgets panels for interactive use;
- :mod:`~labkit.analysis.dashboards`: the Grafana dashboards as code, and their matplotlib renderer;
- :mod:`~labkit.analysis.capacity`: capacity curves: the knee, what saturated first, viewers and Gbit/s per core.
"""
