"""Running a coroutine to completion from plain code, a notebook cell included."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(job: Coroutine[Any, Any, T]) -> T:
    """Run ``job`` to completion; in a thread of its own when this thread already runs a loop (a notebook).

    >>> async def answer() -> int:
    ...     return 42
    >>> run(answer())
    42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, job).result()
