"""A control plane in this process with its metrics in a registry of its own, serving ADS on a
free loopback port, and scripted streams that talk to it."""

from __future__ import annotations

from dataclasses import dataclass, field

import prometheus_client

from snapshot.model import StaticSite
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from snapshot.snapshot import Snapshot
from support.sites import site_set
from support.waiting import eventually
from xds_server.ads.stream import StreamInfo
from xds_server.local.ads_client import QUIET, DeltaClient, ScriptedClient, SotwClient
from xds_server.operations.metrics import Metrics
from xds_server.process.control_plane import ControlPlane

TYPES = (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)


@dataclass
class Plane:
    """A control plane with metrics in a registry of its own, serving on a free loopback port."""

    plane: ControlPlane
    metrics: Metrics
    registry: prometheus_client.CollectorRegistry
    port: int
    clients: list[ScriptedClient] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def count(self, name: str, **labels: str) -> float:
        return self.value(name, **labels) or 0.0

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample of `name` now."""
        return [
            dict(s.labels) for metric in self.registry.collect() for s in metric.samples if s.name == name
        ]

    def publish(self, *sites: StaticSite) -> Snapshot:
        snapshot = self.plane.apply(site_set(*sites))
        assert snapshot is not None
        return snapshot

    def sotw(self, node_id: str, group: str = "edge") -> SotwClient:
        client = SotwClient(self.port, node_id, group)
        self.clients.append(client)
        return client

    def delta(self, node_id: str, group: str = "edge") -> DeltaClient:
        client = DeltaClient(self.port, node_id, group)
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        [info] = [s for s in self.plane.server.streams() if s.node_id == node_id]
        return info

    async def settle(self, client: SotwClient | DeltaClient) -> None:
        """Subscribe to clusters, listeners and routes; ACK until the client holds the snapshot."""
        if isinstance(client, SotwClient):
            for type_url in TYPES:
                client.subscribe(type_url, ["http"] if type_url == ROUTE_TYPE else [])
        else:
            for type_url in TYPES:
                client.subscribe(type_url, *(["http"] if type_url == ROUTE_TYPE else []))
        await self.converge(client)

    async def converge(self, client: SotwClient | DeltaClient) -> None:
        """ACK what comes until the server sees the client hold the current snapshot."""
        node = client.node.id
        snapshot = self.plane.server.snapshot
        assert snapshot is not None

        def holds() -> bool:
            found = [s for s in self.plane.server.streams() if s.node_id == node]
            return bool(found) and all(
                st.acked_version == snapshot.of_type(t).version for t, st in found[0].types.items()
            )

        for _ in range(10):  # a few rounds: a held-back cluster set takes two
            await client.ack_until_quiet(QUIET / 3)
            if holds():
                return
        await eventually(holds, what=f"{node} to hold snapshot {snapshot.version}")
