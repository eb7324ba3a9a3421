"""SnapshotBuilder: clusters, routes, listener, versions, conflicts, reuse; and snapshot.wire."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from functools import partial

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.internal import encoder
from support.sites import site as make_site

from snapshot import resources as rs
from snapshot import wire
from snapshot.builder import BuildOptions, BuildResult, Phase, SnapshotBuilder
from snapshot.consistency import InconsistentSnapshot, check_consistency
from snapshot.consistency import Plan as _Plan
from snapshot.model import Backend, SiteKey, StaticSite
from snapshot.snapshot import Resource

pytestmark = pytest.mark.unit

# Sites as a folder source makes them, in namespace "default".
site = partial(make_site, namespace="default", parsed=True)


def clusters(result: BuildResult) -> dict[str, cluster_pb2.Cluster]:
    out: dict[str, cluster_pb2.Cluster] = {}
    for name, res in result.snapshot.of_type(rs.CLUSTER_TYPE).resources.items():
        msg = res.decode()
        assert isinstance(msg, cluster_pb2.Cluster)
        assert msg.name == name
        out[name] = msg
    return out


def route_config(result: BuildResult) -> route_pb2.RouteConfiguration:
    routes = result.snapshot.of_type(rs.ROUTE_TYPE).resources
    assert list(routes) == [rs.HTTP_ROUTE_NAME]
    msg = routes[rs.HTTP_ROUTE_NAME].decode()
    assert isinstance(msg, route_pb2.RouteConfiguration)
    return msg


def listener(result: BuildResult) -> listener_pb2.Listener:
    listeners = result.snapshot.of_type(rs.LISTENER_TYPE).resources
    assert list(listeners) == [rs.HTTP_LISTENER_NAME]
    msg = listeners[rs.HTTP_LISTENER_NAME].decode()
    assert isinstance(msg, listener_pb2.Listener)
    return msg


def served(result: BuildResult) -> dict[str, tuple[str, str]]:
    """domain -> (virtual host name, cluster), for every site's virtual host."""
    out: dict[str, tuple[str, str]] = {}
    for vhost in route_config(result).virtual_hosts:
        if vhost.name == rs.UNKNOWN_DOMAIN_HOST:
            continue
        assert len(vhost.domains) == 1
        assert len(vhost.routes) == 1
        assert vhost.routes[0].match.prefix == "/"
        out[vhost.domains[0]] = (vhost.routes[0].name, vhost.routes[0].route.cluster)
    return out


def endpoint_of(cluster: cluster_pb2.Cluster) -> tuple[str, int]:
    (locality,) = cluster.load_assignment.endpoints
    (lb_endpoint,) = locality.lb_endpoints
    address = lb_endpoint.endpoint.address.socket_address
    return address.address, address.port_value


# -- clusters ---------------------------------------------------------------------------------


def test_one_cluster_per_backend_shared_by_sites() -> None:
    result = SnapshotBuilder().build(
        [
            site("a", "a.example.com", "web", 80),
            site("b", "b.example.com", "web", 80),
            site("c", "c.example.com", "web", 81),
            site("d", "d.example.com", "api", 80),
            site("e", "e.example.com", "web", 80, namespace="other"),
        ]
    )
    assert set(clusters(result)) == {"default/web/80", "default/web/81", "default/api/80", "other/web/80"}
    assert served(result) == {
        "a.example.com": ("default/a", "default/web/80"),
        "b.example.com": ("default/b", "default/web/80"),
        "c.example.com": ("default/c", "default/web/81"),
        "d.example.com": ("default/d", "default/api/80"),
        "e.example.com": ("other/e", "other/web/80"),
    }
    assert all(state.phase is Phase.PROVISIONED for state in result.sites.values())
    assert len(result.sites) == 5


