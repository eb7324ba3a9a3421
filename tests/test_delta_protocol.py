"""The rules of the incremental (delta) ADS protocol (DeltaAggregatedResources), on the pure
stream class with the stream bench of `support.streams`; then, over gRPC on loopback, what
only the server's loop shows.

The client keeps what Envoy keeps: an accumulated view of every type (name -> version),
updated from each response (`resources` add or replace, `removed_resources` delete). Comparing
that view with the published snapshot is the strongest check a test can make.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from support.responses import delta_route_clusters, sotw_route_clusters
from support.sites import CLUSTER_A, CLUSTER_B, SITE_A, SITE_B, build
from support.sites import site as make_site
from support.streams import DeltaStream, StreamBench
from support.waiting import eventually
from support.wire import serving

from snapshot import EMPTY, SnapshotBuilder, StaticSite
from snapshot.builder import BuildOptions
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, ResourceSet, Snapshot
from xds_server.ads.server import AdsServer
from xds_server.ads.stream import Nack, StreamInfo
from xds_server.local.ads_client import DeltaClient, SotwClient, describe_delta, held, sotw_names
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.unit

# Sites as a source makes them, in namespace "default".
site = partial(make_site, namespace="default", parsed=True)

UNKNOWN_TYPE = "type.googleapis.com/envoy.config.route.v3.VirtualHost"

DeltaRequest = discovery_pb2.DeltaDiscoveryRequest
DeltaResponse = discovery_pb2.DeltaDiscoveryResponse

CLUSTER_A2 = "default/svc-a2/80"
CLUSTER_C = "default/svc-c/80"
SITE_C = site("c", "c.example.test", "svc-c")
SITE_A_MOVED = site(
    "a", "a.example.test", "svc-a2", namespace="default", parsed=True
)  # site a, served by another backend


# -- snapshots -------------------------------------------------------------------------------


def route(name: str, domain: str) -> Resource:
    """A RouteConfiguration whose content (and so version) is decided by `domain`."""
    vhost = route_components_pb2.VirtualHost(name=domain, domains=[domain])
    return Resource.from_message(
        ROUTE_TYPE, name, route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost])
    )


def replace_type(base: Snapshot, rset: ResourceSet) -> Snapshot:
    return Snapshot.of([*(base.of_type(t) for t in TYPE_ORDER if t != rset.type_url), rset])


@dataclass
class Builds:
    """Snapshots built the way the server will see them.

    `derived`: one builder for the whole test, so each snapshot records what changed since
    the previous one and a stream in step takes the incremental path. Otherwise every
    snapshot is built from scratch, and every stream compares whole types.
    """

    derived: bool
    builder: SnapshotBuilder = field(default_factory=SnapshotBuilder)

    def __call__(self, *sites: StaticSite) -> Snapshot:
        return (self.builder if self.derived else SnapshotBuilder()).build(sites).snapshot

    def with_routes(self, base: Snapshot, routes: Mapping[str, str]) -> Snapshot:
        """`base` plus (or with new versions of) the RouteConfigurations `routes` (name -> domain)."""
        rset = base.of_type(ROUTE_TYPE)
        extra = [route(name, domain) for name, domain in routes.items()]
        if self.derived:
            return replace_type(base, rset.evolve(extra))
        kept = [r for r in rset.resources.values() if r.name not in routes]
        return replace_type(base, ResourceSet.of(ROUTE_TYPE, [*kept, *extra]))


@pytest.fixture(params=["derived", "fresh"])
def builds(request: pytest.FixtureRequest) -> Builds:
    return Builds(derived=request.param == "derived")


# -- reading responses -----------------------------------------------------------------------


def names(response: DeltaResponse) -> list[str]:
    """The names of the resources a response carries, sorted."""
    return sorted(r.name for r in response.resources)


def removed(response: DeltaResponse) -> list[str]:
    return sorted(response.removed_resources)


def versions(response: DeltaResponse) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


expected = held  # what a client subscribed to `only` (None: the wildcard) should hold
route_clusters = delta_route_clusters
describe = describe_delta


# -- the rules, on the pure stream class ------------------------------------------------------


@dataclass
class Harness:
    """The stream bench of one test (ACKs and NACKs recorded by node) and its streams."""

    server: StreamBench = field(default_factory=lambda: StreamBench(key="node"))
    clients: list[DeltaStream] = field(default_factory=list)
    _ids: int = 0

    @property
    def acks(self) -> list[tuple[Any, str, str]]:
        return self.server.acks

    @property
    def nacks(self) -> list[tuple[Any, Nack]]:
        return self.server.nacks

    def connect(self, node_id: str | None = None, cluster: str = "edge") -> DeltaStream:
        """A new delta stream; each gets its own node id unless told otherwise."""
        self._ids += 1
        client = DeltaStream(self.server, node_id if node_id is not None else f"envoy-{self._ids}", cluster)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        return self.server.stream(node_id)

    def until(self, check: Callable[[], Any], what: str = "") -> Any:
        return self.server.until(check, what)

    def acks_of(self, node_id: str) -> list[tuple[str, str]]:
        return [(t, v) for n, t, v in self.acks if n == node_id]

    def acked(self, client: DeltaStream) -> None:
        """The server has taken every ACK `client` sent."""
        self.until(
            lambda: len(self.acks_of(client.node.id)) >= client.acks_sent,
            what=f"{client.acks_sent} ACKs from {client.node.id}",
        )

    def settle(self, client: DeltaStream, *routes: str) -> dict[str, DeltaResponse]:
        """Subscribe to clusters and listeners (wildcard) and routes (`routes`, or "http");
        read the first responses and ACK each of them."""
        client.subscribe(CLUSTER_TYPE)
        client.subscribe(LISTENER_TYPE)
        client.subscribe(ROUTE_TYPE, *(routes or ("http",)))
        got = {r.type_url: r for r in client.recv_n(3)}
        assert set(got) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
        for response in got.values():
            client.ack(response)
        self.acked(client)
        return got


@pytest.fixture
def ads() -> Harness:
    return Harness()


@pytest.mark.parametrize("wildcard", [(), ("*",)], ids=["legacy", "explicit"])
def test_wildcard_gets_every_cluster_and_listener(ads: Harness, wildcard: tuple[str, ...]) -> None:
    first = build(SITE_A, SITE_B)
    ads.server.publish(first)
    client = ads.connect()
    client.subscribe(CLUSTER_TYPE, *wildcard)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert names(cds) == [CLUSTER_A, CLUSTER_B]
    assert removed(cds) == []
    assert cds.system_version_info == first.of_type(CLUSTER_TYPE).version
    client.ack(cds)
    client.subscribe(LISTENER_TYPE, *wildcard)
    lds = client.recv()
    assert lds.type_url == LISTENER_TYPE
    assert names(lds) == ["http"]
    client.ack(lds)
    ads.acked(client)

    # the wildcard follows the set (the ACKs, which name nothing, did not end it)
    second = build(SITE_A, SITE_B, SITE_C)
    ads.server.publish(second)
    cds2 = client.recv()
    assert cds2.type_url == CLUSTER_TYPE
    assert names(cds2) == [CLUSTER_C]
    client.ack(cds2)
    client.expect_quiet()
    client.assert_holds(second)


def test_first_response_is_sent_even_when_there_is_nothing(ads: Harness) -> None:
    """Envoy's initialization waits for a first CDS and LDS response: an empty one must come."""
    ads.server.publish(EMPTY)
    client = ads.connect()
    client.subscribe(CLUSTER_TYPE)
    client.subscribe(LISTENER_TYPE)
    got = client.recv_n(2)
    assert [r.type_url for r in got] == [CLUSTER_TYPE, LISTENER_TYPE]
    for response in got:
        assert (names(response), removed(response)) == ([], [])
        assert response.system_version_info == EMPTY.of_type(response.type_url).version
        client.ack(response)
    ads.acked(client)
    client.expect_quiet()  # the empty answer is sent once

    no_sites = build()  # a listener, routes, and no cluster
    ads.server.publish(no_sites)
    lds = client.recv()
    assert (lds.type_url, names(lds)) == (LISTENER_TYPE, ["http"])
    client.ack(lds)
    client.expect_quiet()  # still no cluster: nothing to say about clusters

    ads.server.publish(build(SITE_A))
    cds = client.recv()
    assert (cds.type_url, names(cds)) == (CLUSTER_TYPE, [CLUSTER_A])


