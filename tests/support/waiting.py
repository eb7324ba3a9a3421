"""Waiting on a condition with a deadline, never on a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value {last!r}")


async def eventually(
    check: Callable[[], T | Awaitable[T]], within: float = 10.0, what: str = "", interval: float = 0.02
) -> T:
    """The same in an event loop; `check` may be a coroutine function."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        value = check()
        last = await value if inspect.isawaitable(value) else value  # type: ignore[assignment]
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what or check}; last value {last!r}")
