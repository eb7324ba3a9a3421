"""Gateway groups end to end: one `serve` process over mutual TLS with a folder of sites in two
gateway groups, `blue` and `green`, and a real Envoy of each group, on loopback.

A throwaway CA signs the control plane's certificate and each gateway's client certificate
(with the name `staticsite-xds certificates` writes for its group). Each Envoy must hold and
serve its own group's sites and Secrets only; clients that belong to no group get nothing;
a site outside its namespace's grant is reported and not served, and a grant revoked in the
GatewayGroup file takes the site off its group's Envoy.

Both Envoys get the same listeners (one address and port for every group, as in a cluster
where each gateway is a pod of its own), which Envoy binds with SO_REUSEPORT: the kernel hands
each new connection to one of them. A request meant for one Envoy is sent on a connection
that Envoy's own listener statistics show it accepted (`GatewayConnection`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from support.envoy_dump import dynamic, route_domains
from support.manifests import manifest
from support.mutual_tls import SERVER_NAME, mtls_bootstrap, secret_files
from support.processes import free_port, free_ports, run_cli
from support.waiting import eventually, wait_until

from snapshot.model import API_VERSION
from snapshot.resources import CLUSTER_TYPE
from snapshot.tenancy import default_client_name
from xds_server.local.ads_client import SotwClient
from xds_server.local.control_plane import ControlPlaneProcess
from xds_server.local.gateway import LocalEnvoy
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy

BLUE, GREEN = "blue", "green"
WAIT = 10.0  # seconds: the longest a change may take to reach an Envoy

GATEWAY_GROUP = """\
apiVersion: {api}
kind: GatewayGroup
metadata: {{name: {name}}}
spec:
  grants:
{grants}"""
GRANT = "  - namespaces: {{names: [{namespace}]}}\n    domains: [{domains}]\n"


def gateway_group(name: str, *grants: tuple[str, str]) -> str:
    """A GatewayGroup `name` (clientNames left to their default) granting each (namespace,
    domain pattern) of `grants`."""
    lines = "".join(GRANT.format(namespace=ns, domains=f'"{pattern}"') for ns, pattern in grants)
    return GATEWAY_GROUP.format(api=API_VERSION, name=name, grants=lines)


BLUE_GRANTS = (("blue-team", "**.blue.example.test"), ("shop-team", "shop.blue.example.test"))
GREEN_GRANTS = (("green-team", "**.green.example.test"),)


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """One site of the folder: where it lives, its domain, its group, and whether it has TLS."""

    namespace: str
    name: str
    domain: str
    group: str
    https: bool = False

    @property
    def backend(self) -> str:
        """The name of its backend (what the `x-backend` header says)."""
        return f"{self.namespace}-{self.name}"

    @property
    def file(self) -> str:
        return f"{self.namespace}-{self.name}.yaml"

    def manifest(self, port: int) -> str:
        text = manifest(self.name, self.domain, self.backend, port, self.namespace)
        text += f"  gatewayGroup: {self.group}\n"
        if self.https:
            files = f"../certs/{self.namespace}/{self.name}"
            text += f"  tls: {{certificateFile: {files}.crt, keyFile: {files}.key}}\n"
        return text


BLUE_DOCS = SiteSpec("blue-team", "docs", "docs.blue.example.test", BLUE)
BLUE_SECURE = SiteSpec("blue-team", "secure", "secure.blue.example.test", BLUE, https=True)
SHOP = SiteSpec("shop-team", "shop", "shop.blue.example.test", BLUE)
GREEN_DOCS = SiteSpec("green-team", "docs", "docs.green.example.test", GREEN)
GREEN_SECURE = SiteSpec("green-team", "secure", "secure.green.example.test", GREEN, https=True)
STRAY = SiteSpec("blue-team", "stray", "stray.green.example.test", GREEN)  # outside blue-team's grant
SITES = (BLUE_DOCS, BLUE_SECURE, SHOP, GREEN_DOCS, GREEN_SECURE, STRAY)
SERVED = {BLUE: (BLUE_DOCS, BLUE_SECURE, SHOP), GREEN: (GREEN_DOCS, GREEN_SECURE)}


# -- what an Envoy holds ----------------------------------------------------------------------


def cluster_names(envoy: LocalEnvoy) -> set[str]:
    return {c["cluster"]["name"] for c in dynamic(envoy, "ClustersConfigDump", "dynamic_active_clusters")}


def https_server_names(envoy: LocalEnvoy) -> set[str]:
    """The server names of the filter chains of Envoy's active listeners."""
    return {
        name
        for listener in dynamic(envoy, "ListenersConfigDump", "dynamic_listeners")
        for chain in listener.get("active_state", {}).get("listener", {}).get("filter_chains", [])
        for name in chain.get("filter_chain_match", {}).get("server_names", [])
    }


