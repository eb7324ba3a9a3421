"""The builder: sites in, a consistent snapshot and a state per site out.

It decides domain conflicts, reuses every resource whose inputs did not change (by value,
so the bytes of an unchanged cluster or virtual host are never rebuilt), and checks the
result before anyone can publish it.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from . import resources as rs
from . import wire
from .model import Backend, Certificate, SiteKey, StaticSite
from .snapshot import Resource, ResourceSet, Snapshot, content_hash
from .verdict import Phase, SiteState, accepted, claimed, missing_certificate


@dataclass(frozen=True, slots=True)
class BuildOptions:
    http_port: int = 8080
    listen_address: str = "0.0.0.0"
    backend_host_template: str = rs.DEFAULT_HOST_TEMPLATE
    access_log: str = rs.ACCESS_LOG_STDOUT  # stdout, stderr, off, or a path on the gateways
    https_port: int = 8443
    # The HTTPS port clients reach (a Service or load balancer in front of the gateways): where
    # redirects to HTTPS point. 443 is left out of the URL.
    public_https_port: int = 443

    def __post_init__(self) -> None:
        rs.check_host_template(self.backend_host_template)
        rs.check_access_log(self.access_log)
        for name, port in (
            ("HTTP", self.http_port),
            ("HTTPS", self.https_port),
            ("public HTTPS", self.public_https_port),
        ):
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} port must be from 1 to 65535, got {port}")
        if self.http_port == self.https_port:
            raise ValueError(f"the HTTP and HTTPS ports must differ, both are {self.http_port}")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A snapshot, the state of every site, and what this build changed."""

    snapshot: Snapshot
    sites: Mapping[SiteKey, SiteState] = field(default_factory=dict)
    changed: frozenset[SiteKey] = frozenset()  # sites whose state changed (or that left)
    added: tuple[SiteKey, ...] = ()
    updated: tuple[SiteKey, ...] = ()
    removed: tuple[SiteKey, ...] = ()
    served: int = 0  # sites provisioned


class InconsistentSnapshot(RuntimeError):
    """The builder produced something Envoy would reject; it must never be published."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the snapshot will contain, before serialization: the graph that gets checked."""

    clusters: frozenset[str]
    # route name -> (virtual host, domain, the clusters its routes use)
    routes: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]]
    listeners: Mapping[str, str]  # listener name -> route name
    secrets: frozenset[str] = frozenset()
    listener_secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # listener -> SDS names


_LARGE_BUILD = 1000  # sites changed at once

Claim = tuple[str, str]  # a domain and a path prefix: what one site at a time may have


# Every field of a site but its identity and where and when it was declared: what the gateways
# get from it (and its age, which decides conflicts). Derived, so a new field counts by itself.
_resource_fields = operator.attrgetter(
    *(f.name for f in fields(StaticSite) if f.name not in ("key", "generation", "origin"))
)


def same_resources(a: StaticSite, b: StaticSite) -> bool:
    """Whether two declarations of a site give the gateways the same resources and standing."""
    return bool(_resource_fields(a) == _resource_fields(b))


def claims_of(site: StaticSite) -> list[Claim]:
    """Every (domain, prefix) a site takes: its domains and aliases, then its redirect domains."""
    prefix = site.path_prefix
    return [(host, prefix) for host in (*site.hosts, *site.redirect_from)]


def site_claims(site: StaticSite) -> list[tuple[Claim, rs.Mount]]:
    """Each claim of a site with the mount that would have it."""
    cluster = rs.cluster_name(site.backend)
    served = len(site.hosts)
    return [
        (claim, rs.Mount(site, claim[1], index >= served, cluster))
        for index, claim in enumerate(claims_of(site))
    ]


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _seniority(site: StaticSite) -> tuple[bool, str, str, str]:
    created = site.creation_timestamp
    return (created is None, created or "", site.key.namespace, site.key.name)


