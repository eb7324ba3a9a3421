"""Gateway groups on the ADS server: each group is served its own snapshot, and a stream's
group comes from its client certificate, over real mutual TLS on loopback.

A throwaway CA signs the server's certificate and one client certificate per group (with the
name `staticsite-xds certificates` writes), and one of no group. The membership maps those
names to groups the way the tenancy does (`ClientNames`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
import prometheus_client
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.sites import SITE_A, SITE_B, build, site, site_set
from support.waiting import eventually
from support.wire import running

from snapshot.builder import BuildOptions
from snapshot.model import API_VERSION
from snapshot.resources import CLUSTER_TYPE
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.tenancy import CLIENT_NAME_SUFFIX, Tenancy, default_client_name, parse_gateway_group
from watcher.siteset import SiteSet
from xds_server.ads.membership import (
    ClientIdentity,
    ClientNames,
    NotAMember,
    SingleGroup,
    refusal_label,
)
from xds_server.ads.server import AdsServer
from xds_server.ads.stream import StreamInfo
from xds_server.local.ads_client import DeltaClient, ScriptedClient, SotwClient, sotw_names
from xds_server.operations.inspection import format_table, server_report
from xds_server.operations.metrics import Metrics
from xds_server.process.control_plane import ControlPlane
from xds_server.process.observer import ObserverFuncs

pytestmark = pytest.mark.unit

ALPHA, BETA = "alpha", "beta"
ALPHA_CLUSTER, BETA_CLUSTER = "default/svc-a/80", "default/svc-b/80"  # SITE_A's and SITE_B's


def of_group(snapshot: Snapshot, group: str) -> Snapshot:
    return dataclasses.replace(snapshot, group=group)


@dataclass
class Groups:
    """Which client name is which group's (tests change it to move or drop a gateway)."""

    by_name: dict[str, str] = field(
        default_factory=lambda: {default_client_name(ALPHA): ALPHA, default_client_name(BETA): BETA}
    )

    def client_group(self, names: Iterable[str]) -> str | None:
        found = {self.by_name[n] for n in names if n in self.by_name}
        return found.pop() if len(found) == 1 else None

    def names(self) -> set[str]:
        return set(self.by_name.values())

    def membership(self) -> ClientNames:
        return ClientNames(self.client_group, self.names)


@dataclass
class Tls:
    ca: trustme.CA
    server: trustme.LeafCert

    def server_credentials(self, *, require_client: bool = True) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server.private_key_pem.bytes(), self.server.cert_chain_pems[0].bytes())],
            root_certificates=self.ca.cert_pem.bytes(),
            require_client_auth=require_client,
        )

    def client(self, *names: str) -> grpc.ChannelCredentials:
        """Credentials presenting a certificate for `names` (none: no client certificate)."""
        root = self.ca.cert_pem.bytes()
        if not names:
            return grpc.ssl_channel_credentials(root_certificates=root)
        leaf = self.ca.issue_cert(*names)
        return grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=leaf.private_key_pem.bytes(),
            certificate_chain=leaf.cert_chain_pems[0].bytes(),
        )


@pytest.fixture(scope="module")
def tls() -> Tls:
    ca = trustme.CA()
    return Tls(ca, ca.issue_cert("127.0.0.1"))


@dataclass
class Served:
    """An ADS server over mutual TLS with the membership of `groups`, and what it told."""

    server: AdsServer
    port: int
    tls: Tls
    groups: Groups
    refused: list[tuple[StreamInfo, str]] = field(default_factory=list)
    sent: list[tuple[int, str]] = field(default_factory=list)  # stream id, type
    clients: list[ScriptedClient] = field(default_factory=list)

    def sotw(self, node_id: str, *names: str, cluster: str = "") -> SotwClient:
        client = SotwClient(self.port, node_id, cluster, credentials=self.tls.client(*names))
        self.clients.append(client)
        return client

    def delta(self, node_id: str, *names: str, cluster: str = "") -> DeltaClient:
        client = DeltaClient(self.port, node_id, cluster, credentials=self.tls.client(*names))
        self.clients.append(client)
        return client

    def stream(self, node_id: str) -> StreamInfo:
        [info] = [s for s in self.server.streams() if s.node_id == node_id]
        return info

    async def alpha_and_beta(self) -> tuple[SotwClient, SotwClient]:
        """Both groups published, and a client of each holding its group's clusters."""
        self.server.publish(ALPHA_SNAPSHOT)
        self.server.publish(BETA_SNAPSHOT)
        alpha = self.sotw("gw-alpha", default_client_name(ALPHA))
        beta = self.sotw("gw-beta", default_client_name(BETA))
        for client in (alpha, beta):
            client.subscribe(CLUSTER_TYPE)
            client.ack(await client.recv())
        return alpha, beta


