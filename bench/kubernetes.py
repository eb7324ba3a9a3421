"""The `kubernetes` scenario: the control plane in Kubernetes mode, at 10,000 StaticSites.

kmock's Kubernetes API emulator runs in this process (a thread with its own event loop) and
holds the StaticSites and their Services, one Service per site, in 100 namespaces, as a
cluster would before the control plane starts. `serve --kubernetes` runs as a process of its
own against it (its memory is its own), a real Envoy on its xDS port. In order:

1. first install: start -> every site answers 200 through Envoy; start -> every status
   written (read from the emulator's store), and the rate of those writes;
2. one new site created as `kubectl apply` creates it (a GET that finds nothing, then a POST)
   -> 200 through Envoy; and the control plane's memory;
3. a restart over correct statuses: the replica stopped, a new one started; the writes it
   makes once it leads and has compared every site (its `staticsite_xds_status_pending` is 0);
4. failover: a second replica beside; the leader killed with SIGKILL and a site changed at
   once; the time until the survivor has written that site's status.

The emulator answers every request of the control plane, so its cost is in the figures; it
finds objects by key and matches requests without a scan (tests/support/emulator.py), so
that cost does not grow with the number of objects it holds.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from watcher.k8s_api import SERVICES
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import LocalEnvoy, local_bootstrap

from .harness import (
    REPO_ROOT,
    Backends,
    NotMeasured,
    answering,
    free_port,
    is_ok,
    log,
    pick,
    rss_mb,
    service_name,
    site_domain,
    site_name,
    summarize,
    time_until,
    wait_for,
)

if str(REPO_ROOT / "tests") not in sys.path:  # the emulator and its client are the tests' own
    sys.path.insert(0, str(REPO_ROOT / "tests"))

T = TypeVar("T")
Result = dict[str, Any]

IDENTITIES = ("cp-a", "cp-b", "cp-c")  # the first install, the restart, the standby
CHANGE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Sizes:
    sites: int
    namespaces: int
    applies: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(200, 10, 5) if quick else cls(10_000, 100, 30)

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.namespaces:03d}"

    def domain(self, i: int) -> str:
        return site_domain(i, self.namespace(i))


def startup_timeout(sites: int) -> float:
    return 60 + sites / 50


# -- the emulator, in a thread ---------------------------------------------------------------


class Emulator:
    """kmock's emulator serving on 127.0.0.1 from an event loop of its own, in a thread; `call`
    runs a coroutine on that loop (the test support's `Cluster` is its client there)."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=self._main, name="emulator", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.cluster: Any = None

    def start(self, timeout: float = 30.0) -> Emulator:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the Kubernetes emulator did not start")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error}")
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import support.emulator  # noqa: F401  (paged listings, lookups by key; first)
        from kmock._internal import apps
        from kmock._internal.k8s import KubernetesEmulator
        from support.kubernetes import Cluster, declare_resources, put_default_group

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with KubernetesEmulator() as kmock, apps.Server(kmock):
            declare_resources(kmock)
            self.cluster = Cluster(kmock)
            put_default_group(self.cluster)
            self._ready.set()
            await self._stop.wait()
            self.cluster.api.close()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        assert self._loop is not None

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def run(self, function: Callable[[], T], timeout: float = 120.0) -> T:
        """`function` on the emulator's loop (what reads or writes its store directly)."""

        async def wrapped() -> T:
            return function()

        return self.call(wrapped, timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


def seed(cluster: Any, sizes: Sizes, ports: Sequence[int]) -> None:
    """The namespaces, one Service per site and the sites, stored with no watch event: there
    before the control plane starts."""
    for n in range(sizes.namespaces):
        cluster.put_namespace_silently(sizes.namespace(n))
    from support.kubernetes import site_body

    for i in range(sizes.sites):
        namespace, port = sizes.namespace(i), ports[i % len(ports)]
        cluster.put_service_silently(namespace, service_name(i), [port])
        cluster.put_silently(
            site_body(namespace, site_name(i), sizes.domain(i), service=service_name(i), port=port)
        )


def quiet_heap() -> None:
    """Sweep this process's heap once and leave what survives out of later collections.

    The emulator's store (tens of thousands of objects, their histories and the Events) lives
    in this process for the whole run; the collector's full sweeps over it paused the
    emulator's answers for up to a second, which a real API server, in a process of its own,
    does not put on the control plane's figures.
    """
    gc.collect()
    gc.freeze()


def shows_provisioned(body: Mapping[str, Any] | None) -> bool:
    """Whether a StaticSite's status says Provisioned for its current generation."""
    status = (body or {}).get("status") or {}
    generation = ((body or {}).get("metadata") or {}).get("generation")
    return bool(status.get("phase") == "Provisioned" and status.get("observedGeneration") == generation)


def provisioned(cluster: Any) -> int:
    """StaticSites whose status says Provisioned for their current generation."""
    return sum(map(shows_provisioned, cluster.stored_sites().values()))


def writes_by(cluster: Any, identity: str) -> tuple[int, int]:
    """The status patches and Events the emulator received from the replica `identity`."""
    from support.kubernetes import is_event_post, is_status_write

    requests = cluster.requests_by(f"staticsite-xds/{identity}")
    return sum(map(is_status_write, requests)), sum(map(is_event_post, requests))


# -- the control plane ---------------------------------------------------------------------


class Replica:
    """`serve --kubernetes` as a process, with its metrics on a port of its own."""

    def __init__(self, identity: str, workdir: Path, kubeconfig: Path, xds_port: int, http_port: int) -> None:
        from support.kubernetes import LEASE_NAMESPACE, no_cluster_env

        self.identity = identity
        self.metrics_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = ControlPlaneProcess(
            None,
            workdir,
            xds_port,
            http_port,
            log_level="warning",
            extra=[
                "--kubernetes",
                "--identity",
                identity,
                "--lease-namespace",
                LEASE_NAMESPACE,
                "--metrics-address",
                f"127.0.0.1:{self.metrics_port}",
            ],
            env=no_cluster_env(kubeconfig, workdir),
        )

    def start(self) -> Replica:
        self.process.start(timeout=60)
        return self

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Its metrics now, by name and labels (empty if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def writes(self) -> float:
        """Status patches and Events it counted."""
        found = self.metrics()
        return sum(
            found.get(("staticsite_xds_status_writes_total", (("kind", k),)), 0.0)
            for k in ("status", "event")
        )

    def judged_all(self) -> bool:
        """It leads and has compared every site of its first snapshot with its status (and
        written what differed): the statuses are told of a build before it is published."""
        found = self.metrics()
        return (
            found.get(("staticsite_xds_snapshot_publishes_total", ()), 0.0) >= 1
            and found.get(("staticsite_xds_leader", ()), 0.0) == 1
            and found.get(("staticsite_xds_status_pending", ()), 1.0) == 0
        )

    def rss(self) -> tuple[float | None, float | None]:
        """(RSS, peak RSS) in MiB."""
        pid = self.process.pid
        return rss_mb(pid), rss_mb(pid, "VmHWM")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.stop(sig)


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled(pid: int, timeout: float) -> None:
    """Wait until a process uses under a tenth of a core for a second: done with its start."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - before < 0.1:
            return
        before = now
    raise TimeoutError(f"process {pid} still busy after {timeout:.0f} s")


# -- probes --------------------------------------------------------------------------------


def served_after(
    port: int, envoy: LocalEnvoy, hosts: Sequence[str], started: float, timeout: float
) -> float | None:
    """Seconds from `started` until Envoy holds a cluster for every host and a spread sample
    of them answers 200; None if not within `timeout`."""
    deadline = started + timeout
    try:
        for host in pick(hosts, 20):
            remaining = max(0.0, deadline - time.perf_counter())
            if time_until(port, host, is_ok, started, remaining, 0.02) is None:
                raise TimeoutError(host)
        while envoy.stat("cluster_manager.active_clusters") < len(hosts):
            if time.perf_counter() > deadline:
                raise TimeoutError("clusters")
            time.sleep(0.05)
    except TimeoutError:
        return None
    return time.perf_counter() - started


@dataclass
class StatusClock:
    """Polls, in a thread, the control plane's own count of its status writes, and once it
    has made as many as there are sites, how many the emulator's store shows Provisioned for
    their generation: when all were.

    Reading every stored site takes the emulator a third of a second at 10,000; read twice a
    second from the start, it would slow the very writes being timed. A first install needs
    one write per site, so the store is read only once that many are made.
    """

    emulator: Emulator
    replica: Replica
    expected: int
    started: float
    timeout: float
    done_s: float | None = None
    shown: int = 0
    first_write_s: float | None = None
    writes: float = 0.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> StatusClock:
        self._thread = threading.Thread(target=self._run, name="status-clock", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = self.started + self.timeout
        while not self._stop.is_set() and time.perf_counter() < deadline:
            writes = self.replica.metric("staticsite_xds_status_writes_total", kind="status") or 0.0
            now = time.perf_counter() - self.started
            if writes and self.first_write_s is None:
                self.first_write_s = now
            self.writes = writes
            if writes >= self.expected:
                self.shown = self.emulator.run(lambda: provisioned(self.emulator.cluster))
                if self.shown >= self.expected:
                    self.done_s = now
                    return
            self._stop.wait(0.2)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(self.timeout + 10)

    def stop(self) -> None:
        self._stop.set()
        self.wait()


# -- the scenario --------------------------------------------------------------------------


def run_kubernetes(quick: bool, workdir: Path) -> Result:
    try:
        import kmock  # noqa: F401
    except ImportError as exc:  # the emulator comes with the test dependencies
        raise NotMeasured(f"kmock is not installed ({exc}); `pip install -e .[test]`") from exc
    sizes = Sizes.of(quick)
    n = sizes.sites
    notes: list[str] = []
    figure: dict[str, Any] = {"figure": "kubernetes", "size": n, "namespaces": sizes.namespaces}
    with ExitStack() as stack:
        backends = Backends(4)
        stack.callback(backends.stop)
        emulator = Emulator().start()
        stack.callback(emulator.stop)
        log(f"kubernetes @{n}: storing {n} StaticSites and Services in {sizes.namespaces} namespaces")
        emulator.run(lambda: seed(emulator.cluster, sizes, backends.ports))
        quiet_heap()
        kubeconfig = emulator.cluster.write_kubeconfig(workdir / "kubeconfig")
        domains = [sizes.domain(i) for i in range(n)]
        xds_port, http_port, admin_port = free_port(), free_port(), free_port()

        # 1. First install.
        log(f"kubernetes @{n}: first install")
        started = time.perf_counter()
        first = Replica(IDENTITIES[0], workdir / IDENTITIES[0], kubeconfig, xds_port, http_port).start()
        stack.callback(first.stop)
        clock = StatusClock(emulator, first, n, started, startup_timeout(n) + n / 100).start()
        stack.callback(clock.stop)
        envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), workdir / "envoy")
        stack.callback(envoy.stop)
        envoy.start(timeout=60)
        served_s = served_after(http_port, envoy, domains, started, startup_timeout(n))
        clock.wait()
        patches, events = emulator.run(lambda: writes_by(emulator.cluster, first.identity))
        # Swept once the statuses are written: the sites' requests go through this process's
        # sample backends, beside the emulator, and would slow its answers to the writes timed.
        figure.update(served_s=served_s, served=answering(http_port, domains, 60))
        figure.update(
            status_s=clock.done_s,
            statuses_shown=clock.shown,
            status_patches=patches,
            status_events=events,
            status_rate=patches / (clock.done_s - clock.first_write_s)
            if clock.done_s and clock.first_write_s is not None and clock.done_s > clock.first_write_s
            else None,
        )
        log(f"kubernetes @{n}: all served after {served_s} s, every status after {clock.done_s} s")

        # 2. New sites, created as kubectl apply creates them.
        log(f"kubernetes @{n}: {sizes.applies} new sites created through the API")
        quiet_heap()  # the statuses and Events the first install stored
        samples: list[float] = []
        answers: list[float] = []  # of each, the time the emulator took to answer the apply
        timeouts = 0
        for k in range(sizes.applies):
            i = n + k
            port = backends.port_for(i)
            emulator.call(functools.partial(_create_service, emulator.cluster, sizes, i, port))
            time.sleep(0.2)  # the Service's own watch event first, as with a Service applied earlier
            handed = time.perf_counter()
            emulator.call(functools.partial(_apply_site, emulator.cluster, sizes, i, port))
            answers.append((time.perf_counter() - handed) * 1000)
            took = time_until(http_port, sizes.domain(i), is_ok, handed, CHANGE_TIMEOUT)
            if took is None:
                timeouts += 1
            else:
                samples.append(took * 1000)
        figure["apply_ms"] = {**summarize(samples), "timeouts": timeouts}
        figure["apply_api_ms"] = summarize(answers)
        rss, peak = first.rss()
        figure.update(rss_mb=rss, peak_rss_mb=peak)

        # 3. A restart over correct statuses.
        log(f"kubernetes @{n}: restart")
        first.stop()
        restarted = time.perf_counter()
        second = Replica(IDENTITIES[1], workdir / IDENTITIES[1], kubeconfig, xds_port, http_port).start()
        stack.callback(second.stop)
        judge = "the restarted replica to compare every site"
        wait_for(second.judged_all, startup_timeout(n), judge, 0.1)
        figure["restart_judged_s"] = _since(restarted)
        time.sleep(2.0)  # anything it would still write
        patches, events = emulator.run(lambda: writes_by(emulator.cluster, second.identity))
        figure.update(restart_patches=patches, restart_events=events, restart_counted=second.writes())

        # 4. Failover: a standby beside, once done with its start; the leader killed; a site
        # moved to another backend at once.
        log(f"kubernetes @{n}: failover")
        standby = Replica(
            IDENTITIES[2], workdir / IDENTITIES[2], kubeconfig, free_port(), free_port()
        ).start()
        stack.callback(standby.stop)
        wait_for(
            lambda: (standby.metric("staticsite_xds_snapshot_publishes_total") or 0) >= 1,
            startup_timeout(n),
            "the standby's first snapshot",
            0.1,
        )
        settled(standby.process.pid, startup_timeout(n))  # a standby that has been up a while
        killed = time.perf_counter()
        second.stop(signal.SIGKILL)
        emulator.call(functools.partial(_move_site, emulator.cluster, sizes, 0, sizes.namespaces))
        wait_for(lambda: standby.metric("staticsite_xds_leader") == 1, 60, "the standby to lead", 0.05)
        figure["failover_lease_s"] = _since(killed)
        wait_for(
            lambda: emulator.call(functools.partial(_shows_moved, emulator.cluster, sizes, 0)),
            60,
            "the moved site's status",
            0.05,
        )
        figure["failover_status_s"] = _since(killed)
        if not standby.process.alive():
            raise RuntimeError("the standby control plane exited during the scenario")
    notes.append(
        f"kubernetes @{n}: kmock's emulator in the benchmark's process, {sizes.namespaces} namespaces, one "
        "Service per site; `serve --kubernetes` with its default --status-qps 200 and --status-burst 400"
    )
    return {"figures": [figure], "notes": notes}


def _since(started: float) -> float:
    return time.perf_counter() - started


async def _create_service(cluster: Any, sizes: Sizes, i: int, port: int) -> None:
    await cluster.create_service(sizes.namespace(i), service_name(i), [port])


async def _apply_site(cluster: Any, sizes: Sizes, i: int, port: int) -> None:
    """What `kubectl apply` sends for an object that does not exist yet: a GET, then a POST."""
    namespace = sizes.namespace(i)
    if await cluster.site(namespace, site_name(i)) is not None:
        raise RuntimeError(f"site {namespace}/{site_name(i)} already exists")
    await cluster.create_site(namespace, site_name(i), sizes.domain(i), service=service_name(i), port=port)


async def _move_site(cluster: Any, sizes: Sizes, i: int, other: int) -> None:
    """Site `i` to the backend of site `other` of its namespace (its next generation)."""
    namespace = sizes.namespace(i)
    service = await cluster.api.get(SERVICES, namespace, service_name(other))
    port = service["spec"]["ports"][0]["port"]
    backend = {"serviceName": service_name(other), "servicePort": port}
    await cluster.update_spec(namespace, site_name(i), {"backend": backend})


async def _shows_moved(cluster: Any, sizes: Sizes, i: int) -> bool:
    """Whether site `i`'s status says Provisioned for its second generation (the move)."""
    body = await cluster.site(sizes.namespace(i), site_name(i))
    return bool(body and body["metadata"].get("generation") == 2 and shows_provisioned(body))
