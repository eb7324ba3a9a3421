"""The operators' HTTP port: liveness, readiness and Prometheus metrics.

- `/healthz`: 200 while the process runs its event loop.
- `/readyz`: 200 once the first complete snapshot is published (in Kubernetes mode, only
  after the initial listing of every StaticSite), 503 before. A warning about how the
  process runs (plain text on a reachable xDS port) follows the verdict in the body.
- `/metrics`: the Prometheus registry of the process.
- `/debug/envoys`: every connected Envoy as JSON (see `inspection.py`), when an inspection is given.

`GrpcHealth` is the standard gRPC health service (`grpc.health.v1.Health`) on the xDS port.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import grpc
import prometheus_client
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ..ads.server import ADS_SERVICE

log = logging.getLogger("staticsite_xds.health")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) into its parts, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


METRICS_PATH = "/metrics"  # where Prometheus scrapes (deploy/monitoring/ names it too)


class HealthServer:
    def __init__(
        self,
        ready: Callable[[], bool],
        registry: prometheus_client.CollectorRegistry | None = None,
        inspect: Callable[[], object] | None = None,
        warning: str | None = None,
    ):
        self.ready = ready
        self.warning = warning  # named in /readyz's body, whatever the verdict
        self.registry = registry or prometheus_client.REGISTRY
        self.inspect = inspect  # JSON-able data for /debug/envoys
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get(METRICS_PATH, self._metrics)
        if self.inspect is not None:
            app.router.add_get("/debug/envoys", self._envoys)
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
        paths = "/healthz, /readyz, /metrics" + (", /debug/envoys" if self.inspect is not None else "")
        log.info("health and metrics on http://%s:%d (%s)", host, self.port, paths)
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
        warning = "" if self.warning is None else f"warning: {self.warning}\n"
        if self.ready():
            return web.Response(text="ready\n" + warning)
        return web.Response(status=503, text="not ready: no complete snapshot published yet\n" + warning)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def _envoys(self, _: web.Request) -> web.Response:
        assert self.inspect is not None
        return web.json_response(self.inspect(), dumps=_json_text)


def _json_text(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcHealth:
    """The standard gRPC health service on the xDS port.

    The overall service ("") and the ADS service answer NOT_SERVING until the first complete
    snapshot is published (`published`, told by the control plane), SERVING after, and
    NOT_SERVING again once the process is stopping (`serve` ends with the stop event, before
    the xDS port closes).
    """

    SERVICES = ("", ADS_SERVICE)

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.serving = False
        self._updates: set[asyncio.Task[None]] = set()

    def register(self, server: grpc.aio.Server) -> None:
        """Add the service to `server` (called as the xDS port starts, in its event loop)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        self._set(_SERVING if self.serving else _NOT_SERVING)

    def published(self) -> None:
        """A complete snapshot is published: SERVING from now on."""
        if not self.serving:
            self.serving = True
            self._set(_SERVING)

    def _set(self, status: int) -> None:
        # Setting a status is a coroutine (it wakes the watchers); ordered by the event loop.
        task = asyncio.get_running_loop().create_task(self._set_all(status))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _set_all(self, status: int) -> None:
        for service in self.SERVICES:
            await self.servicer.set(service, status)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then answer NOT_SERVING for good."""
        try:
            await stop.wait()
        finally:
            await self.servicer.enter_graceful_shutdown()
