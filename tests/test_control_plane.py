"""The control plane's wiring: coalescing bursts, change hints, publishing."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import pytest
from support.sites import site as make_site

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.model import SiteKey, StaticSite
from watcher.siteset import SiteSet
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.unit


async def _run(plane: ControlPlane, stop: asyncio.Event) -> asyncio.Task[None]:
    async def no_source():  # type: ignore[no-untyped-def]
        await stop.wait()
        return
        yield

    task = asyncio.create_task(plane.run(no_source(), "127.0.0.1:0", stop))
    await asyncio.sleep(0.05)
    return task


async def test_a_burst_of_changes_is_coalesced_and_the_final_state_is_exact() -> None:
    plane = ControlPlane(BuildOptions(), hold_off=0.01, max_delay=0.1)
    stop = asyncio.Event()
    task = await _run(plane, stop)
    sites: dict[SiteKey, StaticSite] = {}
    started = time.monotonic()
    for i in range(500):  # 500 changes spread over about a second
        site = make_site(f"s{i % 120}", service="web", port=80 + i)
        sites[site.key] = site
        plane.offer(SiteSet(MappingProxyType(dict(sites)), changed=frozenset({site.key})))
        await asyncio.sleep(0.002)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert elapsed < 2.0
    # One publish per max_delay at most while the burst lasts, plus the last one.
    assert 2 <= plane.publishes <= elapsed / 0.1 + 2, (plane.publishes, elapsed)
    assert plane.published is not None
    assert plane.published.version == SnapshotBuilder().build(sites).snapshot.version


async def test_a_single_change_is_published_after_the_hold_off() -> None:
    published = asyncio.Event()
    plane = ControlPlane(
        BuildOptions(),
        observers=[ObserverFuncs(on_published=lambda *_: published.set())],
        hold_off=0.02,
        max_delay=0.5,
    )
    stop = asyncio.Event()
    task = await _run(plane, stop)
    site = make_site("s1", service="web")
    started = time.monotonic()
    plane.offer(SiteSet(MappingProxyType({site.key: site})))
    await asyncio.wait_for(published.wait(), 2)
    took = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(task, 5)
    assert plane.publishes == 1
    assert 0.015 <= took < 0.3, took


async def test_merged_hints_cover_every_change_in_the_burst() -> None:
    plane = ControlPlane(BuildOptions(), hold_off=0.05, max_delay=1.0)
    a, b = make_site("s1", service="web"), make_site("s2", service="web")
    plane.apply(SiteSet(MappingProxyType({a.key: a, b.key: b})))
    a2, b2 = make_site("s1", service="web", port=81), make_site("s2", service="web", port=82)
    # Two sets, each naming only its own change: the build must see both.
    plane.offer(SiteSet(MappingProxyType({a.key: a2, b.key: b}), changed=frozenset({a.key})))
    plane.offer(SiteSet(MappingProxyType({a.key: a2, b.key: b2}), changed=frozenset({b.key})))
    plane.apply(plane._take())
    want = SnapshotBuilder().build({a.key: a2, b.key: b2}).snapshot.version
    assert plane.published is not None
    assert plane.published.version == want
