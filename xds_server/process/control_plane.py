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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from snapshot.builder import BuildOptions, BuildResult, SnapshotBuilder
from snapshot.consistency import InconsistentSnapshot
from snapshot.containment import Containment
from snapshot.groups import SiteGroups
from snapshot.model import SiteKey, StaticSite
from snapshot.resources import CLUSTER_TYPE
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.tenancy import Tenancy
from snapshot.verdict import SiteState
from watcher.siteset import SiteSet, merge_changes
from watcher.status import StatusLog

from ..ads.membership import ClientIdentity, NotAMember
from ..ads.server import AdsServer
from ..ads.stream import Nack, StreamInfo
from .observer import Observer, ObserverFuncs, Observers

log = logging.getLogger("staticsite_xds")

DEFAULT_HOLD_OFF = 0.005  # seconds of quiet awaited before building
DEFAULT_MAX_DELAY = 0.12  # never hold a change longer than this, however busy the source


@dataclass(eq=False, slots=True)
class GroupPlane:
    """One gateway group's share of the control plane: its builder, the bookkeeping of what
    its Envoys rejected, and the snapshot last published to it."""

    name: str
    builder: SnapshotBuilder
    containment: Containment = dataclasses.field(default_factory=Containment)
    published: Snapshot | None = None
    last: BuildResult | None = None
    reconsider: bool = False  # build again even if no site of it changed


class TenancyMembership:
    """Which gateway group an Envoy's stream belongs to, by the plane's current tenancy.

    With a client certificate, the group whose client names the certificate carries; the
    group the node declares (`node.cluster`) must then be empty or the same. Without one
    (plain text on loopback, or --insecure-plaintext), the group the node declares if it
    exists, else the default group. While no gateway group is declared (a folder without
    any), every Envoy is in the default group.
    """

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def group_of(self, identity: ClientIdentity | None, declared: str) -> str:
        tenancy = self._plane.tenancy
        if not tenancy.enforced:
            return DEFAULT_GROUP
        if identity is None:
            return declared if declared in tenancy.groups else DEFAULT_GROUP
        group = tenancy.client_group(identity.names)
        if group is None:
            names = ", ".join(identity.names) or "no name"
            raise NotAMember(f"the client certificate ({names}) is no gateway group's")
        if declared and declared != group:
            raise NotAMember(
                f"the node declares gateway group {declared!r}, but its certificate is group {group!r}'s"
            )
        return group


_Build = tuple["GroupPlane", Mapping[SiteKey, StaticSite], "frozenset[SiteKey] | None", BuildResult, float]


