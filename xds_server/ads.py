"""The ADS server: serves published snapshots to Envoy over gRPC, state of the world.

It knows streams, nonces, ACKs and NACKs, and nothing of sites. Responses are assembled from
the serialized bytes the snapshot already holds (see `snapshot.wire`), so one change costs
one encoding however many Envoys are connected.

Rules kept (see the protocol notes in the README's design section):
- the node is remembered from the first request that carries it;
- a nonce is per stream and per response; a request with an older nonce is ignored;
- ACK or NACK is decided by `error_detail`; a NACKed response is never sent again: the
  stream waits until the snapshot changes;
- types go out in the order CDS, EDS, LDS, RDS, and a cluster the client still uses is
  removed only once the routes that used it have been replaced (make before break);
- a resource asked for before it exists is sent when it appears;
- each stream always works from the latest snapshot: a slow stream skips what it missed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from snapshot import wire
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, Snapshot, content_hash

log = logging.getLogger("staticsite_xds.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
WILDCARD_TYPES = frozenset({CLUSTER_TYPE, LISTENER_TYPE})
SERVED_TYPES = frozenset(TYPE_ORDER)


@dataclass(slots=True)
class Nack:
    type_url: str
    version: str
    message: str
    at: float


@dataclass(slots=True)
class _TypeState:
    """What one stream asked for and was sent, for one resource type."""

    names: frozenset[str] | None = None  # None: wildcard (every resource of the type)
    subscribed: bool = False
    must_answer: bool = False  # the client asked in a way that needs a response
    nonce: str = ""  # the nonce of the last response sent
    sent_key: tuple[object, ...] | None = None  # what the last response carried
    sent_version: str = ""
    sent: dict[str, Resource] = field(default_factory=dict)
    acked_nonce: str = ""
    acked_version: str = ""
    nack: Nack | None = None


@dataclass(slots=True)
class StreamInfo:
    """One connected Envoy, as the server knows it."""

    id: int
    peer: str
    opened_at: float
    node_id: str = ""
    cluster: str = ""
    types: dict[str, _TypeState] = field(default_factory=dict)

    def acked_version(self, type_url: str) -> str:
        st = self.types.get(type_url)
        return st.acked_version if st else ""

    @property
    def last_nack(self) -> Nack | None:
        nacks = [st.nack for st in self.types.values() if st.nack is not None]
        return max(nacks, key=lambda n: n.at) if nacks else None

    def describe(self) -> str:
        return f"stream {self.id} (node {self.node_id or '?'}, cluster {self.cluster or '?'}, {self.peer})"


AckHandler = Callable[[StreamInfo, str, str], None]
NackHandler = Callable[[StreamInfo, Nack], None]


@dataclass(slots=True)
class _Stream:
    info: StreamInfo
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    identified: bool = False  # the node was taken from the first request that carried one
    nonces: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@dataclass(frozen=True, slots=True)
class _Desired:
    """What a stream should hold of one type under the current snapshot."""

    key: tuple[object, ...]
    version: str
    resources: dict[str, Resource]
    retained: frozenset[str] = frozenset()


class AdsServer:
    """Serves the latest published snapshot to every connected Envoy."""

    def __init__(
        self,
        *,
        on_ack: AckHandler | None = None,
        on_nack: NackHandler | None = None,
    ) -> None:
        self._snapshot: Snapshot | None = None
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self._blocks: dict[tuple[str, str, tuple[str, ...] | None], bytes] = {}
        self.on_ack = on_ack
        self.on_nack = on_nack

    # -- publishing ------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> bool:
        """Make `snapshot` the one every stream converges to; False if nothing changed."""
        if self._snapshot is not None and self._snapshot.version == snapshot.version:
            return False
        self._snapshot = snapshot
        self._blocks.clear()
        for stream in self._streams.values():
            stream.wake.set()
        return True

    def streams(self) -> list[StreamInfo]:
        return [s.info for s in self._streams.values()]

    # -- serving ---------------------------------------------------------------------------

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        sotw = grpc.stream_stream_rpc_method_handler(
            self._stream_sotw,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_already_serialized,
        )
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {"StreamAggregatedResources": sotw})

    async def start(self, address: str) -> int:
        """Listen on `address` (host:port, port 0 for any); return the bound port."""
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ]
        )
        server.add_generic_rpc_handlers([self.rpc_handler()])
        port = int(server.add_insecure_port(address))
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        return port

    async def stop(self, grace: float = 2.0) -> None:
        for stream in self._streams.values():
            stream.closed = True
            stream.wake.set()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _stream_sotw(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        info = StreamInfo(next(self._ids), context.peer(), time.time())
        stream = _Stream(info)
        self._streams[info.id] = stream
        log.info("%s opened", info.describe())
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.closed:
                    break
                for payload in self._responses(stream):
                    yield payload
        finally:
            reader.cancel()
            self._streams.pop(info.id, None)
            log.info("%s closed", info.describe())

    async def _read(self, stream: _Stream, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken client must not take anything else down
            log.warning("%s: request stream failed: %s", stream.info.describe(), exc)
        finally:
            stream.closed = True
            stream.wake.set()

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        info = stream.info
        if not stream.identified and request.HasField("node"):
            stream.identified = True
            info.node_id = request.node.id
            info.cluster = request.node.cluster
            log.info("%s identified", info.describe())
        type_url = request.type_url
        if type_url not in SERVED_TYPES:
            log.warning("%s asked for type %r, which this server does not serve", info.describe(), type_url)
            return
        st = info.types.setdefault(type_url, _TypeState())
        # a nonce can only be stale once this stream has sent this type something; before that
        # (a new stream, say) the request is a first request, whatever nonce it carries
        if request.response_nonce and st.nonce:
            if request.response_nonce != st.nonce:
                log.debug(
                    "%s: stale nonce %s for %s ignored", info.describe(), request.response_nonce, type_url
                )
                return
            if request.HasField("error_detail"):
                nack = Nack(type_url, st.sent_version, request.error_detail.message, time.time())
                st.nack = nack
                log.warning(
                    "%s rejected %s version %s: %s",
                    info.describe(),
                    _short(type_url),
                    nack.version,
                    nack.message,
                )
                if self.on_nack is not None:
                    _notify(self.on_nack, info, nack)
            else:
                st.acked_nonce = request.response_nonce
                st.acked_version = request.version_info
                st.nack = None
                if self.on_ack is not None:
                    _notify(self.on_ack, info, type_url, request.version_info)
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
        stream.wake.set()

    # -- deciding what to send -------------------------------------------------------------

    def _responses(self, stream: _Stream) -> list[bytes]:
        snapshot = self._snapshot
        if snapshot is None:
            return []
        types = stream.info.types
        desired = {t: self._desired(snapshot, t, st) for t, st in types.items() if st.subscribed}
        cds = desired.get(CLUSTER_TYPE)
        if cds is not None:
            desired[CLUSTER_TYPE] = self._retain_clusters(types, desired, cds)
        out: list[bytes] = []
        for type_url in TYPE_ORDER:
            want = desired.get(type_url)
            st = types.get(type_url)
            if want is None or st is None:
                continue
            if want.key == st.sent_key and not st.must_answer:
                continue
            if not want.resources and st.names is not None and st.sent_key is None:
                st.must_answer = False  # nothing the client named exists yet: answer when it does
                continue
            out.append(self._encode(stream, type_url, st, want))
        return out

    def _desired(self, snapshot: Snapshot, type_url: str, st: _TypeState) -> _Desired:
        rset = snapshot.of_type(type_url)
        if st.names is None:
            return _Desired((rset.version, None), rset.version, dict(rset.resources))
        chosen = {n: rset.resources[n] for n in sorted(st.names) if n in rset.resources}
        return _Desired((rset.version, tuple(chosen)), rset.version, chosen)

    def _retain_clusters(
        self, types: dict[str, _TypeState], desired: dict[str, _Desired], cds: _Desired
    ) -> _Desired:
        """Keep clusters the client still routes to until the routes replacing them are ACKed."""
        st = types[CLUSTER_TYPE]
        removed = frozenset(st.sent) - frozenset(cds.resources)
        if not removed:
            return cds
        # a type this stream was never sent cannot point at a cluster: it holds nothing back
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
        tag = content_hash(*(n.encode() for n in sorted(removed)))
        return _Desired((cds.version, None, "retain", tag), f"{cds.version}+{tag}", kept, removed)

    def _encode(self, stream: _Stream, type_url: str, st: _TypeState, want: _Desired) -> bytes:
        nonce = str(next(stream.nonces))
        names = None if st.names is None and not want.retained else tuple(want.resources)
        block_key = (type_url, want.version, names)
        block = self._blocks.get(block_key)
        if block is None:
            block = wire.repeated(2, (r.any for r in want.resources.values()))
            self._blocks[block_key] = block
        st.nonce = nonce
        st.sent_key = want.key
        st.sent_version = want.version
        st.sent = want.resources
        st.must_answer = False
        log.debug(
            "%s: sending %s version %s (%d resources, nonce %s)",
            stream.info.describe(),
            _short(type_url),
            want.version,
            len(want.resources),
            nonce,
        )
        return (
            wire.field_string(1, want.version)
            + block
            + wire.field_string(4, type_url)
            + wire.field_string(5, nonce)
        )


def _notify(callback: Callable[..., None], *args: object) -> None:
    """Report upward; a failing listener is logged and never breaks the Envoy's stream."""
    try:
        callback(*args)
    except Exception:
        log.exception("ACK/NACK listener %r failed", callback)


def _already_serialized(payload: bytes) -> bytes:
    return payload


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
