"""Events from kopf's thread reach the source's event loop in order, with one wake-up per batch."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from watcher.k8s_kopf import HANDOFF_BATCH, Handoff

pytestmark = pytest.mark.unit


class CountingLoop:
    """The wake-ups asked of a loop, counted; the loop's own work runs as usual."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)

    def call_soon(self, callback: Any, *args: Any) -> Any:
        return self.loop.call_soon(callback, *args)


async def until(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_events_from_another_thread_come_in_order_with_few_wakeups() -> None:
    loop = CountingLoop(asyncio.get_running_loop())
    handoff = Handoff(loop)  # type: ignore[arg-type]
    seen: list[tuple[str, int]] = []
    threads_seen: set[int] = set()

    def sites(event: Mapping[str, Any]) -> None:
        threads_seen.add(threading.get_ident())
        seen.append(("site", event["n"]))

    def services(event: Mapping[str, Any]) -> None:
        seen.append(("service", event["n"]))

    count = 3 * HANDOFF_BATCH + 7

    def feed() -> None:  # as kopf's thread does
        for n in range(count):
            handoff.put(sites if n % 2 else services, {"n": n})

    kopf = threading.Thread(target=feed)
    kopf.start()
    kopf.join()  # the loop is held meanwhile: it looks only once everything is queued
    await until(lambda: len(seen) == count)
    assert [n for _, n in seen] == list(range(count))  # one order across both kinds
    assert [kind for kind, _ in seen[:2]] == ["service", "site"]
    assert threads_seen == {threading.get_ident()}  # handled on the loop's thread
    assert loop.wakeups == 1  # all put before the loop looked: one wake-up

    # Once drained, the next event wakes the loop again.
    await asyncio.to_thread(handoff.put, sites, {"n": count})
    await until(lambda: len(seen) == count + 1)
    assert loop.wakeups == 2


async def test_a_long_queue_is_handled_a_batch_at_a_time() -> None:
    handoff = Handoff(asyncio.get_running_loop())
    seen: list[int] = []
    between: list[int] = []

    def handle(event: Mapping[str, Any]) -> None:
        seen.append(event["n"])

    for n in range(2 * HANDOFF_BATCH + 1):
        handoff.put(handle, {"n": n})
    # Other work of the loop gets its turn between batches.
    asyncio.get_running_loop().call_soon(
        lambda: asyncio.get_running_loop().call_soon(between.append, len(seen))
    )
    await until(lambda: len(seen) == 2 * HANDOFF_BATCH + 1)
    assert between
    assert between[0] < len(seen)


async def test_an_event_that_fails_is_logged_and_the_others_are_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoff = Handoff(asyncio.get_running_loop())
    seen: list[int] = []

    def handle(event: Mapping[str, Any]) -> None:
        if event["n"] == 1:
            raise ValueError("a broken event")
        seen.append(event["n"])

    with caplog.at_level(logging.ERROR, logger="staticsite_xds.kubernetes"):
        for n in range(3):
            handoff.put(handle, {"n": n})
        await until(lambda: len(seen) == 2)
    assert seen == [0, 2]
    assert "a watch event could not be handled" in caplog.text
    handoff.put(handle, {"n": 3})  # and it goes on
    await until(lambda: seen[-1] == 3)
