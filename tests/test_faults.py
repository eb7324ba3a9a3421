"""Faults, with real processes: the `serve` process, real Envoys, sample backends, gRPC clients.

Each test breaks one thing and checks what an operator relies on: Envoy keeps routing with
what it has, the control plane says what happened (once) and stays healthy, and everything
recovers without a restart.

- the control plane killed and restarted under load; an Envoy restarted;
- the site source gone: the sites folder, or the Kubernetes API server;
- xDS clients that never read, or that send garbage;
- SIGTERM with Envoys connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client.parser import text_string_to_metric_families
from support.kubernetes import Cluster, start_serve_process, write_kubeconfig
from support.manifests import manifest
from support.processes import Gateway, free_port, running_gateway, try_get
from support.waiting import eventually, wait_until

from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from xds_server.local.ads_client import DELTA_METHOD, SOTW_METHOD, AdsClient
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy

Backends = Callable[[str], SampleBackend]
UNKNOWN_TYPE = "type.googleapis.com/envoy.config.route.v3.VirtualHost"


# -- what the tests observe -------------------------------------------------------------------


def held(envoy: LocalEnvoy) -> dict[str, tuple[str, str]]:
    """The version and the time of the last update of every dynamic resource Envoy holds."""
    out: dict[str, tuple[str, str]] = {}
    for config in envoy.config_dump()["configs"]:
        for key, inner in (
            ("dynamic_active_clusters", "cluster"),
            ("dynamic_listeners", "listener"),
            ("dynamic_route_configs", "route_config"),
        ):
            for item in config.get(key, []):
                state = item.get("active_state", item)
                name = state[inner]["name"]
                out[f"{inner}/{name}"] = (state.get("version_info", ""), state.get("last_updated", ""))
        # The route scopes' time is of the last response on their subscription, changed or
        # not (a new stream is answered once, with nothing); their reload count says more.
        for item in config.get("dynamic_scoped_route_configs", []):
            out[f"scoped_routes/{item['name']}"] = (item.get("version_info", ""), "")
    return out


def configured(envoy: LocalEnvoy, clusters: int) -> bool:
    """Envoy holds `clusters` clusters, the HTTP listener, its route scopes (if any) and every
    route configuration they name (or the one route configuration, without scopes)."""
    dump = envoy.config_dump()["configs"]
    scoped = [
        scope["route_configuration_name"]
        for config in dump
        for item in config.get("dynamic_scoped_route_configs", [])
        for scope in item.get("scoped_route_configs", [])
    ]
    names = held(envoy)
    routes = {n.split("/", 1)[1] for n in names if n.startswith("route_config/")}
    return (
        sum(n.startswith("cluster/") for n in names) == clusters
        and "listener/http" in names
        and routes == (set(scoped) or {"http"})
    )


def route_stats(envoy: LocalEnvoy, suffix: str) -> dict[str, str]:
    """Every stat of the HTTP listener's route scopes and route configurations that ends in
    `.suffix` (config_reload, version_text, update_success), by name."""
    pattern = rf"^http\.http\.(scoped_rds|rds)\..*\.{suffix}$"
    out = {}
    for line in envoy.admin(f"/stats?filter={pattern}").splitlines():
        name, _, value = line.partition(": ")
        out[name] = value.strip('"')
    return out


def text_stat(envoy: LocalEnvoy, name: str) -> str:
    """A text stat (the versions of each xDS type), '' when there is none."""
    for line in envoy.admin(f"/stats?filter=^{re.escape(name)}$").splitlines():
        if line.startswith(f"{name}: "):
            return line.split(": ", 1)[1].strip('"')
    return ""


# Counted by Envoy each time it changes its configuration, not when it is sent the same.
RELOADS = (
    "cluster_manager.cds.config_reload",
    "listener_manager.lds.config_reload",
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_modified",
    "cluster_manager.cluster_removed",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
)


TYPE_VERSIONS = (
    "cluster_manager.cds.version_text",
    "listener_manager.lds.version_text",
)


def published(log: str) -> list[str]:
    """The versions of the snapshots a control plane's log says it published, in order."""
    return re.findall(r"published snapshot (\S+):", log)


