"""Building blocks of the scenarios: ports, processes, sites on disk, HTTP probes, load, statistics.

Everything binds 127.0.0.1 only, every wait is bounded in time, and every process started
here has a `stop` that the scenarios call from a `finally` (through an ExitStack).
"""

from __future__ import annotations

import http.client
import math
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import StreamRequestHandler
from typing import Any, TypeVar

from snapshot.model import API_VERSION, StaticSite, parse_site
from xds_server.local.control_plane import ControlPlaneProcess

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"


class NotMeasured(Exception):
    """A scenario (or one of its figures) cannot be measured here; the message says why."""


def log(message: str) -> None:
    """Progress for humans, on stderr (stdout carries only the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- time and ports ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- memory --------------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident set size in MiB (VmRSS; VmHWM: its peak), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_rss_mb(pid: int) -> float | None:
    """The RSS of a process and all its descendants (nginx: master and workers)."""
    values = [rss_mb(p) for p in descendants(pid)]
    present = [v for v in values if v is not None]
    return sum(present) if present else None


# -- sites on disk -------------------------------------------------------------------------


def site_name(i: int) -> str:
    return f"site-{i:05d}"


def site_domain(i: int, namespace: str = NAMESPACE) -> str:
    return f"site-{i:05d}.{namespace}.test"


def service_name(i: int) -> str:
    """Every site has a Service of its own (as in a cluster), so N sites make N clusters."""
    return f"svc-{i:05d}"


def manifest(i: int, port: int) -> str:
    return (
        f"apiVersion: {API_VERSION}\nkind: StaticSite\n"
        f"metadata: {{name: {site_name(i)}, namespace: {NAMESPACE}}}\n"
        f"spec:\n  domain: {site_domain(i)}\n"
        f"  backend: {{serviceName: {service_name(i)}, servicePort: {port}}}\n"
    )


def site_object(i: int, port: int, namespace: str = NAMESPACE, group: str | None = None) -> StaticSite:
    """Site `i` of `namespace` (its domain below `<namespace>.test`), in gateway `group` if one
    is named."""
    spec: dict[str, Any] = {
        "domain": site_domain(i, namespace),
        "backend": {"serviceName": service_name(i), "servicePort": port},
    }
    if group is not None:
        spec["gatewayGroup"] = group
    return parse_site(
        {
            "apiVersion": API_VERSION,
            "kind": "StaticSite",
            "metadata": {"name": site_name(i), "namespace": namespace},
            "spec": spec,
        },
        f"site {i}",
    )


def site_file(folder: Path, i: int) -> Path:
    return folder / f"{site_name(i)}.yaml"


def write_atomic(path: Path, text: str) -> None:
    """Write a hidden temp file in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_sites(folder: Path, ports: Mapping[int, int]) -> None:
    """One manifest file per site (site index -> backend port); plain writes, for setup."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, port in ports.items():
        site_file(folder, i).write_text(manifest(i, port))


# -- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    backend: str | None


def probe(port: int, host: str, timeout: float = 0.5) -> Reply | None:
    """One GET on a new connection; None when the connection or the request fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return Reply(resp.status, resp.getheader("x-backend"))
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def time_until(
    port: int,
    host: str,
    accept: Callable[[Reply], bool],
    started: float,
    timeout: float,
    interval: float = 0.002,
) -> float | None:
    """Seconds from `started` (a perf_counter) until a reply passes `accept`; None on timeout."""
    deadline = started + timeout
    while True:
        reply = probe(port, host)
        now = time.perf_counter()
        if reply is not None and accept(reply):
            return now - started
        if now > deadline:
            return None
        time.sleep(interval)


def sweep(port: int, hosts: Sequence[str], timeout: float) -> list[str]:
    """GET every host once over one kept-alive connection; the hosts that did not answer 200."""
    missing: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        for host in hosts:
            try:
                conn.request("GET", "/", headers={"Host": host})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    missing.append(host)
            except (OSError, http.client.HTTPException):
                missing.append(host)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    finally:
        conn.close()
    return missing


def answering(port: int, hosts: Sequence[str], timeout: float) -> int:
    """How many of the hosts answer 200, each GET once (again for those that did not, until
    `timeout`). Not timed: the requests go through the benchmark's own sample backends, and a
    scenario makes them when they slow nothing it times."""
    deadline = time.perf_counter() + timeout
    unserved = list(hosts)
    while unserved and time.perf_counter() < deadline:
        unserved = sweep(port, unserved, 2.0)
        if unserved:
            time.sleep(0.1)
    return len(hosts) - len(unserved)


