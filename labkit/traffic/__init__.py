"""Viewers: simulated players and a real browser, and what shapes them.

- :mod:`~labkit.traffic.playback`: the simulated player's core (clocks, buffer model, CMCD, request records);
- :mod:`~labkit.traffic.audience`: an audience of simulated ABR players;
- :mod:`~labkit.traffic.wave`: fixed-rung viewers for the CDN drills;
- :mod:`~labkit.traffic.herd`: thundering herds and scratch nginx servers;
- :mod:`~labkit.traffic.browser`: the web player in the system Chromium;
- :mod:`~labkit.traffic.abr`: ABR rules;
- :mod:`~labkit.traffic.bandwidth`: fixed rates and traces (``traces/*.csv``);
- :mod:`~labkit.traffic.loadtest`: the real k6 on the kube Job's journey script (``ottlab k6``), and socket bounds;
- :mod:`~labkit.traffic.capacity`: the capacity ramp, an audience in growing steps with CPU per component;
- :mod:`~labkit.traffic.showcase`: traffic that gives every dashboard panel something to show.
"""