def secret_names(envoy: LocalEnvoy) -> set[str]:
    """The Secrets the control plane sent (the gateway's own client certificate, read from a
    file by the bootstrap, left out)."""
    secrets = dynamic(envoy, "SecretsConfigDump", "dynamic_active_secrets")
    return {s["name"] for s in secrets} - {"xds-client-certificate"}


def secret_certificates(envoy: LocalEnvoy) -> set[str]:
    """The certificate chains (PEM) of the Secrets Envoy holds, as the config dump shows them."""
    pems = set()
    for secret in dynamic(envoy, "SecretsConfigDump", "dynamic_active_secrets"):
        if secret["name"] == "xds-client-certificate":
            continue
        chain = secret["secret"].get("tls_certificate", {}).get("certificate_chain", {})
        pems.add(chain.get("inline_bytes", chain.get("inline_string", "")))
    return pems


# -- the gateways -----------------------------------------------------------------------------


@dataclass
class Gateways:
    """The control plane, its folder of sites and the Envoy of each group."""

    sites: Path
    plane: ControlPlaneProcess
    envoys: dict[str, LocalEnvoy]
    http_port: int
    https_port: int
    ca: trustme.CA
    certificates: dict[str, trustme.LeafCert]  # each HTTPS site's, by its domain
    backends: dict[str, SampleBackend]  # by name
    client_tls: dict[str, Path]  # the folder of each group's client certificate files

    def write(self, relative: str, text: str) -> None:
        """Write a file of the folder atomically (a hidden file renamed over it)."""
        path = self.sites / relative
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def accepted(self, port: int) -> dict[str, int]:
        """How many connections to `port` each Envoy holds open (those its listener filters
        still look at, as the TLS inspector does until the client's hello, included)."""
        suffixes = (f"_{port}.downstream_cx_active", f"_{port}.downstream_pre_cx_active")
        return {
            group: sum(v for k, v in envoy.stats("listener.").items() if k.endswith(suffixes))
            for group, envoy in self.envoys.items()
        }

    def connect(self, group: str, port: int, timeout: float = WAIT) -> socket.socket:
        """A TCP connection to `port` that the Envoy of `group` accepted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            wait_until(lambda: not any(self.accepted(port).values()), what=f"no connection open to {port}")
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            holders = wait_until(
                lambda: [g for g, n in self.accepted(port).items() if n], what="an Envoy to accept"
            )
            if holders == [group]:
                return sock
            sock.close()
        raise AssertionError(f"no connection to {port} reached the Envoy of {group} within {timeout}s")

    def get(self, group: str, host: str, *, tls: ssl.SSLContext | None = None) -> Answer:
        """GET / for `host` through the Envoy of `group` (over HTTPS with `host` as SNI if `tls`)."""
        conn = GatewayConnection(self, group, host, tls)
        try:
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            return Answer(response.status, response.getheader("x-backend"), body, conn.peer)
        finally:
            conn.close()

    def client_credentials(self, name: str, ca: trustme.CA | None = None) -> grpc.ChannelCredentials:
        """Credentials of a gRPC client with a certificate for `name` by `ca` (this CA's by default)."""
        leaf = (ca or self.ca).issue_cert(name)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem.bytes(),
            private_key=leaf.private_key_pem.bytes(),
            certificate_chain=leaf.cert_chain_pems[0].bytes(),
        )

    def published(self, group: str) -> int:
        """How many snapshots the control plane logged as published to `group`."""
        return self.plane.log().count(f": gateway group {group}, ")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    backend: str | None
    body: str
    peer: bytes | None  # the certificate the Envoy showed (DER), over HTTPS


