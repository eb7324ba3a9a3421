"""The client-side rate limit of status writes: a token bucket, status patches before Events."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from watcher import rate_limit
from watcher.rate_limit import RateLimiter

pytestmark = pytest.mark.unit


class VirtualTime:
    """A clock that moves only when the limiter sleeps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            self.now += seconds
            await real_sleep(0)

        monkeypatch.setattr(rate_limit.asyncio, "sleep", sleep)

    def __call__(self) -> float:
        return self.now


async def test_a_burst_then_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualTime(monkeypatch)
    limiter = RateLimiter(qps=10, burst=3, clock=clock)
    times = []
    for _ in range(23):
        await limiter.acquire()
        times.append(clock.now - 1000.0)
    assert times[:3] == [0.0, 0.0, 0.0]  # the burst at once
    assert times[3] == pytest.approx(0.1)
    assert times[-1] == pytest.approx(2.0)  # 20 more at 10 a second
    for earlier, later in itertools.pairwise(times[3:]):
        assert later - earlier == pytest.approx(0.1)


async def test_the_bucket_refills_while_idle_up_to_the_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualTime(monkeypatch)
    limiter = RateLimiter(qps=10, burst=5, clock=clock)
    for _ in range(5):
        await limiter.acquire()
    clock.now += 60  # a quiet minute: five tokens again, not 600
    start = clock.now
    for _ in range(6):
        await limiter.acquire()
    assert clock.now - start == pytest.approx(0.1)


async def test_an_event_waits_while_status_patches_wait() -> None:
    limiter = RateLimiter(qps=50, burst=1)  # in real time: a token every 20 ms
    await limiter.acquire()  # the bucket is empty now
    order: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        await limiter.acquire(urgent=urgent)
        order.append(name)

    event = asyncio.create_task(take("event", False))
    await asyncio.sleep(0)
    patches = [asyncio.create_task(take(f"patch-{i}", True)) for i in range(4)]
    await asyncio.gather(event, *patches)
    assert order[-1] == "event"
    assert sorted(order[:-1]) == [f"patch-{i}" for i in range(4)]


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_or_burst_that_allows_nothing_is_refused(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateLimiter(qps=qps, burst=burst)
