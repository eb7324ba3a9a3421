"""kmock's Kubernetes emulator made to behave as a real API server where the control plane
depends on it, for every emulator made after this module is imported (tests/conftest.py
imports it first):

- a listing is paged: items in the order of their keys (namespace, name), at most `limit` of
  them, and while more are left a `continue` token for the rest and `remainingItemCount`;
  a token expires after 5 minutes (410 Gone);
- a watch from a resourceVersion gets every change after it, or 410 Gone once that version
  is older than the history kept (kmock alone starts every watch by sending every object
  again);
- every write sets a new resourceVersion, and an update naming another than the object's is
  refused with 409 Conflict;
- a named object is found by its key, and a request is matched to its reaction from the
  request itself: the cost of a request does not grow with the objects and requests so far.
"""

from __future__ import annotations

import base64
import collections
import contextvars
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kmock import KubernetesError
from kmock._internal import aiobus, dsl, enums, k8s_dicts, rendering
from kmock._internal.k8s import KubernetesEmulator

_unpaged = KubernetesEmulator._serve_list


class Revisions:
    """The one counter of resourceVersions, as the API server's revision: every write takes
    the next (the tests' own stamps too).

    A create over HTTP takes its version before kmock stores it, and other requests may be
    answered in between. A listing's version is therefore the newest one below every version
    taken and not stored yet (`settled`): a watch from it misses no write, as a watch from a
    real listing's version does not.
    """

    def __init__(self, first: int) -> None:
        self._next = first
        self._taken: set[int] = set()

    def __iter__(self) -> Revisions:
        return self

    def __next__(self) -> int:
        version = self._next
        self._next += 1
        return version

    def take(self) -> int:
        """A version for a write that is stored later: `stored` says when."""
        version = next(self)
        self._taken.add(version)
        return version

    def stored(self, version: int) -> None:
        self._taken.discard(version)

    def settled(self) -> int:
        return min(self._taken) - 1 if self._taken else self._next - 1


REVISIONS = Revisions(1000)


