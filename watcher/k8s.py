"""The Kubernetes source: StaticSite objects (and the Services they name), watched with kopf.

It yields the same `SiteSet`s as the folder source, so the builder and the server never know
where sites came from. The rules it keeps:

- Nothing is yielded until the initial listing of every StaticSite is complete: our own
  LIST, made before kopf starts, is the first set. An Envoy never sees a half-empty config.
- kopf only watches (see `watcher.k8s_kopf`): it leaves nothing behind on users' objects.
- A watch stream that drops and resumes may miss a deletion (kopf relists, but an object
  deleted in the gap is simply absent from the new list, and an empty list makes no event
  at all). Our own LIST heals that: it runs shortly after kopf relists, when the API's count
  of StaticSites (checked every few seconds) differs from ours, and periodically, and
  removes what the API no longer has,
  without losing or duplicating anything that arrived meanwhile (see `watcher.k8s_cache`).
- An object whose spec is invalid keeps serving its last good version; its problems are
  reported (see `watcher.k8s_sites`).
- The tenancy (`watcher.k8s_tenancy`): GatewayGroups (cluster-scoped) and the Namespaces'
  labels are listed with the sites (nothing is yielded before), watched, and healed by the
  same listings. Each set carries the `Tenancy` they make, always enforced: the same object
  while neither changed, and a new set at once when one does. With `--namespace`, the
  namespaces given are read one by one (a GET each, at every listing and check) instead of
  being watched cluster-wide.
- While the API cannot be read, the last good sites are served. It is checked every few
  seconds; the outage and its end are logged once each and shown in a metric
  (`watcher.source_state`), and a listing on its return heals what the watch missed.
- A site's `spec.tls.secretName` names a `kubernetes.io/tls` Secret of its namespace; only
  Secrets of that type are listed and watched (a field selector: the API server sends no
  other), only the Secrets some site names are held, and a renewal yields a new set (see
  `watcher.k8s_secrets`).

The parts: a `ClusterCache` of what the cluster holds (given, so that the status writer reads
the same one), the `FollowedSecrets`, the `SiteIndex`, and the `KopfWatch` that feeds them.
Whoever must know that objects changed is a `SourceObserver` given at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import kopf

from snapshot.model import GROUP, PLURAL, VERSION, SiteKey
from snapshot.tenancy import GATEWAY_GROUP_PLURAL, Tenancy
from snapshot.verdict import INVALID_SECRET, SECRET_NOT_FOUND

from .k8s_api import NAMESPACES, SECRETS, SERVICES, ApiError, Kind, KubeApi, Listing
from .k8s_cache import ClusterCache, ObjectCache, ObjectKey, object_key
from .k8s_kopf import KopfWatch
from .k8s_secrets import (
    SECRET_FIELD,
    TLS_SECRET_SELECTOR,
    TLS_SECRET_TYPE,
    FollowedSecrets,
    certificate_name,
    load_secret,
    secret_ref,
)
from .k8s_sites import SiteIndex
from .k8s_tenancy import TenancyIndex
from .siteset import DEFAULT_MAX_SITES, SiteSet
from .source_state import SourceState

__all__ = [
    "DEFAULT_RESYNC",
    "GATEWAY_GROUPS",
    "INVALID_SECRET",
    "SECRET_FIELD",
    "SECRET_NOT_FOUND",
    "SITES",
    "TLS_SECRET_TYPE",
    "KubernetesSource",
    "ObjectCache",
    "SourceObserver",
    "SourceObserverFuncs",
    "certificate_name",
    "load_secret",
    "object_key",
    "secret_ref",
]

log = logging.getLogger("staticsite_xds.kubernetes")

SITES = Kind(GROUP, VERSION, PLURAL)
GATEWAY_GROUPS = Kind(GROUP, VERSION, GATEWAY_GROUP_PLURAL)

DEFAULT_RESYNC = 300.0  # seconds between our own full listings
RELIST_SETTLE = 1.0  # after kopf relists, wait this long for its listing to end, then check it
_RETRY = (1.0, 2.0, 5.0, 10.0)  # seconds between listings while the API cannot be read
CHECK_PERIOD = 3.0  # seconds between our checks that the API can be read, between listings


class SourceObserver(Protocol):
    """Told by the Kubernetes source what changed in the cluster, besides the site sets it yields."""

    def objects_changed(self, sites: set[SiteKey]) -> None:
        """These StaticSite objects changed (their status too), or their sites did."""
        ...

    def backends_changed(self, sites: set[SiteKey]) -> None:
        """The backend Service of these sites changed."""
        ...


SiteKeysCallback = Callable[[set[SiteKey]], None]


@dataclass(frozen=True, slots=True)
class SourceObserverFuncs:
    """A `SourceObserver` made of optional functions; a missing one is not told."""

    objects: SiteKeysCallback | None = None
    backends: SiteKeysCallback | None = None

    def objects_changed(self, sites: set[SiteKey]) -> None:
        if self.objects is not None:
            self.objects(sites)

    def backends_changed(self, sites: set[SiteKey]) -> None:
        if self.backends is not None:
            self.backends(sites)


class KubernetesSource:
    """Watches StaticSites and Services (all namespaces, or the ones given) and yields site sets.

    It also watches the TLS Secrets the sites name, and holds those only; and the
    GatewayGroups and Namespaces that make the tenancy of every set.
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
        cache: ClusterCache | None = None,
        observer: SourceObserver | None = None,
    ) -> None:
        self.api = api
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.resync = resync
        self.check_period = check_period
        self.state = SourceState("kubernetes", f"the Kubernetes API server {api.server}", log)
        self.cache = cache if cache is not None else ClusterCache()
        self.observer: SourceObserver = observer if observer is not None else SourceObserverFuncs()
        self.followed = FollowedSecrets(api, self.cache.secrets, self._judge, _explain)
        self.index = SiteIndex(self.followed, max_sites)
        self.tenancy = TenancyIndex()
        self.kopf = KopfWatch(api, self.namespaces, settings or kopf.OperatorSettings(), self.state)
        self.listings = 0  # our own complete listings so far
        self._changed: set[SiteKey] = set()
        self._dirty = asyncio.Event()
        self._relisted = asyncio.Event()

    # -- what others read: `cache` (what the cluster holds), and the current site set -----

    def secret_users(self, namespace: str, name: str) -> frozenset[SiteKey]:
        """The sites whose current declaration names this Secret."""
        return self.followed.users((namespace, name))

    def current(self, changed: frozenset[SiteKey] | None = None) -> SiteSet:
        return self.index.current(changed, self.tenancy.current())

    # -- the watch -------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> AsyncIterator[SiteSet]:
        """The complete set once the initial listing is done, then a new set after changes.

        kopf installs its own SIGINT/SIGTERM handlers; when it stops on a signal, `stop` is
        set so that the whole process stops with it.
        """
        if not await self._initial_listing(stop):
            return
        operator = asyncio.create_task(self.kopf.run(self, stop), name="kopf operator")
        resync = asyncio.create_task(self._resync_loop(stop), name="resync")
        stopped = asyncio.create_task(stop.wait())
        try:
            first = self.current(None)
            told: Tenancy = first.tenancy
            yield first
            self.cache.ready.set()
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
                if changed or self.tenancy.changed:
                    sites = self.current(frozenset(changed))
                    if changed or sites.tenancy is not told:
                        told = sites.tenancy
                        yield sites
        finally:
            self.kopf.stop.set()
            resync.cancel()
            stopped.cancel()
            self.followed.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(operator, timeout=10)

    async def _initial_listing(self, stop: asyncio.Event) -> bool:
        attempt = 0
        while not stop.is_set():
            try:
                # The sites of the first listing that no earlier control plane saw (no
                # status.firstSeen) are of one age; any site seen after is younger.
                with self.index.first_seen.together():
                    await self.relist()
                log.info(
                    "initial listing complete: %d StaticSites, %d Services, %d Secrets they name, "
                    "%d GatewayGroups, %d Namespaces (%s)",
                    len(self.cache.sites.objects),
                    len(self.cache.services.objects),
                    len(self.cache.secrets.objects),
                    len(self.cache.groups.objects),
                    len(self.cache.namespaces.objects),
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

        GatewayGroups are listed cluster-wide; Namespaces too, or, with namespaces given,
        each of them read by a GET.
        """
        started = time.monotonic()
        listing = GATEWAY_GROUPS  # what a 404 is about
        versions: dict[tuple[Kind, str | None], str] = {}
        try:
            groups = await self.api.list_objects(GATEWAY_GROUPS)
            versions[GATEWAY_GROUPS, None] = groups.version
            listing = SITES
            namespaces = await self._namespaces()
            versions[NAMESPACES, None] = namespaces.version
            sites = await self._list(SITES, versions)
            services = await self._list(SERVICES, versions)
            named = {ref for body in sites if (ref := secret_ref(body)) is not None}
            named.update(self.followed.all_named())
            followed = self.followed

            def wanted(body: dict[str, Any]) -> bool:
                key = object_key(body)
                return key in named or followed.named(key)

            # With no Secret named, there is nothing to keep of a listing of them: none is made.
            secrets = (
                await self._list(SECRETS, versions, keep=wanted, field_selector=TLS_SECRET_SELECTOR)
                if named
                else []
            )
            secrets += await followed.unlisted(named, map(object_key, secrets))
        except ApiError as exc:
            self.state.report(_explain(exc, listing))
            raise
        self.state.report(None)
        now = time.monotonic()
        self._groups_changed(self.cache.groups.reconcile(groups, started, now))
        self._namespaces_changed(self.cache.namespaces.reconcile(namespaces, started, now))
        site_keys = self.cache.sites.reconcile(sites, started, now)
        secret_keys = self.followed.listed(named, secrets, started, now)
        self._sites_changed(site_keys)
        self.followed.prune()
        self.followed.changed(secret_keys)
        self._services_changed(self.cache.services.reconcile(services, started, now))
        if not self.listings:  # kopf, about to start, watches from here (see `watcher.k8s_kopf`)
            for (kind, namespace), version in versions.items():
                self.kopf.listed.put(kind, namespace, version)
        self.listings += 1

    async def _list(
        self,
        kind: Kind,
        versions: dict[tuple[Kind, str | None], str],
        keep: Callable[[dict[str, Any]], bool] | None = None,
        field_selector: str = "",
    ) -> list[dict[str, Any]]:
        """Every object of a kind in the namespaces served; the version of each listing made
        is put in `versions`."""
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces or [None]:
            found = await self.api.list_objects(kind, namespace, keep=keep, field_selector=field_selector)
            versions[kind, namespace] = found.version
            items.extend(found)
        return items

    async def _namespaces(self) -> Listing:
        """Every Namespace; or, with namespaces given, each of those that exists (a GET each,
        so the listing has no version)."""
        if not self.namespaces:
            return await self.api.list_objects(NAMESPACES)
        found = [await self.api.get(NAMESPACES, "", name) for name in self.namespaces]
        return Listing(body for body in found if body is not None)

    async def check(self) -> bool:
        """Read a page of one StaticSite (one per namespace, with namespaces given), to learn
        whether the API can be read and how many StaticSites it holds; True when that is not
        the number the cache holds. With namespaces given, which are not watched, their
        labels are read too (a GET each).

        The count is what shows a watch gap that no event follows: kopf relists after a
        `410 Gone`, but a site deleted in the gap is simply absent from its listing, and a
        listing with nothing left in it makes no event at all.
        """
        try:
            started = time.monotonic()
            total: int | None = 0
            for namespace in self.namespaces or [None]:
                page = await self.api.call("GET", SITES.path(namespace), query={"limit": 1})
                count = _count(page)
                total = None if total is None or count is None else total + count
            namespaces = await self._namespaces() if self.namespaces else None
        except ApiError as exc:
            self.state.report(_explain(exc))
            raise
        self.state.report(None)
        if namespaces is not None:
            self._namespaces_changed(self.cache.namespaces.reconcile(namespaces, started, time.monotonic()))
        return total is not None and total != len(self.cache.sites.objects)

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        """Our own listings: shortly after kopf relists, and every `resync` seconds.

        In between, the API is checked every `check_period` seconds: when it holds another
        number of StaticSites than the cache (twice, `RELIST_SETTLE` apart), they are listed
        at once. Once it cannot be read,
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
                    differs = await self.check()
                    if differs:  # once more after a moment: an event may have been on its way
                        await asyncio.sleep(RELIST_SETTLE)
                        differs = await self.check()
                except ApiError:
                    failures = 1
                    continue
                if not differs:
                    continue
                log.info("the API holds another number of StaticSites than the watch showed: listing them")
            try:
                await self.relist()
            except ApiError:
                failures += 1
                continue
            failures = 0
            due = loop.time() + self.resync

    # -- what kopf hands over (a `WatchFeed`) ----------------------------------------------

    def site_event(self, event: Mapping[str, Any]) -> None:
        self._event(self.cache.sites, event, self._sites_changed)

    def service_event(self, event: Mapping[str, Any]) -> None:
        self._event(self.cache.services, event, self._services_changed)

    def group_event(self, event: Mapping[str, Any]) -> None:
        self._event(self.cache.groups, event, self._groups_changed)

    def namespace_event(self, event: Mapping[str, Any]) -> None:
        self._event(self.cache.namespaces, event, self._namespaces_changed)

    def wants_secret(self, key: ObjectKey) -> bool:
        return self.followed.named(key)

    def _event(
        self, cache: ObjectCache, event: Mapping[str, Any], then: Callable[[set[ObjectKey]], None]
    ) -> None:
        body = event.get("object")
        if not isinstance(body, dict):
            return
        kind = event.get("type")
        if kind is None and self.cache.ready.is_set():
            self._relisted.set()  # kopf is relisting after a watch gap: check with a listing of ours
        key = cache.event(kind, body, time.monotonic())
        if key is not None:
            then({key})

    def secret_event(self, event: Mapping[str, Any]) -> None:
        """One event of a Secret: kept if a site names it, and those sites judged again."""
        body = event.get("object")
        if not isinstance(body, dict) or not self.followed.named(object_key(body)):
            return  # no site names it (any more)
        kind = event.get("type")
        if kind is None and self.cache.ready.is_set():
            self._relisted.set()
        self.followed.event(kind, body)

    # -- turning objects into sites --------------------------------------------------------

    def _judge(self, sites: set[SiteKey]) -> None:
        """Judge these sites again (their Secrets may give something else now)."""
        self._sites_changed({(site.namespace, site.name) for site in sites})

    def _sites_changed(self, keys: set[ObjectKey]) -> None:
        changed: set[SiteKey] = set()
        for namespace, name in keys:
            key = SiteKey(namespace, name)
            if self.index.update(key, self.cache.sites.get((namespace, name))):
                changed.add(key)
        moved = self.index.limit.settle()  # sites admitted from the waiting ones, now, not at `current()`
        changed |= moved
        if changed:
            self._changed |= changed
            self._dirty.set()
        self.observer.objects_changed({SiteKey(ns, name) for ns, name in keys} | moved)

    def _groups_changed(self, keys: set[ObjectKey]) -> None:
        self._tenancy_changed(keys, self.cache.groups, self.tenancy.group)

    def _namespaces_changed(self, keys: set[ObjectKey]) -> None:
        self._tenancy_changed(keys, self.cache.namespaces, self.tenancy.namespace)

    def _tenancy_changed(
        self,
        keys: set[ObjectKey],
        cache: ObjectCache,
        update: Callable[[str, Mapping[str, Any] | None], bool],
    ) -> None:
        """Hand these cluster-scoped objects, as the cache now holds them, to the tenancy; a set
        is yielded if the tenancy changed."""
        changed = [update(name, cache.get(("", name))) for _, name in keys]  # each one, not any
        if any(changed):
            self._dirty.set()

    def _services_changed(self, keys: set[ObjectKey]) -> None:
        affected = self.index.backend_users(keys)
        if affected:
            self.observer.backends_changed(affected)


def _count(page: Mapping[str, Any]) -> int | None:
    """How many objects a listing asked for a page of holds in all, if the page says."""
    meta = page.get("metadata") or {}
    items = len(page.get("items") or [])
    if meta.get("remainingItemCount") is not None:
        return items + int(meta["remainingItemCount"])
    return None if meta.get("continue") else items


def _explain(exc: ApiError, kind: Kind = SITES) -> str:
    if exc.status == 404 and kind == GATEWAY_GROUPS:
        return f"{exc} (is the GatewayGroup CRD installed? kubectl apply -f crds/gatewaygroup.yaml)"
    if exc.status == 404:
        return f"{exc} (is the StaticSite CRD installed? kubectl apply -f crds/staticsite.yaml)"
    if exc.status in (401, 403):
        return f"{exc} (check the service account's RBAC: see deploy/rbac.yaml)"
    return str(exc)
