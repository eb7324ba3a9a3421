"""Status written back to StaticSite objects, and an Event on each transition.

The status says what the control plane last did with the site: a one-word `phase` and a
`Ready` condition in the Kubernetes convention (status, reason, message,
lastTransitionTime, observedGeneration), and `firstSeen`, when a control plane first saw the
site, which orders sites created in the same second across restarts. It is compared with what the object already shows
(counting our own writes that the watch has not brought back yet) and written only when they
differ, so a status write (which comes back as an event) never loops, and a replica that
takes over leadership writes only what its predecessor left different. Only the leader
writes; `is_leader` is asked before every write. Changes are coalesced (a site changed
many times while its write waits is written once, as it is then), and every write takes a
token of the `RateLimiter` (`--status-qps`, `--status-burst`): status patches first, Events
after.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import prometheus_client

from snapshot.model import API_VERSION, KIND, Backend, SiteKey
from snapshot.verdict import BACKEND_REASONS, BackendSeen, Phase, SiteState, with_backend

from .k8s import SITES
from .k8s_api import ApiError, KubeApi
from .k8s_cache import ClusterCache
from .rate_limit import RateLimiter
from .siteset import SiteSet

log = logging.getLogger("staticsite_xds.kubernetes.status")

COMPONENT = "staticsite-xds"
CONDITION = "Ready"
MAX_MESSAGE = 1024  # characters of a message kept in status and Events
RETRY_DELAY = 2.0  # seconds before a failed write is tried again
# Seconds a site new to us (or naming another backend) is given for its Service to be seen
# before it is said to be missing: a Service applied with the site comes over another watch,
# and nothing orders the two, so a site can arrive first.
BACKEND_GRACE = 2.0

STATUS_WRITES = prometheus_client.Counter(
    "staticsite_xds_status_writes_total",
    "Writes of this replica to the Kubernetes API about StaticSites: status patches and Events",
    ["kind"],
)
STATUS_PENDING = prometheus_client.Gauge(
    "staticsite_xds_status_pending",
    "StaticSites whose status this replica, while it leads, has still to compare with its verdict "
    "or to write (0 once every status says what the control plane did)",
)
LEADER = prometheus_client.Gauge(
    "staticsite_xds_leader",
    "1 while this replica holds the leader Lease (it writes status), 0 while it does not",
)
for _kind in ("status", "event"):
    STATUS_WRITES.labels(_kind)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one site's status should say."""

    phase: str
    ready: bool
    reason: str
    message: str
    generation: int | None


def backend_seen(service: Mapping[str, Any] | None) -> BackendSeen:
    """What a Service tells of a backend: whether it exists, and its ports. An ExternalName
    Service resolves to another name: any port may be right."""
    if service is None:
        return BackendSeen(False)
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return BackendSeen(True)
    return BackendSeen(True, tuple(p.get("port") for p in spec.get("ports") or [] if isinstance(p, Mapping)))


@dataclass(slots=True)
class _Unseen:
    """The statuses written to one object whose watch events have not come back yet."""

    uid: Any  # the object's metadata.uid: a new object of the same name starts afresh
    before: Mapping[str, Any]  # the status it showed before them
    written: list[dict[str, Any]]  # in the order written


