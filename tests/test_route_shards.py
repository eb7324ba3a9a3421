"""Route shards: each listener's virtual hosts split by a hash of the domain, picked by scoped
routes (SRDS) keyed by a header a Lua filter sets, so a change touches one shard."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from support.sites import site

from snapshot import resources as rs
from snapshot.builder import BuildOptions, BuildResult, SnapshotBuilder
from snapshot.model import Certificate, TlsSpec

pytestmark = pytest.mark.unit

SHARDS = 8
OPTIONS = BuildOptions(route_shards=SHARDS)
CERT = Certificate("secret/docs/a-tls", b"chain-a", b"key-a")


def shard_hosts(result: BuildResult, route: str = rs.HTTP_ROUTE_NAME) -> dict[int, list[str]]:
    """Each shard's domains (the catch-all left out)."""
    out: dict[int, list[str]] = {}
    for k in range(SHARDS):
        body = result.snapshot.of_type(rs.ROUTE_TYPE).resources[rs.shard_route_name(route, k)].body
        config = route_pb2.RouteConfiguration.FromString(body)
        assert list(config.request_headers_to_remove) == [rs.SHARD_HEADER]
        assert config.virtual_hosts[-1].name == rs.UNKNOWN_DOMAIN_HOST
        out[k] = [d for v in config.virtual_hosts[:-1] for d in v.domains]
    return out


def manager(result: BuildResult, listener: str) -> hcm_pb2.HttpConnectionManager:
    body = result.snapshot.of_type(rs.LISTENER_TYPE).resources[listener].body
    chain = listener_pb2.Listener.FromString(body).filter_chains[0]
    return hcm_pb2.HttpConnectionManager.FromString(chain.filters[0].typed_config.value)


def test_shard_of_is_the_hash_the_lua_filter_computes() -> None:
    # The script and the function share one definition of the hash: the same constants.
    script = lua_pb2.Lua.FromString(rs.shard_filter(rs.HTTP_ROUTE_NAME, 13).typed_config.value)
    code = script.default_source_code.inline_string
    assert "(h * 31 + string.byte(host, i)) % 13" in code
    assert f'headers:replace("{rs.SHARD_HEADER}", "h" .. h)' in code
    assert "string.lower" in code
    h = 0
    for byte in b"docs.example.test":
        h = (h * 31 + byte) % 13
    assert rs.shard_of("docs.example.test", 13) == h == rs.shard_of("Docs.Example.TEST", 13)
    spread = {rs.shard_of(f"site-{i}.example.test", 13) for i in range(200)}
    assert spread == set(range(13))


def test_each_domain_is_in_the_shard_of_its_hash_and_a_wildcard_in_every_shard() -> None:
    sites = [site(f"s{i}", f"s{i}.example.test") for i in range(40)]
    sites.append(site("wild", "*.wild.example.test"))
    sites.append(site("exact", "a.wild.example.test"))
    result = SnapshotBuilder(OPTIONS).build(sites)
    hosts = shard_hosts(result)
    for i in range(40):
        domain = f"s{i}.example.test"
        assert [k for k, names in hosts.items() if domain in names] == [rs.shard_of(domain, SHARDS)]
    assert all("*.wild.example.test" in names for names in hosts.values())
    assert sum(len(names) for names in hosts.values()) == 41 + SHARDS
    assert rs.HTTP_ROUTE_NAME not in result.snapshot.of_type(rs.ROUTE_TYPE).resources


