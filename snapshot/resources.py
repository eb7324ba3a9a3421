"""One function per Envoy resource kind: the one place a site becomes Envoy configuration."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, substitution_format_string_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2, duration_pb2, message, struct_pb2, wrappers_pb2

from .model import Backend

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# The order in which a change reaches Envoy: clusters exist before anything points at them.
TYPE_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

MESSAGE_CLASSES: dict[str, type[message.Message]] = {
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
}

HTTP_LISTENER_NAME = "http"
HTTP_ROUTE_NAME = "http"
UNKNOWN_DOMAIN_HOST = "unknown-domain"
UNKNOWN_DOMAIN_BODY = "No site is configured for this domain.\n"

DEFAULT_HOST_TEMPLATE = "{service}.{namespace}.svc.cluster.local"


def cluster_name(backend: Backend) -> str:
    """Clusters are named after the Service they reach: namespace/service/port."""
    return f"{backend.namespace}/{backend.service_name}/{backend.service_port}"


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
    return cluster_pb2.Cluster(
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


def virtual_host(site_name: str, domain: str, target_cluster: str) -> route_components_pb2.VirtualHost:
    """One virtual host per site: every path of its domain goes to its backend cluster."""
    return route_components_pb2.VirtualHost(
        name=site_name,
        domains=[domain],
        routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                route=route_components_pb2.RouteAction(cluster=target_cluster),
            )
        ],
    )


class _Reuse:
    """Serialize many resources of one shape fast: fill a template message, then serialize.

    The template is the output of the message function itself, so the function stays the one
    definition of the resource; only names and addresses differ from one resource to the next.
    """

    def __init__(self) -> None:
        self._cluster: cluster_pb2.Cluster | None = None
        self._vhost: route_components_pb2.VirtualHost | None = None

    def cluster(self, backend: Backend, host_template: str) -> bytes:
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
        msg.name = site_name
        msg.domains[0] = domain
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


def route_configuration_header(name: str) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration without its virtual hosts, which are appended as cached bytes."""
    return route_pb2.RouteConfiguration(name=name)


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


def http_listener(
    address: str, port: int, route_name: str, access_log: str = ACCESS_LOG_STDOUT
) -> listener_pb2.Listener:
    """The HTTP listener; its connection manager takes its routes over ADS (RDS)."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="http",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(
            route_config_name=route_name,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        strip_any_host_port=True,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
        ],
        access_log=access_logs(access_log),
    )
    return listener_pb2.Listener(
        name=HTTP_LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
                    )
                ]
            )
        ],
    )


def pack(msg: message.Message) -> any_pb2.Any:
    """Wrap a message in Any with deterministic bytes, so equal content gives equal versions."""
    return any_pb2.Any(
        type_url="type.googleapis.com/" + msg.DESCRIPTOR.full_name,
        value=msg.SerializeToString(deterministic=True),
    )
