"""The builder: sites in, a consistent snapshot and a state per site out.

It decides domain conflicts, reuses every resource whose inputs did not change (by value,
so the bytes of an unchanged cluster or virtual host are never rebuilt), and checks the
result before anyone can publish it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import resources as rs
from . import wire
from .model import Backend, SiteKey, StaticSite
from .snapshot import Resource, ResourceSet, Snapshot


class Phase(enum.StrEnum):
    """Where a site stands, as reported to its owner."""

    PROVISIONED = "Provisioned"
    INVALID = "Invalid"
    CONFLICT = "Conflict"
    REJECTED = "Rejected"


@dataclass(frozen=True, slots=True)
class SiteState:
    key: SiteKey
    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class BuildOptions:
    http_port: int = 8080
    listen_address: str = "0.0.0.0"
    backend_host_template: str = rs.DEFAULT_HOST_TEMPLATE

    def __post_init__(self) -> None:
        rs.check_host_template(self.backend_host_template)
        if not 1 <= self.http_port <= 65535:
            raise ValueError(f"HTTP port must be from 1 to 65535, got {self.http_port}")


@dataclass(frozen=True, slots=True)
class BuildResult:
    snapshot: Snapshot
    sites: Mapping[SiteKey, SiteState] = field(default_factory=dict)


class InconsistentSnapshot(RuntimeError):
    """The builder produced something Envoy would reject; it must never be published."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the snapshot will contain, before serialization: the graph that gets checked."""

    clusters: frozenset[str]
    routes: Mapping[str, tuple[tuple[str, str, str], ...]]  # route name -> (vhost, domain, cluster)
    listeners: Mapping[str, str]  # listener name -> route name


def winners(sites: Iterable[StaticSite]) -> tuple[list[StaticSite], dict[SiteKey, SiteState]]:
    """Decide which site serves each domain: the oldest, then by namespace/name.

    Returns the serving sites (sorted by domain) and a Conflict state for every loser.
    """
    by_domain: dict[str, list[StaticSite]] = {}
    for site in sites:
        by_domain.setdefault(site.domain.lower(), []).append(site)
    serving: list[StaticSite] = []
    losers: dict[SiteKey, SiteState] = {}
    for domain in sorted(by_domain):
        claimants = sorted(by_domain[domain], key=_seniority)
        owner = claimants[0]
        serving.append(owner)
        for other in claimants[1:]:
            losers[other.key] = SiteState(
                other.key,
                Phase.CONFLICT,
                "DomainConflict",
                f"domain {domain} is already served by site {owner.key}",
            )
    return serving, losers


def _seniority(site: StaticSite) -> tuple[bool, str, str, str]:
    created = site.creation_timestamp
    return (created is None, created or "", site.key.namespace, site.key.name)


class SnapshotBuilder:
    """Builds snapshots, keeping the resources of the previous build to reuse them."""

    def __init__(self, options: BuildOptions | None = None) -> None:
        self.options = options or BuildOptions()
        self._clusters: dict[Backend, Resource] = {}
        self._vhosts: dict[tuple[str, str, str], bytes] = {}
        self._sets: dict[str, ResourceSet] = {}
        self._listener = Resource.from_message(
            rs.LISTENER_TYPE,
            rs.HTTP_LISTENER_NAME,
            rs.http_listener(self.options.listen_address, self.options.http_port, rs.HTTP_ROUTE_NAME),
        )
        self._fallback_vhost = rs.unknown_domain_host().SerializeToString(deterministic=True)

    def build(self, sites: Iterable[StaticSite]) -> BuildResult:
        serving, states = winners(sites)
        for site in serving:
            states[site.key] = SiteState(site.key, Phase.PROVISIONED, "Accepted", "sent to the gateways")

        clusters: dict[Backend, Resource] = {}
        vhosts: dict[tuple[str, str, str], bytes] = {}
        for site in serving:
            backend = site.backend
            if backend not in clusters:
                clusters[backend] = self._clusters.get(backend) or self._new_cluster(backend)
            vkey = (str(site.key), site.domain, clusters[backend].name)
            vhosts[vkey] = self._vhosts.get(vkey) or rs.virtual_host(*vkey).SerializeToString(
                deterministic=True
            )

        plan = _Plan(
            clusters=frozenset(r.name for r in clusters.values()),
            routes={rs.HTTP_ROUTE_NAME: tuple(vhosts)},
            listeners={rs.HTTP_LISTENER_NAME: rs.HTTP_ROUTE_NAME},
        )
        check_consistency(plan)

        route_body = rs.route_configuration_header(rs.HTTP_ROUTE_NAME).SerializeToString(
            deterministic=True
        ) + wire.repeated(2, [*vhosts.values(), self._fallback_vhost])
        snapshot = Snapshot.of(
            [
                self._reuse(ResourceSet.of(rs.CLUSTER_TYPE, clusters.values())),
                self._reuse(ResourceSet.of(rs.LISTENER_TYPE, [self._listener])),
                self._reuse(
                    ResourceSet.of(
                        rs.ROUTE_TYPE, [Resource.of(rs.ROUTE_TYPE, rs.HTTP_ROUTE_NAME, route_body)]
                    )
                ),
            ]
        )
        self._clusters = clusters
        self._vhosts = vhosts
        return BuildResult(snapshot, MappingProxyType(states))

    def _new_cluster(self, backend: Backend) -> Resource:
        msg = rs.cluster(backend, self.options.backend_host_template)
        return Resource.from_message(rs.CLUSTER_TYPE, msg.name, msg)

    def _reuse(self, fresh: ResourceSet) -> ResourceSet:
        """Keep the previous set object when nothing in it changed."""
        old = self._sets.get(fresh.type_url)
        if old is not None and old.version == fresh.version:
            return old
        self._sets[fresh.type_url] = fresh
        return fresh


def check_consistency(plan: _Plan) -> None:
    """Every route's cluster exists, every listener's routes exist, no domain is served twice."""
    problems: list[str] = []
    for listener, route in plan.listeners.items():
        if route not in plan.routes:
            problems.append(f"listener {listener} uses route configuration {route}, which does not exist")
    for route, hosts in plan.routes.items():
        names: set[str] = set()
        domains: dict[str, str] = {}
        for vhost, domain, target in hosts:
            if vhost in names:
                problems.append(f"route configuration {route} has virtual host {vhost} twice")
            names.add(vhost)
            folded = domain.lower()
            if folded in domains:
                problems.append(
                    f"route configuration {route}: domain {domain} is in {domains[folded]} and {vhost}"
                )
            domains[folded] = vhost
            if target not in plan.clusters:
                problems.append(f"virtual host {vhost} routes to cluster {target}, which does not exist")
    if problems:
        raise InconsistentSnapshot("; ".join(problems))
