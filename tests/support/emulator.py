"""kmock's Kubernetes emulator made to behave as a real API server where the control plane
depends on it, for every emulator made after this module is imported (tests/conftest.py
imports it first):

- a listing is paged: items in the order of their keys (namespace, name), at most `limit` of
  them, and while more are left a `continue` token for the rest and `remainingItemCount`;
  a token expires after 5 minutes (410 Gone);
- a watch from the resourceVersion of a listing gets only what changed since (kmock alone
  starts every watch by sending every object again);
- every write sets a new resourceVersion, and an update naming another than the object's is
  refused with 409 Conflict;
- a named object is found by its key, and a request is matched to its reaction from the
  request itself: the cost of a request does not grow with the objects and requests so far.
"""

from __future__ import annotations

import base64
import contextvars
import itertools
import json
import time
from typing import Any

from kmock import KubernetesError
from kmock._internal import dsl, enums, k8s_dicts, rendering
from kmock._internal.k8s import KubernetesEmulator

_unpaged = KubernetesEmulator._serve_list
_revisions = itertools.count(10_000_000)
# A listing's resourceVersion: this plus the number of watch events of its resource so far.
_LISTED = 1_000_000_000


def _order(body: dict[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def continue_expired(issued: float) -> bool:
    """Whether a continue token of a listing begun at `issued` (`time.monotonic()`) has
    expired, as the API server's do once etcd compacted the listing's revision away (5
    minutes by default). Tests replace it to expire one."""
    return time.monotonic() - issued > CONTINUE_LIFETIME


CONTINUE_LIFETIME = 300.0


def paged(request: Any, listing: dict[str, Any], events: int | None = None) -> dict[str, Any]:
    """The page of `listing` that `request` asks for with `limit` and `continue`; its
    resourceVersion says how many watch `events` its resource had made, when given. A
    continue token that has expired is refused with 410 Gone, as the API server does."""
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
    version = _LISTED + events if events is not None else next(_revisions)
    metadata: dict[str, Any] = {"resourceVersion": str(version)}
    if limit and len(items) > limit:
        metadata["continue"] = base64.urlsafe_b64encode(
            json.dumps([*_order(items[limit - 1]), issued]).encode()
        ).decode()
        metadata["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    return {**listing, "metadata": metadata, "items": items}


async def unpaged_list(emulator: Any, request: Any) -> dict[str, Any]:
    """Every object the listing selects, in one answer (kmock's own listing)."""
    listing: dict[str, Any] = await _unpaged(emulator, request)
    return listing


async def _paged_list(self: KubernetesEmulator, request: Any) -> Any:
    events = self._buses[request.resource].streamed_count
    return paged(request, await unpaged_list(self, request), events)


KubernetesEmulator._serve_list = _paged_list  # type: ignore[method-assign]


# kmock starts every watch by sending every object as ADDED. The API server does that only for
# a watch without a resourceVersion: a watch from the version of a listing gets what changed
# since. Here a watch from a listing's version, when its resource has had no event since that
# listing, gets only what comes next; any other watch is kmock's (everything, then what comes).
_replaying_watch = KubernetesEmulator._serve_watch


async def _serve_watch(self: KubernetesEmulator, request: Any) -> Any:
    since = request.params.get("resourceVersion")
    bus = self._buses[request.resource]
    mark = None
    yield b""  # the headers now: a watch streams even while nothing happens
    async with self._lock:  # events are put under this lock: none between the check and the mark
        if since is not None and since == str(_LISTED + bus.streamed_count):
            mark = await bus.mark()
    if mark is None:
        replay = _replaying_watch(self, request)
        await replay.__anext__()  # its own headers, sent above
        async for event in replay:
            yield event
        return
    check = self._KubernetesEmulator__check  # type: ignore[attr-defined]
    async for event in mark:
        meta = event.get("object", {}).get("metadata", {})
        if check(request, request.resource, meta.get("namespace"), meta.get("name"), strict=False):
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
# emulator's lock. `REVISIONS` is the one counter: the tests' own stamps take from it too.
REVISIONS = itertools.count(1000)
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar("writing", default=False)
_kmock_handle = KubernetesEmulator._handle
_kmock_patch = k8s_dicts.Object.patch


async def _handle(self: KubernetesEmulator, request: Any) -> Any:
    if request.resource is None or (request.name is None and request.action != enums.action.CREATE):
        return await _kmock_handle(self, request)
    if request.action == enums.action.CREATE and isinstance(request.data, dict):
        meta = request.data.setdefault("metadata", {})
        if isinstance(meta, dict) and not meta.get("resourceVersion"):
            meta["resourceVersion"] = str(next(REVISIONS))
    token = _writing.set(request.action == enums.action.UPDATE)
    try:
        return await _kmock_handle(self, request)
    finally:
        _writing.reset(token)


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
