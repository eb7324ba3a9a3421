"""Inspection (`/debug/envoys`, `staticsite_xds.v1.Inspection/ListEnvoys`, `staticsite-xds status`)
and the gRPC health service on the xDS port; last, all of it through a real `serve` process
with a real Envoy."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support.manifests import manifest, write
from support.plane import TYPES, Plane
from support.processes import free_port, run_cli, running_gateway
from support.sites import SITE_A, SITE_B, site_set
from support.waiting import eventually, wait_until

from snapshot.builder import BuildOptions
from snapshot.model import SiteKey
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from snapshot.verdict import Phase, SiteState
from watcher.siteset import SiteSet
from xds_server import cli
from xds_server.ads.server import ADS_SERVICE
from xds_server.ads.stream import StreamInfo, TypeStatus
from xds_server.local.ads_client import DeltaClient, SotwClient
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import LocalEnvoy
from xds_server.operations.health import GrpcHealth, HealthServer
from xds_server.operations.inspection import (
    LIST_ENVOYS,
    Inspection,
    behind,
    format_sites,
    format_table,
    report,
    sites_report,
)
from xds_server.operations.metrics import Metrics
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- what "behind" means ---------------------------------------------------------------------


@pytest.mark.unit
def test_behind_compares_each_subscribed_type_with_the_current_snapshot() -> None:
    plane = ControlPlane(BuildOptions())
    snapshot = plane.apply(site_set(SITE_A))
    assert snapshot is not None
    info = StreamInfo(1, "peer", 0.0)
    assert not behind(info, snapshot)  # subscribed to nothing yet
    assert not behind(info, None)  # nothing published: nothing to be behind

    info.types[CLUSTER_TYPE] = TypeStatus()
    assert behind(info, snapshot)  # subscribed, nothing ACKed yet
    cds = snapshot.of_type(CLUSTER_TYPE).version
    info.types[CLUSTER_TYPE].acked_version = f"{cds}+0123456789abcdef"  # clusters held back
    assert behind(info, snapshot)
    info.types[CLUSTER_TYPE].acked_version = cds
    assert not behind(info, snapshot)  # a type it never asked for does not count

    info.types[ROUTE_TYPE] = TypeStatus(acked_version=snapshot.of_type(ROUTE_TYPE).version)
    assert not behind(info, snapshot)
    newer = plane.apply(site_set(SITE_A, SITE_B))
    assert behind(info, newer)


@pytest.mark.unit
def test_the_sites_report_counts_every_phase_and_lists_those_not_served() -> None:
    bad = SiteKey("web", "broken")
    states = {
        SITE_A.key: SiteState(SITE_A.key, Phase.PROVISIONED, "Accepted", "served"),
        SITE_B.key: SiteState(
            SITE_B.key, Phase.CONFLICT, "DomainConflict", "domain b.example.test\nis taken"
        ),
        bad: SiteState(bad, Phase.INVALID, "InvalidSpec", "web/broken.yaml: spec.domain: is not a DNS name"),
    }
    sites = site_set(SITE_A, SITE_B, invalid=[bad])
    some = sites_report(sites, states)
    assert some["total"] == 3
    assert some["phases"] == {"Conflict": 1, "Invalid": 1, "Provisioned": 1}
    assert [(s["namespace"], s["name"], s["phase"]) for s in some["listed"]] == [
        ("default", "b", "Conflict"),
        ("web", "broken", "Invalid"),
    ]
    assert some["listed"][0]["domain"] == "b.example.test"
    assert some["listed"][0]["gateway_group"] == "default"
    assert some["listed"][1]["domain"] is None  # an invalid declaration has no domain we trust
    every = sites_report(sites, states, all_sites=True)
    assert [s["name"] for s in every["listed"]] == ["a", "b", "broken"]

    text = format_sites(some)
    lines = text.splitlines()
    assert lines[0] == "3 sites: 1 Conflict, 1 Invalid, 1 Provisioned"
    assert lines[2].split() == ["SITE", "DOMAIN", "GATEWAY", "GROUP", "PHASE", "REASON", "MESSAGE"]
    assert lines[3].split()[:5] == ["default/b", "b.example.test", "default", "Conflict", "DomainConflict"]
    assert lines[3].endswith("domain b.example.test is taken")  # one line, whatever the message
    assert lines[4].startswith("web/broken ")
    assert format_sites({"total": 1, "phases": {"Provisioned": 1}, "listed": []}) == "1 site: 1 Provisioned\n"


@pytest.mark.unit
def test_the_table_shows_one_line_per_envoy() -> None:
    data = {
        "snapshot": {
            "version": "9dbcc83ff5df577b",
            "generation": 7,
            "types": {"Cluster": "b041834726de7d49", "Listener": "64dfd41995f684c8"},
        },
        "envoys": [
            {
                "node_id": "gw-1",
                "gateway_group": "edge",
                "variant": "delta",
                "behind": False,
                "types": {"Cluster": {"acked_version": "b041834726de7d49"}},
                "last_nack": None,
            },
            {
                "node_id": "gw-2",
                "gateway_group": "edge-eu",
                "variant": "sotw",
                "behind": True,
                "types": {
                    "Cluster": {"acked_version": "b041834726de7d49+0011223344556677", "held_back": True},
                    "Listener": {"acked_version": ""},
                },
                "last_nack": {
                    "type": "Listener",
                    "version": "64dfd41995f684c8",
                    "message": "port 80:\n  permission denied " + "x" * 100,
                    "at": "2026-11-22T10:00:00.000Z",
                },
            },
        ],
    }
    now = 1795341612.0  # 2026-11-22T10:00:12Z
    lines = format_table(data, now=now).splitlines()
    assert lines[0] == "snapshot 9dbcc83ff5df577b (generation 7): CDS:b0418347 LDS:64dfd419"
    assert lines[1] == "2 Envoys connected, 1 behind"
    header, first, second = lines[3:]
    assert header.split() == ["NODE", "ID", "GATEWAY", "GROUP", "VARIANT", "ACKED", "BEHIND", "LAST", "NACK"]
    assert first.split() == ["gw-1", "edge", "delta", "CDS:b0418347", "no", "-"]
    assert second.split()[:7] == ["gw-2", "edge-eu", "sotw", "CDS:b0418347+", "LDS:-", "yes", "LDS"]
    assert "12s ago: port 80: permission denied xxx" in second
    assert second.endswith("…")
    assert len(second) < 160
    assert (
        format_table({"snapshot": None, "envoys": []})
        == "no snapshot published yet\n0 Envoys connected, 0 behind\n"
    )
    one = format_table({**data, "envoys": data["envoys"][:1]}, now=now).splitlines()
    assert one[1] == "1 Envoy connected, 0 behind"


# -- in process --------------------------------------------------------------------------------


@dataclass
class Inspected(Plane):
    http_port: int = 0

    async def get(self, path: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=aiohttp.ClientTimeout(5)) as resp,
        ):
            return resp.status, await resp.json() if resp.status == 200 else await resp.text()


@pytest.fixture
async def inspected() -> AsyncIterator[Inspected]:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    health = GrpcHealth()
    plane = ControlPlane(
        BuildOptions(backend_host_template="127.0.0.1"),
        observers=[metrics, ObserverFuncs(on_published=lambda *_: health.published())],
    )
    metrics.export(plane)
    inspection = Inspection(lambda _asked: report(plane))
    port = await plane.server.start("127.0.0.1:0", services=[health.register, inspection.register])
    http = HealthServer(lambda: plane.ready, registry, inspect=lambda: report(plane))
    http_port = await http.start("127.0.0.1:0")
    harness = Inspected(plane, metrics, registry, port, http_port=http_port)
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.close()
        await http.stop()
        await plane.server.stop(0.5)


async def _nacking_pair(cp: Inspected) -> tuple[SotwClient, DeltaClient]:
    """A state-of-the-world Envoy that holds the snapshot, and a delta one that rejected routes."""
    cp.publish(SITE_A)
    good, bad = cp.sotw("gw-good", "edge-eu"), cp.delta("gw-bad", "edge-us")
    await cp.settle(good)
    for type_url in TYPES:
        bad.subscribe(type_url, *(["http"] if type_url == ROUTE_TYPE else []))
    for response in await bad.recv_n(3):
        if response.type_url == ROUTE_TYPE:
            bad.nack(response, "route rejected:\n  bad domain")
        else:
            bad.ack(response)
    await eventually(lambda: cp.stream("gw-bad").last_nack is not None, what="the NACK")
    return good, bad


@pytest.mark.unit
async def test_debug_envoys_lists_every_connected_envoy(inspected: Inspected) -> None:
    cp = inspected
    status, empty = await cp.get("/debug/envoys")
    assert status == 200
    assert empty == {"snapshot": None, "snapshots": {}, "envoys": []}

    await _nacking_pair(cp)
    snapshot = cp.plane.server.snapshot
    assert snapshot is not None
    status, data = await cp.get("/debug/envoys")
    assert status == 200
    assert data["snapshot"]["version"] == snapshot.version
    assert data["snapshot"]["generation"] == 1
    assert data["snapshot"]["types"]["Cluster"] == snapshot.of_type(CLUSTER_TYPE).version
    by_node = {e["node_id"]: e for e in data["envoys"]}
    assert set(by_node) == {"gw-good", "gw-bad"}

    good, bad = by_node["gw-good"], by_node["gw-bad"]
    assert (good["gateway_group"], good["variant"], good["behind"]) == ("default", "sotw", False)
    assert (bad["gateway_group"], bad["variant"], bad["behind"]) == ("default", "delta", True)
    assert (good["declared_group"], bad["declared_group"]) == ("edge-eu", "edge-us")
    assert good["peer"].startswith("ipv4:127.0.0.1:")
    assert good["connected_since"].endswith("Z")
    assert list(good["types"]) == ["Cluster", "Listener", "RouteConfiguration"]
    for name, type_url in (
        ("Cluster", CLUSTER_TYPE),
        ("Listener", LISTENER_TYPE),
        ("RouteConfiguration", ROUTE_TYPE),
    ):
        assert good["types"][name]["acked_version"] == snapshot.of_type(type_url).version
    assert good["last_nack"] is None
    assert bad["types"]["RouteConfiguration"]["acked_version"] == ""
    nack = bad["last_nack"]
    assert nack["type"] == "RouteConfiguration"
    assert nack["version"] == snapshot.of_type(ROUTE_TYPE).version
    assert nack["message"] == "route rejected:\n  bad domain"
    assert nack["at"].endswith("Z")


@pytest.mark.unit
async def test_status_command_prints_the_table_from_the_xds_port(
    inspected: Inspected, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = inspected
    await _nacking_pair(cp)
    address = f"127.0.0.1:{cp.port}"
    # the command blocks on its call: run it beside the event loop that serves the call
    code = await asyncio.to_thread(cli.main, ["status", "--xds-address", address])
    out = capsys.readouterr().out
    assert code == 0, out
    snapshot = cp.plane.server.snapshot
    assert snapshot is not None
    assert out.startswith(f"snapshot {snapshot.version} (generation 1): CDS:")
    assert "2 Envoys connected, 1 behind" in out
    rows = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert rows["gw-good"].split()[1:3] == ["default", "sotw"]
    assert rows["gw-good"].split()[-2:] == ["no", "-"]
    assert rows["gw-bad"].split()[1:3] == ["default", "delta"]
    assert rows["gw-bad"].split()[3:8] == [
        "CDS:" + snapshot.of_type(CLUSTER_TYPE).version[:8],
        "LDS:" + snapshot.of_type(LISTENER_TYPE).version[:8],
        "RDS:-",
        "yes",
        "RDS",
    ]
    assert "route rejected: bad domain" in rows["gw-bad"]

    code = await asyncio.to_thread(cli.main, ["status", "--xds-address", address, "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {e["node_id"]: e["behind"] for e in printed["envoys"]} == {"gw-good": False, "gw-bad": True}
    assert printed["snapshot"]["version"] == snapshot.version


@pytest.mark.unit
async def test_list_envoys_takes_json_and_answers_json(inspected: Inspected) -> None:
    cp = inspected
    cp.publish(SITE_A)
    latest = cp.publish(SITE_A, SITE_B)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        call = channel.unary_unary(LIST_ENVOYS)
        for request in (b"", b"{}", b'{"future": "filters"}'):
            answer = json.loads(await call(request, timeout=5))
            assert answer["snapshot"]["generation"] == 2
            assert answer["snapshot"]["version"] == latest.version
            assert answer["envoys"] == []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(b"not json", timeout=5)
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.envoy
def test_status_command_says_so_when_nothing_answers() -> None:
    address = f"127.0.0.1:{free_port()}"
    proc = run_cli("status", "--xds-address", address, "--timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"staticsite-xds: cannot reach the control plane at {address}"), proc.stderr
    assert proc.stdout == ""


# -- gRPC health -------------------------------------------------------------------------------


async def _check(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = response.status
    return status


@pytest.mark.unit
async def test_grpc_health_serves_once_a_snapshot_is_published_and_not_after_stop() -> None:
    health = GrpcHealth()
    plane = ControlPlane(
        BuildOptions(),
        observers=[ObserverFuncs(on_published=lambda *_: health.published())],
        hold_off=0.001,
        max_delay=0.01,
    )
    stop, go = asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[SiteSet]:
        await go.wait()
        yield site_set(SITE_A)

    port = free_port()
    running = asyncio.create_task(
        plane.run(source(), f"127.0.0.1:{port}", stop, [health.serve(stop)], services=[health.register])
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            for service in ("", ADS_SERVICE):
                assert await _check(channel, service) == NOT_SERVING

            go.set()
            for service in ("", ADS_SERVICE):
                await eventually(
                    lambda s=service: _is(_check(channel, s), SERVING),
                    what=f"{service or 'the server'} to serve",
                )
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=ADS_SERVICE), timeout=10
            )
            assert (await watch.read()).status == SERVING

            stop.set()  # shutting down: the service says so before the port closes
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            watch.cancel()
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def _is(status: Any, want: int) -> bool:
    return bool(await status == want)


@pytest.mark.unit
async def test_grpc_health_is_serving_at_once_when_registered_after_a_publish(inspected: Inspected) -> None:
    cp = inspected
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
        assert await _check(channel, "") == NOT_SERVING
        cp.publish(SITE_A)
        await eventually(lambda: _is(_check(channel, ADS_SERVICE), SERVING))
        assert await _check(channel, "") == SERVING


# -- end to end --------------------------------------------------------------------------------


@dataclass
class Served:
    sites: Path
    process: ControlPlaneProcess
    metrics_port: int

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.get("/metrics"))
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, LocalEnvoy]]:
    write(tmp_path / "sites" / "a.yaml", manifest("a", "a.example.test", "web-a", free_port()))
    metrics_port = free_port()
    extra = ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    with running_gateway(tmp_path, extra=extra, envoy_log_level="warning") as gateway:
        yield Served(gateway.sites, gateway.control_plane, metrics_port), gateway.envoy


@pytest.mark.envoy
def test_a_real_envoy_through_metrics_inspection_status_and_health(served: tuple[Served, LocalEnvoy]) -> None:
    cp, _ = served
    (cp.sites / "b.yaml").write_text(manifest("b", "b.example.test", "web-b", free_port()))

    def propagated() -> bool:
        count = cp.value("staticsite_xds_propagation_duration_seconds_count") or 0
        return count >= 1

    wait_until(propagated, timeout=15, what="Envoy to ACK the second snapshot")
    assert (cp.value("staticsite_xds_snapshot_generation", gateway_group="default") or 0) >= 2
    assert cp.value("staticsite_xds_sites", state="provisioned") == 2
    assert cp.value("staticsite_xds_sites", state="conflict") == 0
    assert cp.value("staticsite_xds_connected_envoys", gateway_group="default", variant="delta") == 1
    assert (cp.value("staticsite_xds_acks_total", type="RouteConfiguration") or 0) >= 2
    assert cp.value("staticsite_xds_envoys_behind", gateway_group="default") == 0

    envoys = json.loads(cp.get("/debug/envoys"))
    [envoy] = envoys["envoys"]
    assert (envoy["node_id"], envoy["gateway_group"], envoy["behind"]) == ("local-gateway", "default", False)
    assert (
        envoy["types"]["RouteConfiguration"]["acked_version"]
        == envoys["snapshot"]["types"]["RouteConfiguration"]
    )

    proc = run_cli("status", "--xds-address", f"127.0.0.1:{cp.process.xds_port}")
    assert proc.returncode == 0, proc.stderr
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("local-gateway")]
    assert row.split()[1:3] == ["default", "delta"]
    assert row.split()[-2:] == ["no", "-"]

    with grpc.insecure_channel(f"127.0.0.1:{cp.process.xds_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", ADS_SERVICE):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == SERVING