def test_first_cds_request_on_a_snapshot_without_clusters_is_answered(ads: Harness) -> None:
    ads.server.publish(build())
    client = ads.connect()
    client.subscribe(CLUSTER_TYPE)
    cds = client.recv()
    assert (cds.type_url, names(cds), removed(cds)) == (CLUSTER_TYPE, [], [])
    client.expect_quiet()


def test_adding_a_site_sends_only_its_cluster_and_the_routes(ads: Harness, builds: Builds) -> None:
    ads.server.publish(builds(SITE_A))
    client = ads.connect()
    ads.settle(client)

    after = builds(SITE_A, SITE_B)
    ads.server.publish(after)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert names(cds) == [CLUSTER_B]  # not the cluster the client already has
    assert removed(cds) == []
    assert versions(cds) == expected(after, CLUSTER_TYPE, {CLUSTER_B})  # each its own version
    assert cds.system_version_info == after.of_type(CLUSTER_TYPE).version
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert versions(rds) == expected(after, ROUTE_TYPE, {"http"})
    assert rds.system_version_info == after.of_type(ROUTE_TYPE).version
    assert route_clusters(rds) == {CLUSTER_A, CLUSTER_B}
    client.expect_quiet()  # the listener did not change
    client.ack(cds)
    client.ack(rds)
    ads.acked(client)
    client.assert_holds(after)


