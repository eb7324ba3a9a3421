"""The rules of the state-of-the-world ADS protocol (StreamAggregatedResources), on the pure
stream class with the stream bench of `support.streams`; then, over gRPC on loopback, what
only the server's loop shows.

A stream is driven the way Envoy drives it: requests in the order it sends them, responses
read one by one; "nothing is sent" is that the protocol has nothing to send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from support.responses import sotw_route_clusters
from support.sites import CLUSTER_A, CLUSTER_B, SITE_A, SITE_B, build, with_routes
from support.sites import site as make_site
from support.streams import SotwStream, StreamBench
from support.waiting import eventually
from support.wire import serving

from snapshot import SnapshotBuilder
from snapshot.builder import BuildOptions
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from xds_server.ads.server import AdsServer
from xds_server.ads.stream import Nack, StreamInfo
from xds_server.local.ads_client import SotwClient, sotw_names
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.unit

# Sites as a source makes them, in namespace "default".
site = partial(make_site, namespace="default", parsed=True)

UNKNOWN_TYPE = "type.googleapis.com/envoy.config.route.v3.VirtualHost"

Response = discovery_pb2.DiscoveryResponse
names = sotw_names  # the names of the resources a response carries, in order


route_clusters = sotw_route_clusters


# -- the rules, on the pure stream class ------------------------------------------------------


@dataclass
class Harness:
    """The stream bench of one test and the streams opened on it."""

    server: StreamBench = field(default_factory=StreamBench)
    clients: list[SotwStream] = field(default_factory=list)

    @property
    def acks(self) -> list[tuple[Any, str, str]]:
        return self.server.acks

    @property
    def nacks(self) -> list[tuple[Any, Nack]]:
        return self.server.nacks

    def connect(self, node_id: str = "envoy-1", cluster: str = "edge") -> SotwStream:
        client = SotwStream(self.server, node_id, cluster)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        return self.server.stream(node_id)

    def until(self, check: Callable[[], Any], what: str = "") -> Any:
        return self.server.until(check, what)

    def settle(self, client: SotwStream, *types: str) -> dict[str, Response]:
        """Subscribe `client` to `types`, read the first responses and ACK each of them."""
        for type_url in types:
            client.subscribe(type_url, ["http"] if type_url == ROUTE_TYPE else [])
        got = {}
        for _ in types:
            response = client.recv()
            got[response.type_url] = response
            client.ack(response)
        assert set(got) == set(types)
        self.acked(client, got.values())
        return got

    def acked(self, client: SotwStream, responses: Iterable[Response]) -> None:
        """The server has taken, on the stream of `client`, the ACK of each response."""
        want = {(r.type_url, r.version_info) for r in responses}

        def done() -> bool:
            ids = {s.id for s in self.server.streams() if s.node_id == client.node.id}
            return want <= {(t, v) for i, t, v in self.acks if i in ids}

        self.until(done, what=f"ACKs of {want} from {client.node.id}")


@pytest.fixture
def ads() -> Harness:
    return Harness()


def test_each_response_has_a_fresh_nonce(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    first = ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    nonces = [r.nonce for r in first.values()]
    for sites in ([SITE_A, SITE_B], [SITE_B], [SITE_A]):
        ads.server.publish(build(*sites))
        # CDS and RDS change (the listener does not), and a CDS dropping a cluster may follow
        got = client.ack_until_quiet()
        assert len(got) >= 2
        nonces.extend(r.nonce for r in got)
    assert len(nonces) >= 10
    assert all(nonces), nonces
    assert len(set(nonces)) == len(nonces), nonces

    # a new stream starts fresh: its own nonces, and nothing carried over from the old one
    again = ads.connect(node_id="envoy-2")
    second = ads.settle(again, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    fresh = [r.nonce for r in second.values()]
    assert all(fresh), fresh
    assert len(set(fresh)) == len(fresh), fresh


def test_new_stream_ignores_nonces_of_an_old_stream(ads: Harness) -> None:
    """A nonce belongs to the stream that sent it; a first request on a new stream is never stale."""
    ads.server.publish(build(SITE_A))
    old = ads.connect(node_id="envoy-old")
    got = ads.settle(old, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    old.close()

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
    again = {r.type_url: r for r in new.recv_n(3)}
    assert {t: r.version_info for t, r in again.items()} == {t: r.version_info for t, r in got.items()}


def test_ack_is_reported_and_not_answered(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    client.subscribe(CLUSTER_TYPE)
    cds = client.recv()
    assert names(cds) == [CLUSTER_A]
    assert ads.acks == []

    client.ack(cds)
    ads.acked(client, [cds])
    info = ads.stream("envoy-1")
    assert ads.acks == [(info.id, CLUSTER_TYPE, cds.version_info)]
    assert info.acked_version(CLUSTER_TYPE) == cds.version_info
    assert ads.nacks == []
    client.expect_quiet()

    # the same ACK again (as Envoy sends when it re-requests a type) gets no answer either
    client.send(CLUSTER_TYPE, version=cds.version_info, nonce=cds.nonce)
    client.expect_quiet()
    assert len(ads.acks) == 2


def test_nack_is_reported_and_not_answered_with_the_same_version(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    good = (ads.settle(client, CLUSTER_TYPE))[CLUSTER_TYPE]
    ads.acks.clear()

    ads.server.publish(build(SITE_A, SITE_B))
    bad = client.recv()
    assert bad.type_url == CLUSTER_TYPE
    assert bad.version_info != good.version_info
    client.nack(bad, "cluster default/svc-b/80: invalid")

    ads.until(lambda: ads.nacks, what="the NACK callback")
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
    client.expect_quiet()

    # a snapshot that changes nothing the client was sent does not resend the rejected version
    assert ads.server.publish(with_routes(build(SITE_A, SITE_B), "unrelated"))
    client.expect_quiet()

    ads.server.publish(build(SITE_B))
    fixed = client.recv()
    assert fixed.type_url == CLUSTER_TYPE
    assert fixed.version_info not in (good.version_info, bad.version_info)
    assert names(fixed) == [CLUSTER_B]
    client.ack(fixed)
    ads.acked(client, [fixed])
    assert info.last_nack is None


def test_ack_or_nack_is_decided_by_error_detail_not_by_version(ads: Harness) -> None:
    """After a NACK the client still holds the old version; its next request is no second NACK."""
    ads.server.publish(with_routes(build(SITE_A), "other"))
    client = ads.connect()
    good = (ads.settle(client, ROUTE_TYPE))[ROUTE_TYPE]
    ads.server.publish(with_routes(build(SITE_A, SITE_B), "other"))
    bad = client.recv()
    client.nack(bad, "route http: invalid")
    ads.until(lambda: ads.nacks, what="the NACK callback")

    # the client now asks for one more route: old version, newest nonce, no error_detail
    client.send(ROUTE_TYPE, ["http", "other"], version=good.version_info, nonce=bad.nonce)
    more = client.recv()
    assert sorted(names(more)) == ["http", "other"]
    assert len(ads.nacks) == 1, ads.nacks
    assert ads.stream("envoy-1").last_nack is None


def test_request_with_a_stale_nonce_is_ignored(ads: Harness) -> None:
    base = build(SITE_A)
    ads.server.publish(with_routes(base, "other"))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["http"])
    first = client.recv()
    assert names(first) == ["http"]

    ads.server.publish(with_routes(build(SITE_A, SITE_B), "other"))  # the client has not ACKed yet
    second = client.recv()
    assert names(second) == ["http"]
    assert second.nonce != first.nonce

    # the ACK of the first response arrives late, and asks for one more route: it is stale
    client.send(ROUTE_TYPE, ["http", "other"], version=first.version_info, nonce=first.nonce)
    client.expect_quiet()
    info = ads.stream("envoy-1")
    assert info.acked_version(ROUTE_TYPE) == ""

    client.send(ROUTE_TYPE, ["http"], version=second.version_info, nonce=second.nonce)
    ads.acked(client, [second])
    assert ads.acks == [(info.id, ROUTE_TYPE, second.version_info)]
    client.expect_quiet()


def test_types_are_sent_clusters_then_listeners_then_routes(ads: Harness) -> None:
    client = ads.connect()
    # subscribe in the reverse order, before there is anything to send
    client.subscribe(ROUTE_TYPE, ["http"])
    client.subscribe(LISTENER_TYPE)
    client.subscribe(CLUSTER_TYPE)
    ads.until(
        lambda: ads.server.streams() and len(ads.server.streams()[0].types) == 3,
        what="the three subscriptions",
    )
    ads.server.publish(build(SITE_A))
    first = client.recv_n(3)
    assert [r.type_url for r in first] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    for response in first:
        client.ack(response)
    ads.acked(client, first)

    # a change of every type: a new cluster, a new listener port, new routes
    ads.server.publish(build(SITE_A, SITE_B, builder=SnapshotBuilder(BuildOptions(http_port=9090))))
    second = client.recv_n(3)
    assert [r.type_url for r in second] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert all(a.version_info != b.version_info for a, b in zip(first, second, strict=True))
    assert sorted(names(second[0])) == [CLUSTER_A, CLUSTER_B]
    client.expect_quiet()


@pytest.mark.parametrize(("cds_names", "lds_names"), [([], ["*"]), (["*"], [])])
def test_clusters_and_listeners_carry_the_full_set(
    ads: Harness, cds_names: list[str], lds_names: list[str]
) -> None:
    ads.server.publish(build(SITE_A, SITE_B))
    client = ads.connect()
    client.send(CLUSTER_TYPE, cds_names)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert sorted(names(cds)) == [CLUSTER_A, CLUSTER_B]
    client.ack(cds)
    client.send(LISTENER_TYPE, lds_names)
    lds = client.recv()
    assert lds.type_url == LISTENER_TYPE
    assert names(lds) == ["http"]
    client.ack(lds)
    ads.acked(client, [cds, lds])

    # a cluster removed is absent from the next (full) response, which deletes it in Envoy
    ads.server.publish(build(SITE_B))
    cds2 = client.recv()
    assert cds2.type_url == CLUSTER_TYPE
    assert names(cds2) == [CLUSTER_B]


def test_routes_carry_only_the_names_asked_for(ads: Harness) -> None:
    ads.server.publish(with_routes(build(SITE_A), "other", "third"))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["http"])
    rds = client.recv()
    assert names(rds) == ["http"]
    client.ack(rds)

    client.send(ROUTE_TYPE, ["http", "third"], version=rds.version_info, nonce=rds.nonce)
    rds2 = client.recv()
    assert sorted(names(rds2)) == ["http", "third"]


def test_route_asked_for_before_it_exists_is_sent_when_it_appears(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, ["late"])
    client.expect_quiet()

    ads.server.publish(build(SITE_A, SITE_B))  # still no "late"
    client.expect_quiet()

    ads.server.publish(with_routes(build(SITE_A, SITE_B), "late"))
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert names(rds) == ["late"]


def test_reconnecting_client_gets_the_full_current_state(ads: Harness) -> None:
    ads.server.publish(build(SITE_A, SITE_B))
    old = ads.connect()
    got = ads.settle(old, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    old.close()
    ads.until(lambda: not ads.server.streams(), what="the old stream to close")

    new = ads.connect()
    new.accepted = {t: r.version_info for t, r in got.items()}  # what the client already has
    new.subscribe(CLUSTER_TYPE)
    new.subscribe(LISTENER_TYPE)
    new.subscribe(ROUTE_TYPE, ["http"])
    again = {r.type_url: r for r in new.recv_n(3)}
    assert set(again) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    for type_url, response in again.items():
        assert response.version_info == got[type_url].version_info
        assert sorted(names(response)) == sorted(names(got[type_url]))
        assert response.resources == got[type_url].resources


def test_old_cluster_is_removed_only_after_the_new_routes_are_acked(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    moved = site("a", "a.example.test", "svc-a2")
    new_cluster = "default/svc-a2/80"
    ads.server.publish(build(moved))

    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert sorted(names(cds)) == [CLUSTER_A, new_cluster]  # the old one is kept for now
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert route_clusters(rds) == {new_cluster}
    client.expect_quiet()  # the listener did not change

    client.ack(cds)
    ads.acked(client, [cds])
    client.expect_quiet()  # the routes are not ACKed yet: the old cluster stays

    client.ack(rds)
    final = client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert names(final) == [new_cluster]
    client.ack(final)
    ads.acked(client, [final])
    client.expect_quiet()


def test_old_cluster_waits_for_the_listener_ack_too(ads: Harness) -> None:
    """When the listener changes as well, the old cluster goes only once LDS and RDS are ACKed."""
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    moved = site("a", "a.example.test", "svc-a2")
    ads.server.publish(build(moved, builder=SnapshotBuilder(BuildOptions(http_port=9090))))
    cds, lds, rds = client.recv_n(3)
    assert [r.type_url for r in (cds, lds, rds)] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert CLUSTER_A in names(cds)

    client.ack(cds)
    client.ack(rds)
    ads.acked(client, [cds, rds])
    client.expect_quiet()  # the listener is not ACKed yet

    client.ack(lds)
    final = client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert names(final) == ["default/svc-a2/80"]


def test_a_refused_cluster_set_is_not_sent_again_in_another_form_nor_kept(ads: Harness) -> None:
    """After a NACK of clusters sent with the old ones kept, the same snapshot's clusters are
    not sent again without them; and a cluster only the refused response carried is never
    kept back for make before break (the client does not hold it)."""
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)

    refused = site("a", "a.example.test", "svc-refused")
    ads.server.publish(build(refused))
    cds, rds = client.recv_n(2)
    assert sorted(names(cds)) == [CLUSTER_A, "default/svc-refused/80"]
    client.nack(cds, "cluster default/svc-refused/80: refused")
    client.ack(rds)
    ads.acked(client, [rds])
    client.expect_quiet()  # not the same clusters again, with or without the kept one

    ads.server.publish(build(SITE_A))  # back to the last good version
    cds, rds = client.recv_n(2)
    assert names(cds) == [CLUSTER_A]  # the refused cluster is not kept back
    assert route_clusters(rds) == {CLUSTER_A}


def test_route_that_does_not_exist_does_not_hold_old_clusters(ads: Harness) -> None:
    """A subscription to a route that was never sent points at no cluster: it cannot delay removal."""
    ads.server.publish(build(SITE_A, SITE_B))
    client = ads.connect()
    ads.settle(client, CLUSTER_TYPE, LISTENER_TYPE)
    client.subscribe(ROUTE_TYPE, ["late"])
    client.expect_quiet()

    ads.server.publish(build(SITE_B))
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert names(cds) == [CLUSTER_B]
    client.expect_quiet()


# -- over gRPC: what only the server's loop shows ----------------------------------------------


@dataclass
class WireHarness:
    server: AdsServer
    port: int
    acks: list[tuple[int, str, str]] = field(default_factory=list)
    nacks: list[tuple[int, Nack]] = field(default_factory=list)
    clients: list[SotwClient] = field(default_factory=list)

    def connect(self, node_id: str = "envoy-1", cluster: str = "edge") -> SotwClient:
        client = SotwClient(self.port, node_id, cluster)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        found = [s for s in self.server.streams() if s.node_id == node_id]
        assert len(found) == 1, f"expected one stream of node {node_id}, got {self.server.streams()}"
        return found[0]

    async def settle(self, client: SotwClient, *types: str) -> dict[str, Response]:
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

    async def acked(self, client: SotwClient, responses: Iterable[Response]) -> None:
        """Wait until the server has taken, on the stream of `client`, the ACK of each response."""
        want = {(r.type_url, r.version_info) for r in responses}

        def done() -> bool:
            ids = {s.id for s in self.server.streams() if s.node_id == client.node.id}
            return want <= {(t, v) for i, t, v in self.acks if i in ids}

        await eventually(done, what=f"ACKs of {want} from {client.node.id}")


@pytest.fixture
async def wire() -> AsyncIterator[WireHarness]:
    async with serving(WireHarness, lambda info: info.id) as harness:
        yield harness


async def test_node_is_remembered_from_the_first_request(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    client = wire.connect(node_id="gw-7", cluster="edge-eu")
    client.subscribe(CLUSTER_TYPE)  # carries the node
    cds = await client.recv()
    info = wire.stream("gw-7")
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")

    client.ack(cds)  # no node
    client.send(LISTENER_TYPE, [], node=False)
    lds = await client.recv()
    assert lds.type_url == LISTENER_TYPE
    client.ack(lds)
    client.send(ROUTE_TYPE, ["http"], node=False)
    assert (await client.recv()).type_url == ROUTE_TYPE

    [info] = wire.server.streams()
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")


async def test_publish_reaches_every_open_stream(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    clients = [wire.connect(node_id=f"envoy-{i}") for i in range(3)]
    firsts = [(await wire.settle(c, CLUSTER_TYPE, ROUTE_TYPE)) for c in clients]
    assert len(wire.server.streams()) == 3

    wire.server.publish(build(SITE_A, SITE_B))
    for client, first in zip(clients, firsts, strict=True):
        cds, rds = await client.recv_n(2)
        assert (cds.type_url, rds.type_url) == (CLUSTER_TYPE, ROUTE_TYPE)
        assert cds.version_info != first[CLUSTER_TYPE].version_info
        assert sorted(names(cds)) == [CLUSTER_A, CLUSTER_B]
        assert route_clusters(rds) == {CLUSTER_A, CLUSTER_B}


async def test_unknown_type_does_not_break_the_stream(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    client = wire.connect(node_id="envoy-odd")
    other = wire.connect(node_id="envoy-plain")
    await wire.settle(other, CLUSTER_TYPE)

    client.send(UNKNOWN_TYPE, ["some-secret"])  # the first request, with the node
    client.send(UNKNOWN_TYPE, ["some-secret"], version="1", nonce="42", error="what is this")
    await client.expect_quiet()
    assert wire.nacks == []
    info = wire.stream("envoy-odd")
    assert info.node_id == "envoy-odd"

    client.subscribe(CLUSTER_TYPE)
    cds = await client.recv()
    assert names(cds) == [CLUSTER_A]
    client.ack(cds)
    await wire.acked(client, [cds])

    wire.server.publish(build(SITE_A, SITE_B))
    for c in (client, other):
        response = await c.recv()
        assert response.type_url == CLUSTER_TYPE
        assert sorted(names(response)) == [CLUSTER_A, CLUSTER_B]
    assert len(wire.server.streams()) == 2


async def test_a_failing_ack_listener_does_not_break_the_stream() -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    server = AdsServer(ObserverFuncs(on_ack=broken, on_nack=broken))
    port = await server.start("127.0.0.1:0")
    client = SotwClient(port)
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


async def test_node_with_an_empty_id_is_still_the_streams_node(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    client = wire.connect(node_id="", cluster="edge-us")
    client.subscribe(CLUSTER_TYPE)
    client.ack(await client.recv())
    # A later request naming another node does not change the stream's node.
    client.node.id, client.node.cluster = "impostor", "elsewhere"
    client.send(LISTENER_TYPE, [], node=True)
    await client.recv()
    [info] = wire.server.streams()
    assert (info.node_id, info.cluster) == ("", "edge-us")


async def test_a_stream_that_breaks_is_dropped_and_the_others_go_on(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    gone = wire.connect(node_id="envoy-gone")
    stays = wire.connect(node_id="envoy-stays")
    await wire.settle(gone, CLUSTER_TYPE)
    await wire.settle(stays, CLUSTER_TYPE)

    gone.call.cancel()  # the connection breaks under the request stream
    await eventually(
        lambda: [s.node_id for s in wire.server.streams()] == ["envoy-stays"], what="the broken stream to go"
    )
    wire.server.publish(build(SITE_A, SITE_B))
    cds = await stays.recv()
    assert sorted(names(cds)) == [CLUSTER_A, CLUSTER_B]
