"""`staticsite-xds serve --admission-address` as a real process: the flag's requirements, and
reviews answered against the sites the process built."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

import pytest
import trustme
from support.admission import SERVER_NAME, Review, review, site_body, write_pair
from support.manifests import manifest, write
from support.processes import free_port, run_cli
from support.waiting import wait_until

from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.operations.admission import SITES_PATH

pytestmark = pytest.mark.envoy


def test_serve_refuses_the_flag_without_the_certificate(tmp_path: Path) -> None:
    result = run_cli("serve", "--sites", tmp_path, "--admission-address", "127.0.0.1:0")
    assert result.returncode == 2
    assert "--admission-address needs --tls-cert" in result.stderr


def test_the_serve_process_answers_reviews_against_the_sites_it_built(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = tmp_path / "tls"
    files.mkdir()
    write_pair(files, ca.issue_cert(SERVER_NAME, "127.0.0.1"), ca)
    sites = tmp_path / "sites"
    write(sites / "docs.yaml", manifest("docs", "docs.example.com", "web", 80))
    port = free_port()
    flags = [
        "--tls-cert",
        files / "tls.crt",
        "--tls-key",
        files / "tls.key",
        "--tls-client-ca",
        files / "ca.crt",
    ]
    plane = ControlPlaneProcess(
        sites,
        tmp_path,
        free_port(),
        free_port(),
        extra=[*map(str, flags), "--admission-address", f"127.0.0.1:{port}"],
    )
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())

    def ask(sent: Review) -> Review | None:
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{SITES_PATH}",
            data=json.dumps(sent).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                answer: Review = json.load(response)["response"]
        except OSError:
            return None
        return answer

    plane.start()
    try:
        other_group = review(site_body("default", "docs", "docs.example.com", gatewayGroup="edge"))

        def judged() -> Review | None:  # once the plane has built its sites, no warning
            answer = ask(other_group)
            return answer if answer is not None and "warnings" not in answer else None

        answer = wait_until(judged, what="the webhook to judge against the sites built")
        assert answer["allowed"] is False
        assert answer["status"]["message"] == "gateway group edge does not exist (the groups: default)"
        served = ask(review(site_body("default", "docs", "docs.example.com")))
        assert served is not None
        assert served["allowed"] is True
        assert "warnings" not in served  # judged against the site set the plane built
    finally:
        plane.stop()