def noted(log: str) -> list[str]:
    """The lines of a control plane's log above DEBUG (what an operator reads)."""
    return [line for line in log.splitlines() if " DEBUG " not in line]


def http_answer(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return None


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of the control plane's /metrics (None if it has none)."""
    answer = http_answer(f"http://127.0.0.1:{port}/metrics")
    assert answer is not None
    assert answer[0] == 200, answer
    for family in text_string_to_metric_families(answer[1]):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def disconnected(envoy: LocalEnvoy) -> bool:
    return envoy.stat("control_plane.connected_state") == 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class KeepAliveLoad:
    """Requests through Envoy from a few threads, each on one keep-alive connection.

    Bounded: each thread sends at most `limit` requests, one every `pace` seconds at most
    (some 20 s in all), and stops earlier when told. An answer that is not 200 from the
    expected backend, or a connection that fails, is counted as a failure (and the thread
    opens a new connection).
    """

    def __init__(
        self, port: int, sites: dict[str, str], threads: int = 3, limit: int = 6000, pace: float = 0.003
    ) -> None:
        self.port = port
        self.sites = list(sites.items())  # host -> the backend that must answer
        self.limit = limit
        self.pace = pace
        self.counts = [Counter[str]() for _ in range(threads)]  # one per thread: no sharing
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in self.counts]

    def _run(self, counts: Counter[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            for i in range(self.limit):
                if self._stop.wait(self.pace):
                    return
                host, backend = self.sites[i % len(self.sites)]
                try:
                    conn.request("GET", "/", headers={"Host": host})
                    response = conn.getresponse()
                    response.read()
                    got = (response.status, response.getheader("x-backend"))
                    counts["ok" if got == (200, backend) else f"{got[0]} from {got[1]}"] += 1
                except (OSError, http.client.HTTPException) as exc:
                    counts[f"error {type(exc).__name__}"] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        finally:
            conn.close()

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts)

    def outcomes(self) -> Counter[str]:
        return sum(self.counts, Counter[str]())

    def __enter__(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class Subscriber(AdsClient):
    """A well-behaved state-of-the-world client (it ACKs every response) that also keeps the
    domains of the last route configuration it was sent, and can tell how its stream ended."""

    def __init__(self, port: int, node_id: str) -> None:
        super().__init__(port, node_id)
        self.domains: set[str] = set()
        self.received = 0  # bytes of every response

    def _ack(self, response: Any) -> None:
        self.received += response.ByteSize()
        if response.type_url == ROUTE_TYPE:
            self.domains = set()
            for resource in response.resources:
                config = route_pb2.RouteConfiguration.FromString(resource.value)
                self.domains.update(d for vhost in config.virtual_hosts for d in vhost.domains)
        super()._ack(response)

    async def routed(self, domain: str, within: float = 5.0) -> None:
        """Wait until the routes this client was sent answer `domain`."""
        await eventually(lambda: domain in self.domains, within=within, what=f"{domain} at {self.node.id}")

    async def ended(self, within: float) -> grpc.StatusCode:
        """The status the server ended the stream with; fails if it is still open after `within`."""
        code: grpc.StatusCode = await asyncio.wait_for(self._call.code(), within)
        return code


@dataclass
class Observed:
    """A gateway whose control plane also serves /healthz, /readyz and /metrics."""

    gateway: Gateway
    metrics_port: int

    def answer(self, path: str) -> int | None:
        got = http_answer(f"http://127.0.0.1:{self.metrics_port}{path}")
        return got[0] if got is not None else None

    def metric(self, name: str, **labels: str) -> float | None:
        return metric(self.metrics_port, name, **labels)


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[Observed]:
    """The `gateway` of conftest, with the control plane's metrics port open."""
    metrics_port = free_port()
    with running_gateway(tmp_path, extra=["--metrics-address", f"127.0.0.1:{metrics_port}"]) as gateway:
        yield Observed(gateway, metrics_port)


# -- 1. the control plane killed and restarted under load --------------------------------------


def test_a_killed_control_plane_restarts_under_load_and_envoy_changes_nothing(
    gateway: Gateway, backends: Backends
) -> None:
    sites = {f"{name}.example.test": name for name in ("a", "b", "c")}
    for host, name in sites.items():
        gateway.write(f"{name}.yaml", manifest(name, host, name, backends(name).port))
    for host, name in sites.items():
        gateway.wait_backend(host, name)
    envoy = gateway.envoy
    wait_until(lambda: configured(envoy, 3), what="3 clusters, the listener and the routes held")
    before = held(envoy)
    type_versions = {name: text_stat(envoy, name) for name in TYPE_VERSIONS}
    reloads = {name: envoy.stat(name) for name in RELOADS}
    route_reloads, route_versions = route_stats(envoy, "config_reload"), route_stats(envoy, "version_text")
    assert route_reloads
    assert all(int(v) >= 1 for v in route_reloads.values())
    updates = envoy.stat("cluster_manager.cds.update_success")
    last_version = published(gateway.control_plane.log())[-1]

    with KeepAliveLoad(gateway.http_port, sites) as load:
        wait_until(lambda: load.total() >= 100, what="load through Envoy")
        assert gateway.control_plane.stop(signal.SIGKILL) == -signal.SIGKILL
        wait_until(lambda: envoy.stat("control_plane.connected_state") == 0, what="Envoy to see it gone")
        served = load.total()
        wait_until(lambda: load.total() >= served + 100, what="load while the control plane is down")

        logged = len(gateway.control_plane.log())
        plane = ControlPlaneProcess(
            gateway.sites, gateway.sites.parent, gateway.control_plane.xds_port, gateway.http_port
        )
        gateway.control_plane = plane.start()
        wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, timeout=15, what="reconnect")
        wait_until(
            lambda: envoy.stat("cluster_manager.cds.update_success") > updates,
            what="Envoy to be answered by the new control plane",
        )
        served = load.total()
        wait_until(lambda: load.total() >= served + 100, what="load after the reconnection")

    outcomes = load.outcomes()
    assert set(outcomes) == {"ok"}, outcomes
    # The restarted control plane derived the same version from the same sites ...
    log = plane.log()[logged:]
    assert published(log) == [last_version], log
    assert re.search(r"stream \d+ \(node local-gateway, .*\) identified", log), log
    # ... so Envoy was answered, and changed nothing: no reload, no resource touched.
    assert {name: envoy.stat(name) for name in RELOADS} == reloads
    assert held(envoy) == before
    assert {name: text_stat(envoy, name) for name in TYPE_VERSIONS} == type_versions
    # Envoy counts the new stream's empty answer of route scopes as a scoped-routes reload,
    # though no scope changed (their version did not); no route configuration reloaded.
    scoped = "http.http.scoped_rds.sites.config_reload"
    reloaded = route_stats(envoy, "config_reload")
    assert {n: v for n, v in reloaded.items() if n != scoped} == {
        n: v for n, v in route_reloads.items() if n != scoped
    }
    assert route_stats(envoy, "version_text") == route_versions
    # The new stream carries changes.
    d = backends("d")
    gateway.write("d.yaml", manifest("d", "d.example.test", "d", d.port))
    gateway.wait_backend("d.example.test", "d")


# -- 2. Envoy restarted ----------------------------------------------------------------------


def test_a_restarted_envoy_gets_the_whole_configuration_at_once(
    gateway: Gateway, backends: Backends, tmp_path: Path
) -> None:
    servers = [backends(f"b{i}") for i in range(3)]
    hosts = {f"site-{i}.example.test": f"b{i % 3}" for i in range(30)}
    text = "---\n".join(
        manifest(f"site-{i}", host, f"b{i % 3}", servers[i % 3].port) for i, host in enumerate(hosts)
    )
    gateway.write("sites.yaml", text)
    for host, backend in hosts.items():
        gateway.wait_backend(host, backend)
    wait_until(lambda: configured(gateway.envoy, 3), what="3 clusters, the listener and the routes held")
    versions = {name: version for name, (version, _) in held(gateway.envoy).items()}

    gateway.envoy.stop()
    assert try_get(gateway.http_port, "site-0.example.test") is None
    envoy = LocalEnvoy(gateway.envoy.bootstrap, tmp_path / "envoy-again", log_level="info")
    try:
        envoy.start()
        wait_until(envoy.ready, timeout=20, what="the new Envoy to be ready")
        # Ready means configured: every site answers at the first request.
        for host, backend in hosts.items():
            response = try_get(gateway.http_port, host)
            assert response is not None, host
            assert (response.status, response.backend) == (200, backend), host
        assert {name: version for name, (version, _) in held(envoy).items()} == versions
        # In one response of each type, not piece by piece.
        for name in ("cluster_manager.cds.update_success", "listener_manager.lds.update_success"):
            assert envoy.stat(name) == 1, name
        updates = route_stats(envoy, "update_success")
        assert updates
        assert set(updates.values()) == {"1"}, updates
    finally:
        envoy.stop()


# -- 5. SIGTERM with Envoys connected ----------------------------------------------------------


async def test_sigterm_closes_every_stream_and_exits_at_once(
    gateway: Gateway, backends: Backends, tmp_path: Path
) -> None:
    a = backends("a")
    gateway.write("a.yaml", manifest("a", "a.example.test", "a", a.port))
    await asyncio.to_thread(gateway.wait_backend, "a.example.test", "a")
    second = LocalEnvoy(
        local_bootstrap(gateway.control_plane.xds_port, free_port(), node_id="second-gateway"),
        tmp_path / "second-envoy",
        log_level="info",
    )
    envoys = [gateway.envoy, second]
    client = Subscriber(gateway.control_plane.xds_port, "test-client")
    await client.start()
    try:
        await asyncio.to_thread(second.start)
        await eventually(
            lambda: asyncio.to_thread(second.ready), within=20, what="the second Envoy configured"
        )
        await eventually(client.has_all_types, what="the client's first responses")

        assert gateway.control_plane.process is not None
        gateway.control_plane.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(gateway.control_plane.process.wait, 10)
        took = time.monotonic() - signalled
        assert code == 0, gateway.control_plane.log()[-2000:]
        assert took < 5, f"took {took:.1f}s to stop"
        # Every stream was ended by the server, with a status: nobody waits for a timeout.
        assert await client.ended(within=2) == grpc.StatusCode.OK
        for envoy in envoys:
            await eventually(
                functools.partial(disconnected, envoy), within=2, what="Envoy to see its stream end"
            )
        log = gateway.control_plane.log()
        assert log.count(" opened (") == log.count(" closed\n"), log
        # The gateways go on serving what they have.
        for envoy in envoys:
            assert envoy.ready()
        assert gateway.get("a.example.test").backend == "a"
    finally:
        await client.close()
        await asyncio.to_thread(second.stop)


# -- 3. the site source goes away ------------------------------------------------------------


def take_folder_away(sites: Path, how: str) -> Callable[[], None]:
    """Make the sites folder unreadable in one of the ways it happens; return how to undo it."""
    away = sites.with_name("sites-away")
    if how == "unreadable":
        sites.chmod(0)
        return lambda: sites.chmod(0o755)
    sites.rename(away)
    if how == "replaced by a file":
        sites.write_text("not a folder\n")

    def restore() -> None:
        if how == "moved away":
            away.rename(sites)
            return
        sites.unlink()  # and in its place a new folder, with the same files
        shutil.copytree(away, sites.with_name("sites-new"))
        sites.with_name("sites-new").rename(sites)

    return restore


def mode_000_stops_listing() -> bool:
    """Whether a folder of mode 000 cannot be listed here (root lists it, unless it runs
    without the capability to override file modes)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "probe")
        folder.mkdir()
        folder.chmod(0)
        try:
            os.listdir(folder)
        except PermissionError:
            return True
        finally:
            folder.chmod(0o700)
        return False


FOLDER_FAULTS = [
    "moved away",
    "replaced by a file",
    pytest.param(
        "unreadable",
        marks=pytest.mark.skipif(not mode_000_stops_listing(), reason="this user reads every folder (root)"),
    ),
]


@pytest.mark.parametrize("how", FOLDER_FAULTS)
def test_the_sites_folder_going_away_keeps_the_last_good_sites(
    observed: Observed, backends: Backends, how: str
) -> None:
    gateway = observed.gateway
    a = backends("a")
    gateway.write("a.yaml", manifest("a", "a.example.test", "a", a.port))
    gateway.wait_backend("a.example.test", "a")
    assert observed.metric("staticsite_xds_source_up", source="folder") == 1
    warning = f"the sites folder {gateway.sites} cannot be read"

    restore = take_folder_away(gateway.sites, how)
    try:
        wait_until(lambda: warning in gateway.control_plane.log(), what="the warning")
        assert observed.metric("staticsite_xds_source_up", source="folder") == 0
        errors = observed.metric("staticsite_xds_source_errors_total", source="folder") or 0
        # The folder is read again every second: a few failed reads later, ...
        wait_until(
            lambda: (
                (observed.metric("staticsite_xds_source_errors_total", source="folder") or 0) >= errors + 2
            ),
            what="two more failed reads",
        )
        for _ in range(10):  # ... Envoy still routes, the process is ready, and it said so once.
            assert gateway.get("a.example.test").backend == "a"
        assert observed.answer("/readyz") == 200
        assert observed.answer("/healthz") == 200
        log = gateway.control_plane.log()
        assert log.count(warning) == 1, log
        assert len(noted(log[log.index(warning) :])) <= 3, log  # not a line per retry
    finally:
        restore()

    wait_until(
        lambda: f"the sites folder {gateway.sites} can be read again" in gateway.control_plane.log(),
        what="the recovery",
    )
    assert observed.metric("staticsite_xds_source_up", source="folder") == 1
    # Watched again: a change made now is served, with no restart.
    b = backends("b")
    gateway.write("b.yaml", manifest("b", "b.example.test", "b", b.port))
    gateway.wait_backend("b.example.test", "b")
    assert gateway.get("a.example.test").backend == "a"
    assert gateway.control_plane.log().count(warning) == 1


class Relay:
    """A TCP relay on a loopback port to another: the Kubernetes API as the control plane sees
    it. `cut` closes the port and every connection through it, as an API server that went
    away does (connections refused); `restore` opens the same port again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        ends = {writer, upstream_writer}
        self._open |= ends
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._open -= ends


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def relayed(port: int) -> AsyncIterator[Relay]:
    relay = Relay(port)
    await relay.restore()
    try:
        yield relay
    finally:
        await relay.cut()


async def more(value: Awaitable[float], than: float) -> bool:
    return await value > than


async def test_an_unreachable_kubernetes_api_keeps_the_last_good_sites(
    cluster: Cluster, backends: Backends, tmp_path: Path
) -> None:
    backend = backends("docs")
    await cluster.create_service("docs", "web", ports=[backend.port])
    await cluster.create_site("docs", "main", "docs.example.test", port=backend.port)
    xds_port, http_port, admin_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    api_port = int(cluster.url.rsplit(":", 1)[1])
    log_path = tmp_path / "control-plane.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    async def served(host: str) -> bool:
        response = await asyncio.to_thread(try_get, http_port, host)
        return response is not None and (response.status, response.backend) == (200, "docs")

    async def source_up() -> float | None:
        return await asyncio.to_thread(metric, metrics_port, "staticsite_xds_source_up", source="kubernetes")

    async def source_errors() -> float:
        name = "staticsite_xds_source_errors_total"
        return await asyncio.to_thread(metric, metrics_port, name, source="kubernetes") or 0.0

    async def answer(path: str) -> int | None:
        got = await asyncio.to_thread(http_answer, f"http://127.0.0.1:{metrics_port}{path}")
        return got[0] if got is not None else None

    async with relayed(api_port) as relay:
        process = await start_serve_process(
            write_kubeconfig(relay.url, tmp_path / "kubeconfig"),
            tmp_path,
            log_path,
            identity="replica-a",
            xds_port=xds_port,
            http_port=http_port,
            metrics_port=metrics_port,
        )
        envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), tmp_path / "envoy")
        try:
            await asyncio.to_thread(envoy.start)
            await eventually(lambda: served("docs.example.test"), within=20, what="the site served")
            assert await source_up() == 1
            # Past kopf's start: only the periodic check finds the outage.
            await eventually(lambda: cluster.kopf_requests("WATCH", "staticsites"), what="kopf's watch")
            warning = f"the Kubernetes API server {relay.url} cannot be read"

            await relay.cut()
            await eventually(lambda: warning in log(), within=10, what="the warning")
            assert await source_up() == 0
            errors = await source_errors()
            # Retried on a schedule (1 s, then 2 s): a failed read later, ...
            await eventually(lambda: more(source_errors(), errors), within=5, what="another failed read")
            for _ in range(10):  # ... Envoy still routes, the process is ready, and it said so once.
                assert await served("docs.example.test")
            assert await answer("/readyz") == 200
            assert await answer("/healthz") == 200
            assert log().count(warning) == 1, log()
            outage = noted(log()[log().index(warning) :])
            assert len(outage) <= 3, outage  # the lease's own warning, and perhaps its "no longer leads"
            assert not [line for line in outage if "Request attempt" in line or "Retrying (" in line]

            await relay.restore()
            recovered = f"the Kubernetes API server {relay.url} can be read again"
            await eventually(lambda: recovered in log(), within=15, what="the recovery")
            assert await source_up() == 1
            # Watched again: a change made now is served, with no restart.
            await cluster.create_site("docs", "later", "later.example.test", port=backend.port)
            await eventually(lambda: served("later.example.test"), within=15, what="a site made after")
            assert log().count(warning) == 1
        finally:
            await asyncio.to_thread(envoy.stop)
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