async def serve(tls: Tls, *, require_client: bool = True) -> AsyncIterator[Served]:
    groups = Groups()
    served: Served | None = None

    def refused(info: StreamInfo, reason: str) -> None:
        assert served is not None
        served.refused.append((info, reason))

    def sent(info: StreamInfo, out: object) -> None:
        assert served is not None
        served.sent.append((info.id, getattr(out, "type_url", "")))

    server = AdsServer(ObserverFuncs(on_refuse=refused, on_sent=sent), membership=groups.membership())
    port = await server.start(
        "127.0.0.1:0", credentials=tls.server_credentials(require_client=require_client)
    )
    served = Served(server, port, tls, groups)
    async with running(server, served):
        yield served


@pytest.fixture
async def ads(tls: Tls) -> AsyncIterator[Served]:
    async for served in serve(tls):
        yield served


ALPHA_SNAPSHOT = of_group(build(SITE_A), ALPHA)
BETA_SNAPSHOT = of_group(build(SITE_B), BETA)


# -- who a client is -------------------------------------------------------------------------


def test_an_identity_is_the_certificates_dns_and_uri_names_and_its_common_name() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-7")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("alpha.gateway-group.staticsite-xds.dev"),
                    x509.UniformResourceIdentifier("spiffe://cluster.local/ns/edge/sa/gateway"),
                    x509.RFC822Name("ops@example.test"),  # not a name of a client
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    identity = ClientIdentity.from_certificate(certificate.public_bytes(serialization.Encoding.PEM))
    assert identity.names == (
        "alpha.gateway-group.staticsite-xds.dev",
        "spiffe://cluster.local/ns/edge/sa/gateway",
        "gateway-7",
    )
    assert ClientIdentity.from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert default_client_name("beta") == "beta" + CLIENT_NAME_SUFFIX


def test_client_names_decide_the_group_and_refuse_a_contradiction() -> None:
    membership = Groups().membership()
    alpha = ClientIdentity((default_client_name(ALPHA), "gateway-1"))
    assert membership.group_of(alpha, "") == ALPHA
    assert membership.group_of(alpha, ALPHA) == ALPHA
    with pytest.raises(NotAMember) as contradicted:
        membership.group_of(alpha, BETA)
    assert refusal_label(str(contradicted.value)) == "declared_another_group"
    with pytest.raises(NotAMember) as stranger:
        membership.group_of(ClientIdentity(("stranger.example.test",)), "")
    assert "stranger.example.test" in str(stranger.value)
    assert refusal_label(str(stranger.value)) == "certificate_of_no_group"
    assert refusal_label("something else") == "other"
    # Without a certificate: the declared group if it exists, else the default one.
    assert membership.group_of(None, BETA) == BETA
    assert membership.group_of(None, "nowhere") == DEFAULT_GROUP
    assert membership.group_of(None, "") == DEFAULT_GROUP
    assert SingleGroup().group_of(alpha, BETA) == DEFAULT_GROUP


# -- serving each group its own snapshot ---------------------------------------------------


async def test_a_client_is_served_its_certificates_group_only(ads: Served) -> None:
    assert ads.server.publish(ALPHA_SNAPSHOT)
    assert ads.server.publish(BETA_SNAPSHOT)
    assert not ads.server.publish(of_group(build(SITE_A), ALPHA))  # the same version for that group
    assert dict(ads.server.snapshots) == {ALPHA: ALPHA_SNAPSHOT, BETA: BETA_SNAPSHOT}
    assert ads.server.snapshot is None  # the default group has none

    alpha = ads.sotw("gw-alpha", default_client_name(ALPHA), "gw-alpha.example.test")
    beta = ads.delta("gw-beta", default_client_name(BETA), cluster=BETA)
    alpha.subscribe(CLUSTER_TYPE)
    beta.subscribe(CLUSTER_TYPE)
    assert sotw_names(await alpha.recv()) == [ALPHA_CLUSTER]
    assert [r.name for r in (await beta.recv()).resources] == [BETA_CLUSTER]

    info = ads.stream("gw-alpha")
    assert info.group == ALPHA
    assert info.client_names == (default_client_name(ALPHA), "gw-alpha.example.test")
    assert (ads.stream("gw-beta").group, ads.stream("gw-beta").cluster) == (BETA, BETA)


