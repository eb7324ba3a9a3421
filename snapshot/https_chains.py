"""HTTPS: the certificate each domain is served with, the certificates (SDS secrets), and the
HTTPS listener's filter chains, one per certificate, chosen by SNI among its domains."""

from __future__ import annotations

from . import resources as rs
from .model import Certificate, StaticSite
from .snapshot import Resource, ResourceSet


class HttpsChains:
    """Which certificate serves each domain, kept as domains move; the secrets and the HTTPS
    listener are derived from it for the certificates that changed only."""

    def __init__(self, listen_address: str, port: int, access_log: str, route_shards: int = 1) -> None:
        self.listen_address = listen_address
        self.port = port
        self.access_log = access_log
        self.route_shards = route_shards
        self.host_cert: dict[str, Certificate] = {}  # domain -> the certificate it is served with
        self.cert_hosts: dict[str, set[str]] = {}  # SDS name -> its domains
        self.chains: list[tuple[str, list[str]]] = []  # SDS name -> its domains, sorted, as listed
        self.secrets = ResourceSet.of(rs.SECRET_TYPE, ())

    def serve(self, host: str, certificate: Certificate | None, changed: set[str]) -> bool:
        """Serve `host` with `certificate` (None: not over HTTPS); whether that is a change.

        The names of the certificates it changes are added to `changed`.
        """
        before = self.host_cert.get(host)
        if before == certificate:
            return False
        if before is not None:
            self.host_cert.pop(host)
            hosts = self.cert_hosts[before.name]
            hosts.discard(host)
            if not hosts:
                del self.cert_hosts[before.name]
            changed.add(before.name)
        if certificate is not None:
            self.host_cert[host] = certificate
            self.cert_hosts.setdefault(certificate.name, set()).add(host)
            changed.add(certificate.name)
        return True

    def notes(self, site: StaticSite) -> tuple[list[tuple[str, str]], list[str]]:
        """What a TLS site is told of its domains: each (domain, certificate name) served with
        another site's certificate, and the domains served with its own, which is not for them."""
        served_with: list[tuple[str, str]] = []
        uncovered: list[str] = []
        mine = site.certificate
        if mine is None:
            return served_with, uncovered
        for host in (*site.hosts, *site.redirect_from):
            served = self.host_cert.get(host)
            if served is None:
                continue
            if served.name != mine.name:
                served_with.append((host, served.name))
            elif not mine.covers(host):
                uncovered.append(host)
        return served_with, uncovered

    def update(self, names: set[str], listeners: ResourceSet) -> ResourceSet:
        """The certificates (SDS) `names` and the HTTPS listener's filter chains, after domains
        moved: the secrets are brought up to date, and the listeners returned."""
        upserts: list[Resource] = []
        gone: list[str] = []
        for name in names:
            hosts = self.cert_hosts.get(name)
            if not hosts:
                gone.append(name)
                continue
            # Sources renew a certificate on every site that names it at once; should two
            # contents meet under one name, the first domain's wins (the same in any build).
            certificate = self.host_cert[min(hosts)]
            upserts.append(Resource.from_message(rs.SECRET_TYPE, name, rs.secret(certificate)))
        self.secrets = self.secrets.evolve(upserts, gone)
        chains = [(name, sorted(hosts)) for name, hosts in sorted(self.cert_hosts.items())]
        if chains == self.chains:
            return listeners
        self.chains = chains
        if not chains:
            return listeners.evolve((), [rs.HTTPS_LISTENER_NAME])
        listener = rs.https_listener(
            self.listen_address, self.port, chains, self.access_log, self.route_shards
        )
        return listeners.evolve([Resource.from_message(rs.LISTENER_TYPE, rs.HTTPS_LISTENER_NAME, listener)])