class _States(Mapping[SiteKey, SiteState]):
    """The verdict of every site: its refusal by the tenancy, or its group's builder's state."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def __getitem__(self, key: SiteKey) -> SiteState:
        groups = self._plane.groups
        group = groups.group_of(key)
        if group is None:
            return groups.refusals[key]
        last = self._plane.planes()[group].last
        if last is None:
            raise KeyError(key)
        return last.sites[key]

    def __iter__(self) -> Iterator[SiteKey]:
        yield from self._plane.groups.refusals
        for plane in self._plane.planes().values():
            if plane.last is not None:
                yield from plane.last.sites

    def __len__(self) -> int:
        return sum(1 for _ in self)


class ControlPlane:
    """Turns every new site set into a snapshot per gateway group and publishes them.

    Changes arriving in a burst are coalesced: a build waits for `hold_off` seconds without a
    new change, but never more than `max_delay` after the first change it holds, and then
    builds the latest set once. Only the groups a change touches are built and published.
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
        self.options = options
        self.status = StatusLog()
        self.hold_off = hold_off
        self.max_delay = max(max_delay, hold_off)
        self.sites = SiteSet()
        self.groups = SiteGroups()
        self.publishes = 0
        self.observers = Observers(observers)
        # The default group's plane always exists (its builder is where tests set hooks);
        # the others come and go with the gateway groups.
        self._planes: dict[str, GroupPlane] = {DEFAULT_GROUP: self._new_plane(DEFAULT_GROUP)}
        self._applied = False
        # Envoy's rejections, traced to sites, which the next builds leave out: each group's
        # containment hears of its Envoys' ACKs and NACKs before any other observer does.
        own = ObserverFuncs(on_ack=self._acked, on_nack=self._nacked, on_close=self._closed)
        self.server = AdsServer(observer=Observers([own, *observers]), membership=TenancyMembership(self))
        self.xds_port = 0  # the port the xDS server listens on, once it does
        self._pending: SiteSet | None = None
        self._pending_changes: frozenset[SiteKey] | None = None
        self._arrived = asyncio.Event()

    # -- the groups ------------------------------------------------------------------------

    def _new_plane(self, name: str) -> GroupPlane:
        plane = GroupPlane(name, SnapshotBuilder(self.options, name))
        default = getattr(self, "_planes", {}).get(DEFAULT_GROUP)
        if default is not None:  # a hook set on the default group's builder holds for all
            plane.builder.resource_hook = default.builder.resource_hook
        return plane

    @property
    def tenancy(self) -> Tenancy:
        """The gateway groups and grants of the last site set built."""
        return self.sites.tenancy

    @property
    def builder(self) -> SnapshotBuilder:
        """The default group's builder."""
        return self._planes[DEFAULT_GROUP].builder

    @property
    def containment(self) -> Containment:
        """The default group's rejections."""
        return self._planes[DEFAULT_GROUP].containment

    @property
    def published(self) -> Snapshot | None:
        """The snapshot last published to the default group."""
        return self._planes[DEFAULT_GROUP].published

    def planes(self) -> Mapping[str, GroupPlane]:
        """Every gateway group's plane, by group."""
        return MappingProxyType(self._planes)

    def snapshots(self) -> dict[str, Snapshot]:
        """The snapshot last published to each group that exists."""
        return {
            name: plane.published
            for name, plane in self._planes.items()
            if plane.published is not None and name in self.groups.groups
        }

    def _retire(self, name: str) -> None:
        self.server.retire(name)
        if name == DEFAULT_GROUP:
            self._planes[name] = self._new_plane(name)  # kept, empty, for when it comes back
        else:
            del self._planes[name]
        log.info("gateway group %s no longer exists: its streams were closed", name)

    # -- a build ---------------------------------------------------------------------------

    def apply(self, sites: SiteSet) -> Snapshot | None:
        """Build and publish snapshots for `sites` now; return the default group's snapshot
        (None if its build failed its check)."""
        regrouping = self.groups.update(sites.sites, sites.changed, sites.tenancy)
        for name in regrouping.retired:
            self._retire(name)
        todo: dict[str, frozenset[SiteKey] | None] = dict(regrouping.changed)
        for name, kept in self._planes.items():
            if kept.reconsider and name in self.groups.groups:
                todo.setdefault(name, frozenset())
            kept.reconsider = False
        failed = False
        builds: list[_Build] = []
        for name, changed in todo.items():
            plane = self._planes.get(name) or self._planes.setdefault(name, self._new_plane(name))
            started = time.perf_counter()
            built, changed = plane.containment.effective(self.groups.members(name), changed)
            try:
                result = plane.builder.build(built, changed)
            except InconsistentSnapshot as exc:  # a builder bug: keep serving the last good snapshot
                log.error(
                    "the new snapshot of gateway group %s failed its consistency check and was not published: %s",
                    name,
                    exc,
                )
                plane.builder.reset()  # start the next build afresh
                failed = failed or name == DEFAULT_GROUP
                continue
            took = time.perf_counter() - started
            self.observers.built(result, took)
            plane.last = result
            builds.append((plane, built, changed, result, took))
        self.sites = sites
        self._applied = True
        states_changed = set(regrouping.refusals_changed)
        rejections_changed: set[SiteKey] = set()
        for build in builds:
            states_changed |= build[3].changed
        for plane in self._planes.values():
            rejections_changed |= plane.containment.take_state_changes()
        touched = self.status.report(
            sites, _States(self), frozenset(states_changed), self._rejected(), frozenset(rejections_changed)
        )
        self.observers.status(sites, self.status.states(), touched)
        for plane, built, changed, result, took in builds:
            snapshot = result.snapshot
            new = self.server.publish(snapshot)
            if new:
                self.publishes += 1
                self._log_publish(result, took * 1000)
            if plane.containment.built(snapshot, built, changed, result.sites, result.changed, new=new):
                plane.reconsider = True
                self._reconsider()
            plane.published = snapshot
            self.observers.published(sites, snapshot)
        if regrouping.tenancy_changed:
            self.server.recheck()  # an Envoy's certificate may name another group now, or none
        return None if failed else self.published

    def _rejected(self) -> Mapping[SiteKey, SiteState]:
        rejected: dict[SiteKey, SiteState] = {}
        for plane in self._planes.values():
            rejected.update(plane.containment.states())
        return rejected

    def _plane_of(self, info: StreamInfo) -> GroupPlane | None:
        return self._planes.get(info.group or DEFAULT_GROUP)

    def _acked(self, info: StreamInfo, _type_url: str, _version: str) -> None:
        plane = self._plane_of(info)
        if plane is not None and plane.containment.acked(info.id, info.held_versions()):
            plane.reconsider = True
            self._reconsider()

    def _nacked(self, info: StreamInfo, nack: Nack) -> None:
        plane = self._plane_of(info)
        if plane is not None and plane.containment.nacked(
            info.node_id, nack.type_url, nack.snapshot_version, nack.message
        ):
            plane.reconsider = True
            self._reconsider()

    def _closed(self, info: StreamInfo) -> None:
        plane = self._plane_of(info)
        if plane is not None:
            plane.containment.stream_closed(info.id)

    def _reconsider(self) -> None:
        """Build the current sites again (what a containment holds back has changed)."""
        if not self._applied:
            return
        if self._pending is None:
            self.offer(dataclasses.replace(self.sites, changed=frozenset()))
        else:
            self._arrived.set()

    def _log_publish(self, result: BuildResult, took: float) -> None:
        snapshot = result.snapshot
        log.info(
            "published snapshot %s: gateway group %s, %d sites, %d clusters (built in %.1f ms; %d added, %d changed, %d removed)",
            snapshot.version,
            snapshot.group,
            result.served,
            len(snapshot.of_type(CLUSTER_TYPE)),
            took,
            len(result.added),
            len(result.updated),
            len(result.removed),
        )

    @property
    def ready(self) -> bool:
        """A complete snapshot has been published to every gateway group that exists."""
        return self._applied and all(
            (plane := self._planes.get(name)) is not None and plane.published is not None
            for name in self.groups.groups
        )

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