async def test_a_publish_reaches_only_its_groups_streams(ads: Served) -> None:
    alpha, beta = await ads.alpha_and_beta()
    beta_id = ads.stream("gw-beta").id
    sent_to_beta = [s for s in ads.sent if s[0] == beta_id]

    streams = ads.server._streams  # what a publish wakes is seen before any stream runs
    alpha_id = ads.stream("gw-alpha").id
    assert ads.server.publish(of_group(build(SITE_A, SITE_B), ALPHA))
    assert (streams[alpha_id].wake.is_set(), streams[beta_id].wake.is_set()) == (True, False)
    assert sorted(sotw_names(await alpha.recv())) == sorted([ALPHA_CLUSTER, BETA_CLUSTER])
    await beta.expect_quiet()
    assert [s for s in ads.sent if s[0] == beta_id] == sent_to_beta
    assert ads.server.snapshots[BETA] is BETA_SNAPSHOT


async def test_a_group_without_a_snapshot_gets_nothing_until_one_is_published(ads: Served) -> None:
    ads.server.publish(ALPHA_SNAPSHOT)
    beta = ads.sotw("gw-beta", default_client_name(BETA))
    beta.subscribe(CLUSTER_TYPE)
    await beta.expect_quiet()
    ads.server.publish(BETA_SNAPSHOT)
    assert sotw_names(await beta.recv()) == [BETA_CLUSTER]


# -- refusals ----------------------------------------------------------------------------------


async def test_a_declared_group_that_contradicts_the_certificate_is_refused_and_logged(
    ads: Served, caplog: pytest.LogCaptureFixture
) -> None:
    ads.server.publish(ALPHA_SNAPSHOT)
    ads.server.publish(BETA_SNAPSHOT)
    caplog.set_level(logging.WARNING, "staticsite_xds.xds")
    client = ads.sotw("gw-sly", default_client_name(ALPHA), cluster=BETA)
    client.subscribe(CLUSTER_TYPE)
    assert await client.end() is grpc.StatusCode.PERMISSION_DENIED
    assert "declares another gateway group" in client.end_details
    [(info, reason)] = ads.refused
    assert (info.node_id, info.cluster, info.group) == ("gw-sly", BETA, "")
    assert refusal_label(reason) == "declared_another_group"
    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    for part in ("stream", "gw-sly", "127.0.0.1", default_client_name(ALPHA), repr(BETA), reason):
        assert part in text, (part, text)
    await eventually(lambda: ads.server.streams() == [])


async def test_a_certificate_of_no_group_is_refused(ads: Served, caplog: pytest.LogCaptureFixture) -> None:
    ads.server.publish(ALPHA_SNAPSHOT)
    caplog.set_level(logging.WARNING, "staticsite_xds.xds")
    client = ads.delta("gw-stranger", "stranger.example.test")
    client.subscribe(CLUSTER_TYPE)
    assert await client.end() is grpc.StatusCode.PERMISSION_DENIED
    [(_, reason)] = ads.refused
    assert refusal_label(reason) == "certificate_of_no_group"
    assert any("stranger.example.test" in r.getMessage() for r in caplog.records)


async def test_without_a_client_certificate_the_declared_group_is_taken_if_it_exists(tls: Tls) -> None:
    async for ads in serve(tls, require_client=False):
        ads.server.publish(BETA_SNAPSHOT)
        ads.server.publish(of_group(build(SITE_A), DEFAULT_GROUP))
        beta, other = ads.sotw("gw-beta", cluster=BETA), ads.sotw("gw-other", cluster="nowhere")
        beta.subscribe(CLUSTER_TYPE)
        other.subscribe(CLUSTER_TYPE)
        assert sotw_names(await beta.recv()) == [BETA_CLUSTER]
        assert sotw_names(await other.recv()) == [ALPHA_CLUSTER]
        assert (ads.stream("gw-beta").client_names, ads.stream("gw-other").group) == ((), DEFAULT_GROUP)


