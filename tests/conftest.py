"""Shared fixtures: free ports, deadlines, manifests on disk, and real processes on loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from waiting import wait_until

from snapshot.model import API_VERSION
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import REPO_ROOT, LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend

if TYPE_CHECKING:
    from k8s_cluster import Cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def write(path: Path, text: str) -> Path:
    """Write a file, making its folders first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def manifest(name: str, domain: str, service: str, port: int, namespace: str = "default") -> str:
    meta = f"{{name: {name}, namespace: {namespace}}}"
    return (
        f"apiVersion: {API_VERSION}\nkind: StaticSite\nmetadata: {meta}\n"
        f"spec:\n  domain: {domain}\n  backend: {{serviceName: {service}, servicePort: {port}}}\n"
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


@pytest.fixture
def backends() -> Iterator[Callable[[str], SampleBackend]]:
    """A factory of sample backends on free loopback ports, all stopped after the test."""
    started: list[SampleBackend] = []

    def make(name: str) -> SampleBackend:
        backend = SampleBackend(name).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()


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


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A running control plane (a real process) and a real Envoy, on free loopback ports."""
    with running_gateway(tmp_path) as gw:
        yield gw


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder for manifests: `tmp_path`/sites."""
    folder = tmp_path / "sites"
    folder.mkdir()
    return folder


@pytest.fixture
def cluster(kmock: Any) -> Cluster:
    """kmock's Kubernetes API emulator, showing our resources, and the test's client of it."""
    from k8s_cluster import Cluster, declare_resources  # kopf is loaded by the tests that need it

    declare_resources(kmock)
    return Cluster(kmock)
