"""ADS clients (state of the world and delta): the benchmark's, which ACK by themselves, and
scripted ones that a test drives request by request.

The benchmark's clients subscribe as Envoy does: to clusters, listeners and route scopes
(wildcard), then to the route configurations the scopes name (`http` when there are none),
and ACK every response at once. A client made with `read=False` sends its subscriptions and
then never reads a response: a stuck Envoy, as the fan-out scenario needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from snapshot.resources import (
    CLUSTER_TYPE,
    HTTP_ROUTE_NAME,
    LISTENER_TYPE,
    MESSAGE_CLASSES,
    ROUTE_TYPE,
    SCOPED_ROUTE_TYPE,
    TYPE_ORDER,
)
from snapshot.snapshot import Snapshot

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = ADS + "StreamAggregatedResources"
DELTA_METHOD = ADS + "DeltaAggregatedResources"
SUBSCRIPTIONS: dict[str, list[str]] = {CLUSTER_TYPE: [], LISTENER_TYPE: [], SCOPED_ROUTE_TYPE: []}
ANSWERED_TYPES = (*SUBSCRIPTIONS, ROUTE_TYPE)  # a client is configured once it has each

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
        self.scopes: dict[str, str] = {}  # route scope -> the route configuration it names
        self.route_names: list[str] = []  # the route configurations subscribed to
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
        if type_url == SCOPED_ROUTE_TYPE:
            self._take_scopes(response)
        if self.delta:
            version = response.system_version_info
            ack: Any = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        else:
            version = response.version_info
            ack = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=version,
                response_nonce=response.nonce,
                resource_names=self.route_names
                if type_url == ROUTE_TYPE
                else SUBSCRIPTIONS.get(type_url, []),
            )
        self._requests.put_nowait(ack)
        self.responses[type_url] = self.responses.get(type_url, 0) + 1
        self.versions[type_url] = version
        self.changed.set()
        if self.listener is not None:
            self.listener(self, type_url)

    def _take_scopes(self, response: Any) -> None:
        """Follow the route scopes: subscribe to the route configurations they name."""
        if self.delta:
            for name in response.removed_resources:
                self.scopes.pop(name, None)
            bodies = [(r.name, r.resource.value) for r in response.resources]
        else:
            self.scopes.clear()
            bodies = [("", a.value) for a in response.resources]
        for name, body in bodies:
            scope = MESSAGE_CLASSES[SCOPED_ROUTE_TYPE].FromString(body)
            self.scopes[name or scope.name] = scope.route_configuration_name
        wanted = sorted(set(self.scopes.values())) or [HTTP_ROUTE_NAME]
        if wanted == self.route_names:
            return
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=ROUTE_TYPE,
                resource_names_subscribe=sorted(set(wanted) - set(self.route_names)),
                resource_names_unsubscribe=sorted(set(self.route_names) - set(wanted)),
            )
        else:
            request = discovery_pb2.DiscoveryRequest(type_url=ROUTE_TYPE, resource_names=wanted)
            if ROUTE_TYPE in self.versions:
                request.version_info = self.versions[ROUTE_TYPE]
        self.route_names = wanted
        self._requests.put_nowait(request)

    def has_all_types(self) -> bool:
        return all(self.responses.get(t, 0) > 0 for t in ANSWERED_TYPES)

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


# -- scripted clients ---------------------------------------------------------------------------
#
# The clients above ACK everything by themselves. The ones below are driven step by step, as a
# test drives an Envoy: each request is written out (subscribe, ACK, NACK, a stale nonce...),
# and each response is read when asked for, checked, and taken into what the client holds.
# `EnvoyScript` and its two variants build the requests and take in the responses without any
# transport; `ScriptedClient` carries them over one gRPC stream.

READ_TIMEOUT = 5.0  # how long a scripted client waits for a response it expects
QUIET = 0.3  # how long it waits to see that no response comes


def sotw_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The names of the resources a state-of-the-world response carries, in order."""
    out = []
    for any_msg in response.resources:
        assert any_msg.type_url == response.type_url
        msg = MESSAGE_CLASSES[response.type_url]()
        msg.ParseFromString(any_msg.value)
        out.append(msg.name)
    return out


def describe_delta(response: discovery_pb2.DeltaDiscoveryResponse) -> str:
    return (
        f"{response.type_url.rsplit('.', 1)[-1]} {response.system_version_info} nonce {response.nonce} "
        f"resources {sorted(r.name for r in response.resources)} removed {sorted(response.removed_resources)}"
    )


def held(snapshot: Snapshot, type_url: str, only: set[str] | None = None) -> dict[str, str]:
    """What a client subscribed to `only` (None: the wildcard) should hold: name -> version."""
    return {
        name: res.version
        for name, res in snapshot.of_type(type_url).resources.items()
        if only is None or name in only
    }


