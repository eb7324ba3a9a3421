"""Real processes on loopback: free ports, the CLI in a process of its own, and a control plane
process with a real Envoy bootstrapped to it, answering HTTP."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.waiting import wait_until
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import REPO_ROOT, LocalEnvoy, local_bootstrap


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` different free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def run_cli(
    *args: str | Path, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `staticsite-xds ARGS...` in a process of its own, from the project's root
    (with the environment `env` when given, else this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "xds_server.cli", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass
class Response:
    status: int
    body: str
    backend: str | None


def http_get(port: int, host: str, path: str = "/", timeout: float = 5.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return Response(resp.status, resp.read().decode(errors="replace"), resp.getheader("x-backend"))
    finally:
        conn.close()


def try_get(port: int, host: str, path: str = "/") -> Response | None:
    try:
        return http_get(port, host, path, timeout=2.0)
    except OSError:
        return None


@dataclass
class Gateway:
    """A control plane process serving a folder of sites, and a real Envoy bootstrapped to it."""

    sites: Path
    control_plane: ControlPlaneProcess
    envoy: LocalEnvoy
    http_port: int

    def get(self, host: str, path: str = "/") -> Response:
        return http_get(self.http_port, host, path)

    def write(self, filename: str, text: str) -> Path:
        """Write a manifest atomically (as editors and ConfigMap updates do)."""
        path = self.sites / filename
        tmp = self.sites / f".{filename}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def wait_backend(self, host: str, backend: str | None, timeout: float = 10.0) -> Response:
        def check() -> Response | None:
            r = try_get(self.http_port, host)
            return r if r is not None and r.backend == backend else None

        return wait_until(check, timeout, what=f"{host} to be served by {backend}")

    def wait_status(self, host: str, status: int, timeout: float = 10.0) -> Response:
        def check() -> Response | None:
            r = try_get(self.http_port, host)
            return r if r is not None and r.status == status else None

        return wait_until(check, timeout, what=f"{host} to answer {status}")


@contextlib.contextmanager
def running_gateway(
    tmp_path: Path, *, extra: Sequence[str] = (), envoy_log_level: str = "info"
) -> Iterator[Gateway]:
    """A control plane process serving `tmp_path`/sites (made if missing; `extra`: more flags
    of `serve`) and a real Envoy that took its first configuration, on free loopback ports."""
    sites = tmp_path / "sites"
    sites.mkdir(exist_ok=True)
    xds_port, http_port, admin_port = free_port(), free_port(), free_port()
    plane = ControlPlaneProcess(sites, tmp_path, xds_port, http_port, extra=extra).start()
    envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), tmp_path / "envoy", log_level=envoy_log_level)
    gw = Gateway(sites, plane, envoy, http_port)
    try:
        envoy.start()
        wait_until(envoy.ready, timeout=20, what="Envoy to receive its first configuration")
        yield gw
    finally:
        envoy.stop()
        plane.stop()
        gw.control_plane.stop()  # a test may have replaced it with a restarted one
