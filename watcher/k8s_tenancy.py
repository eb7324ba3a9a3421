"""The tenancy of a cluster: its GatewayGroups and its Namespaces' labels, and the `Tenancy` they make.

GatewayGroups are cluster-scoped and owned by admins; a Namespace's labels are what grant
selectors see. Both are parsed by the one parser of `snapshot.tenancy`, whichever source they
came from. In a cluster the tenancy is always enforced: with no GatewayGroup, no site is
served (see deploy/gateway-group.yaml).

The index hands out the SAME `Tenancy` object while neither a group nor a namespace's labels
changed (the control plane judges every site again only when it is another object). A
GatewayGroup that cannot be read is absent, its problems logged once per change; the other
groups are unharmed. A change that is only a status or an annotation changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from snapshot.model import Problem
from snapshot.tenancy import (
    GatewayGroup,
    InvalidGatewayGroup,
    InvalidNamespace,
    Tenancy,
    parse_gateway_group,
    parse_namespace,
)

log = logging.getLogger("staticsite_xds.kubernetes")

_NO_LABELS: Final[Mapping[str, str]] = {}
V = TypeVar("V")
P = TypeVar("P")


def group_origin(name: str) -> str:
    """What a GatewayGroup's problems name as their origin."""
    return f"GatewayGroup {name}"


class TenancyIndex:
    """Every GatewayGroup (parsed), every Namespace's labels, and the tenancy they make."""

    def __init__(self) -> None:
        self._groups: dict[str, GatewayGroup] = {}  # by object name: the groups that could be read
        self._unreadable: dict[str, tuple[Problem, ...]] = {}  # by object name: why a group is absent
        self._labels: dict[str, Mapping[str, str]] = {}  # every namespace known
        self._label_problems: dict[str, Problem] = {}  # a namespace whose labels cannot be read
        self._tenancy: Tenancy | None = None  # none handed out yet
        self._stale = True  # something changed since `current()` made `_tenancy`

    @property
    def changed(self) -> bool:
        """Whether the tenancy may differ from the one last handed out."""
        return self._stale

    def group(self, name: str, body: Mapping[str, Any] | None) -> bool:
        """Update one GatewayGroup (None: it is gone); True if what it declares changed."""
        group: GatewayGroup | None = None
        problems: tuple[Problem, ...] | None = None
        if body is not None:
            try:
                group = parse_gateway_group(body, origin=group_origin(name))
            except InvalidGatewayGroup as exc:
                problems = tuple(exc.problems) or (Problem(group_origin(name), "", "cannot be read"),)
        return self._put(self._groups, self._unreadable, name, group, problems)

    def namespace(self, name: str, body: Mapping[str, Any] | None) -> bool:
        """Update one Namespace's labels (None: it is gone); True if they changed."""
        labels: Mapping[str, str] | None = None
        problem: Problem | None = None
        if body is not None:
            try:
                labels = dict(parse_namespace(body, origin=f"Namespace {name}")[1])
            except InvalidNamespace as exc:  # an API server would not keep one: seen as no labels
                labels, problem = _NO_LABELS, exc.problem
        return self._put(self._labels, self._label_problems, name, labels, problem)

    def _put(
        self, values: dict[str, V], problems: dict[str, P], name: str, value: V | None, problem: P | None
    ) -> bool:
        """Record what one object declares and what is wrong with it; True if either changed."""
        if (values.get(name), problems.get(name)) == (value, problem):
            return False
        values.pop(name, None)
        problems.pop(name, None)
        if value is not None:
            values[name] = value
        if problem is not None:
            problems[name] = problem
        self._stale = True
        return True

    def current(self) -> Tenancy:
        """The tenancy: the same object as before while nothing of it changed."""
        old = self._tenancy
        if old is not None and not self._stale:
            return old
        self._stale = False
        groups = [self._groups[name] for name in sorted(self._groups)]
        unreadable = [p for name in sorted(self._unreadable) for p in self._unreadable[name]]
        labels = [self._label_problems[name] for name in sorted(self._label_problems)]
        fresh = Tenancy.of(groups, self._labels, [*unreadable, *labels])
        if old is not None and fresh == old:
            return old
        for problem in fresh.problems:
            if old is None or problem not in old.problems:
                log.error("%s", problem)
        if old is None or fresh.groups.keys() != old.groups.keys():
            if fresh.groups:
                log.info("gateway groups: %s", ", ".join(sorted(fresh.groups)))
            else:
                log.warning(
                    "no GatewayGroup exists: no site is served until an admin creates one "
                    "(see deploy/gateway-group.yaml)"
                )
        self._tenancy = fresh
        return fresh
