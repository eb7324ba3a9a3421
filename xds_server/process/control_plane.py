"""The control plane: follows a source of sites, builds snapshots and publishes them to its
ADS server, and traces Envoy's rejections back to sites.

`ControlPlane.apply` is the one sequence a change goes through: build, tell the observers it
was built, report every site's state, publish, and tell the observers it was published.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc

from snapshot.builder import BuildOptions, BuildResult, SnapshotBuilder
from snapshot.consistency import InconsistentSnapshot
from snapshot.containment import Containment
from snapshot.model import SiteKey
from snapshot.resources import CLUSTER_TYPE
from snapshot.snapshot import Snapshot
from snapshot.tenancy import Tenancy
from watcher.siteset import SiteSet, merge_changes
from watcher.status import StatusLog

from ..ads.server import AdsServer
from ..ads.stream import Nack, StreamInfo
from .observer import Observer, ObserverFuncs, Observers

log = logging.getLogger("staticsite_xds")

DEFAULT_HOLD_OFF = 0.005  # seconds of quiet awaited before building
DEFAULT_MAX_DELAY = 0.12  # never hold a change longer than this, however busy the source


class ControlPlane:
    """Turns every new site set into a snapshot and publishes it to the ADS server.

    Changes arriving in a burst are coalesced: a build waits for `hold_off` seconds without a
    new change, but never more than `max_delay` after the first change it holds, and then
    builds the latest set once.
    """

    def __init__(
        self,
        options: BuildOptions,
        *,
        observers: Sequence[Observer] = (),
        hold_off: float = DEFAULT_HOLD_OFF,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        """`observers` are told of every build, status report, publish and stream event, in
        the order given."""
        if hold_off < 0 or max_delay < 0:
            raise ValueError("hold-off and maximum delay must not be negative")
        self.builder = SnapshotBuilder(options)
        self.status = StatusLog()
        self.hold_off = hold_off
        self.max_delay = max(max_delay, hold_off)
        self.sites = SiteSet()
        self.published: Snapshot | None = None
        self.publishes = 0
        self.observers = Observers(observers)
        # Envoy's rejections: traced to sites, which the next builds leave out. The plane hears
        # of each ACK and NACK before any other observer does.
        self.containment = Containment()
        own = ObserverFuncs(
            on_ack=self._acked,
            on_nack=self._nacked,
            on_close=lambda info: self.containment.stream_closed(info.id),
        )
        self.server = AdsServer(observer=Observers([own, *observers]))
        self.xds_port = 0  # the port the xDS server listens on, once it does
        self._pending: SiteSet | None = None
        self._pending_changes: frozenset[SiteKey] | None = None
        self._arrived = asyncio.Event()

    def apply(self, sites: SiteSet) -> Snapshot | None:
        """Build and publish a snapshot for `sites` now; None if it failed its check."""
        started = time.perf_counter()
        built, changed = self.containment.effective(sites.sites, sites.changed)
        try:
            result = self.builder.build(built, changed)
        except InconsistentSnapshot as exc:  # a builder bug: keep serving the last good snapshot
            log.error("the new snapshot failed its consistency check and was not published: %s", exc)
            self.builder.reset()  # start the next build afresh
            return None
        took = (time.perf_counter() - started) * 1000
        self.observers.built(result, took / 1000)
        self.sites = sites
        touched = self.status.report(
            sites, result, self.containment.states(), self.containment.take_state_changes()
        )
        self.observers.status(sites, self.status.states(), touched)
        snapshot = result.snapshot
        new = self.server.publish(snapshot)
        if new:
            self.publishes += 1
            self._log_publish(result, took)
        if self.containment.built(snapshot, built, changed, result.sites, result.changed, new=new):
            self._reconsider()
        self.published = snapshot
        self.observers.published(sites, snapshot)
        return snapshot

    def _acked(self, info: StreamInfo, _type_url: str, _version: str) -> None:
        if self.containment.acked(info.id, info.held_versions()):
            self._reconsider()

    def _nacked(self, info: StreamInfo, nack: Nack) -> None:
        if self.containment.nacked(info.node_id, nack.type_url, nack.snapshot_version, nack.message):
            self._reconsider()

    def _reconsider(self) -> None:
        """Build the current sites again (what the containment holds back has changed)."""
        if self.published is None:
            return
        if self._pending is None:
            self.offer(dataclasses.replace(self.sites, changed=frozenset()))
        else:
            self._arrived.set()

    def _log_publish(self, result: BuildResult, took: float) -> None:
        snapshot = result.snapshot
        log.info(
            "published snapshot %s: %d sites, %d clusters (built in %.1f ms; %d added, %d changed, %d removed)",
            snapshot.version,
            result.served,
            len(snapshot.of_type(CLUSTER_TYPE)),
            took,
            len(result.added),
            len(result.updated),
            len(result.removed),
        )

    @property
    def ready(self) -> bool:
        """A complete snapshot has been published."""
        return self.published is not None

    @property
    def tenancy(self) -> Tenancy:
        """The tenancy of the last site set built."""
        return self.sites.tenancy

    async def run(
        self,
        sites: AsyncIterator[SiteSet],
        address: str,
        stop: asyncio.Event,
        companions: Iterable[Coroutine[Any, Any, None]] = (),
        *,
        credentials: grpc.ServerCredentials | None = None,
        services: Sequence[Callable[[grpc.aio.Server], None]] = (),
    ) -> None:
        """Serve on `address` and follow `sites` until `stop` is set.

        `companions` run alongside (status writers, health endpoints); they end with `stop`,
        and one that fails stops the whole. `credentials` serve the xDS port over TLS (None:
        plain text); each of `services` adds a gRPC service to it (health, inspection).
        """
        port = self.xds_port = await self.server.start(address, credentials=credentials, services=services)
        host = address.rsplit(":", 1)[0]
        log.info("xDS (ADS, gRPC) listening on %s:%d", host, port)
        follower = asyncio.create_task(self._follow(sites, stop))
        publisher = asyncio.create_task(self._publish_loop())
        stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
        helpers = [asyncio.create_task(coro) for coro in companions]
        try:
            await asyncio.wait({follower, publisher, stopper, *helpers}, return_when=asyncio.FIRST_COMPLETED)
            for task in (follower, publisher, *helpers):
                if task.done():
                    task.result()  # raise what ended it, if anything
        finally:
            stop.set()  # the source and the companions end with it: let them clean up
            await asyncio.wait([follower, *helpers], timeout=12)
            for running in (follower, publisher, stopper, *helpers):
                running.cancel()
            if self._pending is not None:
                self.apply(self._take())
            log.info("stopping: closing xDS streams")
            await self.server.stop(grace=1.0)

    async def _follow(self, sites: AsyncIterator[SiteSet], stop: asyncio.Event) -> None:
        try:
            async for site_set in sites:
                self.offer(site_set)
        finally:
            close = getattr(sites, "aclose", None)  # a generator's clean-up runs now, not at exit
            if close is not None:
                await close()
        await stop.wait()  # the source ended: keep serving what it gave

    def offer(self, site_set: SiteSet) -> None:
        """Hand the control plane a new site set; it is built after the hold-off."""
        if self._pending is None:
            self._pending_changes = site_set.changed
        else:
            self._pending_changes = merge_changes(self._pending_changes, site_set.changed)
        self._pending = site_set
        self._arrived.set()

    def _take(self) -> SiteSet:
        pending = self._pending
        assert pending is not None
        changes = self._pending_changes
        self._pending = None
        self._pending_changes = None
        if changes != pending.changed:
            pending = dataclasses.replace(pending, changed=changes)
        return pending

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self.max_delay
            while True:
                self._arrived.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=min(self.hold_off, remaining))
                except TimeoutError:
                    break  # quiet for the hold-off
            if self._pending is not None:
                self.apply(self._take())
