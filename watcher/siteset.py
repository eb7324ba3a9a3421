"""The complete current set of sites, as every source produces it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from snapshot.model import Problem, SiteKey, StaticSite


@dataclass(frozen=True, slots=True)
class SiteSet:
    """Every valid site by identity, and every problem found while reading the source.

    `invalid` names the sites whose current declaration is invalid, with its problems; such a
    site may still be in `sites` with its last good version.
    """

    sites: Mapping[SiteKey, StaticSite] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[Problem, ...] = ()
    invalid: Mapping[SiteKey, tuple[Problem, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # The sites added, changed or removed since the source's previous set, when it knows.
    changed: frozenset[SiteKey] | None = None
    # The metadata.generation of each invalid declaration, when the source has one (a valid
    # site's is its own `generation`).
    invalid_generations: Mapping[SiteKey, int] = field(default_factory=lambda: MappingProxyType({}))

    def generation(self, key: SiteKey) -> int | None:
        """The generation the site's current declaration has, if known."""
        if key in self.invalid:
            return self.invalid_generations.get(key)
        site = self.sites.get(key)
        return site.generation if site is not None else None


def merge_changes(
    first: frozenset[SiteKey] | None, then: frozenset[SiteKey] | None
) -> frozenset[SiteKey] | None:
    """What changed across two consecutive sets (unknown if either does not know)."""
    return None if first is None or then is None else first | then