class StatusWriter:
    """Keeps each StaticSite's status equal to the control plane's verdict on it."""

    def __init__(
        self,
        api: KubeApi,
        cache: ClusterCache,  # what the Kubernetes source last saw of the cluster
        *,
        is_leader: Callable[[], bool] = lambda: True,
        identity: str = COMPONENT,
        concurrency: int = 8,
        backend_grace: float = BACKEND_GRACE,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.api = api
        self.cache = cache
        self.is_leader = is_leader
        self.identity = identity
        self.concurrency = concurrency
        self.backend_grace = backend_grace
        # Every status patch and Event takes a token; patches first (see `watcher.rate_limit`).
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._events: collections.deque[tuple[SiteKey, Mapping[str, Any], Verdict]] = collections.deque()
        self._events_queued = asyncio.Event()
        self.writes = 0  # status patches made
        self.events = 0  # Events created
        self._sites = SiteSet()
        self._states: Mapping[SiteKey, SiteState] = {}
        self._dirty: set[SiteKey] = set()
        self._unseen: dict[SiteKey, _Unseen] = {}  # see `_as_written`
        self._backend_since: dict[SiteKey, tuple[Backend, float]] = {}  # see `_held_back`
        self._wake = asyncio.Event()
        self._in_flight = 0  # sites taken from `_dirty` whose comparison or write is not done
        self._reported = False  # whether the control plane's verdicts have come once
        STATUS_PENDING.set_function(lambda: self.pending)  # read at each scrape

    @property
    def pending(self) -> int:
        """Sites still to be compared or written (0 while another replica leads). Before the
        first verdicts come, every StaticSite the cache holds is still to be compared."""
        if not self.is_leader():
            return 0
        left = len(self._dirty) + self._in_flight
        return left if self._reported else max(left, len(self.cache.sites.objects))

    # -- what tells it to look -------------------------------------------------------------

    def report(
        self, sites: SiteSet, states: Mapping[SiteKey, SiteState], touched: frozenset[SiteKey] | None
    ) -> None:
        """A status listener: the control plane's latest verdicts (see `StatusLog`)."""
        self._sites = sites
        self._states = states
        self._reported = True
        self.mark(touched if touched is not None else set(states) | set(sites.invalid))

    def mark(self, keys: Iterable[SiteKey]) -> None:
        self._dirty.update(keys)
        self._wake.set()

    def mark_all(self) -> None:
        self.mark(set(self._states) | set(self._sites.invalid))

    def leadership(self, leader: bool) -> None:
        """A leader-election callback: a new leader checks every site."""
        if leader:
            self._unseen.clear()  # what we wrote before may have been overwritten since
            self.mark_all()
        LEADER.set(1 if leader else 0)  # once marked: a leader showing 0 pending has judged all

    # -- the verdict -----------------------------------------------------------------------

    def verdict(self, key: SiteKey) -> Verdict | None:
        state = self._states.get(key)
        if state is None:
            return None
        generation = self._sites.generation(key)
        site = self._sites.sites.get(key)
        if site is not None:
            backend = site.backend
            service = self.cache.service(backend.namespace, backend.service_name)
            state = with_backend(state, site.domain, backend, backend_seen(service))
        return Verdict(
            state.phase.value,
            state.phase is Phase.PROVISIONED,
            state.reason,
            state.message[:MAX_MESSAGE],
            generation,
        )

    # -- writing ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write what changed until `stop`; the Events go out beside, after the status patches."""
        events = asyncio.create_task(self._write_events(stop), name="status events")
        try:
            await self._write_statuses(stop)
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events

    async def _write_events(self, stop: asyncio.Event) -> None:
        """The Events of the transitions written, in order, each when the rate allows and no
        status patch waits. One queued while leading is dropped if leadership is lost (the
        next leader records the transitions it makes)."""
        while not stop.is_set():
            await self._events_queued.wait()
            self._events_queued.clear()
            while self._events:
                await self.limiter.acquire(urgent=False)
                key, body, verdict = self._events.popleft()
                if self.is_leader():
                    await self._event(key, body, verdict)

    async def _write_statuses(self, stop: asyncio.Event) -> None:
        await self.cache.ready.wait()
        while not stop.is_set():
            woke = asyncio.create_task(self._wake.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({woke, stopped}, return_when=asyncio.FIRST_COMPLETED)
            woke.cancel()
            stopped.cancel()
            if stop.is_set():
                return
            self._wake.clear()
            keys, self._dirty = self._dirty, set()
            if not self.is_leader():
                continue  # a new leader checks every site anyway
            failed = await self.sync(sorted(keys))
            if failed:
                self._in_flight += len(failed)  # still pending while they wait to be tried again
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=RETRY_DELAY)
                finally:
                    self._in_flight -= len(failed)
                self.mark(failed)

    async def sync(self, keys: Iterable[SiteKey]) -> set[SiteKey]:
        """Write the status of these sites where it differs; the keys whose write failed."""
        failed: set[SiteKey] = set()
        gate = asyncio.Semaphore(self.concurrency)
        chosen = list(keys)
        self._in_flight += len(chosen)

        async def one(key: SiteKey) -> None:
            try:
                async with gate:
                    if not self.is_leader():
                        return
                    try:
                        await self._sync_one(key)
                    except ApiError as exc:
                        if exc.status != 404:  # 404: the object is gone
                            log.warning("cannot write the status of StaticSite %s: %s", key, exc)
                            failed.add(key)
            finally:
                self._in_flight -= 1

        await asyncio.gather(*(one(key) for key in chosen))
        return failed

    async def _sync_one(self, key: SiteKey) -> None:
        body = self.cache.object(key)
        verdict = self.verdict(key)
        if body is None or verdict is None:
            self._unseen.pop(key, None)
            self._backend_since.pop(key, None)
            return
        if self._held_back(key, verdict):
            return
        seen = body.get("status") if isinstance(body.get("status"), Mapping) else {}
        assert isinstance(seen, Mapping)
        uid = (body.get("metadata") or {}).get("uid")
        current = self._as_written(key, uid, seen)
        old = _ready_condition(current)
        served = self._sites.sites.get(key)
        first_seen = served.first_seen if served is not None else None  # kept for its age
        if _shows(current, old, verdict) and (first_seen is None or current.get("firstSeen") == first_seen):
            return
        status_word = "True" if verdict.ready else "False"
        since = old.get("lastTransitionTime") if old and old.get("status") == status_word else None
        condition: dict[str, Any] = {
            "type": CONDITION,
            "status": status_word,
            "reason": verdict.reason,
            "message": verdict.message,
            "lastTransitionTime": since or _stamp(),
        }
        others = [
            c
            for c in current.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") != CONDITION
        ]
        status: dict[str, Any] = {"phase": verdict.phase, "conditions": [*others, condition]}
        if first_seen is not None:
            status["firstSeen"] = first_seen
        if verdict.generation:
            condition["observedGeneration"] = verdict.generation
            status["observedGeneration"] = verdict.generation
        await self.limiter.acquire()
        await self.api.patch_status(SITES, key.namespace, key.name, status)
        self.writes += 1
        STATUS_WRITES.labels("status").inc()
        self._unseen.setdefault(key, _Unseen(uid, seen, [])).written.append(status)
        told = (current.get("phase"), old.get("reason") if old else None, old.get("message") if old else None)
        if told != (verdict.phase, verdict.reason, verdict.message):
            self._events.append((key, body, verdict))  # written by `run`, after the patches
            self._events_queued.set()

    def _held_back(self, key: SiteKey, verdict: Verdict) -> bool:
        """Whether a missing backend is not said yet: the site (or its backend) is new to us
        and the Service may still be on its way. The site is looked at again after the grace."""
        site = self._sites.sites.get(key)
        if site is None:
            return False
        now = time.monotonic()
        backend, since = self._backend_since.get(key, (None, now))
        if backend != site.backend:
            since = now
            self._backend_since[key] = (site.backend, now)
        wait = since + self.backend_grace - now
        if verdict.reason not in BACKEND_REASONS or wait <= 0:
            return False
        asyncio.get_running_loop().call_later(wait, self.mark, (key,))
        return True

    def _as_written(self, key: SiteKey, uid: Any, seen: Mapping[str, Any]) -> Mapping[str, Any]:
        """The status the object has, counting our writes that the watch has not brought back.

        A write comes back as a watch event a little after it succeeded. Compared with the
        older status the object showed before, a verdict that another event brings meanwhile
        (a Service appearing) would be written again, and its Event posted twice, when that
        echo arrives.
        """
        unseen = self._unseen.get(key)
        if unseen is None:
            return seen
        last = unseen.written[-1]
        if unseen.uid != uid or _carries(seen, last):  # another object, or the watch caught up
            del self._unseen[key]
            return seen
        if seen == unseen.before or any(_carries(seen, w) for w in unseen.written):
            return last  # what the watch shows is older than our last write
        del self._unseen[key]  # someone else wrote since: compare with theirs
        return seen

    async def _event(self, key: SiteKey, body: Mapping[str, Any], verdict: Verdict) -> None:
        meta = body.get("metadata") or {}
        stamp = _stamp()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(key.name, time.time_ns()), "namespace": key.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "namespace": key.namespace,
                "name": key.name,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": "Normal" if verdict.ready else "Warning",
            "reason": verdict.reason,
            "message": verdict.message,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.identity,
        }
        try:
            await self.api.create_event(key.namespace, event)
            self.events += 1
            STATUS_WRITES.labels("event").inc()
        except ApiError as exc:  # an Event is history, not state: never retried
            log.warning("cannot record an Event for StaticSite %s: %s", key, exc)


def event_name(site_name: str, now_ns: int) -> str:
    """A new Event's name: the site's, cut to leave room for a time stamp, and the stamp.

    Event names are DNS subdomains: a cut that ends in '-' or '.' ("docs-.18f0") is refused.
    """
    return f"{site_name[:200].rstrip('-.')}.{now_ns:x}"


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == CONDITION:
            return condition
    return {}


def _carries(status: Mapping[str, Any], written: Mapping[str, Any]) -> bool:
    """Whether a status is what this write made it (a merge patch keeps keys it did not name)."""
    return all(status.get(field) == value for field, value in written.items())


def _shows(status: Mapping[str, Any], condition: Mapping[str, Any], verdict: Verdict) -> bool:
    """Whether the object's status already says what the verdict says."""
    if not condition:
        return False
    return (
        status.get("phase") == verdict.phase
        and condition.get("status") == ("True" if verdict.ready else "False")
        and condition.get("reason") == verdict.reason
        and condition.get("message") == verdict.message
        and (verdict.generation is None or condition.get("observedGeneration") == verdict.generation)
        and (verdict.generation is None or status.get("observedGeneration") == verdict.generation)
    )


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
