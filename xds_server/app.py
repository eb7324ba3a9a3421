"""The control plane process: the one place that wires source, builder and server together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from snapshot.builder import BuildOptions, InconsistentSnapshot, Phase, SnapshotBuilder
from snapshot.resources import CLUSTER_TYPE
from snapshot.snapshot import Snapshot
from watcher.siteset import SiteSet, changes
from watcher.status import StatusLog, site_states

from .ads import AdsServer

log = logging.getLogger("staticsite_xds")


class ControlPlane:
    """Turns every new site set into a snapshot and publishes it to the ADS server."""

    def __init__(self, options: BuildOptions, server: AdsServer | None = None) -> None:
        self.builder = SnapshotBuilder(options)
        self.server = server or AdsServer()
        self.status = StatusLog()
        self._sites = SiteSet()
        self.published: Snapshot | None = None
        self.on_publish: list[Callable[[SiteSet, Snapshot], None]] = []

    def apply(self, sites: SiteSet) -> Snapshot | None:
        """Build and publish a snapshot for `sites`; returns it, or None if it failed its check."""
        diff = changes(self._sites.sites, sites.sites)
        started = time.perf_counter()
        try:
            result = self.builder.build(sites.sites.values())
        except InconsistentSnapshot as exc:  # a builder bug: keep serving the last good snapshot
            log.error("the new snapshot failed its consistency check and was not published: %s", exc)
            return None
        took = (time.perf_counter() - started) * 1000
        self._sites = sites
        self.status.report(site_states(sites, result.sites))
        snapshot = result.snapshot
        if self.server.publish(snapshot):
            log.info(
                "published snapshot %s: %d sites, %d clusters "
                "(built in %.1f ms; %d added, %d changed, %d removed)",
                snapshot.version,
                sum(1 for s in result.sites.values() if s.phase is Phase.PROVISIONED),
                len(snapshot.of_type(CLUSTER_TYPE)),
                took,
                len(diff.added),
                len(diff.updated),
                len(diff.removed),
            )
        self.published = snapshot
        for callback in self.on_publish:
            callback(sites, snapshot)
        return snapshot

    async def run(self, sites: AsyncIterator[SiteSet], address: str, stop: asyncio.Event) -> None:
        """Serve on `address` and follow `sites` until `stop` is set."""
        port = await self.server.start(address)
        host = address.rsplit(":", 1)[0]
        log.info("xDS (ADS, gRPC) listening on %s:%d", host, port)
        consumer = asyncio.create_task(self._follow(sites))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if consumer.done():
                consumer.result()  # the source ended: raise what ended it, if anything
            else:
                consumer.cancel()
        finally:
            log.info("stopping: closing xDS streams")
            await self.server.stop(grace=1.0)

    async def _follow(self, sites: AsyncIterator[SiteSet]) -> None:
        async for site_set in sites:
            self.apply(site_set)