class GatewayConnection(http.client.HTTPConnection):
    """HTTP (or HTTPS, with `server_name` as SNI) on a connection the Envoy of `group` accepted."""

    def __init__(
        self, gateways: Gateways, group: str, server_name: str, context: ssl.SSLContext | None
    ) -> None:
        port = gateways.https_port if context is not None else gateways.http_port
        super().__init__("127.0.0.1", port, timeout=5)
        self.gateways = gateways
        self.group = group
        self.server_name = server_name
        self.context = context
        self.peer: bytes | None = None

    def connect(self) -> None:
        sock = self.gateways.connect(self.group, self.port)
        if self.context is not None:
            wrapped = self.context.wrap_socket(sock, server_hostname=self.server_name)
            self.peer = wrapped.getpeercert(binary_form=True)
            sock = wrapped
        self.sock = sock


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


@contextlib.contextmanager
def running_gateways(root: Path) -> Iterator[Gateways]:
    ca = trustme.CA()
    sites = root / "sites"
    certificates: dict[str, trustme.LeafCert] = {}
    server_tls = root / "server-tls"
    server_tls.mkdir()
    for name, data in secret_files(ca, ca.issue_cert(SERVER_NAME, "127.0.0.1")).items():
        (server_tls / name).write_bytes(data)
    xds_port, http_port, https_port = free_ports(3)
    flags = ["--https-port", str(https_port)]
    for flag, name in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-client-ca", "ca.crt")):
        flags += [flag, str(server_tls / name)]
    with contextlib.ExitStack() as stack:
        backends = {s.backend: stack.enter_context(SampleBackend(s.backend)) for s in SITES}
        for spec in SITES:
            path = sites / spec.namespace / f"{spec.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec.manifest(backends[spec.backend].port))
            if spec.https:  # its files where its manifest names them
                leaf = ca.issue_cert(spec.domain)
                certificates[spec.domain] = leaf
                chain, key = (sites / "certs" / spec.namespace / f"{spec.name}.{x}" for x in ("crt", "key"))
                chain.parent.mkdir(parents=True, exist_ok=True)
                chain.write_bytes(leaf.cert_chain_pems[0].bytes())
                key.write_bytes(leaf.private_key_pem.bytes())
        (sites / "groups").mkdir()
        (sites / "groups" / "blue.yaml").write_text(gateway_group(BLUE, *BLUE_GRANTS))
        (sites / "groups" / "green.yaml").write_text(gateway_group(GREEN, *GREEN_GRANTS))
        plane = ControlPlaneProcess(sites, root, xds_port, http_port, extra=flags)
        stack.callback(plane.stop)
        plane.start()
        envoys: dict[str, LocalEnvoy] = {}
        client_folders: dict[str, Path] = {}
        for group in (BLUE, GREEN):
            client_tls = client_folders[group] = root / f"{group}-tls"
            client_tls.mkdir()
            leaf = ca.issue_cert(default_client_name(group))
            for name, data in secret_files(ca, leaf).items():
                (client_tls / name).write_bytes(data)
            workdir = root / f"envoy-{group}"
            boot = mtls_bootstrap(
                workdir, client_tls, xds_port, free_port(), f"gw-{group}", gateway_group=group
            )
            envoys[group] = stack.enter_context(LocalEnvoy(boot, workdir))
        gateways = Gateways(
            sites, plane, envoys, http_port, https_port, ca, certificates, backends, client_folders
        )
        for group in envoys:
            wait_until(lambda g=group: holds_its_sites(gateways, g), 20, what=f"the Envoy of {group} ready")
        yield gateways


def holds_its_sites(gateways: Gateways, group: str) -> bool:
    """The Envoy of `group` routes every site its group serves."""
    return {s.domain for s in SERVED[group]} <= route_domains(gateways.envoys[group])


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with running_gateways(tmp_path_factory.mktemp("gateway-groups")) as running:
        yield running


# -- each Envoy holds and serves its own group's sites only -------------------------------------


def cluster_of(gateways: Gateways, spec: SiteSpec) -> str:
    return f"{spec.namespace}/{spec.backend}/{gateways.backends[spec.backend].port}"


def secret_of(gateways: Gateways, spec: SiteSpec) -> str:
    """The name of the Secret the folder source makes of a site's certificate files."""
    return f"file/{gateways.sites / 'certs' / spec.namespace / spec.name}.crt"