class EnvoyScript:
    """The requests of one stream, built the way Envoy builds them, and what the client takes
    from each response; how a request travels is a subclass's `_deliver`."""

    response_class: Any = discovery_pb2.DiscoveryResponse

    def __init__(self, node_id: str, cluster: str) -> None:
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        self._sent_node = False

    def _queue(self, request: Any, error: str | None, node: bool | None) -> None:
        """Send a request; the node goes with the first request unless `node` says otherwise."""
        if node if node is not None else not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._deliver(request)

    def _deliver(self, request: Any) -> None:
        raise NotImplementedError

    def _apply(self, response: Any) -> None:
        """Check a response and take it in."""

    def _describe(self, response: Any) -> str:
        return str(response.type_url)

    def ack(self, response: Any) -> None:
        raise NotImplementedError


class SotwScript(EnvoyScript):
    """A state-of-the-world stream, driven the way Envoy drives it."""

    def __init__(self, node_id: str = "envoy-1", cluster: str = "edge") -> None:
        super().__init__(node_id, cluster)
        self.subscriptions: dict[str, list[str]] = {}
        self.accepted: dict[str, str] = {}  # type -> last version ACKed

    def send(
        self,
        type_url: str,
        resource_names: Sequence[str] | None = None,
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
        node: bool | None = None,
    ) -> None:
        """Send a request; the node goes with the first request unless `node` says otherwise."""
        if resource_names is None:
            resource_names = self.subscriptions.get(type_url, [])
        self.subscriptions[type_url] = list(resource_names)
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=resource_names,
            version_info=version,
            response_nonce=nonce,
        )
        self._queue(request, error, node)

    def subscribe(self, type_url: str, resource_names: Sequence[str] = ()) -> None:
        self.send(type_url, resource_names, version=self.accepted.get(type_url, ""))

    def _describe(self, response: Any) -> str:
        return (
            f"{response.type_url} version {response.version_info} "
            f"nonce {response.nonce} resources {sotw_names(response)}"
        )

    def ack(self, response: Any) -> None:
        self.accepted[response.type_url] = response.version_info
        self.send(response.type_url, version=response.version_info, nonce=response.nonce)

    def nack(self, response: Any, message: str) -> None:
        """Reject a response: Envoy sends back the version it still has, and the reason."""
        self.send(
            response.type_url,
            version=self.accepted.get(response.type_url, ""),
            nonce=response.nonce,
            error=message,
        )


class DeltaScript(EnvoyScript):
    """A delta stream, driven the way Envoy drives it, with Envoy's view of what it holds: every
    type's name -> version, updated from each response (`resources` add or replace,
    `removed_resources` delete)."""

    response_class = discovery_pb2.DeltaDiscoveryResponse

    def __init__(self, node_id: str, cluster: str = "edge") -> None:
        super().__init__(node_id, cluster)
        self.view: dict[str, dict[str, str]] = {}  # type -> name -> version: what the client holds
        self.wanted: dict[str, set[str] | None] = {}  # type -> names subscribed (None: wildcard)
        self.nonces: list[str] = []
        self.acks_sent = 0

    def send(
        self,
        type_url: str,
        subscribe: tuple[str, ...] | list[str] = (),
        unsubscribe: tuple[str, ...] | list[str] = (),
        *,
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
        node: bool | None = None,
    ) -> None:
        """Send a request; the node goes with the first request unless `node` says otherwise."""
        first = type_url not in self.wanted
        wanted = self.wanted.setdefault(type_url, set())
        if first and not subscribe and type_url in (CLUSTER_TYPE, LISTENER_TYPE):
            self.wanted[type_url] = wanted = None  # the legacy wildcard
        for name in subscribe:
            if name == "*":
                self.wanted[type_url] = wanted = None
            elif wanted is not None:
                wanted.add(name)
        for name in unsubscribe:
            if wanted is not None:
                wanted.discard(name)
                self.view.get(type_url, {}).pop(name, None)  # the client drops it itself
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        self._queue(request, error, node)

    def subscribe(self, type_url: str, *names: str, initial: Mapping[str, str] | None = None) -> None:
        self.send(type_url, names, initial=initial)

    def unsubscribe(self, type_url: str, *names: str) -> None:
        self.send(type_url, (), names)

    def ack(self, response: Any) -> None:
        self.acks_sent += 1
        self.send(response.type_url, nonce=response.nonce)

    def nack(self, response: Any, message: str) -> None:
        self.send(response.type_url, nonce=response.nonce, error=message)

    def _apply(self, response: Any) -> None:
        """Check a response the way Envoy would, then update the view from it."""
        assert response.type_url in TYPE_ORDER, response.type_url
        assert response.nonce, describe_delta(response)
        assert response.nonce not in self.nonces, f"nonce reused: {describe_delta(response)}"
        self.nonces.append(response.nonce)
        assert response.system_version_info, describe_delta(response)
        seen: set[str] = set()
        for res in response.resources:
            assert res.name, describe_delta(response)
            assert res.version, describe_delta(response)
            assert res.name not in seen, f"{res.name} twice in {describe_delta(response)}"
            seen.add(res.name)
            assert res.resource.type_url == response.type_url
            msg = MESSAGE_CLASSES[response.type_url]()
            msg.ParseFromString(res.resource.value)
            assert msg.name == res.name
        gone = set(response.removed_resources)
        assert len(gone) == len(response.removed_resources), describe_delta(response)
        assert not seen & gone, f"{seen & gone} both sent and removed: {describe_delta(response)}"
        view = self.view.setdefault(response.type_url, {})
        for res in response.resources:
            view[res.name] = res.version
        for name in gone:
            view.pop(name, None)

    def _describe(self, response: Any) -> str:
        return describe_delta(response)

    def assert_holds(self, snapshot: Snapshot) -> None:
        """The client's view of every type it subscribed to is exactly that of `snapshot`."""
        for type_url, wanted in self.wanted.items():
            if type_url in TYPE_ORDER:
                assert self.view.get(type_url, {}) == held(snapshot, type_url, wanted), type_url


