"""The Kubernetes source against kmock's API emulator over HTTP: sites in, snapshots out.

Most tests run a control plane in this process against the emulator (see `k8s_cluster`); the
`ObjectCache` tests feed events by hand, in every order; the last tests run the real
`staticsite-xds serve --kubernetes` process with a real Envoy in front of a sample backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from kmock import KubernetesError, KubernetesResourceNotFoundError
from support.emulator import REVISIONS
from support.kubernetes import (
    Cluster,
    feed,
    no_cluster_env,
    offline_source,
    route_domains,
    site_body,
    start_replica,
    start_serve_process,
)
from support.processes import free_port, run_cli, try_get
from support.waiting import eventually

from snapshot.model import GROUP, PLURAL, VERSION, SiteKey
from watcher import k8s
from watcher.k8s import ObjectCache
from xds_server.local.gateway import LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend
from xds_server.operations.health import HealthServer

pytestmark = pytest.mark.timeout(60)


def sites_resource(cluster: Cluster) -> Any:
    return cluster.kmock.resource(GROUP, VERSION, PLURAL)


def site_watches(cluster: Cluster) -> int:
    """How many watch requests on StaticSites kopf has made so far."""
    return len(cluster.kopf_requests("WATCH", "staticsites"))


def store_domains(cluster: Cluster) -> dict[SiteKey, str]:
    """What the emulator holds: each StaticSite's domain."""
    return {SiteKey(ns, name): body["spec"]["domain"] for (ns, name), body in cluster.stored_sites().items()}


@pytest.mark.kubernetes
async def test_create_update_delete_change_the_snapshot(cluster: Cluster) -> None:
    replica = await start_replica(cluster)
    try:
        await eventually(lambda: replica.plane.published is not None, what="the first snapshot")
        assert replica.domains() == []
        await cluster.create_site("docs", "main", "docs.example.com", service="docs-web", port=8080)
        await eventually(lambda: replica.domains() == ["docs.example.com"], what="the new site")
        assert replica.clusters() == {"docs/docs-web/8080"}

        await cluster.update_spec("docs", "main", {"domain": "www.example.com"})
        await eventually(lambda: replica.domains() == ["www.example.com"], what="the changed domain")

        await cluster.delete_site("docs", "main")
        await eventually(lambda: replica.domains() == [], what="the site removed")
        assert replica.clusters() == set()
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_status_and_events_follow_the_verdict(cluster: Cluster) -> None:
    replica = await start_replica(cluster)
    try:
        await cluster.create_service("docs", "web")
        await cluster.create_site("docs", "main", "docs.example.com")
        await eventually(lambda: replica.plane.published is not None, what="the first snapshot")

        async def provisioned() -> dict[str, Any] | None:
            status = await cluster.status("docs", "main")
            return status if status.get("phase") == "Provisioned" else None

        await eventually(provisioned, what="status written")
    finally:
        await replica.close()


# -- the initial listing ---------------------------------------------------------------------


def refusal(status: int) -> KubernetesError:
    """What a real API server answers a listing it refuses (a fresh error each time)."""
    if status == 404:  # the resource is not discoverable: its CRD is not installed
        return KubernetesResourceNotFoundError()
    return KubernetesError(
        status=403,
        reason="Forbidden",
        message='staticsites.staticsite-xds.dev is forbidden: User "system:serviceaccount:'
        'staticsite-xds:staticsite-xds" cannot list resource "staticsites"',
    )


LIST_REFUSALS = {404: "is the StaticSite CRD installed?", 403: "check the service account's RBAC"}