@pytest.mark.parametrize(
    ("template", "host"),
    [
        (None, "blog.team.svc.cluster.local"),
        ("{service}.{namespace}.svc.cluster.local", "blog.team.svc.cluster.local"),
        ("127.0.0.1", "127.0.0.1"),
        ("{namespace}-{service}.internal", "team-blog.internal"),
    ],
    ids=["default", "explicit-default", "loopback", "custom"],
)
def test_cluster_is_strict_dns_to_the_templated_host(template: str | None, host: str) -> None:
    options = BuildOptions() if template is None else BuildOptions(backend_host_template=template)
    result = SnapshotBuilder(options).build(
        [site("blog", "blog.example.com", "blog", 8081, namespace="team")]
    )
    cluster = clusters(result)["team/blog/8081"]
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert cluster.load_assignment.cluster_name == "team/blog/8081"
    assert endpoint_of(cluster) == (host, 8081)
    assert cluster.connect_timeout.ToMilliseconds() > 0


@pytest.mark.parametrize(
    "template", ["{nope}", "{0}", "{", "}", "{service.nope}", "{service[x]}", "{service:d}"]
)
def test_invalid_host_template_raises_value_error(template: str) -> None:
    with pytest.raises(ValueError, match="backend host template"):
        BuildOptions(backend_host_template=template)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_invalid_http_port_raises_value_error(port: int) -> None:
    with pytest.raises(ValueError, match="HTTP port"):
        BuildOptions(http_port=port)


# -- routes and listener ----------------------------------------------------------------------


def test_one_route_configuration_with_a_virtual_host_per_domain_and_a_catch_all() -> None:
    result = SnapshotBuilder().build(
        [site("b", "b.example.com", "web", 80), site("a", "a.example.com", "api", 81)]
    )
    config = route_config(result)
    assert config.name == rs.HTTP_ROUTE_NAME
    names = [v.name for v in config.virtual_hosts]
    assert sorted(names) == sorted(["a.example.com", "b.example.com", rs.UNKNOWN_DOMAIN_HOST])
    assert served(result) == {
        "a.example.com": ("default/a", "default/api/81"),
        "b.example.com": ("default/b", "default/web/80"),
    }
    (fallback,) = [v for v in config.virtual_hosts if v.name == rs.UNKNOWN_DOMAIN_HOST]
    assert list(fallback.domains) == ["*"]
    (route,) = fallback.routes
    assert route.match.prefix == "/"
    assert route.WhichOneof("action") == "direct_response"
    assert route.direct_response.status == 404
    # Every cluster a route names exists.
    assert {cluster for _, cluster in served(result).values()} <= set(clusters(result))


def test_no_sites_gives_only_the_catch_all() -> None:
    result = SnapshotBuilder().build([])
    assert clusters(result) == {}
    assert [v.name for v in route_config(result).virtual_hosts] == [rs.UNKNOWN_DOMAIN_HOST]
    assert listener(result).name == rs.HTTP_LISTENER_NAME
    assert not result.sites


def test_route_configuration_bytes_parse_to_the_message_built_with_protobuf() -> None:
    result = SnapshotBuilder().build(
        [site("a", "a.example.com", "web"), site("b", "b.example.com", "web", port=81)]
    )
    expected = route_pb2.RouteConfiguration(
        name=rs.HTTP_ROUTE_NAME,
        virtual_hosts=[
            rs.virtual_host("default/a", "a.example.com", "default/web/80"),
            rs.virtual_host("default/b", "b.example.com", "default/web/81"),
            rs.unknown_domain_host(),
        ],
    )
    assert route_config(result) == expected


@pytest.mark.parametrize(("address", "port"), [("0.0.0.0", 8080), ("127.0.0.1", 10080)])
def test_listener_uses_options_and_rds_over_ads(address: str, port: int) -> None:
    options = BuildOptions(http_port=port, listen_address=address)
    result = SnapshotBuilder(options).build([site("a", "a.example.com", "web")])
    msg = listener(result)
    assert msg.address.socket_address.address == address
    assert msg.address.socket_address.port_value == port
    (chain,) = msg.filter_chains
    (network_filter,) = chain.filters
    assert network_filter.name == "envoy.filters.network.http_connection_manager"
    manager = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(manager)
    assert manager.WhichOneof("route_specifier") == "rds"
    assert manager.rds.route_config_name == rs.HTTP_ROUTE_NAME
    assert manager.rds.route_config_name in result.snapshot.of_type(rs.ROUTE_TYPE).resources
    source = manager.rds.config_source
    assert source.WhichOneof("config_source_specifier") == "ads"
    assert source.resource_api_version == config_source_pb2.V3
    assert [f.name for f in manager.http_filters] == [
        "compressor-brotli",
        "compressor-gzip",
        "envoy.filters.http.router",
    ]


