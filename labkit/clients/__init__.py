"""Clients of a running platform, the same on every target.

- :mod:`~labkit.clients.api`: a viewer's client of the OTT APIs through the gateway;
- :mod:`~labkit.clients.seed`: the demo users, plans and titles;
- :mod:`~labkit.clients.transcoding`: transcode jobs submitted and followed to the end;
- :mod:`~labkit.clients.prometheus`: PromQL into DataFrames;
- :mod:`~labkit.clients.pops`: the CDN's PoPs seen from a notebook: URLs, signed URLs, access logs;
- :mod:`~labkit.clients.web`: one URL fetched, to show the raw HTTP answer;
- :mod:`~labkit.clients.hls`: HLS playlists read into typed rungs, segments and keys.
"""
