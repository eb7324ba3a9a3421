"""The kopf handlers that feed the Kubernetes source, and kopf's own thread and event loop.

kopf only watches: its handlers react to events and never patch users' objects, so kopf
leaves no annotations or finalizers behind (a control plane that reads specs has nothing to
clean up on delete). Each event is handed to the source's event loop, where everything else
runs.

kopf does not list what the source has just listed: each of its watches starts from the
resourceVersion of the source's own first listing of that kind (`ListedVersions`), as a
client-go informer starts its watch from its list. Without that, kopf would list every object
again and hand each one over as an event that changes nothing: at 10,000 sites, 20,000
objects and about 10 s of the process's time, the seconds in which the first statuses are
due. Only its first listing of each kind is replaced; after a watch gap (410 Gone), kopf lists
as it always does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

import kopf

from snapshot.model import GROUP, PLURAL, VERSION
from snapshot.tenancy import GATEWAY_GROUP_PLURAL

from .k8s_api import Kind, KubeApi
from .k8s_cache import ObjectKey, object_key
from .k8s_secrets import TLS_SECRET_SELECTOR
from .source_state import SourceState

log = logging.getLogger("staticsite_xds.kubernetes")


class _NoSignalsNote(logging.Filter):
    """kopf runs in a thread of its own on purpose: its note that signals are ours is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("OS signals are ignored")


class _RetryNotes(logging.Filter):
    """Notes of each retry of a request, kept out of the log while the source reports an outage.

    urllib3 notes each retry of a call of ours, whose failure we report ourselves; kopf notes
    each failed attempt of its watch. While a source's state says that the API cannot be
    read (a warning logged once), they only repeat it, several times a second.
    """

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always
        self.states: weakref.WeakSet[SourceState] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(("Retrying (", "Request attempt")):
            return True
        return not (self.always or any(state.up is False for state in self.states))


logging.getLogger("kopf._core.reactor.running").addFilter(_NoSignalsNote())
logging.getLogger("urllib3.connectionpool").addFilter(_RetryNotes(always=True))
_KOPF_RETRIES = _RetryNotes(always=False)
for _name in ("kopf._cogs.clients.watching", "kopf._cogs.clients.api"):
    logging.getLogger(_name).addFilter(_KOPF_RETRIES)


class WatchFeed(Protocol):
    """What the handlers hand events to, on the feed's event loop."""

    def site_event(self, event: Mapping[str, Any]) -> None: ...

    def service_event(self, event: Mapping[str, Any]) -> None: ...

    def secret_event(self, event: Mapping[str, Any]) -> None: ...

    def group_event(self, event: Mapping[str, Any]) -> None: ...

    def namespace_event(self, event: Mapping[str, Any]) -> None: ...

    def wants_secret(self, key: ObjectKey) -> bool:
        """Whether a Secret's events are wanted; asked in kopf's thread, so it must not lock."""
        ...


ListedKey = tuple[str, str, str | None]  # API group, plural, namespace (None: all, or cluster-scoped)


class ListedVersions:
    """The resourceVersion of each of the source's first listings, each taken once by kopf's
    watch of that kind, which then starts there instead of listing."""

    def __init__(self) -> None:
        self._versions: dict[ListedKey, str] = {}
        self._lock = threading.Lock()  # put on the source's loop, taken in kopf's thread

    def put(self, kind: Kind, namespace: str | None, version: str) -> None:
        if version:
            with self._lock:
                self._versions[kind.group, kind.plural, namespace] = version

    def take(self, group: str, plural: str, namespace: str | None) -> str | None:
        with self._lock:
            return self._versions.pop((group, plural, namespace), None)


_LISTED: contextvars.ContextVar[ListedVersions | None] = contextvars.ContextVar("listed", default=None)


def start_watches_where_listed() -> bool:
    """Make kopf's first listing of a kind, in a thread whose `_LISTED` holds its version,
    a listing of nothing at that version. Once per process; False (and kopf lists as it
    always did) if this kopf has no such function to wrap.

    kopf has no setting for it: its watch lists through `fetching.fetch_objs`, a module
    attribute looked up at each call, which is wrapped here.
    """
    try:
        from kopf._cogs.clients import fetching, watching
    except ImportError:
        return False
    listing = getattr(fetching, "fetch_objs", None)
    if getattr(watching, "fetching", None) is not fetching or listing is None:
        return False
    if getattr(listing, "starts_where_listed", False):
        return True

    async def fetch_objs(*, resource: Any, namespace: Any, **kwargs: Any) -> AsyncIterator[Any]:
        versions = _LISTED.get()
        version = versions.take(resource.group, resource.plural, namespace) if versions else None
        if version is not None:
            yield [], version  # no objects, and the version to watch from
            return
        async for chunk in listing(resource=resource, namespace=namespace, **kwargs):
            yield chunk

    fetch_objs.starts_where_listed = True  # type: ignore[attr-defined]
    fetching.fetch_objs = fetch_objs
    return True


HANDOFF_BATCH = 256  # events handled in one go on the source's loop


