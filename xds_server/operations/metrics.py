"""Prometheus metrics of the control plane, all named `staticsite_xds_...`.

`Metrics` is an observer of the control plane (given to it at construction) and registers
everything in a registry; `Metrics.export(plane)` adds the figures read from the plane when
scraped:

- counted as it happens, with work per event independent of the number of streams: builds
  (a histogram of their duration), responses sent, bytes sent, ACKs and NACKs by resource type,
  streams refused their gateway group (by a bounded reason), and how long each publish took
  to reach every Envoy of its group connected then (`Propagation`, one per group);
- computed when scraped, from what the control plane holds at that moment: sites by state,
  the snapshot of each gateway group, connected Envoys, Envoys behind, the version each
  connected Envoy last ACKed, and when each certificate served expires (the sites' ones by
  their SDS name, the xDS port's own as `xds-server`). Nothing is kept for an Envoy that went
  away.

A stream's gateway group is the one the ADS server decided for it (from its client
certificate). The snapshot metrics carry one series per published group, the stream metrics
one per group of a stream; at most `MAX_GATEWAY_GROUPS` groups are named, and any further
group is counted as `other` (which has no snapshot series).
"""

from __future__ import annotations

import datetime
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from snapshot.builder import BuildResult
from snapshot.model import SiteKey
from snapshot.resources import TYPE_ORDER
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.verdict import Phase, SiteState
from watcher.siteset import SiteSet

from ..ads.membership import refusal_label
from ..ads.stream import Nack, Outgoing, StreamInfo, short
from .inspection import PlaneView, behind

PREFIX = "staticsite_xds_"
MAX_GATEWAY_GROUPS = 100
OVERFLOW_GROUP = "other"
VARIANTS = ("sotw", "delta")
BUILD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATE_LABELS = {phase: phase.value.lower() for phase in Phase}
SERVING_CERTIFICATE = "xds-server"  # the `certificate` label of the xDS port's own certificate


class GatewayGroups:
    """The gateway groups seen on streams, as label values: at most `limit`, then `other`."""

    def __init__(self, limit: int = MAX_GATEWAY_GROUPS) -> None:
        self.limit = limit
        self._seen: dict[str, None] = {}  # in the order seen
        self._overflowed = False

    def label(self, group: str) -> str:
        if group in self._seen:
            return group
        if len(self._seen) < self.limit:
            self._seen[group] = None
            return group
        self._overflowed = True
        return OVERFLOW_GROUP

    def labels(self) -> list[str]:
        """Every label value in use: the groups seen, and `other` once some overflowed."""
        seen = list(self._seen)
        if self._overflowed and OVERFLOW_GROUP not in self._seen:
            seen.append(OVERFLOW_GROUP)
        return seen


