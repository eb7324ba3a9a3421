"""Minimal ADS clients (state of the world and delta) that subscribe the way Envoy does and ACK.

They subscribe to clusters and listeners (wildcard) and to the route configuration `http`,
and ACK every response at once. A client made with `read=False` sends its subscriptions and
then never reads a response: a stuck Envoy, as the fan-out scenario needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from snapshot.resources import CLUSTER_TYPE, HTTP_ROUTE_NAME, LISTENER_TYPE, ROUTE_TYPE

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = ADS + "StreamAggregatedResources"
DELTA_METHOD = ADS + "DeltaAggregatedResources"
SUBSCRIPTIONS: dict[str, list[str]] = {CLUSTER_TYPE: [], LISTENER_TYPE: [], ROUTE_TYPE: [HTTP_ROUTE_NAME]}

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]

Listener = Callable[["AdsClient", str], None]


async def requests_from(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """The requests of one stream, in the order they are queued; None ends the stream."""
    while True:
        request = await queue.get()
        if request is None:
            return
        yield request


class AdsClient:
    """One ADS stream on a channel of its own (as each Envoy has its own connection)."""

    delta = False

    def __init__(
        self, port: int, node_id: str, *, read: bool = True, listener: Listener | None = None
    ) -> None:
        self.port = port
        self.node = base_pb2.Node(id=node_id, cluster="bench")
        self.read = read
        self.listener = listener
        self.responses: dict[str, int] = {}  # type -> responses received (and ACKed)
        self.versions: dict[str, str] = {}  # type -> version of the last response
        self.error: BaseException | None = None
        self.changed = asyncio.Event()
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def method(self) -> str:
        return DELTA_METHOD if self.delta else SOTW_METHOD

    def _request_class(self) -> Any:
        return discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest

    def _response_class(self) -> Any:
        return discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse

    async def start(self) -> AdsClient:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS)
        call = self._channel.stream_stream(
            self.method,
            request_serializer=self._request_class().SerializeToString,
            response_deserializer=self._response_class().FromString,
        )
        self._call = call(requests_from(self._requests))
        first = True
        for type_url, names in SUBSCRIPTIONS.items():
            self._requests.put_nowait(self._subscribe(type_url, names, first))
            first = False
        if self.read:
            self._reader = asyncio.create_task(self._read())
        return self

    def _subscribe(self, type_url: str, names: list[str], with_node: bool) -> Any:
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=names
            )
        else:
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
        if with_node:
            request.node.CopyFrom(self.node)
        return request

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._ack(response)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # recorded; the scenario reports it
            self.error = exc
        finally:
            self.changed.set()

    def _ack(self, response: Any) -> None:
        type_url = response.type_url
        if self.delta:
            version = response.system_version_info
            ack: Any = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        else:
            version = response.version_info
            ack = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=version,
                response_nonce=response.nonce,
                resource_names=SUBSCRIPTIONS.get(type_url, []),
            )
        self._requests.put_nowait(ack)
        self.responses[type_url] = self.responses.get(type_url, 0) + 1
        self.versions[type_url] = version
        self.changed.set()
        if self.listener is not None:
            self.listener(self, type_url)

    def has_all_types(self) -> bool:
        return all(self.responses.get(t, 0) > 0 for t in SUBSCRIPTIONS)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._channel is not None:
            await self._channel.close(grace=None)


class DeltaAdsClient(AdsClient):
    """The same, over the incremental (delta) protocol."""

    delta = True


def client_class(delta: bool) -> type[AdsClient]:
    return DeltaAdsClient if delta else AdsClient


async def supports_delta(port: int, within: float = 3.0) -> tuple[bool, str]:
    """Whether the server at `port` answers DeltaAggregatedResources (it must have a snapshot)."""
    client = DeltaAdsClient(port, "bench-delta-probe")
    await client.start()
    try:
        async with asyncio.timeout(within):
            while not client.responses and client.error is None:
                client.changed.clear()
                await client.changed.wait()
    except TimeoutError:
        return False, f"no delta response within {within:.0f} s"
    finally:
        await client.close()
    if client.responses:
        return True, "the server answers DeltaAggregatedResources"
    err = client.error
    if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.UNIMPLEMENTED:
        return False, "the server does not implement DeltaAggregatedResources (UNIMPLEMENTED)"
    return False, f"delta stream failed: {err!r}"
