"""What each StaticSite feature does at a real Envoy: HTTPS by SNI and certificate renewal,
HTTP to HTTPS, aliases and redirect domains, wildcard domains, sites mounted at a path,
response headers, compression, health checks, timeouts and connect retries.

Each test runs the control plane in process, fed by a source the test writes to, and a real
Envoy on loopback ports, in front of sample backends that say who answered and what path
they were asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import http.client
import importlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from support.processes import free_ports
from support.site_source import Sites
from support.sites import site
from support.waiting import eventually

from snapshot import resources as rs
from snapshot.builder import DEFAULT_ROUTE_SHARDS, BuildOptions
from snapshot.certificates import load_certificate
from snapshot.model import Certificate, HealthCheck, StaticSite, TlsSpec
from snapshot.resources import UNKNOWN_DOMAIN_BODY, cluster_name
from xds_server.local.gateway import LocalEnvoy, local_bootstrap
from xds_server.local.sample_backend import SampleBackend
from xds_server.process.control_plane import ControlPlane

pytestmark = pytest.mark.envoy

Backends = Callable[[str], SampleBackend]
NAMESPACE = "docs"
WAIT = 15.0  # seconds: the longest any change may take to reach Envoy


# -- the gateway: an in-process control plane and a real Envoy -------------------------------


@dataclasses.dataclass
class Answer:
    """One HTTP response as the client saw it."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    peer: bytes | None = None  # the server's certificate (DER), over HTTPS

    @property
    def backend(self) -> str | None:
        return self.headers.get("x-backend")

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class SniConnection(http.client.HTTPConnection):
    """HTTPS to 127.0.0.1 with a server name of our choosing (SNI), whatever the port."""

    def __init__(self, port: int, server_name: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.server_name = server_name
        self.context = context
        self.connects = 0

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.server_name)
        self.connects += 1

    def peer(self) -> bytes | None:
        sock = self.sock
        return sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None


def exchange(
    conn: http.client.HTTPConnection, host: str, path: str, headers: dict[str, str] | None = None
) -> Answer:
    """One GET on `conn`, sending exactly the headers given (http.client adds none but Host)."""
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    peer = conn.peer() if isinstance(conn, SniConnection) else None
    response = conn.getresponse()
    return Answer(response.status, response.headers, response.read(), peer)


