"""A client-side rate limit on writes to the API server: a token bucket with two priorities.

The status writer takes a token before each status patch and each Event. A token bucket
allows `burst` writes at once and `qps` a second after that, like client-go's limiter, so a
first install or a change that touches every site (a revoked grant) reaches the API server at
a bounded rate instead of all at once. Status patches come first: an Event (history, not
state) waits while any status patch waits, so that every site's status is written as soon as
the rate allows and the Events follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_QPS = 200.0
DEFAULT_BURST = 400
_EPSILON = 1e-9  # of a token: what floating-point refills may fall short by


class RateLimiter:
    """At most `burst` acquisitions at once, refilled at `qps` a second."""

    def __init__(
        self,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if qps <= 0:
            raise ValueError(f"the rate must be above 0 writes a second, got {qps:g}")
        if burst < 1:
            raise ValueError(f"the burst must be at least 1 write, got {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._urgent = 0  # status patches waiting for a token
        self._lock = asyncio.Lock()
        self.waited = 0.0  # seconds spent waiting for tokens, in all

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
        self._at = now

    async def acquire(self, *, urgent: bool = True) -> None:
        """Wait for a token. A non-urgent caller (an Event) waits while any urgent one does."""
        if urgent:
            self._urgent += 1
        try:
            while True:
                async with self._lock:
                    self._refill()
                    if self._tokens >= 1 - _EPSILON and (urgent or not self._urgent):
                        self._tokens -= 1
                        return
                    missing = max(_EPSILON, 1 - self._tokens) / self.qps
                wait = missing if urgent or not self._urgent else max(missing, 1 / self.qps)
                self.waited += wait
                await asyncio.sleep(wait)
        finally:
            if urgent:
                self._urgent -= 1
