"""The `staticsite-xds` command, run as a real process: validate, render, and bad flags of serve."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.manifests import manifest, write
from support.processes import run_cli

from snapshot.builder import DEFAULT_ROUTE_SHARDS
from xds_server.local.demo import write_certificates

pytestmark = pytest.mark.envoy


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


# -- validate ---------------------------------------------------------------------------------


def test_validate_valid_files_and_folders(root: Path) -> None:
    a = write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    write(root / "team" / "b.yml", manifest("b", "b.example.com", "web", 81, namespace="team"))
    for args in ([a], [root], [a, root / "team" / "b.yml"]):
        proc = run_cli("validate", *args)
        no_traceback(proc)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == ""
    assert run_cli("validate", root).stdout == "2 sites, all valid\n"
    assert run_cli("validate", a).stdout == "1 site, all valid\n"


def test_validate_reports_one_line_per_problem(root: Path) -> None:
    a = write(
        root / "a.yaml",
        "---\n".join(
            [
                manifest("good", "good.example.com", "web", 80),
                manifest("badport", "badport.example.com", "web", 0),
                manifest("baddomain", "bad_domain.example.com", "Web", 80),
            ]
        ),
    )
    b = write(
        root / "b.yaml", manifest("typo", "typo.example.com", "web", 80).replace("servicePort", "servicePrt")
    )
    c = write(root / "c.yaml", "apiVersion: [unclosed\n")
    proc = run_cli("validate", a, b, c)
    no_traceback(proc)
    assert proc.returncode != 0
    lines = proc.stdout.splitlines()
    expected = [
        (f"{a} document 2", "spec.backend.servicePort"),
        (f"{a} document 3", "spec.domain"),
        (f"{a} document 3", "spec.backend.serviceName"),
        (str(b), "spec.backend.servicePrt"),
        (str(b), "spec.backend.servicePort"),
    ]
    assert len(lines) == len(expected) + 1, lines
    for origin, field in expected:
        assert sum(line.startswith(f"{origin}: {field}: ") for line in lines) == 1, (origin, field, lines)
    assert any("did you mean 'servicePort'" in line for line in lines)
    (syntax,) = [line for line in lines if line.startswith(f"{c}: ")]
    assert "cannot be read" in syntax


def test_validate_reports_a_domain_conflict_between_two_files(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "blog.example.com", "one", 80))
    b = write(root / "b.yaml", manifest("b", "Blog.Example.com", "two", 80))
    proc = run_cli("validate", root)
    no_traceback(proc)
    assert proc.returncode != 0
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{b}: spec.domain: ")
    assert "blog.example.com" in line
    assert "default/a" in line


def test_validate_reports_a_certificate_that_is_not_for_the_sites_domains(root: Path) -> None:
    write_certificates(root / "certs", "shop", ["shop.example.com"])
    tls = "  tls: {certificateFile: certs/shop.pem, keyFile: certs/shop-key.pem}\n"
    good = write(root / "good.yaml", manifest("good", "shop.example.com", "web", 80) + tls)
    assert run_cli("validate", good).returncode == 0
    bad = write(
        root / "bad.yaml",
        manifest("bad", "blog.example.com", "web", 80, namespace="blog").replace(
            "  backend:", "  aliases: [shop.example.com]\n  backend:"
        )
        + tls,
    )
    proc = run_cli("validate", bad)
    no_traceback(proc)
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{bad}: spec.tls: certificate "), line
    assert "is not for blog.example.com (it names shop.example.com)" in line


def test_validate_reports_the_same_site_in_two_files(root: Path) -> None:
    a = write(root / "a.yaml", manifest("blog", "a.example.com", "web", 80))
    b = write(root / "b.yaml", manifest("blog", "b.example.com", "web", 80))
    proc = run_cli("validate", a, b)
    assert proc.returncode != 0
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{b}: metadata.name: ")
    assert str(a) in line


def test_validate_reports_a_missing_path(tmp_path: Path) -> None:
    proc = run_cli("validate", tmp_path / "missing.yaml")
    no_traceback(proc)
    assert proc.returncode == 2  # a usage error, as for render
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"staticsite-xds: {tmp_path / 'missing.yaml'}: no such file or folder"
    ]


def test_validate_needs_a_path() -> None:
    proc = run_cli("validate")
    assert proc.returncode == 2
    assert "PATH" in proc.stderr


# -- render -----------------------------------------------------------------------------------


def vhosts(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The virtual hosts of the HTTP listener's route configurations (every route shard), by
    the site whose route each holds (a virtual host is named after its domain)."""
    return {
        v["routes"][0].get("name", v["name"]): v
        for route in rendered["RouteConfiguration"]
        if route["name"].split("/")[0] == "http"
        for v in route["virtualHosts"]
    }