def fetch(
    port: int,
    host: str,
    path: str = "/",
    *,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Answer:
    """GET on a new connection; over TLS with `host` as the server name when `tls` is given."""
    conn = (
        SniConnection(port, host, tls, timeout)
        if tls is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    )
    try:
        return exchange(conn, host, path, headers)
    finally:
        conn.close()


def handshake(port: int, server_name: str | None, context: ssl.SSLContext) -> bytes | None:
    """A bare TLS handshake; the certificate the server showed (it raises when there is none)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def trusting_anything() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate(leaf: trustme.LeafCert, name: str) -> Certificate:
    chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
    return load_certificate(name, chain, leaf.private_key_pem.bytes())


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def serial_of(der_cert: bytes) -> int:
    return x509.load_der_x509_certificate(der_cert).serial_number


def dns_names(der_cert: bytes) -> list[str]:
    extension = x509.load_der_x509_certificate(der_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    names: list[str] = extension.value.get_values_for_type(x509.DNSName)
    return names


def tls_site(
    name: str,
    domain: str,
    backend: SampleBackend,
    cert: Certificate,
    *,
    allow_insecure: bool = False,
    **fields: Any,
) -> StaticSite:
    spec = TlsSpec(certificate_file=f"{name}.crt", key_file=f"{name}.key", allow_insecure=allow_insecure)
    return site(name, domain, port=backend.port, generation=1, tls=spec, certificate=cert, **fields)


@dataclasses.dataclass
class Gateway:
    source: Sites
    envoy: LocalEnvoy
    http_port: int
    https_port: int

    async def get(
        self,
        host: str,
        path: str = "/",
        *,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        port = self.https_port if tls is not None else self.http_port
        return await asyncio.to_thread(fetch, port, host, path, tls=tls, headers=headers)

    async def wait(
        self,
        host: str,
        path: str = "/",
        *,
        until: Callable[[Answer], bool],
        what: str,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Ask until the answer is as wanted (a refused connection counts as not yet)."""

        async def check() -> Answer | None:
            try:
                answer = await self.get(host, path, tls=tls, headers=headers)
            except OSError:
                return None
            return answer if until(answer) else None

        return await eventually(check, within=WAIT, what=what, interval=0.05)

    async def served(
        self, host: str, backend: str, path: str = "/", tls: ssl.SSLContext | None = None
    ) -> Answer:
        return await self.wait(
            host,
            path,
            tls=tls,
            until=lambda a: a.status == 200 and f"Hello from {backend}:" in a.text,
            what=f"{host}{path} to be served by {backend}",
        )

    async def stat(self, name: str) -> int:
        return await asyncio.to_thread(self.envoy.stat, name)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *sites: StaticSite,
    variant: str = "delta",
    stats: tuple[str, ...] = (),
    redirect_to_listener: bool = False,
    route_shards: int = DEFAULT_ROUTE_SHARDS,
) -> AsyncIterator[Gateway]:
    """A control plane serving `sites` and an Envoy that took its first configuration.

    `variant`: "delta" (incremental ADS, the bootstrap's own) or "sotw" (state of the world).
    `stats`: prefixes of stats Envoy should keep besides the bootstrap's own.
    `redirect_to_listener`: redirects to HTTPS name the HTTPS listener's port, as when clients
    reach the gateway directly (by default they name none: 443, behind a load balancer).
    `route_shards`: as `serve` shards the routes by default (1: one route configuration).
    """
    http_port, https_port, admin_port, xds_port = free_ports(4)
    options = BuildOptions(
        http_port=http_port,
        https_port=https_port,
        public_https_port=https_port if redirect_to_listener else 443,
        listen_address="127.0.0.1",
        backend_host_template="127.0.0.1",
        route_shards=route_shards,
    )
    plane = ControlPlane(options, hold_off=0.002, max_delay=0.02)
    source = Sites()
    source.declare(*sites)
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(source.watch(stop), f"127.0.0.1:{xds_port}", stop))
    bootstrap = local_bootstrap(xds_port, admin_port, node_id=f"gateway-{variant}")
    if variant == "sotw":
        bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "GRPC"
    patterns = bootstrap["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    patterns.extend({"prefix": prefix} for prefix in stats)
    envoy = LocalEnvoy(bootstrap, tmp_path / f"envoy-{variant}")
    try:
        await asyncio.to_thread(envoy.start)
        await eventually(lambda: asyncio.to_thread(envoy.ready), within=WAIT, what="Envoy to be ready")
        yield Gateway(source, envoy, http_port, https_port)
    finally:
        stop.set()
        await asyncio.to_thread(envoy.stop)
        await asyncio.wait_for(task, 15)


async def repeatedly(times: int, call: Callable[[], Awaitable[Answer]]) -> list[Answer]:
    return [await call() for _ in range(times)]


# -- HTTPS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_each_https_domain_gets_its_own_certificate_and_backend_by_sni(
    variant: str, tmp_path: Path, backends: Backends
) -> None:
    ca = trustme.CA()
    one_leaf, two_leaf = ca.issue_cert("one.example.test"), ca.issue_cert("two.example.test")
    one = tls_site("one", "one.example.test", backends("blue"), certificate(one_leaf, "file/one"))
    two = tls_site("two", "two.example.test", backends("green"), certificate(two_leaf, "file/two"))
    plain = site("plain", "plain.example.test", port=backends("plain").port, generation=1)
    async with running(tmp_path, one, two, plain, variant=variant) as gw:
        trusted = trusting(ca)
        for domain, backend, leaf in (
            ("one.example.test", "blue", one_leaf),
            ("two.example.test", "green", two_leaf),
        ):
            answer = await gw.served(domain, backend, "/page?x=1", tls=trusted)
            assert "you asked for /page?x=1</p>" in answer.text
            assert answer.peer == der(leaf), f"{domain} was not served with its own certificate"
            assert dns_names(answer.peer) == [domain]

        # The certificate follows the server name only: a client that checks nothing still
        # gets each domain's own certificate.
        anything = trusting_anything()
        for domain, leaf in (("one.example.test", one_leaf), ("two.example.test", two_leaf)):
            assert await asyncio.to_thread(handshake, gw.https_port, domain, anything) == der(leaf)

        # A site without TLS is not offered on HTTPS, even to a client that checks nothing;
        # neither is an unknown name, nor a handshake without a server name.
        for server_name in ("plain.example.test", "nowhere.example.test", None):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.to_thread(handshake, gw.https_port, server_name, anything)
        plain_answer = await gw.get("plain.example.test")
        assert (plain_answer.status, plain_answer.backend) == (200, "plain")


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_a_certificate_renewal_fails_no_request(
    variant: str, tmp_path: Path, backends: Backends
) -> None:
    ca = trustme.CA()
    domain = "renew.example.test"
    old_leaf = ca.issue_cert(domain)
    first = tls_site("renew", domain, backends("web"), certificate(old_leaf, "file/renew"))
    async with running(tmp_path, first, variant=variant) as gw:
        context = trusting(ca)
        await gw.served(domain, "web", tls=context)
        modified = await gw.stat("listener_manager.listener_modified")
        client = HttpsClient(gw.https_port, domain, context)
        client.start()
        try:
            await eventually(lambda: client.fresh >= 10 and client.kept >= 10, within=WAIT, what="traffic")
            new_leaf = ca.issue_cert(domain)
            assert serial_of(der(new_leaf)) != serial_of(der(old_leaf))
            gw.source.declare(
                dataclasses.replace(first, certificate=certificate(new_leaf, "file/renew"), generation=2)
            )
            await eventually(
                lambda: client.serials and client.serials[-1] == serial_of(der(new_leaf)),
                within=WAIT,
                what="new connections to get the new certificate",
            )
            # Go on for longer than Envoy's drain time (1 s): a drained connection would be closed.
            after, renewed = client.fresh, time.monotonic()
            await eventually(
                lambda: client.fresh >= after + 10 and time.monotonic() - renewed > 1.5,
                within=WAIT,
                what="traffic after the renewal",
            )
        finally:
            client.stop()
        assert client.failures == []
        old, new = serial_of(der(old_leaf)), serial_of(der(new_leaf))
        assert set(client.serials) == {old, new}
        switched = client.serials.index(new)
        assert client.serials[:switched] == [old] * switched
        assert client.serials[switched:] == [new] * (len(client.serials) - switched), "back to the old one"
        # The renewal changed no listener: the kept-alive connection was never closed.
        assert await gw.stat("listener_manager.listener_modified") == modified
        assert client.keepalive_connects == 1
        assert client.kept >= 20