# -- versions ---------------------------------------------------------------------------------

SITES = [
    site("a", "a.example.com", "web", 80),
    site("b", "b.example.com", "web", 80),
    site("c", "c.example.com", "api", 8080, namespace="team"),
    site("d", "d.example.com", "docs", 81),
]


def test_version_does_not_depend_on_input_order() -> None:
    builder = SnapshotBuilder()
    first = builder.build(SITES)
    for order in itertools.permutations(SITES):
        again = SnapshotBuilder().build(order)
        assert again.snapshot.version == first.snapshot.version
        assert again.snapshot.to_json() == first.snapshot.to_json()
        assert builder.build(order).snapshot.version == first.snapshot.version


def test_version_is_the_same_from_another_builder() -> None:
    one = SnapshotBuilder().build(SITES).snapshot
    two = SnapshotBuilder().build(list(reversed(SITES))).snapshot
    assert one.version == two.version
    for type_url in rs.TYPE_ORDER:
        assert one.of_type(type_url).version == two.of_type(type_url).version


def test_version_is_not_the_same_for_other_options() -> None:
    one = SnapshotBuilder().build(SITES).snapshot
    two = SnapshotBuilder(BuildOptions(backend_host_template="127.0.0.1")).build(SITES).snapshot
    three = SnapshotBuilder(BuildOptions(http_port=9090)).build(SITES).snapshot
    assert len({one.version, two.version, three.version}) == 3


@pytest.mark.parametrize(
    "changed",
    [
        site("a", "a2.example.com", "web", 80),
        site("a", "A.example.org", "web", 80),
        site("a", "a.example.com", "web2", 80),
        site("a", "a.example.com", "web", 81),
        site("a", "a.example.com", "web", 80, namespace="elsewhere"),
        site("z", "a.example.com", "web", 80),
    ],
    ids=["domain", "domain-case-and-tld", "service", "port", "namespace", "name"],
)
def test_any_change_of_a_site_changes_the_version(changed: StaticSite) -> None:
    builder = SnapshotBuilder()
    before = builder.build(SITES).snapshot.version
    after = builder.build([changed, *SITES[1:]]).snapshot.version
    assert after != before
    assert SnapshotBuilder().build([changed, *SITES[1:]]).snapshot.version == after
    assert builder.build(SITES).snapshot.version == before


def test_adding_or_removing_a_site_changes_the_version() -> None:
    base = SnapshotBuilder().build(SITES).snapshot.version
    assert SnapshotBuilder().build(SITES[:-1]).snapshot.version != base
    assert SnapshotBuilder().build([*SITES, site("e", "e.example.com", "web")]).snapshot.version != base


# -- conflicts --------------------------------------------------------------------------------


def assert_conflict(result: BuildResult, loser: StaticSite, winner: StaticSite) -> None:
    state = result.sites[loser.key]
    assert state.phase is Phase.CONFLICT
    assert state.reason == "DomainConflict"
    assert str(winner.key) in state.message
    assert winner.domain in state.message
    assert result.sites[winner.key].phase is Phase.PROVISIONED
    assert served(result)[winner.domain][0] == str(winner.key)


@pytest.mark.parametrize(
    ("older_ts", "newer_ts"),
    [
        ("2024-01-01T10:00:00Z", "2024-03-01T09:00:00Z"),
        ("2023-12-31T23:59:59Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:01Z"),
    ],
    ids=["months", "year-boundary", "one-second"],
)
def test_oldest_creation_timestamp_wins(older_ts: str, newer_ts: str) -> None:
    # The newer one would win on namespace/name order: the timestamp must decide.
    newer = site("a-new", "blog.example.com", "new", 80, namespace="alpha", created=newer_ts)
    older = site("z-old", "blog.example.com", "old", 80, namespace="zulu", created=older_ts)
    for order in ([newer, older], [older, newer]):
        result = SnapshotBuilder().build(order)
        assert_conflict(result, newer, older)
        assert set(clusters(result)) == {"zulu/old/80"}


