"""The `groups` scenario: what gateway groups save on a one-site change.

Ten gateway groups, each holding one namespace's sites and granting that namespace its own
domains, are served by the control plane's ADS server in this process, with one ADS client
per group whose `node.cluster` names the group (as a gateway's bootstrap declares it). A
one-site change in one group should be built in that group alone and sent to that group's
Envoys alone: the plane's observers say which groups were built (`built`) and what every
stream was sent (`sent`), and each client counts what it received. The same changes with
every site in ONE group show what the split saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from snapshot.builder import BuildResult
from snapshot.model import API_VERSION, SiteKey, StaticSite
from snapshot.tenancy import GatewayGroup, Tenancy, parse_gateway_group
from watcher.siteset import SiteSet
from xds_server.ads.stream import Outgoing, StreamInfo
from xds_server.local.ads_client import AdsClient, client_class
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

from .harness import log, site_object, summarize
from .inprocess import OPTIONS, Result, quiet, until

ONE_GROUP = "all"  # the group of every site in the contrast


def team_name(t: int) -> str:
    """The namespace of team `t`: its sites' domains are below `<team>.test`."""
    return f"team-{t:02d}"


def node_name(team: str) -> str:
    return f"envoy-{team}"


def gateway_group(name: str, teams: Sequence[str]) -> GatewayGroup:
    """A gateway group with one grant per team: the team's namespace, the domains below its own."""
    grants = [{"namespaces": {"names": [team]}, "domains": [f"**.{team}.test"]} for team in teams]
    doc = {
        "apiVersion": API_VERSION,
        "kind": "GatewayGroup",
        "metadata": {"name": name},
        "spec": {"grants": grants},
    }
    return parse_gateway_group(doc, f"gateway group {name}")


@dataclass(frozen=True, slots=True)
class Layout:
    """The gateway group of each team's sites, and the tenancy that declares the groups."""

    teams: tuple[str, ...]
    groups: tuple[str, ...]  # by team
    tenancy: Tenancy

    @classmethod
    def grouped(cls, teams: Sequence[str]) -> Layout:
        """Each team in a group of its own (`group-NN`), granted its domains."""
        groups = tuple(team.replace("team-", "group-") for team in teams)
        declared = [gateway_group(group, [team]) for team, group in zip(teams, groups, strict=True)]
        return cls(tuple(teams), groups, Tenancy.of(declared, {team: {} for team in teams}))

    @classmethod
    def single(cls, teams: Sequence[str]) -> Layout:
        """Every team in one group, with the same grants."""
        tenancy = Tenancy.of([gateway_group(ONE_GROUP, teams)], {team: {} for team in teams})
        return cls(tuple(teams), (ONE_GROUP,) * len(teams), tenancy)

    def group_of(self, team: str) -> str:
        return self.groups[self.teams.index(team)]

    def sites(self, per_team: int) -> dict[SiteKey, StaticSite]:
        """`per_team` sites of each team, numbered team after team."""
        out: dict[SiteKey, StaticSite] = {}
        for t, (team, group) in enumerate(zip(self.teams, self.groups, strict=True)):
            for i in range(t * per_team, (t + 1) * per_team):
                site = site_object(i, 8000 + i % 4, team, group)
                out[site.key] = site
        return out


@dataclass(frozen=True, slots=True)
class Change:
    """What one one-site change cost, as the observers and the clients saw it."""

    group: str  # the group whose site changed
    node: str  # that group's Envoy
    apply_ms: float
    first_ms: float | None  # apply -> first response to `node` (None: none within the limit)
    builds: tuple[tuple[str, float], ...]  # (group, ms) of every build the change made
    sent: Mapping[str, int]  # bytes sent to each Envoy, by node
    received: Mapping[str, int]  # responses each client received, by node

    def own_builds(self) -> list[float]:
        return [ms for group, ms in self.builds if group == self.group]

    def other_builds(self) -> int:
        return sum(1 for group, _ in self.builds if group != self.group)

    def other_bytes(self) -> int:
        return sum(n for node, n in self.sent.items() if node != self.node)

    def other_responses(self) -> int:
        return sum(n for node, n in self.received.items() if node != self.node)