def test_scopes_pick_each_shard_by_its_key_and_the_listener_routes_by_scopes() -> None:
    result = SnapshotBuilder(OPTIONS).build([site("a")])
    scopes = result.snapshot.of_type(rs.SCOPED_ROUTE_TYPE).resources
    assert sorted(scopes) == sorted(rs.shard_route_name("http", k) for k in range(SHARDS))
    for k in range(SHARDS):
        scope = scoped_route_pb2.ScopedRouteConfiguration.FromString(scopes[f"http/{k}"].body)
        assert scope.route_configuration_name == f"http/{k}"
        assert [f.string_key for f in scope.key.fragments] == [f"h{k}"]
    hcm = manager(result, rs.HTTP_LISTENER_NAME)
    assert hcm.WhichOneof("route_specifier") == "scoped_routes"
    (fragment,) = hcm.scoped_routes.scope_key_builder.fragments
    assert fragment.header_value_extractor.name == rs.SHARD_HEADER
    assert hcm.http_filters[0].name == "envoy.filters.http.lua"
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"


def test_one_shard_is_the_single_route_configuration() -> None:
    result = SnapshotBuilder(BuildOptions(route_shards=1)).build([site("a")])
    assert list(result.snapshot.of_type(rs.ROUTE_TYPE).resources) == [rs.HTTP_ROUTE_NAME]
    assert not result.snapshot.of_type(rs.SCOPED_ROUTE_TYPE).resources
    hcm = manager(result, rs.HTTP_LISTENER_NAME)
    assert hcm.WhichOneof("route_specifier") == "rds"
    assert all(f.name != "envoy.filters.http.lua" for f in hcm.http_filters)


def test_a_change_rebuilds_the_shard_of_its_domain_only() -> None:
    builder = SnapshotBuilder(OPTIONS)
    sites = {s.key: s for s in (site(f"s{i}", f"s{i}.example.test") for i in range(200))}
    first = builder.build(sites).snapshot.of_type(rs.ROUTE_TYPE)
    new = site("new", "new.example.test")
    sites[new.key] = new
    after = builder.build(sites, [new.key]).snapshot
    routes = after.of_type(rs.ROUTE_TYPE)
    assert routes.base == first.version
    assert routes.changed == {rs.shard_route_name("http", rs.shard_of("new.example.test", SHARDS))}
    assert not routes.removed
    assert after.of_type(rs.SCOPED_ROUTE_TYPE).changed == frozenset()


def test_https_shards_and_their_scopes_come_with_the_first_tls_site_and_go_with_the_last() -> None:
    builder = SnapshotBuilder(OPTIONS)
    plain = site("plain")
    secure = site("a", "a.example.test", tls=TlsSpec(secret_name="a-tls"), certificate=CERT)
    result = builder.build([plain, secure])
    names = sorted(rs.shard_route_name("https", k) for k in range(SHARDS))
    assert set(names) <= set(result.snapshot.of_type(rs.ROUTE_TYPE).resources)
    scopes = result.snapshot.of_type(rs.SCOPED_ROUTE_TYPE).resources
    assert set(names) <= set(scopes)
    scope = scoped_route_pb2.ScopedRouteConfiguration.FromString(scopes["https/0"].body)
    assert [f.string_key for f in scope.key.fragments] == ["s0"]
    hosts = shard_hosts(result, rs.HTTPS_ROUTE_NAME)
    assert hosts[rs.shard_of("a.example.test", SHARDS)] == ["a.example.test"]
    https = listener_pb2.Listener.FromString(
        result.snapshot.of_type(rs.LISTENER_TYPE).resources[rs.HTTPS_LISTENER_NAME].body
    )
    hcm = hcm_pb2.HttpConnectionManager.FromString(https.filter_chains[0].filters[0].typed_config.value)
    assert hcm.WhichOneof("route_specifier") == "scoped_routes"

    gone = builder.build([plain], [secure.key]).snapshot
    assert not [n for n in gone.of_type(rs.ROUTE_TYPE).resources if n.startswith("https")]
    assert not [n for n in gone.of_type(rs.SCOPED_ROUTE_TYPE).resources if n.startswith("https")]
    assert rs.HTTPS_LISTENER_NAME not in gone.of_type(rs.LISTENER_TYPE).resources


def test_route_shards_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="route shards must be from 1 to 65536, got 0"):
        BuildOptions(route_shards=0)
