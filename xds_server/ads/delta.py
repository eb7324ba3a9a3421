"""Incremental ADS (DeltaAggregatedResources): the rules for one stream.

- Responses carry only resources that changed (each with its own version) and the names
  of resources removed.
- The client's first request for a type says what it already has (`initial_resource_versions`):
  only what differs is sent, and what it has that no longer exists is removed.
- Subscriptions and unsubscriptions apply whatever the nonce; subscribing to a name the
  client already has means "send it again"; a name that does not exist is answered as
  removed, so the client does not wait for it.
- CDS and LDS subscribe with the wildcard (an empty first request, or "*").
- A NACK is never answered with the same resources: what was sent is recorded as what the
  client has, so only a new version of a resource is sent again.
- Types go out CDS, EDS, LDS, RDS; a cluster the client still uses is removed only once the
  routes that replaced it have been ACKed (make before break).

A stream that holds the snapshot before the current one applies the snapshot's recorded
changes (work proportional to the change); any other stream compares the whole type once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

from snapshot import wire
from snapshot.resources import CLUSTER_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, ResourceSet, Snapshot

from .stream import WILDCARD_TYPES, Outgoing, StreamEvents, StreamInfo, log, nonces, short

_NONCES_KEPT = 16


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)  # explicit subscriptions
    known: dict[str, str] = field(default_factory=dict)  # what the client has: name -> version
    pending: set[str] = field(default_factory=set)  # names to look at on the next pass
    told_missing: set[str] = field(default_factory=set)  # subscribed names answered as removed
    held: set[str] = field(default_factory=set)  # clusters whose removal waits for the routes
    synced: str | None = None  # the set version `known` reflects; None: compare everything
    started: bool = False
    must_answer: bool = False  # a first request is answered even when there is nothing to send
    nonce: str = ""  # the newest nonce sent for this type
    acked_nonce: str = ""
    sent_versions: dict[str, str] = field(default_factory=dict)  # nonce -> system version

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass(slots=True)
class _Plan:
    send: list[Resource]
    remove: list[str]
    rset: ResourceSet


class DeltaProtocol:
    def __init__(self, info: StreamInfo, events: StreamEvents) -> None:
        self.info = info
        self.events = events
        self.types: dict[str, _TypeState] = {}
        self.nonces = nonces()

    def on_request(self, request: message.Message) -> None:
        assert isinstance(request, discovery_pb2.DeltaDiscoveryRequest)
        type_url = request.type_url
        st = self.types.setdefault(type_url, _TypeState())
        first = not st.started
        if first:
            st.started = True
            if type_url in WILDCARD_TYPES and not request.resource_names_subscribe:
                st.wildcard = True  # the legacy wildcard: a first request naming nothing
            st.known = dict(request.initial_resource_versions)
            st.synced = None
            st.must_answer = True
        for name in request.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
                st.synced = None
                continue
            st.names.add(name)
            if not first:  # a first request's names come with the versions the client has
                st.known.pop(name, None)  # subscribing again means "send it again"
            st.told_missing.discard(name)
            st.pending.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
                st.synced = None
                continue
            st.names.discard(name)
            st.told_missing.discard(name)
            if not st.wildcard:
                st.known.pop(name, None)  # the client drops it; nothing to remove
        nonce = request.response_nonce
        if nonce and nonce in st.sent_versions:
            version = st.sent_versions[nonce]
            if request.HasField("error_detail"):
                self.events.nack(self.info, type_url, version, version, request.error_detail.message)
            else:
                if nonce == st.nonce:
                    st.acked_nonce = nonce
                self.events.ack(self.info, type_url, version, version, False)
        elif nonce:
            log.debug("%s: unknown nonce %s for %s", self.info.describe(), nonce, type_url)

    def responses(self, snapshot: Snapshot) -> list[Outgoing]:
        plans = {t: self._plan(st, snapshot.of_type(t)) for t, st in self.types.items() if st.started}
        cds = plans.get(CLUSTER_TYPE)
        if cds is not None and cds.remove:
            self._hold_cluster_removals(cds, plans)
        out: list[Outgoing] = []
        for type_url in TYPE_ORDER:
            plan = plans.get(type_url)
            if plan is None:
                continue
            st = self.types[type_url]
            st.synced = plan.rset.version
            st.pending.clear()
            if plan.send or plan.remove or st.must_answer:
                st.must_answer = False
                out.append(self._encode(type_url, st, plan))
        return out

    def _plan(self, st: _TypeState, rset: ResourceSet) -> _Plan:
        resources = rset.resources
        full = False
        if st.synced == rset.version:
            candidates: Iterable[str] = st.pending
            gone: Iterable[str] = ()
        elif st.synced is not None and st.synced == rset.base:
            candidates = rset.changed | st.pending
            gone = rset.removed
        else:  # a new stream, a new subscription mode, or a stream that fell behind
            full = True
            candidates = set(resources) if st.wildcard else set()
            candidates |= st.names
            gone = list(st.known)
        known = st.known
        send = []
        for name in candidates:
            res = resources.get(name)
            if res is not None and st.wants(name) and known.get(name) != res.version:
                send.append(res)
        remove = [n for n in gone if n in known and (n not in resources or not st.wants(n))]
        remove.extend(n for n in st.held if n in known and n not in resources and n not in remove)
        # Names asked for that do not exist are answered as removed, once, so nobody waits.
        for name in st.names if full else st.pending:
            if (
                name in st.names
                and name not in resources
                and name not in known
                and name not in st.told_missing
            ):
                remove.append(name)
                st.told_missing.add(name)
        return _Plan(sorted(send, key=lambda r: r.name), sorted(set(remove)), rset)

    def _hold_cluster_removals(self, cds: _Plan, plans: dict[str, _Plan]) -> None:
        """Remove clusters only when every other type is sent, ACKed and has nothing pending."""
        settled = all(
            not plan.send and not plan.remove and self.types[t].acked_nonce == self.types[t].nonce
            for t, plan in plans.items()
            if t != CLUSTER_TYPE
        )
        st = self.types[CLUSTER_TYPE]
        if settled:
            st.held.clear()
            return
        st.held.update(n for n in cds.remove if n in st.known)  # only what the client has
        cds.remove = [n for n in cds.remove if n not in st.held]

    def _encode(self, type_url: str, st: _TypeState, plan: _Plan) -> Outgoing:
        nonce = next(self.nonces)
        version = plan.rset.version
        for res in plan.send:
            st.known[res.name] = res.version
        for name in plan.remove:
            st.known.pop(name, None)
        st.nonce = nonce
        st.sent_versions[nonce] = version
        while len(st.sent_versions) > _NONCES_KEPT:
            del st.sent_versions[next(iter(st.sent_versions))]
        log.debug(
            "%s: sending %s %s: %d changed, %d removed (nonce %s)",
            self.info.describe(),
            short(type_url),
            version,
            len(plan.send),
            len(plan.remove),
            nonce,
        )
        payload = b"".join(
            [
                wire.field_string(1, version),
                *[wire.field_bytes(2, r.delta) for r in plan.send],
                wire.field_string(4, type_url),
                wire.field_string(5, nonce),
                *[wire.field_string(6, name) for name in plan.remove],
            ]
        )
        return Outgoing(type_url, version, payload)
