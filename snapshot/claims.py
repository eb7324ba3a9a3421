"""Claims: which site has each (domain, path prefix), and how many served claims use each backend.

A claim is one domain (spec.domain, an alias or a redirect domain) at one path prefix. When
several sites claim the same, the oldest (`model.seniority`) has it; the others are in
conflict, and still serve the claims nobody else has.
"""

from __future__ import annotations

import operator
from dataclasses import fields

from . import resources as rs
from .model import Backend, SiteKey, StaticSite, seniority

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


class ClaimBook:
    """Every claimant of every claim, the mount that has each claim, and each backend's users.

    Changes are made by site (`claim`, `unclaim`, `replace`) and then decided by claim
    (`decide`), so the work grows with the claims whose claimants changed.
    """

    def __init__(self) -> None:
        self.claimants: dict[Claim, dict[SiteKey, rs.Mount]] = {}  # every claimant
        self.mounts: dict[str, dict[str, rs.Mount]] = {}  # domain -> prefix -> the mount that has it
        self.users: dict[Backend, int] = {}  # backend -> how many winning mounts route to it

    def claim(self, site: StaticSite) -> list[Claim]:
        if not site.aliases and not site.redirect_from:  # the common case, kept short
            claim = (site.domain, site.path_prefix)
            mount = rs.Mount(site, site.path_prefix, False, rs.cluster_name(site.backend))
            claimants = self.claimants.get(claim)
            if claimants is None:
                self.claimants[claim] = {site.key: mount}
            else:
                claimants[site.key] = mount
            return [claim]
        claims = site_claims(site)
        for claim, mount in claims:
            self.claimants.setdefault(claim, {})[site.key] = mount
        return [claim for claim, _ in claims]

    def unclaim(self, site: StaticSite) -> list[Claim]:
        claims = claims_of(site)
        for claim in claims:
            claimants = self.claimants.get(claim)
            if claimants is not None:
                claimants.pop(site.key, None)
                if not claimants:
                    del self.claimants[claim]
        return claims

    def replace(self, prev: StaticSite, site: StaticSite) -> None:
        """Same resources and age: only the bookkeeping objects change."""
        for claim, mount in site_claims(site):
            self.claimants[claim][site.key] = mount
            winner = self.winner(claim)
            if winner is not None and winner.site is prev:
                self.mounts[claim[0]][claim[1]] = mount

    def decide(self, claim: Claim, backends: set[Backend], restate: set[SiteKey]) -> SiteKey | None:
        """Re-decide who has `claim`; keep the users of each backend counted.

        The backends whose users changed are added to `backends`, the sites whose state may
        have changed to `restate`. A lone claimant with no other claim is settled here (the
        common case, kept short): its key is returned, and it is accepted.
        """
        claimants = self.claimants.get(claim)
        winner: rs.Mount | None = None
        settled: SiteKey | None = None
        if claimants:
            if len(claimants) == 1:
                (winner,) = claimants.values()
                site = winner.site
                if site.aliases or site.redirect_from or site.certificate is not None:
                    restate.add(site.key)
                else:
                    settled = site.key
            else:
                restate.update(claimants)
                winner = min(claimants.values(), key=lambda m: seniority(m.site))
        previous = self.winner(claim)
        if previous is winner:
            return settled
        host, prefix = claim
        if previous is not None:
            restate.add(previous.site.key)
            if not previous.redirect:
                self.users[previous.site.backend] -= 1
                backends.add(previous.site.backend)
        if winner is None:
            if previous is not None:
                mounts = self.mounts[host]
                del mounts[prefix]
                if not mounts:
                    del self.mounts[host]
            return settled
        if not winner.redirect:
            self.users[winner.site.backend] = self.users.get(winner.site.backend, 0) + 1
            backends.add(winner.site.backend)
        self.mounts.setdefault(host, {})[prefix] = winner
        return settled

    def winner(self, claim: Claim) -> rs.Mount | None:
        """The mount that has a claim, if any."""
        mounts = self.mounts.get(claim[0])
        return mounts.get(claim[1]) if mounts is not None else None

    def used(self, backend: Backend) -> bool:
        """Whether a winning mount routes to `backend`; an unused one is forgotten."""
        if self.users.get(backend, 0) > 0:
            return True
        self.users.pop(backend, None)
        return False

    def lost(self, site: StaticSite) -> tuple[list[tuple[str, str, SiteKey]], int]:
        """The claims of `site` another site has (domain, prefix, that site), and how many it has."""
        lost: list[tuple[str, str, SiteKey]] = []
        won = 0
        for claim in claims_of(site):
            winner = self.winner(claim)
            if winner is not None and winner.site.key != site.key:
                lost.append((*claim, winner.site.key))
            else:
                won += 1
        return lost, won
