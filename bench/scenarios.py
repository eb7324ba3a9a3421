"""End-to-end scenarios with real processes: ours (change, load), nginx, Envoy fed by files, memory.

The three systems take the same changes through one interface (`System`), so a one-site
change and the load test mean the same thing for each: the timer starts when the change is
handed over (our manifest file, nginx's configuration, Envoy's files: generated beforehand,
then written) and stops at the first 200 from the gateway for the new site, polled with
short-timeout GETs on new connections every ~2 ms.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from snapshot.builder import BuildOptions
from xds_server.local.gateway import LocalEnvoy, local_bootstrap, stop_process

from .baselines import NGINX_MISSING, FileFedEnvoy, Nginx, nginx_binary
from .harness import (
    REPO_ROOT,
    Backends,
    LoadGenerator,
    NotMeasured,
    Reply,
    ServeProcess,
    free_port,
    is_ok,
    log,
    manifest,
    pick,
    rss_mb,
    served_by,
    site_domain,
    site_file,
    site_object,
    summarize,
    time_until,
    wait_served,
    write_atomic,
    write_sites,
)

Result = dict[str, Any]

CHANGE_TIMEOUT = 30.0  # a change not served within this is counted as timed out
BACKENDS = 4
LOAD_HOSTS = 32


def counts(quick: bool) -> tuple[int, int]:
    """(one-site changes timed, changes applied under load)."""
    return (5, 20) if quick else (20, 100)


def budget(quick: bool) -> float:
    """Seconds a series of changes may take; a slow system stops early (after 3 changes at
    least) and the figures say how many changes were made."""
    return 60.0 if quick else 600.0


MIN_CHANGES = 3


def startup_timeout(size: int) -> float:
    return 60 + size / 100


class System(Protocol):
    """A gateway that takes site changes: ours, nginx, or Envoy fed by files."""

    http_port: int

    def add_site(self, i: int, port: int) -> float:
        """Make the change and return the perf_counter at which it was handed over."""
        ...

    def move_site(self, i: int, port: int) -> float:
        """Point site `i` at another backend port; the handover time as in `add_site`."""
        ...


class OursSystem:
    """Our control plane: a change is one manifest file, written atomically."""

    def __init__(self, sites_dir: Path, http_port: int) -> None:
        self.sites_dir = sites_dir
        self.http_port = http_port

    def add_site(self, i: int, port: int) -> float:
        text = manifest(i, port)
        started = time.perf_counter()
        write_atomic(site_file(self.sites_dir, i), text)
        return started

    move_site = add_site


class NginxSystem:
    """nginx: a change rewrites the whole configuration and runs `nginx -s reload`."""

    def __init__(self, nginx: Nginx, sites: dict[int, int]) -> None:
        self.nginx = nginx
        self.sites = sites
        self.http_port = nginx.http_port

    def add_site(self, i: int, port: int) -> float:
        self.sites[i] = port
        text = self.nginx.render(self.sites)
        started = time.perf_counter()
        self.nginx.write_config(text)
        self.nginx.reload()
        return started

    move_site = add_site


class FilesSystem:
    """Envoy fed by files: a change rewrites the clusters file and the listener file."""

    def __init__(self, envoy: FileFedEnvoy, http_port: int, sites: dict[int, int]) -> None:
        self.envoy = envoy
        self.http_port = http_port
        self.sites = sites

    def add_site(self, i: int, port: int) -> float:
        self.sites[i] = port
        self.envoy.add(site_object(i, port))
        cds, lds = self.envoy.render()
        started = time.perf_counter()
        self.envoy.write(cds, lds)
        return started

    move_site = add_site


def measure_changes(
    system: System,
    backends: Backends,
    first: int,
    count: int,
    seconds: float,
    moves: Sequence[int] = (),
) -> dict[str, Any]:
    """Add `count` sites one by one (within `seconds`); the time until each answers 200.

    With `moves`, the changes move those existing sites instead, each to the next backend,
    and the time is until that backend answers."""
    samples: list[float] = []
    timeouts = 0
    deadline = time.monotonic() + seconds
    made = 0
    for k in range(count):
        if k >= MIN_CHANGES and time.monotonic() > deadline:
            log(f"stopping after {k} changes: the series took more than {seconds:.0f} s")
            break
        made += 1
        accept: Callable[[Reply], bool] = is_ok
        if moves:
            i = moves[k % len(moves)]
            port = backends.port_for(i + 1)
            started = system.move_site(i, port)
            accept = served_by(backends.name_of_port(port))
        else:
            i = first + k
            started = system.add_site(i, backends.port_for(i))
        took = time_until(system.http_port, site_domain(i), accept, started, CHANGE_TIMEOUT)
        if took is None:
            timeouts += 1
        else:
            samples.append(took * 1000)
        time.sleep(0.02)
    return {**summarize(samples), "timeouts": timeouts, "changes": made, "planned": count}


def measure_load(
    system: System, backends: Backends, size: int, first: int, count: int, quick: bool
) -> dict[str, Any]:
    """Keep-alive load on existing sites while `count` changes go through, half of them adds and
    half a move of a loaded site to another backend; each change waits to be served."""
    loaded = pick(range(size), min(size, LOAD_HOSTS))
    hosts = [site_domain(i) for i in loaded]
    port_of = {i: backends.port_for(i) for i in loaded}
    generator = LoadGenerator(system.http_port, hosts, threads=3, max_seconds=900 if not quick else 120)
    samples: list[float] = []
    timeouts = 0
    made = 0
    deadline = time.monotonic() + budget(quick)
    generator.start()
    try:
        time.sleep(0.3)
        for c in range(count):
            if c >= MIN_CHANGES and time.monotonic() > deadline:
                log(f"load: stopping after {c} changes: the series took more than {budget(quick):.0f} s")
                break
            made += 1
            accept: Callable[[Reply], bool]
            if c % 2 == 0:
                i = first + c // 2
                port = backends.port_for(i)
                started = system.add_site(i, port)
                accept = is_ok
            else:
                i = loaded[(c // 2) % len(loaded)]
                current = backends.ports.index(port_of[i])
                port = backends.ports[(current + 1) % len(backends.ports)]
                port_of[i] = port
                started = system.move_site(i, port)
                accept = served_by(backends.name_of_port(port))
            took = time_until(system.http_port, site_domain(i), accept, started, CHANGE_TIMEOUT)
            if took is None:
                timeouts += 1
            else:
                samples.append(took * 1000)
        time.sleep(0.3)
    finally:
        load = generator.stop()
    if load.failed:
        log(f"load: {load.failed} of {load.sent} requests failed: {dict(load.errors)}")
    return {
        **load.as_dict(),
        "changes": made,
        "planned": count,
        "adds": (made + 1) // 2,
        "moves": made // 2,
        "change_timeouts": timeouts,
        "change_ms": summarize(samples),
    }


def _options(http_port: int) -> BuildOptions:
    return BuildOptions(http_port=http_port, listen_address="127.0.0.1", backend_host_template="127.0.0.1")


# -- ours ----------------------------------------------------------------------------------


@dataclass
class Ours:
    """Our control plane serving a folder of sites to a real Envoy, with sample backends."""

    backends: Backends
    sites_dir: Path
    http_port: int
    plane: ServeProcess
    envoy: LocalEnvoy
    api_type: str

    def envoy_mb(self) -> float | None:
        """Envoy's RSS in MiB (None once it is gone)."""
        return rss_mb(self.envoy.process.pid) if self.envoy.process else None