class Handoff:
    """Hands events from kopf's thread to the source's event loop, in the order they came.

    Waking the loop costs a write to its self-pipe, and from another thread that write waits
    for the interpreter lock: one wake-up per event made kopf's first listing of 20,000
    objects spend seconds in those writes. Events are queued instead, and the loop is woken
    once for everything queued until it looks.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: collections.deque[tuple[Callable[[Mapping[str, Any]], None], Mapping[str, Any]]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._woken = False  # a drain is scheduled and has not emptied the queue yet

    def put(self, handle: Callable[[Mapping[str, Any]], None], event: Mapping[str, Any]) -> None:
        """From kopf's thread: `handle(event)` is called on the loop, after those put before."""
        with self._lock:
            self._queue.append((handle, event))
            if self._woken:
                return
            self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the process is stopping
            with self._lock:
                self._woken = False
            raise

    def _drain(self) -> None:
        """Handle what is queued, a batch at a time: the loop runs its other work between."""
        with self._lock:
            if not self._queue:
                self._woken = False
                return
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), HANDOFF_BATCH))]
        for handle, event in batch:
            try:
                handle(event)
            except Exception:  # one bad event must not stop the others
                log.exception("a watch event could not be handled")
        self.loop.call_soon(self._drain)  # the rest, or the end of this wake-up


class KopfWatch:
    """kopf, watching StaticSites, Services and Secrets (all namespaces, or the ones given),
    GatewayGroups (cluster-scoped), and Namespaces when it watches them all (given
    namespaces are read one by one by the source instead)."""

    def __init__(
        self,
        api: KubeApi,
        namespaces: Sequence[str],
        settings: kopf.OperatorSettings,
        state: SourceState,
    ) -> None:
        self.api = api
        self.namespaces = tuple(namespaces)
        self.settings = settings
        self.stop = threading.Event()
        self.listed = ListedVersions()  # filled by the source's first listing
        _KOPF_RETRIES.states.add(state)  # kopf's notes of retries are kept out while it is down

    def registry(self, loop: asyncio.AbstractEventLoop, feed: WatchFeed) -> kopf.OperatorRegistry:
        """Handlers that only read: no patches, so kopf writes nothing to users' objects.

        They run in kopf's thread and hand each event to `loop`, where everything else runs.
        """
        registry = kopf.OperatorRegistry()
        api = self.api
        handoff = Handoff(loop)

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return await asyncio.to_thread(api.connection_info)

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
        async def site_event(event: Mapping[str, Any], **_: Any) -> None:
            handoff.put(feed.site_event, event)

        @kopf.on.event("v1", "services", registry=registry)
        async def service_event(event: Mapping[str, Any], **_: Any) -> None:
            handoff.put(feed.service_event, event)

        @kopf.on.event("v1", "secrets", registry=registry)
        async def secret_event(event: Mapping[str, Any], **_: Any) -> None:
            # Only TLS Secrets come (see `run`), and most are no site's: dropped here, in kopf's
            # thread, before they go further.
            body = event.get("object")
            if isinstance(body, Mapping) and feed.wants_secret(object_key(body)):
                handoff.put(feed.secret_event, event)

        @kopf.on.event(GROUP, VERSION, GATEWAY_GROUP_PLURAL, registry=registry)
        async def group_event(event: Mapping[str, Any], **_: Any) -> None:
            handoff.put(feed.group_event, event)

        if not self.namespaces:

            @kopf.on.event("v1", "namespaces", registry=registry)
            async def namespace_event(event: Mapping[str, Any], **_: Any) -> None:
                handoff.put(feed.namespace_event, event)

        return registry

    async def run(self, feed: WatchFeed, stop: asyncio.Event) -> None:
        """Run kopf in a thread with its own event loop until `self.stop` is set.

        kopf treats every task of its loop as its own: on exit it waits for them and cancels
        them. In a loop of its own, it cannot touch the xDS server's streams or our clean-up;
        and off the main thread it leaves the process's signal handling to us. When kopf
        stops by itself (on a signal), `stop` is set so that the whole process stops with it.
        """
        settings = self.settings
        settings.scanning.disabled = True  # needs no RBAC on CRDs, nor on namespaces to find them
        settings.posting.enabled = False  # our Events are written by the status writer only
        # The API server sends only TLS Secrets: the others never reach this process.
        settings.watching.field_selectors["v1", "secrets"] = TLS_SECRET_SELECTOR
        settings.process.ultimate_exiting_timeout = None
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        registry = self.registry(loop, feed)

        def settle(error: BaseException | None) -> None:
            if ended.done():
                return
            if error is None:
                ended.set_result(None)
            else:
                ended.set_exception(error)

        if not start_watches_where_listed():
            log.debug("this kopf lists every kind itself at start")

        def run() -> None:
            error: BaseException | None = None
            _LISTED.set(self.listed)  # every task of kopf's loop inherits it
            try:
                asyncio.run(
                    kopf.operator(
                        registry=registry,
                        settings=settings,
                        standalone=True,
                        clusterwide=not self.namespaces,
                        namespaces=self.namespaces,
                        stop_flag=self.stop,
                    )
                )
            except BaseException as exc:  # handed to the event loop that awaits it
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(settle, error)

        thread = threading.Thread(target=run, name="kopf", daemon=True)
        thread.start()
        try:
            await asyncio.shield(ended)
        finally:
            self.stop.set()
        if not stop.is_set():
            log.error("the Kubernetes watch stopped; stopping")
            stop.set()
