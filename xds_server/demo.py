"""The local demo: our control plane, a real Envoy and sample backends, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import tempfile
from pathlib import Path

from snapshot.builder import BuildOptions
from snapshot.model import API_VERSION, Backend
from snapshot.snapshot import Snapshot
from watcher.folder import FolderSource
from watcher.siteset import SiteSet

from .app import ControlPlane
from .local_envoy import LocalEnvoy, local_bootstrap
from .sample_backend import SampleBackend

log = logging.getLogger("staticsite_xds.demo")

EXAMPLE_SITES = {
    "docs-main.yaml": ("docs-main", "docs", "docs.example.test", "docs-main-svc", 18081),
    "api-reference.yaml": ("api-reference", "docs", "api.example.test", "api-reference-svc", 18082),
    "knowledge-base.yaml": ("knowledge-base", "support", "kb.example.test", "knowledge-base-svc", 18083),
}


def manifest(name: str, namespace: str, domain: str, service: str, port: int) -> str:
    return (
        f"apiVersion: {API_VERSION}\n"
        "kind: StaticSite\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n"
        f"  domain: {domain}\n"
        f"  backend: {{serviceName: {service}, servicePort: {port}}}\n"
    )


def seed(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for filename, fields in EXAMPLE_SITES.items():
        (folder / filename).write_text(manifest(*fields))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Backends:
    """Starts one sample backend per (service, port) the sites use, on 127.0.0.1:port."""

    def __init__(self) -> None:
        self.running: dict[int, SampleBackend] = {}

    def ensure(self, sites: SiteSet, _snapshot: Snapshot) -> None:
        wanted: dict[int, Backend] = {s.backend.service_port: s.backend for s in sites.sites.values()}
        for port, backend in sorted(wanted.items()):
            if port in self.running:
                continue
            try:
                self.running[port] = SampleBackend(backend.service_name, port).start()
                log.info("sample backend %s listening on 127.0.0.1:%d", backend.service_name, port)
            except OSError as exc:
                log.warning(
                    "cannot start a sample backend on port %d (%s); is something else there?", port, exc
                )

    def stop(self) -> None:
        for backend in self.running.values():
            backend.stop()


def run_demo(sites: Path, xds_port: int, http_port: int, admin_port: int) -> int:
    taken = [
        f"{flag} {p}"
        for flag, p in (("--xds-port", xds_port), ("--http-port", http_port), ("--admin-port", admin_port))
        if not _port_free(p)
    ]
    if taken:
        print(f"staticsite-xds demo: port already in use: {', '.join(taken)}; choose another with that flag")
        return 2
    if not sites.exists():
        seed(sites)
    sites = sites.resolve()
    options = BuildOptions(http_port=http_port, listen_address="127.0.0.1", backend_host_template="127.0.0.1")
    plane = ControlPlane(options)
    backends = _Backends()
    plane.on_publish.append(backends.ensure)
    workdir = Path(tempfile.mkdtemp(prefix="staticsite-xds-demo-"))
    envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), workdir, log_level="warning")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(
            plane.run(FolderSource(sites).watch(stop), f"127.0.0.1:{xds_port}", stop)
        )
        try:
            await asyncio.to_thread(envoy.start)
            for _ in range(200):
                if envoy.ready() or serving.done():
                    break
                await asyncio.sleep(0.05)
            if not serving.done():
                _print_banner(sites, xds_port, http_port, admin_port, plane)
            await serving
        finally:
            stop.set()
            await asyncio.to_thread(envoy.stop)
            backends.stop()

    asyncio.run(run())
    print("\nstaticsite-xds demo stopped.")
    return 0


def _print_banner(sites: Path, xds_port: int, http_port: int, admin_port: int, plane: ControlPlane) -> None:
    domains = sorted({s.domain for s in plane.sites.sites.values()})
    gw = f"http://127.0.0.1:{http_port}"
    lines = [
        "",
        "staticsite-xds demo is running (Ctrl-C stops everything):",
        f"  control plane (ADS)  127.0.0.1:{xds_port}",
        f"  Envoy gateway        {gw}   admin: http://127.0.0.1:{admin_port}",
        f"  sites folder         {sites}",
        "",
        "Try:",
        *[f"  curl -H 'Host: {d}' {gw}/" for d in domains],
        f"  curl -i -H 'Host: nowhere.example.test' {gw}/     # no such site: 404",
        "",
        "Add a site by dropping a file into the folder; it is served within a second:",
        f"  cat > {sites}/blog.yaml <<'EOF'",
        *[
            "  " + line
            for line in manifest("blog", "docs", "blog.example.test", "blog-svc", 18084).splitlines()
        ],
        "  EOF",
        f"  curl -H 'Host: blog.example.test' {gw}/",
        "(the demo starts a sample backend on 127.0.0.1 for every servicePort the sites name)",
        "",
    ]
    print("\n".join(lines), flush=True)