class _RouteTable:
    """The virtual hosts of one RouteConfiguration, as cached bytes sorted by domain.

    The version is the XOR of a digest of each virtual host, so a change costs what changed,
    not a hash of megabytes of routes.
    """

    def __init__(self, name: str, fallback: bytes) -> None:
        self.name = name
        self.vhosts: dict[str, bytes] = {}  # domain -> virtual host, framed as a route field
        self.domains: list[str] = []  # sorted
        self.framed: list[bytes] = []  # in the same order
        self.digest = 0
        self.fallback = fallback
        self.touched: set[str] = set()

    def set(self, domain: str, framed: bytes | None) -> None:
        before = self.vhosts.get(domain)
        if before == framed:
            return
        if before is not None:
            self.digest ^= _digest(before)
        if framed is None:
            del self.vhosts[domain]
        else:
            self.digest ^= _digest(framed)
            self.vhosts[domain] = framed
        self.touched.add(domain)

    def settle(self) -> bool:
        """Bring the sorted lists up to date; whether anything changed since the last call."""
        touched, self.touched = self.touched, set()
        if not touched:
            return False
        vhosts = self.vhosts
        if len(touched) > 64 or not self.domains:
            self.domains = sorted(vhosts)
            self.framed = [vhosts[d] for d in self.domains]
            return True
        for domain in touched:
            at = bisect.bisect_left(self.domains, domain)
            listed = at < len(self.domains) and self.domains[at] == domain
            framed = vhosts.get(domain)
            if framed is not None and listed:
                self.framed[at] = framed
            elif framed is not None:
                self.domains.insert(at, domain)
                self.framed.insert(at, framed)
            elif listed:
                del self.domains[at]
                del self.framed[at]
        return True

    def resource(self) -> Resource:
        header = rs.route_configuration_header(self.name).SerializeToString(deterministic=True)
        body = b"".join([header, *self.framed, self.fallback])
        version = content_hash(header, self.fallback, self.digest.to_bytes(8, "big"))
        return Resource.of(rs.ROUTE_TYPE, self.name, body, version)