@pytest.mark.kubernetes
@pytest.mark.parametrize("status", sorted(LIST_REFUSALS))
async def test_nothing_is_published_before_the_initial_listing_completes(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    monkeypatch.setattr(k8s, "_RETRY", (0.05, 0.1))  # retry quickly: the schedule is not under test
    caplog.set_level(logging.INFO, logger="staticsite_xds.kubernetes")
    for i in range(50):
        cluster.put_silently(site_body(f"team-{i % 5}", f"site-{i}", f"site-{i}.example.com"))
    cause = LIST_REFUSALS[status]
    refusing = True
    refused = 0

    def answer() -> Any:
        nonlocal refused
        if not refusing:
            return NotImplemented  # from now on, the emulator answers the listing itself
        refused += 1
        return refusal(status)

    cluster.kmock[cluster.kmock.action.LIST, sites_resource(cluster)] << answer

    replica = await start_replica(cluster)
    health = HealthServer(lambda: replica.plane.ready, prometheus_client.CollectorRegistry())
    port = await health.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def answer_to(path: str) -> int:
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    return response.status

            await eventually(lambda: refused >= 3, what="three refused listings")
            assert replica.published == []
            assert replica.plane.published is None
            assert await answer_to("/readyz") == 503
            assert await answer_to("/healthz") == 200
            assert cluster.requests_by("kopf/") == [], "kopf must not start before the initial listing"
            complaints = [
                r.getMessage() for r in caplog.records if "cannot list StaticSites yet" in r.getMessage()
            ]
            assert complaints, "the failing listing is logged"
            assert all(str(status) in m and cause in m for m in complaints), complaints

            await cluster.create_site("late", "late", "late.example.com")  # arrives meanwhile
            refusing = False
            await eventually(lambda: replica.published, what="the first snapshot")
            first_sites, first_snapshot = replica.published[0]
            expected = {f"site-{i}.example.com" for i in range(50)} | {"late.example.com"}
            assert len(first_sites.sites) == 51
            assert sorted(route_domains(first_snapshot)) == sorted(expected)
            assert await answer_to("/readyz") == 200
            await eventually(lambda: site_watches(cluster), what="kopf's watch, once the listing is done")
    finally:
        await health.stop()
        await replica.close()


# -- watch gaps ------------------------------------------------------------------------------


@pytest.mark.kubernetes
async def test_a_dropped_watch_resumes_without_losing_or_duplicating_sites(cluster: Cluster) -> None:
    stable = {SiteKey("docs", f"stable-{i}"): f"stable-{i}.example.com" for i in range(10)}
    for key, domain in stable.items():
        await cluster.create_site(key.namespace, key.name, domain)
    replica = await start_replica(cluster, resync=0.4, watch_timeout=0.3)
    try:
        await eventually(lambda: len(replica.domains()) == 10, what="the stable sites")
        watches = site_watches(cluster)
        for i in range(6):
            # seen by the watch, unless it is down at that moment
            await cluster.create_site("web", f"new-{i}", f"new-{i}.example.com")
            await cluster.update_spec("web", f"new-{i}", {"domain": f"moved-{i}.example.com"})
            if i:
                await cluster.delete_site("web", f"new-{i - 1}")
            # never seen by the watch
            cluster.put_silently(site_body("quiet", f"quiet-{i}", f"quiet-{i}.example.com"))
            if i >= 1:
                cluster.update_silently(
                    "quiet", f"quiet-{i - 1}", {"domain": f"quiet-moved-{i - 1}.example.com"}
                )
            if i >= 2:
                cluster.delete_silently("quiet", f"quiet-{i - 2}")
            await asyncio.sleep(0.1)

        def agrees() -> bool:
            served = {key: site.domain for key, site in replica.sites.items()}
            return served == store_domains(cluster) and sorted(replica.domains()) == sorted(served.values())

        await eventually(agrees, within=10, what="the served sites to equal the stored ones")
        assert len(store_domains(cluster)) == 10 + 1 + 2  # the stable, the last new, the last two quiet
        domains = replica.domains()
        assert len(domains) == len(set(domains)), "a domain served twice"
        assert site_watches(cluster) - watches >= 3, "the watch was not cut and resumed"
        for sites, snapshot in replica.published:  # at no point was a site lost or doubled
            assert set(stable) <= set(sites.sites)
            served = route_domains(snapshot)
            assert len(served) == len(set(served))
            assert set(stable.values()) <= set(served)
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_changes_the_watch_missed_are_healed_by_the_resync_listing(cluster: Cluster) -> None:
    for name in ("keep", "gone", "changed"):
        await cluster.create_site("docs", name, f"{name}.example.com")
    replica = await start_replica(cluster, resync=0.5)  # the watch itself stays up
    try:
        await eventually(lambda: len(replica.domains()) == 3, what="the three sites")
        listings = replica.mode.source.listings
        cluster.delete_silently("docs", "gone")  # a deletion no watch event tells of
        cluster.update_silently("docs", "changed", {"domain": "changed-again.example.com"})
        cluster.put_silently(site_body("docs", "missed", "missed.example.com"))
        expected = ["changed-again.example.com", "keep.example.com", "missed.example.com"]
        await eventually(lambda: sorted(replica.domains()) == expected, within=5, what="the resync")
        assert replica.mode.source.listings > listings
    finally:
        await replica.close()


class ExpiringWatch:
    """Once `expire()`d, the next watch of StaticSites ends at once with `410 Gone`, as a real
    API server's does when the resourceVersion it resumes from is compacted away."""

    def __init__(self, cluster: Cluster) -> None:
        self.pending = False
        self.expired = 0
        cluster.kmock[cluster.kmock.action.WATCH, sites_resource(cluster)] << self._answer

    def expire(self) -> None:
        self.pending = True

    def _answer(self) -> Any:
        if not self.pending:
            raise NotImplementedError  # not this time: the emulator serves the watch
        self.pending = False
        self.expired += 1
        gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired"}
        return ({"type": "ERROR", "object": gone},)


@pytest.mark.kubernetes
async def test_a_relisting_by_kopf_after_an_expired_watch_triggers_our_listing(cluster: Cluster) -> None:
    """kopf relists when its watch expires (410 Gone); a deletion in the gap is absent, not
    announced: our own listing, run soon after kopf's, is what removes the site."""
    watch = ExpiringWatch(cluster)
    for name in ("keep", "gone"):
        await cluster.create_site("docs", name, f"{name}.example.com")
    replica = await start_replica(cluster, watch_timeout=0.3)  # resync: every 300 s
    replica.mode.source.check_period = 60  # the count check would heal it too: not under test here
    try:
        await eventually(lambda: len(replica.domains()) == 2, what="the two sites")
        await eventually(lambda: site_watches(cluster) >= 1, what="kopf's watch")
        cluster.delete_silently("docs", "gone")
        watches = site_watches(cluster)
        await eventually(lambda: site_watches(cluster) >= watches + 2, what="two reconnections")
        assert "gone.example.com" in replica.domains(), "a resumed watch cannot announce a missed deletion"
        listings = replica.mode.source.listings
        watch.expire()
        await eventually(lambda: replica.domains() == ["keep.example.com"], within=5, what="our listing")
        assert watch.expired == 1
        assert replica.mode.source.listings > listings
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_a_watch_gap_after_which_nothing_is_left_is_healed_within_seconds(cluster: Cluster) -> None:
    """Every site is deleted while the watch is down, and kopf's listing after the 410 is
    empty: it makes no event at all. The API's count of StaticSites, checked every few
    seconds, differs from ours, and our listing removes them."""
    watch = ExpiringWatch(cluster)
    for name in ("one", "two"):
        await cluster.create_site("docs", name, f"{name}.example.com")
    replica = await start_replica(cluster, watch_timeout=0.3)  # resync: every 300 s
    try:
        await eventually(lambda: len(replica.domains()) == 2, what="the two sites")
        await eventually(lambda: site_watches(cluster) >= 1, what="kopf's watch")
        for name in ("one", "two"):
            cluster.delete_silently("docs", name)
        watch.expire()
        resumed = time.monotonic()
        await eventually(lambda: watch.expired == 1, what="the watch to expire")
        await eventually(lambda: replica.domains() == [], within=5, what="the deletions")
        assert time.monotonic() - resumed < 5
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_a_site_created_and_one_deleted_in_a_watch_gap_are_both_seen(cluster: Cluster) -> None:
    """The API server restarted, say: the watch resumes, but neither change made an event."""
    await cluster.create_site("docs", "old", "old.example.com")
    replica = await start_replica(cluster, watch_timeout=0.3)  # resync: every 300 s
    try:
        await eventually(lambda: replica.domains() == ["old.example.com"], what="the first site")
        await eventually(lambda: site_watches(cluster) >= 1, what="kopf's watch")
        cluster.delete_silently("docs", "old")
        cluster.put_silently(site_body("docs", "new", "new.example.com"))
        # One deleted, one created: the same count. The created one comes with kopf's next
        # listing or our count check once it is the only difference; then the deletion too.
        cluster.put_silently(site_body("docs", "newer", "newer.example.com"))
        await eventually(
            lambda: sorted(replica.domains()) == ["new.example.com", "newer.example.com"],
            within=5,
            what="both changes",
        )
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_listings_are_read_page_by_page(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from watcher import k8s_api

    monkeypatch.setattr(k8s_api, "LIST_PAGE", 4)
    for i in range(10):
        cluster.put_silently(site_body(f"team-{i % 3}", f"site-{i}", f"site-{i}.example.com"))
    # The emulator pages as the API server does.
    first = await cluster.api.call("GET", k8s.SITES.path(None), query={"limit": 4})
    assert len(first["items"]) == 4
    assert first["metadata"]["remainingItemCount"] == 6
    listed = await cluster.api.list_objects(k8s.SITES)
    assert sorted(b["metadata"]["name"] for b in listed) == sorted(f"site-{i}" for i in range(10))
    pages = [r for r in cluster.requests("GET", "/staticsites") if "limit=4" in str(r.url)]
    assert len(pages) >= 1 + 3  # ours above, then the three of the listing
    assert any("continue=" in str(r.url) for r in pages)


@pytest.mark.kubernetes
async def test_a_listing_whose_continue_token_expired_is_made_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import emulator

    from watcher import k8s_api
    from watcher.k8s_api import ApiError

    monkeypatch.setattr(k8s_api, "LIST_PAGE", 4)
    for i in range(10):
        cluster.put_silently(site_body(f"team-{i % 3}", f"site-{i}", f"site-{i}.example.com"))
    names = sorted(f"site-{i}" for i in range(10))
    # The emulator refuses an expired continue token as the API server does: 410 Gone.
    first = await cluster.api.call("GET", k8s.SITES.path(None), query={"limit": 4})
    monkeypatch.setattr(emulator, "CONTINUE_LIFETIME", -1.0)
    query = {"limit": 4, "continue": first["metadata"]["continue"]}
    with pytest.raises(ApiError) as gone:
        await cluster.api.call("GET", k8s.SITES.path(None), query=query)
    assert gone.value.status == 410

    # A listing whose token expires once is made again from its first page, nothing twice.
    expired: list[float] = []

    def once(issued: float) -> bool:
        if expired:
            return False
        expired.append(issued)
        return True

    monkeypatch.setattr(emulator, "continue_expired", once)
    listed = await cluster.api.list_objects(k8s.SITES)
    assert sorted(b["metadata"]["name"] for b in listed) == names
    assert len(expired) == 1

    # One that expires every time is given up after a few tries, with the API's answer.
    monkeypatch.setattr(emulator, "continue_expired", lambda issued: True)
    with pytest.raises(ApiError) as again:
        await cluster.api.list_objects(k8s.SITES)
    assert again.value.status == 410
    tries = [r for r in cluster.requests("GET", "/staticsites") if "continue=" in str(r.url)]
    # The one above; the once (expired, then two pages after the first); then one per try.
    assert len(tries) == 1 + 3 + (1 + k8s_api.LIST_RESTARTS)


@pytest.mark.kubernetes
async def test_the_emulator_resumes_a_watch_from_a_version_or_says_it_is_gone(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import emulator

    monkeypatch.setattr(emulator, "HISTORY", 3)  # the changes kept per resource

    async def watch(version: str, count: int) -> list[dict[str, Any]]:
        url = f"{cluster.url}{k8s.SITES.path(None)}?watch=true&resourceVersion={version}"
        events: list[dict[str, Any]] = []
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
            async for line in response.content:
                if line.strip():
                    events.append(json.loads(line))
                if len(events) == count:
                    break
        return events

    def seen(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]

    listing = await cluster.api.call("GET", k8s.SITES.path(None), query={"limit": 10})
    since = listing["metadata"]["resourceVersion"]
    await cluster.create_site("docs", "a", "a.example.com")
    await cluster.create_site("docs", "b", "b.example.com")
    # From the listing's version: what changed after it, and nothing before.
    events = await watch(since, 2)
    assert seen(events) == [("ADDED", "a"), ("ADDED", "b")]
    # From b's version: only what comes next; a deletion has a version of its own.
    after_b = events[1]["object"]["metadata"]["resourceVersion"]
    later = asyncio.create_task(watch(after_b, 1))
    await asyncio.sleep(0.2)
    await cluster.delete_site("docs", "a")
    (deleted,) = await later
    assert seen([deleted]) == [("DELETED", "a")]
    assert int(deleted["object"]["metadata"]["resourceVersion"]) > int(after_b)
    # Two changes more, and the history of three no longer reaches back to the listing.
    await cluster.create_site("docs", "c", "c.example.com")
    await cluster.create_site("docs", "d", "d.example.com")
    (gone,) = await watch(since, 1)
    assert gone["type"] == "ERROR"
    assert gone["object"]["code"] == 410


@pytest.mark.kubernetes
async def test_the_emulator_versions_every_write_and_refuses_a_stale_one(cluster: Cluster) -> None:
    from watcher.k8s_api import ApiError

    created = await cluster.create_site("docs", "main", "docs.example.com")
    first = created["metadata"]["resourceVersion"]
    # A write of the status, naming no version, moves it.
    await cluster.api.patch_status(k8s.SITES, "docs", "main", {"phase": "Provisioned"})
    written = await cluster.site("docs", "main")
    assert written is not None
    second = written["metadata"]["resourceVersion"]
    assert int(second) > int(first)
    # A write naming the version held passes and moves it; one naming an older one is refused.
    path = k8s.SITES.path("docs", "main")
    current = {"metadata": {"resourceVersion": second, "labels": {"a": "1"}}}
    third = (await cluster.api.call("PATCH", path, current, content_type="application/merge-patch+json"))[
        "metadata"
    ]["resourceVersion"]
    assert int(third) > int(second)
    stale = {"metadata": {"resourceVersion": second, "labels": {"a": "2"}}}
    with pytest.raises(ApiError) as refused:
        await cluster.api.call("PATCH", path, stale, content_type="application/merge-patch+json")
    assert refused.value.status == 409
    stored = await cluster.site("docs", "main")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"a": "1"}
    assert stored["metadata"]["resourceVersion"] == third


@pytest.mark.kubernetes
async def test_kopf_watches_from_our_first_listing_instead_of_listing_again(cluster: Cluster) -> None:
    """kopf's watches start at the versions of our own first listing: it lists none of the
    kinds we listed."""
    from watcher.k8s_kopf import start_watches_where_listed

    assert start_watches_where_listed(), "kopf's listing function is not where it was: see watcher.k8s_kopf"
    for name in ("one", "two"):
        await cluster.create_site("docs", name, f"{name}.example.com")
    await cluster.create_service("docs", "docs-svc", [8080])
    listed = next(REVISIONS)  # newer than every object stored
    replica = await start_replica(cluster)
    try:
        for plural in ("staticsites", "services", "gatewaygroups", "namespaces"):
            await eventually(
                lambda p=plural: cluster.kopf_requests("WATCH", p), what=f"kopf's {plural} watch"
            )
            assert cluster.kopf_requests("LIST", plural) == [], f"kopf listed {plural} again"
        (watch,) = cluster.kopf_requests("WATCH", "staticsites")
        assert int(watch.url.query["resourceVersion"]) >= listed
        await cluster.create_site("docs", "three", "three.example.com")
        await eventually(lambda: len(replica.domains()) == 3, what="the site created after")
        assert replica.mode.source.listings == 1, "no listing of ours was needed either"
    finally:
        await replica.close()


def before_kopf_starts(monkeypatch: pytest.MonkeyPatch, act: Callable[[], Any]) -> None:
    """Run `act` (a coroutine function) after our first listing, just before kopf starts."""
    from watcher.k8s_kopf import KopfWatch

    start = KopfWatch.run

    async def run(self: KopfWatch, *args: Any) -> None:
        await act()
        await start(self, *args)

    monkeypatch.setattr(KopfWatch, "run", run)


@pytest.mark.kubernetes
async def test_a_change_between_our_first_listing_and_kopfs_watch_comes_by_the_watch(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site deleted and one created after our listing, before kopf's watch opens, are in
    the watch from our listing's version: seen with no other listing."""

    async def change() -> None:
        await cluster.delete_site("docs", "gone")
        await cluster.create_site("docs", "late", "late.example.com")

    before_kopf_starts(monkeypatch, change)
    for name in ("keep", "gone"):
        await cluster.create_site("docs", name, f"{name}.example.com")
    replica = await start_replica(cluster)  # resync: every 300 s
    replica.mode.source.check_period = 60  # the count check would heal it too: not under test here
    try:
        await eventually(lambda: replica.published, what="the first snapshot")
        assert sorted(route_domains(replica.published[0][1])) == ["gone.example.com", "keep.example.com"]
        await eventually(
            lambda: replica.domains() == ["keep.example.com", "late.example.com"],
            within=5,
            what="both changes",
        )
        assert replica.mode.source.listings == 1
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_kopf_lists_itself_when_our_listings_version_is_gone(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the version of our listing is older than the history the API server keeps (410
    at kopf's watch), kopf lists as it always does, and what changed meanwhile is seen."""
    from support import emulator

    monkeypatch.setattr(emulator, "HISTORY", 2)  # the sites' history is made after this

    async def change() -> None:
        for name in ("two", "three", "four"):  # three events: the listing's version is gone
            await cluster.create_site("docs", name, f"{name}.example.com")

    before_kopf_starts(monkeypatch, change)
    await cluster.create_site("docs", "one", "one.example.com")
    replica = await start_replica(cluster)
    try:
        await eventually(lambda: len(replica.domains()) == 4, within=5, what="every site")
        assert cluster.kopf_requests("LIST", "staticsites"), "kopf listed after the 410"
    finally:
        await replica.close()


# -- invalid specs, namespaces ---------------------------------------------------------------


@pytest.mark.kubernetes
async def test_an_invalid_spec_keeps_the_last_good_version_serving(cluster: Cluster) -> None:
    replica = await start_replica(cluster)
    key = SiteKey("docs", "main")
    try:
        await cluster.create_site("docs", "main", "docs.example.com", service="web", port=80)
        await eventually(lambda: replica.domains() == ["docs.example.com"], what="the valid site")

        # the emulator has no schema: the API accepts what the CRD's schema would refuse
        await cluster.update_spec(
            "docs", "main", {"domain": "www.example.com", "backend": {"servicePort": 70000}}
        )
        await eventually(lambda: key in replica.plane.sites.invalid, what="the problem reported")
        fields = [p.field for p in replica.plane.sites.invalid[key]]
        assert fields == ["spec.backend.servicePort"]
        assert any("spec.backend.servicePort" in str(p) for p in replica.plane.sites.problems)
        assert replica.domains() == ["docs.example.com"]
        assert replica.clusters() == {"docs/web/80"}

        await cluster.update_spec("docs", "main", {"backend": {"servicePort": 8080}})
        await eventually(lambda: replica.domains() == ["www.example.com"], what="the fixed version")
        assert replica.clusters() == {"docs/web/8080"}
        assert key not in replica.plane.sites.invalid
        assert replica.plane.sites.problems == ()

        # a new object that was never valid is not served at all
        await cluster.create_site("docs", "typo", "typo.example.com", domian="typo.example.com")
        await cluster.create_site("docs", "bad", "not a domain!")
        bad, typo = SiteKey("docs", "bad"), SiteKey("docs", "typo")
        await eventually(lambda: {bad, typo} <= set(replica.plane.sites.invalid), what="both reported")
        assert [p.field for p in replica.plane.sites.invalid[typo]] == ["spec.domian"]
        assert [p.field for p in replica.plane.sites.invalid[bad]] == ["spec.domain"]
        assert replica.domains() == ["www.example.com"]
        assert set(replica.sites) == {key}

        # deleting a site whose current version is invalid clears its problems too
        await cluster.update_spec("docs", "main", {"domain": "not a domain!"})
        await eventually(lambda: key in replica.plane.sites.invalid, what="invalid again")
        await cluster.delete_site("docs", "main")
        await eventually(lambda: replica.domains() == [], what="the site removed")
        await eventually(lambda: key not in replica.plane.sites.invalid, what="its problems forgotten")
        assert {p.origin for p in replica.plane.sites.problems} == {
            "StaticSite docs/bad",
            "StaticSite docs/typo",
        }
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_only_the_given_namespaces_are_served(cluster: Cluster) -> None:
    await cluster.create_site("docs", "before", "before.docs.example.com")
    await cluster.create_site("other", "before", "before.other.example.com")
    cluster.put_silently(site_body("other", "quiet", "quiet.other.example.com"))
    replica = await start_replica(cluster, namespaces=["docs"], resync=0.3)
    try:
        await eventually(lambda: replica.domains() == ["before.docs.example.com"], what="the docs site")
        await cluster.create_site("other", "after", "after.other.example.com")
        await cluster.create_site("docs", "after", "after.docs.example.com")
        await cluster.update_spec("other", "before", {"domain": "moved.other.example.com"})
        expected = ["after.docs.example.com", "before.docs.example.com"]
        await eventually(lambda: sorted(replica.domains()) == expected, what="the new docs site")
        listings = replica.mode.source.listings
        await eventually(lambda: replica.mode.source.listings >= listings + 2, what="two resyncs")
        for sites, _ in replica.published:
            assert {key.namespace for key in sites.sites} <= {"docs"}
        assert sorted(replica.domains()) == expected
        # every request about StaticSites, ours and kopf's, stays in the namespace
        ours = cluster.requests_by("staticsite-xds/") + cluster.requests_by("kopf/")
        about_sites = [r.url.path for r in ours if "/staticsites" in r.url.path]
        assert about_sites
        assert all("/namespaces/docs/" in path for path in about_sites), about_sites
        # kopf's watch of the namespace starts from our listing of it: kopf lists none itself
        assert cluster.kopf_requests("WATCH", "staticsites")
        assert cluster.kopf_requests("LIST", "staticsites") == []
        assert cluster.kopf_requests("LIST", "services") == []
    finally:
        await replica.close()


# -- nothing written to users' objects -------------------------------------------------------


@pytest.mark.kubernetes
async def test_the_control_plane_writes_nothing_to_sites_but_their_status(cluster: Cluster) -> None:
    await cluster.create_service("docs", "web")
    replica = await start_replica(cluster)
    try:
        for i in range(3):
            await cluster.create_site("docs", f"site-{i}", f"site-{i}.example.com")
        await cluster.update_spec("docs", "site-0", {"domain": "moved.example.com"})
        await cluster.update_spec("docs", "site-1", {"domain": "not a domain!"})

        async def all_reported() -> bool:
            phases = [(await cluster.status("docs", f"site-{i}")).get("phase") for i in range(3)]
            return phases == ["Provisioned", "Invalid", "Provisioned"]

        await eventually(all_reported, what="status on every site")
        await cluster.delete_site("docs", "site-2")
        await eventually(lambda: "site-2.example.com" not in replica.domains(), what="the deletion")
        assert await cluster.site("docs", "site-2") is None, "deleted at once: nothing holds it back"
    finally:
        await replica.close()

    for version in cluster.site_history():  # every version ever stored, the deleted one's too
        meta = version.get("metadata", {})
        assert not meta.get("finalizers"), meta
        assert not [a for a in meta.get("annotations") or {} if "kopf" in a], meta
    ours = cluster.requests_by("staticsite-xds/") + cluster.requests_by("kopf/")
    writes = [r for r in ours if str(r.method).upper().rsplit(".", 1)[-1] not in ("GET", "HEAD")]
    to_sites = [(str(r.method), r.url.path) for r in writes if "/staticsites" in r.url.path]
    assert to_sites, "status was written"
    for method, path in to_sites:
        assert method.upper().endswith("PATCH"), (method, path)
        assert path.endswith("/status"), (method, path)


# -- delete and re-create --------------------------------------------------------------------


@pytest.mark.kubernetes
async def test_a_site_deleted_and_created_again_serves_the_new_spec(cluster: Cluster) -> None:
    replica = await start_replica(cluster)
    try:
        await cluster.create_site("docs", "main", "first.example.com")
        await eventually(lambda: replica.domains() == ["first.example.com"], what="the first incarnation")
        uids = {(await cluster.site("docs", "main") or {})["metadata"]["uid"]}
        for i in range(5):  # back to back: the events of two incarnations interleave in kopf
            await cluster.delete_site("docs", "main")
            await cluster.create_site("docs", "main", f"again-{i}.example.com", port=8000 + i)
            uids.add((await cluster.site("docs", "main") or {})["metadata"]["uid"])
        assert len(uids) == 6
        await eventually(lambda: replica.domains() == ["again-4.example.com"], what="the last incarnation")
        assert replica.clusters() == {"docs/web/8004"}
        await replica.mode.source.relist()  # and a listing agrees
        assert replica.mode.source.cache.object(SiteKey("docs", "main"))["metadata"]["uid"] in uids
        await eventually(lambda: replica.domains() == ["again-4.example.com"], what="still the last")
    finally:
        await replica.close()


@pytest.mark.kubernetes
async def test_a_late_deletion_of_the_earlier_incarnation_leaves_the_new_one_served(cluster: Cluster) -> None:
    """kopf handles each uid in a task of its own: the deletion of the old incarnation may be
    handled after the creation of the new one. Here two watch requests deliver them in that order."""
    late: list[dict[str, Any]] = []  # one event for each of the next watch requests

    def watch_answer() -> Any:
        if not late:
            raise NotImplementedError  # the emulator serves the watch
        return (late.pop(0), lambda: asyncio.sleep(1))  # then quiet, until kopf's timeout cuts it

    cluster.kmock[cluster.kmock.action.WATCH, sites_resource(cluster)] << watch_answer
    await cluster.create_site("docs", "main", "first.example.com")
    replica = await start_replica(cluster, watch_timeout=0.3)  # resync: every 300 s
    try:
        await eventually(lambda: replica.domains() == ["first.example.com"], what="the first incarnation")
        await eventually(lambda: site_watches(cluster) >= 2, what="kopf watching")
        first = await cluster.site("docs", "main")
        cluster.delete_silently("docs", "main")
        cluster.put_silently(site_body("docs", "main", "second.example.com", port=8081))
        second = cluster.stored_sites()["docs", "main"]
        assert second["metadata"]["uid"] != (first or {})["metadata"]["uid"]
        late.extend([{"type": "ADDED", "object": second}, {"type": "DELETED", "object": first}])
        await eventually(lambda: replica.domains() == ["second.example.com"], what="the new incarnation")
        await eventually(lambda: not late, what="the late deletion delivered")
        delivered = site_watches(cluster)
        await eventually(lambda: site_watches(cluster) >= delivered + 2, what="two more reconnections")
        assert replica.domains() == ["second.example.com"]
        assert replica.clusters() == {"docs/web/8081"}
        served = [route_domains(snapshot) for _, snapshot in replica.published]
        since = served.index(["second.example.com"])
        assert all(domains == ["second.example.com"] for domains in served[since:]), served[since:]
    finally:
        await replica.close()


# -- ObjectCache: ordering, tombstones, reconcile ----------------------------------------------

KEY = ("docs", "main")


def versioned(uid: str, revision: int, domain: str = "docs.example.com") -> dict[str, Any]:
    body = site_body("docs", "main", domain)
    body["metadata"].update(uid=uid, resourceVersion=str(revision))
    return body


@pytest.mark.unit
def test_the_cache_ignores_an_older_version_that_arrives_late() -> None:
    cache = ObjectCache()
    assert cache.event("ADDED", versioned("a", 2, "new.example.com"), now=1.0) == KEY
    assert cache.event("MODIFIED", versioned("a", 1, "old.example.com"), now=2.0) is None
    assert (cache.get(KEY) or {})["spec"]["domain"] == "new.example.com"


@pytest.mark.unit
def test_the_cache_sees_an_unchanged_object_again_without_a_change() -> None:
    cache = ObjectCache()
    cache.event("ADDED", versioned("a", 1), now=1.0)
    assert cache.event(None, versioned("a", 1), now=5.0) is None
    assert cache.objects[KEY].seen == 5.0


@pytest.mark.unit
def test_the_cache_ignores_a_deletion_of_what_it_does_not_hold() -> None:
    cache = ObjectCache()
    assert cache.event("DELETED", versioned("a", 1), now=1.0) is None
    assert cache.objects == {}


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["added-a", "deleted-a", "added-b"])),
    ids=lambda order: ",".join(order),
)
@pytest.mark.unit
def test_the_cache_ends_with_the_new_incarnation_whatever_the_order(order: tuple[str, ...]) -> None:
    events = {
        "added-a": ("ADDED", versioned("a", 1, "first.example.com")),
        "deleted-a": ("DELETED", versioned("a", 2, "first.example.com")),
        "added-b": ("ADDED", versioned("b", 3, "second.example.com")),
    }
    cache = ObjectCache()
    for now, name in enumerate(order):
        kind, body = events[name]
        cache.event(kind, body, now=float(now))
    assert cache.get(KEY) == events["added-b"][1]


@pytest.mark.unit
def test_a_listing_does_not_resurrect_an_object_deleted_after_it_was_requested() -> None:
    cache = ObjectCache()
    cache.event("ADDED", versioned("a", 1), now=1.0)
    # the listing is requested at 2; the deletion arrives at 3; the listing's answer, at 4
    cache.event("DELETED", versioned("a", 2), now=3.0)
    assert cache.reconcile([versioned("a", 1)], started=2.0, now=4.0) == set()
    assert cache.get(KEY) is None
    # a listing requested after the deletion is the truth again
    assert cache.reconcile([versioned("a", 1)], started=5.0, now=6.0) == {KEY}


@pytest.mark.unit
def test_a_listing_brings_a_new_incarnation_despite_the_deletion_of_the_old() -> None:
    cache = ObjectCache()
    cache.event("ADDED", versioned("a", 1), now=1.0)
    cache.event("DELETED", versioned("a", 2), now=3.0)
    assert cache.reconcile([versioned("b", 3, "second.example.com")], started=2.0, now=4.0) == {KEY}
    assert (cache.get(KEY) or {})["metadata"]["uid"] == "b"


@pytest.mark.unit
def test_a_listing_removes_what_it_lacks_unless_an_event_brought_it_since() -> None:
    cache = ObjectCache()
    older, newer = ("docs", "older"), ("docs", "newer")
    cache.event("ADDED", site_body("docs", "older", "older.example.com"), now=1.0)
    cache.event("ADDED", site_body("docs", "newer", "newer.example.com"), now=5.0)
    assert cache.reconcile([], started=3.0, now=6.0) == {older}
    assert cache.get(older) is None
    assert cache.get(newer) is not None


@pytest.mark.unit
def test_a_listing_keeps_a_newer_version_an_event_brought_and_adopts_newer_ones() -> None:
    cache = ObjectCache()
    cache.event("MODIFIED", versioned("a", 5, "event.example.com"), now=4.0)
    assert cache.reconcile([versioned("a", 3, "listed.example.com")], started=3.0, now=5.0) == set()
    assert (cache.get(KEY) or {})["spec"]["domain"] == "event.example.com"
    assert cache.reconcile([versioned("a", 7, "later.example.com")], started=6.0, now=7.0) == {KEY}
    assert (cache.get(KEY) or {})["spec"]["domain"] == "later.example.com"


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["added-a", "modified-a", "deleted-a", "added-b"])),
    ids=lambda order: ",".join(order),
)
@pytest.mark.unit
def test_the_source_serves_the_new_incarnation_whatever_the_order(order: tuple[str, ...]) -> None:
    events = {
        "added-a": ("ADDED", versioned("a", 1, "first.example.com")),
        "modified-a": ("MODIFIED", versioned("a", 2, "first-moved.example.com")),
        "deleted-a": ("DELETED", versioned("a", 3, "first-moved.example.com")),
        "added-b": ("ADDED", versioned("b", 4, "second.example.com")),
    }
    source = offline_source()
    for name in order:
        feed(source, *events[name])
    sites = source.current()
    assert [site.domain for site in sites.sites.values()] == ["second.example.com"]
    assert sites.invalid == {}


