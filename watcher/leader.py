"""Leader election on a coordination.k8s.io/v1 Lease, so that one replica writes status.

Every replica serves xDS from its own watch; only status and Events need a single writer.
The rules are those of Kubernetes' own controllers: a lease is free when nobody holds it or
when its holder has not renewed it for `lease_duration` seconds, as measured on our own
clock from when we saw the record change (so clock skew between nodes does not matter).
The leader renews every `retry_period`, and steps down when it could not renew within
`renew_deadline`, before anyone else may take over. Writes carry the resourceVersion read,
so two candidates cannot both win (a merge patch that names the resourceVersion it read
fails with 409 if the Lease changed since). On shutdown the leader hands the lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .k8s_api import LEASES, ApiError, KubeApi

log = logging.getLogger("staticsite_xds.leader")

DEFAULT_LEASE_NAME = "staticsite-xds-leader"
DEFAULT_LEASE_NAMESPACE = "staticsite-xds"
# How long a lease lasts, by when the leader must have renewed it, and how often to try (seconds).
# A candidate sees the holder's last renewal within one retry period and tries again the moment
# the lease runs out, so a leader that dies is replaced within duration + retry period: 14 s.
DEFAULT_LEASE_TIMINGS = (12.0, 8.0, 2.0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeadershipObserver(Protocol):
    def leadership(self, leader: bool) -> None:
        """This replica now leads (True) or no longer does (False)."""
        ...


@dataclass(frozen=True, slots=True)
class LeadershipFuncs:
    """A `LeadershipObserver` made of an optional function."""

    changed: Callable[[bool], None] | None = None

    def leadership(self, leader: bool) -> None:
        if self.changed is not None:
            self.changed(leader)


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        identity: str,
        *,
        name: str = DEFAULT_LEASE_NAME,
        lease_duration: float = DEFAULT_LEASE_TIMINGS[0],
        renew_deadline: float = DEFAULT_LEASE_TIMINGS[1],
        retry_period: float = DEFAULT_LEASE_TIMINGS[2],
        observer: LeadershipObserver | None = None,
    ) -> None:
        """`observer` is told of every change of leadership."""
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("lease timings must satisfy 0 < retry period < renew deadline < lease duration")
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.observer: LeadershipObserver = observer if observer is not None else LeadershipFuncs()
        self._leader = False
        self._renewed = 0.0  # when we last renewed (monotonic)
        self._record: tuple[Any, ...] | None = None  # the holder record last seen
        self._record_seen = 0.0  # when it last changed (monotonic)
        self._complained = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def renewed_at(self) -> float:
        """When the lease was last taken or renewed by us (`time.monotonic()`; 0: never)."""
        return self._renewed

    def _set(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        if leader:
            log.info("%s leads (lease %s/%s): it writes status", self.identity, self.namespace, self.name)
        else:
            log.info("%s no longer leads (lease %s/%s)", self.identity, self.namespace, self.name)
        self.observer.leadership(leader)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.try_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._next_try())
        finally:
            if self._leader:
                with contextlib.suppress(ApiError, asyncio.CancelledError):
                    await asyncio.shield(self.release())

    def _next_try(self) -> float:
        """Seconds until the next round: a retry period, or less if another holder's lease
        runs out sooner (a candidate takes it the moment it may)."""
        if self._leader or self._record is None or not self._record[0] or self._record[0] == self.identity:
            return self.retry_period
        duration = float(self._record[2] or self.lease_duration)
        free_in = self._record_seen + duration - time.monotonic()
        return max(0.01, min(self.retry_period, free_in + 0.01))

    async def try_once(self) -> bool:
        """One round: take or renew the lease if we may; True if we lead afterwards."""
        now = time.monotonic()
        try:
            leader = await self._attempt(now)
            self._complained = False
        except ApiError as exc:
            # Once per outage, not every round: the API may be down for a while.
            log.log(
                logging.DEBUG if self._complained else logging.WARNING,
                "lease %s/%s: %s",
                self.namespace,
                self.name,
                exc,
            )
            self._complained = True
            leader = self._leader and now - self._renewed < self.renew_deadline
        self._set(leader)
        return leader

    async def _attempt(self, now: float) -> bool:
        lease = await self.api.get(LEASES, self.namespace, self.name)
        if lease is None:
            try:
                await self.api.create(LEASES, self.namespace, self._body(None, transitions=0))
            except ApiError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            self._renewed = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("acquireTime"))
        if record != self._record:
            self._record = record
            self._record_seen = now
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity and now < self._record_seen + float(duration):
            return False  # held, and renewed within its duration as far as we have seen
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        body = self._body(lease, transitions=transitions, acquired=acquired)
        try:
            await self.api.patch(LEASES, self.namespace, self.name, body)
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote it between our read and our write
                return False
            raise
        self._renewed = now
        return True

    def _body(
        self, lease: dict[str, Any] | None, *, transitions: int, acquired: str | None = None
    ) -> dict[str, Any]:
        stamp = _now()
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            version = (lease.get("metadata") or {}).get("resourceVersion")
            if version:
                metadata["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                # Whole seconds, never fewer than ours: rounded down, another replica could
                # take over while we still lead (until our renew deadline).
                "leaseDurationSeconds": math.ceil(self.lease_duration),
                "acquireTime": acquired or stamp,
                "renewTime": stamp,
                "leaseTransitions": transitions,
            },
        }

    async def release(self) -> None:
        """Hand the lease back so that another replica takes over at once."""
        lease = await self.api.get(LEASES, self.namespace, self.name)
        self._set(False)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        body = self._body(lease, transitions=int((lease.get("spec") or {}).get("leaseTransitions") or 0))
        body["spec"]["holderIdentity"] = ""
        body["spec"]["leaseDurationSeconds"] = 1
        await self.api.patch(LEASES, self.namespace, self.name, body)
        log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)