# -- 4. misbehaving xDS clients --------------------------------------------------------------


def long_domain(name: str) -> str:
    """A domain of about 200 characters: large route configurations from a few thousand sites."""
    return f"{name}.{'a' * 60}.{'b' * 60}.{'c' * 60}.example.test"


async def test_a_client_that_never_reads_holds_up_nobody(observed: Observed, backends: Backends) -> None:
    gateway = observed.gateway
    web = backends("web")
    for part in range(30):  # 3,000 sites: each state-of-the-world routes response is ~0.75 MB
        docs = (
            manifest(f"s{i}", long_domain(f"s{i}"), "web", web.port)
            for i in range(part * 100, part * 100 + 100)
        )
        gateway.write(f"part-{part}.yaml", "---\n".join(docs))
    await asyncio.to_thread(gateway.wait_backend, long_domain("s2999"), "web", 30)
    xds_port = gateway.control_plane.xds_port
    stuck = await AdsClient(xds_port, "never-reads", read=False).start()
    good = Subscriber(xds_port, "reads")
    await good.start()
    try:
        await eventually(lambda: long_domain("s2999") in good.domains, what="the good client's routes")
        rss, received = 0, 0
        for n in range(50):  # each change owes the stuck client another routes response
            if n == 10:  # past the first changes, from which memory settles whatever the clients
                rss, received = rss_bytes(gateway.control_plane.pid), good.received
            domain = long_domain(f"new-{n}")
            gateway.write(f"new-{n}.yaml", manifest(f"new-{n}", domain, "web", web.port))
            await good.routed(domain)
            await asyncio.to_thread(gateway.wait_backend, domain, "web")  # and at Envoy
        # What the stuck client was owed is not held for it: the server works from the latest
        # snapshot, and its memory grew by much less than it would have had to buffer.
        owed = good.received - received
        grown = rss_bytes(gateway.control_plane.pid) - rss
        assert owed > 25e6
        assert grown < owed / 2, f"owed {owed / 1e6:.1f} MB, the server grew by {grown / 1e6:.1f} MB"
        assert observed.answer("/healthz") == 200
        assert not stuck.responses  # it never read a thing

        # Stopping does not wait on the stuck stream either.
        assert gateway.control_plane.process is not None
        gateway.control_plane.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(gateway.control_plane.process.wait, 10)
        assert code == 0
        assert time.monotonic() - signalled < 5
    finally:
        await good.close()
        await stuck.close()


