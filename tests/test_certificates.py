"""`staticsite-xds certificates` against kmock's Kubernetes emulator: the CA, the control
plane's server certificate and the gateways' client certificate as Secrets, written once and
then only when they need it, and accepted (or not) by the xDS port's own TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from support.kubernetes import Cluster

from watcher.k8s_api import SECRETS, KubeApi
from xds_server import cli
from xds_server.ads.membership import ClientIdentity, default_client_name
from xds_server.operations import issuer
from xds_server.operations.issuer import CertificatePlan, keep_certificates
from xds_server.operations.tls import ServingCertificate

pytestmark = pytest.mark.kubernetes

NAMESPACE = "staticsite-xds"
SERVER_NAME = "staticsite-xds.staticsite-xds.svc"  # what envoy/bootstrap-mtls.yaml expects
PLAN = CertificatePlan(namespace=NAMESPACE, dns_names=issuer.service_dns_names(NAMESPACE))
SECRET_NAMES = (PLAN.ca_secret, PLAN.server_secret, PLAN.client_secret)
DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def writes(cluster: Cluster) -> int:
    """How many requests wrote a Secret so far."""
    return sum(len(cluster.requests(method, "/secrets")) for method in ("POST", "PATCH", "PUT"))


async def secret(cluster: Cluster, name: str) -> dict[str, Any]:
    found = await cluster.api.get(SECRETS, NAMESPACE, name)
    assert found is not None, f"no Secret {name}"
    return found


def data(found: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(found["data"][key])


async def certificate(cluster: Cluster, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data(await secret(cluster, name), "tls.crt"))


def dns_names(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


def usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


async def test_the_first_run_creates_the_three_secrets(cluster: Cluster) -> None:
    written = await keep_certificates(cluster.api, PLAN)
    assert [w.secret for w in written] == list(SECRET_NAMES)
    assert {w.reason for w in written} == {"missing"}

    ca_secret = await secret(cluster, PLAN.ca_secret)
    assert set(ca_secret["data"]) == {"tls.crt", "tls.key"}
    ca = x509.load_pem_x509_certificate(data(ca_secret, "tls.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in (PLAN.server_secret, PLAN.client_secret):
        found = await secret(cluster, name)
        assert found["type"] == "kubernetes.io/tls"
        assert set(found["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        assert x509.load_pem_x509_certificates(data(found, "ca.crt")) == [ca]
        assert data(found, "tls.key") != data(ca_secret, "tls.key")  # the CA's key stays in its own
        x509.load_pem_x509_certificate(data(found, "tls.crt")).verify_directly_issued_by(ca)

    server = await certificate(cluster, PLAN.server_secret)
    assert dns_names(server) == sorted(
        [SERVER_NAME, f"{SERVER_NAME}.cluster.local", "staticsite-xds.staticsite-xds", "staticsite-xds"]
    )
    assert usages(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = await certificate(cluster, PLAN.client_secret)
    assert usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    valid = server.not_valid_after_utc - now()
    assert datetime.timedelta(days=364) < valid <= datetime.timedelta(days=365)


async def test_a_second_run_with_valid_certificates_writes_nothing(cluster: Cluster) -> None:
    await keep_certificates(cluster.api, PLAN)
    before = writes(cluster)
    assert before == 3
    assert await keep_certificates(cluster.api, PLAN) == []
    assert await keep_certificates(cluster.api, PLAN, now() + 300 * DAY) == []
    assert writes(cluster) == before


async def test_certificates_that_expire_soon_are_renewed_and_the_ca_kept(cluster: Cluster) -> None:
    await keep_certificates(cluster.api, PLAN)
    ca_before = await certificate(cluster, PLAN.ca_secret)
    server_before = await certificate(cluster, PLAN.server_secret)
    later = now() + 340 * DAY  # 25 days before the certificates expire, in the 30-day window
    written = await keep_certificates(cluster.api, PLAN, later)
    assert [w.secret for w in written] == [PLAN.server_secret, PLAN.client_secret]
    assert all(w.reason.startswith("expires ") for w in written)
    server_after = await certificate(cluster, PLAN.server_secret)
    assert server_after.serial_number != server_before.serial_number
    assert server_after.not_valid_after_utc > server_before.not_valid_after_utc + 300 * DAY
    assert await certificate(cluster, PLAN.ca_secret) == ca_before
    server_after.verify_directly_issued_by(ca_before)
    assert await keep_certificates(cluster.api, PLAN, later) == []


async def test_an_expiring_ca_is_renewed_with_both_certificates_and_the_old_ca_still_trusted(
    cluster: Cluster,
) -> None:
    await keep_certificates(cluster.api, PLAN)
    old_ca = await certificate(cluster, PLAN.ca_secret)
    written = await keep_certificates(cluster.api, PLAN, now() + 3640 * DAY)
    assert [w.secret for w in written] == list(SECRET_NAMES)
    new_ca = await certificate(cluster, PLAN.ca_secret)
    assert new_ca != old_ca
    for name in (PLAN.server_secret, PLAN.client_secret):
        bundle = x509.load_pem_x509_certificates(data(await secret(cluster, name), "ca.crt"))
        assert bundle == [new_ca, old_ca]
        (await certificate(cluster, name)).verify_directly_issued_by(new_ca)


async def test_a_missing_or_damaged_secret_is_written_again(cluster: Cluster) -> None:
    await keep_certificates(cluster.api, PLAN)
    client = await secret(cluster, PLAN.client_secret)
    server = await secret(cluster, PLAN.server_secret)
    # The server Secret now holds the client's key: it does not match the server's certificate.
    await cluster.api.patch(
        SECRETS, NAMESPACE, PLAN.server_secret, {"data": {"tls.key": client["data"]["tls.key"]}}
    )
    written = await keep_certificates(cluster.api, PLAN)
    assert [(w.secret, w.reason) for w in written] == [
        (PLAN.server_secret, "unusable (tls.key does not belong to tls.crt)")
    ]
    repaired = await secret(cluster, PLAN.server_secret)
    assert repaired["data"]["tls.crt"] != server["data"]["tls.crt"]

    # Signed by another CA: issued again by ours.
    stranger = trustme.CA().issue_cert(SERVER_NAME)
    forged = {
        "tls.crt": base64.b64encode(stranger.cert_chain_pems[0].bytes()).decode(),
        "tls.key": base64.b64encode(stranger.private_key_pem.bytes()).decode(),
    }
    await cluster.api.patch(SECRETS, NAMESPACE, PLAN.client_secret, {"data": forged})
    written = await keep_certificates(cluster.api, PLAN)
    assert [(w.secret, w.reason) for w in written] == [(PLAN.client_secret, "not signed by the current CA")]


async def test_other_dns_names_reissue_only_the_server_certificate(cluster: Cluster) -> None:
    await keep_certificates(cluster.api, PLAN)
    names = ("xds.example.internal", SERVER_NAME)
    plan = CertificatePlan(namespace=NAMESPACE, dns_names=names)
    written = await keep_certificates(cluster.api, plan)
    assert [w.secret for w in written] == [PLAN.server_secret]
    assert written[0].reason.startswith("names staticsite-xds, ")
    assert dns_names(await certificate(cluster, PLAN.server_secret)) == sorted(names)


async def test_each_gateway_group_gets_a_certificate_naming_it(cluster: Cluster) -> None:
    plan = CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), gateway_groups=("default", "blue"))
    written = await keep_certificates(cluster.api, plan)
    blue = "staticsite-xds-gateway-blue"
    assert [w.secret for w in written] == [PLAN.ca_secret, PLAN.server_secret, PLAN.client_secret, blue]
    assert dns_names(await certificate(cluster, PLAN.client_secret)) == [
        "default.gateway-group.staticsite-xds.dev"
    ]
    assert dns_names(await certificate(cluster, blue)) == ["blue.gateway-group.staticsite-xds.dev"]
    assert usages(await certificate(cluster, blue)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    groups = {
        ClientIdentity.from_certificate(data(await secret(cluster, name), "tls.crt")).names
        for name in (PLAN.client_secret, blue)
    }
    assert groups == {
        (default_client_name("default"), issuer.DEFAULT_CLIENT_NAME),
        (default_client_name("blue"), issuer.DEFAULT_CLIENT_NAME),
    }
    assert await keep_certificates(cluster.api, plan) == []


async def test_a_gateway_certificate_without_its_groups_name_is_issued_again(cluster: Cluster) -> None:
    await keep_certificates(cluster.api, PLAN)
    ca_secret = await secret(cluster, PLAN.ca_secret)
    ca = issuer.KeyPair(data(ca_secret, "tls.crt"), data(ca_secret, "tls.key"))
    unnamed = issuer.make_leaf(ca, now(), 365, common_name=issuer.DEFAULT_CLIENT_NAME, server=False)
    before = {
        "tls.crt": base64.b64encode(unnamed.certificate).decode(),
        "tls.key": base64.b64encode(unnamed.key).decode(),
    }  # what a run made before gateway groups
    await cluster.api.patch(SECRETS, NAMESPACE, PLAN.client_secret, {"data": before})
    written = await keep_certificates(cluster.api, PLAN)
    assert [(w.secret, w.reason) for w in written] == [
        (PLAN.client_secret, "names no DNS name, not default.gateway-group.staticsite-xds.dev")
    ]
    assert dns_names(await certificate(cluster, PLAN.client_secret)) == [default_client_name("default")]


def test_the_plan_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="--renew-before 30 must be shorter than --days 30"):
        CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), days=30)
    with pytest.raises(ValueError, match="--dns-name"):
        CertificatePlan(namespace=NAMESPACE, dns_names=())
    with pytest.raises(ValueError, match="three different names"):
        CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), client_secret=PLAN.server_secret)
    for bad in ("Blue", "-blue", "blue.green", "b" * 64, ""):
        with pytest.raises(ValueError, match="is not a gateway group's name"):
            CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), gateway_groups=(bad,))
    with pytest.raises(ValueError, match="each group once"):
        CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), gateway_groups=("a", "a"))
    with pytest.raises(ValueError, match="at least one group"):
        CertificatePlan(namespace=NAMESPACE, dns_names=(SERVER_NAME,), gateway_groups=())
    with pytest.raises(ValueError, match="three different names"):  # the blue group's Secret is the CA's
        CertificatePlan(
            namespace=NAMESPACE,
            dns_names=(SERVER_NAME,),
            client_secret="staticsite-xds",
            ca_secret="staticsite-xds-blue",
            gateway_groups=("blue",),
        )


def write_files(folder: Path, found: dict[str, Any]) -> Path:
    folder.mkdir()
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (folder / key).write_bytes(data(found, key))
    return folder


async def health_check(port: int, credentials: grpc.ChannelCredentials) -> Any:
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)


async def test_the_xds_port_accepts_the_gateways_certificate_and_refuses_another_cas(
    cluster: Cluster, tmp_path: Path
) -> None:
    await keep_certificates(cluster.api, PLAN)
    server = write_files(tmp_path / "server", await secret(cluster, PLAN.server_secret))
    client = write_files(tmp_path / "client", await secret(cluster, PLAN.client_secret))
    serving = ServingCertificate.from_paths(server / "tls.crt", server / "tls.key", server / "ca.crt")

    port_server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, port_server)
    port = port_server.add_secure_port("127.0.0.1:0", serving.server_credentials())
    await port_server.start()
    try:
        ca = (client / "ca.crt").read_bytes()
        gateway = grpc.ssl_channel_credentials(
            ca, (client / "tls.key").read_bytes(), (client / "tls.crt").read_bytes()
        )
        answer = await health_check(port, gateway)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        stranger = trustme.CA().issue_cert("staticsite-gateway")
        other = grpc.ssl_channel_credentials(
            ca, stranger.private_key_pem.bytes(), stranger.cert_chain_pems[0].bytes()
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_check(port, other)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await port_server.stop(None)


async def test_the_command_writes_the_secrets_once(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    def emulator(cls: type[KubeApi], user_agent: str = "") -> KubeApi:
        return KubeApi.for_server(cluster.url, user_agent)

    monkeypatch.setattr(KubeApi, "from_environment", classmethod(emulator))
    args = ["certificates", "--namespace", NAMESPACE, "--dns-name", SERVER_NAME, "--days", "90"]
    assert await asyncio.to_thread(cli.main, args) == 0
    assert writes(cluster) == 3
    server = await certificate(cluster, PLAN.server_secret)
    assert dns_names(server) == [SERVER_NAME]
    assert server.not_valid_after_utc - now() <= datetime.timedelta(days=90)
    assert await asyncio.to_thread(cli.main, args) == 0
    assert writes(cluster) == 3
    assert await asyncio.to_thread(cli.main, [*args, "--renew-before", "90"]) == 2
    groups = ["--gateway-group", "default", "--gateway-group", "blue"]
    assert await asyncio.to_thread(cli.main, [*args, *groups]) == 0
    assert writes(cluster) == 4  # the blue group's Secret alone
    assert dns_names(await certificate(cluster, "staticsite-xds-gateway-blue")) == [
        default_client_name("blue")
    ]
