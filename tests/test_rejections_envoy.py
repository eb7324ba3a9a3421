"""A real Envoy refuses a site: the control plane finds which, leaves it out, and says so.

Our validation lets nothing through that Envoy refuses, so the test reaches the builder
through its test-only hook: virtual hosts of sites at generation 13 get a header match with
a regular expression that does not compile (Envoy's message names no site), and clusters of
Services named `refused-*` get a load-balancing policy their type cannot have (Envoy's
message names the cluster). Everything else — tracing, containment, status, logs — is the
production code, against Envoy over ADS in both variants.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import prometheus_client
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from support.processes import free_port, try_get
from support.site_source import Sites
from support.sites import site
from support.waiting import eventually

from snapshot.builder import BuildOptions, Phase
from snapshot.model import Backend, SiteKey, StaticSite
from xds_server.local.gateway import LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend
from xds_server.operations.metrics import Metrics
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.envoy

UNLUCKY = 13


def refuse_in_envoy(obj: StaticSite | Backend, body: bytes) -> bytes:
    """Make what Envoy refuses (the model has no way to express it)."""
    if isinstance(obj, StaticSite) and obj.generation == UNLUCKY:
        vhost = route_components_pb2.VirtualHost.FromString(body)
        header = vhost.routes[0].match.headers.add(name="x-any")
        header.string_match.CopyFrom(
            string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="(unclosed"))
        )
        return vhost.SerializeToString(deterministic=True)
    if isinstance(obj, Backend) and obj.service_name.startswith("refused"):
        cluster = cluster_pb2.Cluster.FromString(body)
        cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
        return cluster.SerializeToString(deterministic=True)
    return body


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_a_refused_site_is_traced_left_out_and_reported_while_the_others_update(
    variant: str, tmp_path: Path, backends: Callable[[str], SampleBackend], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="staticsite_xds")
    blue, green = backends("blue"), backends("green")
    http_port, admin_port = free_port(), free_port()
    options = BuildOptions(http_port=http_port, listen_address="127.0.0.1", backend_host_template="127.0.0.1")
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    nacks: list[tuple[str, str]] = []
    plane = ControlPlane(
        options,
        observers=[
            metrics,
            ObserverFuncs(on_nack=lambda info, nack: nacks.append((nack.type_url, nack.version))),
        ],
        hold_off=0.002,
        max_delay=0.02,
    )
    metrics.export(plane)
    plane.builder.resource_hook = refuse_in_envoy
    source = Sites()
    stop = asyncio.Event()
    xds_port = free_port()
    task = asyncio.create_task(plane.run(source.watch(stop), f"127.0.0.1:{xds_port}", stop))
    bootstrap = local_bootstrap(xds_port, admin_port, node_id=f"gw-{variant}")
    if variant == "sotw":
        bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "GRPC"
    envoy = LocalEnvoy(bootstrap, tmp_path / "envoy")

    async def serves(domain: str, backend: str | None, status: int = 200) -> None:
        async def check() -> bool:
            r = await asyncio.to_thread(try_get, http_port, domain)
            return r is not None and r.status == status and r.backend == backend

        await eventually(check, within=15, what=f"{domain} to answer {status} from {backend}")

    def state(name: str) -> Phase | None:
        found = plane.status.states().get(SiteKey("docs", name))
        return found.phase if found is not None else None

    try:
        source.declare(site("a", port=blue.port, generation=1))
        await asyncio.to_thread(envoy.start)
        await serves("a.example.test", "blue")

        # Six new sites at once; one of them is refused by Envoy with a message naming no site.
        news = [site(f"n{i}", port=green.port, generation=UNLUCKY if i == 4 else 1) for i in range(6)]
        source.declare(*news)
        for i in (0, 1, 2, 3, 5):
            await serves(f"n{i}.example.test", "green")
        await eventually(lambda: state("n4") is Phase.REJECTED, within=15, what="n4 to be rejected")
        await serves("n4.example.test", None, 404)
        assert plane.containment.searches == 1
        assert not plane.containment.searching
        n4 = plane.status.states()[SiteKey("docs", "n4")]
        assert n4.reason == "EnvoyRejected"
        assert registry.get_sample_value("staticsite_xds_sites", {"state": "rejected"}) == 1
        assert registry.get_sample_value("staticsite_xds_rejection_searches_total") == 1
        assert f"gw-{variant}" in n4.message
        assert "unclosed" in n4.message

        # A refused update of a served site: Envoy names the cluster; the last good version stays.
        source.declare(site("a", port=green.port, service="refused-web", generation=1))
        await eventually(lambda: state("a") is Phase.REJECTED, within=15, what="a to be rejected")
        await serves("a.example.test", "blue")
        a = plane.status.states()[SiteKey("docs", "a")]
        assert "docs/refused-web" in a.message
        assert "last good version is still served" in a.message
        assert plane.containment.searches == 1  # found by name, no search
        assert registry.get_sample_value("staticsite_xds_sites", {"state": "rejected"}) == 2
        assert registry.get_sample_value("staticsite_xds_site_rejections_total") == 2

        # Every other site keeps updating, and the refused ones come back once fixed.
        source.declare(site("n0", port=blue.port, generation=1))
        await serves("n0.example.test", "blue")
        source.declare(site("n4", port=blue.port, generation=2), site("a", port=green.port, generation=1))
        await serves("n4.example.test", "blue")
        await serves("a.example.test", "green")
        assert state("n4") is Phase.PROVISIONED
        assert registry.get_sample_value("staticsite_xds_sites", {"state": "rejected"}) == 0
        assert state("a") is Phase.PROVISIONED

        # Envoy was never sent a refused configuration again: each NACK is of another version,
        # and Envoy counted exactly the rejections we saw.
        assert len(set(nacks)) == len(nacks), nacks
        rejected = envoy.stat("cluster_manager.cds.update_rejected") + sum(
            v for k, v in envoy.stats("http.").items() if k.endswith("rds.http.update_rejected")
        )
        assert rejected == len(nacks) >= 2
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(f"gw-{variant}" in line and "unclosed" in line for line in lines), lines
        assert any("site docs/n4" in line and "left out" in line for line in lines), lines
    finally:
        stop.set()
        await asyncio.to_thread(envoy.stop)
        await asyncio.wait_for(task, 15)