class ScriptedClient(EnvoyScript):
    """A scripted stream over gRPC: one ADS stream on a channel of its own (plain text, or TLS
    with `credentials`), requests sent in the order they are queued, responses kept in order
    as read (or what ended the stream)."""

    end_details = ""  # the details of the status that ended the stream, once `end` saw it

    def _connect(self, port: int, method: str, credentials: grpc.ChannelCredentials | None) -> None:
        target = f"127.0.0.1:{port}"
        self.channel = (
            grpc.aio.insecure_channel(target)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials)
        )
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        open_stream = self.channel.stream_stream(
            method,
            request_serializer=_serialize,
            response_deserializer=self.response_class.FromString,
        )
        self.call = open_stream(requests_from(self._requests))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self._responses.put(response)
            await self._responses.put(EOFError("the server ended the stream"))
        except BaseException as exc:  # handed to whoever reads next
            await self._responses.put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _deliver(self, request: Any) -> None:
        self._requests.put_nowait(request)

    async def recv(self, within: float = READ_TIMEOUT) -> Any:
        """The next response (taken in), or fail if none arrives within `within` seconds."""
        try:
            item = await asyncio.wait_for(self._responses.get(), within)
        except TimeoutError:
            raise AssertionError(f"no response within {within}s") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"stream failed: {item!r}")
        self._apply(item)
        return item

    async def recv_n(self, count: int, within: float = READ_TIMEOUT) -> list[Any]:
        return [await self.recv(within) for _ in range(count)]

    async def expect_quiet(self, wait: float = QUIET) -> None:
        """Assert that no response arrives within `wait` seconds."""
        try:
            item = await asyncio.wait_for(self._responses.get(), wait)
        except TimeoutError:
            return
        if isinstance(item, self.response_class):
            raise AssertionError(f"unexpected response: {self._describe(item)}")
        raise AssertionError(f"stream failed: {item!r}")

    async def end(self, within: float = READ_TIMEOUT) -> grpc.StatusCode:
        """The status the server ends the stream with (OK when it just ends); fail if a
        response comes first, or nothing within `within` seconds."""
        try:
            item = await asyncio.wait_for(self._responses.get(), within)
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {within}s") from None
        if isinstance(item, self.response_class):
            raise AssertionError(f"a response instead of the end: {self._describe(item)}")
        if isinstance(item, EOFError):
            return grpc.StatusCode.OK
        if isinstance(item, grpc.aio.AioRpcError):
            self.end_details = item.details()
            code: grpc.StatusCode = item.code()
            return code
        raise AssertionError(f"stream failed: {item!r}")

    async def ack_until_quiet(self, quiet: float = QUIET) -> list[Any]:
        """ACK every response until none arrives for `quiet` seconds; return them."""
        got: list[Any] = []
        while True:
            try:
                item = await asyncio.wait_for(self._responses.get(), quiet)
            except TimeoutError:
                return got
            if not isinstance(item, self.response_class):
                raise AssertionError(f"stream failed: {item!r}")
            self._apply(item)
            got.append(item)
            self.ack(item)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()


class SotwClient(SotwScript, ScriptedClient):
    """A scripted state-of-the-world stream over gRPC to the server at `port`."""

    def __init__(
        self,
        port: int,
        node_id: str = "envoy-1",
        cluster: str = "edge",
        *,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(node_id, cluster)
        self._connect(port, SOTW_METHOD, credentials)


class DeltaClient(DeltaScript, ScriptedClient):
    """A scripted delta stream over gRPC to the server at `port`."""

    def __init__(
        self,
        port: int,
        node_id: str,
        cluster: str = "edge",
        *,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(node_id, cluster)
        self._connect(port, DELTA_METHOD, credentials)


def _serialize(request: Any) -> bytes:
    payload: bytes = request.SerializeToString()
    return payload
