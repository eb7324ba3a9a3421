"""Two control-plane processes in Kubernetes mode, each with an Envoy: the leader is killed
with SIGKILL; the other takes the Lease and writes status, and no Envoy stops serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.envoy_dump import route_domains
from support.kubernetes import Cluster, start_serve_process
from support.processes import free_port, try_get
from support.waiting import eventually

from watcher.leader import DEFAULT_LEASE_TIMINGS
from xds_server.local.gateway import LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy

DOMAIN = "docs.example.test"
ALIAS = "www.docs.example.test"


class Replica:
    """One control plane and its Envoy. Both replicas are given the same options, so that they
    build the same content: their Envoys share one HTTP port (Envoy's listeners reuse the port,
    and the kernel spreads the connections over both)."""

    def __init__(self, identity: str, tmp_path: Path, http_port: int) -> None:
        self.identity = identity
        self.xds_port, self.http_port = free_port(), http_port
        self.metrics_port, self.admin_port = free_port(), free_port()
        self.log = tmp_path / f"{identity}.log"
        self.envoy = LocalEnvoy(
            local_bootstrap(self.xds_port, self.admin_port), tmp_path / f"envoy-{identity}"
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, kubeconfig: Path, workdir: Path) -> None:
        self.process = await start_serve_process(
            kubeconfig,
            workdir,
            self.log,
            identity=self.identity,
            xds_port=self.xds_port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
        )

    async def report(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/debug/envoys") as response:
                return json.loads(await response.text()) if response.status == 200 else None
        except aiohttp.ClientError:
            return None

    def serves(self, host: str = DOMAIN) -> bool:
        response = try_get(self.http_port, host)
        return response is not None and response.status == 200

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.envoy.stop)
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def test_the_leader_killed_the_other_takes_over_and_no_envoy_stops_serving(
    cluster: Cluster, backends: Callable[[str], SampleBackend], tmp_path: Path
) -> None:
    backend = backends("docs")
    await cluster.create_service("docs", "web", ports=[backend.port])
    await cluster.create_site("docs", "main", DOMAIN, port=backend.port)
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    http_port = free_port()
    replicas = {name: Replica(name, tmp_path, http_port) for name in ("cp-a", "cp-b")}
    try:
        for replica in replicas.values():
            await replica.start(kubeconfig, tmp_path)
        for replica in replicas.values():
            await asyncio.to_thread(replica.envoy.start)
        for replica in replicas.values():
            await eventually(
                lambda r=replica: DOMAIN in route_domains(r.envoy),
                within=30,
                what=f"{replica.identity}'s routes",
            )
        await eventually(
            lambda: asyncio.to_thread(replicas["cp-a"].serves), within=10, what="the site served"
        )

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def versions() -> set[str]:
                """The content versions each replica serves (the generation counts this
                process's publishes; the versions are the content's)."""
                reports = [await r.report(http) for r in replicas.values()]
                return {
                    json.dumps([r["snapshot"]["version"], r["snapshot"]["types"]]) if r else "none"
                    for r in reports
                }

            async def agree() -> bool:
                seen = await versions()
                return len(seen) == 1 and "none" not in seen

            # Both replicas serve the same content versions for the same sites.
            await eventually(agree, within=10, what="both replicas to serve the same versions")

        async def provisioned() -> bool:
            return (await cluster.status("docs", "main")).get("phase") == "Provisioned"

        await eventually(provisioned, within=20, what="the status written by the leader")
        lease = await cluster.lease()
        assert lease is not None
        leader = replicas[lease["spec"]["holderIdentity"]]
        (survivor,) = [r for r in replicas.values() if r is not leader]

        # Requests through both Envoys all along, bounded in count and time.
        failures: list[str] = []
        stop_load = asyncio.Event()

        served = {r.identity: r.envoy.stat("http.http.downstream_rq_completed") for r in replicas.values()}

        async def load() -> int:
            sent = 0
            while not stop_load.is_set() and sent < 1000:
                if not await asyncio.to_thread(survivor.serves):  # the port both Envoys share
                    failures.append(time.strftime("%H:%M:%S"))
                sent += 1
                await asyncio.sleep(0.02)
            return sent

        traffic = asyncio.create_task(load())
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await leader.process.wait()
        # A change made right after: only a leader writes its status.
        await cluster.update_spec("docs", "main", {"aliases": [ALIAS]})

        async def written_again() -> bool:
            status = await cluster.status("docs", "main")
            return status.get("observedGeneration") == 2 and status.get("phase") == "Provisioned"

        duration, _, period = DEFAULT_LEASE_TIMINGS
        await eventually(written_again, within=duration + 2 * period + 5, what="the status of the change")
        took = time.monotonic() - killed
        lease = await cluster.lease()
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == survivor.identity
        assert took <= duration + period + 1, f"status written {took:.1f} s after the leader died"
        await eventually(lambda: ALIAS in route_domains(survivor.envoy), within=10, what="the change served")
        stop_load.set()
        sent = await traffic
        assert sent > 0
        assert failures == [], f"{len(failures)} of {sent} requests failed"
        # The Envoy of the dead replica keeps the configuration it had, and both took traffic.
        assert route_domains(leader.envoy) >= {DOMAIN}
        for replica in replicas.values():
            assert replica.envoy.stat("http.http.downstream_rq_completed") > served[replica.identity]
    finally:
        for replica in replicas.values():
            await replica.stop()
