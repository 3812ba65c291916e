"""Signed playback URLs, checked at the CDN edge by nginx's ``secure_link`` module.

The token sits in a path prefix, so the relative URIs inside the playlists (``720p/index.m3u8``,
``seg_00001.m4s``) keep it without any rewriting::

    http://127.0.0.1:18100/s/<token>/<expires>/<title>/master.m3u8
                             ^^^^^^^^^^^^^^^^^^^^^^^^^ the signed prefix: one token per title

``token`` is MD5 over ``"<expires>/<title>/ <secret>"``, base64url without padding (what nginx's
``secure_link`` compares against); ``expires`` is a UTC epoch second. The edge answers 403 to a
wrong token and 410 to an expired one, and strips the prefix before its cache and the origin, so
every viewer's token shares one cached copy.

>>> len(token("s3cret", "lab-clock", 2000000000))
22
"""

from __future__ import annotations

import base64
import hashlib
import re

PREFIX = "s"
# What a signed path looks like: the edge's location regex is built from the same pieces.
TOKEN_PATTERN = r"[A-Za-z0-9_-]{22}"
EXPIRES_PATTERN = r"[0-9]{1,12}"
TITLE_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
SIGNED_PATH = re.compile(rf"^/{PREFIX}/(?P<token>{TOKEN_PATTERN})/(?P<expires>{EXPIRES_PATTERN})"
                         rf"/(?P<title>{TITLE_PATTERN})(?P<rest>/.*)$")


def _material(title_id: str, expires: int | str, secret: str) -> str:
    return f"{expires}/{title_id}/ {secret}"


def token(secret: str, title_id: str, expires: int) -> str:
    """The URL token for ``title_id`` until ``expires`` (epoch seconds)."""
    digest = hashlib.md5(_material(title_id, expires, secret).encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signed_path(secret: str, title_id: str, expires: int, rest: str) -> str:
    """``/s/<token>/<expires>/<title><rest>``; ``rest`` starts with ``/`` (e.g. ``/master.m3u8``)."""
    if not rest.startswith("/"):
        raise ValueError(f"rest must start with '/': {rest!r}")
    return f"/{PREFIX}/{token(secret, title_id, expires)}/{expires}/{title_id}{rest}"


def nginx_md5_expression(secret: str) -> str:
    """The ``secure_link_md5`` argument matching :func:`token`, over the edge's named captures."""
    if any(c in secret for c in "\"'\\$;{} \t\n"):
        raise ValueError("the signing secret must not contain quotes, '$', ';', braces, backslashes or spaces")
    return _material("$signed_title", "$signed_expires", secret)
