"""The Kubernetes source: StaticSite objects (and the Services they name), watched with kopf.

It yields the same `SiteSet`s as the folder source, so the builder and the server never know
where sites came from. The rules it keeps:

- Nothing is yielded until the initial listing of every StaticSite is complete: our own
  LIST, made before kopf starts, is the first set. An Envoy never sees a half-empty config.
- kopf only watches: its handlers react to events and never patch users' objects, so kopf
  leaves no annotations or finalizers behind (a control plane that reads specs has nothing
  to clean up on delete).
- A watch stream that drops and resumes may miss a deletion (kopf relists, but an object
  deleted in the gap is simply absent from the new list). Our own LIST heals that: it runs
  shortly after kopf relists and periodically, and removes what the API no longer has,
  without losing or duplicating anything that arrived meanwhile.
- An object whose spec is invalid keeps serving its last good version; its problems are
  reported. Objects are parsed by the one model parser, `snapshot.model.parse_site`.
- While the API cannot be read, the last good sites are served. It is checked every few
  seconds; the outage and its end are logged once each and shown in a metric
  (`watcher.source_state`), and a listing on its return heals what the watch missed.
- A site's `spec.tls.secretName` names a `kubernetes.io/tls` Secret of its namespace; its
  certificate is attached to the site, under the SDS name `secret/<namespace>/<name>`, and a
  renewal of the Secret yields a new set. Only the Secrets some site names are held: events
  and listings of the others are dropped as they arrive. A Secret a site comes to name is read
  with a GET, and the site is judged once the answer is in (never "not found" meanwhile).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from snapshot.certificates import BadCertificate, load_certificate, secret_certificate_name, with_certificate
from snapshot.model import (
    GROUP,
    PLURAL,
    VERSION,
    Certificate,
    InvalidSite,
    Problem,
    SiteKey,
    StaticSite,
    describe,
    parse_site,
)
from snapshot.verdict import INVALID_SECRET, SECRET_NOT_FOUND

from .k8s_api import SECRETS, SERVICES, ApiError, Kind, KubeApi
from .siteset import DEFAULT_MAX_SITES, SiteLimit, SiteSet
from .source_state import SourceState

log = logging.getLogger("staticsite_xds.kubernetes")

SITES = Kind(GROUP, VERSION, PLURAL)

DEFAULT_RESYNC = 300.0  # seconds between our own full listings
RELIST_SETTLE = 1.0  # after kopf relists, wait this long for its listing to end, then check it
_RETRY = (1.0, 2.0, 5.0, 10.0)  # seconds between listings while the API cannot be read
CHECK_PERIOD = 3.0  # seconds between our checks that the API can be read, between listings

ObjectKey = tuple[str, str]  # namespace, name

TLS_SECRET_TYPE = "kubernetes.io/tls"
SECRET_FIELD = "spec.tls.secretName"


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
Listener = Callable[[set[SiteKey]], None]


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def object_key(body: Mapping[str, Any]) -> ObjectKey:
    meta = _meta(body)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _revision(body: Mapping[str, Any]) -> int | None:
    """The resourceVersion as a number, when it is one (it is, on every real API server)."""
    value = _meta(body).get("resourceVersion")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _uid(body: Mapping[str, Any]) -> str | None:
    value = _meta(body).get("uid")
    return str(value) if value else None


certificate_name = secret_certificate_name  # the SDS name of a TLS Secret's certificate


def secret_ref(body: Mapping[str, Any]) -> ObjectKey | None:
    """The Secret a StaticSite object names in `spec.tls.secretName`, read as it is, unparsed."""
    spec = body.get("spec")
    tls = spec.get("tls") if isinstance(spec, Mapping) else None
    name = tls.get("secretName") if isinstance(tls, Mapping) else None
    namespace = object_key(body)[0]
    return (namespace, name) if isinstance(name, str) and name and namespace else None


def load_secret(key: ObjectKey, body: Mapping[str, Any]) -> Certificate | Problem:
    """The certificate a TLS Secret holds, or the problem (without origin) that keeps it unserved."""
    namespace, name = key

    def invalid(why: str) -> Problem:
        return Problem("", SECRET_FIELD, f"Secret {namespace}/{name} cannot be used: {why}", INVALID_SECRET)

    kind = body.get("type")
    if kind != TLS_SECRET_TYPE:
        return invalid(f"its type is {describe(kind)}, not {TLS_SECRET_TYPE}")
    data = body.get("data")
    data = data if isinstance(data, Mapping) else {}
    plain = body.get("stringData")  # only the API server's input, but a stored object may carry it
    plain = plain if isinstance(plain, Mapping) else {}
    pem: dict[str, bytes] = {}
    for field in ("tls.crt", "tls.key"):
        value = data.get(field)
        if value is None and isinstance(plain.get(field), str):
            pem[field] = plain[field].encode()
        elif value is None:
            return invalid(f"it has no {field}")
        else:
            try:
                if not isinstance(value, str):
                    raise ValueError(value)
                pem[field] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return invalid(f"its {field} is not base64")
    try:
        return load_certificate(certificate_name(namespace, name), pem["tls.crt"], pem["tls.key"])
    except BadCertificate as exc:
        return invalid(str(exc))


@dataclass(slots=True)
class _Entry:
    body: dict[str, Any]
    seen: float  # when the event or listing that brought this version arrived (monotonic)


class ObjectCache:
    """The objects of one kind as last seen: from kopf's events and from our own listings.

    Events may arrive late and out of order across objects (kopf handles each object in its
    own task), so an older version never replaces a newer one, and a deletion only removes
    the incarnation (uid) it is about.
    """

    def __init__(self) -> None:
        self.objects: dict[ObjectKey, _Entry] = {}
        self._tombstones: dict[ObjectKey, tuple[str | None, float]] = {}

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        entry = self.objects.get(key)
        return entry.body if entry is not None else None

    def event(self, kind: str | None, body: dict[str, Any], now: float) -> ObjectKey | None:
        """Apply one event (kind None: an object of a listing); the key if something changed."""
        key = object_key(body)
        old = self.objects.get(key)
        if kind == "DELETED":
            if old is None or (_uid(old.body) and _uid(body) and _uid(old.body) != _uid(body)):
                return None  # gone already, or a deletion of an earlier incarnation
            del self.objects[key]
            self._tombstones[key] = (_uid(body), now)
            return key
        if old is not None:
            if _older(body, old.body):
                return None
            if old.body == body:
                old.seen = now
                return None
        self._tombstones.pop(key, None)
        self.objects[key] = _Entry(body, now)
        return key

    def fetched(
        self, key: ObjectKey, body: dict[str, Any] | None, started: float, now: float
    ) -> ObjectKey | None:
        """Apply the answer to a GET of one object requested at `started` (None: not found).

        What an event brought or removed after `started` is newer than the answer and stays.
        """
        if body is None:
            entry = self.objects.get(key)
            if entry is None or entry.seen >= started:
                return None
            del self.objects[key]
            self._tombstones[key] = (_uid(entry.body), now)
            return key
        if self._deleted_since(key, body, started):
            return None  # deleted after the GET was answered
        return self.event(None, body, now)

    def _deleted_since(self, key: ObjectKey, body: Mapping[str, Any], started: float) -> bool:
        """Whether this incarnation of the object was deleted at `started` or later."""
        tomb = self._tombstones.get(key)
        return tomb is not None and tomb[1] >= started and (tomb[0] is None or tomb[0] == _uid(body))

    def bury(self, key: ObjectKey, uid: str | None, now: float) -> None:
        """Remember that an object not held was deleted: a GET or listing older than this is stale."""
        if key not in self.objects:
            self._tombstones[key] = (uid, now)

    def forget(self, key: ObjectKey) -> None:
        """Hold nothing more of one object."""
        self.objects.pop(key, None)
        self._tombstones.pop(key, None)

    def reconcile(self, items: Iterable[dict[str, Any]], started: float, now: float) -> set[ObjectKey]:
        """Make the cache agree with a complete listing that was requested at `started`.

        What arrived by event after `started` is newer than the listing and is kept; an
        object the listing lacks and that was last seen before it is gone.
        """
        changed: set[ObjectKey] = set()
        listed: set[ObjectKey] = set()
        for body in items:
            key = object_key(body)
            listed.add(key)
            if self._deleted_since(key, body, started):
                continue  # deleted after the listing was taken
            if self.event(None, body, now) is not None:
                changed.add(key)
        for key in [k for k, entry in self.objects.items() if k not in listed and entry.seen < started]:
            del self.objects[key]
            changed.add(key)
        self._tombstones = {k: t for k, t in self._tombstones.items() if t[1] >= started}
        return changed


def _older(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    a, b = _revision(new), _revision(old)
    return a is not None and b is not None and a < b


class KubernetesSource:
    """Watches StaticSites and Services (all namespaces, or the ones given) and yields site sets.

    It also watches the TLS Secrets the sites name, and holds those only.
    """

    def __init__(
        self,
        api: KubeApi,
        namespaces: Sequence[str] = (),
        *,
        resync: float = DEFAULT_RESYNC,
        settings: kopf.OperatorSettings | None = None,
        check_period: float = CHECK_PERIOD,
        max_sites: int = DEFAULT_MAX_SITES,
    ) -> None:
        self.api = api
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.resync = resync
        self.check_period = check_period
        self.state = SourceState("kubernetes", f"the Kubernetes API server {api.server}", log)
        _KOPF_RETRIES.states.add(self.state)
        self.settings = settings or kopf.OperatorSettings()
        self.sites = ObjectCache()
        self.services = ObjectCache()
        self.secrets = ObjectCache()  # the Secrets some site names, and no other
        self.ready = asyncio.Event()  # the initial listings are complete
        self.on_objects: list[Listener] = []  # StaticSite objects changed (their status too)
        self.on_services: list[Listener] = []  # the backend Service of these sites changed
        self.listings = 0  # our own complete listings so far
        self._sites: dict[SiteKey, StaticSite] = {}  # every valid site (its last good version)
        self.limit = SiteLimit(max_sites)  # the sites served, of `_sites`
        self._invalid: dict[SiteKey, tuple[Problem, ...]] = {}
        self._invalid_generations: dict[SiteKey, int] = {}
        self._by_backend: dict[ObjectKey, set[SiteKey]] = {}
        self._secret_users: dict[ObjectKey, set[SiteKey]] = {}  # a Secret -> the sites naming it
        # A site -> the Secrets it names: its current version's and, while that version is not
        # served, the one of the version still served (whose renewals must still reach Envoy).
        self._site_secrets: dict[SiteKey, frozenset[ObjectKey]] = {}
        self._absent: set[ObjectKey] = set()  # Secrets named, and known not to exist
        self._loaded: dict[ObjectKey, tuple[dict[str, Any], Certificate | Problem]] = {}
        self._fetches: dict[ObjectKey, asyncio.Task[None]] = {}  # GETs of Secrets in flight
        self._secret_problems: dict[SiteKey, str] = {}  # the Secret problem last logged per site
        self._changed: set[SiteKey] = set()
        self._dirty = asyncio.Event()
        self._relisted = asyncio.Event()
        self._kopf_stop = threading.Event()

    # -- what others read ------------------------------------------------------------------

    def object(self, key: SiteKey) -> dict[str, Any] | None:
        """The StaticSite object as last seen."""
        return self.sites.get((key.namespace, key.name))

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get((namespace, name))

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret some site names, as last seen (None: not named, not found, or not read yet)."""
        return self.secrets.get((namespace, name))

    def secret_users(self, namespace: str, name: str) -> frozenset[SiteKey]:
        """The sites whose current declaration names this Secret."""
        return frozenset(self._secret_users.get((namespace, name), ()))

    def current(self, changed: frozenset[SiteKey] | None = None) -> SiteSet:
        problems = tuple(p for key in sorted(self._invalid) for p in self._invalid[key])
        return self.limit.site_set(problems, self._invalid, changed, self._invalid_generations)

    # -- the watch -------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> AsyncIterator[SiteSet]:
        """The complete set once the initial listing is done, then a new set after changes.

        kopf installs its own SIGINT/SIGTERM handlers; when it stops on a signal, `stop` is
        set so that the whole process stops with it.
        """
        if not await self._initial_listing(stop):
            return
        operator = asyncio.create_task(self._operator(stop), name="kopf operator")
        resync = asyncio.create_task(self._resync_loop(stop), name="resync")
        stopped = asyncio.create_task(stop.wait())
        try:
            yield self.current(None)
            self.ready.set()
            while True:
                dirty = asyncio.create_task(self._dirty.wait())
                done, _ = await asyncio.wait({dirty, stopped, operator}, return_when=asyncio.FIRST_COMPLETED)
                dirty.cancel()
                if stopped in done:
                    return
                if operator in done:
                    operator.result()  # raise what ended it
                    return
                self._dirty.clear()
                changed, self._changed = self._changed, set()
                if changed:
                    yield self.current(frozenset(changed))
        finally:
            self._kopf_stop.set()
            resync.cancel()
            stopped.cancel()
            for fetch in list(self._fetches.values()):
                fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(operator, timeout=10)

    async def _initial_listing(self, stop: asyncio.Event) -> bool:
        attempt = 0
        while not stop.is_set():
            try:
                await self.relist()
                log.info(
                    "initial listing complete: %d StaticSites, %d Services, %d Secrets they name (%s)",
                    len(self.sites.objects),
                    len(self.services.objects),
                    len(self.secrets.objects),
                    ", ".join(self.namespaces) if self.namespaces else "all namespaces",
                )
                return True
            except ApiError as exc:
                delay = _RETRY[min(attempt, len(_RETRY) - 1)]
                log.error("cannot list StaticSites yet, retrying in %gs: %s", delay, _explain(exc))
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        return False

    async def relist(self) -> None:
        """List every StaticSite, Service and Secret ourselves and make the caches agree.

        Of the Secrets, only those a site names are kept: the ones the sites of this listing
        name, and the ones named when the listing of Secrets began. For those, the listing is
        the truth; a Secret named since then is read by its own GET.
        """
        started = time.monotonic()
        try:
            sites = await self._list(SITES)
            services = await self._list(SERVICES)
            named = {ref for body in sites if (ref := secret_ref(body)) is not None}
            named.update(self._secret_users)
            users = self._secret_users

            def wanted(body: dict[str, Any]) -> bool:
                key = object_key(body)
                return key in named or key in users

            # With no Secret named, there is nothing to keep of a listing of them all: none is made.
            secrets = await self._list(SECRETS, keep=wanted) if named else []
        except ApiError as exc:
            self.state.report(_explain(exc))
            raise
        self.state.report(None)
        now = time.monotonic()
        site_keys = self.sites.reconcile(sites, started, now)
        secret_keys = self.secrets.reconcile(secrets, started, now)
        for key in named | secret_keys:  # what the listing says of each: there, or not
            if key in self._fetches:
                continue  # a GET asked later than the listing began: its answer is newer
            if self.secrets.get(key) is not None:
                self._absent.discard(key)
            elif key not in self._absent:
                self._absent.add(key)
                secret_keys.add(key)
        self._sites_changed(site_keys)
        self._prune_secrets()
        self._secrets_changed(secret_keys)
        self._services_changed(self.services.reconcile(services, started, now))
        self.listings += 1

    async def _list(
        self, kind: Kind, keep: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        if not self.namespaces:
            return await self.api.list_objects(kind, keep=keep)
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            items.extend(await self.api.list_objects(kind, namespace, keep=keep))
        return items

    async def check(self) -> None:
        """Read one StaticSite (a page of one), to learn whether the API can be read."""
        try:
            namespace = self.namespaces[0] if self.namespaces else None
            await self.api.call("GET", SITES.path(namespace), query={"limit": 1})
        except ApiError as exc:
            self.state.report(_explain(exc))
            raise
        self.state.report(None)

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        """Our own listings: shortly after kopf relists, and every `resync` seconds.

        In between, the API is checked every `check_period` seconds; once it cannot be read,
        it is listed on the retry schedule until it can. The source's state reports the
        outage and its end, once each; kopf resumes its watch by itself.
        """
        loop = asyncio.get_running_loop()
        due = loop.time() + self.resync
        failures = 0
        while not stop.is_set():
            if failures:
                wait = _RETRY[min(failures - 1, len(_RETRY) - 1)]
            else:
                wait = max(0.0, min(self.check_period, due - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relisted.wait(), timeout=wait)
            if self._relisted.is_set():
                await asyncio.sleep(RELIST_SETTLE)  # let kopf's listing arrive first
                self._relisted.clear()
            elif not failures and loop.time() < due:
                try:
                    await self.check()
                except ApiError:
                    failures = 1
                continue
            try:
                await self.relist()
            except ApiError:
                failures += 1
                continue
            failures = 0
            due = loop.time() + self.resync

    # -- kopf ------------------------------------------------------------------------------

    def registry(self, loop: asyncio.AbstractEventLoop) -> kopf.OperatorRegistry:
        """Handlers that only read: no patches, so kopf writes nothing to users' objects.

        They run in kopf's thread and hand each event to `loop`, where everything else runs.
        """
        registry = kopf.OperatorRegistry()
        api = self.api

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return await asyncio.to_thread(api.connection_info)

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
        async def site_event(event: Mapping[str, Any], **_: Any) -> None:
            loop.call_soon_threadsafe(self._event, self.sites, event, self._sites_changed)

        @kopf.on.event("v1", "services", registry=registry)
        async def service_event(event: Mapping[str, Any], **_: Any) -> None:
            loop.call_soon_threadsafe(self._event, self.services, event, self._services_changed)

        @kopf.on.event("v1", "secrets", registry=registry)
        async def secret_event(event: Mapping[str, Any], **_: Any) -> None:
            # Most Secrets are no site's: dropped here, in kopf's thread, before they go further.
            # (A lookup in a dict of tuples of strings is atomic: no lock is needed to read it.)
            body = event.get("object")
            if isinstance(body, Mapping) and object_key(body) in self._secret_users:
                loop.call_soon_threadsafe(self._secret_event, event)

        return registry

    def _event(
        self, cache: ObjectCache, event: Mapping[str, Any], then: Callable[[set[ObjectKey]], None]
    ) -> None:
        body = event.get("object")
        if not isinstance(body, dict):
            return
        kind = event.get("type")
        if kind is None and self.ready.is_set():
            self._relisted.set()  # kopf is relisting after a watch gap: check with a listing of ours
        key = cache.event(kind, body, time.monotonic())
        if key is not None:
            then({key})

    def _secret_event(self, event: Mapping[str, Any]) -> None:
        """One event of a Secret: kept if a site names it, and those sites judged again."""
        body = event.get("object")
        if not isinstance(body, dict):
            return
        key = object_key(body)
        if key not in self._secret_users:
            return  # no site names it (any more)
        kind = event.get("type")
        if kind is None and self.ready.is_set():
            self._relisted.set()
        now = time.monotonic()
        was = self._secret_known(key)
        changed = self.secrets.event(kind, body, now)
        if self.secrets.get(key) is not None:
            self._absent.discard(key)
        elif kind == "DELETED":
            self.secrets.bury(key, _uid(body), now)  # a GET in flight may answer with it still
            self._absent.add(key)
        if changed is not None or self._secret_known(key) != was:
            self._secrets_changed({key})

    async def _operator(self, stop: asyncio.Event) -> None:
        """Run kopf in a thread with its own event loop until `_kopf_stop` is set.

        kopf treats every task of its loop as its own: on exit it waits for them and cancels
        them. In a loop of its own, it cannot touch the xDS server's streams or our clean-up;
        and off the main thread it leaves the process's signal handling to us.
        """
        settings = self.settings
        settings.scanning.disabled = True  # needs no RBAC on CRDs and namespaces
        settings.posting.enabled = False  # our Events are written by the status writer only
        settings.process.ultimate_exiting_timeout = None
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        registry = self.registry(loop)

        def settle(error: BaseException | None) -> None:
            if ended.done():
                return
            if error is None:
                ended.set_result(None)
            else:
                ended.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                asyncio.run(
                    kopf.operator(
                        registry=registry,
                        settings=settings,
                        standalone=True,
                        clusterwide=not self.namespaces,
                        namespaces=self.namespaces,
                        stop_flag=self._kopf_stop,
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
            self._kopf_stop.set()
        if not stop.is_set():
            log.error("the Kubernetes watch stopped; stopping")
            stop.set()

    # -- turning objects into sites --------------------------------------------------------

    def _sites_changed(self, keys: set[ObjectKey]) -> None:
        changed: set[SiteKey] = set()
        for namespace, name in keys:
            key = SiteKey(namespace, name)
            if self._parse(key, self.sites.get((namespace, name))):
                changed.add(key)
        moved = self.limit.settle()  # sites admitted from the waiting ones, now, not at `current()`
        changed |= moved
        if changed:
            self._changed |= changed
            self._dirty.set()
        touched = {SiteKey(ns, name) for ns, name in keys} | moved
        for listener in self.on_objects:
            listener(touched)

    def _parse(self, key: SiteKey, body: dict[str, Any] | None) -> bool:
        """Update the site of one object; True if the site set changed."""
        if body is None:
            self._refer(key)
            self._invalid_generations.pop(key, None)
            gone = self._sites.pop(key, None)
            self.limit.offer(key, None)
            self._unindex(gone)
            was_invalid = self._invalid.pop(key, None) is not None  # its problems go with it
            return gone is not None or was_invalid
        last_good = self._secret_of(self._sites.get(key))
        try:
            parsed = parse_site(body, origin=f"StaticSite {key}")
        except InvalidSite as exc:
            self._refer(key, last_good)
            return self._invalidate(key, body, tuple(exc.problems)) | self._renew(key)
        self._refer(key, self._secret_of(parsed), last_good)
        try:
            served = self._with_certificate(parsed)
        except InvalidSite as exc:
            return self._invalidate(key, body, tuple(exc.problems)) | self._renew(key)
        if served is None:  # its Secret is being read: the site stays as it was until the answer
            return self._renew(key)
        self._refer(key, self._secret_of(served))
        site = served
        self._invalid_generations.pop(key, None)
        was_invalid = self._invalid.pop(key, None) is not None
        old = self._sites.get(key)
        if old == site:
            return was_invalid
        self._unindex(old)
        self._sites[key] = site
        self.limit.offer(key, site)
        backend = (site.backend.namespace, site.backend.service_name)
        self._by_backend.setdefault(backend, set()).add(key)
        return True

    def _invalidate(self, key: SiteKey, body: Mapping[str, Any], problems: tuple[Problem, ...]) -> bool:
        """Record the problems of an object's current version; True if they changed."""
        generation = _meta(body).get("generation")
        generation = generation if isinstance(generation, int) else 0
        if self._invalid.get(key) == problems and self._invalid_generations.get(key) == generation:
            return False
        self._invalid[key] = problems
        self._invalid_generations[key] = generation
        return True

    def _with_certificate(self, site: StaticSite) -> StaticSite | None:
        """The site with the certificate of the Secret it names; None while that is being read.

        Raises `InvalidSite` when the Secret is missing or unusable, or when the site names
        certificate files (only a folder of sites reads files).
        """
        tls = site.tls
        ref = self._secret_of(site)
        if tls is None or ref is None:
            self._secret_problems.pop(site.key, None)
            if tls is not None:
                message = "only a folder of sites reads certificate files; name a Secret with secretName"
                raise InvalidSite([Problem(site.origin, "spec.tls.certificateFile", message)], site.key)
            return site
        loaded = self._certificate(ref)
        if loaded is None:
            self._request_secret(ref)
            return None
        if isinstance(loaded, Certificate):
            if self._secret_problems.pop(site.key, None) is not None:
                log.info(
                    "site %s: Secret %s/%s can be used again (its certificate expires %s)",
                    site.key,
                    *ref,
                    loaded.not_after,
                )
            return with_certificate(site, loaded)
        if self._secret_problems.get(site.key) != loaded.message:
            self._secret_problems[site.key] = loaded.message
            log.warning("site %s: %s", site.key, loaded.message)
        problem = Problem(site.origin, loaded.field, loaded.message, loaded.reason)
        raise InvalidSite([problem], site.key)

    def _certificate(self, ref: ObjectKey) -> Certificate | Problem | None:
        """What a named Secret gives: its certificate, a problem, or None if not read yet."""
        body = self.secrets.get(ref)
        if body is None:
            if ref in self._absent:
                message = (
                    f"Secret {ref[0]}/{ref[1]} not found (a {TLS_SECRET_TYPE} Secret in the site's namespace)"
                )
                return Problem("", SECRET_FIELD, message, SECRET_NOT_FOUND)
            return None
        cached = self._loaded.get(ref)
        if cached is not None and cached[0] is body:
            return cached[1]
        loaded = load_secret(ref, body)  # once per version of a Secret, however many sites name it
        self._loaded[ref] = (body, loaded)
        return loaded

    def _secret_known(self, key: ObjectKey) -> bool | None:
        """Whether a Secret exists: True (held), False (known missing), None (not read yet)."""
        if self.secrets.get(key) is not None:
            return True
        return False if key in self._absent else None

    @staticmethod
    def _secret_of(site: StaticSite | None) -> ObjectKey | None:
        """The Secret a version of a site names, if any."""
        if site is None or site.tls is None or site.tls.secret_name is None:
            return None
        return (site.key.namespace, site.tls.secret_name)

    def _refer(self, site: SiteKey, *refs: ObjectKey | None) -> None:
        """Record the Secrets a site names (None: none); a Secret no site names is dropped."""
        new = frozenset(ref for ref in refs if ref is not None)
        old = self._site_secrets.get(site, frozenset())
        if old == new:
            return
        for gone in old - new:
            if _unlink(self._secret_users, gone, site):
                self._drop_secret(gone)
        for ref in new - old:
            self._secret_users.setdefault(ref, set()).add(site)
        if new:
            self._site_secrets[site] = new
        else:
            self._site_secrets.pop(site, None)
            self._secret_problems.pop(site, None)

    def _renew(self, key: SiteKey) -> bool:
        """Give the version of a site still served its Secret's renewed certificate, while a
        newer version cannot be served; True if it changed. A Secret gone or broken meanwhile
        leaves it the certificate it has."""
        served = self._sites.get(key)
        ref = self._secret_of(served)
        if served is None or ref is None:
            return False
        loaded = self._certificate(ref)
        if loaded is None:
            self._request_secret(ref)
            return False
        if not isinstance(loaded, Certificate) or loaded == served.certificate:
            return False
        renewed = with_certificate(served, loaded)
        self._sites[key] = renewed
        self.limit.offer(key, renewed)
        log.info(
            "site %s: its last good version is served with the renewed certificate of Secret %s/%s",
            key,
            *ref,
        )
        return True

    def _drop_secret(self, key: ObjectKey) -> None:
        self.secrets.forget(key)
        self._absent.discard(key)
        self._loaded.pop(key, None)

    def _prune_secrets(self) -> None:
        """Drop every Secret no site names (after a listing that judged many sites at once)."""
        users = self._secret_users
        for key in [k for k in self.secrets.objects if k not in users]:
            self._drop_secret(key)
        self._absent.intersection_update(users)
        for key in [k for k in self._loaded if k not in users]:
            del self._loaded[key]

    def _request_secret(self, key: ObjectKey) -> None:
        """Read a Secret a site names and that is not held, unless a GET of it is in flight."""
        if key in self._fetches:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a source fed by hand, with no loop: the next listing reads it
        self._fetches[key] = loop.create_task(self._fetch_secret(key), name=f"GET Secret {key[0]}/{key[1]}")

    async def _fetch_secret(self, key: ObjectKey) -> None:
        """GET one Secret (a 404: it does not exist), then judge the sites that name it again."""
        namespace, name = key
        failures = 0
        try:
            while key in self._secret_users and self._secret_known(key) is None:
                started = time.monotonic()
                try:
                    body = await self.api.get(SECRETS, namespace, name)
                except ApiError as exc:
                    delay = _RETRY[min(failures, len(_RETRY) - 1)]
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "cannot read Secret %s/%s, retrying in %gs: %s",
                        namespace,
                        name,
                        delay,
                        _explain(exc),
                    )
                    await asyncio.sleep(delay)
                    continue
                if key not in self._secret_users:
                    return  # no site names it any more
                self.secrets.fetched(key, body, started, time.monotonic())
                if self.secrets.get(key) is None:
                    self._absent.add(key)
                else:
                    self._absent.discard(key)
                self._secrets_changed({key})
                return
        finally:
            if self._fetches.get(key) is asyncio.current_task():
                del self._fetches[key]

    def _secrets_changed(self, keys: set[ObjectKey]) -> None:
        """Judge again every site that names one of these Secrets."""
        affected = _users(self._secret_users, keys)
        if affected:
            self._sites_changed({(site.namespace, site.name) for site in affected})

    def _unindex(self, site: StaticSite | None) -> None:
        if site is None:
            return
        _unlink(self._by_backend, (site.backend.namespace, site.backend.service_name), site.key)

    def _services_changed(self, keys: set[ObjectKey]) -> None:
        affected = _users(self._by_backend, keys)
        if affected:
            for listener in self.on_services:
                listener(affected)


def _users(index: Mapping[ObjectKey, set[SiteKey]], keys: Iterable[ObjectKey]) -> set[SiteKey]:
    """The sites an index (a Secret's users, a Service's sites) lists under any of these keys."""
    return set().union(*(index.get(key, ()) for key in keys))


def _unlink(index: dict[ObjectKey, set[SiteKey]], key: ObjectKey, site: SiteKey) -> bool:
    """Take a site off an index's key; True if no site is left under the key (it is removed)."""
    users = index.get(key)
    if users is None:
        return False
    users.discard(site)
    if users:
        return False
    del index[key]
    return True


def _explain(exc: ApiError) -> str:
    if exc.status == 404:
        return f"{exc} (is the StaticSite CRD installed? kubectl apply -f crds/staticsite.yaml)"
    if exc.status in (401, 403):
        return f"{exc} (check the service account's RBAC: see deploy/rbac.yaml)"
    return str(exc)
