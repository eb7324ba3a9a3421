"""The local demo: our control plane, a real Envoy and sample backends, all on 127.0.0.1.

A new sites folder is seeded with examples of what a StaticSite can say: three plain sites,
an HTTPS site (its certificate signed by a small CA the demo makes, kept beside the
manifests in `certs/`) that redirects `www.` and sets response headers, and a second site
mounted at `/api` on the domain of a first. The banner then prints a curl line for each
thing the running sites show.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from snapshot.builder import DEFAULT_ROUTE_SHARDS, BuildOptions, BuildResult
from snapshot.model import API_VERSION, Backend, Certificate, SiteKey, StaticSite
from snapshot.snapshot import Snapshot
from snapshot.verdict import Phase
from watcher.folder import FolderSource
from watcher.siteset import SiteSet

from ..process.control_plane import ControlPlane
from ..process.observer import ObserverFuncs
from ..process.serve import OperatorSurfaces
from .gateway import LocalEnvoy, local_bootstrap
from .sample_backend import SampleBackend

log = logging.getLogger("staticsite_xds.demo")

EXAMPLE_SITES = {
    "docs-main.yaml": ("docs-main", "docs", "docs.example.test", "docs-main-svc", 18081),
    "api-reference.yaml": ("api-reference", "docs", "api.example.test", "api-reference-svc", 18082),
    "knowledge-base.yaml": ("knowledge-base", "support", "kb.example.test", "knowledge-base-svc", 18083),
}

# The certificates of the seeded HTTPS site, relative to the sites folder.
CERTS = "certs"
CA_FILE = f"{CERTS}/ca.pem"
SECURE_DOMAIN = "secure.example.test"
CERTIFICATE_DAYS = 3650  # a demo folder is kept for a while; nothing else trusts this CA

# An HTTPS site: served by SNI with a certificate from files beside the manifest.
SECURE_SITE = f"""\
# An HTTPS site. Plain HTTP to it answers 301 to https (unless tls.allowInsecure: true).
apiVersion: {API_VERSION}
kind: StaticSite
metadata: {{name: secure, namespace: web}}
spec:
  domain: {SECURE_DOMAIN}
  redirectFrom: [www.{SECURE_DOMAIN}]  # answered with a 301 to the domain
  backend: {{serviceName: secure-svc, servicePort: 18085}}
  tls:  # PEM files, relative to this manifest (the demo made them, signed by {CA_FILE})
    certificateFile: {CERTS}/secure.pem
    keyFile: {CERTS}/secure-key.pem
  responseHeaders:
    set:  # added to every answer of the site
      Cache-Control: "public, max-age=300"
      Strict-Transport-Security: "max-age=31536000"
"""

# A second site on the domain of docs-main, mounted at /api.
DOCS_API_SITE = f"""\
# A site mounted at /api on a domain another site serves (docs-main has the rest of it).
apiVersion: {API_VERSION}
kind: StaticSite
metadata: {{name: docs-api, namespace: docs}}
spec:
  domain: docs.example.test
  pathPrefix: /api   # /api and everything under /api/ come here
  rewritePrefix: /   # the backend sees /api/hello as /hello
  backend: {{serviceName: docs-api-svc, servicePort: 18086}}
