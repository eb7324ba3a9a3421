"""The ADS server: serves published snapshots to Envoy over gRPC, in both xDS variants.

Each gateway group has a snapshot of its own; a stream is served its group's only, and the
group is decided from the Envoy's client certificate (see `membership.py`).

It knows streams, nonces, ACKs and NACKs, and nothing of sites. This module owns the gRPC
service, the registry of streams, publishing, and the loop that reads requests and writes
responses. The variants' rules live in `sotw.py` (state of the world) and `delta.py`
(incremental); what they share for one stream is in `stream.py`. Responses are assembled from the serialized bytes the
snapshot already holds (see `snapshot.wire`), so one change costs one encoding however many
Envoys are connected, and every stream works from the latest snapshot: a slow stream skips
what it missed instead of queueing it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

from snapshot.snapshot import DEFAULT_GROUP, Snapshot

from .delta import DeltaProtocol
from .membership import ClientIdentity, Membership, NotAMember, SingleGroup
from .sotw import SotwProtocol
from .stream import SERVED_TYPES, StreamEvents, StreamInfo, StreamObserver, StreamProtocol, TypeStatus, log

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


Blocks = dict[tuple[str, str, tuple[str, ...] | None], bytes]  # encoded resource lists, by type and version


@dataclass(slots=True)
class _Stream:
    info: StreamInfo
    protocol: StreamProtocol
    identity: ClientIdentity | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    identified: bool = False  # the node was taken from the first request that carried one
    ending: tuple[grpc.StatusCode, str] | None = None  # how the call ends, if not plainly


class AdsServer:
    """Serves each gateway group the latest snapshot published for it.

    A stream's group is decided by `membership` at the first request that carries a node;
    a stream refused by it ends with PERMISSION_DENIED. `membership` may be replaced while
    serving; `recheck` then applies it to the streams already open.
    """

    def __init__(self, observer: StreamObserver | None = None, membership: Membership | None = None) -> None:
        """`observer` is told of every stream's opening, ACKs, NACKs, responses, refusal and
        closing; `membership` decides each stream's group (None: every stream in the default)."""
        self.membership: Membership = membership if membership is not None else SingleGroup()
        self._snapshots: dict[str, Snapshot] = {}
        self._generations: dict[str, int] = {}  # group -> snapshots published for it
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.events = StreamEvents(observer)
        # State-of-the-world responses for each group's current snapshot, shared by its streams.
        self.sotw_blocks: dict[str, Blocks] = {}

    # -- publishing ------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The default group's latest snapshot."""
        return self._snapshots.get(DEFAULT_GROUP)

    @property
    def snapshots(self) -> Mapping[str, Snapshot]:
        """The latest snapshot of each group, by group."""
        return MappingProxyType(self._snapshots)

    @property
    def generations(self) -> Mapping[str, int]:
        """How many snapshots were published for each group (a retired group starts again)."""
        return MappingProxyType(self._generations)

    def publish(self, snapshot: Snapshot) -> bool:
        """Make `snapshot` the one every stream of its group converges to; False if nothing changed."""
        group = snapshot.group
        current = self._snapshots.get(group)
        if current is not None and current.version == snapshot.version:
            return False
        self._snapshots[group] = snapshot
        self._generations[group] = self._generations.get(group, 0) + 1
        blocks = self.sotw_blocks.get(group)
        if blocks is not None:
            blocks.clear()
        for stream in self._streams.values():
            if stream.info.group == group:
                stream.wake.set()
        return True

    def retire(self, group: str) -> None:
        """`group` is gone: forget its snapshot and close its streams."""
        self._snapshots.pop(group, None)
        self._generations.pop(group, None)
        self.sotw_blocks.pop(group, None)
        for stream in self._streams.values():
            if stream.identified and stream.info.group == group:
                log.info("%s closed: gateway group %s is gone", stream.info.describe(), group)
                self._end(stream, grpc.StatusCode.UNAVAILABLE, f"gateway group {group} is gone")

    def recheck(self) -> None:
        """Ask the membership again for every identified stream; close those whose group is
        no longer the same (their Envoys reconnect to the group they are now in)."""
        for stream in list(self._streams.values()):
            info = stream.info
            if not stream.identified or stream.closed:
                continue
            try:
                group = self.membership.group_of(stream.identity, info.cluster)
            except NotAMember as exc:
                self._refuse(stream, str(exc))
                continue
            if group != info.group:
                log.info("%s closed: its gateway group is now %s, not %s", info.describe(), group, info.group)
                self._end(stream, grpc.StatusCode.UNAVAILABLE, f"gateway group changed to {group}: reconnect")

    def streams(self) -> list[StreamInfo]:
        return [s.info for s in self._streams.values()]

    def _end(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        stream.ending = (code, details)
        stream.closed = True
        stream.wake.set()

    def _refuse(self, stream: _Stream, reason: str) -> None:
        info = stream.info
        log.warning(
            "%s refused: certificate names %s, declared gateway group %r: %s",
            info.describe(),
            ", ".join(info.client_names) or "(no client certificate)",
            info.cluster,
            reason,
        )
        self.events.refused(info, reason)
        self._end(stream, grpc.StatusCode.PERMISSION_DENIED, reason)

    # -- serving ---------------------------------------------------------------------------

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        sotw = grpc.stream_stream_rpc_method_handler(
            self._stream_sotw,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_already_serialized,
        )
        delta = grpc.stream_stream_rpc_method_handler(
            self._stream_delta,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_already_serialized,
        )
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE, {"StreamAggregatedResources": sotw, "DeltaAggregatedResources": delta}
        )

    async def start(
        self,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        services: Sequence[Callable[[grpc.aio.Server], None]] = (),
    ) -> int:
        """Listen on `address` (host:port, port 0 for any); return the bound port.

        `credentials` serve the port over TLS instead of plain text; each of `services` adds
        another gRPC service to the same port (health, inspection).
        """
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # Two control planes on one port would split the gateways between them:
                # the second must fail to listen.
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers([self.rpc_handler()])
        for add_service in services:
            add_service(server)
        try:
            if credentials is None:
                port = int(server.add_insecure_port(address))
            else:
                port = int(server.add_secure_port(address, credentials))
        except RuntimeError:  # grpc's word for a failed bind
            port = 0
        if port == 0:
            raise OSError(
                f"--xds-address {address}: cannot listen there (another process listens on that "
                "port, or the address is not this machine's)"
            )
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

    # gRPC drives a handler by what the function is, so each entry point is itself an
    # async generator.
    async def _stream_sotw(
        self, requests: AsyncIterator[message.Message], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        info = StreamInfo(next(self._ids), context.peer(), time.time(), "sotw")
        protocol = SotwProtocol(info, self.events, {})  # given its group's blocks once identified
        async for payload in self._serve(info, protocol, requests, context):
            yield payload

    async def _stream_delta(
        self, requests: AsyncIterator[message.Message], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        info = StreamInfo(next(self._ids), context.peer(), time.time(), "delta")
        async for payload in self._serve(info, DeltaProtocol(info, self.events), requests, context):
            yield payload

    async def _serve(
        self,
        info: StreamInfo,
        protocol: StreamProtocol,
        requests: AsyncIterator[message.Message],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        identity = ClientIdentity.from_auth_context(context.auth_context())
        stream = _Stream(info, protocol, identity)
        if identity is not None:
            info.client_names = identity.names
        self._streams[info.id] = stream
        log.info("%s opened (%s)", info.describe(), info.variant)
        self.events.opened(info)
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.closed:
                    break
                snapshot = self._snapshots.get(info.group) if stream.identified else None
                if snapshot is None:
                    continue  # nothing is published for its group yet: a half-empty config is never sent
                for out in protocol.responses(snapshot):
                    self.events.sent(info, out)
                    yield out.payload
        finally:
            reader.cancel()
            self._streams.pop(info.id, None)
            log.info("%s closed", info.describe())
            self.events.closed(info)
        if stream.ending is not None:
            await context.abort(*stream.ending)

    def _identify(self, stream: _Stream, node: Any) -> None:
        """Take the stream's node and decide its group (or refuse it)."""
        info = stream.info
        stream.identified = True
        info.node_id = node.id
        info.cluster = node.cluster
        try:
            info.group = self.membership.group_of(stream.identity, node.cluster)
        except NotAMember as exc:
            self._refuse(stream, str(exc))
            return
        if isinstance(stream.protocol, SotwProtocol):
            stream.protocol.blocks = self.sotw_blocks.setdefault(info.group, {})
        log.info("%s identified: gateway group %s", info.describe(), info.group)

    async def _read(self, stream: _Stream, requests: AsyncIterator[message.Message]) -> None:
        info = stream.info
        try:
            async for request in requests:
                if not stream.identified and request.HasField("node"):
                    self._identify(stream, request.node)
                if stream.closed:
                    return
                if request.type_url not in SERVED_TYPES:
                    log.warning(
                        "%s asked for type %r, which this server does not serve",
                        info.describe(),
                        request.type_url,
                    )
                    continue
                info.types.setdefault(request.type_url, TypeStatus())
                stream.protocol.on_request(request)
                stream.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken client must not take anything else down
            log.warning("%s: request stream failed: %s", info.describe(), exc)
        finally:
            stream.closed = True
            stream.wake.set()


def _already_serialized(payload: bytes) -> bytes:
    return payload
