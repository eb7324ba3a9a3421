"""The builder's site features: domains, prefixes, HTTPS, headers, compression, timeouts, health."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from support.sites import site

from snapshot import resources as rs
from snapshot.builder import BuildOptions, BuildResult, Phase, SnapshotBuilder
from snapshot.model import Backend, Certificate, HealthCheck, SiteKey, StaticSite, TlsSpec
from snapshot.snapshot import REDACTED

pytestmark = pytest.mark.unit

CERT_A = Certificate("secret/docs/a-tls", b"chain-a", b"key-a")
CERT_B = Certificate("secret/docs/b-tls", b"chain-b", b"key-b")
TLS = TlsSpec(secret_name="a-tls")


def routes(
    result: BuildResult, name: str = rs.HTTP_ROUTE_NAME
) -> dict[str, route_components_pb2.VirtualHost]:
    resource = result.snapshot.of_type(rs.ROUTE_TYPE).resources[name]
    config = route_pb2.RouteConfiguration.FromString(resource.body)
    return {v.name: v for v in config.virtual_hosts}


def listener(result: BuildResult, name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener.FromString(result.snapshot.of_type(rs.LISTENER_TYPE).resources[name].body)


def cluster(result: BuildResult, name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster.FromString(result.snapshot.of_type(rs.CLUSTER_TYPE).resources[name].body)


def phase(result: BuildResult, name: str) -> Phase:
    return result.sites[SiteKey("docs", name)].phase


def test_aliases_serve_the_same_backend_and_redirect_domains_answer_301() -> None:
    result = SnapshotBuilder().build(
        [
            site(
                "a",
                "docs.example.test",
                "web",
                aliases=("docs.example.org",),
                redirect_from=("www.docs.example.test",),
            )
        ]
    )
    hosts = routes(result)
    for host in ("docs.example.test", "docs.example.org"):
        (route,) = hosts[host].routes
        assert route.route.cluster == "docs/web/80"
        assert route.name == "docs/a"
    (redirect,) = hosts["www.docs.example.test"].routes
    assert redirect.redirect.host_redirect == "docs.example.test"
    assert redirect.redirect.response_code == route_components_pb2.RedirectAction.MOVED_PERMANENTLY
    assert not redirect.redirect.https_redirect  # the path and query are kept (Envoy's default)
    assert phase(result, "a") is Phase.PROVISIONED


def test_sites_share_a_domain_by_prefix_longest_first_with_rewrite() -> None:
    result = SnapshotBuilder().build(
        [
            site("root", "docs.example.test", "web"),
            site("api", "docs.example.test", "api", path_prefix="/api", rewrite_prefix="/"),
            site("v2", "docs.example.test", "v2", path_prefix="/api/v2", rewrite_prefix="/v2"),
        ]
    )
    (vhost,) = [v for name, v in routes(result).items() if name == "docs.example.test"]
    got = [
        (r.match.path or r.match.prefix, r.route.prefix_rewrite, r.route.cluster.split("/")[1])
        for r in vhost.routes
    ]
    assert got == [
        ("/api/v2", "/v2", "v2"),
        ("/api/v2/", "/v2/", "v2"),
        ("/api", "/", "api"),
        ("/api/", "/", "api"),
        ("/", "", "web"),
    ]
    assert {phase(result, n) for n in ("root", "api", "v2")} == {Phase.PROVISIONED}


def test_a_conflict_is_the_same_domain_and_prefix_and_the_rest_is_still_served() -> None:
    result = SnapshotBuilder().build(
        [
            site("old", "docs.example.test", "web", created="2024-01-01T00:00:00Z"),
            site(
                "new",
                "other.example.test",
                "api",
                created="2025-01-01T00:00:00Z",
                aliases=("docs.example.test",),
            ),
            site("prefixed", "docs.example.test", "api", created="2025-01-01T00:00:00Z", path_prefix="/api"),
        ]
    )
    assert phase(result, "old") is Phase.PROVISIONED
    assert phase(result, "prefixed") is Phase.PROVISIONED
    state = result.sites[SiteKey("docs", "new")]
    assert state.phase is Phase.CONFLICT
    assert "domain docs.example.test is already served by site docs/old" in state.message
    assert "its other domains are served" in state.message
    hosts = routes(result)
    assert hosts["other.example.test"].routes[0].route.cluster == "docs/api/80"
    assert [r.route.cluster for r in hosts["docs.example.test"].routes] == [
        "docs/api/80",
        "docs/api/80",
        "docs/web/80",
    ]


def test_a_redirect_domain_conflicts_like_any_other() -> None:
    result = SnapshotBuilder().build(
        [
            site("a", "a.example.test", "web", created="2024-01-01T00:00:00Z"),
            site(
                "b",
                "b.example.test",
                "web",
                created="2025-01-01T00:00:00Z",
                redirect_from=("a.example.test",),
            ),
        ]
    )
    assert phase(result, "b") is Phase.CONFLICT
    assert routes(result)["a.example.test"].routes[0].route.cluster == "docs/web/80"


def test_wildcard_and_exact_domains_are_both_served() -> None:
    result = SnapshotBuilder().build(
        [site("wild", "*.example.test", "web"), site("exact", "exact.example.test", "api")]
    )
    hosts = routes(result)
    assert hosts["*.example.test"].domains == ["*.example.test"]
    assert hosts["exact.example.test"].routes[0].route.cluster == "docs/api/80"
    assert phase(result, "wild") is Phase.PROVISIONED
    assert phase(result, "exact") is Phase.PROVISIONED


def test_response_headers_compression_timeout_and_retries_are_on_the_route() -> None:
    result = SnapshotBuilder().build(
        [
            site(
                "a",
                "a.example.test",
                "web",
                headers_set=(("cache-control", "public, max-age=300"),),
                headers_remove=("server",),
                compression=False,
                request_timeout_ms=1500,
                connect_retries=2,
            ),
            site("b", "b.example.test", "web"),
        ]
    )
    (route,) = routes(result)["a.example.test"].routes
    (added,) = route.response_headers_to_add
    assert (added.header.key, added.header.value) == ("cache-control", "public, max-age=300")
    assert list(route.response_headers_to_remove) == ["server"]
    assert route.route.timeout.ToMilliseconds() == 1500
    assert route.route.retry_policy.num_retries.value == 2
    assert "connect-failure" in route.route.retry_policy.retry_on
    for name, _ in rs.COMPRESSORS:
        per_route = compressor_pb2.CompressorPerRoute()
        assert route.typed_per_filter_config[name].Unpack(per_route)
        assert per_route.disabled
    (plain,) = routes(result)["b.example.test"].routes
    assert not plain.typed_per_filter_config
    assert not plain.HasField("redirect")
    assert not plain.route.HasField("timeout")
    assert not plain.route.HasField("retry_policy")


def test_a_health_checked_backend_gets_its_own_cluster() -> None:
    check = HealthCheck("/healthz", interval_ms=2500, unhealthy_threshold=2, healthy_threshold=1)
    checked = StaticSite(SiteKey("docs", "a"), "a.example.test", Backend("docs", "web", 80, check))
    result = SnapshotBuilder().build([checked, site("b", "b.example.test", "web")])
    names = set(result.snapshot.of_type(rs.CLUSTER_TYPE).resources)
    assert "docs/web/80" in names
    (hc_name,) = names - {"docs/web/80"}
    assert hc_name.startswith("docs/web/80/hc-")
    built = cluster(result, hc_name)
    (health,) = built.health_checks
    assert health.http_health_check.path == "/healthz"
    assert health.interval.ToMilliseconds() == 2500
    assert (health.unhealthy_threshold.value, health.healthy_threshold.value) == (2, 1)
    assert built.common_lb_config.healthy_panic_threshold.value == 0
    assert routes(result)["a.example.test"].routes[0].route.cluster == hc_name
    assert not cluster(result, "docs/web/80").health_checks


def tls_site(name: str, domain: str, certificate: Certificate, **more: object) -> StaticSite:
    tls = more.pop("tls", TLS)
    return site(name, domain, "web", tls=tls, certificate=certificate, **more)


def test_https_has_a_filter_chain_per_certificate_chosen_by_sni() -> None:
    options = BuildOptions(https_port=9443)
    result = SnapshotBuilder(options).build(
        [
            tls_site("a", "a.example.test", CERT_A, redirect_from=("www.a.example.test",)),
            tls_site("b", "b.example.test", CERT_B, aliases=("*.b.example.test",)),
            site("plain", "plain.example.test", "web"),
        ]
    )
    https = listener(result, rs.HTTPS_LISTENER_NAME)
    assert https.address.socket_address.port_value == 9443
    assert [f.name for f in https.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.name: list(c.filter_chain_match.server_names) for c in https.filter_chains}
    assert chains == {
        CERT_A.name: ["a.example.test", "www.a.example.test"],
        CERT_B.name: ["*.b.example.test", "b.example.test"],
    }
    secrets = result.snapshot.of_type(rs.SECRET_TYPE).resources
    assert set(secrets) == {CERT_A.name, CERT_B.name}
    secret = secret_pb2.Secret.FromString(secrets[CERT_A.name].body)
    assert secret.tls_certificate.certificate_chain.inline_bytes == b"chain-a"
    assert secret.tls_certificate.private_key.inline_bytes == b"key-a"
    secure = routes(result, rs.HTTPS_ROUTE_NAME)
    assert set(secure) == {
        "a.example.test",
        "www.a.example.test",
        "b.example.test",
        "*.b.example.test",
        "unknown-domain",
    }
    assert secure["a.example.test"].routes[0].route.cluster == "docs/web/80"
    www = secure["www.a.example.test"].routes[0].redirect
    assert (www.host_redirect, www.https_redirect) == ("a.example.test", True)
    # Plain HTTP: TLS sites answer with a redirect to HTTPS, the others are served.
    plain = routes(result)
    to_https = plain["a.example.test"].routes[0].redirect
    assert to_https.https_redirect
    assert not to_https.host_redirect
    assert to_https.response_code == route_components_pb2.RedirectAction.MOVED_PERMANENTLY
    assert plain["www.a.example.test"].routes[0].redirect.https_redirect
    assert plain["plain.example.test"].routes[0].route.cluster == "docs/web/80"


def test_allow_insecure_serves_plain_http_too() -> None:
    tls = TlsSpec(secret_name="a-tls", allow_insecure=True)
    result = SnapshotBuilder().build([tls_site("a", "a.example.test", CERT_A, tls=tls)])
    assert routes(result)["a.example.test"].routes[0].route.cluster == "docs/web/80"
    assert routes(result, rs.HTTPS_ROUTE_NAME)["a.example.test"].routes[0].route.cluster == "docs/web/80"


def test_a_renewed_certificate_changes_the_secret_only() -> None:
    builder = SnapshotBuilder()
    first = builder.build([tls_site("a", "a.example.test", CERT_A)])
    renewed = Certificate(CERT_A.name, b"chain-a2", b"key-a2")
    second = builder.build([tls_site("a", "a.example.test", renewed)])
    for type_url in (rs.LISTENER_TYPE, rs.ROUTE_TYPE, rs.CLUSTER_TYPE):
        assert second.snapshot.of_type(type_url).version == first.snapshot.of_type(type_url).version
    secrets = second.snapshot.of_type(rs.SECRET_TYPE)
    assert secrets.changed == {CERT_A.name}
    body = secret_pb2.Secret.FromString(secrets.resources[CERT_A.name].body)
    assert body.tls_certificate.certificate_chain.inline_bytes == b"chain-a2"


def test_a_site_is_told_which_of_its_domains_its_certificate_is_not_for() -> None:
    builder = SnapshotBuilder()
    narrow = Certificate(CERT_A.name, b"chain-a", b"key-a", names=("a.example.test", "*.a.example.test"))
    declared = dict(aliases=("x.a.example.test", "x.y.a.example.test"), redirect_from=("www.example.test",))
    first = builder.build([tls_site("a", "a.example.test", narrow, **declared)])
    told = first.sites[SiteKey("docs", "a")]
    assert told.phase is Phase.PROVISIONED
    assert told.reason == "Accepted"
    assert told.message == (
        f"sent to the gateways; certificate {CERT_A.name} is not for x.y.a.example.test, www.example.test"
        " (it names a.example.test, *.a.example.test): HTTPS clients refuse the connection for those domains"
    )

    wide = Certificate(
        CERT_A.name,
        b"chain-a2",
        b"key-a2",
        names=("*.a.example.test", "*.y.a.example.test", "a.example.test", "www.example.test"),
    )
    second = builder.build([tls_site("a", "a.example.test", wide, **declared)])
    assert second.sites[SiteKey("docs", "a")].message == "sent to the gateways"
    assert SiteKey("docs", "a") in second.changed


def test_only_the_domains_served_with_a_sites_own_certificate_are_checked_against_it() -> None:
    none = Certificate(CERT_B.name, b"chain-b", b"key-b", names=())
    many = Certificate(CERT_A.name, b"chain-a", b"key-a", names=tuple(f"n{i}.example.test" for i in range(7)))
    result = SnapshotBuilder().build(
        [
            tls_site("old", "docs.example.test", many, created="2024-01-01T00:00:00Z"),
            tls_site(
                "new",
                "docs.example.test",
                none,
                created="2025-01-01T00:00:00Z",
                path_prefix="/api",
                aliases=("api.example.test",),
            ),
        ]
    )
    old = result.sites[SiteKey("docs", "old")].message
    assert old.endswith(
        "is not for docs.example.test (it names n0.example.test, n1.example.test, n2.example.test,"
        " n3.example.test, n4.example.test and 2 more): HTTPS clients refuse the connection for those domains"
    )
    new = result.sites[SiteKey("docs", "new")].message
    assert f"domain docs.example.test is served with certificate {CERT_A.name}" in new
    assert f"certificate {CERT_B.name} is not for api.example.test (it names no DNS name)" in new
    assert "not for docs.example.test" not in new, "that domain is not served with its certificate"


def test_a_certificate_is_for_its_names_and_one_label_under_its_wildcards() -> None:
    certificate = Certificate("c", b"", b"", names=("a.example.test", "*.b.example.test"))
    assert certificate.covers("a.example.test")
    assert certificate.covers("A.Example.Test")
    assert certificate.covers("x.b.example.test")
    assert certificate.covers("*.b.example.test")
    assert not certificate.covers("b.example.test")
    assert not certificate.covers("x.y.b.example.test")
    assert not certificate.covers("*.a.example.test")
    assert not certificate.covers("x.a.example.test")
    assert Certificate("c", b"", b"").covers("anything.example.test"), "names not known: not judged"


def test_without_tls_sites_there_is_no_https_listener_route_or_secret() -> None:
    builder = SnapshotBuilder()
    with_tls = builder.build([tls_site("a", "a.example.test", CERT_A), site("b", "b.example.test", "web")])
    assert rs.HTTPS_LISTENER_NAME in with_tls.snapshot.of_type(rs.LISTENER_TYPE).resources
    without = builder.build([site("b", "b.example.test", "web")])
    assert set(without.snapshot.of_type(rs.LISTENER_TYPE).resources) == {rs.HTTP_LISTENER_NAME}
    assert set(without.snapshot.of_type(rs.ROUTE_TYPE).resources) == {rs.HTTP_ROUTE_NAME}
    assert not without.snapshot.of_type(rs.SECRET_TYPE).resources
    assert (
        without.snapshot.version
        == SnapshotBuilder().build([site("b", "b.example.test", "web")]).snapshot.version
    )


def test_the_oldest_tls_site_on_a_domain_gives_its_certificate() -> None:
    result = SnapshotBuilder().build(
        [
            tls_site("old", "docs.example.test", CERT_A, created="2024-01-01T00:00:00Z"),
            tls_site("new", "docs.example.test", CERT_B, created="2025-01-01T00:00:00Z", path_prefix="/api"),
        ]
    )
    (chain,) = listener(result, rs.HTTPS_LISTENER_NAME).filter_chains
    assert chain.name == CERT_A.name
    assert set(result.snapshot.of_type(rs.SECRET_TYPE).resources) == {CERT_A.name}
    told = result.sites[SiteKey("docs", "new")]
    assert told.phase is Phase.PROVISIONED
    assert f"domain docs.example.test is served with certificate {CERT_A.name}" in told.message
    assert result.sites[SiteKey("docs", "old")].message == "sent to the gateways"


def test_a_site_is_told_when_an_older_tls_site_arrives_on_its_domain() -> None:
    builder = SnapshotBuilder()
    new = tls_site("new", "docs.example.test", CERT_B, created="2025-01-01T00:00:00Z", path_prefix="/api")
    alone = builder.build([new])
    assert alone.sites[new.key].message == "sent to the gateways"
    old = tls_site("old", "docs.example.test", CERT_A, created="2024-01-01T00:00:00Z")
    both = builder.build([new, old], changed={old.key})
    assert new.key in both.changed
    assert CERT_A.name in both.sites[new.key].message
    gone = builder.build([new], changed={old.key})
    assert gone.sites[new.key].message == "sent to the gateways"


def test_a_tls_site_without_its_certificate_is_not_served() -> None:
    result = SnapshotBuilder().build([site("a", "a.example.test", "web", tls=TLS)])
    state = result.sites[SiteKey("docs", "a")]
    assert (state.phase, state.reason) == (Phase.INVALID, "MissingCertificate")
    assert set(routes(result)) == {"unknown-domain"}


def test_rendering_never_shows_a_private_key() -> None:
    result = SnapshotBuilder().build([tls_site("a", "a.example.test", CERT_A)])
    (secret,) = result.snapshot.to_json()["Secret"]
    assert secret["tlsCertificate"]["privateKey"] == REDACTED
    assert "certificateChain" in secret["tlsCertificate"]


def test_a_percent_sign_in_a_header_value_is_sent_as_written() -> None:
    result = SnapshotBuilder().build(
        [site("a", "a.example.test", "web", headers_set=(("x-share", "50% off %START_TIME%"),))]
    )
    (added,) = routes(result)["a.example.test"].routes[0].response_headers_to_add
    assert added.header.value == "50%% off %%START_TIME%%"  # Envoy reads %% as one literal %


def test_redirects_to_https_name_the_public_port_unless_it_is_443() -> None:
    sites = [tls_site("a", "a.example.test", CERT_A, redirect_from=("www.a.example.test",))]
    default = routes(SnapshotBuilder().build(sites))
    assert default["a.example.test"].routes[0].redirect.port_redirect == 0
    moved = routes(SnapshotBuilder(BuildOptions(public_https_port=8443)).build(sites))
    assert moved["a.example.test"].routes[0].redirect.port_redirect == 8443
    assert moved["www.a.example.test"].routes[0].redirect.port_redirect == 8443
