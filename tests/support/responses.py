"""Reading the responses a test receives: the clusters the routes point at."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from snapshot.resources import ROUTE_TYPE


def _clusters(payloads: Iterable[bytes]) -> set[str]:
    out: set[str] = set()
    for payload in payloads:
        rc = route_pb2.RouteConfiguration.FromString(payload)
        for vhost in rc.virtual_hosts:
            out.update(r.route.cluster for r in vhost.routes if r.route.cluster)
    return out


def sotw_route_clusters(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    """Every cluster the routes of a state-of-the-world RDS response point at."""
    assert response.type_url == ROUTE_TYPE
    return _clusters(any_msg.value for any_msg in response.resources)


def delta_route_clusters(response: discovery_pb2.DeltaDiscoveryResponse) -> set[str]:
    """Every cluster the routes of a delta RDS response point at."""
    assert response.type_url == ROUTE_TYPE
    return _clusters(res.resource.value for res in response.resources)