def start_ours(
    stack: ExitStack, workdir: Path, size: int, backend_count: int, extra: Sequence[str] = ()
) -> Ours:
    """Start it with `size` sites (`extra`: more flags of `serve`); return once Envoy serves
    the last of them."""
    backends = Backends(backend_count)
    stack.callback(backends.stop)
    sites_dir = workdir / "sites"
    write_sites(sites_dir, {i: backends.port_for(i) for i in range(size)})
    http_port, admin_port = free_port(), free_port()
    plane = ServeProcess(sites_dir, workdir, http_port, extra)
    stack.callback(plane.stop)
    plane.start()
    bootstrap = local_bootstrap(plane.xds_port, admin_port)
    envoy = LocalEnvoy(bootstrap, workdir / "envoy")
    stack.callback(envoy.stop)
    envoy.start(timeout=60)
    wait_served(http_port, site_domain(size - 1), startup_timeout(size), "Envoy fed by our control plane")
    api_type = str(bootstrap["dynamic_resources"]["ads_config"].get("api_type", "?"))
    return Ours(backends, sites_dir, http_port, plane, envoy, api_type)


def run_ours(size: int, quick: bool, workdir: Path, do_change: bool, do_load: bool) -> Result:
    changes, load_changes = counts(quick)
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    with ExitStack() as stack:
        log(f"ours @{size}: starting the control plane and Envoy")
        started = time.perf_counter()
        ours = start_ours(stack, workdir, size, BACKENDS)
        notes.append(
            f"ours @{size}: Envoy with envoy/bootstrap-local.yaml ({ours.api_type}); all {size} sites served "
            f"{time.perf_counter() - started:.1f} s after start"
        )
        system = OursSystem(ours.sites_dir, ours.http_port)
        next_index = size
        if do_change:
            log(f"ours @{size}: {changes} one-site changes")
            result = measure_changes(system, ours.backends, next_index, changes, budget(quick))
            next_index += changes
            figures.append(
                {
                    "figure": "change",
                    "size": size,
                    **result,
                    "rss_control_plane_mb": ours.plane.rss_mb(),
                    "rss_envoy_mb": ours.envoy_mb(),
                    "api_type": ours.api_type,
                }
            )
        if do_load:
            log(f"ours @{size}: {load_changes} changes under keep-alive load")
            result = measure_load(system, ours.backends, size, next_index, load_changes, quick)
            figures.append(
                {
                    "figure": "load",
                    "size": size,
                    **result,
                    "rss_control_plane_mb": ours.plane.rss_mb(),
                    "rss_envoy_mb": ours.envoy_mb(),
                }
            )
        if not ours.plane.alive():
            raise RuntimeError("the control plane exited during the scenario")
    return {"figures": figures, "notes": notes}


