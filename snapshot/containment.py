"""Envoy's rejections, traced to the sites that caused them and kept out of the snapshots.

Every published snapshot is a generation. This module remembers, for the recent
generations, which sites each one changed and which version of each resource type it held,
and follows the ACKs: the newest generation some Envoy accepted whole is the *accepted*
one, and the site objects it held are each site's last good version.

When an Envoy rejects (NACKs) a generation, the suspects are the sites whose object in that
generation differs from their last good one. Envoy's message usually names the culprit (a
cluster, a virtual host, a domain); otherwise the suspects are split in halves: one half is
tried in the next snapshot while the other is held back at its last good version, and each
ACK or NACK of a trial halves the search until the culprit is alone. A culprit is
*rejected*: it stays out of every snapshot (its last good version, if it has one, keeps
being served) until its owner changes it, and its state carries Envoy's words. Every other
site keeps updating all along, and a rejected configuration is never sent again.

Pure, synchronous bookkeeping: the control plane feeds it builds, ACKs and NACKs, and asks
it which sites to leave out of the next build.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from .claims import same_resources
from .model import SiteKey, StaticSite
from .resources import cluster_name
from .snapshot import Snapshot
from .verdict import Phase, SiteState, rejected

log = logging.getLogger("staticsite_xds.rejections")
T = TypeVar("T")

DEFAULT_HISTORY = 256  # generations remembered
_TOKEN_SPLIT = re.compile(r"[^\w.\-/*]+")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A site Envoy refused: which declaration, who said so, and what it said."""

    site: StaticSite
    node: str
    type_url: str
    message: str
    served_last_good: bool

    def state(self) -> SiteState:
        return rejected(self.site.key, self.node, self.type_url, self.message, self.served_last_good)


@dataclass(slots=True)
class _Generation:
    """One published snapshot, remembered by what it changed (memory grows with changes).

    A build from scratch (`changes` None) keeps its whole site set and verdicts, as the base
    the later generations' changes apply to; only the newest two such bases are kept.
    """

    number: int
    versions: dict[str, str]  # type URL -> version of that type's resource set
    changes: Mapping[SiteKey, StaticSite | None] | None  # sites it changed; None: everything
    verdicts: Mapping[SiteKey, SiteState | None]  # the builder's verdicts that changed
    sites: Mapping[SiteKey, StaticSite] | None = None  # only for a build from scratch
    states: Mapping[SiteKey, SiteState] | None = None  # likewise


