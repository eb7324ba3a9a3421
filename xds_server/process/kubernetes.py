"""Kubernetes mode: the StaticSite watch, the leader Lease and the status writer.

Every replica watches and serves xDS; the one that holds the Lease writes status and Events.
The mode is made before its control plane, which is given `observer` to tell the status
writer every site's state.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from watcher.k8s import DEFAULT_RESYNC, KubernetesSource, SourceObserverFuncs
from watcher.k8s_api import KubeApi
from watcher.k8s_cache import ClusterCache
from watcher.k8s_status import StatusWriter
from watcher.leader import DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE, DEFAULT_LEASE_TIMINGS, LeaderElector
from watcher.rate_limit import DEFAULT_BURST, DEFAULT_QPS, RateLimiter
from watcher.siteset import DEFAULT_MAX_SITES, SiteSet

from .observer import ObserverFuncs


def default_identity() -> str:
    """The pod's name in a cluster (from the downward API), else the host name and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_lease_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE


@dataclass
class KubernetesMode:
    source: KubernetesSource
    elector: LeaderElector
    writer: StatusWriter

    @classmethod
    def create(
        cls,
        api: KubeApi,
        *,
        namespaces: Sequence[str] = (),
        identity: str | None = None,
        lease_namespace: str | None = None,
        lease_name: str = DEFAULT_LEASE_NAME,
        resync: float = DEFAULT_RESYNC,
        max_sites: int = DEFAULT_MAX_SITES,
        settings: kopf.OperatorSettings | None = None,
        lease_timings: tuple[float, float, float] = DEFAULT_LEASE_TIMINGS,
        status_rate: tuple[float, int] = (DEFAULT_QPS, DEFAULT_BURST),
    ) -> KubernetesMode:
        """Create the parts and connect them to each other. `status_rate`: the status
        writer's writes a second, and how many at once (see `watcher.rate_limit`)."""
        identity = identity or default_identity()
        cache = ClusterCache()  # the source fills it, the writer reads it
        writer = StatusWriter(
            api,
            cache,
            is_leader=lambda: elector.is_leader,
            identity=identity,
            limiter=RateLimiter(*status_rate),
        )
        told = SourceObserverFuncs(objects=writer.mark, backends=writer.mark)
        source = KubernetesSource(
            api, namespaces, resync=resync, settings=settings, max_sites=max_sites, cache=cache, observer=told
        )
        duration, deadline, period = lease_timings
        elector = LeaderElector(
            api,
            lease_namespace or default_lease_namespace(),
            identity,
            name=lease_name,
            lease_duration=duration,
            renew_deadline=deadline,
            retry_period=period,
            observer=writer,
        )
        return cls(source, elector, writer)

    @property
    def observer(self) -> ObserverFuncs:
        """What the control plane tells this mode: every site's state after each build."""
        return ObserverFuncs(on_status=self.writer.report)

    def sites(self, stop: asyncio.Event) -> AsyncIterator[SiteSet]:
        return self.source.watch(stop)

    def companions(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [self.elector.run(stop), self.writer.run(stop)]