def baseline_figures(
    name: str,
    system: System,
    backends: Backends,
    size: int,
    quick: bool,
    do_load: bool,
    how: tuple[str, str],
    rss: Callable[[], dict[str, Any]],
) -> list[dict[str, Any]]:
    """A baseline's figures: one-site changes, then changes under keep-alive load (`how` says
    how each kind of change is made, for the log); `rss` gives the memory columns."""
    changes, load_changes = counts(quick)
    log(f"{name} @{size}: {changes} one-site changes ({how[0]})")
    result = measure_changes(system, backends, size, changes, budget(quick))
    figures = [{"figure": "change", "size": size, **result, **rss()}]
    if do_load:
        log(f"{name} @{size}: {load_changes} {how[1]} under keep-alive load")
        result = measure_load(system, backends, size, size + changes, load_changes, quick)
        figures.append({"figure": "load", "size": size, **result, **rss()})
    return figures


# -- nginx ---------------------------------------------------------------------------------


def run_nginx(size: int, quick: bool, workdir: Path, do_load: bool = True) -> Result:
    binary = nginx_binary()
    if binary is None:
        raise NotMeasured(NGINX_MISSING)
    with ExitStack() as stack:
        backends = Backends(BACKENDS)
        stack.callback(backends.stop)
        http_port = free_port()
        nginx = Nginx(binary, workdir / "nginx", http_port)
        sites = {i: backends.port_for(i) for i in range(size)}
        nginx.write_config(nginx.render(sites))
        stack.callback(nginx.stop)
        log(f"nginx @{size}: starting")
        nginx.start()
        wait_served(http_port, site_domain(size - 1), startup_timeout(size), "nginx")
        figures = baseline_figures(
            "nginx",
            NginxSystem(nginx, sites),
            backends,
            size,
            quick,
            do_load,
            ("rewrite + reload", "reloads"),
            lambda: {"rss_nginx_mb": nginx.rss_mb()},
        )
    return {
        "figures": figures,
        "notes": [f"nginx @{size}: {binary}, 1 worker, reload with `nginx -s reload`"],
    }