def test_a_site_with_a_timestamp_wins_over_one_without() -> None:
    dated = site("z", "blog.example.com", "web", created="2024-01-01T00:00:00Z")
    undated = site("a", "blog.example.com", "web")
    for order in ([dated, undated], [undated, dated]):
        assert_conflict(SnapshotBuilder().build(order), undated, dated)


def test_domains_differing_only_in_case_conflict() -> None:
    first = site("one", "Blog.Example.com", "one", 80, created="2024-01-01T00:00:00Z")
    second = site("two", "blog.example.COM", "two", 80, created="2024-02-01T00:00:00Z")
    result = SnapshotBuilder().build([second, first])
    assert_conflict(result, second, first)
    assert list(served(result)) == ["blog.example.com"]


def test_without_timestamps_namespace_then_name_decides_in_any_order() -> None:
    claimants = [
        site("a", "blog.example.com", "one", namespace="beta"),
        site("z", "blog.example.com", "two", namespace="alpha"),
        site("b", "blog.example.com", "three", namespace="alpha"),
        site("other", "other.example.com", "four", namespace="alpha"),
    ]
    winner = claimants[2]  # alpha/b
    reference = SnapshotBuilder().build(claimants)
    for order in itertools.permutations(claimants):
        result = SnapshotBuilder().build(order)
        assert result.snapshot.version == reference.snapshot.version
        assert dict(result.sites) == dict(reference.sites)
        assert_conflict(result, claimants[0], winner)
        assert_conflict(result, claimants[1], winner)
        assert result.sites[claimants[3].key].phase is Phase.PROVISIONED
    assert set(clusters(reference)) == {"alpha/three/80", "alpha/four/80"}


def test_conflict_with_a_mixed_timestamp_form_still_picks_the_oldest() -> None:
    # A YAML file may carry the timestamp unquoted (read as a datetime) or quoted (a string).
    newer_doc = yaml.safe_load("t: 2024-01-01T12:00:00Z")["t"]  # a datetime, later that day
    newer = site("a", "blog.example.com", "new", created=newer_doc)
    older = site("b", "blog.example.com", "old", created="2024-01-01T10:00:00Z")
    for order in ([newer, older], [older, newer]):
        assert_conflict(SnapshotBuilder().build(order), newer, older)


# -- reuse ------------------------------------------------------------------------------------


def test_unchanged_resources_are_reused_across_builds() -> None:
    builder = SnapshotBuilder()
    a, b = site("a", "a.example.com", "web", 80), site("b", "b.example.com", "api", 81)
    first = builder.build([a, b]).snapshot
    second = builder.build([a, site("b", "b.example.com", "api", 82)]).snapshot
    old_web = first.of_type(rs.CLUSTER_TYPE).resources["default/web/80"]
    new_web = second.of_type(rs.CLUSTER_TYPE).resources["default/web/80"]
    assert new_web is old_web
    assert new_web.body is old_web.body
    assert new_web.any is old_web.any
    assert "default/api/81" not in second.of_type(rs.CLUSTER_TYPE).resources
    assert (
        second.of_type(rs.LISTENER_TYPE).resources[rs.HTTP_LISTENER_NAME]
        is first.of_type(rs.LISTENER_TYPE).resources[rs.HTTP_LISTENER_NAME]
    )
    assert second.version != first.version


def test_an_unchanged_build_reuses_every_set() -> None:
    builder = SnapshotBuilder()
    first = builder.build(SITES).snapshot
    shuffled = list(SITES)
    random.Random(7).shuffle(shuffled)
    second = builder.build(shuffled).snapshot
    assert second.version == first.version
    for type_url in (rs.CLUSTER_TYPE, rs.LISTENER_TYPE, rs.ROUTE_TYPE):
        assert second.of_type(type_url) is first.of_type(type_url)


