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


@dataclass(frozen=True, slots=True)
class SiteChanges:
    added: tuple[SiteKey, ...]
    updated: tuple[SiteKey, ...]
    removed: tuple[SiteKey, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def changes(old: Mapping[SiteKey, StaticSite], new: Mapping[SiteKey, StaticSite]) -> SiteChanges:
    """Which sites a new set adds, changes and removes (origin and generation aside)."""
    added = tuple(sorted(k for k in new if k not in old))
    removed = tuple(sorted(k for k in old if k not in new))
    updated = tuple(
        sorted(
            k
            for k, site in new.items()
            if k in old and (old[k].domain, old[k].backend) != (site.domain, site.backend)
        )
    )
    return SiteChanges(added, updated, removed)
