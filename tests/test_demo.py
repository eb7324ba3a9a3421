"""The README's first command: the demo runs, its printed curl lines work, and it stops cleanly."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.manifests import manifest
from support.processes import free_port, http_get, run_cli, try_get
from support.waiting import wait_until

from watcher.folder import read_manifests
from xds_server.local.demo import EXAMPLE_SITES, DemoPorts, banner, seed, write_certificates
from xds_server.local.demo import manifest as demo_manifest

pytestmark = pytest.mark.envoy


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: str


def _answer(resp: http.client.HTTPResponse) -> Answer:
    headers = {name.lower(): value for name, value in resp.getheaders()}
    return Answer(resp.status, headers, resp.read().decode(errors="replace"))


def http_answer(port: int, host: str, path: str = "/") -> Answer | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path, headers={"Host": host})
        return _answer(conn.getresponse())
    except OSError:
        return None
    finally:
        conn.close()


def https_answer(port: int, host: str, ca_file: Path, path: str = "/") -> Answer | None:
    """GET over TLS from 127.0.0.1:port, asking for `host` by SNI and trusting only `ca_file`."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            return _answer(resp)
    except (OSError, http.client.HTTPException):  # ssl.SSLError is an OSError
        return None


def test_seeded_folder_has_certificates_with_private_keys(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    seed(sites)
    key = sites / "certs" / "secure-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (sites / "certs" / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "certificateFile: certs/secure.pem" in (sites / "secure.yaml").read_text()
    assert not list((sites / "certs").glob("ca-key*")), "the CA's key is not kept"


def test_banner_prints_only_what_the_sites_show(tmp_path: Path) -> None:
    # A folder seeded by an earlier demo: three plain sites, no certificates, nothing mounted.
    old = tmp_path / "old"
    old.mkdir()
    for filename, fields in EXAMPLE_SITES.items():
        (old / filename).write_text(demo_manifest(*fields))
    text = banner(old, read_manifests([old]).sites.values(), DemoPorts(1, 2, 3, 4, 5), Path("envoy.log"))
    assert "curl -H 'Host: kb.example.test' http://127.0.0.1:2/\n" in text
    assert "--compressed" in text
    for absent in ("--cacert", "--insecure", "--resolve", "/api/", "redirectFrom", "-I"):
        assert absent not in text, absent

    # A certificate the folder's CA did not sign is shown with --insecure, not --cacert.
    new = tmp_path / "new"
    seed(new)
    write_certificates(tmp_path / "other", "other", ["other.example.test"])
    text = banner(new, read_manifests([new]).sites.values(), DemoPorts(1, 2, 3, 4, 5), Path("envoy.log"))
    assert f"curl --cacert {new / 'certs' / 'ca.pem'} --resolve secure.example.test:3:127.0.0.1" in text
    (new / "certs" / "ca.pem").write_bytes((tmp_path / "other" / "ca.pem").read_bytes())
    text = banner(new, read_manifests([new]).sites.values(), DemoPorts(1, 2, 3, 4, 5), Path("envoy.log"))
    assert "--cacert" not in text
    assert "curl --insecure --resolve secure.example.test:3:127.0.0.1 https://secure.example.test:3/" in text


def test_demo_serves_the_example_sites_and_new_ones(tmp_path: Path) -> None:
    sites = tmp_path / "demo-sites"
    xds_port, http_port, https_port, admin_port = free_port(), free_port(), free_port(), free_port()
    metrics_port = free_port()
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    (work_dir / "envoy.log").write_text("the log of an earlier run\n")
    temporary = set(Path(tempfile.gettempdir()).iterdir())
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xds_server.cli",
                "demo",
                "--sites",
                str(sites),
                "--xds-port",
                str(xds_port),
                "--http-port",
                str(http_port),
                "--https-port",
                str(https_port),
                "--admin-port",
                str(admin_port),
                "--metrics-port",
                str(metrics_port),
                "--work-dir",
                str(work_dir),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        text = wait_until(
            lambda: "Ctrl-C" in (t := out.read_text()) and "blog.example.test" in t and t,
            timeout=30,
            what="the demo's banner",
        )
        gw = f"http://127\\.0\\.0\\.1:{http_port}"
        hosts = re.findall(rf"curl -H 'Host: ([^']+)' {gw}/\n", text)
        assert {"docs.example.test", "api.example.test", "kb.example.test"} <= set(hosts)
        for host in ["docs.example.test", "api.example.test", "kb.example.test"]:
            response = wait_until(lambda h=host: try_get(http_port, h), what=host)
            assert response.status == 200, (host, response)
            assert (response.backend or "").endswith("-svc")
        assert http_get(http_port, "nowhere.example.test").status == 404

        # The banner names a line for each feature the seeded sites show.
        ca_file = sites.resolve() / "certs" / "ca.pem"
        secure = (
            f"--resolve secure.example.test:{https_port}:127.0.0.1 https://secure.example.test:{https_port}/"
        )
        assert f"curl --cacert {ca_file} {secure}\n" in text
        assert f"curl -i -H 'Host: secure.example.test' http://127.0.0.1:{http_port}/ " in text
        assert f"curl -i -H 'Host: www.secure.example.test' http://127.0.0.1:{http_port}/ " in text
        assert f"curl -H 'Host: docs.example.test' http://127.0.0.1:{http_port}/api/hello " in text
        assert "--compressed" in text

        # HTTPS by SNI, with the certificate the demo made, trusted through its CA alone.
        answer = wait_until(
            lambda: (a := https_answer(https_port, "secure.example.test", ca_file)) and a.status == 200 and a,
            what="the HTTPS site",
        )
        assert answer.headers["x-backend"] == "secure-svc"
        assert answer.headers["cache-control"] == "public, max-age=300"
        assert answer.headers["strict-transport-security"].startswith("max-age=")

        # Plain HTTP to it, and its www. domain, answer 301 to https.
        for host in ["secure.example.test", "www.secure.example.test"]:
            redirect = wait_until(lambda h=host: http_answer(http_port, h), what=host)
            assert redirect.status == 301, (host, redirect)
            assert redirect.headers["location"] == f"https://secure.example.test:{https_port}/", redirect
        redirect = wait_until(
            lambda: https_answer(https_port, "www.secure.example.test", ca_file), what="www"
        )
        assert redirect.status == 301, redirect
        assert redirect.headers["location"] == f"https://secure.example.test:{https_port}/", redirect

        # /api on docs.example.test reaches its own backend, which sees the path without /api.
        mounted = wait_until(lambda: http_answer(http_port, "docs.example.test", "/api/hello"), what="/api")
        assert mounted.status == 200, mounted
        assert mounted.headers["x-backend"] == "docs-api-svc"
        assert "you asked for /hello<" in mounted.body
        assert http_get(http_port, "docs.example.test", "/other").backend == "docs-main-svc"

        # The banner's recipe: drop a file into the folder, a new site (and backend) appear.
        blog_port = free_port()
        (sites / "blog.yaml").write_text(manifest("blog", "blog.example.test", "blog-svc", blog_port, "docs"))
        response = wait_until(
            lambda: (r := try_get(http_port, "blog.example.test")) and r.status == 200 and r,
            what="the new site",
        )
        assert response.backend == "blog-svc"

        # What operators look at: the banner names it, and it answers.
        envoy_log = work_dir.resolve() / "envoy.log"
        assert f"Envoy's log          {envoy_log}\n" in text
        assert "earlier run" not in envoy_log.read_text()
        assert f"http://127.0.0.1:{metrics_port}/metrics" in text
        assert f"staticsite-xds status --xds-address 127.0.0.1:{xds_port} --sites\n" in text
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        assert b"staticsite_xds_snapshot_generation" in metrics
        ready = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)
        assert ready.status == 200

        # A broken site: `status` names it, its phase, reason and message.
        (sites / "broken.yaml").write_text(
            manifest("broken", "docs.example.test", "other-svc", blog_port, "web")
        )
        status = wait_until(
            lambda: (
                (r := run_cli("status", "--xds-address", f"127.0.0.1:{xds_port}"))
                and "web/broken" in r.stdout
                and r
            ),
            what="the conflicting site in status",
        )
        assert status.returncode == 0, status.stderr
        assert "1 Envoy connected, 0 behind" in status.stdout
        (row,) = [line for line in status.stdout.splitlines() if line.startswith("web/broken")]
        assert row.split()[1:5] == ["docs.example.test", "default", "Conflict", "DomainConflict"], row
        rows = [line.split()[0] for line in status.stdout.split("SITE", 1)[1].splitlines()[1:] if line]
        assert rows == ["web/broken"], "Provisioned sites are listed only with --sites"
        every = run_cli("status", "--xds-address", f"127.0.0.1:{xds_port}", "--sites", "--json")
        listed = {
            (s["namespace"], s["name"]): s["phase"] for s in json.loads(every.stdout)["sites"]["listed"]
        }
        assert listed[("docs", "docs-main")] == "Provisioned"
        assert listed[("web", "broken")] == "Conflict"
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(15)
    assert code == 0, out.read_text()
    assert "demo stopped" in out.read_text()
    left = {p for p in set(Path(tempfile.gettempdir()).iterdir()) - temporary if "staticsite" in p.name}
    assert not left, f"the demo left temporary folders behind: {left}"


def test_demo_refuses_ports_given_twice(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(
        "demo",
        "--sites",
        tmp_path / "sites",
        "--http-port",
        str(port),
        "--https-port",
        str(port),
        "--xds-port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
    )
    assert result.returncode == 2
    assert "--https-port and --http-port" in result.stdout
    assert not (tmp_path / "sites").exists()