class HttpsClient(threading.Thread):
    """Requests without a pause, in turn on a new connection and on one kept-alive connection."""

    def __init__(self, port: int, host: str, context: ssl.SSLContext, limit: float = 60.0) -> None:
        super().__init__(name="https-client", daemon=True)
        self.port, self.host, self.context, self.limit = port, host, context, limit
        self.serials: list[int] = []  # the certificate of each new connection, in order
        self.fresh = 0  # requests answered on new connections
        self.kept = 0  # requests answered on the kept-alive connection
        self.keepalive_connects = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        keepalive = SniConnection(self.port, self.host, self.context, timeout=5)
        deadline = time.monotonic() + self.limit
        try:
            while not self._halt.is_set() and time.monotonic() < deadline:
                try:
                    answer = fetch(self.port, self.host, "/fresh", tls=self.context)
                    if answer.status != 200 or answer.peer is None:
                        self.failures.append(f"new connection: {answer.status} {answer.text[:80]}")
                    else:
                        self.serials.append(serial_of(answer.peer))
                        self.fresh += 1
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"new connection: {exc!r}")
                try:
                    answer = exchange(keepalive, self.host, "/kept")
                    if answer.status != 200:
                        self.failures.append(f"kept-alive connection: {answer.status} {answer.text[:80]}")
                    else:
                        self.kept += 1
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"kept-alive connection: {exc!r}")
                    keepalive.close()
                self.keepalive_connects = keepalive.connects
        finally:
            keepalive.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        assert not self.is_alive()


