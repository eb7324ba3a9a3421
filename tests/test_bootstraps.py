"""The Envoy bootstraps we ship are valid, and the in-cluster one really reaches our server."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.manifests import manifest
from support.processes import free_port, try_get
from support.waiting import wait_until

from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import (
    CLUSTER_BOOTSTRAP,
    LOCAL_BOOTSTRAP,
    LocalEnvoy,
    load_bootstrap,
    validate_config,
)
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("path", [CLUSTER_BOOTSTRAP, LOCAL_BOOTSTRAP], ids=lambda p: p.name)
def test_envoy_accepts_bootstrap(path: Path) -> None:
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(LOCAL_BOOTSTRAP.read_text().replace("cluster_name: staticsite-xds", "cluster_nam: x", 1))
    result = validate_config(bad)
    assert result.returncode != 0


def test_cluster_bootstrap_serves_sites_from_our_server(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    xds_port, http_port, admin_port = free_port(), free_port(), free_port()
    boot = load_bootstrap(CLUSTER_BOOTSTRAP)
    (xds,) = boot["static_resources"]["clusters"]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {
        "address": "staticsite-xds.staticsite-xds.svc.cluster.local",
        "port_value": 9000,
    }
    address["socket_address"] = {"address": "127.0.0.1", "port_value": xds_port}
    boot["admin"]["address"]["socket_address"]["port_value"] = admin_port

    with SampleBackend("docs") as backend:
        (sites / "docs.yaml").write_text(manifest("docs", "docs.example.test", "docs", backend.port))
        plane = ControlPlaneProcess(sites, tmp_path, xds_port, http_port).start()
        try:
            with LocalEnvoy(boot, tmp_path / "envoy") as envoy:
                wait_until(envoy.ready, timeout=20, what="Envoy to be configured")
                response = wait_until(lambda: try_get(http_port, "docs.example.test"))
                assert (response.status, response.backend) == (200, "docs")
        finally:
            assert plane.stop() == 0
