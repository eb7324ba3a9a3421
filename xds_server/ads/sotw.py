"""State-of-the-world ADS (StreamAggregatedResources): the rules for one stream.

- A nonce is per stream and per response; a request whose nonce is not the newest one sent
  for its type is ignored (it answers a response the client has not seen yet).
- ACK or NACK is decided by `error_detail`. A NACKed response is never sent again, nor the
  same snapshot's resources in another form (without the clusters retained for make before
  break): the stream waits until the snapshot changes.
- CDS and LDS carry the full set (empty names or "*" is the wildcard); RDS and EDS carry the
  names asked for, and a name asked for before it exists is sent when it appears.
- Types go out CDS, EDS, LDS, RDS, and a cluster the client still uses is removed only once
  the routes that replaced it have been ACKed (make before break).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

from snapshot import wire
from snapshot.resources import CLUSTER_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, Snapshot, content_hash

from .stream import WILDCARD_TYPES, Outgoing, StreamEvents, StreamInfo, log, nonces, short

_RETAINED = "+"  # joins a type's version and the tag of the clusters kept for make before break


def _snapshot_version(version: str) -> str:
    """The snapshot's version of a type, without the tag of clusters kept back."""
    return version.partition(_RETAINED)[0]


@dataclass(slots=True)
class _TypeState:
    """What one stream asked for and was sent, for one resource type."""

    names: frozenset[str] | None = None  # None: wildcard (every resource of the type)
    subscribed: bool = False
    must_answer: bool = False  # the client asked in a way that needs a response
    nonce: str = ""  # the nonce of the last response sent
    sent_key: tuple[object, ...] | None = None  # what the last response carried
    sent_version: str = ""
    sent: Mapping[str, Resource] = field(default_factory=dict)  # what the client holds, we believe
    acked: Mapping[str, Resource] = field(default_factory=dict)  # what it held at its last ACK
    acked_nonce: str = ""
    rejected: str = ""  # the snapshot version (without a retention suffix) last NACKed


@dataclass(frozen=True, slots=True)
class _Desired:
    """What a stream should hold of one type under the current snapshot."""

    key: tuple[object, ...]
    version: str
    resources: Mapping[str, Resource]
    retained: frozenset[str] = frozenset()


class SotwProtocol:
    def __init__(
        self,
        info: StreamInfo,
        events: StreamEvents,
        blocks: dict[tuple[str, str, tuple[str, ...] | None], bytes],
    ) -> None:
        self.info = info
        self.events = events
        self.blocks = blocks  # encoded resource lists of the current snapshot, shared by streams
        self.types: dict[str, _TypeState] = {}
        self.nonces = nonces()

    def on_request(self, request: message.Message) -> None:
        assert isinstance(request, discovery_pb2.DiscoveryRequest)
        type_url = request.type_url
        st = self.types.setdefault(type_url, _TypeState())
        # A nonce can only be stale once this stream has sent this type something; before that
        # (a new stream, say) the request is a first request, whatever nonce it carries.
        if request.response_nonce and st.nonce:
            if request.response_nonce != st.nonce:
                log.debug(
                    "%s: stale nonce %s for %s ignored",
                    self.info.describe(),
                    request.response_nonce,
                    type_url,
                )
                return
            if request.HasField("error_detail"):
                st.rejected = _snapshot_version(st.sent_version)
                st.sent = st.acked  # what it refused is not held: no cluster of it is kept for it
                self.events.nack(
                    self.info, type_url, st.sent_version, st.rejected, request.error_detail.message
                )
            else:
                st.rejected = ""
                st.acked = st.sent
                st.acked_nonce = request.response_nonce
                version = request.version_info
                self.events.ack(
                    self.info, type_url, version, _snapshot_version(version), _RETAINED in version
                )
        else:
            st.must_answer = True  # a first request for this type on this stream
        names = frozenset(request.resource_names)
        wanted: frozenset[str] | None = names
        if type_url in WILDCARD_TYPES and (not names or "*" in names):
            wanted = None
        if wanted != st.names or not st.subscribed:
            st.names = wanted
            st.subscribed = True
            st.must_answer = st.must_answer or st.sent_key is not None

    def responses(self, snapshot: Snapshot) -> list[Outgoing]:
        types = self.types
        desired = {t: self._desired(snapshot, t, st) for t, st in types.items() if st.subscribed}
        cds = desired.get(CLUSTER_TYPE)
        if cds is not None:
            desired[CLUSTER_TYPE] = self._retain_clusters(desired, cds)
        out: list[Outgoing] = []
        for type_url in TYPE_ORDER:
            want = desired.get(type_url)
            st = types.get(type_url)
            if want is None or st is None:
                continue
            if want.key == st.sent_key and not st.must_answer:
                continue
            if st.rejected and _snapshot_version(want.version) == st.rejected and not st.must_answer:
                continue  # the same resources the client refused, with or without retained clusters
            if not want.resources and st.names is not None and st.sent_key is None:
                st.must_answer = False  # nothing the client named exists yet: answer when it does
                continue
            out.append(self._encode(type_url, st, want))
        return out

    def _desired(self, snapshot: Snapshot, type_url: str, st: _TypeState) -> _Desired:
        rset = snapshot.of_type(type_url)
        if st.names is None:
            return _Desired((rset.version, None), rset.version, rset.resources)
        chosen = {n: rset.resources[n] for n in sorted(st.names) if n in rset.resources}
        return _Desired((rset.version, tuple(chosen)), rset.version, chosen)

    def _retain_clusters(self, desired: dict[str, _Desired], cds: _Desired) -> _Desired:
        """Keep clusters the client still routes to until the routes replacing them are ACKed."""
        st = self.types[CLUSTER_TYPE]
        if st.sent is cds.resources:
            return cds
        removed = frozenset(n for n in st.sent if n not in cds.resources)
        if not removed:
            return cds
        # A type this stream was never sent cannot point at a cluster: it holds nothing back.
        types = self.types
        others_settled = all(
            types[t].sent_key is None
            or (want.key == types[t].sent_key and types[t].acked_nonce == types[t].nonce)
            for t, want in desired.items()
            if t != CLUSTER_TYPE
        )
        if others_settled:
            return cds
        kept = dict(cds.resources)
        kept.update({name: st.sent[name] for name in removed})
        tag = content_hash(*(f"{n}\0{st.sent[n].version}".encode() for n in sorted(removed)))
        return _Desired((cds.version, None, "retain", tag), f"{cds.version}{_RETAINED}{tag}", kept, removed)

    def _encode(self, type_url: str, st: _TypeState, want: _Desired) -> Outgoing:
        nonce = next(self.nonces)
        names = None if st.names is None and not want.retained else tuple(want.resources)
        block_key = (type_url, want.version, names)
        block = self.blocks.get(block_key)
        if block is None:
            block = wire.repeated(2, (r.any for r in want.resources.values()))
            self.blocks[block_key] = block
        st.nonce = nonce
        st.sent_key = want.key
        st.sent_version = want.version
        st.sent = want.resources
        st.must_answer = False
        log.debug(
            "%s: sending %s version %s (%d resources, nonce %s)",
            self.info.describe(),
            short(type_url),
            want.version,
            len(want.resources),
            nonce,
        )
        payload = (
            wire.field_string(1, want.version)
            + block
            + wire.field_string(4, type_url)
            + wire.field_string(5, nonce)
        )
        return Outgoing(type_url, want.version, payload)
