"""A source of site sets that a test writes to, for an in-process control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import MappingProxyType

from snapshot.model import SiteKey, StaticSite
from watcher.siteset import SiteSet


class Sites:
    """Each `declare` puts sites (added or replaced) and yields the new complete set."""

    def __init__(self) -> None:
        self.sites: dict[SiteKey, StaticSite] = {}
        self.queue: asyncio.Queue[SiteSet] = asyncio.Queue()

    def declare(self, *sites: StaticSite) -> None:
        for s in sites:
            self.sites[s.key] = s
        self.queue.put_nowait(
            SiteSet(MappingProxyType(dict(self.sites)), changed=frozenset(s.key for s in sites))
        )

    async def watch(self, stop: asyncio.Event) -> AsyncIterator[SiteSet]:
        """The sets declared, until `stop` is set."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                got = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    return
                yield got.result()
        finally:
            stopped.cancel()
