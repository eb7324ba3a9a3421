"""Protocol-level tests of the state-of-the-world ADS server, with a gRPC client of our own.

Each test starts a real `AdsServer` on loopback and talks to it the way Envoy does: one
bidirectional stream, requests fed from a queue, responses read in the background. Every
read has a deadline, and "nothing is sent" is checked with a short bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from waiting import eventually

from snapshot import SnapshotBuilder, parse_site
from snapshot.builder import BuildOptions
from snapshot.model import API_VERSION, StaticSite
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, MESSAGE_CLASSES, ROUTE_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, ResourceSet, Snapshot
from xds_server.ads.server import AdsServer
from xds_server.ads.stream import Nack, StreamInfo
from xds_server.local.ads_client import requests_from
from xds_server.process.observer import ObserverFuncs

READ_TIMEOUT = 5.0  # deadline for a response we expect
QUIET = 0.3  # bounded wait that proves no response is sent
UNKNOWN_TYPE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"

Request = discovery_pb2.DiscoveryRequest
Response = discovery_pb2.DiscoveryResponse


# -- sites and snapshots ---------------------------------------------------------------------


def site(name: str, domain: str, service: str, port: int = 80, namespace: str = "default") -> StaticSite:
    return parse_site(
        {
            "apiVersion": API_VERSION,
            "kind": "StaticSite",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"domain": domain, "backend": {"serviceName": service, "servicePort": port}},
        }
    )


def build(*sites: StaticSite, builder: SnapshotBuilder | None = None) -> Snapshot:
    return (builder or SnapshotBuilder()).build(sites).snapshot


def with_routes(base: Snapshot, *extra: str) -> Snapshot:
    """`base` plus empty RouteConfigurations named `extra`."""
    routes = [
        *base.of_type(ROUTE_TYPE).resources.values(),
        *(Resource.from_message(ROUTE_TYPE, n, route_pb2.RouteConfiguration(name=n)) for n in extra),
    ]
    kept = [base.of_type(t) for t in TYPE_ORDER if t != ROUTE_TYPE]
    return Snapshot.of([*kept, ResourceSet.of(ROUTE_TYPE, routes)])


def names(response: Response) -> list[str]:
    """The names of the resources a response carries, in order."""
    out = []
    for any_msg in response.resources:
        assert any_msg.type_url == response.type_url
        msg = MESSAGE_CLASSES[response.type_url]()
        msg.ParseFromString(any_msg.value)
        out.append(msg.name)  # type: ignore[attr-defined]
    return out


def route_clusters(response: Response) -> set[str]:
    """Every cluster the routes of an RDS response point at."""
    assert response.type_url == ROUTE_TYPE
    out: set[str] = set()
    for any_msg in response.resources:
        rc = route_pb2.RouteConfiguration.FromString(any_msg.value)
        for vhost in rc.virtual_hosts:
            out.update(r.route.cluster for r in vhost.routes if r.route.cluster)
    return out


# -- the client ------------------------------------------------------------------------------


class StreamClient:
    """What both test clients share: one ADS stream on a channel of its own, requests sent in
    the order they are queued, responses kept in order as read (or what ended the stream).

    `_apply` is where a client checks a response and takes it in; `_describe` names one.
    """

    response_class: Any = Response

    def __init__(self, port: int, node_id: str, cluster: str, open_stream: Callable[[Any], Any]) -> None:
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._sent_node = False
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = open_stream(stub)(requests_from(self._requests))
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

    def _queue(self, request: Any, error: str | None, node: bool | None) -> None:
        """Send a request; the node goes with the first request unless `node` says otherwise."""
        if node if node is not None else not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put_nowait(request)

    def _apply(self, response: Any) -> None:
        pass

    def _describe(self, response: Any) -> str:
        return str(response.type_url)

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

    async def ack_until_quiet(self, quiet: float = QUIET) -> list[Any]:
        """ACK every response until none arrives for `quiet` seconds; return them."""
        got = []
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

    def ack(self, response: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()


class AdsClient(StreamClient):
    """One ADS stream, driven the way Envoy drives it (state of the world)."""

    def __init__(self, port: int, node_id: str = "envoy-1", cluster: str = "edge") -> None:
        self.subscriptions: dict[str, list[str]] = {}
        self.accepted: dict[str, str] = {}  # type -> last version ACKed
        super().__init__(port, node_id, cluster, lambda stub: stub.StreamAggregatedResources)

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
        request = Request(
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
            f"nonce {response.nonce} resources {names(response)}"
        )

    def ack(self, response: Response) -> None:
        self.accepted[response.type_url] = response.version_info
        self.send(response.type_url, version=response.version_info, nonce=response.nonce)

    def nack(self, response: Response, message: str) -> None:
        """Reject a response: Envoy sends back the version it still has, and the reason."""
        self.send(
            response.type_url,
            version=self.accepted.get(response.type_url, ""),
            nonce=response.nonce,
            error=message,
        )


@dataclass
class Harness:
    server: AdsServer
    port: int
    acks: list[tuple[int, str, str]] = field(default_factory=list)
    nacks: list[tuple[int, Nack]] = field(default_factory=list)
    clients: list[AdsClient] = field(default_factory=list)

    def connect(self, node_id: str = "envoy-1", cluster: str = "edge") -> AdsClient:
        client = AdsClient(self.port, node_id, cluster)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        found = [s for s in self.server.streams() if s.node_id == node_id]
        assert len(found) == 1, f"expected one stream of node {node_id}, got {self.server.streams()}"
        return found[0]

    async def settle(self, client: AdsClient, *types: str) -> dict[str, Response]:
        """Subscribe `client` to `types`, read the first responses and ACK each of them."""
        for type_url in types:
            client.subscribe(type_url, ["http"] if type_url == ROUTE_TYPE else [])
        got = {}
        for _ in types:
            response = await client.recv()
            got[response.type_url] = response
            client.ack(response)
        assert set(got) == set(types)
        await self.acked(client, got.values())
        return got

    async def acked(self, client: AdsClient, responses: Iterable[Response]) -> None:
        """Wait until the server has taken, on the stream of `client`, the ACK of each response."""
        want = {(r.type_url, r.version_info) for r in responses}

        def done() -> bool:
            ids = {s.id for s in self.server.streams() if s.node_id == client.node.id}
            return want <= {(t, v) for i, t, v in self.acks if i in ids}

        await eventually(done, what=f"ACKs of {want} from {client.node.id}")


@contextlib.asynccontextmanager
async def serving(harness_class: Any, key: Callable[[StreamInfo], Any]) -> AsyncIterator[Any]:
    """An ADS server on a free port whose ACKs and NACKs are recorded by `key` of the stream,
    in a harness of `harness_class`; its clients are closed, then the server stopped."""
    acks: list[tuple[Any, str, str]] = []
    nacks: list[tuple[Any, Nack]] = []
    server = AdsServer(
        ObserverFuncs(
            on_ack=lambda info, type_url, version: acks.append((key(info), type_url, version)),
            on_nack=lambda info, nack: nacks.append((key(info), nack)),
        )
    )
    port = await server.start("127.0.0.1:0")
    harness = harness_class(server, port, acks, nacks)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.close()
        await server.stop(0.5)


@pytest.fixture
async def ads() -> AsyncIterator[Harness]:
    async with serving(Harness, lambda info: info.id) as harness:
        yield harness


SITE_A = site("a", "a.example.test", "svc-a")
SITE_B = site("b", "b.example.test", "svc-b")
CLUSTER_A = "default/svc-a/80"
CLUSTER_B = "default/svc-b/80"


# -- 1. node ---------------------------------------------------------------------------------


async def test_node_is_remembered_from_the_first_request(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect(node_id="gw-7", cluster="edge-eu")
    client.subscribe(CLUSTER_TYPE)  # carries the node
    cds = await client.recv()
    info = ads.stream("gw-7")
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")

    client.ack(cds)  # no node
    client.send(LISTENER_TYPE, [], node=False)
    lds = await client.recv()
    assert lds.type_url == LISTENER_TYPE
    client.ack(lds)
    client.send(ROUTE_TYPE, ["http"], node=False)
    assert (await client.recv()).type_url == ROUTE_TYPE

    [info] = ads.server.streams()
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")


# -- 2. nonces -------------------------------------------------------------------------------


async def test_each_response_has_a_fresh_nonce(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    first = await ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    nonces = [r.nonce for r in first.values()]
    for sites in ([SITE_A, SITE_B], [SITE_B], [SITE_A]):
        ads.server.publish(build(*sites))
        # CDS and RDS change (the listener does not), and a CDS dropping a cluster may follow
        got = await client.ack_until_quiet()
        assert len(got) >= 2
        nonces.extend(r.nonce for r in got)
    assert len(nonces) >= 10
    assert all(nonces), nonces
    assert len(set(nonces)) == len(nonces), nonces

    # a new stream starts fresh: its own nonces, and nothing carried over from the old one
    again = ads.connect(node_id="envoy-2")
    second = await ads.settle(again, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    fresh = [r.nonce for r in second.values()]
    assert all(fresh), fresh
    assert len(set(fresh)) == len(fresh), fresh


async def test_new_stream_ignores_nonces_of_an_old_stream(ads: Harness) -> None:
    """A nonce belongs to the stream that sent it; a first request on a new stream is never stale."""
    ads.server.publish(build(SITE_A))
    old = ads.connect(node_id="envoy-old")
    got = await ads.settle(old, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    await old.close()

    new = ads.connect(node_id="envoy-new")
    for type_url in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        # a client that kept the nonce of its previous stream: the server sent nothing on this
        # stream yet, so the request cannot be older than anything and must be answered
        new.send(
            type_url,
            ["http"] if type_url == ROUTE_TYPE else [],
            version=got[type_url].version_info,
            nonce=got[type_url].nonce,
        )
    again = {r.type_url: r for r in await new.recv_n(3)}
    assert {t: r.version_info for t, r in again.items()} == {t: r.version_info for t, r in got.items()}


# -- 3. ACK ----------------------------------------------------------------------------------


async def test_ack_is_reported_and_not_answered(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    client.subscribe(CLUSTER_TYPE)
    cds = await client.recv()
    assert names(cds) == [CLUSTER_A]
    assert ads.acks == []

    client.ack(cds)
    await ads.acked(client, [cds])
    info = ads.stream("envoy-1")
    assert ads.acks == [(info.id, CLUSTER_TYPE, cds.version_info)]
    assert info.acked_version(CLUSTER_TYPE) == cds.version_info
    assert ads.nacks == []
    await client.expect_quiet()

    # the same ACK again (as Envoy sends when it re-requests a type) gets no answer either
    client.send(CLUSTER_TYPE, version=cds.version_info, nonce=cds.nonce)
    await client.expect_quiet()
    assert len(ads.acks) == 2


# -- 4. NACK ---------------------------------------------------------------------------------


async def test_nack_is_reported_and_not_answered_with_the_same_version(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    good = (await ads.settle(client, CLUSTER_TYPE))[CLUSTER_TYPE]
    ads.acks.clear()

    ads.server.publish(build(SITE_A, SITE_B))
    bad = await client.recv()
    assert bad.type_url == CLUSTER_TYPE
    assert bad.version_info != good.version_info
    client.nack(bad, "cluster default/svc-b/80: invalid")

    await eventually(lambda: ads.nacks, what="the NACK callback")
    info = ads.stream("envoy-1")
    [(stream_id, nack)] = ads.nacks
    assert stream_id == info.id
    assert (nack.type_url, nack.version, nack.message) == (
        CLUSTER_TYPE,
        bad.version_info,
        "cluster default/svc-b/80: invalid",
    )
    assert info.last_nack == nack
    assert ads.acks == []  # a NACK carries the old version: it must not count as an ACK of it
    # the rejected version is never sent again, although the client holds an older one
    await client.expect_quiet(0.5)

    # a snapshot that changes nothing the client was sent does not resend the rejected version
    assert ads.server.publish(with_routes(build(SITE_A, SITE_B), "unrelated"))
    await client.expect_quiet()

    ads.server.publish(build(SITE_B))
    fixed = await client.recv()
    assert fixed.type_url == CLUSTER_TYPE
    assert fixed.version_info not in (good.version_info, bad.version_info)
    assert names(fixed) == [CLUSTER_B]
    client.ack(fixed)
    await ads.acked(client, [fixed])
    assert info.last_nack is None


async def test_ack_or_nack_is_decided_by_error_detail_not_by_version(ads: Harness) -> None:
    """After a NACK the client still holds the old version; its next request is no second NACK."""
    ads.server.publish(with_routes(build(SITE_A), "other"))
    client = ads.connect()
    good = (await ads.settle(client, ROUTE_TYPE))[ROUTE_TYPE]
    ads.server.publish(with_routes(build(SITE_A, SITE_B), "other"))
    bad = await client.recv()
    client.nack(bad, "route http: invalid")
    await eventually(lambda: ads.nacks, what="the NACK callback")

    # the client now asks for one more route: old version, newest nonce, no error_detail
    client.send(ROUTE_TYPE, ["http", "other"], version=good.version_info, nonce=bad.nonce)
    more = await client.recv()
    assert sorted(names(more)) == ["http", "other"]
    assert len(ads.nacks) == 1, ads.nacks
    assert ads.stream("envoy-1").last_nack is None


# -- 5. stale nonce --------------------------------------------------------------------------


async def test_request_with_a_stale_nonce_is_ignored(ads: Harness) -> None:
    base = build(SITE_A)
    ads.server.publish(with_routes(base, "other"))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["http"])
    first = await client.recv()
    assert names(first) == ["http"]

    ads.server.publish(with_routes(build(SITE_A, SITE_B), "other"))  # the client has not ACKed yet
    second = await client.recv()
    assert names(second) == ["http"]
    assert second.nonce != first.nonce

    # the ACK of the first response arrives late, and asks for one more route: it is stale
    client.send(ROUTE_TYPE, ["http", "other"], version=first.version_info, nonce=first.nonce)
    await client.expect_quiet()
    info = ads.stream("envoy-1")
    assert info.acked_version(ROUTE_TYPE) == ""

    client.send(ROUTE_TYPE, ["http"], version=second.version_info, nonce=second.nonce)
    await ads.acked(client, [second])
    assert ads.acks == [(info.id, ROUTE_TYPE, second.version_info)]
    await client.expect_quiet()


# -- 6. type order ---------------------------------------------------------------------------


async def test_types_are_sent_clusters_then_listeners_then_routes(ads: Harness) -> None:
    client = ads.connect()
    # subscribe in the reverse order, before there is anything to send
    client.subscribe(ROUTE_TYPE, ["http"])
    client.subscribe(LISTENER_TYPE)
    client.subscribe(CLUSTER_TYPE)
    await eventually(
        lambda: ads.server.streams() and len(ads.server.streams()[0].types) == 3,
        what="the three subscriptions",
    )
    ads.server.publish(build(SITE_A))
    first = await client.recv_n(3)
    assert [r.type_url for r in first] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    for response in first:
        client.ack(response)
    await ads.acked(client, first)

    # a change of every type: a new cluster, a new listener port, new routes
    ads.server.publish(build(SITE_A, SITE_B, builder=SnapshotBuilder(BuildOptions(http_port=9090))))
    second = await client.recv_n(3)
    assert [r.type_url for r in second] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert all(a.version_info != b.version_info for a, b in zip(first, second, strict=True))
    assert sorted(names(second[0])) == [CLUSTER_A, CLUSTER_B]
    await client.expect_quiet()


# -- 7. what each type carries ---------------------------------------------------------------


@pytest.mark.parametrize(("cds_names", "lds_names"), [([], ["*"]), (["*"], [])])
async def test_clusters_and_listeners_carry_the_full_set(
    ads: Harness, cds_names: list[str], lds_names: list[str]
) -> None:
    ads.server.publish(build(SITE_A, SITE_B))
    client = ads.connect()
    client.send(CLUSTER_TYPE, cds_names)
    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert sorted(names(cds)) == [CLUSTER_A, CLUSTER_B]
    client.ack(cds)
    client.send(LISTENER_TYPE, lds_names)
    lds = await client.recv()
    assert lds.type_url == LISTENER_TYPE
    assert names(lds) == ["http"]
    client.ack(lds)
    await ads.acked(client, [cds, lds])

    # a cluster removed is absent from the next (full) response, which deletes it in Envoy
    ads.server.publish(build(SITE_B))
    cds2 = await client.recv()
    assert cds2.type_url == CLUSTER_TYPE
    assert names(cds2) == [CLUSTER_B]


async def test_routes_carry_only_the_names_asked_for(ads: Harness) -> None:
    ads.server.publish(with_routes(build(SITE_A), "other", "third"))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["http"])
    rds = await client.recv()
    assert names(rds) == ["http"]
    client.ack(rds)

    client.send(ROUTE_TYPE, ["http", "third"], version=rds.version_info, nonce=rds.nonce)
    rds2 = await client.recv()
    assert sorted(names(rds2)) == ["http", "third"]


async def test_route_asked_for_before_it_exists_is_sent_when_it_appears(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["late"])
    await client.expect_quiet()

    ads.server.publish(build(SITE_A, SITE_B))  # still no "late"
    await client.expect_quiet()

    ads.server.publish(with_routes(build(SITE_A, SITE_B), "late"))
    rds = await client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert names(rds) == ["late"]


# -- 8. fan-out ------------------------------------------------------------------------------


async def test_publish_reaches_every_open_stream(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    clients = [ads.connect(node_id=f"envoy-{i}") for i in range(3)]
    firsts = [(await ads.settle(c, CLUSTER_TYPE, ROUTE_TYPE)) for c in clients]
    assert len(ads.server.streams()) == 3

    ads.server.publish(build(SITE_A, SITE_B))
    for client, first in zip(clients, firsts, strict=True):
        cds, rds = await client.recv_n(2)
        assert (cds.type_url, rds.type_url) == (CLUSTER_TYPE, ROUTE_TYPE)
        assert cds.version_info != first[CLUSTER_TYPE].version_info
        assert sorted(names(cds)) == [CLUSTER_A, CLUSTER_B]
        assert route_clusters(rds) == {CLUSTER_A, CLUSTER_B}


# -- 9. reconnect ----------------------------------------------------------------------------


async def test_reconnecting_client_gets_the_full_current_state(ads: Harness) -> None:
    ads.server.publish(build(SITE_A, SITE_B))
    old = ads.connect()
    got = await ads.settle(old, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    await old.close()
    await eventually(lambda: not ads.server.streams(), what="the old stream to close")

    new = ads.connect()
    new.accepted = {t: r.version_info for t, r in got.items()}  # what the client already has
    new.subscribe(CLUSTER_TYPE)
    new.subscribe(LISTENER_TYPE)
    new.subscribe(ROUTE_TYPE, ["http"])
    again = {r.type_url: r for r in await new.recv_n(3)}
    assert set(again) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    for type_url, response in again.items():
        assert response.version_info == got[type_url].version_info
        assert sorted(names(response)) == sorted(names(got[type_url]))
        assert response.resources == got[type_url].resources


# -- 10. make before break -------------------------------------------------------------------


async def test_old_cluster_is_removed_only_after_the_new_routes_are_acked(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    await ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    moved = site("a", "a.example.test", "svc-a2")
    new_cluster = "default/svc-a2/80"
    ads.server.publish(build(moved))

    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert sorted(names(cds)) == [CLUSTER_A, new_cluster]  # the old one is kept for now
    rds = await client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert route_clusters(rds) == {new_cluster}
    await client.expect_quiet()  # the listener did not change

    client.ack(cds)
    await ads.acked(client, [cds])
    await client.expect_quiet()  # the routes are not ACKed yet: the old cluster stays

    client.ack(rds)
    final = await client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert names(final) == [new_cluster]
    client.ack(final)
    await ads.acked(client, [final])
    await client.expect_quiet()


async def test_old_cluster_waits_for_the_listener_ack_too(ads: Harness) -> None:
    """When the listener changes as well, the old cluster goes only once LDS and RDS are ACKed."""
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    await ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    moved = site("a", "a.example.test", "svc-a2")
    ads.server.publish(build(moved, builder=SnapshotBuilder(BuildOptions(http_port=9090))))
    cds, lds, rds = await client.recv_n(3)
    assert [r.type_url for r in (cds, lds, rds)] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert CLUSTER_A in names(cds)

    client.ack(cds)
    client.ack(rds)
    await ads.acked(client, [cds, rds])
    await client.expect_quiet()  # the listener is not ACKed yet

    client.ack(lds)
    final = await client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert names(final) == ["default/svc-a2/80"]


async def test_a_refused_cluster_set_is_not_sent_again_in_another_form_nor_kept(ads: Harness) -> None:
    """After a NACK of clusters sent with the old ones kept, the same snapshot's clusters are
    not sent again without them; and a cluster only the refused response carried is never
    kept back for make before break (the client does not hold it)."""
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    await ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    refused = site("a", "a.example.test", "svc-refused")
    ads.server.publish(build(refused))
    cds, rds = await client.recv_n(2)
    assert sorted(names(cds)) == [CLUSTER_A, "default/svc-refused/80"]
    client.nack(cds, "cluster default/svc-refused/80: refused")
    client.ack(rds)
    await ads.acked(client, [rds])
    await client.expect_quiet()  # not the same clusters again, with or without the kept one

    ads.server.publish(build(SITE_A))  # back to the last good version
    cds, rds = await client.recv_n(2)
    assert names(cds) == [CLUSTER_A]  # the refused cluster is not kept back
    assert route_clusters(rds) == {CLUSTER_A}


async def test_route_that_does_not_exist_does_not_hold_old_clusters(ads: Harness) -> None:
    """A subscription to a route that was never sent points at no cluster: it cannot delay removal."""
    ads.server.publish(build(SITE_A, SITE_B))
    client = ads.connect()
    await ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE)
    client.subscribe(ROUTE_TYPE, ["late"])
    await client.expect_quiet()

    ads.server.publish(build(SITE_B))
    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert names(cds) == [CLUSTER_B]
    await client.expect_quiet()


# -- 11. unknown types -----------------------------------------------------------------------


async def test_unknown_type_does_not_break_the_stream(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect(node_id="envoy-odd")
    other = ads.connect(node_id="envoy-plain")
    await ads.settle(other, CLUSTER_TYPE)

    client.send(UNKNOWN_TYPE, ["some-secret"])  # the first request, with the node
    client.send(UNKNOWN_TYPE, ["some-secret"], version="1", nonce="42", error="what is this")
    await client.expect_quiet()
    assert ads.nacks == []
    info = ads.stream("envoy-odd")
    assert info.node_id == "envoy-odd"

    client.subscribe(CLUSTER_TYPE)
    cds = await client.recv()
    assert names(cds) == [CLUSTER_A]
    client.ack(cds)
    await ads.acked(client, [cds])

    ads.server.publish(build(SITE_A, SITE_B))
    for c in (client, other):
        response = await c.recv()
        assert response.type_url == CLUSTER_TYPE
        assert sorted(names(response)) == [CLUSTER_A, CLUSTER_B]
    assert len(ads.server.streams()) == 2


# -- 12. deterministic versions --------------------------------------------------------------


def _versions(snapshot: Snapshot) -> dict[str, str]:
    return {"": snapshot.version, **{t: snapshot.of_type(t).version for t in TYPE_ORDER}}


_OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from test_ads_protocol import SITE_A, SITE_B, build, _versions
    print(json.dumps(_versions(build(SITE_A, SITE_B))))
    """
)


