"""Site status: what the source found, what the builder decided, told to the site's owner.

In folder mode the owner reads the log, so a line is written each time a site's state
changes, and never again while it stays the same. The work of a report grows with what
changed, not with the number of sites.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from snapshot.model import SiteKey
from snapshot.verdict import Phase, SiteState, site_state

from .siteset import SiteSet

log = logging.getLogger("staticsite_xds.status")


def state_of(
    key: SiteKey,
    sites: SiteSet,
    built: Mapping[SiteKey, SiteState],
    rejected: Mapping[SiteKey, SiteState] | None = None,
) -> SiteState | None:
    """A site's state, from what the source, the builder and Envoy said (see `site_state`)."""
    refused = rejected.get(key) if rejected is not None else None
    return site_state(key, sites.invalid.get(key), built.get(key), refused)


class StatusLog:
    """Keeps every site's last state and writes one log line per state transition."""

    def __init__(self) -> None:
        self._last: dict[SiteKey, SiteState] = {}
        self._invalid: frozenset[SiteKey] = frozenset()

    def report(
        self,
        sites: SiteSet,
        built: Mapping[SiteKey, SiteState],
        built_changed: frozenset[SiteKey],
        rejected: Mapping[SiteKey, SiteState] | None = None,
        rejections_changed: frozenset[SiteKey] = frozenset(),
    ) -> frozenset[SiteKey] | None:
        """Report a build: `built` is every site's state as the builders (or the tenancy)
        decided it, of which `built_changed` changed; `rejected` are the sites Envoy refused
        (`rejections_changed`: since the last report). Returns the sites whose state or
        declaration may have changed (None: any of them)."""
        invalid = frozenset(sites.invalid)
        keys = built_changed | invalid | self._invalid | rejections_changed
        self._invalid = invalid
        for key in sorted(keys):
            state = state_of(key, sites, built, rejected)
            if state is None:
                if self._last.pop(key, None) is not None:
                    log.info("site %s was removed", key)
                continue
            if self._last.get(key) == state:
                continue
            self._last[key] = state
            level = logging.INFO if state.phase is Phase.PROVISIONED else logging.WARNING
            log.log(level, "site %s is %s (%s): %s", key, state.phase.value, state.reason, state.message)
        return None if sites.changed is None else frozenset(keys | sites.changed)

    def states(self) -> Mapping[SiteKey, SiteState]:
        """The last state reported for every site."""
        return self._last