def test_a_cluster_shared_by_a_changed_site_is_reused() -> None:
    builder = SnapshotBuilder()
    first = builder.build([site("a", "a.example.com", "web"), site("b", "b.example.com", "web")]).snapshot
    second = builder.build([site("a", "a.example.com", "web"), site("b", "b2.example.com", "web")]).snapshot
    assert (
        second.of_type(rs.CLUSTER_TYPE).resources["default/web/80"]
        is first.of_type(rs.CLUSTER_TYPE).resources["default/web/80"]
    )
    assert second.of_type(rs.CLUSTER_TYPE) is first.of_type(rs.CLUSTER_TYPE)
    assert second.of_type(rs.ROUTE_TYPE) is not first.of_type(rs.ROUTE_TYPE)


def test_a_cluster_removed_and_added_back_is_equal() -> None:
    builder = SnapshotBuilder()
    a, b = site("a", "a.example.com", "web"), site("b", "b.example.com", "api")
    first = builder.build([a, b]).snapshot
    builder.build([a])
    third = builder.build([a, b]).snapshot
    assert third.version == first.version
    assert (
        third.of_type(rs.CLUSTER_TYPE).resources["default/api/80"].body
        == first.of_type(rs.CLUSTER_TYPE).resources["default/api/80"].body
    )


# -- consistency check ------------------------------------------------------------------------


def plan(
    clusters: tuple[str, ...] = ("c1",),
    hosts: tuple[tuple[str, str, tuple[str, ...]], ...] = (("default/a", "a.example.com", ("c1",)),),
    listener_route: str = "http",
) -> _Plan:
    return _Plan(
        clusters=frozenset(clusters),
        routes={"http": hosts},
        listeners={"http": (listener_route,)},
    )


def test_consistent_plan_passes() -> None:
    check_consistency(plan())
    check_consistency(plan(clusters=(), hosts=()))


def test_dangling_cluster_is_inconsistent() -> None:
    with pytest.raises(InconsistentSnapshot, match="cluster c2, which does not exist"):
        check_consistency(plan(hosts=(("default/a", "a.example.com", ("c2",)),)))


def test_missing_route_configuration_is_inconsistent() -> None:
    with pytest.raises(InconsistentSnapshot, match="route configuration missing, which does not exist"):
        check_consistency(plan(listener_route="missing"))


def test_route_scopes_must_pick_existing_routes_and_every_route_a_scope() -> None:
    sharded = _Plan(
        clusters=frozenset({"c1"}),
        routes={"http/0": (), "http/1": ()},
        listeners={"http": ("http/0", "http/1")},
        scopes={"http/0": "http/0", "http/1": "http/1"},
    )
    check_consistency(sharded)
    with pytest.raises(InconsistentSnapshot, match="route scope http/1 picks route configuration http/9"):
        check_consistency(replace(sharded, scopes={"http/0": "http/0", "http/1": "http/9"}))
    with pytest.raises(InconsistentSnapshot, match="no route scope picks route configuration http/1"):
        check_consistency(replace(sharded, scopes={"http/0": "http/0"}))


@pytest.mark.parametrize("second_domain", ["a.example.com", "A.Example.COM"], ids=["same", "case"])
def test_duplicate_domain_is_inconsistent(second_domain: str) -> None:
    hosts = (("default/a", "a.example.com", ("c1",)), ("default/b", second_domain, ("c1",)))
    with pytest.raises(InconsistentSnapshot, match="domain"):
        check_consistency(plan(hosts=hosts))


def test_duplicate_virtual_host_is_inconsistent() -> None:
    hosts = (("default/a", "a.example.com", ("c1",)), ("default/a", "b.example.com", ("c1",)))
    with pytest.raises(InconsistentSnapshot, match="virtual host default/a twice"):
        check_consistency(plan(hosts=hosts))


def test_every_inconsistency_is_reported() -> None:
    hosts = (("default/a", "a.example.com", ("c2",)), ("default/b", "a.example.com", ("c3",)))
    with pytest.raises(InconsistentSnapshot) as info:
        check_consistency(
            _Plan(
                clusters=frozenset(), routes={"http": hosts}, listeners={"http": ("http",), "https": ("tls",)}
            )
        )
    text = str(info.value)
    for part in ("route configuration tls", "cluster c2", "cluster c3", "domain a.example.com"):
        assert part in text