"""


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
    write_certificates(folder / CERTS, "secure", [SECURE_DOMAIN, f"www.{SECURE_DOMAIN}"])
    (folder / "secure.yaml").write_text(SECURE_SITE)
    (folder / "docs-api.yaml").write_text(DOCS_API_SITE)


def write_certificates(folder: Path, name: str, domains: Sequence[str]) -> None:
    """A new CA (`ca.pem`) and a certificate for `domains` it signs (`NAME.pem`, `NAME-key.pem`).

    The CA's key is not kept: the CA signs this one certificate and no other. The site's key
    is readable by its owner only.
    """
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(days=CERTIFICATE_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "staticsite-xds demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = folder / f"{name}-key.pem"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file was there before
        out.write(key_pem)


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not key_cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`. Connections of an earlier run that linger
    in TIME-WAIT do not count: the servers themselves bind with SO_REUSEADDR too."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


DEFAULT_WORK_DIR = Path("demo-run")  # Envoy's bootstrap and log, replaced on every run
DEFAULT_METRICS_PORT = 9102


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """The ports the demo listens on, all on 127.0.0.1."""

    xds: int = 18000
    http: int = 8080
    https: int = 8443
    admin: int = 9901
    metrics: int = DEFAULT_METRICS_PORT

    def flags(self) -> tuple[tuple[str, int], ...]:
        return (
            ("--xds-port", self.xds),
            ("--http-port", self.http),
            ("--https-port", self.https),
            ("--admin-port", self.admin),
            ("--metrics-port", self.metrics),
        )


def run_demo(sites: Path, ports: DemoPorts, work_dir: Path = DEFAULT_WORK_DIR) -> int:
    xds_port, http_port, https_port, admin_port = ports.xds, ports.http, ports.https, ports.admin
    flags = ports.flags()
    for index, (flag, port) in enumerate(flags):
        if not 1 <= port <= 65535:
            print(f"staticsite-xds demo: {flag} {port}: a port is from 1 to 65535")
            return 2
        same = [other for other, p in flags[:index] if p == port]
        if same:
            print(f"staticsite-xds demo: {flag} and {same[0]} are both {port}; give each its own port")
            return 2
    taken = [f"{flag} {p}" for flag, p in flags if not port_free(p)]
    if taken:
        print(f"staticsite-xds demo: port already in use: {', '.join(taken)}; choose another with that flag")
        return 2
    if work_dir.exists() and not work_dir.is_dir():
        print(f"staticsite-xds demo: --work-dir {work_dir}: not a folder")
        return 2
    if not sites.exists():
        seed(sites)
    sites = sites.resolve()
    work_dir = work_dir.resolve()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        for old in (work_dir / "envoy.log", work_dir / "bootstrap.json"):  # this run's, not the last's
            old.unlink(missing_ok=True)
    except OSError as exc:
        print(f"staticsite-xds demo: --work-dir {work_dir}: {exc.strerror or exc}")
        return 2
    options = BuildOptions(
        http_port=http_port,
        https_port=https_port,
        public_https_port=https_port,  # no load balancer here: redirects name the gateway's port
        listen_address="127.0.0.1",
        backend_host_template="127.0.0.1",
        route_shards=DEFAULT_ROUTE_SHARDS,
    )
    backends = _Backends()
    states: dict[SiteKey, Phase] = {}

    def note_states(result: BuildResult, _took: float) -> None:
        states.clear()
        states.update((key, state.phase) for key, state in result.sites.items())

    surfaces = OperatorSurfaces()
    plane = ControlPlane(
        options,
        observers=[
            *surfaces.observers(),
            ObserverFuncs(on_built=note_states, on_published=backends.ensure),
        ],
    )
    surfaces.expose(plane)
    envoy = LocalEnvoy(local_bootstrap(xds_port, admin_port), work_dir, log_level="warning")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(
            plane.run(
                FolderSource(sites).watch(stop),
                f"127.0.0.1:{xds_port}",
                stop,
                surfaces.companions(stop, f"127.0.0.1:{ports.metrics}"),
                services=surfaces.services,
            )
        )
        try:
            await asyncio.to_thread(envoy.start)
            for _ in range(200):
                if envoy.ready() or serving.done():
                    break
                await asyncio.sleep(0.05)
            if not serving.done():
                served = [s for s in plane.sites.sites.values() if states.get(s.key) == Phase.PROVISIONED]
                print(banner(sites, served, ports, envoy.log_path), flush=True)
            await serving
        finally:
            stop.set()
            await asyncio.to_thread(envoy.stop)
            backends.stop()

    asyncio.run(run())
    print("\nstaticsite-xds demo stopped.")
    return 0


def banner(sites: Path, served: Iterable[StaticSite], ports: DemoPorts, envoy_log: Path) -> str:
    """What the demo prints once Envoy is ready: where things are, and curl lines to try."""
    http_port, https_port = ports.http, ports.https
    gw = f"http://127.0.0.1:{http_port}"
    operations = f"http://127.0.0.1:{ports.metrics}"
    lines = [
        "",
        "staticsite-xds demo is running (Ctrl-C stops everything):",
        f"  control plane (ADS)  127.0.0.1:{ports.xds}",
        f"  Envoy gateway        {gw}   https://127.0.0.1:{https_port}   admin: http://127.0.0.1:{ports.admin}",
        f"  sites folder         {sites}",
        f"  metrics and health   {operations}/metrics   {operations}/readyz   {operations}/debug/envoys",
        f"  Envoy's log          {envoy_log}",
        "",
        "What the gateways hold, and every site's state:",
        f"  staticsite-xds status --xds-address 127.0.0.1:{ports.xds} --sites",
        "",
        "Try:",
        *_try_lines(sites, served, http_port, https_port),
        "",
        "Add a site by dropping a file into the folder; it is served within a second:",
        f"  cat > {shlex.quote(str(sites / 'blog.yaml'))} <<'EOF'",
        *[
            "  " + line
            for line in manifest("blog", "docs", "blog.example.test", "blog-svc", 18084).splitlines()
        ],
        "  EOF",
        f"  curl -H 'Host: blog.example.test' {gw}/",
        "(the demo starts a sample backend on 127.0.0.1 for every servicePort the sites name)",
        "",
    ]
    return "\n".join(lines)


def _try_lines(folder: Path, served: Iterable[StaticSite], http_port: int, https_port: int) -> list[str]:
    """A curl line for each feature the served sites show, grouped by feature."""
    gw = f"http://127.0.0.1:{http_port}"
    ca_file = folder / CA_FILE
    ca = _read_ca(ca_file)
    plain: list[str] = []
    mounted: list[str] = []
    secure: list[str] = []
    redirects: list[str] = []
    headers: list[str] = []
    compressed: list[str] = []

    def https(host: str, certificate: Certificate, path: str, flags: str = "") -> str:
        trust = (
            f"--cacert {shlex.quote(str(ca_file))}"
            if ca is not None and _vouches(ca, certificate, host)
            else "--insecure"
        )
        return (
            f"curl {flags}{trust} --resolve {host}:{https_port}:127.0.0.1 https://{host}:{https_port}{path}"
        )

    for site in sorted(served, key=lambda s: (s.domain, s.path_prefix, s.key)):
        mount = site.path_prefix != "/"
        path = f"{site.path_prefix}/hello" if mount else "/"
        over_http = not site.https_only
        certificate = site.certificate
        for host in map(_example_host, site.hosts):
            if over_http:
                line = f"curl -H 'Host: {host}' {gw}{path}"
                if mount:
                    seen = f"{(site.rewrite_prefix or site.path_prefix).rstrip('/')}/hello"
                    mounted.append(f"{line}     # {site.backend.service_name} sees {seen}")
                else:
                    plain.append(line)
                if site.compression and not mount and not compressed:
                    compressed.append(
                        f"curl -i --compressed -H 'Host: {host}' {gw}/     # content-encoding: br or gzip"
                    )
            else:
                secure.append(
                    f"curl -i -H 'Host: {host}' {gw}{path}     # plain HTTP: 301 to https://{host}:{https_port}{path}"
                )
            if certificate is not None:
                secure.append(https(host, certificate, path))
            if site.headers_set and host == _example_host(site.domain):
                names = ", ".join(name for name, _ in site.headers_set)
                if certificate is not None:
                    headers.append(f"{https(host, certificate, path, '-I ')}     # {names}")
                elif over_http:
                    headers.append(f"curl -I -H 'Host: {host}' {gw}{path}     # {names}")
        target = _example_host(site.domain)
        for host in map(_example_host, site.redirect_from):
            to = f"https://{target}:{https_port}{path}" if site.https_only else f"http://{target}{path}"
            redirects.append(f"curl -i -H 'Host: {host}' {gw}{path}     # 301 to {to}")
            if certificate is not None:
                redirects.append(f"{https(host, certificate, path, '-i ')}     # 301 to {to}")
    plain.append(f"curl -i -H 'Host: nowhere.example.test' {gw}/     # no such site: 404")
    groups = [
        ("", plain),
        ("A site mounted at a path of a domain another site serves:", mounted),
        ("HTTPS (by SNI, the certificate from the site's files):", secure),
        ("Domains that redirect (spec.redirectFrom):", redirects),
        ("Response headers a site sets (spec.responseHeaders):", headers),
        ("Compression (brotli or gzip, when the client asks):", compressed),
    ]
    out: list[str] = []
    for title, group in groups:
        if not group:
            continue
        if title:
            out += ["", title]
        out += [f"  {line}" for line in group]
    return out


def _example_host(host: str) -> str:
    """A name to ask for: a wildcard domain's `*` stands for any one label."""
    return f"demo.{host[2:]}" if host.startswith("*.") else host


def _read_ca(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _vouches(ca: x509.Certificate, certificate: Certificate, host: str) -> bool:
    """Whether a client trusting only `ca` accepts `certificate` for `host` (now)."""
    try:
        leaf, *chain = x509.load_pem_x509_certificates(certificate.chain)
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(host))
        verifier.verify(leaf, chain)
    except (VerificationError, ValueError):
        return False
    return True
