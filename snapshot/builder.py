"""The builder: sites in, a consistent snapshot and a state per site out.

It decides domain conflicts, reuses every resource whose inputs did not change (by value,
so the bytes of an unchanged cluster or virtual host are never rebuilt), and checks the
result before anyone can publish it.
"""

from __future__ import annotations

import bisect
import enum
import gc
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import resources as rs
from . import wire
from .model import Backend, SiteKey, StaticSite
from .snapshot import Resource, ResourceSet, Snapshot, content_hash


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
    access_log: str = rs.ACCESS_LOG_STDOUT  # stdout, stderr, off, or a path on the gateways

    def __post_init__(self) -> None:
        rs.check_host_template(self.backend_host_template)
        rs.check_access_log(self.access_log)
        if not 1 <= self.http_port <= 65535:
            raise ValueError(f"HTTP port must be from 1 to 65535, got {self.http_port}")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A snapshot, the state of every site, and what this build changed."""

    snapshot: Snapshot
    sites: Mapping[SiteKey, SiteState] = field(default_factory=dict)
    changed: frozenset[SiteKey] = frozenset()  # sites whose state changed (or that left)
    added: tuple[SiteKey, ...] = ()
    updated: tuple[SiteKey, ...] = ()
    removed: tuple[SiteKey, ...] = ()
    served: int = 0  # sites provisioned: one per domain served


class InconsistentSnapshot(RuntimeError):
    """The builder produced something Envoy would reject; it must never be published."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the snapshot will contain, before serialization: the graph that gets checked."""

    clusters: frozenset[str]
    routes: Mapping[str, tuple[tuple[str, str, str], ...]]  # route name -> (vhost, domain, cluster)
    listeners: Mapping[str, str]  # listener name -> route name


_LARGE_BUILD = 1000  # sites changed at once


def same_resources(a: StaticSite, b: StaticSite) -> bool:
    """Whether two declarations of a site give the gateways the same resources and standing."""
    return (a.domain, a.backend, a.creation_timestamp) == (b.domain, b.backend, b.creation_timestamp)


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _seniority(site: StaticSite) -> tuple[bool, str, str, str]:
    created = site.creation_timestamp
    return (created is None, created or "", site.key.namespace, site.key.name)


