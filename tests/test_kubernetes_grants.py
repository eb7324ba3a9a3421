"""Domain grants and gateway groups in the Kubernetes mode, end to end: the emulator's
GatewayGroups, Namespaces and StaticSites, a replica (source, plane, status writer), each
site's status as its owner reads it, and what each group is served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.kubernetes import Cluster, Replica, route_domains, start_replica
from support.waiting import eventually
from test_kubernetes_status import LEASE, close_all, ready_condition, status_when

from snapshot.snapshot import DEFAULT_GROUP

pytestmark = pytest.mark.kubernetes

DOCS_ONLY: dict[str, Any] = {"namespaces": {"names": ["docs"]}, "domains": ["**.docs.example.test"]}


@pytest.fixture
async def replica(cluster: Cluster) -> AsyncIterator[Replica]:
    await cluster.create_service("docs", "web")
    await cluster.create_service("other", "web")
    one = await start_replica(cluster, "replica-a", lease=LEASE)
    try:
        yield one
    finally:
        await close_all(one)


def served(replica: Replica, group: str = DEFAULT_GROUP) -> list[str]:
    return route_domains(replica.plane.snapshots().get(group))


async def test_a_site_outside_its_grant_is_refused_and_its_status_says_why(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.update_group(DEFAULT_GROUP, {"grants": [DOCS_ONLY]})
    await cluster.create_site("docs", "main", "main.docs.example.test")
    await cluster.create_site("other", "squat", "x.docs.example.test")
    refused = await status_when(cluster, "other", "squat", "Invalid", "DomainNotPermitted")
    assert ready_condition(refused)["message"] == (
        "domain x.docs.example.test is not granted to namespace other in gateway group default "
        "(it is granted to: docs)"
    )
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await eventually(lambda: served(replica) == ["main.docs.example.test"], what="only docs's site served")


async def test_a_revoked_grant_takes_the_site_off_and_says_so(cluster: Cluster, replica: Replica) -> None:
    await cluster.update_group(DEFAULT_GROUP, {"grants": [DOCS_ONLY]})
    await cluster.create_site("docs", "main", "main.docs.example.test")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await eventually(lambda: served(replica) == ["main.docs.example.test"], what="the site served")
    elsewhere = {"namespaces": {"names": ["docs"]}, "domains": ["elsewhere.example.test"]}
    await cluster.update_group(DEFAULT_GROUP, {"grants": [elsewhere]})
    status = await status_when(cluster, "docs", "main", "Invalid", "DomainNotPermitted")
    assert "main.docs.example.test" in ready_condition(status)["message"]
    await eventually(lambda: served(replica) == [], what="the site taken off")


async def test_with_no_gateway_group_nothing_is_served_until_one_is_created_again(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_site("docs", "main", "main.docs.example.test")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await cluster.delete_group(DEFAULT_GROUP)
    status = await status_when(cluster, "docs", "main", "Invalid", "GatewayGroupNotFound")
    assert "no GatewayGroup exists" in ready_condition(status)["message"]
    await eventually(lambda: replica.plane.snapshots() == {}, what="nothing served")
    await cluster.create_group(DEFAULT_GROUP, DOCS_ONLY)
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await eventually(lambda: served(replica) == ["main.docs.example.test"], what="served again")


async def test_a_namespace_labelled_into_a_selector_grant_is_served(
    cluster: Cluster, replica: Replica
) -> None:
    await cluster.create_namespace("team-x")
    await cluster.create_service("team-x", "web")
    by_label = {"namespaces": {"selector": {"matchLabels": {"team": "x"}}}, "domains": ["**.x.example.test"]}
    await cluster.update_group(DEFAULT_GROUP, {"grants": [by_label]})
    await cluster.create_site("team-x", "site", "www.x.example.test")
    await status_when(cluster, "team-x", "site", "Invalid", "DomainNotPermitted")
    await cluster.label_namespace("team-x", team="x")
    await status_when(cluster, "team-x", "site", "Provisioned", "Accepted")
    await eventually(lambda: served(replica) == ["www.x.example.test"], what="the labelled namespace served")


async def test_a_site_of_another_group_is_served_to_that_group_only(
    cluster: Cluster, replica: Replica
) -> None:
    every = {"namespaces": {"selector": {}}, "domains": ["*"]}
    await cluster.create_group("blue", every)
    await cluster.create_site("docs", "main", "main.docs.example.test")
    await cluster.create_site("docs", "inner", "inner.docs.example.test", gatewayGroup="blue")
    await status_when(cluster, "docs", "inner", "Provisioned", "Accepted")
    await status_when(cluster, "docs", "main", "Provisioned", "Accepted")
    await eventually(
        lambda: (
            served(replica, "blue") == ["inner.docs.example.test"]
            and served(replica) == ["main.docs.example.test"]
        ),
        what="each group served its own site",
    )
