"""End to end: site manifests in a folder, our control plane process, a real Envoy, real backends."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support.manifests import manifest
from support.processes import Gateway, Response, try_get
from support.waiting import wait_until

from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy

Backends = Callable[[str], SampleBackend]


def _versions(dump: dict[str, Any]) -> dict[str, str]:
    """The version Envoy holds of each dynamic resource, by kind and name."""
    out: dict[str, str] = {}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        for key in ("dynamic_active_clusters", "dynamic_listeners", "dynamic_route_configs"):
            for item in config.get(key, []):
                state = item.get("active_state", item)
                name = state.get("cluster", state.get("listener", state.get("route_config", {}))).get(
                    "name"
                ) or item.get("name")
                out[f"{kind}/{name}"] = state.get("version_info", item.get("version_info", ""))
    return out


def test_three_sites_route_by_host_and_unknown_host_is_404(gateway: Gateway, backends: Backends) -> None:
    names = ["docs", "api", "kb"]
    for name in names:
        b = backends(name)
        gateway.write(f"{name}.yaml", manifest(name, f"{name}.example.test", f"{name}-svc", b.port, "docs"))
    for name in names:
        gateway.wait_backend(f"{name}.example.test", name)
        # Host matching is case-insensitive and ignores a port in the Host header.
        assert gateway.get(f"{name.upper()}.Example.Test:{gateway.http_port}").backend == name
    missing = gateway.get("nowhere.example.test")
    assert missing.status == 404
    assert missing.backend is None
    assert "No site" in missing.body


def test_changes_apply_without_restarting_envoy(gateway: Gateway, backends: Backends) -> None:
    blue, green, other = backends("blue"), backends("green"), backends("other")
    assert gateway.envoy.process is not None
    pid = gateway.envoy.process.pid

    gateway.write("site.yaml", manifest("site", "site.example.test", "blue", blue.port))
    gateway.wait_backend("site.example.test", "blue")

    # Move the site to another backend: its traffic follows.
    gateway.write("site.yaml", manifest("site", "site.example.test", "green", green.port))
    gateway.wait_backend("site.example.test", "green")

    # Add a file: a new site.
    gateway.write("other.yaml", manifest("other", "other.example.test", "other", other.port))
    gateway.wait_backend("other.example.test", "other")

    # Delete a file: its site is gone, the rest stays.
    (gateway.sites / "site.yaml").unlink()
    gateway.wait_status("site.example.test", 404)
    assert gateway.get("other.example.test").backend == "other"

    # Rename a file: the site it declares keeps serving.
    (gateway.sites / "other.yaml").rename(gateway.sites / "renamed.yaml")
    gateway.wait_backend("other.example.test", "other")

    assert gateway.envoy.process.poll() is None
    assert gateway.envoy.process.pid == pid
    assert gateway.envoy.stat("server.hot_restart_epoch") == 0


def test_backend_switch_under_load_fails_no_request(gateway: Gateway, backends: Backends) -> None:
    old, new = backends("old"), backends("new")
    gateway.write("site.yaml", manifest("site", "load.example.test", "old", old.port))
    gateway.wait_backend("load.example.test", "old")

    seen: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        for _ in range(3000):  # bounded; stopped early once the switch is seen
            if stop.is_set():
                return
            r = try_get(gateway.http_port, "load.example.test")
            seen[f"{r.status} {r.backend}" if r else "connection error"] += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: seen["200 old"] > 20, what="load through the old backend")
        gateway.write("site.yaml", manifest("site", "load.example.test", "new", new.port))
        wait_until(lambda: seen["200 new"] > 20, what="load through the new backend")
    finally:
        stop.set()
        worker.join(10)
    assert set(seen) == {"200 old", "200 new"}, seen


def test_invalid_file_is_reported_and_other_sites_keep_serving(gateway: Gateway, backends: Backends) -> None:
    a, b = backends("a"), backends("b")
    gateway.write("a.yaml", manifest("a", "a.example.test", "a", a.port))
    gateway.write("b.yaml", manifest("b", "b.example.test", "b", b.port))
    gateway.wait_backend("a.example.test", "a")
    gateway.wait_backend("b.example.test", "b")

    # A typo in a field, and a file that is not YAML at all.
    gateway.write("b.yaml", manifest("b", "b.example.test", "b", b.port).replace("servicePort", "servicePrt"))
    gateway.write("broken.yaml", "apiVersion: [unclosed\n")
    log = wait_until(
        lambda: (
            (text := gateway.control_plane.log()) and "servicePrt" in text and "broken.yaml" in text and text
        ),
        what="both problems in the log",
    )
    assert "b.yaml: spec.backend.servicePrt: unknown field (did you mean 'servicePort'?)" in log
    assert "broken.yaml: cannot be read" in log
    wait_until(lambda: "site default/b is Invalid" in gateway.control_plane.log(), what="b's status")

    # Site b keeps its last good version; site a is untouched; a new valid site still arrives.
    c = backends("c")
    gateway.write("c.yaml", manifest("c", "c.example.test", "c", c.port))
    gateway.wait_backend("c.example.test", "c")
    assert gateway.get("a.example.test").backend == "a"
    assert gateway.get("b.example.test").backend == "b"

    # Fixing the file brings its site back to Provisioned.
    gateway.write("b.yaml", manifest("b", "b.example.test", "b", b.port))
    wait_until(lambda: "site default/b is Provisioned" in gateway.control_plane.log().split("is Invalid")[-1])


def test_domain_conflict_oldest_wins_and_loser_is_reported(gateway: Gateway, backends: Backends) -> None:
    first, second = backends("first"), backends("second")
    # A folder has no creation timestamps: alpha/site is seen first, or with beta/site in one
    # batch, where namespace/name decides; either way it is the older.
    gateway.write("z.yaml", manifest("site", "shared.example.test", "first", first.port, "alpha"))
    gateway.write("a.yaml", manifest("site", "SHARED.example.test", "second", second.port, "beta"))
    gateway.wait_backend("shared.example.test", "first")
    wait_until(
        lambda: (
            "site beta/site is Conflict (DomainConflict): domain shared.example.test is already served "
            "by site alpha/site" in gateway.control_plane.log()
        ),
        what="the conflict in the log",
    )
    # The winner leaves: the other claimant takes the domain.
    (gateway.sites / "z.yaml").unlink()
    gateway.wait_backend("shared.example.test", "second")


def test_envoy_keeps_serving_while_control_plane_is_down(gateway: Gateway, backends: Backends) -> None:
    a = backends("a")
    gateway.write("a.yaml", manifest("a", "a.example.test", "a", a.port))
    gateway.wait_backend("a.example.test", "a")
    # Let Envoy settle (every type ACKed) before reading what it holds.
    wait_until(lambda: gateway.envoy.stat("cluster_manager.cds.update_success") >= 2)
    before = _versions(gateway.envoy.config_dump())
    assert {k.split("/")[0] for k in before} == {
        "ClustersConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
    }
    modified = gateway.envoy.stat("cluster_manager.cluster_modified")
    connected = gateway.envoy.stat("control_plane.connected_state")
    assert connected == 1

    assert gateway.control_plane.stop() == 0  # SIGTERM: a clean exit
    wait_until(lambda: gateway.envoy.stat("control_plane.connected_state") == 0)
    for _ in range(20):
        response: Response | None = try_get(gateway.http_port, "a.example.test")
        assert response is not None
        assert (response.status, response.backend) == (200, "a")

    updates = gateway.envoy.stat("cluster_manager.cds.update_success")
    plane = ControlPlaneProcess(
        gateway.sites, gateway.sites.parent, gateway.control_plane.xds_port, gateway.http_port
    ).start()
    gateway.control_plane = plane
    wait_until(lambda: gateway.envoy.stat("control_plane.connected_state") == 1, timeout=15)
    wait_until(
        lambda: gateway.envoy.stat("cluster_manager.cds.update_success") > updates,
        what="Envoy to receive the configuration again",
    )
    # Same content, same version: Envoy holds exactly what it held, and changed nothing.
    assert _versions(gateway.envoy.config_dump()) == before
    stats = gateway.envoy.stats("cluster_manager.cluster_modified")
    assert stats["cluster_manager.cluster_modified"] == modified
    assert gateway.envoy.stat("listener_manager.listener_modified") == 0
    assert gateway.get("a.example.test").backend == "a"