@pytest.mark.unit
def test_deleting_a_site_whose_current_version_is_invalid_forgets_its_problems() -> None:
    source = offline_source()
    key = SiteKey(*KEY)
    feed(source, "ADDED", versioned("a", 1))
    broken = versioned("a", 2)
    broken["spec"]["backend"]["servicePort"] = 0
    feed(source, "MODIFIED", broken)
    assert key in source.current().sites  # the last good version serves
    assert key in source.current().invalid
    feed(source, "DELETED", broken)
    assert not source.current().sites
    assert source.current().invalid == {}
    assert source.current().problems == ()


# -- the real process --------------------------------------------------------------------------


@pytest.mark.envoy
async def test_the_serve_process_routes_a_site_from_the_cluster(
    cluster: Cluster, backends: Callable[[str], SampleBackend], tmp_path: Path
) -> None:
    backend = backends("docs-backend")
    xds_port, http_port, admin_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    log_path = tmp_path / "control-plane.log"
    crd_installed = False

    def list_answer() -> Any:  # at first, as if the CRD were not installed yet
        return NotImplemented if crd_installed else KubernetesResourceNotFoundError()

    cluster.kmock[cluster.kmock.action.LIST, sites_resource(cluster)] << list_answer
    process = await start_serve_process(
        kubeconfig,
        tmp_path,
        log_path,
        identity="test-a",
        xds_port=xds_port,
        http_port=http_port,
        metrics_port=metrics_port,
    )
    envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), tmp_path / "envoy")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def answer_to(path: str) -> int | None:
                if process.returncode is not None:
                    raise AssertionError(f"exited with {process.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    async with http.get(f"http://127.0.0.1:{metrics_port}{path}") as response:
                        return response.status
                except aiohttp.ClientError:
                    return None

            async def healthy() -> bool:
                return await answer_to("/healthz") == 200

            async def ready() -> bool:
                return await answer_to("/readyz") == 200

            await eventually(healthy, within=20, what="/healthz 200")
            await eventually(lambda: "is the StaticSite CRD installed?" in log_path.read_text(), what="why")
            assert await answer_to("/readyz") == 503
            crd_installed = True
            await eventually(ready, within=10, what="/readyz 200")
            assert await answer_to("/metrics") == 200

            await asyncio.to_thread(envoy.start)
            await cluster.create_service("docs", "web", ports=[backend.port])
            await cluster.create_site("docs", "main", "docs.example.test", port=backend.port)

            async def served() -> bool:
                response = await asyncio.to_thread(try_get, http_port, "docs.example.test")
                return response is not None and response.status == 200 and response.backend == backend.name

            await eventually(served, within=20, what="the site served through Envoy")
            assert cluster.requests_by("staticsite-xds/test-a"), "the identity names the client"

            async def provisioned() -> bool:
                return (await cluster.status("docs", "main")).get("phase") == "Provisioned"

            await eventually(provisioned, what="the status written by the Lease holder")

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await asyncio.wait_for(process.wait(), timeout=10) == 0, log_path.read_text()[-2000:]
            assert time.monotonic() - signalled < 5, "slow to stop"
            assert "stopped" in log_path.read_text().splitlines()[-1]
    finally:
        await asyncio.to_thread(envoy.stop)
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "No configuration found"),
        ("apiVersion: v1\nkind: Config\nclusters: [\n", "{path}"),  # where YAML failed to parse
        ("[1, 2]\n", "list indices"),
        ("apiVersion: v1\nkind: Config\nclusters: []\n", "current-context"),
    ],
    ids=["missing", "not-yaml", "not-a-mapping", "no-context"],
)
@pytest.mark.envoy
def test_serve_without_credentials_exits_2_naming_the_problem(
    tmp_path: Path, content: str | None, why: str
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if content is not None:
        kubeconfig.write_text(content)
    done = run_cli(
        "serve", "--kubernetes", "--xds-address", "127.0.0.1:0", env=no_cluster_env(kubeconfig, tmp_path)
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("staticsite-xds: no Kubernetes credentials"), lines[0]
    assert why.format(path=kubeconfig) in lines[0]
