"""The builder: sites in, a consistent snapshot and a state per site out.

It decides domain conflicts (`claims`), reuses every resource whose inputs did not change (by
value, so the bytes of an unchanged cluster or virtual host are never rebuilt), keeps the
route tables (`route_table`) and the HTTPS chains (`https_chains`) up to date, hands each
site's facts to `verdict`, and checks the result (`consistency`) before anyone can publish it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import immutables

from . import resources as rs
from . import wire
from .claims import Claim, ClaimBook, same_resources
from .consistency import Plan, check_consistency, check_domains, plan_of
from .https_chains import HttpsChains
from .model import Backend, Certificate, SiteKey, StaticSite, seniority
from .route_table import ListenerRoutes
from .snapshot import DEFAULT_GROUP, Resource, ResourceSet, Snapshot
from .verdict import Phase, SiteState, accepted, claimed, missing_certificate

MAX_ROUTE_SHARDS = 65536
# What `serve` shards the routes into: at 100,000 sites some 400 virtual hosts a shard, so a
# change costs Envoy what a few hundred sites cost, not the whole set.
DEFAULT_ROUTE_SHARDS = 256


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
    # Route shards per listener (see `resources.shard_of`): 1 keeps every virtual host of a
    # listener in one RouteConfiguration, which Envoy rebuilds whole on any change.
    route_shards: int = 1

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
        if not 1 <= self.route_shards <= MAX_ROUTE_SHARDS:
            raise ValueError(f"route shards must be from 1 to {MAX_ROUTE_SHARDS}, got {self.route_shards}")
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


_LARGE_BUILD = 1000  # sites changed at once


class SnapshotBuilder:
    """Builds snapshots incrementally: the work of a build grows with what changed.

    The builder remembers the sites of its last build. A new build compares them by identity
    (sources hand the same `StaticSite` object for a site that did not change), re-decides
    only the (domain, prefix) claims whose claimants changed (see `ClaimBook`), rebuilds only
    the virtual hosts of their domains and the clusters they use, and derives each resource
    set from the previous one.
    """

    def __init__(self, options: BuildOptions | None = None, group: str = DEFAULT_GROUP) -> None:
        """`group` names the gateway group whose snapshots this builder makes."""
        self.options = options or BuildOptions()
        self.group = group
        # Tests only: rewrites the bytes of a site's virtual host or a backend's cluster, to
        # produce what Envoy refuses though the model accepts it.
        self.resource_hook: Callable[[StaticSite | Backend, bytes], bytes] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every earlier build: the next one starts afresh, with the same options."""
        options = self.options
        self._sites: Mapping[SiteKey, StaticSite] = {}
        self._claims = ClaimBook()
        # Persistent: a result hands on the map as it is, and no build copies it.
        self._states: immutables.Map[SiteKey, SiteState] = immutables.Map()
        self._editing: immutables.MapMutation[SiteKey, SiteState] | None = None
        self._provisioned = 0
        fallback = wire.field_bytes(2, rs.unknown_domain_host().SerializeToString(deterministic=True))
        shards = options.route_shards
        self._http = ListenerRoutes(rs.HTTP_ROUTE_NAME, fallback, shards)
        self._https = ListenerRoutes(rs.HTTPS_ROUTE_NAME, fallback, shards)
        self._tls = HttpsChains(options.listen_address, options.https_port, options.access_log, shards)
        listener = Resource.from_message(
            rs.LISTENER_TYPE,
            rs.HTTP_LISTENER_NAME,
            rs.http_listener(
                options.listen_address, options.http_port, rs.HTTP_ROUTE_NAME, options.access_log, shards
            ),
        )
        self._clusters = ResourceSet.of(rs.CLUSTER_TYPE, ())
        self._listeners = ResourceSet.of(rs.LISTENER_TYPE, [listener])
        self._routes = ResourceSet.of(rs.ROUTE_TYPE, [t.resource() for t in self._http.tables])
        self._scopes = ResourceSet.of(rs.SCOPED_ROUTE_TYPE, self._http.scopes())
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
                # What a large build made lives as long as its snapshot: swept once for cycles,
                # then left out of every later collection. Otherwise each full collection
                # rescans it: 0.3-0.4 s at 10,000 sites, every few seconds while statuses
                # are written, each a pause in serving changes.
                gc.collect(1)
                gc.freeze()

    def _build(self, new: Mapping[SiteKey, StaticSite], hint: set[SiteKey] | None) -> BuildResult:
        self._editing = self._states.mutate()
        try:
            return self._build_states(new, hint)
        finally:
            if self._editing is not None:  # a build that failed keeps the states it set
                self._states, self._editing = self._editing.finish(), None

    def _build_states(self, new: Mapping[SiteKey, StaticSite], hint: set[SiteKey] | None) -> BuildResult:
        old = self._sites
        claims = self._claims
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
            touched.update(claims.unclaim(old[key]))
            self._set_state(key, None, changed_states)
        for key in candidates:
            site = new[key]
            prev = old.get(key)
            if prev is site:
                continue
            if prev is not None:
                if same_resources(prev, site):
                    claims.replace(prev, site)
                    continue
                touched.update(claims.unclaim(prev))
                updated.append(key)
            else:
                added.append(key)
            if site.tls is not None and site.certificate is None:
                self._set_state(key, missing_certificate(key), changed_states)
                continue
            touched.update(claims.claim(site))
        self._sites = new if isinstance(new, (MappingProxyType, immutables.Map)) else dict(new)

        backends: set[Backend] = set()
        restate: set[SiteKey] = set()
        hosts: set[str] = set()
        for claim in touched:
            settled = claims.decide(claim, backends, restate)
            if settled is not None:
                self._set_state(settled, accepted(settled), changed_states)
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
            if claims.used(backend):
                if name not in self._clusters.resources:
                    upserts.append(self._new_cluster(backend))
            else:
                gone.append(name)
        self._clusters = self._clusters.evolve(upserts, gone)
        if certificates_changed:
            self._listeners = self._tls.update(certificates_changed, self._listeners)
        route_upserts: list[Resource] = []
        route_gone: list[str] = []
        scope_upserts: list[Resource] = []
        scope_gone: list[str] = []
        for listener in (self._http, self._https):
            changed_tables = listener.settle()
            if not changed_tables:
                continue
            present = listener.tables[0].name in self._routes.resources
            if listener is self._http or listener:  # the HTTP routes always exist
                # A listener's routes appear whole (every shard and its scope), then by shard.
                tables = changed_tables if present else listener.tables
                route_upserts.extend(table.resource() for table in tables)
                if not present:
                    scope_upserts.extend(listener.scopes())
            elif present:
                route_gone.extend(listener.route_names)
                scope_gone.extend(scope.name for scope in listener.scopes())
        self._routes = self._routes.evolve(route_upserts, route_gone)
        self._scopes = self._scopes.evolve(scope_upserts, scope_gone)

        self._check(hosts)
        snapshot = Snapshot.of(
            [self._clusters, self._endpoints, self._tls.secrets, self._listeners, self._scopes, self._routes],
            self.group,
        )
        return BuildResult(
            snapshot,
            self._finish_states(),
            frozenset(changed_states),
            tuple(added),
            tuple(updated),
            tuple(removed),
            self._provisioned,
        )

    # -- states --------------------------------------------------------------------------------

    def _finish_states(self) -> immutables.Map[SiteKey, SiteState]:
        if self._editing is not None:
            self._states, self._editing = self._editing.finish(), None
        return self._states

    def _set_state(self, key: SiteKey, state: SiteState | None, changed: set[SiteKey]) -> None:
        states = self._editing
        assert states is not None, "states are set during a build"
        before = states.get(key)
        if before == state:
            return
        if before is not None and before.phase is Phase.PROVISIONED:
            self._provisioned -= 1
        if state is None:
            states.pop(key, None)
        else:
            states[key] = state
            if state.phase is Phase.PROVISIONED:
                self._provisioned += 1
        changed.add(key)

    def _state_of(self, site: StaticSite) -> SiteState:
        """The facts of a site's claims and certificate, handed to the verdict."""
        if not site.aliases and not site.redirect_from and site.certificate is None:
            winner = self._claims.winner((site.domain, site.path_prefix))
            if winner is None or winner.site.key == site.key:
                return accepted(site.key)
        lost, won = self._claims.lost(site)
        return claimed(site.key, lost, won, site.certificate, *self._tls.notes(site))

    # -- resources -------------------------------------------------------------------------

    def _render(self, host: str, certificates_changed: set[str], restate: set[SiteKey]) -> None:
        """Rebuild the virtual hosts of one domain, and note a change of its certificate.

        When the certificate of a domain changes, every site on it is told again (a TLS site
        whose own certificate is not the one served there says so).
        """
        mounts = self._claims.mounts.get(host)
        if mounts is not None and len(mounts) == 1 and host not in self._tls.host_cert:
            (only,) = mounts.values()
            site = only.site
            if not only.redirect and only.prefix == "/" and rs.is_plain(site):  # the shared shape
                vhost = rs.serialized.virtual_host(str(site.key), host, only.cluster)
                if self.resource_hook is not None:
                    vhost = self.resource_hook(site, vhost)
                self._http.set(host, wire.field_bytes(2, vhost))
                if self._https.get(host) is not None:
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
                certificate = min(secured, key=seniority).certificate
                assert certificate is not None
                self._https.set(host, self._virtual_host(host, listed, secure=True))
            else:
                self._https.set(host, None)
        if self._tls.serve(host, certificate, certificates_changed) and mounts:
            restate.update(m.site.key for m in mounts.values() if m.site.certificate is not None)

    def _virtual_host(self, host: str, mounts: list[rs.Mount], *, secure: bool) -> bytes:
        port = self.options.public_https_port
        vhost = rs.mounted_virtual_host(host, mounts, secure, port).SerializeToString(deterministic=True)
        if self.resource_hook is not None:
            for mount in mounts:
                vhost = self.resource_hook(mount.site, vhost)
        return wire.field_bytes(2, vhost)  # RouteConfiguration.virtual_hosts is field 2

    def _new_cluster(self, backend: Backend) -> Resource:
        body = rs.serialized.cluster(backend, self.options.backend_host_template)
        if self.resource_hook is not None:
            body = self.resource_hook(backend, body)
        return Resource.of(rs.CLUSTER_TYPE, rs.cluster_name(backend), body)

    # -- the check -----------------------------------------------------------------------------

    def _check(self, hosts: set[str]) -> None:
        """Check what this build changed (everything, on a first or a large build)."""
        if not hosts:
            return
        mounts = self._claims.mounts
        if len(hosts) * 4 >= len(mounts) + 1:
            check_consistency(self.plan())
            return
        check_domains(hosts, mounts, self._clusters, self._routes, self._http)

    def plan(self) -> Plan:
        """The whole graph of the last build, for a full consistency check."""
        return plan_of(
            self._claims.mounts,
            (self._http, self._https),
            self._clusters,
            self._scopes,
            self._routes,
            self._listeners,
            self._tls.secrets,
            (name for name, _ in self._tls.chains),
        )