class Recorder:
    """The plane's observer here: every build (its group, its time) and every response sent."""

    def __init__(self) -> None:
        self.builds: list[tuple[str, float]] = []
        self.sends: list[tuple[float, str, int]] = []  # (perf_counter, node, bytes)

    def on_built(self, result: BuildResult, seconds: float) -> None:
        self.builds.append((result.snapshot.group, seconds * 1000))

    def on_sent(self, info: StreamInfo, out: Outgoing) -> None:
        self.sends.append((time.perf_counter(), info.node_id, len(out.payload)))

    def first_to(self, node: str, since: int) -> float | None:
        return next((at for at, to, _ in self.sends[since:] if to == node), None)


async def _connect(port: int, team: str, group: str, delta: bool) -> AdsClient:
    client = client_class(delta)(port, node_name(team))
    client.node.cluster = group  # the gateway group its bootstrap declares
    return await client.start()


def _check_membership(plane: ControlPlane, layout: Layout) -> None:
    """Every client's stream is served the group its node declares, else nothing here means much."""
    served = {info.node_id: info.group for info in plane.server.streams()}
    wrong = [
        f"{node_name(team)} is in {served.get(node_name(team)) or 'no group'}, not {group}"
        for team, group in zip(layout.teams, layout.groups, strict=True)
        if served.get(node_name(team)) != group
    ]
    if wrong:
        raise RuntimeError("streams not served their node's gateway group: " + "; ".join(wrong))