# -- Envoy fed by files --------------------------------------------------------------------


def run_envoy_files(size: int, quick: bool, workdir: Path, do_load: bool = True) -> Result:
    notes: list[str] = []
    with ExitStack() as stack:
        backends = Backends(BACKENDS)
        stack.callback(backends.stop)
        http_port, admin_port = free_port(), free_port()
        envoy = FileFedEnvoy(workdir / "files", http_port, admin_port, _options(http_port))
        sites = {i: backends.port_for(i) for i in range(size)}
        envoy.load(site_object(i, p) for i, p in sites.items())
        envoy.write(*envoy.render())
        stack.callback(envoy.stop)
        log(f"envoy-files @{size}: starting Envoy on files")
        envoy.start()
        wait_served(http_port, site_domain(size - 1), startup_timeout(size), "Envoy fed by files")
        figures = baseline_figures(
            "envoy-files",
            FilesSystem(envoy, http_port, sites),
            backends,
            size,
            quick,
            do_load,
            ("rewrite both files", "file changes"),
            lambda: {"rss_envoy_mb": envoy.rss_mb()},
        )
        same = envoy.matches_full_build(site_object(i, p) for i, p in sites.items())
        notes.append(
            f"envoy-files @{size}: the merged files "
            + ("equal" if same else "DIFFER FROM")
            + " a full build of the final sites by our builder"
        )
    return {"figures": figures, "notes": notes}


# -- memory --------------------------------------------------------------------------------


def start_stream_client(
    xds_port: int, streams: int, prefix: str, *, delta: bool = False
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "bench.fanout_client",
        "--port",
        str(xds_port),
        "--streams",
        str(streams),
        "--prefix",
        prefix,
    ]
    if delta:
        cmd.append("--delta")
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr, text=True
    )


def wait_ready(process: subprocess.Popen[str], timeout: float) -> None:
    """Wait for the client's READY line (or its ERROR line, or its exit)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the stream client was not ready within {timeout:.0f} s")
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 1.0))
        if ready:
            line = process.stdout.readline()
            if line.startswith("READY"):
                return
            if line.startswith("ERROR") or not line:
                raise RuntimeError(f"the stream client failed: {line.strip() or 'it exited'}")


def close_client(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None and not process.stdin.closed:
        with suppress(OSError):
            process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        stop_process(process)


def run_memory(quick: bool, workdir: Path) -> Result:
    n_plane, streams, n_envoy = (1000, 10, 1000) if quick else (10_000, 100, 20_000)
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    with ExitStack() as stack:
        log(f"memory: control plane with {n_plane} sites, Envoy and {streams} more ADS streams")
        ours = start_ours(stack, workdir, n_plane, 2)
        plane = ours.plane
        client = start_stream_client(plane.xds_port, streams, "memory")
        stack.callback(close_client, client)
        wait_ready(client, 120 + n_plane / 100)
        time.sleep(1.0)
        figures.append(
            {
                "figure": "memory-plane",
                "size": n_plane,
                "streams": streams + 1,
                "mb": plane.rss_mb(),
                "envoy_mb": ours.envoy_mb(),
            }
        )
        if n_envoy > n_plane:
            log(f"memory: growing to {n_envoy} sites")
            write_sites(ours.sites_dir, {i: ours.backends.port_for(i) for i in range(n_plane, n_envoy)})
            wait_served(
                ours.http_port, site_domain(n_envoy - 1), startup_timeout(n_envoy), "Envoy at the larger size"
            )
            time.sleep(1.0)
        figures.append(
            {
                "figure": "memory-envoy",
                "size": n_envoy,
                "mb": ours.envoy_mb(),
                "plane_mb": plane.rss_mb(),
                "api_type": ours.api_type,
            }
        )
        notes.append(
            f"memory: control plane RSS counted with {streams} ADS client streams and the Envoy connected"
        )
        if not plane.alive():
            raise RuntimeError("the control plane exited during the scenario")
    return {"figures": figures, "notes": notes}
