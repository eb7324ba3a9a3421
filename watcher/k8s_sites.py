"""The sites of the StaticSite objects: each object parsed, its certificate attached, indexed.

An object whose spec is invalid keeps serving its last good version; its problems are
reported. Objects are parsed by the one model parser, `snapshot.model.parse_site`; a site's
certificate comes from the `CertificateResolver` of the Secrets sites name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from snapshot.certificates import with_certificate
from snapshot.model import InvalidSite, Problem, SiteKey, StaticSite, parse_site
from snapshot.tenancy import OPEN, Tenancy

from .k8s_cache import ObjectKey, generation_of
from .k8s_secrets import FollowedSecrets, secret_of, unlink, users_of
from .site_certificates import CertificatePending, SiteCertificates, resolved
from .siteset import FirstSeen, SiteLimit, SiteSet

log = logging.getLogger("staticsite_xds.kubernetes")


class SiteIndex:
    """Every valid site (its last good version), the problems of invalid ones, and which sites
    each backend Service serves."""

    def __init__(self, secrets: FollowedSecrets, max_sites: int) -> None:
        self.secrets = secrets
        self.certificates = SiteCertificates(files=None, secrets=secrets)
        self.limit = SiteLimit(max_sites)  # the sites served, of `_sites`
        self.first_seen = FirstSeen()  # when each site was first seen (its status keeps it)
        self._sites: dict[SiteKey, StaticSite] = {}
        self._invalid: dict[SiteKey, tuple[Problem, ...]] = {}
        self._invalid_generations: dict[SiteKey, int] = {}
        self._by_backend: dict[ObjectKey, set[SiteKey]] = {}

    def current(self, changed: frozenset[SiteKey] | None = None, tenancy: Tenancy = OPEN) -> SiteSet:
        problems = tuple(p for key in sorted(self._invalid) for p in self._invalid[key])
        return self.limit.site_set(problems, self._invalid, changed, self._invalid_generations, tenancy)

    def backend_users(self, keys: Iterable[ObjectKey]) -> set[SiteKey]:
        """The sites whose backend is one of these Services."""
        return users_of(self._by_backend, keys)

    def update(self, key: SiteKey, body: dict[str, Any] | None) -> bool:
        """Update the site of one object (None: it is gone); True if the site set changed."""
        secrets = self.secrets
        if body is None:
            self.first_seen.forget([key])
            secrets.refer(key)
            self._invalid_generations.pop(key, None)
            gone = self._sites.pop(key, None)
            self.limit.offer(key, None)
            self._unindex(gone)
            was_invalid = self._invalid.pop(key, None) is not None  # its problems go with it
            return gone is not None or was_invalid
        last_good = secret_of(self._sites.get(key))
        try:
            parsed = parse_site(body, origin=f"StaticSite {key}")
        except InvalidSite as exc:
            secrets.refer(key, last_good)
            return self._invalidate(key, body, tuple(exc.problems)) | self._renew(key)
        secrets.refer(key, secret_of(parsed), last_good)
        try:
            served = self._with_certificate(parsed)
        except InvalidSite as exc:
            return self._invalidate(key, body, tuple(exc.problems)) | self._renew(key)
        if served is None:  # its Secret is being read: the site stays as it was until the answer
            return self._renew(key)
        secrets.refer(key, secret_of(served))
        site = self.first_seen.stamp(served)
        self._invalid_generations.pop(key, None)
        was_invalid = self._invalid.pop(key, None) is not None
        old = self._sites.get(key)
        if old == site:
            return was_invalid
        self._unindex(old)
        self._sites[key] = site
        self.limit.offer(key, site)
        backend = (site.backend.namespace, site.backend.service_name)
        self._by_backend.setdefault(backend, set()).add(key)
        return True

    def _invalidate(self, key: SiteKey, body: Mapping[str, Any], problems: tuple[Problem, ...]) -> bool:
        """Record the problems of an object's current version; True if they changed."""
        generation = generation_of(body)
        if self._invalid.get(key) == problems and self._invalid_generations.get(key) == generation:
            return False
        self._invalid[key] = problems
        self._invalid_generations[key] = generation
        return True

    def _with_certificate(self, site: StaticSite) -> StaticSite | None:
        """The site with the certificate of the Secret it names; None while that is being read.

        Raises `InvalidSite` when the Secret is missing or unusable, or when the site names
        certificate files (only a folder of sites reads files).
        """
        if secret_of(site) is None:
            self.secrets.quiet(site.key)
        if site.tls is None:
            return site
        certificate = resolved(site, self.certificates.resolve(site))
        if isinstance(certificate, CertificatePending):
            return None
        return with_certificate(site, certificate)

    def _renew(self, key: SiteKey) -> bool:
        """Give the version of a site still served its Secret's renewed certificate, while a
        newer version cannot be served; True if it changed. A Secret gone or broken meanwhile
        leaves it the certificate it has."""
        served = self._sites.get(key)
        ref = secret_of(served)
        if served is None or ref is None:
            return False
        renewed = self.secrets.renewal(ref, served)
        if renewed is None:
            return False
        self._sites[key] = site = with_certificate(served, renewed)
        self.limit.offer(key, site)
        log.info(
            "site %s: its last good version is served with the renewed certificate of Secret %s/%s",
            key,
            *ref,
        )
        return True

    def _unindex(self, site: StaticSite | None) -> None:
        if site is None:
            return
        unlink(self._by_backend, (site.backend.namespace, site.backend.service_name), site.key)
