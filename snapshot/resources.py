"""One function per Envoy resource kind: the one place a site becomes Envoy configuration."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, message, struct_pb2, wrappers_pb2

from .model import Backend, Certificate, HealthCheck, NamedCertificate, StaticSite

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order in which a change reaches Envoy: clusters exist before anything points at them,
# a certificate before the listener that serves it, and a route scope before the route
# configuration it names.
TYPE_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE, SCOPED_ROUTE_TYPE, ROUTE_TYPE)

MESSAGE_CLASSES: dict[str, type[message.Message]] = {
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    SECRET_TYPE: secret_pb2.Secret,
    LISTENER_TYPE: listener_pb2.Listener,
    SCOPED_ROUTE_TYPE: scoped_route_pb2.ScopedRouteConfiguration,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
}

HTTP_LISTENER_NAME = "http"
HTTP_ROUTE_NAME = "http"
HTTPS_LISTENER_NAME = "https"
HTTPS_ROUTE_NAME = "https"
# The compressors every listener has, in the order of preference when a client accepts both.
COMPRESSORS = (("compressor-brotli", "brotli"), ("compressor-gzip", "gzip"))
UNKNOWN_DOMAIN_HOST = "unknown-domain"
UNKNOWN_DOMAIN_BODY = "No site is configured for this domain.\n"

DEFAULT_HOST_TEMPLATE = "{service}.{namespace}.svc.cluster.local"


def cluster_name(backend: Backend) -> str:
    """Clusters are named after the Service they reach: namespace/service/port.

    A backend with a health check gets a cluster of its own (the check is a property of the
    cluster), named with a short digest of the check: two sites that check the same Service
    differently do not share it.
    """
    name = f"{backend.namespace}/{backend.service_name}/{backend.service_port}"
    check = backend.health_check
    if check is None:
        return name
    digest = hashlib.blake2b(repr(tuple(check)).encode(), digest_size=4).hexdigest()
    return f"{name}/hc-{digest}"


def backend_host(backend: Backend, template: str) -> str:
    """The DNS name (or address) Envoy resolves to reach a backend."""
    return template.format(service=backend.service_name, namespace=backend.namespace)


def check_host_template(template: str) -> None:
    """Raise ValueError when a host template uses a placeholder we do not fill."""
    try:
        template.format(service="svc", namespace="ns")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"backend host template {template!r} is invalid ({exc}); it may use {{service}} and {{namespace}}"
        ) from None


def cluster(backend: Backend, host_template: str) -> cluster_pb2.Cluster:
    """A STRICT_DNS cluster to the backend Service, shared by every site that uses it."""
    name = cluster_name(backend)
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(
                    address=backend_host(backend, host_template), port_value=backend.service_port
                )
            )
        )
    )
    out = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=2),
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        dns_refresh_rate=duration_pb2.Duration(seconds=30),
        respect_dns_ttl=True,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )
    if backend.health_check is not None:
        out.health_checks.append(health_check(backend.health_check, backend_host(backend, host_template)))
        # Envoy's panic mode would send to unhealthy endpoints once most of them fail: with a
        # health check asked for, a dead backend gets no requests (503 at once) instead.
        out.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=0))
    return out


def health_check(check: HealthCheck, host: str) -> health_check_pb2.HealthCheck:
    """GET `check.path` every interval; out after `unhealthy_threshold` failures, back after `healthy_threshold`."""
    interval = _duration(check.interval_ms)
    return health_check_pb2.HealthCheck(
        timeout=_duration(min(check.interval_ms, 5_000)),
        interval=interval,
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=check.unhealthy_threshold),
        healthy_threshold=wrappers_pb2.UInt32Value(value=check.healthy_threshold),
        no_traffic_interval=interval,  # a backend nobody visits is still checked at the interval
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(host=host, path=check.path),
    )


def _duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


class Mount(NamedTuple):
    """A site's place on one domain: the prefix it serves there, or redirects from there."""

    site: StaticSite
    prefix: str  # "/" or "/a/b"
    redirect: bool  # a domain of spec.redirectFrom: answered with a 301 to spec.domain
    cluster: str  # the site's cluster (its name computed once, when the site claims)


def is_plain(site: StaticSite) -> bool:
    """A site with none of the optional route features: its route is the one shared shape."""
    return (
        site.path_prefix == "/"
        and site.rewrite_prefix is None
        and site.tls is None
        and not site.headers_set
        and not site.headers_remove
        and site.compression
        and site.request_timeout_ms is None
        and not site.connect_retries
    )


def virtual_host(site_name: str, domain: str, target_cluster: str) -> route_components_pb2.VirtualHost:
    """The virtual host of a domain that one plain site serves whole: every path to its backend."""
    return route_components_pb2.VirtualHost(
        name=domain,
        domains=[domain],
        routes=[
            route_components_pb2.Route(
                name=site_name,
                match=route_components_pb2.RouteMatch(prefix="/"),
                route=route_components_pb2.RouteAction(cluster=target_cluster),
            )
        ],
    )


