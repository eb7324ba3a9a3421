"""What the control plane tells the parts that watch it: one typed interface, given at construction.

Each change goes through `ControlPlane.apply` in one visible sequence: build, `built`, the
sites' states (`status`), publish, `published`. The ADS server's streams report `stream_opened`,
`acked`, `nacked`, `sent`, `refused` and `stream_closed` as they happen. Metrics, health, the status
writer and the demo are observers; `ObserverFuncs` makes one of plain functions, and
`Observers` tells several in the order given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapshot.builder import BuildResult
from snapshot.model import SiteKey
from snapshot.snapshot import Snapshot
from snapshot.verdict import SiteState
from watcher.siteset import SiteSet

from ..ads.stream import Nack, Outgoing, StreamInfo, StreamObserver

log = logging.getLogger("staticsite_xds")

# The sites' states after a build: the site set, every site's state, and the sites whose
# state or declaration may have changed (None: any of them).
StatusHandler = Callable[[SiteSet, Mapping[SiteKey, SiteState], frozenset[SiteKey] | None], None]


class Observer(StreamObserver, Protocol):
    """Everything a control plane tells: its builds, the sites' states, its publishes, and its
    streams (see `StreamObserver`)."""

    def built(self, result: BuildResult, seconds: float) -> None:
        """A build passed its check; it took `seconds`."""

    def status(
        self, sites: SiteSet, states: Mapping[SiteKey, SiteState], touched: frozenset[SiteKey] | None
    ) -> None:
        """Every site's state after a build; `touched`: those that may have changed (None: any)."""

    def published(self, sites: SiteSet, snapshot: Snapshot) -> None:
        """`snapshot` (built from `sites`) is the one every stream now converges to."""


@dataclass(frozen=True, slots=True)
class ObserverFuncs:
    """An `Observer` made of plain functions, each optional."""

    on_built: Callable[[BuildResult, float], None] | None = None
    on_status: StatusHandler | None = None
    on_published: Callable[[SiteSet, Snapshot], None] | None = None
    on_open: Callable[[StreamInfo], None] | None = None
    on_ack: Callable[[StreamInfo, str, str], None] | None = None
    on_nack: Callable[[StreamInfo, Nack], None] | None = None
    on_sent: Callable[[StreamInfo, Outgoing], None] | None = None
    on_close: Callable[[StreamInfo], None] | None = None
    on_refuse: Callable[[StreamInfo, str], None] | None = None

    def built(self, result: BuildResult, seconds: float) -> None:
        if self.on_built is not None:
            self.on_built(result, seconds)

    def status(
        self, sites: SiteSet, states: Mapping[SiteKey, SiteState], touched: frozenset[SiteKey] | None
    ) -> None:
        if self.on_status is not None:
            self.on_status(sites, states, touched)

    def published(self, sites: SiteSet, snapshot: Snapshot) -> None:
        if self.on_published is not None:
            self.on_published(sites, snapshot)

    def stream_opened(self, info: StreamInfo) -> None:
        if self.on_open is not None:
            self.on_open(info)

    def acked(self, info: StreamInfo, type_url: str, version: str) -> None:
        if self.on_ack is not None:
            self.on_ack(info, type_url, version)

    def nacked(self, info: StreamInfo, nack: Nack) -> None:
        if self.on_nack is not None:
            self.on_nack(info, nack)

    def sent(self, info: StreamInfo, out: Outgoing) -> None:
        if self.on_sent is not None:
            self.on_sent(info, out)

    def refused(self, info: StreamInfo, reason: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse(info, reason)

    def stream_closed(self, info: StreamInfo) -> None:
        if self.on_close is not None:
            self.on_close(info)


class Observers:
    """Several observers told in turn, in the order given. One that fails is logged, and the
    others are still told: an observer never breaks a build or an Envoy's stream."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = tuple(observers)

    def _each(self, event: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.exception("observer %r failed on %s", observer, event)

    def built(self, result: BuildResult, seconds: float) -> None:
        self._each("built", result, seconds)

    def status(
        self, sites: SiteSet, states: Mapping[SiteKey, SiteState], touched: frozenset[SiteKey] | None
    ) -> None:
        self._each("status", sites, states, touched)

    def published(self, sites: SiteSet, snapshot: Snapshot) -> None:
        self._each("published", sites, snapshot)

    def stream_opened(self, info: StreamInfo) -> None:
        self._each("stream_opened", info)

    def acked(self, info: StreamInfo, type_url: str, version: str) -> None:
        self._each("acked", info, type_url, version)

    def nacked(self, info: StreamInfo, nack: Nack) -> None:
        self._each("nacked", info, nack)

    def sent(self, info: StreamInfo, out: Outgoing) -> None:
        self._each("sent", info, out)

    def refused(self, info: StreamInfo, reason: str) -> None:
        self._each("refused", info, reason)

    def stream_closed(self, info: StreamInfo) -> None:
        self._each("stream_closed", info)