def request(type_url: str, *, node: bool = False, **fields: Any) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(type_url=type_url, **fields)
    if node:
        message.node.CopyFrom(base_pb2.Node(id="garbage", cluster="garbage"))
    return message


def delta_request(type_url: str, *, node: bool = False, **fields: Any) -> discovery_pb2.DeltaDiscoveryRequest:
    message = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **fields)
    if node:
        message.node.CopyFrom(base_pb2.Node(id="garbage", cluster="garbage"))
    return message


REJECTED = status_pb2.Status(code=3, message="rejected")

# What each misbehaving stream sends, then it hangs up: method, then the messages (bytes are
# sent as they are: not a DiscoveryRequest at all).
GARBAGE: dict[str, tuple[str, list[Any]]] = {
    "unknown types": (
        SOTW_METHOD,
        [request(UNKNOWN_TYPE, node=True, resource_names=["x"]), request("not even a type URL")],
    ),
    "stale and unknown nonces": (
        SOTW_METHOD,
        [
            request(CLUSTER_TYPE, node=True),
            request(CLUSTER_TYPE, version_info="v-old", response_nonce="999999"),
            request(LISTENER_TYPE, response_nonce="not-a-nonce"),
        ],
    ),
    "a NACK of a version never sent": (
        SOTW_METHOD,
        [
            request(
                ROUTE_TYPE, node=True, version_info="never-sent", response_nonce="1", error_detail=REJECTED
            )
        ],
    ),
    "no node at all": (SOTW_METHOD, [request(CLUSTER_TYPE), request(LISTENER_TYPE)]),
    "delta garbage": (
        DELTA_METHOD,
        [
            delta_request(UNKNOWN_TYPE, node=True, resource_names_subscribe=["x"]),
            delta_request(CLUSTER_TYPE, response_nonce="42", error_detail=REJECTED),
            delta_request(
                ROUTE_TYPE,
                resource_names_subscribe=["http", "nope"],
                initial_resource_versions={"nope": "v9"},
            ),
            delta_request(ROUTE_TYPE, resource_names_unsubscribe=["never-subscribed"]),
        ],
    ),
    "bytes that are no request": (SOTW_METHOD, [b"\xff\xff\xff\xff not protobuf"]),
    "delta bytes that are no request": (DELTA_METHOD, [b"\x0a\xff\xff\xff\x0f"]),
    "nothing, and a hang-up": (SOTW_METHOD, []),
}


