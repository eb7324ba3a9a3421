"""Gateway groups in the control plane: each group's sites, built and published on their own.

A change costs only the groups it touches; a site outside its grants is refused in the build
that sees it, and its domain is served by nobody else; a new tenancy judges every site again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from support.sites import site

from snapshot.builder import BuildOptions, BuildResult
from snapshot.groups import SiteGroups
from snapshot.model import API_VERSION, SiteKey, StaticSite
from snapshot.resources import ROUTE_TYPE
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.tenancy import OPEN, Tenancy, parse_gateway_group
from snapshot.verdict import Phase
from watcher.siteset import SiteSet
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.unit


def group(name: str, *grants: tuple[Any, list[str]]) -> dict[str, Any]:
    """A GatewayGroup manifest; each grant is (namespaces: list of names or a selector dict, domains)."""
    listed = []
    for namespaces, domains in grants:
        who = {"names": namespaces} if isinstance(namespaces, list) else {"selector": namespaces}
        listed.append({"namespaces": who, "domains": domains})
    return {
        "apiVersion": API_VERSION,
        "kind": "GatewayGroup",
        "metadata": {"name": name},
        "spec": {"grants": listed},
    }


def tenancy(*groups: dict[str, Any], labels: Mapping[str, Mapping[str, str]] | None = None) -> Tenancy:
    parsed = {
        g.name: g
        for g in (parse_gateway_group(doc, f"gatewaygroup/{doc['metadata']['name']}") for doc in groups)
    }
    return Tenancy(MappingProxyType(parsed), MappingProxyType(dict(labels or {})), enforced=True)


def site_set(
    sites: Iterable[StaticSite], tenancy: Tenancy = OPEN, changed: Iterable[SiteKey] | None = None
) -> SiteSet:
    return SiteSet(
        MappingProxyType({s.key: s for s in sites}),
        changed=None if changed is None else frozenset(changed),
        tenancy=tenancy,
    )


def domains(snapshot: Snapshot) -> set[str]:
    names: set[str] = set()
    for res in snapshot.of_type(ROUTE_TYPE).resources.values():
        for vhost in res.decode().virtual_hosts:  # type: ignore[attr-defined]
            names.update(d for d in vhost.domains if d != "*")  # "*": the unknown-domain answer
    return names


TWO = (
    group("blue", (["docs"], ["**.blue.example.test"])),
    group("green", (["docs", "api"], ["**.green.example.test"])),
)


# -- the split ------------------------------------------------------------------------------


def test_sites_go_to_the_group_they_name_and_a_change_marks_only_its_group() -> None:
    groups = SiteGroups()
    t = tenancy(*TWO)
    a = site("a", "a.blue.example.test", gateway_group="blue")
    b = site("b", "b.green.example.test", gateway_group="green")
    first = groups.update({a.key: a, b.key: b}, None, t)
    assert first.changed == {"blue": None, "green": None}  # new groups: built whole
    assert groups.group_of(a.key) == "blue"
    assert groups.group_of(b.key) == "green"
    a2 = dataclasses.replace(a, generation=2)
    second = groups.update({a.key: a2, b.key: b}, {a.key}, t)
    assert second.changed == {"blue": frozenset({a.key})}
    assert not second.tenancy_changed
    assert dict(groups.members("blue")) == {a.key: a2}


def test_a_site_that_moves_group_leaves_one_and_joins_the_other() -> None:
    groups = SiteGroups()
    t = tenancy(group("blue", (["docs"], ["*"])), group("green", (["docs"], ["*"])))
    a = site("a", gateway_group="blue")
    groups.update({a.key: a}, None, t)
    moved = dataclasses.replace(a, gateway_group="green")
    regrouping = groups.update({a.key: moved}, {a.key}, t)
    assert regrouping.changed == {"blue": frozenset({a.key}), "green": frozenset({a.key})}
    assert not groups.members("blue")
    assert dict(groups.members("green")) == {a.key: moved}


def test_a_refused_site_is_in_no_group_and_its_refusal_says_why() -> None:
    groups = SiteGroups()
    t = tenancy(group("default", (["security"], ["login.example.test"]), (["docs"], ["**.example.test"])))
    login = site("login", "login.example.test")  # namespace docs
    ok = site("ok", "ok.example.test")
    regrouping = groups.update({login.key: login, ok.key: ok}, None, t)
    assert groups.group_of(login.key) is None
    assert regrouping.refusals_changed == {login.key}
    refusal = groups.refusals[login.key]
    assert refusal.reason == "DomainNotPermitted"
    assert "login.example.test" in refusal.message
    assert "security" in refusal.message
    assert dict(groups.members("default")) == {ok.key: ok}


def test_a_site_of_a_group_that_does_not_exist_is_refused() -> None:
    groups = SiteGroups()
    a = site("a", gateway_group="nowhere")
    groups.update({a.key: a}, None, tenancy(group("default", (["docs"], ["*"]))))
    assert groups.refusals[a.key].reason == "GatewayGroupNotFound"


def test_a_new_tenancy_judges_every_site_again_and_retires_groups_gone() -> None:
    groups = SiteGroups()
    a = site("a", "a.blue.example.test", gateway_group="blue")
    b = site("b", "b.green.example.test", gateway_group="green")
    sites = {a.key: a, b.key: b}
    groups.update(sites, None, tenancy(*TWO))
    only_green = tenancy(TWO[1])
    regrouping = groups.update(sites, frozenset(), only_green)  # nothing of the sites changed
    assert regrouping.tenancy_changed
    assert regrouping.retired == ("blue",)
    assert groups.refusals[a.key].reason == "GatewayGroupNotFound"
    assert groups.group_of(b.key) == "green"
    assert "blue" not in regrouping.changed


# -- the plane ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.built: list[BuildResult] = []
        self.published: list[Snapshot] = []

    def observer(self) -> ObserverFuncs:
        return ObserverFuncs(
            on_built=lambda result, _seconds: self.built.append(result),
            on_published=lambda _sites, snapshot: self.published.append(snapshot),
        )


def ten_groups(sites_each: int) -> tuple[Tenancy, list[StaticSite]]:
    docs = [group(f"g{i}", (["docs"], [f"**.g{i}.example.test"])) for i in range(10)]
    sites = [
        site(f"s{i}-{j}", f"s{j}.g{i}.example.test", gateway_group=f"g{i}")
        for i in range(10)
        for j in range(sites_each)
    ]
    return tenancy(*docs), sites


def test_a_one_site_change_builds_and_publishes_only_its_group() -> None:
    record = Recorder()
    plane = ControlPlane(BuildOptions(), observers=[record.observer()])
    t, sites = ten_groups(20)
    plane.apply(site_set(sites, t))
    assert sorted(s.group for s in record.published) == sorted(f"g{i}" for i in range(10))
    before = plane.snapshots()
    record.built.clear()
    record.published.clear()
    changed = dataclasses.replace(sites[45], generation=7, domain="new.g2.example.test")
    sites[45] = changed
    plane.apply(site_set(sites, t, {changed.key}))
    assert [r.snapshot.group for r in record.built] == ["g2"]
    assert [s.group for s in record.published] == ["g2"]
    after = plane.snapshots()
    for name in before:
        if name != "g2":
            assert after[name] is before[name]  # the same object: no build, no byte
    assert after["g2"].version != before["g2"].version
    assert "new.g2.example.test" in domains(after["g2"])
    assert plane.server.snapshots["g2"] is after["g2"]


def test_each_group_is_served_only_its_sites() -> None:
    plane = ControlPlane(BuildOptions())
    t, sites = ten_groups(3)
    plane.apply(site_set(sites, t))
    for i in range(10):
        assert domains(plane.snapshots()[f"g{i}"]) == {f"s{j}.g{i}.example.test" for j in range(3)}


def test_a_revoked_grant_takes_the_site_out_in_the_next_build() -> None:
    plane = ControlPlane(BuildOptions())
    granted = tenancy(group("default", (["docs"], ["**.example.test"])))
    sites = [site("a", "a.example.test"), site("b", "b.other.test")]
    plane.apply(site_set(sites, granted))
    assert domains(plane.snapshots()[DEFAULT_GROUP]) == {"a.example.test"}
    state_b = plane.status.states()[SiteKey("docs", "b")]
    assert (state_b.phase, state_b.reason) == (Phase.INVALID, "DomainNotPermitted")
    assert plane.status.states()[SiteKey("docs", "a")].phase is Phase.PROVISIONED

    revoked = tenancy(group("default", (["docs"], ["b.other.test"])))
    plane.apply(site_set(sites, revoked, changed=()))
    assert domains(plane.snapshots()[DEFAULT_GROUP]) == {"b.other.test"}
    state_a = plane.status.states()[SiteKey("docs", "a")]
    assert state_a.reason == "DomainNotPermitted"
    assert plane.status.states()[SiteKey("docs", "b")].phase is Phase.PROVISIONED


def test_a_deleted_and_recreated_site_keeps_its_domain_from_another_namespace() -> None:
    plane = ControlPlane(BuildOptions())
    t = tenancy(
        group(
            "default",
            (["docs"], ["docs.example.test"]),
            ({}, ["**.example.test"]),  # every namespace, below example.test
        )
    )
    ours = site("docs", "docs.example.test")
    theirs = site("squat", "docs.example.test", namespace="other")
    plane.apply(site_set([ours, theirs], t))
    assert plane.status.states()[theirs.key].reason == "DomainNotPermitted"
    plane.apply(site_set([theirs], t, changed={ours.key}))  # ours is deleted
    assert plane.status.states()[theirs.key].reason == "DomainNotPermitted"
    assert domains(plane.snapshots()[DEFAULT_GROUP]) == set()
    plane.apply(site_set([theirs, ours], t, changed={ours.key}))  # and created again
    assert plane.status.states()[ours.key].phase is Phase.PROVISIONED
    assert domains(plane.snapshots()[DEFAULT_GROUP]) == {"docs.example.test"}


def test_with_no_gateway_group_nothing_is_served_and_every_site_says_why() -> None:
    plane = ControlPlane(BuildOptions())
    plane.apply(site_set([site("a")], tenancy()))
    assert plane.snapshots() == {}
    state = plane.status.states()[SiteKey("docs", "a")]
    assert state.reason == "GatewayGroupNotFound"
    assert "GatewayGroup" in state.message


def test_without_declared_groups_every_site_is_the_default_groups() -> None:
    plane = ControlPlane(BuildOptions())
    plane.apply(site_set([site("a"), site("b")]))
    assert set(plane.snapshots()) == {DEFAULT_GROUP}
    assert plane.published is plane.snapshots()[DEFAULT_GROUP]
    assert domains(plane.published) == {"a.example.test", "b.example.test"}
    assert plane.ready
