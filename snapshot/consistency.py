"""The consistency check: nothing the builder produced may point at what does not exist.

A snapshot Envoy would reject for its own inconsistency (a route to a missing cluster, a
listener without its routes or certificates, a domain twice) is never published. A small
build checks the domains it changed; a first or a large one checks the whole graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from . import resources as rs
from .route_table import ListenerRoutes, RouteTable
from .snapshot import ResourceSet


class InconsistentSnapshot(RuntimeError):
    """The builder produced something Envoy would reject; it must never be published."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What the snapshot will contain, before serialization: the graph that gets checked."""

    clusters: frozenset[str]
    # route name -> (virtual host, domain, the clusters its routes use)
    routes: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]]
    listeners: Mapping[str, tuple[str, ...]]  # listener name -> the route names it uses
    secrets: frozenset[str] = frozenset()
    listener_secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # listener -> SDS names
    scopes: Mapping[str, str] = field(default_factory=dict)  # route scope -> the route name it picks


def plan_of(
    mounts: Mapping[str, Mapping[str, rs.Mount]],
    listeners_routes: Iterable[ListenerRoutes],
    clusters: ResourceSet,
    scopes: ResourceSet,
    routes: ResourceSet,
    listeners: ResourceSet,
    secrets: ResourceSet,
    chains: Iterable[str],
) -> Plan:
    """The whole graph of a build: its mounts by domain, the route tables of each listener,
    its resources, and the certificates (`chains`) of the HTTPS listener's filter chains."""

    def hosts(table: RouteTable) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        return tuple(
            (
                domain,
                domain,
                tuple(m.cluster for m in mounts[domain].values() if not m.redirect),
            )
            for domain in table.domains
        )

    by_name = {listener.name: listener for listener in listeners_routes}
    planned = {
        table.name: hosts(table)
        for listener in by_name.values()
        for table in listener.tables
        if table.name in routes.resources
    }
    listened = {rs.HTTP_LISTENER_NAME: by_name[rs.HTTP_ROUTE_NAME].route_names}
    listener_secrets: dict[str, tuple[str, ...]] = {}
    if rs.HTTPS_LISTENER_NAME in listeners.resources:
        listened[rs.HTTPS_LISTENER_NAME] = by_name[rs.HTTPS_ROUTE_NAME].route_names
        listener_secrets[rs.HTTPS_LISTENER_NAME] = tuple(chains)
    scoped = {name: res.decode().route_configuration_name for name, res in scopes.resources.items()}
    return Plan(
        clusters=frozenset(clusters.resources),
        routes=planned,
        listeners=listened,
        secrets=frozenset(secrets.resources),
        listener_secrets=listener_secrets,
        scopes=scoped,
    )


def check_domains(
    hosts: Set[str],
    mounts: Mapping[str, Mapping[str, rs.Mount]],
    clusters: ResourceSet,
    routes: ResourceSet,
    http: ListenerRoutes,
) -> None:
    """Check the domains a small build changed: their routes' clusters exist, they are in
    lower case, and the HTTP routes exist with every served domain."""
    problems: list[str] = []
    resources = clusters.resources
    for host in hosts:
        for mount in mounts.get(host, {}).values():
            if mount.redirect:
                continue
            target = mount.cluster
            if target not in resources:
                problems.append(
                    f"site {mount.site.key} on domain {host} routes to cluster {target}, which does not exist"
                )
        if host != host.lower():
            problems.append(f"domain {host} is not in lower case")
    tables = {table.name: table for host in hosts for table in http.tables_of(host)}
    for table in tables.values():
        if table.name not in routes.resources:
            problems.append(f"the listener uses route configuration {table.name}, which does not exist")
        if len(table.vhosts) != len(table.domains):
            problems.append(
                f"route configuration {table.name}: the virtual hosts and the served domains disagree"
            )
    if problems:
        raise InconsistentSnapshot("; ".join(problems))


def check_consistency(plan: Plan) -> None:
    """Every route's cluster exists, every listener's routes and certificates exist, no domain twice."""
    problems: list[str] = []
    for listener, names in plan.listeners.items():
        for route in names:
            if route not in plan.routes:
                problems.append(f"listener {listener} uses route configuration {route}, which does not exist")
    picked = set(plan.scopes.values())
    for listener, names in plan.listeners.items():
        for route in names if plan.scopes else ():
            if route not in picked:
                problems.append(f"listener {listener}: no route scope picks route configuration {route}")
    for scope, route in plan.scopes.items():
        if route not in plan.routes:
            problems.append(f"route scope {scope} picks route configuration {route}, which does not exist")
    for listener, names in plan.listener_secrets.items():
        for name in names:
            if name not in plan.secrets:
                problems.append(f"listener {listener} serves certificate {name}, which does not exist")
    for route, hosts in plan.routes.items():
        names_seen: set[str] = set()
        domains: dict[str, str] = {}
        for vhost, domain, targets in hosts:
            if vhost in names_seen:
                problems.append(f"route configuration {route} has virtual host {vhost} twice")
            names_seen.add(vhost)
            folded = domain.lower()
            if folded in domains:
                problems.append(
                    f"route configuration {route}: domain {domain} is in {domains[folded]} and {vhost}"
                )
            domains[folded] = vhost
            for target in targets:
                if target not in plan.clusters:
                    problems.append(f"virtual host {vhost} routes to cluster {target}, which does not exist")
    if problems:
        raise InconsistentSnapshot("; ".join(problems))
