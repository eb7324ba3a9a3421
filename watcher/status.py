"""Site status: what the source found, what the builder decided, told to the site's owner.

In folder mode the owner reads the log, so a line is written each time a site's state
changes, and never again while it stays the same. The work of a report grows with what
changed, not with the number of sites.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from snapshot.builder import BuildResult, Phase, SiteState
from snapshot.model import Problem, SiteKey

from .siteset import SiteSet

log = logging.getLogger("staticsite_xds.status")


def invalid_state(key: SiteKey, problems: tuple[Problem, ...], still_served: bool) -> SiteState:
    """The state of a site whose declaration is invalid (or refused), naming where and which field.

    The reason is the first a problem names (a missing Secret: SecretNotFound; a site over the
    limit: SiteLimitReached), else InvalidSpec.
    """
    reason = next((p.reason for p in problems if p.reason), "InvalidSpec")
    detail = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
    if still_served:
        detail += " (the last good version is still served)"
    where = problems[0].origin if problems else ""
    return SiteState(key, Phase.INVALID, reason, f"{where}: {detail}" if where else detail)


def state_of(
    key: SiteKey,
    sites: SiteSet,
    built: Mapping[SiteKey, SiteState],
    rejected: Mapping[SiteKey, SiteState] | None = None,
) -> SiteState | None:
    """A site's state: the source's verdict (invalid) first, then Envoy's, then the builder's."""
    problems = sites.invalid.get(key)
    state = built.get(key)
    if problems is not None:
        return invalid_state(key, problems, state is not None and state.phase is Phase.PROVISIONED)
    if rejected is not None and key in rejected:
        return rejected[key]
    return state


class StatusLog:
    """Keeps every site's last state and writes one log line per state transition."""

    def __init__(self) -> None:
        self._last: dict[SiteKey, SiteState] = {}
        self._invalid: frozenset[SiteKey] = frozenset()

    def report(
        self,
        sites: SiteSet,
        result: BuildResult,
        rejected: Mapping[SiteKey, SiteState] | None = None,
        rejections_changed: frozenset[SiteKey] = frozenset(),
    ) -> frozenset[SiteKey] | None:
        """Report a build; `rejected` are the sites Envoy refused (`rejections_changed`: since
        the last report). Returns the sites whose state or declaration may have changed (None:
        any of them)."""
        invalid = frozenset(sites.invalid)
        keys = result.changed | invalid | self._invalid | rejections_changed
        self._invalid = invalid
        for key in sorted(keys):
            state = state_of(key, sites, result.sites, rejected)
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
