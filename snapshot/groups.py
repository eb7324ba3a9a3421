"""Which gateway group serves each site: the sites split by group, as the tenancy judges them.

Each gateway group is built and served on its own (a builder per group), so a change costs
only the groups it touches. `SiteGroups` keeps every site's group and the sites of each
group, and tells per update which groups changed and how. A site the tenancy refuses (a
domain not granted to its namespace, a group that does not exist) is in no group: its
refusal is its state, and no builder ever sees it.

The work of an update grows with the sites that changed; a new tenancy (a group or a grant
or a namespace's labels changed) judges every site again, which is rare and cheap per site.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import immutables

from .model import SiteKey, StaticSite
from .tenancy import Tenancy
from .verdict import SiteState

_NOWHERE = ""  # the group of a site the tenancy refuses


@dataclass(frozen=True, slots=True)
class Regrouping:
    """What one update changed."""

    # The groups to build: each with the sites added to, changed in or removed from it
    # (None: the group is new, build it whole).
    changed: Mapping[str, frozenset[SiteKey] | None]
    refusals_changed: frozenset[SiteKey]  # sites whose refusal began, changed or ended
    retired: tuple[str, ...] = ()  # groups that no longer exist
    tenancy_changed: bool = False


class SiteGroups:
    """Every site's gateway group, and each group's sites."""

    def __init__(self) -> None:
        self.tenancy: Tenancy | None = None
        self._group_of: dict[SiteKey, str] = {}  # _NOWHERE: refused
        # Each group's sites as a persistent map: a builder keeps the one it was handed as its
        # last, whatever changes after, and no update copies a group.
        self._members: dict[str, immutables.Map[SiteKey, StaticSite]] = {}
        self._edits: dict[str, immutables.MapMutation[SiteKey, StaticSite]] = {}  # during an update
        self._refusals: dict[SiteKey, SiteState] = {}

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._members)

    @property
    def refusals(self) -> Mapping[SiteKey, SiteState]:
        """The sites the tenancy refuses, with the state that says why."""
        return self._refusals

    def group_of(self, key: SiteKey) -> str | None:
        """The group that serves a site (None: the site is refused, or unknown)."""
        return self._group_of.get(key) or None

    def members(self, group: str) -> Mapping[SiteKey, StaticSite]:
        """A group's sites now, as a mapping of their own (a builder keeps it as its last)."""
        return self._members.get(group, _EMPTY)

    def size(self, group: str) -> int:
        return len(self._members.get(group, ()))

    def update(
        self,
        sites: Mapping[SiteKey, StaticSite],
        changed: Iterable[SiteKey] | None,
        tenancy: Tenancy,
    ) -> Regrouping:
        """Take the source's complete `sites`; `changed` names those added, changed or removed
        since the last update (None: unknown)."""
        tenancy_changed = tenancy is not self.tenancy
        self.tenancy = tenancy
        names = tenancy.names()
        out: dict[str, set[SiteKey] | None] = {}
        for name in names:
            if name not in self._members:
                self._members[name] = _EMPTY
                out[name] = None
        keys: Iterable[SiteKey]
        if tenancy_changed or changed is None:
            keys = sites.keys() | self._group_of.keys()
            if changed is None:  # the source does not know what changed: every group is built
                for name in names:
                    out.setdefault(name, set())
        else:
            keys = changed
        refusals_changed: set[SiteKey] = set()
        try:
            for key in keys:
                self._place(key, sites.get(key), tenancy, out, refusals_changed)
        finally:
            edits, self._edits = self._edits, {}
            for name, edit in edits.items():
                self._members[name] = edit.finish()
        retired = tuple(name for name in self._members if name not in names)
        for name in retired:  # every site of it was judged again above, and moved out
            del self._members[name]
            out.pop(name, None)
        return Regrouping(
            {name: None if keys is None else frozenset(keys) for name, keys in out.items()},
            frozenset(refusals_changed),
            retired,
            tenancy_changed,
        )

    def _place(
        self,
        key: SiteKey,
        site: StaticSite | None,
        tenancy: Tenancy,
        out: dict[str, set[SiteKey] | None],
        refusals_changed: set[SiteKey],
    ) -> None:
        before = self._group_of.get(key)
        if site is None:
            if before is None:
                return
            del self._group_of[key]
            self._leave(key, before, out, refusals_changed)
            return
        refusal = tenancy.judge(site)
        group = _NOWHERE if refusal is not None else tenancy.group_of(site)
        if before is not None and before != group:
            self._leave(key, before, out, refusals_changed)
        self._group_of[key] = group
        if refusal is not None:
            if self._refusals.get(key) != refusal:
                self._refusals[key] = refusal
                refusals_changed.add(key)
            return
        members = self._edit(group)
        if members.get(key) is not site:
            members[key] = site
            _mark(out, group, key)

    def _leave(
        self, key: SiteKey, group: str, out: dict[str, set[SiteKey] | None], refusals_changed: set[SiteKey]
    ) -> None:
        if group == _NOWHERE:
            del self._refusals[key]
            refusals_changed.add(key)
            return
        if group in self._members and self._edit(group).pop(key, None) is not None:
            _mark(out, group, key)

    def _edit(self, group: str) -> immutables.MapMutation[SiteKey, StaticSite]:
        edit = self._edits.get(group)
        if edit is None:
            edit = self._edits[group] = self._members[group].mutate()
        return edit


_EMPTY: immutables.Map[SiteKey, StaticSite] = immutables.Map()


def _mark(out: dict[str, set[SiteKey] | None], group: str, key: SiteKey) -> None:
    keys = out.setdefault(group, set())
    if keys is not None:
        keys.add(key)
