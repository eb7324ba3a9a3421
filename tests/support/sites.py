"""Sites and snapshots for tests: one factory of `StaticSite` model objects, the two sites the
protocol tests share, and snapshots built with the real `SnapshotBuilder`."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from envoy.config.route.v3 import route_pb2

from snapshot import SnapshotBuilder, parse_site
from snapshot.model import API_VERSION, Backend, HealthCheck, Problem, SiteKey, StaticSite
from snapshot.resources import ROUTE_TYPE, TYPE_ORDER
from snapshot.snapshot import Resource, ResourceSet, Snapshot
from watcher.siteset import SiteSet


def site(
    name: str,
    domain: str | None = None,
    service: str | None = None,
    port: int = 80,
    *,
    namespace: str = "docs",
    created: Any = None,
    parsed: bool = False,
    origin: str | None = None,
    health_check: HealthCheck | None = None,
    **fields: Any,
) -> StaticSite:
    """A site `namespace`/`name` for `domain` (default `<name>.example.test`) served by the
    Service `service` (default `<name>-svc`) of its namespace on `port`; `created` is its
    creationTimestamp, `fields` any other field of the model.

    `parsed`: made as every source makes it, from a manifest through `parse_site` (with `origin`),
    (default `<name>.yaml`, as a folder names it) rather than built directly; only the fields a
    plain manifest has then apply.
    """
    domain = domain if domain is not None else f"{name}.example.test"
    service = service if service is not None else f"{name}-svc"
    if parsed:
        if fields or health_check is not None:
            raise TypeError("a parsed site has only a plain manifest's fields")
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if created is not None:
            meta["creationTimestamp"] = created
        return parse_site(
            {
                "apiVersion": API_VERSION,
                "kind": "StaticSite",
                "metadata": meta,
                "spec": {"domain": domain, "backend": {"serviceName": service, "servicePort": port}},
            },
            origin if origin is not None else f"{name}.yaml",
        )
    return StaticSite(
        SiteKey(namespace, name),
        domain,
        Backend(namespace, service, port, health_check),
        creation_timestamp=created,
        **fields,
    )


# The sites of the protocol, metrics and inspection tests, as a source makes them.
SITE_A = site("a", "a.example.test", "svc-a", namespace="default", parsed=True)
SITE_B = site("b", "b.example.test", "svc-b", namespace="default", parsed=True)
CLUSTER_A = "default/svc-a/80"
CLUSTER_B = "default/svc-b/80"


def site_set(*sites: StaticSite, invalid: Iterable[SiteKey] = ()) -> SiteSet:
    """A set of `sites`, and of the sites `invalid` (each with one problem)."""
    problems = {key: (Problem(f"{key}.yaml", "spec.domain", "is not a DNS name"),) for key in invalid}
    return SiteSet(MappingProxyType({s.key: s for s in sites}), invalid=MappingProxyType(problems))


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


def versions_of(snapshot: Snapshot) -> dict[str, str]:
    """The snapshot's version and that of each type ("" for the snapshot's)."""
    return {"": snapshot.version, **{t: snapshot.of_type(t).version for t in TYPE_ORDER}}
