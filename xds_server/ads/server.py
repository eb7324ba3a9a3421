"""The ADS server: serves published snapshots to Envoy over gRPC, in both xDS variants.

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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

from snapshot.snapshot import Snapshot

from .delta import DeltaProtocol
from .sotw import SotwProtocol
from .stream import SERVED_TYPES, StreamEvents, StreamInfo, StreamObserver, StreamProtocol, TypeStatus, log

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclass(slots=True)
class _Stream:
    info: StreamInfo
    protocol: StreamProtocol
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    identified: bool = False  # the node was taken from the first request that carried one


class AdsServer:
    """Serves the latest published snapshot to every connected Envoy."""

    def __init__(self, observer: StreamObserver | None = None) -> None:
        """`observer` is told of every stream's opening, ACKs, NACKs, responses and closing."""
        self._snapshot: Snapshot | None = None
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.events = StreamEvents(observer)
        # State-of-the-world responses for the current snapshot, shared by every stream.
        self.sotw_blocks: dict[tuple[str, str, tuple[str, ...] | None], bytes] = {}

    # -- publishing ------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> bool:
        """Make `snapshot` the one every stream converges to; False if nothing changed."""
        if self._snapshot is not None and self._snapshot.version == snapshot.version:
            return False
        self._snapshot = snapshot
        self.sotw_blocks.clear()
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
            ]
        )
        server.add_generic_rpc_handlers([self.rpc_handler()])
        for add_service in services:
            add_service(server)
        if credentials is None:
            port = int(server.add_insecure_port(address))
        else:
            port = int(server.add_secure_port(address, credentials))
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

    # gRPC drives a handler by what the function is, so each entry point is itself an
    # async generator.
    async def _stream_sotw(
        self, requests: AsyncIterator[message.Message], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        info = StreamInfo(next(self._ids), context.peer(), time.time(), "sotw")
        async for payload in self._serve(info, SotwProtocol(info, self.events, self.sotw_blocks), requests):
            yield payload

    async def _stream_delta(
        self, requests: AsyncIterator[message.Message], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        info = StreamInfo(next(self._ids), context.peer(), time.time(), "delta")
        async for payload in self._serve(info, DeltaProtocol(info, self.events), requests):
            yield payload

    async def _serve(
        self, info: StreamInfo, protocol: StreamProtocol, requests: AsyncIterator[message.Message]
    ) -> AsyncIterator[bytes]:
        stream = _Stream(info, protocol)
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
                if self._snapshot is None:
                    continue  # nothing is published yet: a half-empty config is never sent
                for out in protocol.responses(self._snapshot):
                    self.events.sent(info, out)
                    yield out.payload
        finally:
            reader.cancel()
            self._streams.pop(info.id, None)
            log.info("%s closed", info.describe())
            self.events.closed(info)

    async def _read(self, stream: _Stream, requests: AsyncIterator[message.Message]) -> None:
        info = stream.info
        try:
            async for request in requests:
                if not stream.identified and request.HasField("node"):
                    stream.identified = True
                    info.node_id = request.node.id
                    info.cluster = request.node.cluster
                    log.info("%s identified", info.describe())
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
