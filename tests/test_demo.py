"""The README's first command: the demo runs, its printed curl lines work, and it stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import free_port, http_get, manifest, try_get, wait_until


def test_demo_serves_the_example_sites_and_new_ones(tmp_path: Path) -> None:
    sites = tmp_path / "demo-sites"
    xds_port, http_port, admin_port = free_port(), free_port(), free_port()
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
                "--admin-port",
                str(admin_port),
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
        hosts = re.findall(rf"curl -H 'Host: ([^']+)' http://127\.0\.0\.1:{http_port}/\n", text)
        assert {"docs.example.test", "api.example.test", "kb.example.test"} <= set(hosts)
        for host in ["docs.example.test", "api.example.test", "kb.example.test"]:
            response = wait_until(lambda h=host: try_get(http_port, h), what=host)
            assert response.status == 200, (host, response)
            assert (response.backend or "").endswith("-svc")
        assert http_get(http_port, "nowhere.example.test").status == 404

        # The banner's recipe: drop a file into the folder, a new site (and backend) appear.
        blog_port = free_port()
        (sites / "blog.yaml").write_text(manifest("blog", "blog.example.test", "blog-svc", blog_port, "docs"))
        response = wait_until(
            lambda: (r := try_get(http_port, "blog.example.test")) and r.status == 200 and r,
            what="the new site",
        )
        assert response.backend == "blog-svc"
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(15)
    assert code == 0, out.read_text()
    assert "demo stopped" in out.read_text()
