"""What both xDS variants share for one stream: who is connected, what it holds, and how the
stream reports upward.

The variants (`sotw.py`, `delta.py`) decide what to send and how to read a request; the
server (`server.py`) runs the streams. Both report through one `StreamEvents` per server,
which records where each stream stands (`StreamInfo`) and then tells the `StreamObserver`
the server was built with.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import message

from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, SCOPED_ROUTE_TYPE, TYPE_ORDER
from snapshot.snapshot import Snapshot

log = logging.getLogger("staticsite_xds.xds")

WILDCARD_TYPES = frozenset({CLUSTER_TYPE, LISTENER_TYPE, SCOPED_ROUTE_TYPE})
SERVED_TYPES = frozenset(TYPE_ORDER)


@dataclass(slots=True)
class Nack:
    """An Envoy rejected a response: which type, which version, and what it said.

    `version` is the version the response carried; `snapshot_version` is the snapshot's
    version of the type that response was made from.
    """

    type_url: str
    version: str
    message: str
    at: float
    snapshot_version: str = ""


@dataclass(slots=True)
class TypeStatus:
    """Where one stream stands for one resource type (read by inspection and metrics).

    `acked_version` is the version the client last ACKed, as it said it. `acked_snapshot` is the
    snapshot's version of the type that response was made from, and `acked_extra` is true when
    the response also carried resources held back from an older snapshot (make before break):
    the client is then not yet at that snapshot.
    """

    sent_version: str = ""
    acked_version: str = ""
    acked_snapshot: str = ""
    acked_extra: bool = False
    acked_at: float = 0.0
    nack: Nack | None = None


@dataclass(slots=True)
class StreamInfo:
    """One connected Envoy, as the server knows it."""

    id: int
    peer: str
    opened_at: float
    variant: str = "sotw"
    node_id: str = ""
    cluster: str = ""  # the group the node declares
    group: str = ""  # the gateway group it is served ("" until decided)
    client_names: tuple[str, ...] = ()  # the names of its client certificate, if it has one
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def acked_version(self, type_url: str) -> str:
        status = self.types.get(type_url)
        return status.acked_version if status else ""

    def held_versions(self) -> dict[str, str]:
        """For each type the stream was sent, the snapshot version it last ACKed ("" if none)."""
        return {t: st.acked_snapshot for t, st in self.types.items() if st.sent_version}

    @property
    def last_nack(self) -> Nack | None:
        nacks = [st.nack for st in self.types.values() if st.nack is not None]
        return max(nacks, key=lambda n: n.at) if nacks else None

    def describe(self) -> str:
        return f"stream {self.id} (node {self.node_id or '?'}, cluster {self.cluster or '?'}, {self.peer})"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One response, serialized, ready for the wire."""

    type_url: str
    version: str
    payload: bytes


class StreamObserver(Protocol):
    """What the server tells about its streams, in the order it happens on each stream."""

    def stream_opened(self, info: StreamInfo) -> None: ...

    def acked(self, info: StreamInfo, type_url: str, version: str) -> None: ...

    def nacked(self, info: StreamInfo, nack: Nack) -> None: ...

    def sent(self, info: StreamInfo, out: Outgoing) -> None: ...

    def refused(self, info: StreamInfo, reason: str) -> None:
        """The stream was refused its gateway group (`reason` says why); it closes next."""

    def stream_closed(self, info: StreamInfo) -> None: ...


class StreamEvents:
    """How a stream's variant reports: it records where the stream stands, then tells the
    observer (if there is one)."""

    def __init__(self, observer: StreamObserver | None = None) -> None:
        self.observer = observer

    def opened(self, info: StreamInfo) -> None:
        if self.observer is not None:
            _isolated(self.observer.stream_opened, info)

    def ack(self, info: StreamInfo, type_url: str, version: str, snapshot_version: str, extra: bool) -> None:
        status = info.types.setdefault(type_url, TypeStatus())
        status.acked_version = version
        status.acked_snapshot = snapshot_version
        status.acked_extra = extra
        status.acked_at = time.time()
        status.nack = None
        if self.observer is not None:
            _isolated(self.observer.acked, info, type_url, version)

    def nack(self, info: StreamInfo, type_url: str, version: str, snapshot_version: str, text: str) -> None:
        nack = Nack(type_url, version, text, time.time(), snapshot_version)
        info.types.setdefault(type_url, TypeStatus()).nack = nack
        log.warning("%s rejected %s version %s: %s", info.describe(), short(type_url), version, text)
        if self.observer is not None:
            _isolated(self.observer.nacked, info, nack)

    def sent(self, info: StreamInfo, out: Outgoing) -> None:
        info.types.setdefault(out.type_url, TypeStatus()).sent_version = out.version
        if self.observer is not None:
            _isolated(self.observer.sent, info, out)

    def refused(self, info: StreamInfo, reason: str) -> None:
        if self.observer is not None:
            _isolated(self.observer.refused, info, reason)

    def closed(self, info: StreamInfo) -> None:
        if self.observer is not None:
            _isolated(self.observer.stream_closed, info)


class StreamProtocol(Protocol):
    """The rules of one xDS variant for one stream."""

    def on_request(self, request: message.Message) -> None: ...

    def responses(self, snapshot: Snapshot) -> list[Outgoing]: ...


def nonces() -> Iterator[str]:
    """Nonces for one stream: unique within it."""
    return (str(n) for n in itertools.count(1))


def short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def _isolated(callback: Callable[..., None], *args: object) -> None:
    """Report upward; an observer that fails is logged and never breaks the Envoy's stream."""
    try:
        callback(*args)
    except Exception:
        log.exception("xDS observer %r failed", callback)