# -- plain HTTP, domains and paths ----------------------------------------------------------


async def test_http_redirects_to_https_unless_the_site_allows_plain_http(
    tmp_path: Path, backends: Backends
) -> None:
    ca = trustme.CA()
    strict_backend, lenient_backend = backends("strict"), backends("lenient")
    strict = tls_site(
        "strict",
        "strict.example.test",
        strict_backend,
        certificate(ca.issue_cert("strict.example.test"), "file/s"),
    )
    lenient = tls_site(
        "lenient",
        "lenient.example.test",
        lenient_backend,
        certificate(ca.issue_cert("lenient.example.test"), "file/l"),
        allow_insecure=True,
    )
    async with running(tmp_path, strict, lenient, redirect_to_listener=True) as gw:
        context = trusting(ca)
        await gw.served("strict.example.test", "strict", tls=context)
        await gw.served("lenient.example.test", "lenient", tls=context)
        before = strict_backend.requests
        origin = f"https://strict.example.test:{gw.https_port}"
        locations = []
        for path in ("/docs/page.html?x=1&y=two", "/", "/a/b/"):
            answer = await gw.get("strict.example.test", path)
            assert answer.status == 301, (path, answer.status, answer.text)
            assert answer.header("location") == f"{origin}{path}"
            locations.append(answer.header("location") or "")
        assert strict_backend.requests == before, "a redirect reached the backend"

        # Following the redirect reaches the site over HTTPS, with the same path and query.
        location = urllib.parse.urlsplit(locations[0])
        assert location.port is not None
        assert location.hostname is not None
        answer = await asyncio.to_thread(
            fetch, location.port, location.hostname, f"{location.path}?{location.query}", tls=context
        )
        assert (answer.status, answer.backend) == (200, "strict")
        assert "you asked for /docs/page.html?x=1&y=two</p>" in answer.text

        answer = await gw.get("lenient.example.test", "/page?q=1")
        assert (answer.status, answer.backend, answer.header("location")) == (200, "lenient", None)
        assert "you asked for /page?q=1</p>" in answer.text


async def test_aliases_serve_the_site_and_redirect_domains_answer_301_to_its_domain(
    tmp_path: Path, backends: Backends
) -> None:
    ca = trustme.CA()
    main_backend, secure_backend = backends("main"), backends("secure")
    main = site(
        "main",
        "main.example.test",
        port=main_backend.port,
        generation=1,
        aliases=("alias.example.test",),
        redirect_from=("old.example.test", "older.example.test"),
    )
    leaf = ca.issue_cert("secure.example.test", "www.secure.example.test", "also.secure.example.test")
    secure = tls_site(
        "secure",
        "secure.example.test",
        secure_backend,
        certificate(leaf, "file/secure"),
        aliases=("also.secure.example.test",),
        redirect_from=("www.secure.example.test",),
    )
    async with running(tmp_path, main, secure) as gw:
        context = trusting(ca)
        await gw.served("main.example.test", "main")
        answer = await gw.served("alias.example.test", "main", "/p?q=1")
        assert "you asked for /p?q=1</p>" in answer.text
        answer = await gw.served("also.secure.example.test", "secure", "/p?q=1", tls=context)
        assert "you asked for /p?q=1</p>" in answer.text

        before = main_backend.requests, secure_backend.requests
        # Redirects to HTTPS name no port: clients reach the gateways on 443.
        for host, path, location in (
            ("old.example.test", "/a/b?c=d&e=f", "http://main.example.test/a/b?c=d&e=f"),
            ("older.example.test", "/", "http://main.example.test/"),
            ("www.secure.example.test", "/p?q=2", "https://secure.example.test/p?q=2"),
        ):
            answer = await gw.get(host, path)
            assert (answer.status, answer.header("location")) == (301, location), (host, answer.text)
        # Over HTTPS too (the redirect domain is on the site's certificate).
        answer = await gw.get("www.secure.example.test", "/p?q=2", tls=context)
        assert (answer.status, answer.header("location")) == (301, "https://secure.example.test/p?q=2")
        assert (main_backend.requests, secure_backend.requests) == before, "a redirect reached a backend"


