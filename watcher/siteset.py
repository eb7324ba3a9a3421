"""The complete current set of sites, as every source produces it, and the limit on their number."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import immutables

from snapshot.model import Problem, SiteKey, StaticSite, seniority
from snapshot.tenancy import OPEN, Tenancy
from snapshot.verdict import site_limit_problem

log = logging.getLogger("staticsite_xds.watcher")

DEFAULT_MAX_SITES = 50_000


@dataclass(frozen=True, slots=True)
class SiteSet:
    """Every valid site by identity, and every problem found while reading the source.

    `invalid` names the sites whose current declaration is invalid, with its problems; such a
    site may still be in `sites` with its last good version. It also names the valid sites
    that are not served because the limit on the number of sites is reached (`refused`).
    """

    sites: Mapping[SiteKey, StaticSite] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[Problem, ...] = ()
    invalid: Mapping[SiteKey, tuple[Problem, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # The sites added, changed or removed since the source's previous set, when it knows.
    changed: frozenset[SiteKey] | None = None
    # The metadata.generation of each invalid declaration, when the source has one (a valid
    # site's is its own `generation`).
    invalid_generations: Mapping[SiteKey, int] = field(default_factory=lambda: MappingProxyType({}))
    # The sites of `invalid` that are valid but over the limit of sites (see `SiteLimit`).
    refused: frozenset[SiteKey] = frozenset()
    # The gateway groups and the namespaces' labels; the same object while none of it changed.
    tenancy: Tenancy = OPEN

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


class FirstSeen:
    """When this control plane first saw each site: the order of sites declared in the same
    second, the one place both sources keep it.

    A site whose declaration records a first sighting (`status.firstSeen`, which the status
    writer keeps in a cluster) keeps that one. Any other is stamped when first seen; the sites
    first seen `together` (a source's first reading, one batch of file changes) get the same
    stamp, so that among those namespace/name decides, and a site seen later is younger than
    all of them. Stamps only grow, whatever the wall clock does, and a site's
    stamp outlives a change of the file or object that declares it until it is `forgotten`.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._stamps: dict[SiteKey, str] = {}
        self._last = 0  # microseconds since the epoch
        self._reading: str | None = None  # the stamp of the sites seen `together`, meanwhile

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Every site first seen within is of one age (one stamp)."""
        self._reading = self._next()
        try:
            yield
        finally:
            self._reading = None

    def stamp(self, site: StaticSite) -> StaticSite:
        """The site with its first sighting: the recorded one, else the one this process gave."""
        key = site.key
        if site.first_seen is not None:
            self._stamps[key] = site.first_seen
            return site
        stamp = self._stamps.get(key)
        if stamp is None:
            stamp = self._stamps[key] = self._reading or self._next()
        return dataclasses.replace(site, first_seen=stamp)

    def forget(self, keys: Iterable[SiteKey]) -> None:
        """These sites are gone: one declared again later is seen anew."""
        for key in keys:
            self._stamps.pop(key, None)

    def __contains__(self, key: SiteKey) -> bool:
        return key in self._stamps

    def _next(self) -> str:
        now = self._last = max(int(self._clock() * 1_000_000), self._last + 1)
        return format_first_seen(now)


def format_first_seen(microseconds: int) -> str:
    """A first sighting as `status.firstSeen` holds it: RFC 3339, microseconds, UTC."""
    seconds, fraction = divmod(microseconds, 1_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=fraction)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SiteLimit:
    """The most sites a source serves (`--max-sites`): the one place both sources apply it.

    A source offers every change of the valid sites it would serve (`offer`), then asks for
    its site set (`site_set`). Sites already served stay served; a new site beyond the limit
    is refused: reported as a problem of its declaration, and not served. Refused sites wait,
    and when served sites go away they are admitted in the order they came (among sites that
    came together, as at start-up: the oldest first, by `seniority`).
    The work of a call grows with what changed (and the refused sites are listed in the set).
    """

    def __init__(self, maximum: int = DEFAULT_MAX_SITES) -> None:
        if maximum < 1:
            raise ValueError(f"the limit of sites must be at least 1, got {maximum}")
        self.maximum = maximum
        # A persistent map: a set handed on shares it as it is, whatever changes after.
        self._served: immutables.Map[SiteKey, StaticSite] = immutables.Map()
        self._waiting: dict[SiteKey, tuple[tuple[int, int], StaticSite]] = {}  # key -> (place, site)
        self._queue: list[tuple[tuple[int, int], SiteKey]] = []  # a heap of places; stale ones skipped
        self._pending: dict[SiteKey, StaticSite | None] = {}
        self._batches = 0
        self._problems: dict[SiteKey, Problem] | None = {}  # the refused sites' problems; None: to redo

    @property
    def sites(self) -> Mapping[SiteKey, StaticSite]:
        """The sites served."""
        return self._served

    @property
    def refused(self) -> Mapping[SiteKey, StaticSite]:
        """The valid sites that are not served, because the limit is reached."""
        return {key: site for key, (_, site) in self._waiting.items()}

    def offer(self, key: SiteKey, site: StaticSite | None) -> None:
        """The source would serve `site` for `key` now (None: no site); applied by `settle`."""
        self._pending[key] = site

    def problem(self, site: StaticSite) -> Problem:
        return site_limit_problem(site.origin, self.maximum)

    def settle(self) -> set[SiteKey]:
        """Apply what was offered since the last call; the sites whose served version changed."""
        pending, self._pending = self._pending, {}
        if not pending:
            return set()
        changed: set[SiteKey] = set()
        arrivals: list[StaticSite] = []
        served = self._served.mutate()
        try:
            self._settle(pending, served, changed, arrivals)
        finally:
            self._served = served.finish()
        return changed

    def _settle(
        self,
        pending: dict[SiteKey, StaticSite | None],
        served: immutables.MapMutation[SiteKey, StaticSite],
        changed: set[SiteKey],
        arrivals: list[StaticSite],
    ) -> None:
        for key, site in pending.items():
            if site is None:
                if served.pop(key, None) is not None:
                    changed.add(key)
                elif self._waiting.pop(key, None) is not None:
                    self._problems = None
            elif key in served:
                if served[key] is not site:
                    served[key] = site
                    changed.add(key)
            elif key in self._waiting:
                place, _ = self._waiting[key]
                self._waiting[key] = (place, site)  # a changed declaration keeps its place
                self._problems = None
            else:
                arrivals.append(site)
        while self._queue and len(served) < self.maximum:
            place, key = heapq.heappop(self._queue)
            waiting = self._waiting.get(key)
            if waiting is not None and waiting[0] == place:
                del self._waiting[key]
                served[key] = waiting[1]
                changed.add(key)
                self._problems = None
        room = self.maximum - len(served)
        if len(arrivals) > room:
            arrivals.sort(key=seniority)
            batch = self._batches = self._batches + 1
            for index, site in enumerate(arrivals[max(room, 0) :]):
                place = (batch, index)
                self._waiting[site.key] = (place, site)
                heapq.heappush(self._queue, (place, site.key))
            self._problems = None
            log.warning(
                "%d sites are not served: the limit of %d sites (--max-sites) is reached",
                len(self._waiting),
                self.maximum,
            )
            arrivals = arrivals[: max(room, 0)]
        for site in arrivals:
            served[site.key] = site
            changed.add(site.key)
        if len(self._queue) > 2 * len(self._waiting) + 64:  # drop the stale places
            self._queue = [(place, key) for key, (place, _) in self._waiting.items()]
            heapq.heapify(self._queue)

    def site_set(
        self,
        problems: Iterable[Problem],
        invalid: Mapping[SiteKey, tuple[Problem, ...]],
        changed: frozenset[SiteKey] | None,
        invalid_generations: Mapping[SiteKey, int] | None = None,
        tenancy: Tenancy = OPEN,
    ) -> SiteSet:
        """The source's set: its sites within the limit, each refused one reported as invalid.

        What was offered is settled first (a source may settle earlier, to learn at once which
        sites the limit admitted). A refused site whose declaration is invalid too shows its
        declaration's problems.
        """
        moved = self.settle()
        if changed is not None and moved:
            changed = changed | moved
        if not self._waiting:
            return SiteSet(
                self._served,
                tuple(problems),
                MappingProxyType(dict(invalid)),
                changed,
                MappingProxyType(dict(invalid_generations or {})),
                tenancy=tenancy,
            )
        if self._problems is None:
            self._problems = {key: self.problem(site) for key, (_, site) in sorted(self._waiting.items())}
        refusals = self._problems
        all_invalid = dict(invalid)
        generations = dict(invalid_generations or {})
        refused: set[SiteKey] = set()
        for key, (_, site) in self._waiting.items():
            if key not in all_invalid:
                all_invalid[key] = (refusals[key],)
                generations[key] = site.generation
                refused.add(key)
        return SiteSet(
            self._served,
            (*problems, *refusals.values()),
            MappingProxyType(all_invalid),
            changed,
            MappingProxyType(generations),
            frozenset(refused),
            tenancy,
        )