def mounted_virtual_host(
    host: str, mounts: list[Mount], secure: bool, https_port: int = 443
) -> route_components_pb2.VirtualHost:
    """The virtual host of a domain: the routes of every site mounted on it, longest prefix first.

    `secure`: for the HTTPS listener. On plain HTTP, a site that wants HTTPS only answers
    with a 301 to the same URL over HTTPS.
    """
    ordered = sorted(mounts, key=lambda m: (-len(m.prefix), m.prefix))
    routes = [route for mount in ordered for route in site_routes(mount, secure, https_port)]
    return route_components_pb2.VirtualHost(name=host, domains=[host], routes=routes)


def _matches(prefix: str) -> list[tuple[route_components_pb2.RouteMatch, str]]:
    """The matches of a mount at `prefix`, each with what the prefix is rewritten from.

    "/docs" matches "/docs" itself and everything under "/docs/", never "/docsx".
    """
    if prefix == "/":
        return [(route_components_pb2.RouteMatch(prefix="/"), "/")]
    return [
        (route_components_pb2.RouteMatch(path=prefix), prefix),
        (route_components_pb2.RouteMatch(prefix=prefix + "/"), prefix + "/"),
    ]


def site_routes(mount: Mount, secure: bool, https_port: int = 443) -> list[route_components_pb2.Route]:
    """The routes of one mount. A redirect to HTTPS names `https_port` unless it is 443, the
    port clients use for HTTPS (the gateways' Service or load balancer port)."""
    site = mount.site
    name = str(site.key)
    to_https = not secure and site.https_only
    routes: list[route_components_pb2.Route] = []
    for match, matched in _matches(mount.prefix):
        route = route_components_pb2.Route(name=name, match=match)
        if mount.redirect or to_https:
            redirect = route.redirect
            redirect.response_code = route_components_pb2.RedirectAction.MOVED_PERMANENTLY
            if mount.redirect:
                redirect.host_redirect = site.domain
            if to_https or (secure and mount.redirect):
                redirect.https_redirect = True
                if https_port != 443:
                    redirect.port_redirect = https_port
            routes.append(route)
            continue
        action = route.route
        action.cluster = mount.cluster
        if site.rewrite_prefix is not None:
            rewrite = site.rewrite_prefix
            # "/docs/" -> "/", "/docs" -> "/": a trailing slash stays a trailing slash.
            action.prefix_rewrite = rewrite if not matched.endswith("/") else rewrite.rstrip("/") + "/"
        if site.request_timeout_ms is not None:
            action.timeout.CopyFrom(_duration(site.request_timeout_ms))
        if site.connect_retries:
            action.retry_policy.retry_on = "connect-failure,refused-stream,reset-before-request"
            action.retry_policy.num_retries.value = site.connect_retries
        for header, value in site.headers_set:
            route.response_headers_to_add.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=header, value=value.replace("%", "%%")),  # no formatters
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        route.response_headers_to_remove.extend(site.headers_remove)
        if not site.compression:
            off = pack(compressor_pb2.CompressorPerRoute(disabled=True))
            for filter_name, _ in COMPRESSORS:
                route.typed_per_filter_config[filter_name].CopyFrom(off)
        routes.append(route)
    return routes


class _Reuse:
    """Serialize many resources of one shape fast: fill a template message, then serialize.

    The template is the output of the message function itself, so the function stays the one
    definition of the resource; only names and addresses differ from one resource to the next.
    """

    def __init__(self) -> None:
        self._cluster: cluster_pb2.Cluster | None = None
        self._vhost: route_components_pb2.VirtualHost | None = None

    def cluster(self, backend: Backend, host_template: str) -> bytes:
        if backend.health_check is not None:  # not the shared shape
            built: bytes = cluster(backend, host_template).SerializeToString(deterministic=True)
            return built
        msg = self._cluster
        if msg is None:
            msg = self._cluster = cluster(backend, host_template)
        name = cluster_name(backend)
        msg.name = name
        msg.load_assignment.cluster_name = name
        address = msg.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        address.address = backend_host(backend, host_template)
        address.port_value = backend.service_port
        data: bytes = msg.SerializeToString(deterministic=True)
        return data

    def virtual_host(self, site_name: str, domain: str, target_cluster: str) -> bytes:
        msg = self._vhost
        if msg is None:
            msg = self._vhost = virtual_host(site_name, domain, target_cluster)
        msg.name = domain
        msg.domains[0] = domain
        msg.routes[0].name = site_name
        msg.routes[0].route.cluster = target_cluster
        data: bytes = msg.SerializeToString(deterministic=True)
        return data


