"""Shared fixtures (sample backends, a gateway, a folder of manifests, a Kubernetes API) and
the cost of every test.

Every test carries exactly one cost marker, so that a subset can be chosen by what it needs:

- `unit`: nothing but this process: no child process, no Envoy, no Kubernetes emulator. The
  protocol rules run on the pure stream classes; the few tests of what only the server loop
  shows (the node of the first request, unknown types, publish waking streams, a stream that
  skips what it missed, a failing observer) talk gRPC over loopback within this process, and
  the metrics and inspection tests do too.
- `kubernetes`: kmock's Kubernetes API emulator (any test using the `kmock` or `cluster` fixture).
- `envoy`: a real Envoy or any child process (the control plane, the CLI, a wheel build).

`support.costs` gives each test its marker and refuses a collection where one has none.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import support.emulator  # noqa: F401  (pages the Kubernetes emulator's listings, before any is made)
from support.processes import Gateway, running_gateway

from xds_server.local.sample_backend import SampleBackend

if TYPE_CHECKING:
    from support.kubernetes import Cluster

pytest_plugins = ["support.costs", "pytester"]


def pytest_report_header(config: pytest.Config) -> str:
    """Which Envoy the tests that start one run (`STATICSITE_XDS_ENVOY` picks another)."""
    from xds_server.local.gateway import envoy_binary, envoy_version

    try:
        binary = envoy_binary()
        return f"envoy: {envoy_version(binary)} ({binary})"
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return f"envoy: none ({exc})"


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
    """kmock's Kubernetes API emulator, showing our resources, and the test's client of it; it
    holds the GatewayGroup deploy/ ships (`default`: every namespace, every domain)."""
    from support.kubernetes import Cluster, declare_resources, put_default_group  # kopf: loaded when needed

    declare_resources(kmock)
    cluster = Cluster(kmock)
    put_default_group(cluster)
    return cluster