def _as_bytes(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


async def misbehave(port: int, method: str, messages: list[Any], *, cancel: bool = False) -> None:
    """Open one stream on a channel of its own, send `messages`, then hang up (or cancel at once)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(method, request_serializer=_as_bytes, response_deserializer=bytes)

        async def requests() -> AsyncIterator[Any]:
            for message in messages:
                yield message
            await asyncio.sleep(0.05)  # let the server read them before the half-close

        stream = call(requests())
        if cancel:
            stream.cancel()
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async with asyncio.timeout(5):
                async for _ in stream:  # whatever the server answers, until it ends the stream
                    pass


async def test_clients_sending_garbage_disturb_nobody(observed: Observed, backends: Backends) -> None:
    gateway = observed.gateway
    web = backends("web")
    gateway.write("site-0.yaml", manifest("site-0", "site-0.example.test", "web", web.port))
    await asyncio.to_thread(gateway.wait_backend, "site-0.example.test", "web")
    port = gateway.control_plane.xds_port
    good = Subscriber(port, "reads")
    await good.start()
    try:
        await eventually(lambda: "site-0.example.test" in good.domains, what="the good client's routes")
        for n in range(1, 4):  # rounds of every kind of garbage at once, then a change
            bad = [misbehave(port, method, messages) for method, messages in GARBAGE.values()]
            bad += [
                misbehave(port, SOTW_METHOD, [request(CLUSTER_TYPE, node=True)], cancel=True)
                for _ in range(3)
            ]
            await asyncio.wait_for(asyncio.gather(*bad), 20)
            domain = f"site-{n}.example.test"
            gateway.write(f"site-{n}.yaml", manifest(f"site-{n}", domain, "web", web.port))
            await good.routed(domain)
            await asyncio.to_thread(gateway.wait_backend, domain, "web")  # and at Envoy
        assert good.error is None
        assert observed.answer("/healthz") == 200
        assert observed.answer("/readyz") == 200
        # Every stream the garbage opened is closed: only Envoy's and the good client's remain.
        log = gateway.control_plane.log
        await eventually(
            lambda: log().count(" opened (") - log().count(") closed\n") == 2, what="every bad stream closed"
        )
        assert "Traceback" not in log(), log()
    finally:
        await good.close()