class SnapshotBuilder:
    """Builds snapshots incrementally: the work of a build grows with what changed.

    The builder remembers the sites of its last build. A new build compares them by identity
    (sources hand the same `StaticSite` object for a site that did not change), re-decides
    only the domains whose claimants changed, rebuilds only their virtual hosts and clusters,
    and derives each resource set from the previous one.
    """

    def __init__(self, options: BuildOptions | None = None) -> None:
        self.options = options or BuildOptions()
        # Tests only: rewrites the bytes of a site's virtual host or a backend's cluster, to
        # produce what Envoy refuses though the model accepts it.
        self.resource_hook: Callable[[StaticSite | Backend, bytes], bytes] | None = None
        self._sites: Mapping[SiteKey, StaticSite] = {}
        self._claims: dict[str, dict[SiteKey, StaticSite]] = {}  # domain -> every claimant
        self._owners: dict[str, StaticSite] = {}  # domain -> the site that serves it
        self._states: dict[SiteKey, SiteState] = {}
        self._users: dict[Backend, int] = {}  # backend -> how many serving sites use it
        self._vhosts: dict[str, bytes] = {}  # domain -> virtual host, framed as a route field
        self._domains: list[str] = []  # the served domains, sorted
        self._framed: list[bytes] = []  # their virtual hosts, in the same order
        self._vhost_digest = 0  # XOR of a digest of each virtual host: the routes' version
        self._fallback_vhost = wire.field_bytes(
            2, rs.unknown_domain_host().SerializeToString(deterministic=True)
        )
        listener = Resource.from_message(
            rs.LISTENER_TYPE,
            rs.HTTP_LISTENER_NAME,
            rs.http_listener(
                self.options.listen_address,
                self.options.http_port,
                rs.HTTP_ROUTE_NAME,
                self.options.access_log,
            ),
        )
        self._clusters = ResourceSet.of(rs.CLUSTER_TYPE, ())
        self._listeners = ResourceSet.of(rs.LISTENER_TYPE, [listener])
        self._routes = ResourceSet.of(rs.ROUTE_TYPE, [self._route_configuration()])
        self._endpoints = ResourceSet.of(rs.ENDPOINT_TYPE, ())

    def build(
        self,
        sites: Mapping[SiteKey, StaticSite] | Iterable[StaticSite],
        changed: Iterable[SiteKey] | None = None,
    ) -> BuildResult:
        """Build from the complete set of sites.

        `changed`, when the source knows it, names every site added, changed or removed since
        the previous call; the builder then looks at those sites only.
        """
        new: Mapping[SiteKey, StaticSite] = (
            sites if isinstance(sites, Mapping) else {site.key: site for site in sites}
        )
        hint = None if changed is None else set(changed)
        large = hint is None or len(hint) > _LARGE_BUILD
        paused = large and gc.isenabled()
        if paused:  # a large build makes many long-lived objects: the cyclic GC would rescan them
            gc.disable()
        try:
            return self._build(new, hint)
        finally:
            if paused:
                gc.enable()

    def _build(self, new: Mapping[SiteKey, StaticSite], hint: set[SiteKey] | None) -> BuildResult:
        old = self._sites
        touched: set[str] = set()
        added: list[SiteKey] = []
        updated: list[SiteKey] = []
        if hint is None:
            removed = sorted(old.keys() - new.keys())
            candidates: Iterable[SiteKey] = new.keys()
        else:
            removed = sorted(k for k in hint if k in old and k not in new)
            candidates = [k for k in hint if k in new]
        for key in removed:
            touched.add(self._unclaim(old[key]))
            self._states.pop(key, None)
        for key in candidates:
            site = new[key]
            prev = old.get(key)
            if prev is site:
                continue
            if prev is not None:
                if same_resources(prev, site):
                    self._replace_claim(prev, site)
                    continue
                touched.add(self._unclaim(prev))
                updated.append(key)
            else:
                added.append(key)
            touched.add(self._claim(site))
        self._sites = new if isinstance(new, MappingProxyType) else dict(new)

        changed_states: set[SiteKey] = set(removed)
        backends: set[Backend] = set()
        served_before = len(self._vhosts)
        for domain in touched:
            changed_states |= self._decide(domain, backends)
        self._sort_domains(touched, served_before)

        upserts: list[Resource] = []
        gone: list[str] = []
        for backend in backends:
            name = rs.cluster_name(backend)
            if self._users.get(backend, 0) > 0:
                if name not in self._clusters.resources:
                    upserts.append(self._new_cluster(backend))
            else:
                self._users.pop(backend, None)
                gone.append(name)
        self._clusters = self._clusters.evolve(upserts, gone)
        if touched:
            self._routes = self._routes.evolve([self._route_configuration()])

        self._check(touched)
        snapshot = Snapshot.of([self._clusters, self._endpoints, self._listeners, self._routes])
        return BuildResult(
            snapshot,
            MappingProxyType(dict(self._states)),
            frozenset(changed_states),
            tuple(added),
            tuple(updated),
            tuple(removed),
            len(self._owners),
        )

    # -- claims and decisions ----------------------------------------------------------------

    def _claim(self, site: StaticSite) -> str:
        domain = site.domain.lower()
        self._claims.setdefault(domain, {})[site.key] = site
        return domain

    def _unclaim(self, site: StaticSite) -> str:
        domain = site.domain.lower()
        claimants = self._claims.get(domain)
        if claimants is not None:
            claimants.pop(site.key, None)
            if not claimants:
                del self._claims[domain]
        return domain

    def _replace_claim(self, prev: StaticSite, site: StaticSite) -> None:
        """Same domain, backend and age: only the bookkeeping object changes."""
        domain = site.domain.lower()
        self._claims[domain][site.key] = site
        if self._owners.get(domain) is prev:
            self._owners[domain] = site

    def _decide(self, domain: str, backends: set[Backend]) -> set[SiteKey]:
        """Re-decide who serves `domain`; update its virtual host and cluster users."""
        claimants = self._claims.get(domain, {})
        owner = min(claimants.values(), key=_seniority) if claimants else None
        changed: set[SiteKey] = set()
        for site in claimants.values():
            if site is owner:
                state = SiteState(site.key, Phase.PROVISIONED, "Accepted", "sent to the gateways")
            else:
                assert owner is not None
                state = SiteState(
                    site.key,
                    Phase.CONFLICT,
                    "DomainConflict",
                    f"domain {domain} is already served by site {owner.key}",
                )
            if self._states.get(site.key) != state:
                self._states[site.key] = state
                changed.add(site.key)

        previous = self._owners.get(domain)
        if previous is not None:
            self._users[previous.backend] -= 1
            backends.add(previous.backend)
        if owner is None:
            if previous is not None:
                del self._owners[domain]
                self._vhost_digest ^= _digest(self._vhosts.pop(domain))
            return changed
        self._users[owner.backend] = self._users.get(owner.backend, 0) + 1
        backends.add(owner.backend)
        self._owners[domain] = owner
        vhost = rs.serialized.virtual_host(str(owner.key), domain, rs.cluster_name(owner.backend))
        if self.resource_hook is not None:
            vhost = self.resource_hook(owner, vhost)
        framed = wire.field_bytes(2, vhost)  # RouteConfiguration.virtual_hosts is field 2
        before = self._vhosts.get(domain)
        if before != framed:
            if before is not None:
                self._vhost_digest ^= _digest(before)
            self._vhost_digest ^= _digest(framed)
            self._vhosts[domain] = framed
        return changed

    def _sort_domains(self, touched: set[str], served_before: int) -> None:
        """Keep `_domains` the sorted list of served domains: by bisection for a few changes."""
        vhosts = self._vhosts
        if len(touched) > 64 or not served_before:
            self._domains = sorted(vhosts)
            self._framed = [vhosts[d] for d in self._domains]
            return
        for domain in touched:
            at = bisect.bisect_left(self._domains, domain)
            listed = at < len(self._domains) and self._domains[at] == domain
            framed = vhosts.get(domain)
            if framed is not None and listed:
                self._framed[at] = framed
            elif framed is not None:
                self._domains.insert(at, domain)
                self._framed.insert(at, framed)
            elif listed:
                del self._domains[at]
                del self._framed[at]

    # -- resources -------------------------------------------------------------------------

    def _new_cluster(self, backend: Backend) -> Resource:
        body = rs.serialized.cluster(backend, self.options.backend_host_template)
        if self.resource_hook is not None:
            body = self.resource_hook(backend, body)
        return Resource.of(rs.CLUSTER_TYPE, rs.cluster_name(backend), body)

    def _route_configuration(self) -> Resource:
        """The one RouteConfiguration, assembled from the cached bytes of each virtual host."""
        header = rs.route_configuration_header(rs.HTTP_ROUTE_NAME).SerializeToString(deterministic=True)
        body = b"".join([header, *self._framed, self._fallback_vhost])
        # The virtual hosts are in a canonical (sorted) order, so their set is the content:
        # its digest is the version, without hashing megabytes of routes on every change.
        version = content_hash(header, self._fallback_vhost, self._vhost_digest.to_bytes(8, "big"))
        return Resource.of(rs.ROUTE_TYPE, rs.HTTP_ROUTE_NAME, body, version)

    def _check(self, touched: set[str]) -> None:
        """Check what this build changed (everything, on a first or a large build)."""
        if not touched:
            return
        if len(touched) * 4 >= len(self._owners) + 1:
            check_consistency(self.plan())
            return
        problems: list[str] = []
        clusters = self._clusters.resources
        for domain in touched:
            owner = self._owners.get(domain)
            if owner is None:
                continue
            target = rs.cluster_name(owner.backend)
            if target not in clusters:
                problems.append(f"virtual host {owner.key} routes to cluster {target}, which does not exist")
            if domain != domain.lower():
                problems.append(f"domain {domain} is not in lower case")
        if rs.HTTP_ROUTE_NAME not in self._routes.resources:
            problems.append(
                f"the listener uses route configuration {rs.HTTP_ROUTE_NAME}, which does not exist"
            )
        if len(self._vhosts) != len(self._domains):
            problems.append("the virtual hosts and the served domains disagree")
        if problems:
            raise InconsistentSnapshot("; ".join(problems))

    def plan(self) -> _Plan:
        """The whole graph of the last build, for a full consistency check."""
        hosts = tuple(
            (str(owner.key), domain, rs.cluster_name(owner.backend))
            for domain in self._domains
            for owner in (self._owners[domain],)
        )
        return _Plan(
            clusters=frozenset(self._clusters.resources),
            routes={name: hosts for name in self._routes.resources},
            listeners=dict.fromkeys(self._listeners.resources, rs.HTTP_ROUTE_NAME),
        )


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