def is_ok(reply: Reply) -> bool:
    return reply.status == 200


def served_by(backend: str) -> Callable[[Reply], bool]:
    return lambda reply: reply.status == 200 and reply.backend == backend


def wait_served(port: int, host: str, timeout: float, what: str) -> None:
    started = time.perf_counter()
    if time_until(port, host, is_ok, started, timeout, interval=0.05) is None:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} to answer 200 for {host}")


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples_ms: Sequence[float]) -> dict[str, Any]:
    if not samples_ms:
        return {"n": 0}
    return {
        "n": len(samples_ms),
        "median": statistics.median(samples_ms),
        "p99": percentile(samples_ms, 99),
        "max": max(samples_ms),
        "min": min(samples_ms),
        "samples": [round(s, 3) for s in samples_ms],
    }


# -- processes -----------------------------------------------------------------------------


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServeProcess(ControlPlaneProcess):
    """`serve` as the benchmarks run it: quiet log, a free ADS port, RSS on demand."""

    def __init__(self, sites: Path, workdir: Path, http_port: int, extra: Sequence[str] = ()) -> None:
        super().__init__(sites, workdir, free_port(), http_port, log_level="warning", extra=extra)

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid) if self.process is not None else None


class Backends:
    """A few SampleBackends on free ports, named backend-0, backend-1, ..."""

    def __init__(self, count: int) -> None:
        from xds_server.local.sample_backend import SampleBackend

        self.servers = [SampleBackend(f"backend-{i}") for i in range(count)]
        for backend in self.servers:
            # SampleBackend writes a response's headers and body in two writes; on a reused
            # connection Nagle's algorithm then holds the body until the peer's delayed ACK,
            # ~40 ms a request. The gateways (not the backend) are what is measured here.
            handler: object = getattr(getattr(backend, "_server", None), "RequestHandlerClass", None)
            if isinstance(handler, type) and issubclass(handler, StreamRequestHandler):
                handler.disable_nagle_algorithm = True
            backend.start()

    @property
    def ports(self) -> list[int]:
        return [b.port for b in self.servers]

    def port_for(self, i: int) -> int:
        return self.servers[i % len(self.servers)].port

    def name_of_port(self, port: int) -> str:
        return next(b.name for b in self.servers if b.port == port)

    def stop(self) -> None:
        for backend in self.servers:
            backend.stop()


# -- load ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    threads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "threads": self.threads,
            "rate_per_s": round(self.sent / self.seconds, 1) if self.seconds else 0.0,
        }


class LoadGenerator:
    """Keep-alive GETs from a few threads, each reusing one http.client connection.

    A request fails when the answer is not 200 or the connection breaks (the connection is
    then reopened). Bounded by a request count and a time limit per thread.
    """

    def __init__(
        self,
        port: int,
        hosts: Sequence[str],
        *,
        threads: int = 3,
        interval: float = 0.005,
        max_seconds: float = 600.0,
        max_requests: int = 2_000_000,
    ) -> None:
        self.port = port
        self.hosts = list(hosts)
        self.interval = interval
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self._stop = threading.Event()
        self._results = [LoadResult() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]
        self._started = 0.0

    def start(self) -> LoadGenerator:
        self._started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, n: int) -> None:
        result = self._results[n]
        deadline = time.monotonic() + self.max_seconds
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        i = n
        try:
            while not self._stop.is_set() and result.sent < self.max_requests and time.monotonic() < deadline:
                host = self.hosts[i % len(self.hosts)]
                i += 1
                result.sent += 1
                try:
                    conn.request("GET", "/", headers={"Host": host})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        result.failed += 1
                        result.errors[f"status {resp.status}"] += 1
                except (OSError, http.client.HTTPException) as exc:
                    result.failed += 1
                    result.errors[type(exc).__name__] += 1
                    conn.close()
                if self.interval:
                    time.sleep(self.interval)
        finally:
            conn.close()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        total = LoadResult(threads=len(self._threads), seconds=time.perf_counter() - self._started)
        for result in self._results:
            total.sent += result.sent
            total.failed += result.failed
            total.errors.update(result.errors)
        return total


def pick(items: Sequence[T], count: int) -> list[T]:
    """`count` items spread evenly over `items` (deterministic)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(k * step)] for k in range(count)]