def _order(body: dict[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def continue_expired(issued: float) -> bool:
    """Whether a continue token of a listing begun at `issued` (`time.monotonic()`) has
    expired, as the API server's do once etcd compacted the listing's revision away (5
    minutes by default). Tests replace it to expire one."""
    return time.monotonic() - issued > CONTINUE_LIFETIME


CONTINUE_LIFETIME = 300.0


def paged(request: Any, listing: dict[str, Any], version: int) -> dict[str, Any]:
    """The page of `listing` that `request` asks for with `limit` and `continue`, with
    `version` as its resourceVersion. A continue token that has expired is refused with
    410 Gone, as the API server does."""
    items = sorted(listing["items"], key=_order)
    token = request.params.get("continue")
    issued = time.monotonic()
    if token:
        namespace, name, issued = json.loads(base64.urlsafe_b64decode(token.encode()))
        if continue_expired(issued):
            raise KubernetesError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter.",
            )
        items = [body for body in items if _order(body) > (namespace, name)]
    limit = int(request.params.get("limit") or 0)
    metadata: dict[str, Any] = {"resourceVersion": str(version)}
    if limit and len(items) > limit:
        metadata["continue"] = base64.urlsafe_b64encode(
            json.dumps([*_order(items[limit - 1]), issued]).encode()
        ).decode()
        metadata["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return {**listing, "metadata": metadata, "items": items}


async def listing(
    emulator: Any, request: Any, keep: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """The page a listing asks for, of the objects `keep` accepts (all by default). Its
    version is the revision settled before the objects are read: what is stored after comes
    in a watch from it."""
    version = REVISIONS.settled()
    found: dict[str, Any] = await _unpaged(emulator, request)
    if keep is not None:
        found = {**found, "items": [body for body in found["items"] if keep(body)]}
    return paged(request, found, version)


KubernetesEmulator._serve_list = listing  # type: ignore[method-assign,assignment]


# kmock starts every watch by sending every object as ADDED, and then what comes. The API
# server does that only for a watch without a resourceVersion (or "0"): a watch from a version
# gets every change after it, from its history, or, once that version is older than the
# history it keeps, one ERROR event with 410 Gone. Here each resource's events are kept, the
# last HISTORY of them, each with its object's resourceVersion (a deletion takes a new one).
HISTORY = 10_000


@dataclass
class _History:
    events: collections.deque[tuple[int, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )
    floor: int = 0  # the version of the newest event no longer kept


_histories: dict[int, _History] = {}  # by id() of the bus (buses are not hashable), while it lives


def _history(bus: aiobus.Bus[Any]) -> _History:
    history = _histories.get(id(bus))
    if history is None:
        history = _histories[id(bus)] = _History()
        weakref.finalize(bus, _histories.pop, id(bus), None)
    return history


_bus_put = aiobus.Bus.put


def _version(item: Any) -> int | None:
    try:
        return int(item["object"]["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


async def _put(self: aiobus.Bus[Any], *items: Any) -> None:
    kept = []
    for item in items:
        if isinstance(item, dict) and item.get("type") in ("ADDED", "MODIFIED", "DELETED"):
            if item["type"] == "DELETED":
                meta = {**item["object"].get("metadata", {}), "resourceVersion": str(next(REVISIONS))}
                item = {**item, "object": {**item["object"], "metadata": meta}}
            version = _version(item)
            if version is not None:
                history = _history(self)
                if len(history.events) == HISTORY:
                    history.floor = history.events[0][0]
                history.events.append((version, item))
        kept.append(item)
    await _bus_put(self, *kept)


aiobus.Bus.put = _put  # type: ignore[method-assign]
_replaying_watch = KubernetesEmulator._serve_watch


async def _serve_watch(self: KubernetesEmulator, request: Any) -> Any:
    since = str(request.params.get("resourceVersion") or "0")
    if not since.isdigit() or since == "0":
        async for event in _replaying_watch(self, request):
            yield event
        return
    bus = self._buses[request.resource]
    yield b""  # the headers now: a watch streams even while nothing happens
    async with self._lock:  # events are put under this lock: none between the backlog and the mark
        history = _history(bus)
        if int(since) < history.floor:
            gone = f"too old resource version: {since} ({history.floor})"
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": gone, "reason": "Expired", "code": 410}  # fmt: skip
            backlog: list[Any] | None = None
        else:
            backlog = [item for version, item in history.events if version > int(since)]
            mark = await bus.mark()
    if backlog is None:
        yield {"type": "ERROR", "object": status}
        return
    check = self._KubernetesEmulator__check  # type: ignore[attr-defined]

    def selected(event: Any) -> bool:
        meta = event.get("object", {}).get("metadata", {})
        return bool(check(request, request.resource, meta.get("namespace"), meta.get("name"), strict=False))

    for event in backlog:
        if selected(event):
            yield event
    async for event in mark:
        if selected(event):
            yield event


KubernetesEmulator._serve_watch = _serve_watch  # type: ignore[method-assign]


# kmock finds the object of a request by scanning every object it holds: a write at 10,000
# sites would cost 10,000 comparisons. A request that names its object is looked up by its key
# first; a miss falls back to the scan, so what is found is what the scan would find.
_scan = KubernetesEmulator._KubernetesEmulator__get_objs  # type: ignore[attr-defined]


def _get_objs(self: KubernetesEmulator, request: Any, strict: bool) -> Any:
    if request.name is not None and request.resource is not None:
        found = self._objects._objects.get((request.resource, request.namespace, request.name))
        if found is not None:
            return [found]
    return _scan(self, request, strict)


KubernetesEmulator._KubernetesEmulator__get_objs = _get_objs  # type: ignore[attr-defined]


# kmock decides whether a reaction serves a request by asking `request in view`, and a view
# answers that by filtering the whole history of recorded requests: every request costs the
# number of requests so far, so a long run is quadratic. A view built only of criteria, groups
# and exclusions is answered here from the request itself; a view whose answer depends on the
# history (a slice, a reaction's own requests) is still asked the old way.
_Unknown = object()


def _holds(view: Any, request: Any) -> Any:
    """Whether `view` sees `request`, or `_Unknown` when only its history can tell."""
    if isinstance(view, dsl.Root):
        return any(seen is request for seen in reversed(view._requests))
    if isinstance(view, dsl.Filter) and type(view) is dsl.Filter:
        held = _holds(view._source, request)
        return held if held is not True else bool(view.criteria(request))
    if type(view) is dsl.Priority:
        return _holds(view._source, request)
    if type(view) is dsl.Exclusion:
        held = _holds(view._source, request)
        if held is not True:
            return held
        excluded = [_holds(other, request) for other in view._exclusions]
        return _Unknown if _Unknown in excluded else not any(excluded)
    if type(view) in (dsl.OrGroup, dsl.AndGroup):
        held = [_holds(source, request) for source in view._sources]
        if _Unknown in held:
            return _Unknown
        return any(held) if type(view) is dsl.OrGroup else all(held)
    return _Unknown


_contains = dsl.View.__contains__


def _view_contains(self: Any, item: Any) -> bool:
    if isinstance(item, rendering.Request):
        held = _holds(self, item)
        if held is not _Unknown:
            return bool(held)
    return _contains(self, item)


dsl.View.__contains__ = _view_contains  # type: ignore[method-assign]


# kmock keeps whatever resourceVersion a client sends, and never sets one. The API server
# sets a new one on every write, and refuses with 409 Conflict a write that names another
# than the object has: the optimistic lock of every controller (our Lease among them). Here
# each create without one gets one, each update of an object over HTTP gets the next, and an
# update naming another than the stored one is refused, checked and written under the
# emulator's lock.
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar("writing", default=False)
_kmock_handle = KubernetesEmulator._handle
_kmock_patch = k8s_dicts.Object.patch


async def _handle(self: KubernetesEmulator, request: Any) -> Any:
    if request.resource is None or (request.name is None and request.action != enums.action.CREATE):
        return await _kmock_handle(self, request)
    taken: int | None = None
    if request.action == enums.action.CREATE and isinstance(request.data, dict):
        meta = request.data.setdefault("metadata", {})
        if isinstance(meta, dict):  # the server's version, whatever the client sent
            taken = REVISIONS.take()
            meta["resourceVersion"] = str(taken)
    token = _writing.set(request.action == enums.action.UPDATE)
    try:
        return await _kmock_handle(self, request)
    finally:
        _writing.reset(token)
        if taken is not None:
            REVISIONS.stored(taken)


def _patch(self: Any, data: Any) -> Any:
    if not _writing.get() or not isinstance(data, dict):
        return _kmock_patch(self, data)
    named = (data.get("metadata") or {}).get("resourceVersion")
    held = (self.get("metadata") or {}).get("resourceVersion")
    if named not in (None, "") and held is not None and str(named) != str(held):
        name = (self.get("metadata") or {}).get("name")
        raise KubernetesError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
        )
    meta = {**(data.get("metadata") or {}), "resourceVersion": str(next(REVISIONS))}
    return _kmock_patch(self, {**data, "metadata": meta})


KubernetesEmulator._handle = _handle  # type: ignore[method-assign]
k8s_dicts.Object.patch = _patch  # type: ignore[method-assign]
