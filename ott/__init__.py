"""The OTT platform under study: services, transcoder, edge configs, player and QoE collector.

Nothing here imports labkit: these are the programs an OTT company would run in production.
"""

__version__ = "0.1.0"
