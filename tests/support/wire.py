"""An ADS server on loopback for the tests of what only its loop shows."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from xds_server.ads.server import AdsServer
from xds_server.ads.stream import Nack, StreamInfo
from xds_server.process.observer import ObserverFuncs


@contextlib.asynccontextmanager
async def serving(harness_class: Any, key: Callable[[StreamInfo], Any]) -> AsyncIterator[Any]:
    """An ADS server on a free port whose ACKs and NACKs are recorded by `key` of the stream,
    in a harness of `harness_class` (server, port, acks, nacks; and its `clients`); its clients
    are closed, then the server stopped."""
    acks: list[tuple[Any, str, str]] = []
    nacks: list[tuple[Any, Nack]] = []
    server = AdsServer(
        ObserverFuncs(
            on_ack=lambda info, type_url, version: acks.append((key(info), type_url, version)),
            on_nack=lambda info, nack: nacks.append((key(info), nack)),
        )
    )
    port = await server.start("127.0.0.1:0")
    async with running(server, harness_class(server, port, acks, nacks)) as harness:
        yield harness


@contextlib.asynccontextmanager
async def running(server: AdsServer, harness: Any) -> AsyncIterator[Any]:
    """`harness` while the test runs; then its `clients` are closed and `server` stopped."""
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.close()
        await server.stop(0.5)
