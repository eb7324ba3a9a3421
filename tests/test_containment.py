"""Envoy's rejections traced to sites: the bookkeeping, driven by ACKs and NACKs we make up.

Each test builds real snapshots with the builder, the way the control plane does, and plays
the Envoy: it ACKs or NACKs what was built, and the containment decides what the next build
leaves out. Tests with a real Envoy are in `test_rejections_envoy.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.route.v3 import route_pb2
from support.sites import site

from snapshot.builder import Phase, SnapshotBuilder
from snapshot.containment import Containment
from snapshot.model import Backend, SiteKey, StaticSite
from snapshot.resources import CLUSTER_TYPE, ROUTE_TYPE
from snapshot.snapshot import Snapshot

pytestmark = pytest.mark.unit


class Plane:
    """The control plane's loop around the containment, without a network."""

    def __init__(self) -> None:
        self.builder = SnapshotBuilder()
        self.containment = Containment()
        self.sites: dict[SiteKey, StaticSite] = {}
        self.snapshot: Snapshot | None = None
        self.builds = 0

    def declare(self, *sites: StaticSite) -> Snapshot:
        for s in sites:
            self.sites[s.key] = s
        return self.build(frozenset(s.key for s in sites))

    def delete(self, *names: str) -> Snapshot:
        keys = frozenset(SiteKey("docs", n) for n in names)
        for key in keys:
            del self.sites[key]
        return self.build(keys)

    def build(self, changed: frozenset[SiteKey] | None = frozenset()) -> Snapshot:
        built, hint = self.containment.effective(dict(self.sites), changed)
        result = self.builder.build(built, hint)
        new = self.snapshot is None or result.snapshot.version != self.snapshot.version
        again = self.containment.built(result.snapshot, built, hint, result.sites, result.changed, new=new)
        self.snapshot = result.snapshot
        self.builds += 1
        return self.build() if again else result.snapshot

    def served(self) -> dict[str, str]:
        """Domain -> the cluster it routes to, in the last build."""
        assert self.snapshot is not None
        out: dict[str, str] = {}
        for resource in self.snapshot.of_type(ROUTE_TYPE).resources.values():
            config = route_pb2.RouteConfiguration.FromString(resource.body)
            for vhost in config.virtual_hosts:
                for domain in vhost.domains:
                    if domain != "*":
                        out[domain] = vhost.routes[0].route.cluster
        return out

    def ack(self, stream: int = 1) -> bool:
        assert self.snapshot is not None
        held = {t: self.snapshot.of_type(t).version for t in (CLUSTER_TYPE, ROUTE_TYPE)}
        return self.containment.acked(stream, held)

    def nack(self, type_url: str = ROUTE_TYPE, message: str = "rejected", node: str = "gw-1") -> bool:
        assert self.snapshot is not None
        return self.containment.nacked(node, type_url, self.snapshot.of_type(type_url).version, message)

    def play(self, refuses: Callable[[Snapshot], bool], rounds: int = 40) -> int:
        """Answer every build as an Envoy that refuses what `refuses` says; return the rounds."""
        refused: set[str] = set()
        for n in range(rounds):
            assert self.snapshot is not None
            assert self.snapshot.version not in refused, "a refused snapshot was built again"
            if refuses(self.snapshot):
                refused.add(self.snapshot.version)
                if self.nack():
                    self.build()
                    continue
                return n
            if not self.ack():
                return n
            self.build()
        raise AssertionError("the search did not end")


def refuses_domain(domain: str) -> Callable[[Snapshot], bool]:
    """An Envoy that refuses any route configuration serving `domain`."""

    def refuses(snapshot: Snapshot) -> bool:
        for resource in snapshot.of_type(ROUTE_TYPE).resources.values():
            config = route_pb2.RouteConfiguration.FromString(resource.body)
            if any(domain in vhost.domains for vhost in config.virtual_hosts):
                return True
        return False

    return refuses


def accepted_start(*sites: StaticSite) -> Plane:
    plane = Plane()
    plane.declare(*sites)
    plane.ack()
    return plane


