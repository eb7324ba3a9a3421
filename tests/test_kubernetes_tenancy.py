"""The tenancy of a cluster (GatewayGroups and Namespaces' labels), against kmock's API emulator.

The Kubernetes source lists GatewayGroups and Namespaces with the sites, watches them, and
hands each site set the `Tenancy` they make: always enforced, the same object while neither
changed, and a new one at once when a group or a namespace's labels change. Each test runs
the source alone (kopf included) and reads the site sets it yields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from support.kubernetes import OPEN_GRANT, Cluster, WatchedSource
from support.waiting import eventually

from snapshot.model import SiteKey
from snapshot.tenancy import DEFAULT_GROUP, Tenancy
from watcher.k8s import GATEWAY_GROUPS
from watcher.k8s_api import NAMESPACES

pytestmark = [pytest.mark.timeout(30), pytest.mark.kubernetes]

KEY = SiteKey("docs", "main")
DOCS_GRANT = {"namespaces": {"names": ["docs"]}, "domains": ["docs.example.com"]}


class Watching(WatchedSource):
    """A Kubernetes source watching the emulator, and every site set it yielded."""

    @property
    def tenancy(self) -> Tenancy:
        return self.latest.tenancy

    def verdict(self, key: SiteKey = KEY) -> str | None:
        """Whether the latest tenancy permits a site: None, or the reason it is refused."""
        site = self.latest.sites[key]
        state = self.tenancy.judge(site)
        return None if state is None else state.reason


def requests_of(cluster: Cluster, action: Any, path_end: str) -> list[Any]:
    ours = cluster.requests_by("staticsite-xds/") + cluster.requests_by("kopf/")
    return [r for r in ours if r.action == action and r.url.path.endswith(path_end)]


@pytest.fixture
async def watching(cluster: Cluster) -> AsyncIterator[Any]:
    """Start a source on demand (after the test has seeded the emulator); stop it at the end."""
    started: list[Watching] = []

    async def start(namespaces: Iterable[str] = (), check_period: float = 3.0) -> Watching:
        watched = await Watching.start(cluster, namespaces, check_period=check_period)
        started.append(watched)
        watch = cluster.kmock.action.WATCH
        await eventually(lambda: requests_of(cluster, watch, "/gatewaygroups"), what="kopf watching groups")
        return watched

    yield start
    for watched in started:
        await watched.close()


async def test_the_initial_listing_includes_the_groups_and_the_namespaces(
    cluster: Cluster, watching: Any
) -> None:
    await cluster.create_namespace("docs", team="docs")
    await cluster.create_group("docs", DOCS_GRANT)
    await cluster.create_site("docs", "main", "docs.example.com", gatewayGroup="docs")
    watched: Watching = await watching()
    (first,) = watched.sets[:1]
    assert first.tenancy.enforced
    assert sorted(first.tenancy.groups) == [DEFAULT_GROUP, "docs"]
    assert first.tenancy.namespace_labels["docs"] == {"team": "docs"}
    assert first.tenancy.problems == ()
    assert KEY in first.sites
    assert watched.verdict() is None, "docs.example.com is granted to namespace docs in group docs"


async def test_a_group_created_edited_and_deleted_yields_a_new_tenancy_each_time(
    cluster: Cluster, watching: Any
) -> None:
    await cluster.create_site("docs", "main", "docs.example.com", gatewayGroup="docs")
    watched: Watching = await watching()
    assert watched.verdict() == "GatewayGroupNotFound"
    before = watched.tenancy

    await cluster.create_group("docs", DOCS_GRANT)
    await eventually(lambda: "docs" in watched.tenancy.groups, what="the group created")
    assert watched.verdict() is None
    assert watched.sets[-1].changed == frozenset(), "only the tenancy changed"
    created = watched.tenancy
    assert created is not before

    # a site's change keeps the very same tenancy object
    await cluster.create_site("docs", "other", "other.example.com")
    await eventually(lambda: SiteKey("docs", "other") in watched.sets[-1].sites, what="the other site")
    assert watched.tenancy is created

    await cluster.update_group("docs", {"grants": [{**DOCS_GRANT, "domains": ["blog.example.com"]}]})
    await eventually(lambda: watched.tenancy.groups["docs"].generation == 2, what="the group edited")
    assert watched.verdict() == "DomainNotPermitted"

    await cluster.delete_group("docs")
    await eventually(lambda: "docs" not in watched.tenancy.groups, what="the group deleted")
    assert watched.verdict() == "GatewayGroupNotFound"
    assert DEFAULT_GROUP in watched.tenancy.groups


async def test_a_status_only_change_of_a_group_keeps_the_tenancy(cluster: Cluster, watching: Any) -> None:
    await cluster.create_group("docs", DOCS_GRANT)
    watched: Watching = await watching()
    tenancy = watched.tenancy
    count = len(watched.sets)
    patch = cluster._stamp({"status": {"note": "seen"}, "metadata": {"annotations": {"a": "b"}}}, new=False)
    await cluster.api.patch(GATEWAY_GROUPS, "", "docs", patch)
    await eventually(
        lambda: (b := watched.source.cache.groups.get(("", "docs"))) and "status" in b, what="the event"
    )
    await cluster.create_site("docs", "main", "docs.example.com")  # something to yield
    await eventually(lambda: KEY in watched.sets[-1].sites, what="the site")
    assert watched.tenancy is tenancy
    assert len(watched.sets) == count + 1


async def test_namespace_labels_reach_the_grants_that_select_them(cluster: Cluster, watching: Any) -> None:
    team = {"namespaces": {"selector": {"matchLabels": {"team": "docs"}}}, "domains": ["**.example.com"]}
    await cluster.create_group("teams", team)
    await cluster.create_namespace("docs")
    await cluster.create_site("docs", "main", "docs.example.com", gatewayGroup="teams")
    watched: Watching = await watching()
    assert watched.verdict() == "DomainNotPermitted"
    before = watched.tenancy

    await cluster.label_namespace("docs", team="docs")
    await eventually(lambda: watched.verdict() is None, what="the label seen")
    assert watched.tenancy is not before
    assert watched.tenancy.namespace_labels["docs"] == {"team": "docs"}

    await cluster.label_namespace("docs", team=None)
    await eventually(lambda: watched.verdict() == "DomainNotPermitted", what="the label removed")

    await cluster.create_namespace("blog", team="docs")
    await eventually(lambda: "blog" in watched.tenancy.namespace_labels, what="a new namespace")


async def test_an_invalid_group_is_reported_once_and_the_others_are_kept(
    cluster: Cluster, watching: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="staticsite_xds.kubernetes")
    await cluster.create_site("docs", "main", "docs.example.com", gatewayGroup="docs")
    await cluster.create_group("docs", DOCS_GRANT)
    watched: Watching = await watching()
    broken = cluster._stamp(
        {"apiVersion": "staticsite-xds.dev/v1alpha1", "kind": "GatewayGroup", "metadata": {"name": "broken"}},
        new=True,
    )
    broken["spec"] = "not a mapping"
    await cluster.api.create(GATEWAY_GROUPS, "", broken)
    await eventually(lambda: watched.tenancy.problems, what="the problem")
    (problem,) = watched.tenancy.problems
    assert problem.origin == "GatewayGroup broken"
    assert problem.field == "spec"
    assert sorted(watched.tenancy.groups) == [DEFAULT_GROUP, "docs"]
    assert watched.verdict() is None

    # a bad pattern leaves the rest of its group in force
    await cluster.update_group("docs", {"grants": [{**DOCS_GRANT, "domains": ["docs.example.com", "*.com"]}]})
    await eventually(lambda: len(watched.tenancy.problems) == 2, what="the bad pattern")
    assert watched.verdict() is None
    assert any(p.field == "spec.grants[0].domains[1]" for p in watched.tenancy.problems)

    # each problem is logged once, however many sets follow
    await cluster.create_site("docs", "other", "other.example.com")
    await eventually(lambda: SiteKey("docs", "other") in watched.sets[-1].sites, what="another set")
    await watched.source.relist()
    logged = [r.getMessage() for r in caplog.records if "GatewayGroup broken" in r.getMessage()]
    assert len(logged) == 1, logged

    await cluster.delete_group("broken")
    await eventually(lambda: len(watched.tenancy.problems) == 1, what="the broken group gone")


async def test_with_no_group_nothing_is_granted(cluster: Cluster, watching: Any) -> None:
    await cluster.delete_group(DEFAULT_GROUP)
    await cluster.create_site("docs", "main", "docs.example.com")
    watched: Watching = await watching()
    assert watched.tenancy.enforced
    assert dict(watched.tenancy.groups) == {}
    assert watched.verdict() == "GatewayGroupNotFound"
    await cluster.create_group(DEFAULT_GROUP, OPEN_GRANT)
    await eventually(lambda: watched.verdict() is None, what="the default group created")


async def test_a_deletion_missed_by_the_watch_is_healed_by_our_listing(
    cluster: Cluster, watching: Any
) -> None:
    await cluster.create_group("docs", DOCS_GRANT)
    watched: Watching = await watching()
    cluster.kmock.objects["staticsite-xds.dev/v1alpha1/gatewaygroups", None, "docs"].delete()  # no event
    await asyncio.sleep(0.2)
    assert "docs" in watched.tenancy.groups
    await watched.source.relist()
    await eventually(lambda: "docs" not in watched.tenancy.groups, what="the listing's healing")


async def test_given_namespaces_are_read_one_by_one(cluster: Cluster, watching: Any) -> None:
    """With --namespace, Namespaces are neither listed nor watched cluster-wide: each given one is
    read by a GET, at every listing and every check."""
    await cluster.create_namespace("docs", team="docs")
    await cluster.create_namespace("elsewhere", team="x")
    watched: Watching = await watching(namespaces=["docs", "absent"], check_period=0.1)
    assert dict(watched.tenancy.namespace_labels) == {"docs": {"team": "docs"}}
    await cluster.label_namespace("docs", team="api")
    await eventually(
        lambda: watched.tenancy.namespace_labels["docs"] == {"team": "api"}, what="the label read by a GET"
    )
    action = cluster.kmock.action
    assert requests_of(cluster, action.LIST, "/namespaces") == []
    assert requests_of(cluster, action.WATCH, "/namespaces") == []
    assert requests_of(cluster, action.FETCH, "/namespaces/docs")
    assert sorted(watched.tenancy.groups) == [DEFAULT_GROUP], "groups are cluster-scoped: listed anyway"
    assert NAMESPACES.path(None, "docs") == "/api/v1/namespaces/docs"


async def test_nothing_is_yielded_before_the_groups_can_be_listed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups are part of the initial listing: while they cannot be listed (no CRD), no set is
    yielded, and the problem says which CRD is missing."""
    from kmock import KubernetesError

    from watcher import k8s

    monkeypatch.setattr(k8s, "_RETRY", (0.05, 0.1))
    refusing = True

    def answer() -> Any:
        if not refusing:
            raise NotImplementedError  # the emulator answers
        return KubernetesError(
            status=404, reason="NotFound", message="the server could not find the resource"
        )

    groups = cluster.kmock.resource("staticsite-xds.dev", "v1alpha1", "gatewaygroups")
    cluster.kmock[cluster.kmock.action.LIST, groups] << answer
    await cluster.create_site("docs", "main", "docs.example.com")
    watched = await Watching.start(cluster, first=False)
    sets, source = watched.sets, watched.source
    try:
        await eventually(lambda: source.state.problem, what="the refusal reported")
        assert "is the GatewayGroup CRD installed?" in str(source.state.problem)
        await asyncio.sleep(0.3)
        assert sets == []
        refusing = False
        await eventually(lambda: sets, what="the first set")
        assert sorted(sets[0].tenancy.groups) == [DEFAULT_GROUP]
        assert KEY in sets[0].sites
    finally:
        await watched.close()