@pytest.mark.parametrize("group", [BLUE, GREEN])
def test_each_envoy_holds_only_its_groups_resources(gateways: Gateways, group: str) -> None:
    envoy = gateways.envoys[group]
    served = SERVED[group]
    https = [s for s in served if s.https]
    assert cluster_names(envoy) == {cluster_of(gateways, s) for s in served}
    routes: dict[str, set[str]] = {}  # listener -> the domains of its routes (over every shard)
    for r in dynamic(envoy, "RoutesConfigDump", "dynamic_route_configs"):
        listener = r["route_config"]["name"].split("/")[0]
        routes.setdefault(listener, set()).update(
            d for v in r["route_config"]["virtual_hosts"] for d in v["domains"]
        )
    assert routes == {"http": {s.domain for s in served} | {"*"}, "https": {s.domain for s in https} | {"*"}}
    assert https_server_names(envoy) == {s.domain for s in https}
    assert secret_names(envoy) == {secret_of(gateways, s) for s in https}
    held = {base64.b64decode(pem).decode() for pem in secret_certificates(envoy)}
    assert held == {gateways.certificates[s.domain].cert_chain_pems[0].bytes().decode() for s in https}


def expected(spec: SiteSpec, group: str, *, tls: bool) -> tuple[int, str | None]:
    """What the Envoy of `group` answers for `spec`'s domain: its backend if the group serves it,
    a redirect to HTTPS for an HTTPS site asked over HTTP, else the gateways' 404."""
    if spec not in SERVED[group]:
        return 404, None
    if spec.https and not tls:
        return 301, None
    return 200, spec.backend


@pytest.mark.parametrize("group", [BLUE, GREEN])
def test_each_envoy_routes_only_its_groups_sites(gateways: Gateways, group: str) -> None:
    for spec in SITES:
        answer = gateways.get(group, spec.domain)
        assert (answer.status, answer.backend) == expected(spec, group, tls=False), spec
    nowhere = gateways.get(group, "nowhere.example.test")
    assert nowhere.status == 404
    assert "No site" in nowhere.body


@pytest.mark.parametrize("group", [BLUE, GREEN])
def test_each_envoy_offers_only_its_groups_certificates(gateways: Gateways, group: str) -> None:
    context = ssl.create_default_context(cadata=gateways.ca.cert_pem.bytes().decode())
    for spec in (BLUE_SECURE, GREEN_SECURE):
        if spec in SERVED[group]:
            answer = gateways.get(group, spec.domain, tls=context)
            assert (answer.status, answer.backend) == expected(spec, group, tls=True)
            assert answer.peer == der(gateways.certificates[spec.domain])
        else:  # no filter chain for the name: the handshake fails, no certificate is shown
            with pytest.raises((ssl.SSLError, ConnectionError)):
                gateways.get(group, spec.domain, tls=context)


def test_status_shows_each_envoy_in_its_group(gateways: Gateways) -> None:
    client = gateways.client_tls[BLUE]
    proc = run_cli(
        "status",
        "--xds-address",
        f"127.0.0.1:{gateways.plane.xds_port}",
        "--json",
        "--tls-ca",
        client / "ca.crt",
        "--tls-cert",
        client / "tls.crt",
        "--tls-key",
        client / "tls.key",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    envoys = {e["node_id"]: (e["gateway_group"], e["client_names"]) for e in report["envoys"]}
    assert envoys == {
        "gw-blue": (BLUE, [default_client_name(BLUE)]),
        "gw-green": (GREEN, [default_client_name(GREEN)]),
    }
    assert set(report["snapshots"]) == {BLUE, GREEN}


# -- clients of no group get nothing ----------------------------------------------------------


async def ends_unanswered(client: SotwClient) -> grpc.StatusCode:
    """Ask for clusters; the status the stream ends with (it fails if a response comes first)."""
    try:
        client.subscribe(CLUSTER_TYPE)
        return await client.end(within=WAIT)
    finally:
        await client.close()


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(gateways: Gateways) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=gateways.ca.cert_pem.bytes())
    client = SotwClient(gateways.plane.xds_port, "gw-anonymous", BLUE, credentials=credentials)
    assert await ends_unanswered(client) is grpc.StatusCode.UNAVAILABLE
    assert "gw-anonymous" not in gateways.plane.log()  # no stream was ever opened


async def test_a_client_certified_by_another_ca_is_refused_at_the_handshake(gateways: Gateways) -> None:
    credentials = gateways.client_credentials(default_client_name(BLUE), ca=trustme.CA())
    client = SotwClient(gateways.plane.xds_port, "gw-forged", BLUE, credentials=credentials)
    assert await ends_unanswered(client) is grpc.StatusCode.UNAVAILABLE
    assert "gw-forged" not in gateways.plane.log()