async def _measure(
    layout: Layout, per_team: int, changes: int, delta: bool | None, notes: list[str]
) -> tuple[list[Change], bool]:
    """Serve `layout` to one client per team, make `changes` one-site changes (a new site of
    each team in turn), and return what each cost, and whether the clients spoke delta
    (`delta` None: delta if the server answers it)."""
    seen = Recorder()
    plane = ControlPlane(OPTIONS, observers=[ObserverFuncs(on_built=seen.on_built, on_sent=seen.on_sent)])
    port = await plane.server.start("127.0.0.1:0")
    clients: dict[str, AdsClient] = {}
    out: list[Change] = []
    try:
        sites = layout.sites(per_team)
        plane.apply(SiteSet(MappingProxyType(dict(sites)), tenancy=layout.tenancy))
        first_team = layout.teams[0]
        if delta is None:
            probe = await _connect(port, first_team, layout.groups[0], True)
            await until(
                lambda: probe.has_all_types() or probe.error is not None, 60, "the first delta responses"
            )
            delta = probe.error is None
            if delta:
                clients[first_team] = probe
            else:
                notes.append(f"groups: delta stream failed ({probe.error!r}); state of the world used")
                await probe.close()
        for team, group in zip(layout.teams, layout.groups, strict=True):
            if team not in clients:
                clients[team] = await _connect(port, team, group, delta)

        def all_served() -> bool:
            failed = [c for c in clients.values() if c.error is not None]
            if failed:
                raise RuntimeError(f"an ADS client failed: {failed[0].error!r}")
            return all(c.has_all_types() for c in clients.values())

        await until(all_served, 120, "the first responses of every client")
        await quiet(list(clients.values()), quiet_for=0.2, within=60)
        _check_membership(plane, layout)

        next_index = len(layout.teams) * per_team
        for k in range(changes):
            team = layout.teams[k % len(layout.teams)]
            group, node = layout.group_of(team), node_name(team)
            site = site_object(next_index + k, 8000 + k % 4, team, group)
            sites[site.key] = site
            new = SiteSet(
                MappingProxyType(dict(sites)), changed=frozenset({site.key}), tenancy=layout.tenancy
            )
            builds_mark, sends_mark = len(seen.builds), len(seen.sends)
            before = {node_name(t): sum(c.responses.values()) for t, c in clients.items()}
            started = time.perf_counter()
            plane.apply(new)
            apply_ms = (time.perf_counter() - started) * 1000
            with contextlib.suppress(TimeoutError):
                await until(functools.partial(seen.first_to, node, sends_mark), 10, "a response")
            first = seen.first_to(node, sends_mark)
            await quiet(list(clients.values()), quiet_for=0.2)
            sent: dict[str, int] = {}
            for _, to, nbytes in seen.sends[sends_mark:]:
                sent[to] = sent.get(to, 0) + nbytes
            out.append(
                Change(
                    group,
                    node,
                    apply_ms,
                    None if first is None else (first - started) * 1000,
                    tuple(seen.builds[builds_mark:]),
                    MappingProxyType(sent),
                    MappingProxyType(
                        {
                            node_name(t): sum(c.responses.values()) - before[node_name(t)]
                            for t, c in clients.items()
                        }
                    ),
                )
            )
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        await plane.server.stop(grace=0.5)
    return out, bool(delta)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _figure(name: str, layout: Layout, per_team: int, changes: list[Change], delta: bool) -> dict[str, Any]:
    """The figures of one layout; every sample is kept. "own": the changed team's group and
    Envoy; "other": the other teams' groups and Envoys (with every site in one group, that
    group's other Envoys); bytes are the serialized responses the server sent."""
    own_bytes = [c.sent.get(c.node, 0) for c in changes]
    all_bytes = [sum(c.sent.values()) for c in changes]
    first = [c.first_ms for c in changes if c.first_ms is not None]
    return {
        "figure": name,
        "size": len(layout.teams) * per_team,
        "groups": len(set(layout.groups)),
        "envoys": len(layout.teams),
        "sites_per_group": len(layout.teams) * per_team // len(set(layout.groups)),
        "protocol": "delta" if delta else "sotw",
        "changes": len(changes),
        "changed_groups": [c.group for c in changes],
        "built_groups": [[group for group, _ in c.builds] for c in changes],
        "build_ms": summarize([ms for c in changes for ms in c.own_builds()]),
        "own_builds_per_change": [len(c.own_builds()) for c in changes],
        "other_builds": sum(c.other_builds() for c in changes),
        "other_builds_per_change": [c.other_builds() for c in changes],
        "other_bytes": sum(c.other_bytes() for c in changes),
        "other_bytes_per_change": [c.other_bytes() for c in changes],
        "other_responses": sum(c.other_responses() for c in changes),
        "own_bytes": _median(own_bytes),
        "own_bytes_per_change": own_bytes,
        "all_bytes": _median(all_bytes),
        "all_bytes_per_change": all_bytes,
        "first_response_ms": {**summarize(first), "timeouts": len(changes) - len(first)},
        "apply_ms": summarize([c.apply_ms for c in changes]),
    }


def run_groups(quick: bool) -> Result:
    teams, per_team, changes = (10, 50, 10) if quick else (10, 1000, 20)
    return asyncio.run(_groups(teams, per_team, changes))


async def _groups(teams: int, per_team: int, changes: int) -> Result:
    names = [team_name(t) for t in range(teams)]
    notes: list[str] = []
    grouped = Layout.grouped(names)
    log(f"groups: {teams} gateway groups of {per_team} sites, {changes} one-site changes")
    split, delta = await _measure(grouped, per_team, changes, None, notes)
    single = Layout.single(names)
    log(f"groups: the same {changes} changes with all {teams * per_team} sites in one group")
    together, _ = await _measure(single, per_team, changes, delta, notes)
    figures = [
        _figure("groups", grouped, per_team, split, delta),
        _figure("groups-one", single, per_team, together, delta),
    ]
    for fig in figures:
        log(
            f"groups: {fig['groups']} group(s): build med {fig['build_ms'].get('median', 0):.1f} ms, "
            f"own bytes {fig['own_bytes']}, other groups' builds {fig['other_builds']}, bytes {fig['other_bytes']}"
        )
    return {"figures": figures, "notes": notes}