def test_removing_a_site_removes_its_cluster(ads: Harness, builds: Builds) -> None:
    ads.server.publish(builds(SITE_A, SITE_B))
    client = ads.connect()
    ads.settle(client)

    after = builds(SITE_A)
    ads.server.publish(after)
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert route_clusters(rds) == {CLUSTER_A}
    client.expect_quiet()  # the cluster goes once the routes that used it are gone
    client.ack(rds)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert (names(cds), removed(cds)) == ([], [CLUSTER_B])
    assert cds.system_version_info == after.of_type(CLUSTER_TYPE).version
    client.ack(cds)
    ads.acked(client)
    client.assert_holds(after)


def test_a_cluster_still_used_by_another_site_is_not_removed(ads: Harness, builds: Builds) -> None:
    shares_a = site("c", "c.example.test", "svc-a")
    ads.server.publish(builds(SITE_A, shares_a))
    client = ads.connect()
    got = ads.settle(client)
    assert names(got[CLUSTER_TYPE]) == [CLUSTER_A]

    after = builds(SITE_A)
    ads.server.publish(after)
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    client.ack(rds)
    ads.acked(client)
    client.expect_quiet()
    client.assert_holds(after)


def test_reconnect_with_initial_versions_gets_only_what_differs(ads: Harness) -> None:
    ads.server.publish(build(SITE_A, SITE_B))
    old = ads.connect()
    ads.settle(old)
    had = copy.deepcopy(old.view)
    old.close()

    after = build(SITE_A, SITE_C)  # B went, C came, the routes changed, the listener did not
    ads.server.publish(after)
    new = ads.connect()
    new.view = copy.deepcopy(had)
    new.subscribe(CLUSTER_TYPE, initial=had[CLUSTER_TYPE])
    cds = new.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert names(cds) == [CLUSTER_C]
    assert removed(cds) == [CLUSTER_B]  # it has B, which no longer exists
    new.ack(cds)
    new.subscribe(LISTENER_TYPE, initial=had[LISTENER_TYPE])
    lds = new.recv()
    assert (lds.type_url, names(lds), removed(lds)) == (LISTENER_TYPE, [], [])
    new.ack(lds)
    new.subscribe(ROUTE_TYPE, "http", initial=had[ROUTE_TYPE])
    rds = new.recv()
    assert (rds.type_url, names(rds), removed(rds)) == (ROUTE_TYPE, ["http"], [])
    new.ack(rds)
    ads.acked(new)
    new.expect_quiet()
    new.assert_holds(after)


