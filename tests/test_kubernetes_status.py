"""Status, Events and leader election of Kubernetes mode, against kmock's API emulator over HTTP.

Every replica here is a whole control plane (source, builder, ADS server, Lease, status
writer) talking HTTP to the emulator. What the tests read back is what the emulator received
and stored: the StaticSites' status, the Events, the Lease and each request with its user
agent, which names the replica that sent it (`staticsite-xds/<identity>`).

Waits poll a condition with a deadline. Proving that something does not happen takes a
bounded quiet period (`QUIET`), during which it is checked continuously.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import prometheus_client
import pytest
from support.kubernetes import (
    LEASE_NAMESPACE,
    Cluster,
    Replica,
    is_event_post,
    is_status_write,
    site_body,
    start_replica,
)
from support.processes import free_port
from support.waiting import eventually

from snapshot.builder import Phase
from snapshot.model import API_VERSION, KIND, SiteKey
from snapshot.resources import CLUSTER_TYPE
from watcher.k8s import SITES
from watcher.k8s_api import LEASES, SERVICES
from watcher.k8s_status import MAX_MESSAGE
from watcher.leader import DEFAULT_LEASE_NAME
from xds_server.local.ads_client import SotwClient, sotw_names

pytestmark = [pytest.mark.timeout(60), pytest.mark.kubernetes]

LEASE = (1.5, 1.0, 0.1)  # lease duration, renew deadline, retry period (seconds)
PERIOD = LEASE[2]
QUIET = 0.4  # seconds in which nothing must happen
ACCEPTED_MESSAGE = "sent to the gateways"
LEASE_PATH = f"/namespaces/{LEASE_NAMESPACE}/leases"


# -- reading what the emulator holds and received ----------------------------------------------


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    assert len(found) <= 1, f"more than one Ready condition: {status}"
    return dict(found[0]) if found else {}


def says(status: dict[str, Any], phase: str, reason: str) -> bool:
    """Whether the status shows this phase and reason, with Ready as the phase implies."""
    ready = ready_condition(status)
    word = "True" if phase == Phase.PROVISIONED.value else "False"
    return status.get("phase") == phase and ready.get("reason") == reason and ready.get("status") == word


async def status_where(
    cluster: Cluster, namespace: str, name: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The site's status once `check` holds for it (within 10 s)."""
    deadline = time.monotonic() + 10.0
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await cluster.status(namespace, name)
        if check(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after 10s waiting for {namespace}/{name}: {what}; last status {status}")


async def status_when(cluster: Cluster, namespace: str, name: str, phase: str, reason: str) -> dict[str, Any]:
    return await status_where(
        cluster, namespace, name, lambda status: says(status, phase, reason), f"{phase} ({reason})"
    )


def generation(number: int) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("observedGeneration") == number


def user_agent(request: Any) -> str:
    return next((str(v) for k, v in request.headers.items() if k.lower() == "user-agent"), "")


def agent(identity: str) -> str:
    return f"staticsite-xds/{identity}"


def all_requests(cluster: Cluster) -> list[Any]:
    return list(cluster.kmock)


def by_a_replica(request: Any) -> bool:
    return user_agent(request).startswith("staticsite-xds/")


def status_writes(cluster: Cluster, name: str | None = None) -> list[Any]:
    """The status writes the replicas made (the test's own are left out)."""
    return [r for r in all_requests(cluster) if is_status_write(r, name) and by_a_replica(r)]


def writes_of_status_and_events(requests: list[Any]) -> list[Any]:
    return [r for r in requests if (is_status_write(r) or is_event_post(r)) and by_a_replica(r)]


async def stays(check: Callable[[], Any], wait: float = QUIET, what: str = "") -> None:
    """Assert that `check()` keeps the value it has now for `wait` seconds."""
    first = check()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = check()
        assert now == first, f"{what or check} changed from {first!r} to {now!r}"


def watching(cluster: Cluster, plural: str) -> bool:
    """Whether a watch of this resource has been opened (kopf's, once it has started)."""
    return any(
        r.params.get("watch") == "true" and str(r.url.path).endswith(f"/{plural}")
        for r in all_requests(cluster)
    )


def event_summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in events]


def event_posts(cluster: Cluster) -> int:
    return sum(1 for r in all_requests(cluster) if is_event_post(r))