# -- groups that go, gateways that move --------------------------------------------------------


async def test_retiring_a_group_closes_its_streams_and_forgets_its_snapshot(ads: Served) -> None:
    alpha, beta = await ads.alpha_and_beta()

    ads.server.retire(ALPHA)
    assert await alpha.end() is not grpc.StatusCode.OK
    assert set(ads.server.snapshots) == {BETA}
    await beta.expect_quiet()
    assert [s.node_id for s in ads.server.streams()] == ["gw-beta"]


async def test_recheck_closes_the_streams_whose_group_changed(ads: Served) -> None:
    ads.server.publish(ALPHA_SNAPSHOT)
    ads.server.publish(BETA_SNAPSHOT)
    moved = ads.sotw("gw-moved", default_client_name(ALPHA), "gw-moved.example.test")
    dropped = ads.sotw("gw-dropped", "gw-dropped.example.test")
    stays = ads.sotw("gw-stays", default_client_name(BETA))
    ads.groups.by_name["gw-dropped.example.test"] = ALPHA
    for client in (moved, dropped, stays):
        client.subscribe(CLUSTER_TYPE)
        client.ack(await client.recv())

    ads.server.recheck()  # nothing changed: nothing closes
    await stays.expect_quiet(0.1)
    assert len(ads.server.streams()) == 3

    ads.groups.by_name["gw-moved.example.test"] = BETA  # now in both groups: in neither
    ads.groups.by_name[default_client_name(ALPHA)] = BETA
    del ads.groups.by_name["gw-dropped.example.test"]
    ads.server.recheck()
    assert await moved.end() is not grpc.StatusCode.OK
    assert await dropped.end() is grpc.StatusCode.PERMISSION_DENIED
    await stays.expect_quiet()
    assert [s.node_id for s in ads.server.streams()] == ["gw-stays"]

    again = ads.sotw("gw-moved", default_client_name(ALPHA))  # reconnects: now served beta
    again.subscribe(CLUSTER_TYPE)
    assert sotw_names(await again.recv()) == [BETA_CLUSTER]


# -- operations: metrics and inspection per group ----------------------------------------------


