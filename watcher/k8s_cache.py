"""What the cluster holds, as last seen: StaticSite objects, Services, the TLS Secrets sites name,
GatewayGroups and Namespaces.

The Kubernetes source fills it from kopf's events and its own listings; the status writer
reads it (a site's object and its backend Service). Both are handed the same cache, so
neither needs the other to read what the cluster holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from snapshot.model import SiteKey

ObjectKey = tuple[str, str]  # namespace ("" for a cluster-scoped object), name


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def object_key(body: Mapping[str, Any]) -> ObjectKey:
    meta = _meta(body)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def generation_of(body: Mapping[str, Any]) -> int:
    """An object's metadata.generation (0 when it has none)."""
    generation = _meta(body).get("generation")
    return generation if isinstance(generation, int) else 0


def _revision(body: Mapping[str, Any]) -> int | None:
    """The resourceVersion as a number, when it is one (it is, on every real API server)."""
    value = _meta(body).get("resourceVersion")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def uid_of(body: Mapping[str, Any]) -> str | None:
    value = _meta(body).get("uid")
    return str(value) if value else None


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
            if old is None or (uid_of(old.body) and uid_of(body) and uid_of(old.body) != uid_of(body)):
                return None  # gone already, or a deletion of an earlier incarnation
            del self.objects[key]
            self._tombstones[key] = (uid_of(body), now)
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
            self._tombstones[key] = (uid_of(entry.body), now)
            return key
        if self._deleted_since(key, body, started):
            return None  # deleted after the GET was answered
        return self.event(None, body, now)

    def _deleted_since(self, key: ObjectKey, body: Mapping[str, Any], started: float) -> bool:
        """Whether this incarnation of the object was deleted at `started` or later."""
        tomb = self._tombstones.get(key)
        return tomb is not None and tomb[1] >= started and (tomb[0] is None or tomb[0] == uid_of(body))

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


class ClusterCache:
    """The StaticSites and Services watched, the Secrets some site names (and no other), the
    GatewayGroups and the Namespaces (for their labels)."""

    def __init__(self) -> None:
        self.sites = ObjectCache()
        self.services = ObjectCache()
        self.secrets = ObjectCache()
        self.groups = ObjectCache()
        self.namespaces = ObjectCache()
        self.ready = asyncio.Event()  # the initial listings are complete

    def object(self, key: SiteKey) -> dict[str, Any] | None:
        """The StaticSite object as last seen."""
        return self.sites.get((key.namespace, key.name))

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get((namespace, name))

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret some site names, as last seen (None: not named, not found, or not read yet)."""
        return self.secrets.get((namespace, name))
