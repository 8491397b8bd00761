"""Waiting for something to become true: the one polling helper of the tests and benchmarks.

Tests never sleep to synchronise: they poll a condition with a deadline, and a
timeout says what was awaited. ``wait_for`` is for ordinary code (a real hub, a
fake service on a thread); ``wait_for_async`` is the same inside an event loop
(the Kubernetes emulator), where sleeping must yield to the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 30, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises TimeoutError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # polling interval, not synchronisation


async def wait_for_async(predicate: Callable[[], Any], *, timeout: float = 5,
                         interval: float = 0.02, what: str = "condition") -> Any:
    """``wait_for`` inside an event loop: the loop runs on while it waits.

    ``predicate`` may be a coroutine function (e.g. a spawner's ``poll``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)  # lets the emulator's handlers run between checks
