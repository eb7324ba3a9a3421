"""The Prometheus metrics: values read from a fresh registry while real streams talk to a
control plane on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import AsyncIterator
from functools import partial

import prometheus_client
import pytest
import trustme
from support.plane import TYPES, Plane
from support.sites import SITE_A, SITE_B, site_set
from support.sites import site as make_site
from support.waiting import eventually

from snapshot.builder import BuildOptions
from snapshot.certificates import load_certificate
from snapshot.model import StaticSite
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from snapshot.snapshot import Snapshot
from xds_server.ads.membership import ClientNames
from xds_server.ads.stream import StreamInfo, TypeStatus
from xds_server.local.ads_client import sotw_names
from xds_server.operations.metrics import (
    OVERFLOW_GROUP,
    SERVING_CERTIFICATE,
    GatewayGroups,
    Metrics,
    Propagation,
)
from xds_server.operations.tls import certificate_expiry
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import Observer, ObserverFuncs

# Sites as a source makes them, in namespace "default".
site = partial(make_site, namespace="default", parsed=True)
pytestmark = pytest.mark.unit

SITE_A_MOVED = site("a", "a.example.test", "svc-a2")  # site a, served by another backend


@contextlib.asynccontextmanager
async def serving(*others: Observer) -> AsyncIterator[Plane]:
    """A control plane with its metrics (told first) and `others` as observers, serving ADS."""
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    plane = ControlPlane(BuildOptions(backend_host_template="127.0.0.1"), observers=[metrics, *others])
    metrics.export(plane)
    port = await plane.server.start("127.0.0.1:0")
    harness = Plane(plane, metrics, registry, port)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.close()
        await plane.server.stop(0.5)


@pytest.fixture
async def cp() -> AsyncIterator[Plane]:
    async with serving() as harness:
        yield harness


# -- the snapshot ----------------------------------------------------------------------------


async def test_generation_and_version_follow_each_publish_per_gateway_group(cp: Plane) -> None:
    assert cp.series("staticsite_xds_snapshot_generation") == []  # no snapshot published yet
    first = cp.publish(SITE_A)
    assert cp.count("staticsite_xds_snapshot_publishes_total") == 1
    # One series per published group, whether or not an Envoy of it is connected.
    assert cp.series("staticsite_xds_snapshot_generation") == [{"gateway_group": "default"}]

    eu, us = cp.sotw("gw-eu", "edge-eu"), cp.delta("gw-us", "edge-us")  # both served the default group
    await cp.settle(eu)
    await cp.settle(us)
    for group in ("default",):
        assert cp.value("staticsite_xds_snapshot_generation", gateway_group=group) == 1
        assert cp.value("staticsite_xds_snapshot_info", gateway_group=group, version=first.version) == 1

    second = cp.publish(SITE_A, SITE_B)
    cp.publish(SITE_A, SITE_B)  # the same content again is no new generation
    assert cp.count("staticsite_xds_snapshot_publishes_total") == 2
    for group in ("default",):
        assert cp.value("staticsite_xds_snapshot_generation", gateway_group=group) == 2
        assert cp.value("staticsite_xds_snapshot_info", gateway_group=group, version=second.version) == 1
    assert {s["version"] for s in cp.series("staticsite_xds_snapshot_info")} == {second.version}


async def test_gateway_groups_are_bounded_and_overflow_into_other(cp: Plane) -> None:
    groups = GatewayGroups(limit=2)
    assert [groups.label(g) for g in ("a", "b", "c", "a", "d")] == ["a", "b", OVERFLOW_GROUP, "a", "other"]
    assert groups.labels() == ["a", "b", OVERFLOW_GROUP]

    cp.metrics.groups = GatewayGroups(limit=1)
    names = ("first", "second", "third")
    cp.plane.server.membership = ClientNames(lambda _names: None, lambda: names)  # plain text: as declared
    snapshot = cp.publish(SITE_A)
    for group in names:
        cp.plane.server.publish(dataclasses.replace(snapshot, group=group))
    for i, group in enumerate(names):
        await cp.settle(cp.sotw(f"gw-{i}", group))
    # The snapshot series name the groups within the limit; the others have none.
    assert {s["gateway_group"] for s in cp.series("staticsite_xds_snapshot_generation")} == {"first"}
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="first", variant="sotw") == 1
    assert cp.value("staticsite_xds_connected_envoys", gateway_group=OVERFLOW_GROUP, variant="sotw") == 2


async def test_sites_by_state_are_counted_at_scrape_time(cp: Plane) -> None:
    states = ("provisioned", "invalid", "conflict", "rejected")
    cp.publish()
    assert {s: cp.value("staticsite_xds_sites", state=s) for s in states} == dict.fromkeys(states, 0)

    rival = site("rival", "a.example.test", "svc-r", namespace="zz")  # a's domain: it loses
    broken = site("broken", "broken.example.test", "svc-x")
    cp.plane.apply(site_set(SITE_A, SITE_B, rival, broken, invalid=[broken.key]))
    got = {s: cp.value("staticsite_xds_sites", state=s) for s in states}
    assert got == {"provisioned": 2, "invalid": 1, "conflict": 1, "rejected": 0}

    cp.publish(SITE_A)
    got = {s: cp.value("staticsite_xds_sites", state=s) for s in states}
    assert got == {"provisioned": 1, "invalid": 0, "conflict": 0, "rejected": 0}


def certified(base: StaticSite, leaf: trustme.LeafCert, name: str) -> StaticSite:
    chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
    return dataclasses.replace(base, certificate=load_certificate(name, chain, leaf.private_key_pem.bytes()))


async def test_each_certificate_served_shows_when_it_expires() -> None:
    ca = trustme.CA()
    soon = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    later = datetime.datetime(2032, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    a_leaf = ca.issue_cert("a.example.test", "b.example.test", not_after=soon)
    xds_leaf = ca.issue_cert("xds.example.test", not_after=later)
    a = certified(SITE_A, a_leaf, "secret/default/shared")
    b = certified(SITE_B, a_leaf, "secret/default/shared")  # one certificate, one series
    chain = xds_leaf.cert_chain_pems[0].bytes()

    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    plane = ControlPlane(BuildOptions(backend_host_template="127.0.0.1"), observers=[metrics])
    metrics.export(plane, serving_expiry=lambda: certificate_expiry(chain))
    cp = Plane(plane, metrics, registry, 0)
    name = "staticsite_xds_certificate_expiry_timestamp_seconds"

    cp.publish(SITE_A)
    assert cp.series(name) == [{"certificate": SERVING_CERTIFICATE}]
    assert cp.value(name, certificate=SERVING_CERTIFICATE) == later.timestamp()

    cp.publish(a, b)
    assert sorted(s["certificate"] for s in cp.series(name)) == sorted(
        ["secret/default/shared", SERVING_CERTIFICATE]
    )
    assert cp.value(name, certificate="secret/default/shared") == soon.timestamp()

    cp.publish(SITE_A, SITE_B)  # no site has a certificate any more: its series goes
    assert cp.series(name) == [{"certificate": SERVING_CERTIFICATE}]


async def test_without_tls_on_the_xds_port_only_the_sites_certificates_show(cp: Plane) -> None:
    cp.publish(SITE_A)
    assert cp.series("staticsite_xds_certificate_expiry_timestamp_seconds") == []


async def test_each_build_is_timed(cp: Plane) -> None:
    cp.publish(SITE_A)
    cp.publish(SITE_A, SITE_B)
    cp.publish(SITE_A, SITE_B)  # built again, though nothing is published
    assert cp.value("staticsite_xds_snapshot_build_duration_seconds_count") == 3
    assert 0 < cp.count("staticsite_xds_snapshot_build_duration_seconds_sum") < 3
    assert cp.value("staticsite_xds_snapshot_build_duration_seconds_bucket", le="10.0") == 3


# -- responses, ACKs and NACKs ---------------------------------------------------------------


async def test_responses_acks_and_nacks_are_counted_by_type(cp: Plane) -> None:
    cp.publish(SITE_A)
    client = cp.sotw("gw-1")
    client.subscribe(CLUSTER_TYPE)
    client.subscribe(LISTENER_TYPE)
    cds, lds = await client.recv_n(2)
    assert cp.count("staticsite_xds_responses_sent_total", type="Cluster") == 1
    assert cp.count("staticsite_xds_responses_sent_total", type="Listener") == 1
    assert cp.count("staticsite_xds_responses_sent_total", type="RouteConfiguration") == 0
    assert cp.count("staticsite_xds_response_bytes_total", type="Cluster") == cds.ByteSize()
    assert cp.count("staticsite_xds_response_bytes_total", type="Listener") == lds.ByteSize()

    client.ack(cds)
    client.nack(lds, "listener rejected")
    await eventually(lambda: cp.count("staticsite_xds_nacks_total", type="Listener") == 1)
    assert cp.count("staticsite_xds_acks_total", type="Cluster") == 1
    assert cp.count("staticsite_xds_acks_total", type="Listener") == 0
    assert cp.count("staticsite_xds_nacks_total", type="Cluster") == 0

    cp.publish(SITE_A, SITE_B)
    got = await client.ack_until_quiet()
    clusters = sum(1 for r in got if r.type_url == CLUSTER_TYPE)
    assert clusters >= 1
    await eventually(lambda: cp.count("staticsite_xds_acks_total", type="Cluster") == 1 + clusters)
    assert cp.count("staticsite_xds_responses_sent_total", type="Cluster") == 1 + clusters
    assert cp.count("staticsite_xds_nacks_total", type="Listener") == 1


async def test_another_observer_sees_the_same_events_and_the_metrics_still_count() -> None:
    seen: list[str] = []
    other = ObserverFuncs(
        on_ack=lambda info, type_url, version: seen.append(type_url),
        on_nack=lambda info, nack: seen.append("nack"),
    )
    async with serving(other) as cp:
        cp.publish(SITE_A)
        client = cp.sotw("gw-1")
        client.subscribe(CLUSTER_TYPE)
        client.nack(await client.recv(), "no")
        await eventually(lambda: seen == ["nack"])
        assert cp.count("staticsite_xds_nacks_total", type="Cluster") == 1


# -- per Envoy -------------------------------------------------------------------------------


async def test_each_connected_envoy_shows_the_version_it_acked_until_it_goes(cp: Plane) -> None:
    snapshot = cp.publish(SITE_A)
    sotw, delta = cp.sotw("gw-1", "edge"), cp.delta("gw-2", "edge")
    await cp.settle(sotw)
    await cp.settle(delta)
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="default", variant="sotw") == 1
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="default", variant="delta") == 1
    want = {
        (node, short, snapshot.of_type(t).version)
        for node in ("gw-1", "gw-2")
        for short, t in (
            ("Cluster", CLUSTER_TYPE),
            ("Listener", LISTENER_TYPE),
            ("RouteConfiguration", ROUTE_TYPE),
        )
    }
    series = cp.series("staticsite_xds_envoy_acked_version_info")
    assert {(s["node_id"], s["type"], s["version"]) for s in series} == want
    assert {s["gateway_group"] for s in series} == {"default"}
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 0

    late = cp.sotw("gw-3", "edge")  # sent clusters, ACKed nothing: no version to show
    late.subscribe(CLUSTER_TYPE)
    await late.recv()
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="default", variant="sotw") == 2
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 1
    assert {s["node_id"] for s in cp.series("staticsite_xds_envoy_acked_version_info")} == {"gw-1", "gw-2"}

    await sotw.close()
    cp.clients.remove(sotw)
    await eventually(lambda: len(cp.plane.server.streams()) == 2)
    assert {s["node_id"] for s in cp.series("staticsite_xds_envoy_acked_version_info")} == {"gw-2"}
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="default", variant="sotw") == 1


async def test_envoys_behind_counts_those_that_have_not_acked_the_current_snapshot(cp: Plane) -> None:
    cp.publish(SITE_A)
    fast, slow = cp.sotw("gw-fast"), cp.delta("gw-slow")
    await cp.settle(fast)
    await cp.settle(slow)
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 0

    cp.publish(SITE_A, SITE_B)
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 2
    await cp.converge(fast)
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 1
    await cp.converge(slow)
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 0


# -- propagation -----------------------------------------------------------------------------


def propagations(cp: Plane) -> float:
    return cp.count("staticsite_xds_propagation_duration_seconds_count")


async def test_propagation_is_observed_once_every_connected_envoy_has_acked(cp: Plane) -> None:
    cp.publish(SITE_A)
    first, second = cp.sotw("gw-1"), cp.delta("gw-2")
    await cp.settle(first)  # a publish before any stream subscribed waits for nobody
    await cp.settle(second)
    assert propagations(cp) == 0

    cp.publish(SITE_A, SITE_B)
    assert cp.metrics.propagation.pending == 2
    await cp.converge(first)
    assert propagations(cp) == 0  # the delta stream has not ACKed yet
    assert cp.metrics.propagation.pending == 1

    await cp.converge(second)
    assert propagations(cp) == 1
    assert 0 < cp.count("staticsite_xds_propagation_duration_seconds_sum") < 10


async def test_a_stream_that_closes_is_not_waited_for(cp: Plane) -> None:
    cp.publish(SITE_A)
    staying, leaving = cp.delta("gw-staying"), cp.sotw("gw-leaving")
    await cp.settle(staying)
    await cp.settle(leaving)

    cp.publish(SITE_A, SITE_B)
    await cp.converge(staying)
    assert propagations(cp) == 0
    await leaving.close()
    cp.clients.remove(leaving)
    await eventually(lambda: propagations(cp) == 1, what="the propagation to be observed")
    assert cp.count("staticsite_xds_propagations_superseded_total") == 0


async def test_a_newer_publish_supersedes_an_unfinished_one(cp: Plane) -> None:
    cp.publish(SITE_A)
    client = cp.sotw("gw-1")
    await cp.settle(client)

    cp.publish(SITE_A, SITE_B)
    await client.recv_n(2)  # clusters and routes, not ACKed
    cp.publish(SITE_A, SITE_B)  # the same content again supersedes nothing
    assert cp.count("staticsite_xds_propagations_superseded_total") == 0
    assert cp.metrics.propagation.pending == 1
    cp.publish(SITE_B)
    assert cp.count("staticsite_xds_propagations_superseded_total") == 1
    await cp.converge(client)
    assert propagations(cp) == 1
    assert cp.count("staticsite_xds_propagations_superseded_total") == 1


async def test_a_held_back_cluster_set_is_not_the_snapshot(cp: Plane) -> None:
    """State of the world keeps a cluster the routes still use (version `v+tag`); the stream
    has the snapshot only once it ACKs the clusters' real version."""
    cp.publish(SITE_A)
    client = cp.sotw("gw-1")
    await cp.settle(client)

    snapshot = cp.publish(SITE_A_MOVED)
    cds, rds = await client.recv_n(2)
    assert cds.type_url == CLUSTER_TYPE
    assert rds.type_url == ROUTE_TYPE
    assert len(sotw_names(cds)) == 2  # the old cluster is held back
    assert cds.version_info.startswith(snapshot.of_type(CLUSTER_TYPE).version + "+")
    client.ack(cds)
    client.ack(rds)
    final = await client.recv()
    assert final.type_url == CLUSTER_TYPE
    assert final.version_info == snapshot.of_type(CLUSTER_TYPE).version
    info = cp.stream("gw-1")
    assert info.acked_version(CLUSTER_TYPE) == cds.version_info
    assert info.acked_version(ROUTE_TYPE) == rds.version_info
    assert propagations(cp) == 0
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 1

    client.ack(final)
    await eventually(lambda: propagations(cp) == 1)
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 0


