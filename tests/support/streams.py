"""The xDS rules of one stream, driven without sockets or waits.

`SotwProtocol` and `DeltaProtocol` are pure: a request goes in (`on_request`), and
`responses(snapshot)` says what the server would send now. `StreamBench` plays the part of
`AdsServer` around them: it holds the published snapshot, wakes every stream on a publish,
and gives each stream's requests to its protocol, then asks it for its responses, the way the
server's loop does (requests queued before a response is read are all taken first, and two
publishes before a read are one change: a stream that did not run in between skips the first).
"Nothing more is sent" is then simply: the protocol has nothing to send.

`SotwStream` and `DeltaStream` build requests like Envoy and take in responses exactly as the
gRPC clients of `xds_server.local.ads_client` do; only the transport differs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message

from snapshot.snapshot import Snapshot
from xds_server.ads.delta import DeltaProtocol
from xds_server.ads.sotw import SotwProtocol
from xds_server.ads.stream import Nack, StreamEvents, StreamInfo, StreamProtocol, TypeStatus
from xds_server.local.ads_client import DeltaScript, EnvoyScript, SotwScript
from xds_server.process.observer import ObserverFuncs


@dataclass
class StreamBench:
    """Published snapshots, the streams open on them, and the ACKs and NACKs they reported
    (each under `key` of the stream: its id, or its node)."""

    key: str = "id"
    acks: list[tuple[Any, str, str]] = field(default_factory=list)
    nacks: list[tuple[Any, Nack]] = field(default_factory=list)
    sent: list[tuple[int, str, str]] = field(default_factory=list)  # stream id, type, version
    snapshot: Snapshot | None = None
    blocks: dict[tuple[str, str, tuple[str, ...] | None], bytes] = field(default_factory=dict)
    open: dict[int, PureStream] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self.events = StreamEvents(
            ObserverFuncs(
                on_ack=lambda info, type_url, version: self.acks.append((self._key(info), type_url, version)),
                on_nack=lambda info, nack: self.nacks.append((self._key(info), nack)),
                on_sent=lambda info, out: self.sent.append((info.id, out.type_url, out.version)),
            )
        )

    def _key(self, info: StreamInfo) -> Any:
        return info.id if self.key == "id" else info.node_id

    # what AdsServer offers

    def publish(self, snapshot: Snapshot) -> bool:
        """Make `snapshot` the current one and wake every stream; False if nothing changed."""
        if self.snapshot is not None and self.snapshot.version == snapshot.version:
            return False
        self.snapshot = snapshot
        self.blocks.clear()
        for stream in self.open.values():
            stream.woken = True
        return True

    def streams(self) -> list[StreamInfo]:
        return [s.info for s in self.open.values()]

    # what a test asks of it

    def stream(self, node_id: str) -> StreamInfo:
        found = [s for s in self.streams() if s.node_id == node_id]
        assert len(found) == 1, f"expected one stream of node {node_id}, got {self.streams()}"
        return found[0]

    def until(self, check: Callable[[], Any], what: str = "") -> Any:
        """Let every stream take what it was sent, then assert `check()` holds; return its value."""
        for stream in list(self.open.values()):
            stream.run()
        value = check()
        assert value, f"not so once every stream ran: {what or check}; got {value!r}"
        return value

    # streams

    def open_stream(self, variant: str, node: Any) -> tuple[StreamInfo, StreamProtocol]:
        info = StreamInfo(next(self._ids), "pure", time.time(), variant, node.id, node.cluster)
        protocol: StreamProtocol = (
            SotwProtocol(info, self.events, self.blocks)
            if variant == "sotw"
            else DeltaProtocol(info, self.events)
        )
        self.events.opened(info)
        return info, protocol


class PureStream(EnvoyScript):
    """A scripted stream on a `StreamBench`: requests go to the protocol, responses come back
    parsed, and nothing waits."""

    variant = "sotw"

    def _open(self, bench: StreamBench) -> None:
        self.bench = bench
        self.info, self.protocol = bench.open_stream(self.variant, self.node)
        self.requests: list[message.Message] = []
        self.outgoing: list[Any] = []  # responses sent and not read yet
        self.woken = False
        bench.open[self.info.id] = self

    def _deliver(self, request: Any) -> None:
        self.requests.append(request)
        self.woken = True

    def run(self) -> None:
        """What the server's loop does when it gets to this stream: take every request queued,
        then send what the protocol says (if anything is published)."""
        for request in self.requests:
            self.info.types.setdefault(request.type_url, TypeStatus())  # type: ignore[attr-defined]
            self.protocol.on_request(request)
        self.requests.clear()
        if not self.woken or self.bench.snapshot is None:
            return
        self.woken = False
        for out in self.protocol.responses(self.bench.snapshot):
            self.bench.events.sent(self.info, out)
            self.outgoing.append(self.response_class.FromString(out.payload))

    def recv(self) -> Any:
        """The next response (taken in); fail if the server would send none."""
        self.run()
        if not self.outgoing:
            raise AssertionError("no response: the stream has nothing to send")
        response = self.outgoing.pop(0)
        self._apply(response)
        return response

    def recv_n(self, count: int) -> list[Any]:
        return [self.recv() for _ in range(count)]

    def expect_quiet(self) -> None:
        """Assert that the server would send nothing more now."""
        self.run()
        if self.outgoing:
            raise AssertionError(f"unexpected response: {self._describe(self.outgoing[0])}")

    def ack_until_quiet(self) -> list[Any]:
        """ACK every response until the server has nothing more to send; return them."""
        got = []
        while True:
            self.run()
            if not self.outgoing:
                return got
            response = self.outgoing.pop(0)
            self._apply(response)
            got.append(response)
            self.ack(response)

    def close(self) -> None:
        self.run()  # what was sent before the close is taken, as a stream's reader would
        if self.bench.open.pop(self.info.id, None) is not None:
            self.bench.events.closed(self.info)


class SotwStream(SotwScript, PureStream):
    """A state-of-the-world stream on `bench`, driven the way Envoy drives it."""

    def __init__(self, bench: StreamBench, node_id: str = "envoy-1", cluster: str = "edge") -> None:
        super().__init__(node_id, cluster)
        self._open(bench)


class DeltaStream(DeltaScript, PureStream):
    """A delta stream on `bench`, with Envoy's view of what it holds."""

    variant = "delta"

    def __init__(self, bench: StreamBench, node_id: str, cluster: str = "edge") -> None:
        super().__init__(node_id, cluster)
        self._open(bench)