def test_a_rejection_naming_a_cluster_convicts_the_sites_using_it_and_no_other() -> None:
    plane = accepted_start(site("a"), site("b"))
    plane.declare(site("c"), site("d"), site("e"))
    assert plane.nack(CLUSTER_TYPE, "Error adding/updating cluster(s) docs/d-svc/80: bad port")
    plane.build()
    served = plane.served()
    assert set(served) == {"a.example.test", "b.example.test", "c.example.test", "e.example.test"}
    rejected = plane.containment.rejected
    assert set(rejected) == {SiteKey("docs", "d")}
    state = plane.containment.states()[SiteKey("docs", "d")]
    assert state.phase is Phase.REJECTED
    assert state.reason == "EnvoyRejected"
    assert "gw-1" in state.message
    assert "bad port" in state.message
    assert "Cluster" in state.message
    assert plane.containment.searches == 0


def test_a_rejection_naming_a_domain_or_a_virtual_host_convicts_that_site() -> None:
    plane = accepted_start(site("a"))
    plane.declare(site("b"), site("c"))
    assert plane.nack(message="duplicate entry of domain c.example.test in route http")
    plane.build()
    assert set(plane.containment.rejected) == {SiteKey("docs", "c")}
    plane.ack()
    plane.declare(site("f"), site("g"))
    assert plane.nack(message="virtual host docs/g: invalid")
    plane.build()
    assert set(plane.containment.rejected) == {SiteKey("docs", "c"), SiteKey("docs", "g")}
    assert "f.example.test" in plane.served()


def test_names_are_matched_whole_not_as_parts_of_longer_names() -> None:
    plane = accepted_start(site("a"))
    plane.declare(site("b", domain="docs.example.test"), site("c", domain="api.docs.example.test"))
    plane.nack(message="bad virtual host for api.docs.example.test")
    plane.build()
    assert set(plane.containment.rejected) == {SiteKey("docs", "c")}


def test_an_anonymous_rejection_is_searched_by_halves_until_the_culprit_is_alone() -> None:
    plane = accepted_start(site("a"), site("b"))
    news = [site(f"n{i:02d}") for i in range(13)]
    plane.declare(*news)
    rounds = plane.play(refuses_domain("n09.example.test"))
    assert set(plane.containment.rejected) == {SiteKey("docs", "n09")}
    assert not plane.containment.searching
    assert rounds <= 10  # about log2(13) trials, each answered once
    served = plane.served()
    assert "n09.example.test" not in served
    assert {f"n{i:02d}.example.test" for i in range(13) if i != 9} <= set(served)
    assert plane.containment.searches == 1


def test_two_culprits_in_one_change_are_both_found() -> None:
    plane = accepted_start(site("a"))
    plane.declare(*[site(f"n{i}") for i in range(8)])
    bad = {"n2.example.test", "n6.example.test"}

    def refuses(snapshot: Snapshot) -> bool:
        return any(refuses_domain(d)(snapshot) for d in bad)

    plane.play(refuses)
    assert set(plane.containment.rejected) == {SiteKey("docs", "n2"), SiteKey("docs", "n6")}
    assert set(plane.served()) == {"a.example.test"} | {f"n{i}.example.test" for i in range(8)} - bad


def test_a_rejected_update_keeps_the_last_good_version_served() -> None:
    plane = accepted_start(site("a"), site("b"))
    plane.declare(site("b", service="new-svc"))
    plane.nack(CLUSTER_TYPE, "cluster docs/new-svc/80: refused")
    plane.build()
    assert plane.served()["b.example.test"] == "docs/b-svc/80"
    state = plane.containment.states()[SiteKey("docs", "b")]
    assert "last good version is still served" in state.message


def test_a_rejected_site_is_tried_again_once_its_owner_changes_it() -> None:
    plane = accepted_start(site("a"))
    plane.declare(site("b", service="broken"))
    plane.nack(CLUSTER_TYPE, "cluster docs/broken/80: refused")
    plane.build()
    assert "b.example.test" not in plane.served()
    assert plane.containment.take_state_changes() == {SiteKey("docs", "b")}
    plane.ack()
    plane.declare(site("b", service="fixed"))
    assert plane.served()["b.example.test"] == "docs/fixed/80"
    assert not plane.containment.rejected
    assert plane.containment.take_state_changes() == {SiteKey("docs", "b")}