class SnapshotBuilder:
    """Builds snapshots incrementally: the work of a build grows with what changed.

    The builder remembers the sites of its last build. A new build compares them by identity
    (sources hand the same `StaticSite` object for a site that did not change), re-decides
    only the (domain, prefix) claims whose claimants changed, rebuilds only the virtual hosts
    of their domains and the clusters they use, and derives each resource set from the
    previous one.

    A claim is one domain (spec.domain, an alias or a redirect domain) at one path prefix.
    When several sites claim the same, the oldest (creationTimestamp, then namespace/name)
    has it; the others are in conflict, and still serve the claims nobody else has.
    """

    def __init__(self, options: BuildOptions | None = None) -> None:
        self.options = options or BuildOptions()
        # Tests only: rewrites the bytes of a site's virtual host or a backend's cluster, to
        # produce what Envoy refuses though the model accepts it.
        self.resource_hook: Callable[[StaticSite | Backend, bytes], bytes] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every earlier build: the next one starts afresh, with the same options."""
        self._sites: Mapping[SiteKey, StaticSite] = {}
        self._claims: dict[Claim, dict[SiteKey, rs.Mount]] = {}  # every claimant
        self._mounts: dict[str, dict[str, rs.Mount]] = {}  # domain -> prefix -> the mount that has it
        self._states: dict[SiteKey, SiteState] = {}
        self._provisioned = 0
        self._users: dict[Backend, int] = {}  # backend -> how many winning mounts route to it
        fallback = wire.field_bytes(2, rs.unknown_domain_host().SerializeToString(deterministic=True))
        self._http = _RouteTable(rs.HTTP_ROUTE_NAME, fallback)
        self._https = _RouteTable(rs.HTTPS_ROUTE_NAME, fallback)
        self._host_cert: dict[str, Certificate] = {}  # domain -> the certificate it is served with
        self._cert_hosts: dict[str, set[str]] = {}  # SDS name -> its domains
        self._chains: list[tuple[str, list[str]]] = []
        options = self.options
        listener = Resource.from_message(
            rs.LISTENER_TYPE,
            rs.HTTP_LISTENER_NAME,
            rs.http_listener(
                options.listen_address, options.http_port, rs.HTTP_ROUTE_NAME, options.access_log
            ),
        )
        self._clusters = ResourceSet.of(rs.CLUSTER_TYPE, ())
        self._listeners = ResourceSet.of(rs.LISTENER_TYPE, [listener])
        self._routes = ResourceSet.of(rs.ROUTE_TYPE, [self._http.resource()])
        self._secrets = ResourceSet.of(rs.SECRET_TYPE, ())
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
        touched: set[Claim] = set()
        added: list[SiteKey] = []
        updated: list[SiteKey] = []
        changed_states: set[SiteKey] = set()
        if hint is None:
            removed = sorted(old.keys() - new.keys())
            candidates: Iterable[SiteKey] = new.keys()
        else:
            removed = sorted(k for k in hint if k in old and k not in new)
            candidates = [k for k in hint if k in new]
        for key in removed:
            touched.update(self._unclaim(old[key]))
            self._set_state(key, None, changed_states)
        for key in candidates:
            site = new[key]
            prev = old.get(key)
            if prev is site:
                continue
            if prev is not None:
                if same_resources(prev, site):
                    self._replace_claims(prev, site)
                    continue
                touched.update(self._unclaim(prev))
                updated.append(key)
            else:
                added.append(key)
            if site.tls is not None and site.certificate is None:
                self._set_state(key, missing_certificate(key), changed_states)
                continue
            touched.update(self._claim(site))
        self._sites = new if isinstance(new, MappingProxyType) else dict(new)

        backends: set[Backend] = set()
        restate: set[SiteKey] = set()
        hosts: set[str] = set()
        for claim in touched:
            self._decide(claim, backends, restate, changed_states)
            hosts.add(claim[0])
        certificates_changed: set[str] = set()
        for host in hosts:
            self._render(host, certificates_changed, restate)
        for key in restate:
            current = self._sites.get(key)
            if current is not None and (current.tls is None or current.certificate is not None):
                self._set_state(key, self._state_of(current), changed_states)

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
        if certificates_changed:
            self._update_tls(certificates_changed)
        route_upserts: list[Resource] = []
        route_gone: list[str] = []
        for table in (self._http, self._https):
            if not table.settle():
                continue
            if table.vhosts or table is self._http:  # the HTTP routes always exist
                route_upserts.append(table.resource())
            else:
                route_gone.append(table.name)
        self._routes = self._routes.evolve(route_upserts, route_gone)

        self._check(hosts)
        snapshot = Snapshot.of(
            [self._clusters, self._endpoints, self._secrets, self._listeners, self._routes]
        )
        return BuildResult(
            snapshot,
            MappingProxyType(dict(self._states)),
            frozenset(changed_states),
            tuple(added),
            tuple(updated),
            tuple(removed),
            self._provisioned,
        )

    # -- claims and decisions ----------------------------------------------------------------

    def _claim(self, site: StaticSite) -> list[Claim]:
        if not site.aliases and not site.redirect_from:  # the common case, kept short
            claim = (site.domain, site.path_prefix)
            mount = rs.Mount(site, site.path_prefix, False, rs.cluster_name(site.backend))
            claimants = self._claims.get(claim)
            if claimants is None:
                self._claims[claim] = {site.key: mount}
            else:
                claimants[site.key] = mount
            return [claim]
        claims = site_claims(site)
        for claim, mount in claims:
            self._claims.setdefault(claim, {})[site.key] = mount
        return [claim for claim, _ in claims]

    def _unclaim(self, site: StaticSite) -> list[Claim]:
        claims = claims_of(site)
        for claim in claims:
            claimants = self._claims.get(claim)
            if claimants is not None:
                claimants.pop(site.key, None)
                if not claimants:
                    del self._claims[claim]
        return claims

    def _replace_claims(self, prev: StaticSite, site: StaticSite) -> None:
        """Same resources and age: only the bookkeeping objects change."""
        for claim, mount in site_claims(site):
            self._claims[claim][site.key] = mount
            winner = self._winner(claim)
            if winner is not None and winner.site is prev:
                self._mounts[claim[0]][claim[1]] = mount

    def _set_state(self, key: SiteKey, state: SiteState | None, changed: set[SiteKey]) -> None:
        before = self._states.get(key)
        if before == state:
            return
        if before is not None and before.phase is Phase.PROVISIONED:
            self._provisioned -= 1
        if state is None:
            self._states.pop(key, None)
        else:
            self._states[key] = state
            if state.phase is Phase.PROVISIONED:
                self._provisioned += 1
        changed.add(key)

    def _decide(
        self, claim: Claim, backends: set[Backend], restate: set[SiteKey], changed_states: set[SiteKey]
    ) -> None:
        """Re-decide who has `claim`; keep the users of each backend counted.

        The sites whose state may have changed are added to `restate`; a lone claimant with no
        other claim is settled here (the common case, kept short).
        """
        claimants = self._claims.get(claim)
        winner: rs.Mount | None = None
        if claimants:
            if len(claimants) == 1:
                (winner,) = claimants.values()
                site = winner.site
                if site.aliases or site.redirect_from or site.certificate is not None:
                    restate.add(site.key)
                else:
                    self._set_state(site.key, accepted(site.key), changed_states)
            else:
                restate.update(claimants)
                winner = min(claimants.values(), key=lambda m: _seniority(m.site))
        previous = self._winner(claim)
        if previous is winner:
            return
        host, prefix = claim
        if previous is not None:
            restate.add(previous.site.key)
            if not previous.redirect:
                self._users[previous.site.backend] -= 1
                backends.add(previous.site.backend)
        if winner is None:
            if previous is not None:
                mounts = self._mounts[host]
                del mounts[prefix]
                if not mounts:
                    del self._mounts[host]
            return
        if not winner.redirect:
            self._users[winner.site.backend] = self._users.get(winner.site.backend, 0) + 1
            backends.add(winner.site.backend)
        self._mounts.setdefault(host, {})[prefix] = winner

    def _winner(self, claim: Claim) -> rs.Mount | None:
        """The mount that has a claim, if any."""
        mounts = self._mounts.get(claim[0])
        return mounts.get(claim[1]) if mounts is not None else None

    def _state_of(self, site: StaticSite) -> SiteState:
        if not site.aliases and not site.redirect_from and site.certificate is None:
            winner = self._winner((site.domain, site.path_prefix))
            if winner is None or winner.site.key == site.key:
                return accepted(site.key)
        lost: list[tuple[str, str, SiteKey]] = []
        won = 0
        for claim in claims_of(site):
            winner = self._winner(claim)
            if winner is not None and winner.site.key != site.key:
                lost.append((*claim, winner.site.key))
            else:
                won += 1
        mine = site.certificate
        served_with: list[tuple[str, str]] = []  # domains served with another site's certificate
        uncovered: list[str] = []  # domains served with its certificate, which is not for them
        if not lost and mine is not None:
            for host in (*site.hosts, *site.redirect_from):
                served = self._host_cert.get(host)
                if served is None:
                    continue
                if served.name != mine.name:
                    served_with.append((host, served.name))
                elif not mine.covers(host):
                    uncovered.append(host)
        return claimed(site.key, lost, won, mine, served_with, uncovered)

    # -- resources -------------------------------------------------------------------------

    def _render(self, host: str, certificates_changed: set[str], restate: set[SiteKey]) -> None:
        """Rebuild the virtual hosts of one domain, and note a change of its certificate.

        When the certificate of a domain changes, every site on it is told again (a TLS site
        whose own certificate is not the one served there says so).
        """
        mounts = self._mounts.get(host)
        if mounts is not None and len(mounts) == 1 and host not in self._host_cert:
            (only,) = mounts.values()
            site = only.site
            if not only.redirect and only.prefix == "/" and rs.is_plain(site):  # the shared shape
                vhost = rs.serialized.virtual_host(str(site.key), host, only.cluster)
                if self.resource_hook is not None:
                    vhost = self.resource_hook(site, vhost)
                self._http.set(host, wire.field_bytes(2, vhost))
                if host in self._https.vhosts:
                    self._https.set(host, None)
                return
        certificate: Certificate | None = None
        if not mounts:
            self._http.set(host, None)
            self._https.set(host, None)
        else:
            listed = list(mounts.values())
            self._http.set(host, self._virtual_host(host, listed, secure=False))
            secured = [m.site for m in listed if m.site.certificate is not None]
            if secured:
                certificate = min(secured, key=_seniority).certificate
                assert certificate is not None
                self._https.set(host, self._virtual_host(host, listed, secure=True))
            else:
                self._https.set(host, None)
        before = self._host_cert.get(host)
        if before == certificate:
            return
        if mounts:
            restate.update(m.site.key for m in mounts.values() if m.site.certificate is not None)
        if before is not None:
            self._host_cert.pop(host)
            hosts = self._cert_hosts[before.name]
            hosts.discard(host)
            if not hosts:
                del self._cert_hosts[before.name]
            certificates_changed.add(before.name)
        if certificate is not None:
            self._host_cert[host] = certificate
            self._cert_hosts.setdefault(certificate.name, set()).add(host)
            certificates_changed.add(certificate.name)

    def _virtual_host(self, host: str, mounts: list[rs.Mount], *, secure: bool) -> bytes:
        port = self.options.public_https_port
        vhost = rs.mounted_virtual_host(host, mounts, secure, port).SerializeToString(deterministic=True)
        if self.resource_hook is not None:
            for mount in mounts:
                vhost = self.resource_hook(mount.site, vhost)
        return wire.field_bytes(2, vhost)  # RouteConfiguration.virtual_hosts is field 2

    def _update_tls(self, names: set[str]) -> None:
        """The certificates (SDS) and the HTTPS listener's filter chains, after domains moved."""
        upserts: list[Resource] = []
        gone: list[str] = []
        for name in names:
            hosts = self._cert_hosts.get(name)
            if not hosts:
                gone.append(name)
                continue
            # Sources renew a certificate on every site that names it at once; should two
            # contents meet under one name, the first domain's wins (the same in any build).
            certificate = self._host_cert[min(hosts)]
            upserts.append(Resource.from_message(rs.SECRET_TYPE, name, rs.secret(certificate)))
        self._secrets = self._secrets.evolve(upserts, gone)
        chains = [(name, sorted(hosts)) for name, hosts in sorted(self._cert_hosts.items())]
        if chains == self._chains:
            return
        self._chains = chains
        if not chains:
            self._listeners = self._listeners.evolve((), [rs.HTTPS_LISTENER_NAME])
            return
        options = self.options
        listener = rs.https_listener(options.listen_address, options.https_port, chains, options.access_log)
        self._listeners = self._listeners.evolve(
            [Resource.from_message(rs.LISTENER_TYPE, rs.HTTPS_LISTENER_NAME, listener)]
        )

    def _new_cluster(self, backend: Backend) -> Resource:
        body = rs.serialized.cluster(backend, self.options.backend_host_template)
        if self.resource_hook is not None:
            body = self.resource_hook(backend, body)
        return Resource.of(rs.CLUSTER_TYPE, rs.cluster_name(backend), body)

    def _check(self, hosts: set[str]) -> None:
        """Check what this build changed (everything, on a first or a large build)."""
        if not hosts:
            return
        if len(hosts) * 4 >= len(self._mounts) + 1:
            check_consistency(self.plan())
            return
        problems: list[str] = []
        clusters = self._clusters.resources
        for host in hosts:
            for mount in self._mounts.get(host, {}).values():
                if mount.redirect:
                    continue
                target = mount.cluster
                if target not in clusters:
                    problems.append(
                        f"site {mount.site.key} on domain {host} routes to cluster {target}, which does not exist"
                    )
            if host != host.lower():
                problems.append(f"domain {host} is not in lower case")
        if rs.HTTP_ROUTE_NAME not in self._routes.resources:
            problems.append(
                f"the listener uses route configuration {rs.HTTP_ROUTE_NAME}, which does not exist"
            )
        if len(self._http.vhosts) != len(self._http.domains):
            problems.append("the virtual hosts and the served domains disagree")
        if problems:
            raise InconsistentSnapshot("; ".join(problems))

    def plan(self) -> _Plan:
        """The whole graph of the last build, for a full consistency check."""

        def hosts(table: _RouteTable) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
            return tuple(
                (
                    domain,
                    domain,
                    tuple(m.cluster for m in self._mounts[domain].values() if not m.redirect),
                )
                for domain in table.domains
            )

        routes = {
            table.name: hosts(table)
            for table in (self._http, self._https)
            if table.name in self._routes.resources
        }
        listeners = {rs.HTTP_LISTENER_NAME: rs.HTTP_ROUTE_NAME}
        listener_secrets: dict[str, tuple[str, ...]] = {}
        if rs.HTTPS_LISTENER_NAME in self._listeners.resources:
            listeners[rs.HTTPS_LISTENER_NAME] = rs.HTTPS_ROUTE_NAME
            listener_secrets[rs.HTTPS_LISTENER_NAME] = tuple(name for name, _ in self._chains)
        return _Plan(
            clusters=frozenset(self._clusters.resources),
            routes=routes,
            listeners=listeners,
            secrets=frozenset(self._secrets.resources),
            listener_secrets=listener_secrets,
        )


def check_consistency(plan: _Plan) -> None:
    """Every route's cluster exists, every listener's routes and certificates exist, no domain twice."""
    problems: list[str] = []
    for listener, route in plan.listeners.items():
        if route not in plan.routes:
            problems.append(f"listener {listener} uses route configuration {route}, which does not exist")
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