def test_render_prints_the_resources_as_json(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    write(root / "b.yaml", manifest("b", "b.example.com", "web", 80))
    write(root / "c.yaml", manifest("c", "c.example.com", "api", 8080, namespace="team"))
    proc = run_cli(
        "render",
        root,
        "--http-port",
        "10080",
        "--listen-address",
        "127.0.0.1",
        "--backend-host-template",
        "{service}.{namespace}.internal",
    )
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    assert rendered["version"]
    clusters = {c["name"]: c for c in rendered["Cluster"]}
    assert set(clusters) == {"default/web/80", "team/api/8080"}
    api = clusters["team/api/8080"]
    assert api["type"] == "STRICT_DNS"
    address = api["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
    assert address == {"address": "api.team.internal", "portValue": 8080}

    (listener,) = rendered["Listener"]
    assert listener["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 10080}
    manager = listener["filterChains"][0]["filters"][0]["typedConfig"]
    assert "ads" in manager["scopedRoutes"]["scopedRds"]["scopedRdsConfigSource"]
    scopes = {s["name"]: s["routeConfigurationName"] for s in rendered["ScopedRouteConfiguration"]}
    assert len(scopes) == DEFAULT_ROUTE_SHARDS
    assert set(scopes.values()) == {r["name"] for r in rendered["RouteConfiguration"]}

    single = run_cli("render", root, "--route-shards", "1")
    assert single.returncode == 0, single.stderr
    one = json.loads(single.stdout)
    (manager,) = (c["filters"][0]["typedConfig"] for c in one["Listener"][0]["filterChains"])
    assert manager["rds"]["routeConfigName"] == one["RouteConfiguration"][0]["name"] == "http"
    assert "ads" in manager["rds"]["configSource"]
    assert one["ScopedRouteConfiguration"] == []

    hosts = vhosts(rendered)
    assert hosts["default/a"]["domains"] == ["a.example.com"]
    assert hosts["default/a"]["routes"][0]["route"]["cluster"] == "default/web/80"
    assert hosts["default/b"]["routes"][0]["route"]["cluster"] == "default/web/80"
    assert hosts["team/c"]["routes"][0]["route"]["cluster"] == "team/api/8080"
    assert hosts["unknown-domain"]["domains"] == ["*"]
    assert hosts["unknown-domain"]["routes"][0]["directResponse"]["status"] == 404


def test_render_is_deterministic(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    first, second = run_cli("render", root), run_cli("render", root)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_render_puts_problems_on_stderr(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    bad = write(root / "bad.yaml", manifest("bad", "bad.example.com", "web", 70000))
    write(root / "c.yaml", manifest("c", "a.example.com", "other", 80))
    proc = run_cli("render", root, "--backend-host-template", "127.0.0.1")
    no_traceback(proc)
    assert proc.returncode != 0
    rendered = json.loads(proc.stdout)  # the JSON is still complete and alone on stdout
    assert set(vhosts(rendered)) == {"default/a", "unknown-domain"}
    assert [c["name"] for c in rendered["Cluster"]] == ["default/web/80"]
    assert f"{bad}: spec.backend.servicePort: " in proc.stderr
    assert f"{root / 'c.yaml'}: spec.domain: " in proc.stderr


def test_render_of_an_empty_folder(root: Path) -> None:
    proc = run_cli("render", root)
    assert proc.returncode == 0
    rendered = json.loads(proc.stdout)
    assert rendered["Cluster"] == []
    assert set(vhosts(rendered)) == {"unknown-domain"}


def test_render_of_a_missing_folder(tmp_path: Path) -> None:
    proc = run_cli("render", tmp_path / "missing")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "not a folder" in proc.stderr
    assert proc.stdout == ""


# -- bad flags --------------------------------------------------------------------------------


def test_serve_with_a_missing_sites_folder(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    proc = run_cli("serve", "--sites", missing, "--xds-address", "127.0.0.1:0")
    no_traceback(proc)
    assert proc.returncode == 2
    assert f"--sites {missing}: not a folder" in proc.stderr


def test_serve_without_sites_is_a_usage_error() -> None:
    proc = run_cli("serve")
    assert proc.returncode == 2
    assert "--sites" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--status-qps", "0", "--status-qps must be above 0, got 0"),
        ("--status-qps", "-3", "--status-qps must be above 0, got -3"),
        ("--status-burst", "0", "--status-burst must be at least 1, got 0"),
    ],
)
def test_a_status_rate_that_allows_no_write_is_a_usage_error(flag: str, value: str, says: str) -> None:
    proc = run_cli("serve", "--kubernetes", flag, value)
    no_traceback(proc)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"staticsite-xds: {says}"


@pytest.mark.parametrize("template", ["{nope}", "{0}", "{service.nope}", "{service[x]}", "{"])
@pytest.mark.parametrize("command", ["render", "serve"])
def test_bad_backend_host_template_is_a_clear_error(command: str, template: str, root: Path) -> None:
    args = [root] if command == "render" else ["--sites", root, "--xds-address", "127.0.0.1:0"]
    proc = run_cli(command, *args, "--backend-host-template", template)
    no_traceback(proc)
    assert proc.returncode == 2
    assert proc.stderr.startswith("staticsite-xds: backend host template")
    assert template in proc.stderr
    assert "{service}" in proc.stderr
    assert "{namespace}" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("port", ["0", "65536"])
def test_bad_http_port_is_a_clear_error(port: str, root: Path) -> None:
    proc = run_cli("render", root, "--http-port", port)
    no_traceback(proc)
    assert proc.returncode == 2
    assert "HTTP port" in proc.stderr


def test_validate_accepts_a_kubernetes_manifest_naming_a_secret_and_finds_its_conflicts(
    tmp_path: Path,
) -> None:
    tls = "  tls: {secretName: docs-tls}\n"
    write(tmp_path / "a.yaml", manifest("a", "a.example.com", "web", 80) + tls)
    assert run_cli("validate", tmp_path).returncode == 0
    write(tmp_path / "b.yaml", manifest("b", "a.example.com", "web", 80) + tls)  # after a, by name
    proc = run_cli("validate", tmp_path)
    assert proc.returncode == 1
    assert "domain a.example.com is already served by site default/a" in proc.stdout