async def events_when(
    cluster: Cluster, namespace: str, name: str, expected: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The site's Events once they are these (type, reason), and no more come."""

    seen: list[tuple[str, str]] = []

    async def probe() -> list[dict[str, Any]]:
        events = await cluster.events(namespace, name)
        seen[:] = event_summary(events)
        return events if seen == expected else []

    try:
        events = await eventually(probe, 10.0, f"the Events of {namespace}/{name} to be {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the Events were {seen}") from None
    await stays(lambda: event_posts(cluster), what="Events posted")
    assert event_summary(await cluster.events(namespace, name)) == expected
    return events


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- writing to the emulator the way other clients would --------------------------------------


async def create_site_created_at(
    cluster: Cluster, namespace: str, name: str, domain: str, created: str, **kw: Any
) -> dict[str, Any]:
    body = site_body(namespace, name, domain, **kw)
    body["metadata"]["creationTimestamp"] = created
    return await cluster.api.create(SITES, namespace, cluster._stamp(body, new=True))


async def create_external_service(cluster: Cluster, namespace: str, name: str, target: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ExternalName", "externalName": target},
    }
    await cluster.api.create(SERVICES, namespace, cluster._stamp(body, new=True))


async def patch_metadata(cluster: Cluster, namespace: str, name: str, metadata: dict[str, Any]) -> None:
    """A change that is no change of spec (no new generation): labels, annotations."""
    patch = cluster._stamp({"metadata": metadata}, new=False)
    await cluster.api.call(
        "PATCH", SITES.path(namespace, name), patch, content_type="application/merge-patch+json"
    )


def lease_body(holder: str, duration: int, transitions: int = 0) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": DEFAULT_LEASE_NAME, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


LEASE_KEY = ("coordination.k8s.io/v1/leases", LEASE_NAMESPACE, DEFAULT_LEASE_NAME)


# -- replicas and their leadership ------------------------------------------------------------


async def start_serving_replica(cluster: Cluster, identity: str) -> tuple[Replica, int]:
    """A replica as `start_replica` makes it, serving xDS on a port the test knows."""
    port = free_port()
    return await start_replica(cluster, identity, lease=LEASE, xds_port=port), port


@dataclass
class Leadership:
    """Every change of leadership of the replicas followed, in the order it happened."""

    cluster: Cluster
    changes: list[tuple[float, str, bool, int]] = field(default_factory=list)  # when, who, leads, requests

    def follow(self, replica: Replica) -> Replica:
        writer = replica.mode.writer  # the elector's observer
        told = writer.leadership

        def changed(leader: bool) -> None:
            told(leader)
            self.changes.append((time.monotonic(), replica.identity, leader, len(all_requests(self.cluster))))

        writer.leadership = changed  # type: ignore[method-assign]
        return replica

    def times(self, identity: str, leader: bool) -> list[float]:
        return [t for t, who, leads, _ in self.changes if who == identity and leads == leader]

    def requests_at(self, identity: str, leader: bool) -> list[int]:
        return [n for _, who, leads, n in self.changes if who == identity and leads == leader]

    def assert_never_two_leaders(self) -> None:
        leading: set[str] = set()
        for _, who, leads, _ in self.changes:
            if leads:
                leading.add(who)
            else:
                leading.discard(who)
            assert len(leading) <= 1, f"two leaders at once: {self.changes}"


def leaders(*replicas: Replica) -> list[str]:
    return [r.identity for r in replicas if r.mode.elector.is_leader]


async def close_all(*replicas: Replica) -> None:
    for replica in replicas:
        if not replica.task.done():
            await replica.close()


async def served_clusters(port: int) -> tuple[str, set[str]]:
    """Ask one replica for its clusters over ADS, as a gateway does: (version, names)."""
    client = SotwClient(port, node_id="gateway-under-test", cluster="gateways")
    try:
        client.subscribe(CLUSTER_TYPE)
        response = await client.recv()
        return response.version_info, set(sotw_names(response))
    finally:
        await client.close()


@pytest.fixture
async def replica(cluster: Cluster) -> AsyncIterator[Replica]:
    one = await start_replica(cluster, "replica-a", lease=LEASE)
    try:
        yield one
    finally:
        await close_all(one)


# -- every reason, end to end -----------------------------------------------------------------


async def test_accepted_site_is_provisioned_and_ready(cluster: Cluster, replica: Replica) -> None:
    await cluster.create_service("docs", "web")
    created = await cluster.create_site("docs", "main", "docs.example.com")

    status = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    ready = ready_condition(status)
    assert ready["message"] == ACCEPTED_MESSAGE
    assert status["observedGeneration"] == ready["observedGeneration"] == 1
    assert abs((parse_stamp(ready["lastTransitionTime"]) - datetime.now(UTC)).total_seconds()) < 60
    assert replica.domains() == ["docs.example.com"]
    assert created["metadata"]["uid"]


async def test_invalid_spec_names_the_field_and_says_when_the_last_good_version_is_served(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_service("docs", "web")
    # The emulator has no schema, so what the CRD would refuse reaches the control plane.
    await cluster.create_site("docs", "broken", "broken.example.com", port=70000)
    status = await status_when(cluster, "docs", "broken", "Invalid", "InvalidSpec")
    message = ready_condition(status)["message"]
    assert "StaticSite docs/broken" in message
    assert "spec.backend.servicePort" in message
    assert "70000" in message
    assert "still served" not in message
    assert "broken.example.com" not in replica.domains()

    await cluster.create_site("docs", "main", "docs.example.com")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await cluster.update_spec("docs", "main", {"backend": {"servicePort": 0}})
    status = await status_when(cluster, "docs", "main", "Invalid", "InvalidSpec")
    message = ready_condition(status)["message"]
    assert "spec.backend.servicePort" in message
    assert "the last good version is still served" in message
    assert status["observedGeneration"] == ready_condition(status)["observedGeneration"] == 2
    assert replica.domains() == ["docs.example.com"]  # the last good version


async def test_domain_conflict_names_the_owner_and_clears_when_it_goes(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_service("docs", "web")
    # The younger site sorts first by name: only its age makes it the loser.
    await create_site_created_at(cluster, "docs", "zeta", "docs.example.com", "2024-01-01T00:00:00Z")
    await create_site_created_at(cluster, "docs", "alpha", "DOCS.example.com", "2024-06-01T00:00:00Z")

    await status_when(cluster, "docs", "zeta", "Provisioned", "Accepted")
    status = await status_when(cluster, "docs", "alpha", "Conflict", "DomainConflict")
    assert "docs/zeta" in ready_condition(status)["message"]
    assert replica.domains() == ["docs.example.com"]

    await cluster.delete_site("docs", "zeta")
    await status_when(cluster, "docs", "alpha", "Provisioned", "Accepted")
    await events_when(cluster, "docs", "alpha", [("Warning", "DomainConflict"), ("Normal", "Accepted")])


async def test_of_two_sites_created_in_one_second_the_first_seen_keeps_the_domain_across_restarts(
    cluster: Cluster,
) -> None:
    # A real API server's creationTimestamp has whole seconds: here both sites have the same
    # one, and the younger sorts first by name. Only the order they were seen in decides.
    await cluster.create_service("docs", "web")
    first = await start_replica(cluster, "replica-a", lease=LEASE)
    try:
        await eventually(lambda: first.mode.elector.is_leader, what="the replica to lead")
        await create_site_created_at(cluster, "docs", "zeta", "docs.example.com", "2024-01-01T00:00:00Z")
        await status_when(cluster, "docs", "zeta", "Provisioned", "Accepted")
        await create_site_created_at(cluster, "docs", "alpha", "docs.example.com", "2024-01-01T00:00:00Z")
        status = await status_when(cluster, "docs", "alpha", "Conflict", "DomainConflict")
        assert "docs/zeta" in ready_condition(status)["message"]
        zeta = (await cluster.status("docs", "zeta"))["firstSeen"]
        assert zeta < status["firstSeen"]
    finally:
        await close_all(first)

    # A new control plane, over the statuses the first one left: the same holder, no write.
    before = len(status_writes(cluster))
    second = await start_replica(cluster, "replica-b", lease=LEASE)
    try:
        await eventually(lambda: second.mode.elector.is_leader, what="the new replica to lead")
        keys = [SiteKey("docs", "zeta"), SiteKey("docs", "alpha")]
        await eventually(lambda: all(k in second.plane.status.states() for k in keys), what="both verdicts")
        states = second.plane.status.states()
        assert (states[keys[0]].phase, states[keys[1]].phase) == (Phase.PROVISIONED, Phase.CONFLICT)
        assert await second.mode.writer.sync(keys) == set()
        await stays(lambda: len(status_writes(cluster)), what="status writes")
        assert len(status_writes(cluster)) == before
        assert (await cluster.status("docs", "zeta"))["firstSeen"] == zeta
    finally:
        await close_all(second)


async def test_missing_backend_service_turns_accepted_when_the_service_appears(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_site("docs", "main", "docs.example.com", service="docs-web")
    status = await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
    message = ready_condition(status)["message"]
    assert "Service docs/docs-web does not exist" in message
    assert "503" in message
    assert "docs.example.com" in message
    assert replica.domains() == ["docs.example.com"]  # the route is in place: the gateways answer 503
    before = await cluster.site("docs", "main")
    assert before is not None

    await cluster.create_service("docs", "docs-web")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    after = await cluster.site("docs", "main")
    assert after is not None
    assert after["spec"] == before["spec"]
    # Nothing but the status was touched (a status write moves the resourceVersion, no more).
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    unversioned = [
        {k: v for k, v in m.items() if k != "resourceVersion"}
        for m in (after["metadata"], before["metadata"])
    ]
    assert unversioned[0] == unversioned[1]
    writes_to_sites = [
        r
        for r in all_requests(cluster)
        if user_agent(r) == agent("replica-a")
        and "/staticsites" in str(r.url.path)
        and not str(r.method).upper().endswith("GET")
        and not is_status_write(r)
    ]
    assert writes_to_sites == []

    await cluster.delete_service("docs", "docs-web")
    await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")


async def test_a_service_that_comes_just_after_its_site_is_no_warning(
    cluster: Cluster, replica: Replica
) -> None:
    replica.mode.writer.backend_grace = 2.5
    await cluster.create_site("docs", "main", "docs.example.com", service="late")
    await eventually(lambda: SiteKey("docs", "main") in replica.sites, what="the site served")
    await asyncio.sleep(0.3)  # the site is judged meanwhile: its Service is missing
    assert await cluster.status("docs", "main") == {}, "not said missing while the Service may be on its way"
    await cluster.create_service("docs", "late")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await events_when(cluster, "docs", "main", [("Normal", "Accepted")])
    assert len([r for r in all_requests(cluster) if is_status_write(r, "main")]) == 1

    # A site that comes to name another backend gets the grace again; one whose Service
    # never comes is said missing once the grace is over.
    await cluster.update_spec("docs", "main", {"backend": {"serviceName": "never", "servicePort": 80}})
    await asyncio.sleep(0.3)
    assert says(await cluster.status("docs", "main"), "Provisioned", "Accepted")
    await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
    await events_when(cluster, "docs", "main", [("Normal", "Accepted"), ("Warning", "BackendNotFound")])


async def test_service_without_the_port_lists_the_ports_it_has(cluster: Cluster, replica: Replica) -> None:
    await cluster.create_service("docs", "web", ports=(8080, 8443))
    await cluster.create_site("docs", "main", "docs.example.com", port=80)
    status = await status_when(cluster, "docs", "main", "Invalid", "BackendPortNotFound")
    message = ready_condition(status)["message"]
    assert "Service docs/web has no port 80" in message
    assert "8080, 8443" in message

    await cluster.update_spec("docs", "main", {"backend": {"servicePort": 8443}})
    status = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    assert status["observedGeneration"] == 2


async def test_external_name_service_passes_whatever_the_port(cluster: Cluster, replica: Replica) -> None:
    await create_external_service(cluster, "docs", "files", "files.example.net")
    await cluster.create_site("docs", "main", "docs.example.com", service="files", port=8443)
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")


async def test_a_site_envoy_rejects_is_traced_and_its_status_carries_envoys_message(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_service("docs", "web")
    await cluster.create_service("docs", "api")
    await cluster.create_site("docs", "main", "docs.example.com")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")

    # A gateway takes the clusters and accepts them; then a second site arrives and the
    # gateway refuses the clusters that carry it, naming the cluster as Envoy does.
    client = SotwClient(replica.plane.xds_port, node_id="gateway-7", cluster="gateways")
    try:
        client.subscribe(CLUSTER_TYPE)
        client.ack(await client.recv())
        await cluster.create_site("docs", "api", "api.example.com", service="api")
        second = await client.recv()
        await status_when(cluster, "docs", "api", "Provisioned", "Accepted")
        envoy_says = "Error adding/updating cluster(s) docs/api/80: " + "x" * (2 * MAX_MESSAGE)
        client.nack(second, envoy_says)
        status = await status_when(cluster, "docs", "api", "Rejected", "EnvoyRejected")
        third = await client.recv()  # the snapshot without the refused site
    finally:
        await client.close()

    ready = ready_condition(status)
    assert ready["message"].startswith("Envoy gateway-7 rejected its Cluster: Error adding/updating")
    assert len(ready["message"]) == MAX_MESSAGE
    assert sotw_names(third) == ["docs/web/80"]
    events = await events_when(cluster, "docs", "api", [("Normal", "Accepted"), ("Warning", "EnvoyRejected")])
    assert events[-1]["message"] == ready["message"]
    main = await cluster.status("docs", "main")
    assert main["phase"] == "Provisioned"  # the other site is untouched


# -- written only when it changes -----------------------------------------------------------


async def test_status_is_written_once_per_change_and_never_for_its_own_echo(
    cluster: Cluster, replica: Replica
) -> None:
    key = SiteKey("docs", "main")
    await cluster.create_service("docs", "web")
    await cluster.create_site("docs", "main", "docs.example.com")
    written = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")

    # The write comes back as a watch event; the writer sees its own status there, and stops.
    source = replica.mode.source
    await eventually(lambda: (source.cache.object(key) or {}).get("status") == written, what="the echo")
    await stays(lambda: len(status_writes(cluster, "main")), what="status writes after the echo")
    assert len(status_writes(cluster, "main")) == 1

    # Events that change nothing the status says: a label, an unrelated Service, another site.
    await patch_metadata(cluster, "docs", "main", {"labels": {"team": "docs"}})
    await cluster.create_service("docs", "unrelated")
    await cluster.create_service("other", "web")
    await cluster.create_site("other", "site", "other.example.com")
    await status_when(cluster, "other", "site", "Provisioned", "Accepted")
    await eventually(
        lambda: ((source.cache.object(key) or {}).get("metadata") or {}).get("labels") == {"team": "docs"},
        what="the label change to arrive",
    )
    # The same verdicts again, as the control plane and a new leadership would hand them.
    writer = replica.mode.writer
    writer.report(replica.plane.sites, replica.plane.status.states(), None)
    writer.mark_all()
    writer.leadership(True)
    assert await writer.sync([key]) == set()
    await stays(lambda: len(status_writes(cluster, "main")), what="status writes for unchanged verdicts")
    assert len(status_writes(cluster, "main")) == 1
    assert len(await cluster.events("docs", "main")) == 1


async def test_status_writes_keep_to_the_rate_and_come_before_the_events(cluster: Cluster) -> None:
    await cluster.create_service("docs", "web")
    sites = 30
    for i in range(sites):
        cluster.put_silently(site_body("docs", f"site-{i:02}", f"site-{i:02}.example.com"))
    qps, burst = 20.0, 5
    started = time.monotonic()
    replica = await start_replica(cluster, "replica-a", lease=LEASE, status_rate=(qps, burst))
    try:
        await eventually(lambda: len(status_writes(cluster)) == sites, within=15, what="every status")
        took = time.monotonic() - started
        assert took >= (sites - burst) / qps * 0.9, f"{sites} writes in {took:.2f} s"
        await eventually(
            lambda: sum(map(is_event_post, all_requests(cluster))) == sites, within=15, what="every Event"
        )
        order = [
            "patch" if is_status_write(r) else "event"
            for r in all_requests(cluster)
            if is_status_write(r) or is_event_post(r)
        ]
        # The Events wait while status patches wait: the patches are (nearly) all written first.
        assert order.index("event") >= sites - burst, order
        assert replica.mode.writer.limiter.waited > 0
    finally:
        await close_all(replica)


def metric(name: str, **labels: str) -> float:
    """A sample of this process's metrics (the status writer's are the process's own)."""
    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_before_its_first_verdicts_a_leader_counts_every_site_as_left_to_compare() -> None:
    from watcher.k8s_api import KubeApi
    from watcher.k8s_cache import ClusterCache
    from watcher.k8s_status import StatusWriter
    from watcher.siteset import SiteSet

    cache = ClusterCache()
    for i in range(3):
        cache.sites.event(None, site_body("docs", f"site-{i}", f"site-{i}.example.com"), time.monotonic())
    leads = True
    writer = StatusWriter(KubeApi.for_server("http://127.0.0.1:9"), cache, is_leader=lambda: leads)
    assert writer.pending == 3  # nothing judged yet: all three are still to be compared
    writer.report(SiteSet(), {}, None)  # the verdicts came (none for these sites)
    assert writer.pending == 0
    leads = False
    writer = StatusWriter(KubeApi.for_server("http://127.0.0.1:9"), cache, is_leader=lambda: leads)
    assert writer.pending == 0  # a follower has nothing to write


async def test_status_metrics_count_the_writes_and_show_what_is_left_to_write(cluster: Cluster) -> None:
    await cluster.create_service("docs", "web")
    sites = 30
    for i in range(sites):
        cluster.put_silently(site_body("docs", f"site-{i:02}", f"site-{i:02}.example.com"))
    patches = metric("staticsite_xds_status_writes_total", kind="status")
    events = metric("staticsite_xds_status_writes_total", kind="event")
    replica = await start_replica(cluster, "replica-a", lease=LEASE, status_rate=(20.0, 5))
    try:
        await eventually(lambda: metric("staticsite_xds_leader") == 1, what="the leader gauge")
        # Held to 20 writes a second, the statuses take over a second: meanwhile some are left.
        await eventually(
            lambda: 0 < metric("staticsite_xds_status_pending") < sites, within=5, what="some statuses left"
        )
        await eventually(lambda: len(status_writes(cluster)) == sites, within=15, what="every status")
        await eventually(lambda: metric("staticsite_xds_status_pending") == 0, what="nothing left to write")
        assert metric("staticsite_xds_status_writes_total", kind="status") - patches == sites
        await eventually(
            lambda: metric("staticsite_xds_status_writes_total", kind="event") - events == sites,
            within=15,
            what="every Event counted",
        )
        assert sum(map(is_event_post, all_requests(cluster))) == sites
    finally:
        await close_all(replica)
    assert metric("staticsite_xds_leader") == 0  # it handed the lease back


def delay_site_updates(replica: Replica, delay: float) -> list[dict[str, Any]]:
    """Deliver the watch's MODIFIED events of StaticSites late, as a loaded API server may.

    The list returned fills with each object held back, when the watch delivers it.
    """
    source = replica.mode.source
    deliver = source._event
    loop = asyncio.get_running_loop()
    held: list[dict[str, Any]] = []

    def late(cache: Any, event: Any, then: Any) -> None:
        if cache is source.cache.sites and event.get("type") == "MODIFIED":
            held.append(event["object"])
            loop.call_later(delay, deliver, cache, event, then)
        else:
            deliver(cache, event, then)

    source._event = late  # type: ignore[method-assign]
    return held


async def test_a_late_echo_of_an_earlier_write_causes_no_further_write(
    cluster: Cluster, replica: Replica
) -> None:
    held = delay_site_updates(replica, 0.5)
    await eventually(lambda: watching(cluster, "staticsites"), what="the watch of StaticSites")
    await cluster.create_site("docs", "main", "docs.example.com")
    await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
    # The watch has the first write, and holds it back; the Service arrives meanwhile.
    await eventually(
        lambda: any(says(body.get("status") or {}, "Invalid", "BackendNotFound") for body in held),
        what="the watch event of the first write",
    )
    await cluster.create_service("docs", "web")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    key = SiteKey("docs", "main")
    source = replica.mode.source

    def echoed() -> bool:
        return says(dict((source.cache.object(key) or {}).get("status") or {}), "Provisioned", "Accepted")

    await eventually(echoed, what="the echo of the last write")
    await stays(lambda: len(status_writes(cluster, "main")), what="status writes")
    assert len(status_writes(cluster, "main")) == 2
    await events_when(cluster, "docs", "main", [("Warning", "BackendNotFound"), ("Normal", "Accepted")])
    assert says(await cluster.status("docs", "main"), "Provisioned", "Accepted")


async def test_leader_puts_back_a_status_someone_else_overwrote(cluster: Cluster, replica: Replica) -> None:
    await cluster.create_service("docs", "web")
    await cluster.create_site("docs", "main", "docs.example.com")
    written = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")

    tampered = {
        "phase": "Invalid",
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": "Tampered", "message": "not ours"}],
    }
    await cluster.api.patch_status(SITES, "docs", "main", tampered)
    restored = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    assert ready_condition(restored)["message"] == ACCEPTED_MESSAGE
    assert restored["observedGeneration"] == 1
    assert len(status_writes(cluster, "main")) == 2
    assert {k: v for k, v in ready_condition(restored).items() if k != "lastTransitionTime"} == {
        k: v for k, v in ready_condition(written).items() if k != "lastTransitionTime"
    }


async def test_observed_generation_follows_and_transition_time_moves_only_when_ready_flips(
    cluster: Cluster,
) -> None:
    await cluster.create_service("docs", "web")
    # A status as a previous leader left it: the new leader has nothing to write.
    body = site_body("docs", "main", "docs.example.com")
    body["status"] = {
        "phase": "Provisioned",
        "observedGeneration": 1,
        "firstSeen": "2020-01-01T00:00:00.000000Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Accepted",
                "message": ACCEPTED_MESSAGE,
                "lastTransitionTime": "2020-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    await cluster.api.create(SITES, "docs", cluster._stamp(body, new=True))
    replica = await start_replica(cluster, "replica-a", lease=LEASE)
    try:
        key = SiteKey("docs", "main")
        await eventually(lambda: replica.mode.elector.is_leader, what="the replica to lead")
        await eventually(lambda: key in replica.plane.status.states(), what="the site's verdict")
        assert await replica.mode.writer.sync([key]) == set()
        await stays(lambda: len(status_writes(cluster)), what="status writes")
        assert status_writes(cluster) == []

        # A new generation with the same verdict: observedGeneration moves, the time does not.
        await cluster.update_spec("docs", "main", {"domain": "www.example.com"})

        status = await status_where(cluster, "docs", "main", generation(2), "observedGeneration 2")
        ready = ready_condition(status)
        assert ready["observedGeneration"] == 2
        assert ready["lastTransitionTime"] == "2020-01-01T00:00:00Z"
        assert says(status, "Provisioned", "Accepted")
        assert await cluster.events("docs", "main") == []  # no transition, no Event

        # Ready flips: the time moves.
        await cluster.delete_service("docs", "web")
        status = await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
        flipped = parse_stamp(ready_condition(status)["lastTransitionTime"])
        assert abs((flipped - datetime.now(UTC)).total_seconds()) < 60
        # A new message with Ready still False keeps it.
        await cluster.update_spec("docs", "main", {"backend": {"serviceName": "web2"}})
        status = await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
        status = await status_where(cluster, "docs", "main", generation(3), "observedGeneration 3")
        assert "docs/web2" in ready_condition(status)["message"]
        assert parse_stamp(ready_condition(status)["lastTransitionTime"]) == flipped
        # And back to True: it moves again (not backwards).
        await cluster.create_service("docs", "web2")
        status = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
        assert parse_stamp(ready_condition(status)["lastTransitionTime"]) >= flipped
        assert ready_condition(status)["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    finally:
        await replica.close()


# -- Events -------------------------------------------------------------------------------------


async def test_one_event_per_transition_with_type_reason_and_the_object(
    cluster: Cluster, replica: Replica
) -> None:
    created = await cluster.create_site("docs", "main", "docs.example.com")
    await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
    await cluster.create_service("docs", "web")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await cluster.update_spec("docs", "main", {"backend": {"servicePort": 0}})
    await status_when(cluster, "docs", "main", "Invalid", "InvalidSpec")
    await cluster.update_spec("docs", "main", {"backend": {"servicePort": 80}})
    final = await status_when(cluster, "docs", "main", "Provisioned", "Accepted")

    # Changes that are no transition: a label, a new generation with the same verdict.
    await patch_metadata(cluster, "docs", "main", {"labels": {"team": "docs"}})
    await cluster.update_spec("docs", "main", {"domain": "www.example.com"})
    await status_where(cluster, "docs", "main", generation(4), "observedGeneration 4")
    events = await events_when(
        cluster,
        "docs",
        "main",
        [
            ("Warning", "BackendNotFound"),
            ("Normal", "Accepted"),
            ("Warning", "InvalidSpec"),
            ("Normal", "Accepted"),
        ],
    )
    assert "Service docs/web does not exist" in events[0]["message"]
    assert "spec.backend.servicePort" in events[2]["message"]
    assert events[3]["message"] == ready_condition(final)["message"] == ACCEPTED_MESSAGE
    for event in events:
        assert event["involvedObject"] | {"resourceVersion": None} == {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "namespace": "docs",
            "name": "main",
            "uid": created["metadata"]["uid"],
            "resourceVersion": None,
        }
        assert event["metadata"]["namespace"] == "docs"
        assert event["source"] == {"component": "staticsite-xds"}
        assert event["reportingInstance"] == "replica-a"
        assert event["count"] == 1


# -- leader election ----------------------------------------------------------------------------


async def test_one_leader_writes_every_replica_serves_and_the_other_takes_over(cluster: Cluster) -> None:
    log = Leadership(cluster)
    a, port_a = await start_serving_replica(cluster, "replica-a")
    log.follow(a)
    b, port_b = await start_serving_replica(cluster, "replica-b")
    log.follow(b)
    try:
        await eventually(lambda: len(leaders(a, b)) == 1, what="one leader")
        await cluster.create_service("docs", "web")
        await cluster.create_site("docs", "main", "docs.example.com")
        await cluster.create_site("docs", "other", "other.example.com", service="missing")
        await cluster.create_site("docs", "twin", "docs.example.com")
        await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
        await status_when(cluster, "docs", "other", "Invalid", "BackendNotFound")
        await status_when(cluster, "docs", "twin", "Conflict", "DomainConflict")
        await events_when(cluster, "docs", "main", [("Normal", "Accepted")])
        await events_when(cluster, "docs", "other", [("Warning", "BackendNotFound")])
        await events_when(cluster, "docs", "twin", [("Warning", "DomainConflict")])
        await stays(lambda: leaders(a, b), what="the leader")
        (first,) = leaders(a, b)
        second = b if first == "replica-a" else a
        assert second.mode.writer.pending == 0  # a follower has nothing to write
        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == first

        writes = writes_of_status_and_events(all_requests(cluster))
        assert len(writes) == 6  # three status writes, three Events
        assert {user_agent(r) for r in writes} == {agent(first)}

        # Both replicas build the same snapshot and serve it to a gateway over ADS.
        await eventually(
            lambda: (
                a.plane.published is not None
                and b.plane.published is not None
                and a.plane.published.version == b.plane.published.version
                and a.clusters() == {"docs/web/80", "docs/missing/80"}
            ),
            what="the same snapshot on both replicas",
        )
        served_a, served_b = await served_clusters(port_a), await served_clusters(port_b)
        assert served_a == served_b
        assert served_a[1] == {"docs/web/80", "docs/missing/80"}

        # The leader stops: it hands the lease back, and the other takes over at once.
        leader = a if first == "replica-a" else b
        await leader.close()
        handed_over = len(all_requests(cluster))
        release = [
            r
            for r in all_requests(cluster)
            if user_agent(r) == agent(first)
            and str(r.method).upper().endswith("PATCH")
            and LEASE_PATH in str(r.url)
        ][-1]
        assert release.data["spec"]["holderIdentity"] == ""
        assert release.data["spec"]["leaseDurationSeconds"] == 1
        await eventually(lambda: second.mode.elector.is_leader, within=10 * PERIOD, what="the takeover")
        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == second.identity
        assert lease["spec"]["leaseTransitions"] == 1

        # A change after the handover is written by the new leader.
        await cluster.create_service("docs", "missing")
        await status_when(cluster, "docs", "other", "Provisioned", "Accepted")
        await events_when(cluster, "docs", "other", [("Warning", "BackendNotFound"), ("Normal", "Accepted")])
        later = writes_of_status_and_events(all_requests(cluster)[handed_over:])
        assert len(later) == 2
        assert {user_agent(r) for r in later} == {agent(second.identity)}
        # The new leader rewrote nothing its predecessor had written.
        assert len(writes_of_status_and_events(all_requests(cluster))) == 8
        log.assert_never_two_leaders()
    finally:
        await close_all(a, b)


async def test_a_lease_of_a_holder_that_stops_renewing_is_taken_over_after_its_duration(
    cluster: Cluster,
) -> None:
    duration = 2  # seconds, as the ghost wrote it
    await cluster.api.create(LEASES, LEASE_NAMESPACE, lease_body("ghost", duration, transitions=3))
    await cluster.create_service("docs", "web")
    await cluster.create_site("docs", "main", "docs.example.com")
    log = Leadership(cluster)
    replica = log.follow(await start_replica(cluster, "replica-a", lease=LEASE))
    try:
        # The ghost renews for longer than one lease duration, then stops.
        renewing_until = time.monotonic() + duration + 0.5
        last_renewal = time.monotonic()
        while time.monotonic() < renewing_until:
            await asyncio.sleep(0.25)
            assert not replica.mode.elector.is_leader
            last_renewal = time.monotonic()
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await cluster.api.patch(
                LEASES, LEASE_NAMESPACE, DEFAULT_LEASE_NAME, {"spec": {"renewTime": stamp}}
            )

        await eventually(
            lambda: replica.mode.elector.is_leader, within=duration + 2.0, what="the takeover of the lease"
        )
        (took_over,) = log.times("replica-a", True)
        assert took_over - last_renewal >= duration - 0.1, "taken over before the lease ran out"
        assert took_over - last_renewal <= duration + 1.0
        (requests_then,) = log.requests_at("replica-a", True)
        assert writes_of_status_and_events(all_requests(cluster)[:requests_then]) == []

        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "replica-a"
        assert lease["spec"]["leaseTransitions"] == 4
        await status_when(cluster, "docs", "main", "Provisioned", "Accepted")  # the new leader writes
    finally:
        await replica.close()


@pytest.mark.parametrize("write", ["create", "take over"])
async def test_a_conflict_on_the_lease_write_leaves_the_replica_a_follower(
    cluster: Cluster, write: str
) -> None:
    """Another candidate wrote the Lease between our read and our write: the API answers 409."""
    method = "POST" if write == "create" else "PATCH"
    if write == "take over":  # a lease handed back: free for anyone
        await cluster.api.create(LEASES, LEASE_NAMESPACE, lease_body("", 1))
    rival = lease_body("rival", 2, transitions=1)

    def rival_won(request: Any) -> bool:
        return (
            user_agent(request) == agent("replica-a")
            and str(request.method).upper().endswith(method)
            and LEASE_PATH in str(request.url)
        )

    def store_rivals_lease(_: Any) -> None:
        # The emulator stored our write before this answer; the rival's is what the API holds.
        cluster.kmock.objects[LEASE_KEY] = rival

    conflicts = cluster.kmock[rival_won] << 409 << store_rivals_lease
    await cluster.create_service("docs", "web")
    await cluster.create_site("docs", "main", "docs.example.com")
    log = Leadership(cluster)
    replica = log.follow(await start_replica(cluster, "replica-a", lease=LEASE))
    try:
        await eventually(lambda: len(list(conflicts)) >= 1, what="the conflicting lease write")
        await eventually(lambda: replica.plane.published is not None, what="the first snapshot")
        await stays(lambda: replica.mode.elector.is_leader, what="leadership")
        assert log.changes == []
        assert writes_of_status_and_events(all_requests(cluster)) == []
        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "rival"
    finally:
        await replica.close()


async def test_a_leader_that_cannot_renew_steps_down_before_anyone_takes_over(cluster: Cluster) -> None:
    # A lease duration that is not a whole number of seconds, close to the renew deadline.
    timings = (1.4, 1.2, 0.1)
    _, deadline, period = timings
    failing = asyncio.Event()

    def from_a_while_failing(request: Any) -> bool:
        return (
            failing.is_set() and user_agent(request) == agent("replica-a") and LEASE_PATH in str(request.url)
        )

    cluster.kmock[from_a_while_failing] << 503
    await cluster.create_service("docs", "web")
    await cluster.create_site("docs", "main", "docs.example.com")
    log = Leadership(cluster)
    a = log.follow(await start_replica(cluster, "replica-a", lease=timings))
    b: Replica | None = None
    try:
        await eventually(lambda: a.mode.elector.is_leader, what="replica-a to lead")
        await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
        b = log.follow(await start_replica(cluster, "replica-b", lease=timings))
        await eventually(
            lambda: any(
                user_agent(r) == agent("replica-b") and LEASE_PATH in str(r.url)
                for r in all_requests(cluster)
            ),
            what="replica-b to read the lease",
        )
        assert leaders(a, b) == ["replica-a"]

        failing.set()
        failed_at = time.monotonic()
        await eventually(lambda: not a.mode.elector.is_leader, within=deadline + 1.0, what="the step-down")
        (stepped_down,) = log.times("replica-a", False)
        renewed = a.mode.elector.renewed_at  # the last renewal that succeeded, before the failures
        assert renewed <= failed_at
        assert stepped_down - renewed >= deadline, "stepped down before the renew deadline"
        assert stepped_down - failed_at <= deadline + 5 * period

        await eventually(lambda: b.mode.elector.is_leader, within=5.0, what="replica-b to take over")
        (took_over,) = log.times("replica-b", True)
        assert took_over > stepped_down
        log.assert_never_two_leaders()
        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["leaseDurationSeconds"] >= timings[0]

        # Only the new leader writes from now on.
        (requests_then,) = log.requests_at("replica-a", False)
        await cluster.delete_service("docs", "web")
        await status_when(cluster, "docs", "main", "Invalid", "BackendNotFound")
        later = writes_of_status_and_events(all_requests(cluster)[requests_then:])
        assert later
        assert {user_agent(r) for r in later} == {agent("replica-b")}
    finally:
        failing.clear()
        await close_all(a, *([b] if b is not None else []))
