"""The operators' HTTP port: liveness, readiness and Prometheus metrics.

- `/healthz`: 200 while the process runs its event loop.
- `/readyz`: 200 once the first complete snapshot is published (in Kubernetes mode, only
  after the initial listing of every StaticSite), 503 before.
- `/metrics`: the Prometheus registry of the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import prometheus_client
from aiohttp import web

log = logging.getLogger("staticsite_xds.health")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) into its parts, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    def __init__(
        self, ready: Callable[[], bool], registry: prometheus_client.CollectorRegistry | None = None
    ):
        self.ready = ready
        self.registry = registry or prometheus_client.REGISTRY
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, address: str) -> int:
        host, port = split_address(address)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # the bound port, when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve(self, address: str, stop: asyncio.Event) -> None:
        await self.start(address)
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: no complete snapshot published yet\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
