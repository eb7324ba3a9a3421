"""Plain text on the xDS port only where nobody else can reach it, unless asked for by name.

Any client that opens an ADS stream reads every site's TLS private key over SDS, so `serve`
refuses to listen in plain text on anything but loopback without `--insecure-plaintext`, and
with it says so at start and in `/readyz`.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import prometheus_client
import pytest
import trustme

from snapshot.builder import BuildOptions
from xds_server.operations.health import HealthServer
from xds_server.operations.tls import ServingCertificate
from xds_server.process.serve import ServeConfig, ServeError, is_loopback, plaintext_warning

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:9000", True),
        ("127.3.2.1:9000", True),
        ("[::1]:9000", True),
        ("localhost:9000", True),
        ("LocalHost:9000", True),
        ("0.0.0.0:9000", False),
        (":9000", False),
        ("[::]:9000", False),
        ("10.1.2.3:9000", False),
        ("128.0.0.1:9000", False),
        ("staticsite-xds:9000", False),
        ("localhost.example:9000", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def config(address: str, *, insecure: bool = False, serving: ServingCertificate | None = None) -> ServeConfig:
    return ServeConfig(
        options=BuildOptions(), xds_address=address, insecure_plaintext=insecure, serving=serving
    )


def test_plain_text_on_loopback_needs_no_flag_and_earns_no_warning() -> None:
    assert plaintext_warning(config("127.0.0.1:18000")) is None
    assert plaintext_warning(config("[::1]:18000", insecure=True)) is None


@pytest.mark.parametrize("address", ["0.0.0.0:9000", ":9000", "10.0.0.7:9000", "staticsite-xds:9000"])
def test_plain_text_elsewhere_is_refused_naming_the_flags(address: str) -> None:
    with pytest.raises(ServeError) as caught:
        plaintext_warning(config(address))
    message = str(caught.value)
    assert message.startswith(f"--xds-address {address} is not a loopback address")
    for flag in ("--insecure-plaintext", "--tls-cert", "--tls-key", "--tls-client-ca"):
        assert flag in message


def test_plain_text_elsewhere_with_the_flag_is_warned_about() -> None:
    warning = plaintext_warning(config("0.0.0.0:9000", insecure=True))
    assert warning is not None
    assert "0.0.0.0:9000" in warning
    assert "any client that reaches the port can read every site's private key" in warning


def test_the_flag_and_tls_exclude_each_other(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("staticsite-xds.staticsite-xds.svc")
    folder = tmp_path
    leaf.cert_chain_pems[0].write_to_path(folder / "tls.crt")
    leaf.private_key_pem.write_to_path(folder / "tls.key")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    serving = ServingCertificate.from_paths(folder / "tls.crt", folder / "tls.key", folder / "ca.crt")
    assert plaintext_warning(config("0.0.0.0:9000", serving=serving)) is None
    with pytest.raises(ServeError, match="--insecure-plaintext and the --tls-\\* flags exclude each other"):
        plaintext_warning(config("0.0.0.0:9000", insecure=True, serving=serving))


@pytest.mark.parametrize("ready", [True, False])
async def test_readyz_names_the_warning_whatever_its_verdict(ready: bool) -> None:
    warning = "the xDS port serves plain text on 0.0.0.0:9000"
    health = HealthServer(lambda: ready, prometheus_client.CollectorRegistry(), warning=warning)
    plain = HealthServer(lambda: ready, prometheus_client.CollectorRegistry())
    try:
        port = await health.start("127.0.0.1:0")
        plain_port = await plain.start("127.0.0.1:0")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == (200 if ready else 503)
                assert f"warning: {warning}\n" in await response.text()
            async with session.get(f"http://127.0.0.1:{plain_port}/readyz") as response:
                assert response.status == (200 if ready else 503)
                assert "warning" not in await response.text()
    finally:
        await health.stop()
        await plain.stop()
