"""Drills: faults a lesson injects into the platform, observed, then cleared."""
