"""Site status: what the source found, what the builder decided, told to the site's owner.

In folder mode the owner reads the log, so a line is written each time a site's state
changes, and never again while it stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from snapshot.builder import Phase, SiteState
from snapshot.model import SiteKey

from .siteset import SiteSet

log = logging.getLogger("staticsite_xds.status")


def site_states(sites: SiteSet, built: Mapping[SiteKey, SiteState]) -> dict[SiteKey, SiteState]:
    """Merge the source's verdicts (invalid declarations) with the builder's (conflicts)."""
    states = dict(built)
    for key, problems in sites.invalid.items():
        detail = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
        where = problems[0].origin if problems else ""
        serving = key in sites.sites and built.get(key, None) is not None
        if serving and built[key].phase is Phase.PROVISIONED:
            detail += " (the last good version is still served)"
        states[key] = SiteState(key, Phase.INVALID, "InvalidSpec", f"{where}: {detail}" if where else detail)
    return states


class StatusLog:
    """Writes one log line per site state transition."""

    def __init__(self) -> None:
        self._last: dict[SiteKey, SiteState] = {}

    def report(self, states: Mapping[SiteKey, SiteState]) -> None:
        for key in sorted(states):
            state = states[key]
            if self._last.get(key) == state:
                continue
            level = logging.INFO if state.phase is Phase.PROVISIONED else logging.WARNING
            log.log(level, "site %s is %s (%s): %s", key, state.phase.value, state.reason, state.message)
        for key in sorted(set(self._last) - set(states)):
            log.info("site %s was removed", key)
        self._last = dict(states)