class Propagation:
    """Times each publish until every Envoy connected at that moment has ACKed it.

    At a publish, the streams connected and subscribed to something that do not already hold
    the new snapshot are pending. A stream is done once, for every type it subscribed to, the
    version it ACKed is the snapshot's version of that type (`behind` is false); a stream that
    closes is dropped. When none is pending, the time since the publish is observed. A publish
    that no stream needs is not observed.

    A publish made while the previous one is still pending supersedes it: the older one is
    counted as superseded and never observed, and the newer one is timed from its own publish.
    Work per ACK is a set lookup, and a check of the stream's few types when its ACK is for
    the new version.
    """

    def __init__(
        self,
        streams: Callable[[], Iterable[StreamInfo]],
        observe: Callable[[float], None],
        supersede: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._observe = observe
        self._supersede = supersede
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._pending: set[int] = set()
        self._started = 0.0

    @property
    def pending(self) -> int:
        """How many streams the current publish still waits for."""
        return len(self._pending)

    def published(self, snapshot: Snapshot) -> None:
        if self._snapshot is not None and self._snapshot.version == snapshot.version:
            return  # the same content again: nothing new to propagate
        if self._pending:
            self._supersede()
        self._snapshot = snapshot
        self._started = self._clock()
        self._pending = {info.id for info in self._streams() if info.types and behind(info, snapshot)}

    def acked(self, info: StreamInfo, type_url: str, version: str) -> None:
        if info.id not in self._pending:
            return
        snapshot = self._snapshot
        assert snapshot is not None
        rset = snapshot.types.get(type_url)
        if rset is None or rset.version != version or behind(info, snapshot):
            return
        self._done(info.id)

    def closed(self, info: StreamInfo) -> None:
        if info.id in self._pending:
            self._done(info.id)

    def _done(self, stream_id: int) -> None:
        self._pending.discard(stream_id)
        if not self._pending:
            self._observe(self._clock() - self._started)


class Metrics:
    """Every metric of one control plane, registered in `registry` (the process's default one
    unless told otherwise). Each event costs a few dictionary lookups and increments."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.groups = GatewayGroups()
        self.build_seconds = prometheus_client.Histogram(
            PREFIX + "snapshot_build_duration_seconds",
            "Time to build a snapshot from the current sites.",
            buckets=BUILD_BUCKETS,
            registry=self.registry,
        )
        self.propagation_seconds = prometheus_client.Histogram(
            PREFIX + "propagation_duration_seconds",
            "Time from publishing a snapshot until every Envoy connected then has ACKed it.",
            buckets=PROPAGATION_BUCKETS,
            registry=self.registry,
        )
        self.superseded = prometheus_client.Counter(
            PREFIX + "propagations_superseded",
            "Publishes not yet ACKed by every Envoy when a newer snapshot was published.",
            registry=self.registry,
        )
        # Counted per response and per ACK, so kept as plain numbers (a fraction of a
        # microsecond each) and exported when scraped.
        self.responses: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.response_bytes: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.acks: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.nacks: dict[str, int] = dict.fromkeys(TYPE_ORDER, 0)
        self.refusals: Tally[str] = Tally()  # streams refused, by `refusal_label`
        self._open: dict[int, StreamInfo] = {}  # the streams connected now
        self.propagations: dict[str, Propagation] = {}  # by group

    @property
    def propagation(self) -> Propagation:
        """The default group's propagation."""
        return self._propagation(DEFAULT_GROUP)

    def _propagation(self, group: str) -> Propagation:
        propagation = self.propagations.get(group)
        if propagation is None:
            streams = self._open

            def of_group() -> Iterator[StreamInfo]:
                return (info for info in streams.values() if info.group == group)

            propagation = Propagation(of_group, self.propagation_seconds.observe, self.superseded.inc)
            self.propagations[group] = propagation
        return propagation

    def export(self, plane: PlaneView, serving_expiry: Callable[[], float] | None = None) -> None:
        """Also export what `plane` holds (sites, snapshot, Envoys), computed when scraped, and
        when the xDS port's certificate expires (`serving_expiry`, when it serves TLS)."""
        self.registry.register(_ScrapeCollector(self, plane, serving_expiry))

    # -- the control plane's events ---------------------------------------------------------

    def built(self, _result: BuildResult, seconds: float) -> None:
        self.build_seconds.observe(seconds)

    def status(
        self, sites: SiteSet, states: Mapping[SiteKey, SiteState], touched: frozenset[SiteKey] | None
    ) -> None:
        pass  # sites by state are counted when scraped

    def published(self, _sites: SiteSet, snapshot: Snapshot) -> None:
        self._propagation(snapshot.group).published(snapshot)

    def stream_opened(self, info: StreamInfo) -> None:
        self._open[info.id] = info

    def acked(self, info: StreamInfo, type_url: str, version: str) -> None:
        acks = self.acks
        if type_url in acks:
            acks[type_url] += 1
        propagation = self.propagations.get(info.group)
        if propagation is not None:
            propagation.acked(info, type_url, version)

    def nacked(self, _info: StreamInfo, nack: Nack) -> None:
        if nack.type_url in self.nacks:
            self.nacks[nack.type_url] += 1

    def sent(self, _info: StreamInfo, out: Outgoing) -> None:
        type_url = out.type_url
        responses = self.responses
        if type_url in responses:
            responses[type_url] += 1
            self.response_bytes[type_url] += len(out.payload)

    def refused(self, _info: StreamInfo, reason: str) -> None:
        self.refusals[refusal_label(reason)] += 1

    def stream_closed(self, info: StreamInfo) -> None:
        self._open.pop(info.id, None)
        propagation = self.propagations.get(info.group)
        if propagation is not None:
            propagation.closed(info)


class _Families(NamedTuple):
    """The metric families the scrape fills in, empty."""

    generation: GaugeMetricFamily
    info: GaugeMetricFamily
    publishes: CounterMetricFamily
    sites: GaugeMetricFamily
    connected: GaugeMetricFamily
    behind: GaugeMetricFamily
    acked: GaugeMetricFamily
    responses: CounterMetricFamily
    response_bytes: CounterMetricFamily
    acks: CounterMetricFamily
    nacks: CounterMetricFamily
    refused: CounterMetricFamily
    rejections: CounterMetricFamily
    searches: CounterMetricFamily
    certificate_expiry: GaugeMetricFamily

    @classmethod
    def empty(cls) -> _Families:
        return cls(
            generation=GaugeMetricFamily(
                PREFIX + "snapshot_generation",
                "How many snapshots this process has published for a gateway group: the generation it is served.",
                labels=["gateway_group"],
            ),
            info=GaugeMetricFamily(
                PREFIX + "snapshot_info",
                "The content version of the snapshot a gateway group is served (always 1).",
                labels=["gateway_group", "version"],
            ),
            publishes=CounterMetricFamily(
                PREFIX + "snapshot_publishes", "Snapshots published (a new version each).", labels=[]
            ),
            sites=GaugeMetricFamily(PREFIX + "sites", "Sites by state.", labels=["state"]),
            connected=GaugeMetricFamily(
                PREFIX + "connected_envoys",
                "Envoy streams connected, by gateway group and xDS variant.",
                labels=["gateway_group", "variant"],
            ),
            behind=GaugeMetricFamily(
                PREFIX + "envoys_behind",
                "Connected Envoys that have not ACKed the current snapshot of every type they use.",
                labels=["gateway_group"],
            ),
            acked=GaugeMetricFamily(
                PREFIX + "envoy_acked_version_info",
                "The version each connected Envoy last ACKed, by resource type (always 1).",
                labels=["node_id", "gateway_group", "type", "version"],
            ),
            responses=CounterMetricFamily(
                PREFIX + "responses_sent", "xDS responses sent, by resource type.", labels=["type"]
            ),
            response_bytes=CounterMetricFamily(
                PREFIX + "response_bytes", "Bytes of xDS responses sent, by resource type.", labels=["type"]
            ),
            acks=CounterMetricFamily(
                PREFIX + "acks", "ACKs received from Envoys, by resource type.", labels=["type"]
            ),
            nacks=CounterMetricFamily(
                PREFIX + "nacks",
                "NACKs (rejected responses) received from Envoys, by resource type.",
                labels=["type"],
            ),
            refused=CounterMetricFamily(
                PREFIX + "streams_refused",
                "xDS streams refused their gateway group, by reason (see the log for each).",
                labels=["reason"],
            ),
            rejections=CounterMetricFamily(
                PREFIX + "site_rejections",
                "Sites found to cause an Envoy's rejection and left out of the snapshots.",
                labels=[],
            ),
            searches=CounterMetricFamily(
                PREFIX + "rejection_searches",
                "Rejections whose message named no single site, searched for by halves.",
                labels=[],
            ),
            certificate_expiry=GaugeMetricFamily(
                PREFIX + "certificate_expiry_timestamp_seconds",
                "When each certificate served expires (its notAfter, in seconds since the epoch): "
                "the sites' ones by SDS name, the xDS port's own as xds-server.",
                labels=["certificate"],
            ),
        )


class _ScrapeCollector:
    """The metrics computed at scrape time from what the control plane holds now."""

    def __init__(
        self, metrics: Metrics, plane: PlaneView, serving_expiry: Callable[[], float] | None = None
    ) -> None:
        self.metrics = metrics
        self.plane = plane
        self.serving_expiry = serving_expiry

    def describe(self) -> Iterator[Metric]:
        yield from _Families.empty()

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        plane = self.plane
        out = _Families.empty()

        out.publishes.add_metric([], plane.publishes)
        out.rejections.add_metric([], plane.rejections_found)
        out.searches.add_metric([], plane.searches)
        for family, counted in (
            (out.responses, metrics.responses),
            (out.response_bytes, metrics.response_bytes),
            (out.acks, metrics.acks),
            (out.nacks, metrics.nacks),
        ):
            for type_url, value in counted.items():
                family.add_metric([short(type_url)], value)
        for reason, value in sorted(metrics.refusals.items()):
            out.refused.add_metric([reason], value)

        counts = Tally(state.phase for state in plane.status.states().values())
        for phase, label in STATE_LABELS.items():
            out.sites.add_metric([label], counts.get(phase, 0))

        snapshots = plane.server.snapshots
        generations = plane.server.generations
        by_group: Tally[tuple[str, str]] = Tally()
        behind_by_group: Tally[str] = Tally()
        newest: dict[tuple[str, str, str], tuple[int, str]] = {}  # (node, group, type) -> stream, version
        for stream in plane.server.streams():
            group = metrics.groups.label(stream.group)
            by_group[group, stream.variant] += 1
            if behind(stream, snapshots.get(stream.group)):
                behind_by_group[group] += 1
            for type_url, status in stream.types.items():
                if not status.acked_version:
                    continue
                key = (stream.node_id, group, short(type_url))
                if key not in newest or newest[key][0] < stream.id:  # one series per node: the newest
                    newest[key] = (stream.id, status.acked_version)

        for name, snapshot in sorted(snapshots.items()):
            group = metrics.groups.label(name)
            if group == OVERFLOW_GROUP and name != OVERFLOW_GROUP:
                continue  # one series each for the groups named, none for the rest
            out.generation.add_metric([group], generations.get(name, 0))
            out.info.add_metric([group, snapshot.version], 1)
        for group in metrics.groups.labels():
            for variant in VARIANTS:
                out.connected.add_metric([group, variant], by_group.get((group, variant), 0))
            out.behind.add_metric([group], behind_by_group.get(group, 0))
        for (node, group, type_name), (_, version) in sorted(newest.items()):
            out.acked.add_metric([node, group, type_name, version], 1)
        for name, expires in sorted(_certificate_expiries(plane.sites).items()):
            out.certificate_expiry.add_metric([name], expires)
        if self.serving_expiry is not None:
            out.certificate_expiry.add_metric([SERVING_CERTIFICATE], self.serving_expiry())
        yield from out


def _certificate_expiries(sites: SiteSet) -> dict[str, float]:
    """When each certificate the sites are served with expires, by SDS name (a certificate
    whose content is not held, as offline, has no expiry and is left out)."""
    expiries: dict[str, float] = {}
    for site in sites.sites.values():
        certificate = site.certificate
        if certificate is None or not certificate.not_after or certificate.name in expiries:
            continue
        expiries[certificate.name] = datetime.datetime.fromisoformat(certificate.not_after).timestamp()
    return expiries