async def test_a_client_declaring_another_group_than_its_certificates_is_refused(
    gateways: Gateways,
) -> None:
    credentials = gateways.client_credentials(default_client_name(GREEN))
    client = SotwClient(gateways.plane.xds_port, "gw-sly", BLUE, credentials=credentials)
    assert await ends_unanswered(client) is grpc.StatusCode.PERMISSION_DENIED
    line = await eventually(lambda: refusal_logged(gateways, "gw-sly"), within=WAIT)
    assert f"cluster {BLUE}, ipv4:127.0.0.1:" in line  # the stream, as every stream line names it
    assert f"certificate names {default_client_name(GREEN)}, declared gateway group 'blue'" in line
    assert (
        "the node declares another gateway group than its client certificate's ('blue', not 'green')" in line
    )


async def test_a_client_whose_certificate_is_no_groups_is_refused(gateways: Gateways) -> None:
    credentials = gateways.client_credentials("gateway-1.gateways")
    client = SotwClient(gateways.plane.xds_port, "gw-stranger", "", credentials=credentials)
    assert await ends_unanswered(client) is grpc.StatusCode.PERMISSION_DENIED
    line = await eventually(lambda: refusal_logged(gateways, "gw-stranger"), within=WAIT)
    assert "the client certificate is no gateway group's (names: gateway-1.gateways)" in line


def refusal_logged(gateways: Gateways, node: str) -> str | None:
    """The control plane's log line refusing the stream of `node`, once it is written."""
    for line in gateways.plane.log().splitlines():
        if f"(node {node}, " in line and " refused: " in line:
            return line
    return None


# -- grants -----------------------------------------------------------------------------------


def test_a_site_outside_its_grant_is_reported_and_not_served(gateways: Gateways) -> None:
    line = (
        f"WARNING staticsite_xds.status: site {STRAY.namespace}/{STRAY.name} is Invalid "
        f"(DomainNotPermitted): domain {STRAY.domain} is not granted to namespace {STRAY.namespace} "
        f"in gateway group {GREEN} (it is granted to: green-team)"
    )
    assert line in gateways.plane.log()
    for group, envoy in gateways.envoys.items():
        assert STRAY.domain not in route_domains(envoy)
        assert cluster_of(gateways, STRAY) not in cluster_names(envoy)
        answer = gateways.get(group, STRAY.domain)
        assert (answer.status, answer.backend) == (404, None)
    assert gateways.backends[STRAY.backend].requests == 0


def test_a_revoked_grant_takes_its_site_off_the_groups_envoy(gateways: Gateways) -> None:
    blue = gateways.envoys[BLUE]
    before = {group: gateways.published(group) for group in (BLUE, GREEN)}
    revoked = tuple(g for g in BLUE_GRANTS if g[0] != SHOP.namespace)
    started = time.monotonic()
    gateways.write("groups/blue.yaml", gateway_group(BLUE, *revoked))
    try:
        wait_until(lambda: SHOP.domain not in route_domains(blue), WAIT, what="shop to leave blue's routes")
        took = time.monotonic() - started
        state = (
            f"site {SHOP.namespace}/{SHOP.name} is Invalid (DomainNotPermitted): domain {SHOP.domain} "
            f"is not granted to namespace {SHOP.namespace} in gateway group {BLUE} (it is granted to: blue-team)"
        )
        assert state in gateways.plane.log()
        assert gateways.published(BLUE) == before[BLUE] + 1  # one build took it off
        assert gateways.published(GREEN) == before[GREEN]
        assert took < WAIT
        answer = gateways.get(BLUE, SHOP.domain)
        assert (answer.status, answer.backend) == (404, None)
        assert gateways.get(BLUE, BLUE_DOCS.domain).backend == BLUE_DOCS.backend
        cluster = cluster_of(gateways, SHOP)
        wait_until(
            lambda: cluster not in cluster_names(blue), WAIT, what="shop's cluster to leave blue's Envoy"
        )
    finally:  # granted again, for whichever test comes next
        gateways.write("groups/blue.yaml", gateway_group(BLUE, *BLUE_GRANTS))
        wait_until(lambda: SHOP.domain in route_domains(blue), WAIT, what="shop back in blue's routes")
    assert gateways.get(BLUE, SHOP.domain).backend == SHOP.backend