async def test_an_exact_domain_beats_a_wildcard(tmp_path: Path, backends: Backends) -> None:
    wild = site("wild", "*.example.test", port=backends("wild").port, generation=1)
    exact = site("exact", "exact.example.test", port=backends("exact").port, generation=1)
    async with running(tmp_path, wild, exact) as gw:
        await gw.served("exact.example.test", "exact")
        await gw.served("other.example.test", "wild")
        assert (await gw.get("exact.example.test")).backend == "exact"
        assert (await gw.get("another.example.test")).backend == "wild"
        answer = await gw.get("example.test")
        assert (answer.status, answer.text) == (404, UNKNOWN_DOMAIN_BODY)


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_route_shards_route_every_domain_and_a_change_reaches_its_shard(
    variant: str, tmp_path: Path, backends: Backends
) -> None:
    shards = 5
    pool = [backends(f"b{k}") for k in range(3)]
    sites = [
        site(f"s{i}", f"s{i}.shard.example.test", port=pool[i % 3].port, generation=1) for i in range(20)
    ]
    wild = site("wild", "*.wild.example.test", port=pool[0].port, generation=1)
    exact = site("exact", "a.wild.example.test", port=pool[1].port, generation=1)
    assert len({rs.shard_of(s.domain, shards) for s in sites}) == shards
    async with running(tmp_path, *sites, wild, exact, variant=variant, route_shards=shards) as gw:
        for i, declared in enumerate(sites):
            await gw.served(declared.domain, f"b{i % 3}")
        # The Lua filter hashes the host as the control plane does: lower case, no port.
        assert (await gw.get("S7.Shard.Example.TEST:8080")).backend == "b1"
        # A shard named by the client is overwritten, not followed.
        other = next(k for k in range(shards) if k != rs.shard_of("s7.shard.example.test", shards))
        spoofed = await gw.get("s7.shard.example.test", headers={rs.SHARD_HEADER: f"h{other}"})
        assert spoofed.backend == "b1"
        # A wildcard is in every shard, and an exact domain beats it in its own.
        assert (await gw.get("a.wild.example.test")).backend == "b1"
        for name in ("b", "c", "dd", "eee", "ffff", "zz"):
            assert (await gw.get(f"{name}.wild.example.test")).backend == "b0", name
        answer = await gw.get("nowhere.example.test")
        assert (answer.status, answer.text) == (404, UNKNOWN_DOMAIN_BODY)
        # A change: a new site and a site moved to another backend.
        gw.source.declare(site("new", "new.shard.example.test", port=pool[2].port, generation=1))
        gw.source.declare(site("s0", "s0.shard.example.test", port=pool[1].port, generation=2))
        await gw.served("new.shard.example.test", "b2")
        await gw.served("s0.shard.example.test", "b1")
        assert (await gw.get("s3.shard.example.test")).backend == "b0"