def test_reconnect_removes_a_route_that_no_longer_exists(ads: Harness) -> None:
    ads.server.publish(Builds(derived=False).with_routes(build(SITE_A), {"old": "old.test"}))
    old = ads.connect()
    ads.settle(old, "http", "old")
    had = copy.deepcopy(old.view)
    assert set(had[ROUTE_TYPE]) == {"http", "old"}
    old.close()

    after = build(SITE_A)
    ads.server.publish(after)
    new = ads.connect()
    new.view = copy.deepcopy(had)
    new.subscribe(ROUTE_TYPE, "http", "old", initial=had[ROUTE_TYPE])
    rds = new.recv()
    assert rds.type_url == ROUTE_TYPE
    assert names(rds) == []  # it has "http" at the current version
    assert removed(rds) == ["old"]
    new.ack(rds)
    ads.acked(new)
    new.expect_quiet()
    new.assert_holds(after)


@pytest.mark.parametrize("wildcard", [(), ("*",)], ids=["legacy", "explicit"])
def test_reconnect_with_everything_current_gets_empty_answers_only(
    ads: Harness, wildcard: tuple[str, ...]
) -> None:
    current = build(SITE_A, SITE_B)
    ads.server.publish(current)
    old = ads.connect()
    first = ads.settle(old)
    had = copy.deepcopy(old.view)
    old.close()

    new = ads.connect()
    new.view = copy.deepcopy(had)
    new.subscribe(CLUSTER_TYPE, *wildcard, initial=had[CLUSTER_TYPE])
    new.subscribe(LISTENER_TYPE, *wildcard, initial=had[LISTENER_TYPE])
    new.subscribe(ROUTE_TYPE, "http", initial=had[ROUTE_TYPE])
    got = {r.type_url: r for r in new.recv_n(3)}
    assert set(got) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    for type_url, response in got.items():
        assert (names(response), removed(response)) == ([], []), describe(response)
        assert response.system_version_info == first[type_url].system_version_info
        new.ack(response)
    ads.acked(new)
    new.expect_quiet()
    new.assert_holds(current)

    # the stream is live: a change arrives as usual
    after = build(SITE_A, SITE_B, SITE_C)
    ads.server.publish(after)
    cds = new.recv()
    assert (cds.type_url, names(cds)) == (CLUSTER_TYPE, [CLUSTER_C])


def test_routes_are_subscribed_and_unsubscribed_by_name(ads: Harness) -> None:
    fresh = Builds(derived=False)
    ads.server.publish(fresh.with_routes(build(SITE_A), {"other": "o.test", "third": "t.test"}))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, "http")
    rds = client.recv()
    assert (rds.type_url, names(rds), removed(rds)) == (ROUTE_TYPE, ["http"], [])
    client.ack(rds)

    client.subscribe(ROUTE_TYPE, "third")
    rds2 = client.recv()
    assert (names(rds2), removed(rds2)) == (["third"], [])  # not "http" again, not "other"
    client.ack(rds2)

    # subscribing to a name the client already has means "send it again"
    client.subscribe(ROUTE_TYPE, "http")
    rds3 = client.recv()
    assert versions(rds3) == versions(rds)
    client.ack(rds3)
    ads.acked(client)

    client.unsubscribe(ROUTE_TYPE, "third")
    client.expect_quiet()  # an unsubscription is not answered
    after = fresh.with_routes(build(SITE_A, SITE_B), {"other": "o2.test", "third": "t2.test"})
    ads.server.publish(after)
    rds4 = client.recv()
    assert (names(rds4), removed(rds4)) == (["http"], [])  # "third" changed, but it is dropped
    client.ack(rds4)
    client.assert_holds(after)


def test_subscriptions_apply_even_with_a_stale_nonce(ads: Harness) -> None:
    fresh = Builds(derived=False)
    ads.server.publish(fresh.with_routes(build(SITE_A), {"other": "o.test"}))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, "http")
    old = client.recv()
    ads.server.publish(fresh.with_routes(build(SITE_A, SITE_B), {"other": "o.test"}))
    new = client.recv()  # the client has not ACKed `old` yet: its nonce is now stale
    assert new.nonce != old.nonce

    client.send(ROUTE_TYPE, ["other"], nonce=old.nonce)
    got = client.recv()
    assert (names(got), removed(got)) == (["other"], [])
    client.send(ROUTE_TYPE, [], ["other"], nonce=old.nonce)
    client.expect_quiet()

    after = fresh.with_routes(build(SITE_B), {"other": "o2.test"})
    ads.server.publish(after)
    rds = client.recv()
    assert (names(rds), removed(rds)) == (["http"], [])  # "other" changed, but it was dropped
    client.assert_holds(after)