def test_an_ack_costs_no_scan_of_the_streams() -> None:
    """The streams are listed once per publish; an ACK looks at its own stream only."""
    snapshot = _snapshot_of(SITE_A)
    streams = [_holding(i, snapshot, behind=True) for i in range(1, 4)]
    listed: list[int] = []
    observed: list[float] = []

    def listing() -> list[StreamInfo]:
        listed.append(1)
        return streams

    clock = iter([1.0, 1.5]).__next__
    propagation = Propagation(listing, observed.append, lambda: None, clock=clock)
    propagation.published(snapshot)
    assert (len(listed), propagation.pending) == (1, 3)
    for info in streams:
        for type_url, status in info.types.items():
            status.acked_version = snapshot.of_type(type_url).version
            propagation.acked(info, type_url, status.acked_version)
    assert len(listed) == 1
    assert observed == [0.5]


def _snapshot_of(*sites: StaticSite) -> Snapshot:
    plane = ControlPlane(BuildOptions())
    snapshot = plane.apply(site_set(*sites))
    assert snapshot is not None
    return snapshot


def _holding(stream_id: int, snapshot: Snapshot, behind: bool) -> StreamInfo:
    info = StreamInfo(stream_id, "test", 0.0, node_id=f"n{stream_id}", cluster="edge")
    for type_url in TYPES:
        version = "" if behind else snapshot.of_type(type_url).version
        info.types[type_url] = TypeStatus(sent_version=version, acked_version=version)
    return info