async def test_sites_mounted_at_paths_of_one_domain(tmp_path: Path, backends: Backends) -> None:
    domain = "mount.example.test"
    sites = [
        site("root", domain, port=backends("root").port, generation=1),
        site("api", domain, port=backends("api").port, generation=1, path_prefix="/api", rewrite_prefix="/"),
        site("docs", domain, port=backends("docs").port, generation=1, path_prefix="/docs"),
        site("v2", domain, port=backends("v2").port, generation=1, path_prefix="/docs/v2"),
    ]
    async with running(tmp_path, *sites) as gw:
        await gw.served(domain, "v2", "/docs/v2")
        cases = [
            # path asked, backend, path the backend sees
            ("/api/x?y=1", "api", "/x?y=1"),
            ("/api", "api", "/"),
            ("/api/", "api", "/"),
            ("/api?y=2", "api", "/?y=2"),
            ("/apix", "root", "/apix"),
            ("/", "root", "/"),
            ("/index.html", "root", "/index.html"),
            ("/docs", "docs", "/docs"),
            ("/docs/intro", "docs", "/docs/intro"),
            ("/docs/v1/page", "docs", "/docs/v1/page"),
            ("/docs/v2x", "docs", "/docs/v2x"),
            ("/docs/v2", "v2", "/docs/v2"),
            ("/docs/v2/page?a=1", "v2", "/docs/v2/page?a=1"),
            ("/docsx", "root", "/docsx"),
        ]
        got = []
        for path, _, _ in cases:
            answer = await gw.get(domain, path)
            seen = answer.text.partition("you asked for ")[2].removesuffix("</p>\n")
            got.append((path, answer.backend, seen))
        assert got == cases


# -- what responses carry ---------------------------------------------------------------------


async def test_response_headers_are_set_over_the_backends_and_removed(
    tmp_path: Path, backends: Backends
) -> None:
    web = backends("web")
    web.headers.update({"cache-control": "no-cache", "x-served-by": "sample"})
    styled = site(
        "styled",
        "styled.example.test",
        port=web.port,
        generation=1,
        headers_set=(
            ("cache-control", "public, max-age=300"),
            ("strict-transport-security", "max-age=63072000"),
            ("x-note", "100% static, %START_TIME% is no formatter"),
        ),
        headers_remove=("x-backend", "x-served-by"),
    )
    bare = site("bare", "bare.example.test", port=web.port, generation=1)
    async with running(tmp_path, styled, bare) as gw:
        answer = await gw.wait(
            "styled.example.test", until=lambda a: a.status == 200, what="styled.example.test to answer"
        )
        assert "Hello from web:" in answer.text
        assert answer.headers.get_all("cache-control") == ["public, max-age=300"]
        assert answer.headers.get_all("strict-transport-security") == ["max-age=63072000"]
        assert answer.header("x-note") == "100% static, %START_TIME% is no formatter"
        assert answer.header("x-backend") is None
        assert answer.header("x-served-by") is None

        # The same backend through a site that changes nothing: the headers were the backend's.
        answer = await gw.served("bare.example.test", "web")
        assert answer.headers.get_all("cache-control") == ["no-cache"]
        assert answer.header("x-served-by") == "sample"
        assert answer.header("strict-transport-security") is None


async def test_responses_are_compressed_as_the_client_accepts_unless_the_site_says_not(
    tmp_path: Path, backends: Backends
) -> None:
    web = backends("web")
    zipped = site("zipped", "zipped.example.test", port=web.port, generation=1)
    raw = site("raw", "raw.example.test", port=web.port, generation=1, compression=False)
    async with running(tmp_path, zipped, raw) as gw:
        await gw.served("raw.example.test", "web")
        plain = await gw.served("zipped.example.test", "web", "/page.html")
        assert plain.header("content-encoding") is None
        assert plain.header("content-type") == "text/html; charset=utf-8"
        assert len(plain.body) >= 30  # Envoy compresses nothing shorter

        answer = await gw.get("zipped.example.test", "/page.html", headers={"Accept-Encoding": "gzip"})
        assert answer.header("content-encoding") == "gzip"
        assert gzip.decompress(answer.body) == plain.body

        answer = await gw.get("zipped.example.test", "/page.html", headers={"Accept-Encoding": "br"})
        assert answer.header("content-encoding") == "br"
        assert answer.body != plain.body
        brotli = _brotli()
        if brotli is not None:
            assert brotli.decompress(answer.body) == plain.body

        for accepted in ("gzip", "br", "br, gzip"):
            answer = await gw.get("raw.example.test", "/page.html", headers={"Accept-Encoding": accepted})
            assert answer.header("content-encoding") is None, accepted
            assert answer.body == plain.body