class Containment:
    """Decides which sites each build leaves out, from what Envoys accepted and rejected."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        self.history = max(history, 2)
        self._generations: OrderedDict[int, _Generation] = OrderedDict()
        self._by_version: dict[tuple[str, str], int] = {}  # (type, version) -> newest generation
        self._next = 1
        self._accepted_gen = 0  # 0: nothing accepted yet
        self._accepted: dict[SiteKey, StaticSite] = {}
        self._stream_gen: dict[int, int] = {}  # stream -> generation it accepted whole
        # Versions some Envoy rejected: a later ACK of the same version (a delta response that
        # only removes, say) does not make what it rejected good.
        self._tainted: dict[tuple[str, str], int] = {}
        self.rejected: dict[SiteKey, Rejection] = {}
        self._untested: dict[SiteKey, StaticSite] = {}  # suspects not yet cleared or convicted
        self._trial: frozenset[SiteKey] = frozenset()  # suspects included in the current trial
        # Suspects among which one culprit at least must be (those of the last NACK not yet
        # cleared), and what that NACK said.
        self._guilty_among: set[SiteKey] = set()
        self._last_nack: tuple[str, str, str] = ("", "", "")  # node, type, message
        self._trial_gen = 0  # the generation that first carried the trial (0: not yet built)
        self._decided_at = 0  # NACKs of generations up to this one are already answered
        self._substituted: dict[SiteKey, StaticSite | None] = {}  # held sites in the last build
        self._source: Mapping[SiteKey, StaticSite] = MappingProxyType({})
        self._latest_sites: Mapping[SiteKey, StaticSite] = MappingProxyType({})
        self._latest_states: Mapping[SiteKey, SiteState] = MappingProxyType({})
        self._states_changed: set[SiteKey] = set()
        self.rejections_found = 0  # culprits found since start
        self.searches = 0  # rejections that needed a search by halves

    # -- builds ----------------------------------------------------------------------------

    @property
    def searching(self) -> bool:
        return bool(self._untested)

    def effective(
        self, sites: Mapping[SiteKey, StaticSite], changed: frozenset[SiteKey] | None
    ) -> tuple[Mapping[SiteKey, StaticSite], frozenset[SiteKey] | None]:
        """The sites to build from `sites` (the source's), and what changed among them."""
        self._source = sites
        self._forget_redeclared(sites)
        held = set(self.rejected) | (self._untested.keys() - self._trial)
        previous = self._substituted
        if not held and not previous:
            return sites, changed
        substituted: dict[SiteKey, StaticSite | None] = {}
        out = dict(sites)
        for key in held:
            if key not in sites:
                continue
            fallback = self._accepted.get(key)
            substituted[key] = fallback
            if fallback is None:
                del out[key]
            else:
                out[key] = fallback
        self._substituted = substituted
        if changed is not None:
            changed = changed | frozenset(substituted) | frozenset(previous)
        return MappingProxyType(out), changed

    def _forget_redeclared(self, sites: Mapping[SiteKey, StaticSite]) -> None:
        """A site changed (or deleted) by its owner gets a fresh chance."""
        for key, rejection in list(self.rejected.items()):
            if sites.get(key) is not rejection.site:
                del self.rejected[key]
                self._states_changed.add(key)
                log.info("site %s was changed after its rejection: it is tried again", key)
        if self._untested:
            for key in [k for k, site in self._untested.items() if sites.get(k) is not site]:
                del self._untested[key]
            self._trial = self._trial & self._untested.keys()
            self._guilty_among &= self._untested.keys()

    def built(
        self,
        snapshot: Snapshot,
        sites: Mapping[SiteKey, StaticSite],
        changed: frozenset[SiteKey] | None,
        states: Mapping[SiteKey, SiteState],
        states_changed: frozenset[SiteKey],
        *,
        new: bool,
    ) -> bool:
        """Record a build: `sites` and `changed` as `effective` gave them, and the builder's
        verdicts (`states`, of which `states_changed` changed).

        `new` is False when the snapshot equals the one already published. Returns True when
        another build should follow at once (a trial that changed nothing is passed over).
        """
        if not new:
            if self._untested and not self._trial_gen:
                # Holding suspects back changed nothing Envoy sees, so no answer will come:
                # give up the search rather than hold sites back for nothing.
                log.warning(
                    "the search for the rejected site(s) among %d suspect(s) was given up: "
                    "holding them back does not change the snapshot",
                    len(self._untested),
                )
                self._untested.clear()
                self._guilty_among.clear()
                self._trial = frozenset()
                return True
            return False
        number = self._next
        self._next += 1
        self._latest_sites = sites
        self._latest_states = states
        versions = {type_url: rset.version for type_url, rset in snapshot.types.items()}
        if changed is None:
            gen = _Generation(number, versions, None, {}, sites, states)
            bases = [g for g in self._generations.values() if g.sites is not None]
            for old_base in bases[:-1]:  # keep this base and the one before it
                old_base.sites = old_base.states = None
        else:
            verdicts = {k: states.get(k) for k in changed | states_changed}
            gen = _Generation(number, versions, {k: sites.get(k) for k in changed}, verdicts)
        self._generations[number] = gen
        for type_url, version in versions.items():
            self._by_version[(type_url, version)] = number
        while len(self._generations) > self.history:
            _, old = self._generations.popitem(last=False)
            for type_url, version in old.versions.items():
                if self._by_version.get((type_url, version)) == old.number:
                    del self._by_version[(type_url, version)]
                    self._tainted.pop((type_url, version), None)
        if self._untested and not self._trial_gen:
            self._trial_gen = number
        return False

    # -- what Envoys said ------------------------------------------------------------------

    def generation_of(self, type_url: str, version: str) -> int:
        """The newest generation whose `type_url` resources have `version` (0: unknown)."""
        return self._by_version.get((type_url, version), 0)

    def acked(self, stream: int, acked_versions: Mapping[str, str]) -> bool:
        """A stream ACKed; `acked_versions` is the snapshot version it holds of each type it
        was sent (without any tag of clusters kept back).

        True when the next build should change (a trial passed).
        """
        if any((t, v) in self._tainted for t, v in acked_versions.items()):
            return False
        whole = min((self.generation_of(t, v) for t, v in acked_versions.items()), default=0)
        if whole <= self._stream_gen.get(stream, 0):
            return False
        self._stream_gen[stream] = whole
        if whole <= self._accepted_gen:
            return False
        self._accept(whole)
        if self._untested and self._trial_gen and whole >= self._trial_gen:
            cleared = self._trial
            for key in cleared:
                self._untested.pop(key, None)
            self._guilty_among -= cleared
            log.info(
                "the trial of %d suspect site(s) was accepted; %d left to try",
                len(cleared),
                len(self._untested),
            )
            if len(self._guilty_among) == 1:  # the only one left of a rejected set: no need to try it
                (key,) = self._guilty_among
                node, type_url, message = self._last_nack
                self._convict(self._untested.pop(key), node, type_url, message)
                self._guilty_among.clear()
            # Within a rejected set, try halves; once it is resolved, try the rest all at once.
            pool = self._guilty_among or self._untested
            self._next_trial(sorted(pool), whole=not self._guilty_among)
            return True
        return False

    def stream_closed(self, stream: int) -> None:
        self._stream_gen.pop(stream, None)

    def nacked(self, node: str, type_url: str, version: str, message: str) -> bool:
        """An Envoy rejected `version` of `type_url`. True when the next build should change."""
        number = self.generation_of(type_url, version)
        if not number:
            log.warning(
                "a rejection by %s of version %s is too old to trace (only the last %d snapshots are kept)",
                node,
                version,
                self.history,
            )
            return False
        self._tainted[(type_url, version)] = number
        if number <= self._decided_at:
            return False  # already answered: the snapshot that follows the answer is on its way
        self._decided_at = self._next - 1
        suspects = self._suspects(number)
        if not suspects:
            log.warning(
                "the rejection by %s of %s version %s could not be traced to a site: "
                "no site changed since the last accepted snapshot",
                node,
                type_url.rsplit(".", 1)[-1],
                version,
            )
            return False
        self._last_nack = (node, type_url, message)
        named = _named_in(message, suspects)
        if named and len(named) < len(suspects):
            culprits = named
        elif not named and _named_in(message, {r.site.key: r.site for r in self.rejected.values()}):
            log.info("the rejection by %s names a site already left out: nothing more to do", node)
            return False
        elif len(suspects) == 1:
            culprits = suspects
        else:
            self._search(named or suspects)
            return True
        for site in culprits.values():
            self._convict(site, node, type_url, message)
        for key in culprits:
            self._untested.pop(key, None)
        self._guilty_among.clear()
        self._trial = self._trial - culprits.keys()
        if self._untested and not self._trial:
            self._next_trial(sorted(self._untested), whole=True)
        return True

    def _search(self, suspects: Mapping[SiteKey, StaticSite]) -> None:
        if not self._untested:
            self.searches += 1
        log.info("the rejection names no single site: trying %d suspect(s) by halves", len(suspects))
        self._untested.update(suspects)
        self._guilty_among = set(suspects)
        self._next_trial(sorted(suspects))

    def _next_trial(self, keys: list[SiteKey], *, whole: bool = False) -> None:
        self._trial = frozenset(keys if whole else keys[: (len(keys) + 1) // 2])
        self._trial_gen = 0

    def _convict(self, site: StaticSite, node: str, type_url: str, message: str) -> None:
        last_good = self._accepted.get(site.key)
        self.rejected[site.key] = Rejection(site, node, type_url, message, last_good is not None)
        self._states_changed.add(site.key)
        self.rejections_found += 1
        log.warning(
            "site %s (%s) is left out of the snapshots: Envoy %s rejected it: %s",
            site.key,
            site.origin or site.key,
            node or "(unnamed node)",
            message,
        )

    def _suspects(self, number: int) -> dict[SiteKey, StaticSite]:
        """Sites whose object in generation `number` differs from their last good one."""
        gens = self._generations
        accepted = self._accepted
        out: dict[SiteKey, StaticSite] = {}
        candidates: set[SiteKey] | None = None  # None: every site it held
        if self._accepted_gen in gens:
            candidates = set()
            for n in range(self._accepted_gen + 1, number + 1):
                changes = gens[n].changes
                if changes is None:
                    candidates = None
                    break
                candidates.update(changes)
        if candidates is None:
            everything = self._sites_at(number)
            found: Mapping[SiteKey, StaticSite | None] = everything
        else:
            found = {key: self._site_at(number, key) for key in candidates}
        for key, site in found.items():
            if site is None or key in self.rejected:
                continue
            state = self._state_at(number, key)
            if state is None or state.phase is not Phase.PROVISIONED:
                continue  # not served in that snapshot: it cannot be what Envoy refused
            good = accepted.get(key)
            if good is not None and same_resources(good, site):
                continue
            if self._source.get(key) is not site:
                continue  # its owner already changed it: the new declaration is tried anyway
            out[key] = site
        return out

    def _site_at(self, number: int, key: SiteKey) -> StaticSite | None:
        """The site `key` as generation `number` held it (the newest known, past the history)."""
        return self._as_of(number, key, lambda gen: gen.sites, lambda gen: gen.changes, self._latest_sites)

    def _state_at(self, number: int, key: SiteKey) -> SiteState | None:
        """The builder's verdict on `key` in generation `number` (likewise)."""
        return self._as_of(number, key, lambda gen: gen.states, lambda gen: gen.verdicts, self._latest_states)

    def _as_of(
        self,
        number: int,
        key: SiteKey,
        whole: Callable[[_Generation], Mapping[SiteKey, T] | None],
        changed: Callable[[_Generation], Mapping[SiteKey, T | None] | None],
        latest: Mapping[SiteKey, T],
    ) -> T | None:
        """`key`'s value in generation `number`: the newest change to it at or before `number`,
        or what a build from scratch held; past the remembered history, the newest value."""
        for n in range(number, 0, -1):
            gen = self._generations.get(n)
            if gen is None:
                break
            if gen.changes is None:  # a build from scratch: what it held, if still kept
                base = whole(gen)
                return base.get(key) if base is not None else latest.get(key)
            changes = changed(gen)
            assert changes is not None
            if key in changes:
                return changes[key]
        return latest.get(key)

    def _sites_at(self, number: int) -> dict[SiteKey, StaticSite]:
        """Every site generation `number` held: its base build plus the changes since."""
        gens = self._generations
        base_number = next((n for n in range(number, 0, -1) if n in gens and gens[n].sites is not None), 0)
        if not base_number:  # the base was forgotten: the newest set is the best guess
            return dict(self._latest_sites)
        base = gens[base_number].sites
        assert base is not None
        out = dict(base)
        for n in range(base_number + 1, number + 1):
            changes = gens[n].changes
            assert changes is not None  # a newer base would have been found first
            for key, site in changes.items():
                if site is None:
                    out.pop(key, None)
                else:
                    out[key] = site
        return out

    def _accept(self, number: int) -> None:
        """Generation `number` was accepted whole: its sites are the last good versions."""
        gens = self._generations
        previous = self._accepted_gen
        self._accepted_gen = number
        if number not in gens:
            return
        if (
            previous == 0
            or previous not in gens
            or any(gens[n].changes is None for n in range(previous + 1, number + 1))
        ):
            self._accepted = self._sites_at(number)
            return
        seen: set[SiteKey] = set()
        for n in range(number, previous, -1):
            changes = gens[n].changes
            assert changes is not None
            for key, site in changes.items():
                if key in seen:
                    continue
                seen.add(key)
                if site is None:
                    self._accepted.pop(key, None)
                else:
                    self._accepted[key] = site

    # -- status ----------------------------------------------------------------------------

    def states(self) -> Mapping[SiteKey, SiteState]:
        return {key: rejection.state() for key, rejection in self.rejected.items()}

    def take_state_changes(self) -> frozenset[SiteKey]:
        """Sites whose rejection began or ended since the last call."""
        changed = frozenset(self._states_changed)
        self._states_changed.clear()
        return changed


def _named_in(message: str, suspects: Mapping[SiteKey, StaticSite]) -> dict[SiteKey, StaticSite]:
    """The suspects whose virtual host, cluster or domain Envoy's message names."""
    tokens = {t.strip(".").lower() for t in _TOKEN_SPLIT.split(message)}
    tokens.discard("")
    named: dict[SiteKey, StaticSite] = {}
    for key, site in suspects.items():
        names = (
            str(key).lower(),
            cluster_name(site.backend).lower(),
            *(host.lower() for host in (*site.hosts, *site.redirect_from)),
        )
        if any(name in tokens for name in names):
            named[key] = site
    return named