async def test_metrics_and_inspection_per_group(tls: Tls) -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    plane = ControlPlane(BuildOptions(backend_host_template="127.0.0.1"), observers=[metrics])
    metrics.export(plane)
    groups = Groups()
    plane.server.membership = groups.membership()
    port = await plane.server.start("127.0.0.1:0", credentials=tls.server_credentials())
    clients: list[ScriptedClient] = []

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    def publish(snapshot: Snapshot) -> None:
        assert plane.server.publish(snapshot)
        metrics.published(site_set(), snapshot)

    try:
        publish(ALPHA_SNAPSHOT)
        publish(BETA_SNAPSHOT)
        alpha = SotwClient(port, "gw-alpha", "", credentials=tls.client(default_client_name(ALPHA)))
        beta = SotwClient(port, "gw-beta", "", credentials=tls.client(default_client_name(BETA)))
        sly = SotwClient(port, "gw-sly", BETA, credentials=tls.client(default_client_name(ALPHA)))
        clients += [alpha, beta, sly]
        for client in (alpha, beta):
            client.subscribe(CLUSTER_TYPE)
            client.ack(await client.recv())
        sly.subscribe(CLUSTER_TYPE)
        assert await sly.end() is grpc.StatusCode.PERMISSION_DENIED

        def acked(node: str) -> bool:
            [info] = [s for s in plane.server.streams() if s.node_id == node]
            return bool(info.types[CLUSTER_TYPE].acked_version)

        await eventually(lambda: acked("gw-alpha") and acked("gw-beta"))
        for group, snapshot in ((ALPHA, ALPHA_SNAPSHOT), (BETA, BETA_SNAPSHOT)):
            assert value("staticsite_xds_snapshot_generation", gateway_group=group) == 1
            assert value("staticsite_xds_snapshot_info", gateway_group=group, version=snapshot.version) == 1
            assert value("staticsite_xds_connected_envoys", gateway_group=group, variant="sotw") == 1
            assert value("staticsite_xds_envoys_behind", gateway_group=group) == 0
        assert value("staticsite_xds_streams_refused_total", reason="declared_another_group") == 1

        newer = of_group(build(SITE_A, SITE_B), ALPHA)
        publish(newer)  # alpha's streams are pending; beta's are not
        assert metrics.propagations[ALPHA].pending == 1
        assert metrics.propagations[BETA].pending == 0
        assert value("staticsite_xds_envoys_behind", gateway_group=ALPHA) == 1
        assert value("staticsite_xds_envoys_behind", gateway_group=BETA) == 0
        assert value("staticsite_xds_snapshot_generation", gateway_group=ALPHA) == 2
        assert value("staticsite_xds_snapshot_generation", gateway_group=BETA) == 1

        data = server_report(plane.server, plane.publishes)
        assert data["snapshot"] is None  # the default group has none
        assert {g: s["version"] for g, s in data["snapshots"].items()} == {
            ALPHA: newer.version,
            BETA: BETA_SNAPSHOT.version,
        }
        by_node = {e["node_id"]: e for e in data["envoys"]}
        assert {n: (e["gateway_group"], e["behind"]) for n, e in by_node.items()} == {
            "gw-alpha": (ALPHA, True),
            "gw-beta": (BETA, False),
        }
        assert by_node["gw-beta"]["client_names"] == [default_client_name(BETA)]
        table = format_table(data)
        assert f"gateway group {ALPHA}: snapshot {newer.version} (generation 2)" in table
        assert f"gateway group {BETA}: snapshot {BETA_SNAPSHOT.version} (generation 1)" in table

        alpha.ack(await alpha.recv())
        await eventually(lambda: metrics.propagations[ALPHA].pending == 0)
        assert (value("staticsite_xds_propagation_duration_seconds_count") or 0) == 1
    finally:
        for client in clients:
            await client.close()
        await plane.server.stop(0.5)


async def test_a_gateway_identified_before_the_first_build_never_gets_another_groups_snapshot(
    tls: Tls,
) -> None:
    """Until the first site set is built the tenancy is unknown, and a stream is put in the
    default group; once the grants are known its group is decided again before anything is
    published, so a gateway of another group never receives the default group's resources."""
    sent: list[tuple[str, str]] = []
    plane = ControlPlane(
        BuildOptions(backend_host_template="127.0.0.1"),
        observers=[ObserverFuncs(on_sent=lambda info, _out: sent.append((info.node_id, info.group)))],
    )
    port = await plane.server.start("127.0.0.1:0", credentials=tls.server_credentials())
    early = SotwClient(port, "gw-blue", "", credentials=tls.client(default_client_name("blue")))
    later: SotwClient | None = None
    try:
        early.subscribe(CLUSTER_TYPE)
        await eventually(
            lambda: any(s.node_id == "gw-blue" and s.group for s in plane.server.streams()),
            what="the early stream identified",
        )
        every = {"namespaces": {"selector": {}}, "domains": ["*"]}
        tenancy = Tenancy.of(
            [
                parse_gateway_group(
                    {
                        "apiVersion": API_VERSION,
                        "kind": "GatewayGroup",
                        "metadata": {"name": name},
                        "spec": {"grants": [every]},
                    }
                )
                for name in (DEFAULT_GROUP, "blue")
            ],
            {},
        )
        sites = [site("a"), site("b", gateway_group="blue")]
        plane.apply(SiteSet(MappingProxyType({s.key: s for s in sites}), tenancy=tenancy))
        assert await early.end() is grpc.StatusCode.UNAVAILABLE  # closed, to be judged again
        assert ("gw-blue", DEFAULT_GROUP) not in sent
        later = SotwClient(port, "gw-blue", "", credentials=tls.client(default_client_name("blue")))
        later.subscribe(CLUSTER_TYPE)
        response = await later.recv()
        assert sotw_names(response) == ["docs/b-svc/80"]
    finally:
        for client in (early, later):
            if client is not None:
                await client.close()
        await plane.server.stop(grace=0)