def _brotli() -> Any:
    for module in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


# -- backends in trouble ------------------------------------------------------------------------


async def test_an_unhealthy_backend_gets_no_requests_until_it_recovers(
    tmp_path: Path, backends: Backends
) -> None:
    backend = backends("checked")
    assert backend.health_path == "/healthz"
    checked = site(
        "checked",
        "checked.example.test",
        port=backend.port,
        generation=1,
        health_check=HealthCheck("/healthz", interval_ms=500, unhealthy_threshold=1, healthy_threshold=1),
    )
    async with running(tmp_path, checked) as gw:
        await gw.served("checked.example.test", "checked")
        assert backend.health_checks >= 1, "Envoy did not check the backend"

        backend.healthy = False
        answer = await gw.wait(
            "checked.example.test", until=lambda a: a.status == 503, what="the backend to be taken out"
        )
        assert "no healthy upstream" in answer.text
        before = backend.requests
        answers = await repeatedly(5, lambda: gw.get("checked.example.test"))
        assert [a.status for a in answers] == [503] * 5
        assert backend.requests == before, "a request reached the unhealthy backend"

        backend.healthy = True
        await gw.served("checked.example.test", "checked")
        answers = await repeatedly(5, lambda: gw.get("checked.example.test"))
        assert [a.status for a in answers] == [200] * 5


async def test_a_slow_backend_times_out_and_a_refused_connection_is_retried(
    tmp_path: Path, backends: Backends
) -> None:
    slow = backends("slow")
    dead_port, other_dead_port = free_ports(2)
    hurried = site("hurried", "hurried.example.test", port=slow.port, generation=1, request_timeout_ms=300)
    patient = site("patient", "patient.example.test", port=slow.port, generation=1)
    retried = site("retried", "retried.example.test", port=dead_port, generation=1, connect_retries=2)
    once = site("once", "once.example.test", port=other_dead_port, generation=1)
    async with running(tmp_path, hurried, patient, retried, once, stats=(f"cluster.{NAMESPACE}/",)) as gw:
        await gw.served("hurried.example.test", "slow", "/?delay_ms=50")
        started = time.monotonic()
        answer = await gw.get("hurried.example.test", "/?delay_ms=3000")
        took = time.monotonic() - started
        assert answer.status == 504, answer.text
        assert "upstream request timeout" in answer.text
        assert took < 2.0, f"the timeout of 300 ms took {took:.1f} s"
        # The same backend, as slow, through a site with the default timeout (15 s).
        answer = await gw.get("patient.example.test", "/?delay_ms=800")
        assert (answer.status, answer.backend) == (200, "slow")

        retry_stat = f"cluster.{cluster_name(retried.backend)}.upstream_rq_retry"
        once_stat = f"cluster.{cluster_name(once.backend)}.upstream_rq_retry"
        await gw.wait("retried.example.test", until=lambda a: a.status == 503, what="retried to answer 503")
        await gw.wait("once.example.test", until=lambda a: a.status == 503, what="once to answer 503")
        before, once_before = await gw.stat(retry_stat), await gw.stat(once_stat)
        assert before >= 2  # the first answer was retried already
        for _ in range(3):
            answer = await gw.get("retried.example.test")
            assert answer.status == 503, answer.text
            answer = await gw.get("once.example.test")
            assert answer.status == 503, answer.text
        assert await gw.stat(retry_stat) == before + 3 * 2
        assert await gw.stat(once_stat) == once_before == 0