def test_a_missing_name_is_answered_removed_once_then_sent_when_it_appears(
    ads: Harness, builds: Builds
) -> None:
    ads.server.publish(builds(SITE_A))
    client = ads.connect()
    client.subscribe(ROUTE_TYPE, "http", "late")
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert (names(rds), removed(rds)) == (["http"], ["late"])  # so the client does not wait
    client.ack(rds)
    ads.acked(client)
    client.expect_quiet()

    # asked again, it is answered again (a subscription the client makes is always answered)
    client.subscribe(ROUTE_TYPE, "late")
    again = client.recv()
    assert (names(again), removed(again)) == ([], ["late"])
    client.ack(again)
    ads.acked(client)

    # later changes do not repeat it
    second = builds(SITE_A, SITE_B)
    ads.server.publish(second)
    rds2 = client.recv()
    assert (names(rds2), removed(rds2)) == (["http"], [])
    client.ack(rds2)
    ads.acked(client)
    third = builds.with_routes(second, {"unrelated": "u.test"})
    ads.server.publish(third)
    client.expect_quiet()

    appeared = builds.with_routes(third, {"late": "late.test"})
    ads.server.publish(appeared)
    rds3 = client.recv()
    assert (names(rds3), removed(rds3)) == (["late"], [])
    client.ack(rds3)
    client.assert_holds(appeared)