# -- wire -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**32, b"\x80\x80\x80\x80\x10"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint(value: int, encoded: bytes) -> None:
    assert wire.varint(value) == encoded
    assert wire.varint(value) == encoder._VarintBytes(value)
    # And protobuf reads it back as the value of a uint64 field (field 1, wire type 0).
    assert wrappers_pb2.UInt64Value.FromString(b"\x08" + wire.varint(value)).value == value


def test_varint_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        wire.varint(-1)


def test_field_helpers_match_protobuf() -> None:
    assert wire.field_string(1, "") == b""
    assert wrappers_pb2.StringValue.FromString(wire.field_string(1, "h\u00e9llo")).value == "h\u00e9llo"
    long = b"x" * 300  # a length that takes two bytes
    assert wrappers_pb2.BytesValue.FromString(wire.field_bytes(1, long)).value == long
    assert wire.field_bytes(1, long) == wrappers_pb2.BytesValue(value=long).SerializeToString()
    any_msg = any_pb2.Any.FromString(wire.any_bytes(rs.CLUSTER_TYPE, long))
    assert any_msg == any_pb2.Any(type_url=rs.CLUSTER_TYPE, value=long)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_discovery_response_from_wire_helpers_equals_protobuf(count: int) -> None:
    sites = [site(f"s{i}", f"s{i}.example.com", f"svc{i}", 80 + i) for i in range(count)]
    snapshot = SnapshotBuilder().build(sites).snapshot
    resources: list[Resource] = list(snapshot.of_type(rs.CLUSTER_TYPE).resources.values())
    assert len(resources) == count
    version, nonce = snapshot.of_type(rs.CLUSTER_TYPE).version, "17"

    assembled = (
        wire.field_string(1, version)
        + wire.repeated(2, (r.any for r in resources))
        + wire.field_string(4, rs.CLUSTER_TYPE)
        + wire.field_string(5, nonce)
    )
    expected = discovery_pb2.DiscoveryResponse(
        version_info=version,
        resources=[any_pb2.Any(type_url=r.type_url, value=r.body) for r in resources],
        type_url=rs.CLUSTER_TYPE,
        nonce=nonce,
    )
    parsed = discovery_pb2.DiscoveryResponse.FromString(assembled)
    assert parsed == expected
    assert assembled == expected.SerializeToString(deterministic=True)
    for got, res in zip(parsed.resources, resources, strict=True):
        cluster = cluster_pb2.Cluster()
        assert got.Unpack(cluster)
        assert cluster == res.decode()


def test_discovery_response_of_every_type_parses() -> None:
    snapshot = SnapshotBuilder().build(SITES).snapshot
    for type_url in rs.TYPE_ORDER:
        resources = list(snapshot.of_type(type_url).resources.values())
        assembled = (
            wire.field_string(1, snapshot.of_type(type_url).version)
            + wire.repeated(2, (r.any for r in resources))
            + wire.field_string(4, type_url)
            + wire.field_string(5, "1")
        )
        parsed = discovery_pb2.DiscoveryResponse.FromString(assembled)
        assert parsed.type_url == type_url
        assert [a.value for a in parsed.resources] == [r.body for r in resources]
        assert all(a.type_url == type_url for a in parsed.resources)


def test_site_key_sorting_is_namespace_then_name() -> None:
    assert sorted([SiteKey("b", "a"), SiteKey("a", "z"), SiteKey("a", "b")]) == [
        SiteKey("a", "b"),
        SiteKey("a", "z"),
        SiteKey("b", "a"),
    ]


@pytest.mark.parametrize(
    "template", ["{service}.{namespace}.svc.cluster.local", "127.0.0.1", "{service}.internal"]
)
def test_reused_templates_serialize_exactly_like_the_message_functions(template: str) -> None:
    from snapshot import resources as rs

    for backend in [Backend("docs", "web", 80), Backend("a", "b", 65535), Backend("docs", "web", 8080)]:
        want = rs.cluster(backend, template).SerializeToString(deterministic=True)
        assert rs.serialized.cluster(backend, template) == want
    for args in [("docs/a", "a.example.test", "docs/web/80"), ("x/y", "y.test", "x/svc/1")]:
        assert rs.serialized.virtual_host(*args) == rs.virtual_host(*args).SerializeToString(
            deterministic=True
        )