def test_versions_are_a_function_of_content() -> None:
    sites = [SITE_A, SITE_B, site("c", "c.example.test", "svc-a")]
    one = SnapshotBuilder().build(sites).snapshot
    two = SnapshotBuilder().build(list(reversed(sites))).snapshot
    assert _versions(one) == _versions(two)
    assert one.version != build(SITE_A).version

    # a builder that has built something else first still gives the same versions
    warm = SnapshotBuilder()
    warm.build([site("x", "x.example.test", "svc-x")])
    assert _versions(warm.build(sites).snapshot) == _versions(one)

    # and so does another process, with another hash seed
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(out.stdout) == _versions(build(SITE_A, SITE_B))


async def test_a_failing_ack_listener_does_not_break_the_stream() -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    server = AdsServer(ObserverFuncs(on_ack=broken, on_nack=broken))
    port = await server.start("127.0.0.1:0")
    client = AdsClient(port)
    try:
        server.publish(build(SITE_A))
        client.subscribe(CLUSTER_TYPE)
        first = await client.recv()
        client.ack(first)  # the listener raises
        server.publish(build(SITE_A, SITE_B))
        second = await client.recv()
        assert CLUSTER_B in names(second)
        client.nack(second, "rejected")  # so does this one
        server.publish(build(SITE_B))
        third = await client.recv()
        assert names(third) == [CLUSTER_B]
    finally:
        await client.close()
        await server.stop(0.5)


async def test_node_with_an_empty_id_is_still_the_streams_node(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect(node_id="", cluster="edge-us")
    client.subscribe(CLUSTER_TYPE)
    client.ack(await client.recv())
    # A later request naming another node does not change the stream's node.
    client.node.id, client.node.cluster = "impostor", "elsewhere"
    client.send(LISTENER_TYPE, [], node=True)
    await client.recv()
    [info] = ads.server.streams()
    assert (info.node_id, info.cluster) == ("", "edge-us")
