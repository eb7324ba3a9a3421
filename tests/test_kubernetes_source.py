"""The Kubernetes source against kmock's API emulator over HTTP: sites in, snapshots out."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_cluster import Cluster, declare_resources, eventually, start_replica

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster(kmock: Any) -> Cluster:
    declare_resources(kmock)
    return Cluster(kmock)


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


async def test_status_and_events_follow_the_verdict(cluster: Cluster) -> None:
    import time

    t0 = time.monotonic()
    replica = await start_replica(cluster)
    try:
        await cluster.create_service("docs", "web")
        await cluster.create_site("docs", "main", "docs.example.com")
        await eventually(lambda: replica.plane.published is not None, what="the first snapshot")
        print("published", time.monotonic() - t0)

        async def ready() -> Any:
            status = await cluster.status("docs", "main")
            return status if status.get("phase") == "Provisioned" else None

        from k8s_cluster import eventually_async

        status = await eventually_async(ready, what="status written")
        print("status", time.monotonic() - t0, status)
        print(await cluster.events("docs", "main"))
    finally:
        await replica.close()
        print("closed", time.monotonic() - t0)