def test_other_sites_keep_updating_while_a_site_is_rejected() -> None:
    plane = accepted_start(site("a"), site("b"))
    plane.declare(site("c", service="broken"))
    plane.nack(CLUSTER_TYPE, "cluster docs/broken/80: refused")
    plane.build()
    plane.ack()
    plane.declare(site("a", service="moved"))
    assert plane.served()["a.example.test"] == "docs/moved/80"
    assert "c.example.test" not in plane.served()


def test_the_same_rejection_from_several_envoys_is_answered_once() -> None:
    plane = accepted_start(site("a"))
    plane.declare(*[site(f"n{i}") for i in range(4)])
    assert plane.nack(node="gw-1")
    first_trial = plane.containment._trial
    assert not plane.nack(node="gw-2")  # the same generation: already answered
    assert plane.containment._trial == first_trial


def test_a_rejection_no_changed_site_explains_is_reported_and_changes_nothing() -> None:
    plane = accepted_start(site("a"))
    plane.ack()
    assert not plane.nack(message="listener http: cannot bind")
    assert not plane.containment.rejected
    assert not plane.containment.searching


def test_a_new_envoy_refusing_its_first_snapshot_is_traced_among_every_site() -> None:
    plane = Plane()
    plane.declare(site("a"), site("b"), site("c"), site("d"))
    plane.play(refuses_domain("c.example.test"))
    assert set(plane.containment.rejected) == {SiteKey("docs", "c")}
    assert set(plane.served()) == {"a.example.test", "b.example.test", "d.example.test"}


def test_a_suspect_changed_during_the_search_leaves_the_search() -> None:
    plane = accepted_start(site("a"))
    plane.declare(*[site(f"n{i}") for i in range(4)])
    plane.nack()
    plane.build()
    assert plane.containment.searching
    for i in range(4):
        plane.declare(site(f"n{i}", service="other"))
    assert not plane.containment.searching
    assert {f"n{i}.example.test" for i in range(4)} <= set(plane.served())


def test_a_deleted_rejected_site_is_forgotten() -> None:
    plane = accepted_start(site("a"))
    plane.declare(site("b", service="broken"))
    plane.nack(CLUSTER_TYPE, "docs/broken/80")
    plane.build()
    plane.delete("b")
    assert not plane.containment.rejected


def test_a_site_whose_resources_did_not_change_is_no_suspect() -> None:
    plane = accepted_start(site("a"), site("b"))
    relabelled = StaticSite(
        SiteKey("docs", "a"), "a.example.test", Backend("docs", "a-svc", 80), generation=7
    )
    plane.declare(relabelled, site("c"))
    plane.nack(message="something in the routes is wrong")
    plane.build()
    assert set(plane.containment.rejected) == {SiteKey("docs", "c")}
    assert plane.containment.searches == 0


def test_a_rejection_of_an_older_snapshot_is_traced_in_that_snapshot() -> None:
    plane = accepted_start(site("a"))
    refused = plane.declare(site("b", service="broken"))
    plane.declare(site("c"))  # published before the gateway's answer to the one before
    version = refused.of_type(CLUSTER_TYPE).version
    assert plane.containment.nacked("gw-1", CLUSTER_TYPE, version, "cluster docs/broken/80: no")
    plane.build()
    assert set(plane.containment.rejected) == {SiteKey("docs", "b")}
    assert set(plane.served()) == {"a.example.test", "c.example.test"}


def test_only_builds_from_scratch_keep_a_whole_site_set() -> None:
    plane = accepted_start(*[site(f"s{i}") for i in range(50)])
    for i in range(300):
        plane.declare(site(f"s{i % 50}", service=f"v{i}"))
        plane.ack()
    gens = plane.containment._generations
    assert len(gens) == plane.containment.history
    assert sum(g.sites is not None for g in gens.values()) <= 1
    assert all(len(g.changes or {}) == 1 for g in gens.values())


def test_a_rejection_naming_a_site_already_left_out_convicts_nobody_else() -> None:
    plane = accepted_start(site("a"))
    plane.declare(site("b", service="broken"))
    plane.nack(CLUSTER_TYPE, "Error adding/updating cluster(s) docs/broken/80: refused")
    plane.build()
    plane.declare(site("c"))  # one innocent suspect, while a late answer names the culprit again
    assert not plane.nack(CLUSTER_TYPE, "Error adding/updating cluster(s) docs/broken/80: refused")
    assert set(plane.containment.rejected) == {SiteKey("docs", "b")}