def test_ack_reports_the_system_version_and_is_not_answered(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect(node_id="gw-1")
    client.subscribe(CLUSTER_TYPE)
    cds = client.recv()
    assert ads.acks == []

    client.ack(cds)
    ads.acked(client)
    info = ads.stream("gw-1")
    assert ads.acks == [("gw-1", CLUSTER_TYPE, cds.system_version_info)]
    assert info.acked_version(CLUSTER_TYPE) == cds.system_version_info
    assert ads.nacks == []
    client.expect_quiet()


def test_nack_is_reported_and_the_rejected_resources_are_not_resent(ads: Harness, builds: Builds) -> None:
    ads.server.publish(builds(SITE_A))
    client = ads.connect(node_id="gw-1")
    ads.settle(client)
    acks_before = len(ads.acks)

    second = builds(SITE_A, SITE_B)
    ads.server.publish(second)
    bad = client.recv()
    assert (bad.type_url, names(bad)) == (CLUSTER_TYPE, [CLUSTER_B])
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    client.nack(bad, "cluster default/svc-b/80: invalid")
    client.ack(rds)

    ads.until(lambda: ads.nacks, what="the NACK callback")
    [(node, nack)] = ads.nacks
    assert node == "gw-1"
    assert (nack.type_url, nack.version, nack.message) == (
        CLUSTER_TYPE,
        bad.system_version_info,
        "cluster default/svc-b/80: invalid",
    )
    info = ads.stream("gw-1")
    assert info.last_nack == nack
    ads.acked(client)
    assert (CLUSTER_TYPE, bad.system_version_info) not in ads.acks_of("gw-1")[acks_before:]
    client.expect_quiet()  # no resend loop

    # a change to something else does not resend the rejected cluster
    third = builds.with_routes(second, {"unrelated": "u.test"})
    ads.server.publish(third)
    client.expect_quiet()

    # a new version of the rejected cluster (and of every other) is sent
    fixed = SnapshotBuilder(BuildOptions(backend_host_template="{service}.{namespace}.internal"))
    fourth = fixed.build([SITE_A, SITE_B]).snapshot
    ads.server.publish(fourth)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert versions(cds) == expected(fourth, CLUSTER_TYPE)
    assert cds.system_version_info not in (bad.system_version_info, "")
    client.ack(cds)
    ads.acked(client)
    assert info.last_nack is None
    client.assert_holds(fourth)


def test_a_change_of_every_type_arrives_cds_then_lds_then_rds(ads: Harness) -> None:
    client = ads.connect(node_id="gw-1")
    # subscribe in the reverse order, before there is anything to send
    client.subscribe(ROUTE_TYPE, "http")
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
    ads.acked(client)

    # a change of every type: a new cluster, a new listener port, new routes
    after = build(SITE_A, SITE_B, builder=SnapshotBuilder(BuildOptions(http_port=9090)))
    ads.server.publish(after)
    second = client.recv_n(3)
    assert [r.type_url for r in second] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert [names(r) for r in second] == [[CLUSTER_B], ["http"], ["http"]]
    for response in second:
        client.ack(response)
    client.expect_quiet()
    client.assert_holds(after)


def test_old_cluster_is_removed_only_after_the_new_routes_are_acked(ads: Harness, builds: Builds) -> None:
    ads.server.publish(builds(SITE_A))
    client = ads.connect()
    ads.settle(client)

    after = builds(SITE_A_MOVED)
    ads.server.publish(after)
    cds = client.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert (names(cds), removed(cds)) == ([CLUSTER_A2], [])  # the old one is kept for now
    rds = client.recv()
    assert rds.type_url == ROUTE_TYPE
    assert route_clusters(rds) == {CLUSTER_A2}
    client.expect_quiet()  # the listener did not change

    client.ack(cds)
    ads.acked(client)
    client.expect_quiet()  # the routes are not ACKed yet: the old cluster stays

    client.ack(rds)
    final = client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert (names(final), removed(final)) == ([], [CLUSTER_A])
    client.ack(final)
    ads.acked(client)
    client.assert_holds(after)


def test_old_cluster_waits_for_the_listener_ack_too(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    ads.settle(client)

    after = build(SITE_A_MOVED, builder=SnapshotBuilder(BuildOptions(http_port=9090)))
    ads.server.publish(after)
    cds, lds, rds = client.recv_n(3)
    assert [r.type_url for r in (cds, lds, rds)] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert removed(cds) == []
    client.ack(cds)
    client.ack(rds)
    ads.acked(client)
    client.expect_quiet()  # the listener is not ACKed yet

    client.ack(lds)
    final = client.recv()
    assert (final.type_url, names(final), removed(final)) == (CLUSTER_TYPE, [], [CLUSTER_A])
    client.ack(final)
    client.assert_holds(after)


def test_a_cluster_the_client_never_had_is_never_held(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect()
    ads.settle(client)

    after = build(SITE_A_MOVED)
    ads.server.publish(after)
    cds, rds = client.recv_n(2)
    assert (cds.type_url, rds.type_url) == (CLUSTER_TYPE, ROUTE_TYPE)
    client.ack(cds)  # the routes stay un-ACKed: the old cluster is held

    client.subscribe(CLUSTER_TYPE, "default/nope/80")
    missing = client.recv()
    assert missing.type_url == CLUSTER_TYPE
    assert (names(missing), removed(missing)) == ([], ["default/nope/80"])  # answered at once
    client.ack(missing)
    ads.acked(client)
    client.expect_quiet()

    client.ack(rds)
    final = client.recv()
    assert (final.type_url, names(final), removed(final)) == (CLUSTER_TYPE, [], [CLUSTER_A])
    client.ack(final)
    client.assert_holds(after)


def test_a_route_that_does_not_exist_does_not_hold_old_clusters(ads: Harness) -> None:
    """A subscription answered as removed points at no cluster: it cannot delay a removal."""
    ads.server.publish(build(SITE_A, SITE_B))
    client = ads.connect()
    ads.settle(client, "late")  # no "http": the only route asked for does not exist
    assert client.view[ROUTE_TYPE] == {}

    after = build(SITE_B)
    ads.server.publish(after)
    cds = client.recv()
    assert (cds.type_url, names(cds), removed(cds)) == (CLUSTER_TYPE, [], [CLUSTER_A])
    client.ack(cds)
    client.expect_quiet()
    client.assert_holds(after)


def test_a_stream_that_skipped_a_snapshot_converges(ads: Harness) -> None:
    builds = Builds(derived=True)  # each snapshot records its changes since the one before
    site_d, site_e, site_f = (site(n, f"{n}.example.test", f"svc-{n}") for n in "def")
    ads.server.publish(builds(SITE_A, SITE_B))
    client = ads.connect()
    ads.settle(client)

    # Two changes back to back: the stream cannot run in between, so it skips the first, and
    # the changes recorded in the second (against the first) are not what it needs.
    rounds = [
        # what the skipped snapshot did matters: E comes in it, B goes in it
        (builds(SITE_A, SITE_B, site_e), builds(SITE_A, site_e, site_f)),
        # the skipped snapshot's changes are undone: C comes and goes, A goes and comes back
        (builds(SITE_C, site_e, site_f), builds(SITE_A, site_d, site_e, site_f)),
    ]
    for skipped, current in rounds:
        ads.server.publish(skipped)
        ads.server.publish(current)
        got = client.ack_until_quiet()
        assert got
        for response in got:
            assert response.system_version_info != skipped.of_type(response.type_url).version
            assert CLUSTER_C not in response.removed_resources  # it never had C
            assert CLUSTER_C not in names(response)
        client.assert_holds(current)


def test_a_garbage_nonce_is_ignored(ads: Harness) -> None:
    ads.server.publish(build(SITE_A))
    client = ads.connect(node_id="gw-1")
    ads.settle(client)
    acks = len(ads.acks)

    client.send(CLUSTER_TYPE, nonce="not-a-nonce")
    client.send(LISTENER_TYPE, nonce="999999", error="rejected what?")
    client.send(ROUTE_TYPE, nonce="garbage", error="rejected what?")
    client.expect_quiet()
    assert len(ads.acks) == acks
    assert ads.nacks == []
    assert ads.stream("gw-1").last_nack is None

    after = build(SITE_A, SITE_B)
    ads.server.publish(after)
    got = client.ack_until_quiet()
    assert [r.type_url for r in got] == [CLUSTER_TYPE, ROUTE_TYPE]
    client.assert_holds(after)


# -- over gRPC: what only the server's loop shows ----------------------------------------------


@dataclass
class WireHarness:
    server: AdsServer
    port: int
    acks: list[tuple[str, str, str]] = field(default_factory=list)  # node, type, version
    nacks: list[tuple[str, Nack]] = field(default_factory=list)
    clients: list[DeltaClient | SotwClient] = field(default_factory=list)
    _ids: int = 0

    def connect(self, node_id: str | None = None, cluster: str = "edge") -> DeltaClient:
        """A new delta stream; each gets its own node id unless told otherwise."""
        self._ids += 1
        client = DeltaClient(self.port, node_id if node_id is not None else f"envoy-{self._ids}", cluster)
        self.clients.append(client)
        return client

    def connect_sotw(self, node_id: str) -> SotwClient:
        client = SotwClient(self.port, node_id)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        found = [s for s in self.server.streams() if s.node_id == node_id]
        assert len(found) == 1, f"expected one stream of node {node_id}, got {self.server.streams()}"
        return found[0]

    def acks_of(self, node_id: str) -> list[tuple[str, str]]:
        return [(t, v) for n, t, v in self.acks if n == node_id]

    async def acked(self, client: DeltaClient) -> None:
        """Wait until the server has taken every ACK `client` sent."""
        await eventually(
            lambda: len(self.acks_of(client.node.id)) >= client.acks_sent,
            what=f"{client.acks_sent} ACKs from {client.node.id}",
        )

    async def settle(self, client: DeltaClient, *routes: str) -> dict[str, DeltaResponse]:
        """Subscribe to clusters and listeners (wildcard) and routes (`routes`, or "http");
        read the first responses and ACK each of them."""
        client.subscribe(CLUSTER_TYPE)
        client.subscribe(LISTENER_TYPE)
        client.subscribe(ROUTE_TYPE, *(routes or ("http",)))
        got = {r.type_url: r for r in await client.recv_n(3)}
        assert set(got) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
        for response in got.values():
            client.ack(response)
        await self.acked(client)
        return got


@pytest.fixture
async def wire() -> AsyncIterator[WireHarness]:
    async with serving(WireHarness, lambda info: info.node_id) as harness:
        yield harness


async def test_publish_reaches_delta_and_sotw_streams_at_once(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    deltas = [wire.connect(node_id=f"delta-{i}") for i in range(3)]
    for client in deltas:
        await wire.settle(client)
    sotw = wire.connect_sotw("sotw-0")
    sotw.subscribe(CLUSTER_TYPE)
    sotw.subscribe(ROUTE_TYPE, ["http"])
    for response in await sotw.recv_n(2):
        sotw.ack(response)
    await eventually(lambda: len(wire.acks_of("sotw-0")) == 2, what="the sotw ACKs")
    variants = sorted(s.variant for s in wire.server.streams())
    assert variants == ["delta", "delta", "delta", "sotw"]

    after = build(SITE_A, SITE_B)
    wire.server.publish(after)
    for client in deltas:
        cds, rds = await client.recv_n(2)
        assert (cds.type_url, names(cds)) == (CLUSTER_TYPE, [CLUSTER_B])
        assert rds.type_url == ROUTE_TYPE
        assert route_clusters(rds) == {CLUSTER_A, CLUSTER_B}
        client.ack(cds)
        client.ack(rds)
    full_cds, full_rds = await sotw.recv_n(2)
    assert (full_cds.type_url, sorted(sotw_names(full_cds))) == (CLUSTER_TYPE, [CLUSTER_A, CLUSTER_B])
    assert sotw_route_clusters(full_rds) == {CLUSTER_A, CLUSTER_B}
    for client in deltas:
        await wire.acked(client)
        await client.expect_quiet(0.1)
        client.assert_holds(after)


async def test_a_stream_that_does_not_ack_or_read_converges(wire: WireHarness, builds: Builds) -> None:
    wire.server.publish(builds(SITE_A))
    client = wire.connect()
    await wire.settle(client)

    wire.server.publish(builds(SITE_A, SITE_B))
    unread = await client.recv()  # read one, ACK nothing
    wire.server.publish(builds(SITE_A_MOVED, SITE_B))
    await asyncio.sleep(0.05)
    wire.server.publish(builds(SITE_A_MOVED, SITE_C))
    await asyncio.sleep(0.05)
    current = builds(SITE_A_MOVED, SITE_B, SITE_C)
    wire.server.publish(current)
    client.ack(unread)
    await client.ack_until_quiet()
    client.assert_holds(current)


async def test_unknown_type_does_not_break_a_delta_stream(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    client = wire.connect(node_id="envoy-odd")
    client.subscribe(UNKNOWN_TYPE, "some-secret")  # the first request, with the node
    client.send(UNKNOWN_TYPE, nonce="1", error="what is this")
    await client.expect_quiet()
    assert wire.nacks == []
    assert wire.stream("envoy-odd").node_id == "envoy-odd"

    client.subscribe(CLUSTER_TYPE)
    cds = await client.recv()
    assert names(cds) == [CLUSTER_A]
    client.ack(cds)
    await wire.acked(client)

    wire.server.publish(build(SITE_A, SITE_B))
    cds2 = await client.recv()
    assert (cds2.type_url, names(cds2)) == (CLUSTER_TYPE, [CLUSTER_B])
    assert len(wire.server.streams()) == 1


async def test_node_is_remembered_from_the_first_request(wire: WireHarness) -> None:
    wire.server.publish(build(SITE_A))
    client = wire.connect(node_id="gw-7", cluster="edge-eu")
    client.subscribe(CLUSTER_TYPE)  # carries the node
    cds = await client.recv()
    info = wire.stream("gw-7")
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")

    client.ack(cds)  # no node
    client.subscribe(LISTENER_TYPE)  # no node
    lds = await client.recv()
    assert lds.type_url == LISTENER_TYPE
    client.ack(lds)
    client.node.id, client.node.cluster = "impostor", "elsewhere"
    client.send(ROUTE_TYPE, ["http"], node=True)  # a later node does not replace the first
    assert (await client.recv()).type_url == ROUTE_TYPE

    [info] = wire.server.streams()
    assert (info.node_id, info.cluster) == ("gw-7", "edge-eu")
    assert len(wire.acks_of("gw-7")) == 2


async def test_on_send_reports_each_delta_response() -> None:
    sent: list[tuple[str, str, int]] = []
    server = AdsServer(
        ObserverFuncs(on_sent=lambda info, out: sent.append((out.type_url, out.version, len(out.payload))))
    )
    port = await server.start("127.0.0.1:0")
    client = DeltaClient(port, "gw-1")
    try:
        server.publish(build(SITE_A))
        client.subscribe(CLUSTER_TYPE)
        cds = await client.recv()
        assert sent == [(CLUSTER_TYPE, cds.system_version_info, cds.ByteSize())]
        [info] = server.streams()
        assert info.variant == "delta"
        assert info.types[CLUSTER_TYPE].sent_version == cds.system_version_info
    finally:
        await client.close()
        await server.stop(0.5)
