"""Viewer sessions for the tests that run the real platform."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from labkit.clients import seed
from labkit.clients.api import OttClient


@contextmanager
def signed_in(gateway_url: str, user: seed.DemoUser = seed.USERS[0]) -> Iterator[OttClient]:
    """A demo user's session through the gateway (alice, premium, by default); her stream sessions
    are ended afterwards, so the next test starts under the stream limit."""
    client = OttClient(gateway_url)
    client.login(user.email, user.password)
    try:
        yield client
        for session in client.sessions():
            client.end_session(session["session_id"])
    finally:
        client.close()