serialized = _Reuse()


def unknown_domain_host() -> route_components_pb2.VirtualHost:
    """The catch-all virtual host: a request for a domain no site serves gets a 404."""
    return route_components_pb2.VirtualHost(
        name=UNKNOWN_DOMAIN_HOST,
        domains=["*"],
        routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                direct_response=route_components_pb2.DirectResponseAction(
                    status=404, body=base_pb2.DataSource(inline_string=UNKNOWN_DOMAIN_BODY)
                ),
            )
        ],
    )


def route_configuration_header(name: str, sharded: bool = False) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration without its virtual hosts, which are appended as cached bytes.

    `sharded`: one shard of a listener's routes, chosen by a header that is not forwarded.
    """
    config = route_pb2.RouteConfiguration(name=name)
    if sharded:
        config.request_headers_to_remove.append(SHARD_HEADER)
    return config


# Route shards: with more than one, each listener's virtual hosts are split by a hash of the
# domain into that many RouteConfigurations, and a change rebuilds in Envoy the one shard of
# its domain only. The connection manager picks the shard by scoped routes (SRDS) keyed by a
# header that a Lua filter sets from the Host header; the scopes of both listeners come on
# one subscription, so each listener's keys have a prefix of their own.
SHARD_HEADER = "x-staticsite-route-shard"
SHARD_KEY_PREFIX = {HTTP_ROUTE_NAME: "h", HTTPS_ROUTE_NAME: "s"}
ROUTE_SCOPES_NAME = "sites"


def shard_of(host: str, shards: int) -> int:
    """The route shard of a domain (a wildcard's is every shard): the Lua filter computes the
    same from the Host header, lowercased and without its port."""
    h = 0
    for byte in host.lower().encode():
        h = (h * 31 + byte) % shards
    return h


def shard_route_name(route_name: str, shard: int) -> str:
    return f"{route_name}/{shard}"


def route_scope(route_name: str, shard: int) -> scoped_route_pb2.ScopedRouteConfiguration:
    """The scope that sends requests of a shard of `route_name` to its RouteConfiguration."""
    name = shard_route_name(route_name, shard)
    return scoped_route_pb2.ScopedRouteConfiguration(
        name=name,
        route_configuration_name=name,
        key=scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[
                scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(
                    string_key=f"{SHARD_KEY_PREFIX[route_name]}{shard}"
                )
            ]
        ),
    )


_SHARD_SCRIPT = """\
function envoy_on_request(handle)
  local headers = handle:headers()
  local host = string.lower(headers:get(":authority") or "")
  local colon = string.find(host, ":", 1, true)
  if colon then host = string.sub(host, 1, colon - 1) end
  local h = 0
  for i = 1, #host do h = (h * 31 + string.byte(host, i)) % SHARDS end
  headers:replace("HEADER", "PREFIX" .. h)
end
"""


def shard_filter(route_name: str, shards: int) -> hcm_pb2.HttpFilter:
    """The Lua filter that names the route shard of a request (see `shard_of`)."""
    script = (
        _SHARD_SCRIPT.replace("SHARDS", str(shards))
        .replace("HEADER", SHARD_HEADER)
        .replace("PREFIX", SHARD_KEY_PREFIX[route_name])
    )
    lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=script))
    return hcm_pb2.HttpFilter(name="envoy.filters.http.lua", typed_config=pack(lua))


def _scoped_routes() -> hcm_pb2.ScopedRoutes:
    extractor = hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
        name=SHARD_HEADER, index=0
    )
    return hcm_pb2.ScopedRoutes(
        name=ROUTE_SCOPES_NAME,
        scope_key_builder=hcm_pb2.ScopedRoutes.ScopeKeyBuilder(
            fragments=[hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(header_value_extractor=extractor)]
        ),
        rds_config_source=_ads_source(),
        scoped_rds=hcm_pb2.ScopedRds(scoped_rds_config_source=_ads_source()),
    )


# Where the gateways write their access log: one JSON object per request.
ACCESS_LOG_STDOUT = "stdout"
ACCESS_LOG_STDERR = "stderr"
ACCESS_LOG_OFF = "off"
# The fields of each line: what an operator of static sites asks of a request.
ACCESS_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "domain": "%REQ(:AUTHORITY)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}


def check_access_log(destination: str) -> None:
    """`stdout`, `stderr`, `off`, or an absolute path on the gateways."""
    if destination in (ACCESS_LOG_STDOUT, ACCESS_LOG_STDERR, ACCESS_LOG_OFF):
        return
    if not destination.startswith("/") or any(c in destination for c in "\0\n\r"):
        raise ValueError(
            f"access log must be stdout, stderr, off or an absolute path on the gateways, got {destination!r}"
        )


def access_logs(destination: str) -> list[accesslog_pb2.AccessLog]:
    """The HTTP listener's access log: one JSON line per request, or none."""
    if destination == ACCESS_LOG_OFF:
        return []
    fields = struct_pb2.Struct()
    fields.update(ACCESS_LOG_FIELDS)
    line = substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    sink: message.Message
    if destination == ACCESS_LOG_STDOUT:
        name, sink = "envoy.access_loggers.stdout", stream_pb2.StdoutAccessLog(log_format=line)
    elif destination == ACCESS_LOG_STDERR:
        name, sink = "envoy.access_loggers.stderr", stream_pb2.StderrAccessLog(log_format=line)
    else:
        name, sink = "envoy.access_loggers.file", file_pb2.FileAccessLog(path=destination, log_format=line)
    return [accesslog_pb2.AccessLog(name=name, typed_config=pack(sink))]


def compressor_filters() -> list[hcm_pb2.HttpFilter]:
    """Brotli and gzip for text responses (Envoy's default content types), when clients ask."""
    libraries: dict[str, message.Message] = {"brotli": brotli_pb2.Brotli(), "gzip": gzip_pb2.Gzip()}
    filters = []
    for filter_name, library in COMPRESSORS:
        config = compressor_pb2.Compressor(
            compressor_library=extension_pb2.TypedExtensionConfig(
                name=f"envoy.compression.{library}.compressor", typed_config=pack(libraries[library])
            )
        )
        filters.append(hcm_pb2.HttpFilter(name=filter_name, typed_config=pack(config)))
    return filters


def connection_manager(
    stat_prefix: str, route_name: str, access_log: str, shards: int = 1
) -> hcm_pb2.HttpConnectionManager:
    """The HTTP connection manager of a listener; its routes come over ADS: RDS, or with
    more than one route shard, scoped routes (SRDS) and RDS."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        strip_any_host_port=True,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        http_filters=[
            *([shard_filter(route_name, shards)] if shards > 1 else []),
            *compressor_filters(),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
        ],
        access_log=access_logs(access_log),
    )
    if shards > 1:
        manager.scoped_routes.CopyFrom(_scoped_routes())
    else:
        manager.rds.CopyFrom(hcm_pb2.Rds(route_config_name=route_name, config_source=_ads_source()))
    return manager


def _manager_filter(manager: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )


def _socket(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def http_listener(
    address: str, port: int, route_name: str, access_log: str = ACCESS_LOG_STDOUT, shards: int = 1
) -> listener_pb2.Listener:
    """The HTTP listener: every site, by the Host header."""
    manager = connection_manager("http", route_name, access_log, shards)
    return listener_pb2.Listener(
        name=HTTP_LISTENER_NAME,
        address=_socket(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[_manager_filter(manager)])],
    )


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def https_listener(
    address: str,
    port: int,
    chains: list[tuple[str, list[str]]],
    access_log: str = ACCESS_LOG_STDOUT,
    shards: int = 1,
) -> listener_pb2.Listener:
    """The HTTPS listener: a filter chain per certificate, chosen by the client's SNI.

    `chains` pairs each certificate's SDS name with the domains it serves. The certificates
    themselves come over SDS on the ADS stream, so a renewal changes no listener.
    """
    manager = _manager_filter(connection_manager("https", HTTPS_ROUTE_NAME, access_log, shards))
    filter_chains = []
    for secret_name, hosts in chains:
        context = tls_pb2.DownstreamTlsContext(
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[
                    secret_pb2.SdsSecretConfig(name=secret_name, sds_config=_ads_source())
                ],
                alpn_protocols=["h2", "http/1.1"],
            )
        )
        filter_chains.append(
            listener_components_pb2.FilterChain(
                name=secret_name,
                filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=hosts),
                filters=[manager],
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=pack(context)
                ),
            )
        )
    return listener_pb2.Listener(
        name=HTTPS_LISTENER_NAME,
        address=_socket(address, port),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=pack(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=filter_chains,
    )


def secret(certificate: Certificate) -> secret_pb2.Secret:
    """A certificate and its key, as SDS serves them (a certificate known by name alone, when
    manifests are checked offline, has no content: such a snapshot is never served)."""
    if isinstance(certificate, NamedCertificate):
        return secret_pb2.Secret(name=certificate.name)
    return secret_pb2.Secret(
        name=certificate.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate.chain),
            private_key=base_pb2.DataSource(inline_bytes=certificate.key),
        ),
    )


def pack(msg: message.Message) -> any_pb2.Any:
    """Wrap a message in Any with deterministic bytes, so equal content gives equal versions."""
    return any_pb2.Any(
        type_url="type.googleapis.com/" + msg.DESCRIPTOR.full_name,
        value=msg.SerializeToString(deterministic=True),
    )
