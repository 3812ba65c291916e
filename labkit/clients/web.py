"""One URL fetched as a player (or ``curl``) would, to show the raw HTTP answer.

A lesson looks at what the origin, a PoP or the license service answers: the status, the headers
(``Cache-Control``, ``X-Cache-Status``), the body. :func:`fetch` is one GET bounded in time. A 4xx
or 5xx is an answer to show, not an error; only *no* answer raises :class:`FetchError`, saying
why (``bad_url``, ``refused``, ``timeout``, ``network``) and what to check::

    response = fetch(job.result.master_url)
    response.status_code, response.headers["content-type"]   # (200, 'application/vnd.apple.mpegurl')
    print(response.text)
    fetch(key_uri, headers={"Authorization": f"Bearer {grant['authorization']}"}).content   # 16 bytes

The answer is an :class:`httpx.Response`, whole (its body read): ``status_code``, ``headers``
(case-insensitive), ``text``, ``content``, ``json()``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

import httpx

from labkit.core.errors import LabError

__all__ = ["DEFAULT_TIMEOUT_S", "FetchError", "Response", "fetch"]

DEFAULT_TIMEOUT_S = 10.0

Response = httpx.Response

Reason = Literal["bad_url", "refused", "timeout", "network"]

_WHAT: dict[Reason, str] = {
    "bad_url": "not a URL labkit can fetch",
    "refused": "no server accepted the connection",
    "timeout": "no whole answer in time",
    "network": "the connection broke off",
}
_HINTS: dict[Reason, str] = {
    "bad_url": "give a whole URL such as http://127.0.0.1:<port>/<path>, as `ottlab status` or the platform printed it",
    "refused": "is that component running? check with `ottlab status`, start the platform with `ottlab up`",
    "timeout": "the server is slow or stuck: check it with `ottlab status` and `ottlab logs <component>`, "
    "or pass a longer timeout=",
    "network": "check the component with `ottlab status`, then try again",
}


class FetchError(LabError):
    """No HTTP answer came for ``url``; ``reason`` says why, ``detail`` is the underlying error.

    A refused connection, a timeout or a broken connection may succeed later (``retryable``);
    a URL that is not one will not.
    """

    def __init__(self, url: str, reason: Reason, detail: str) -> None:
        self.url = url
        self.reason = reason
        self.detail = detail
        self.retryable = reason != "bad_url"
        super().__init__(f"GET {url!r}: {_WHAT[reason]} ({detail})", hint=_HINTS[reason])


def fetch(url: str, *, headers: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Response:
    """GET ``url`` (no redirects followed, nothing retried); the whole answer, whatever its status.

    ``timeout`` bounds the whole exchange in seconds, from connecting to the last byte of the body.

        >>> fetch("not a url")
        Traceback (most recent call last):
        ...
        labkit.clients.web.FetchError: GET 'not a url': not a URL labkit can fetch (...)
          -> give a whole URL such as http://127.0.0.1:<port>/<path>, as `ottlab status` or the platform printed it
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout) as client, client.stream("GET", url, headers=headers) as response:
            # httpx bounds each read, not the whole body: a body that trickles in is stopped here.
            raw = bytearray()
            for chunk in response.iter_raw():
                raw += chunk
                if time.monotonic() > deadline:
                    raise FetchError(url, "timeout", f"the body still arriving after {timeout:g} s")
            # The raw bytes with the original headers: the new Response decodes any Content-Encoding itself.
            return httpx.Response(response.status_code, headers=response.headers, content=bytes(raw),
                                  request=response.request, extensions=response.extensions)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FetchError(url, "bad_url", str(exc) or type(exc).__name__) from None
    except httpx.ConnectTimeout:
        raise FetchError(url, "timeout", f"no connection within {timeout:g} s") from None
    except httpx.TimeoutException as exc:
        raise FetchError(url, "timeout", f"{type(exc).__name__} after {timeout:g} s") from None
    except httpx.ConnectError as exc:
        raise FetchError(url, "refused", str(exc) or type(exc).__name__) from None
    except httpx.HTTPError as exc:
        raise FetchError(url, "network", f"{type(exc).__name__}: {exc}") from None
